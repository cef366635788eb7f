"""Training: the generic runner, `tfsky train segmenter`, resume after kill -9, config errors."""

from __future__ import annotations

import csv
import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import h5py
import numpy as np
import pytest
import tensorflow as tf
import yaml
from PIL import Image
from tensorflow.core.util import event_pb2

from tfsky.models.bundle import load_model
from tfsky.models.losses import make_loss
from tfsky.models.metrics import segmentation_metrics
from tfsky.train.config import SegmenterTrainConfig
from tfsky.train.runner import fit_run, read_history, run_directory
from tfsky.train.segmenter import learning_rate, schedule_callbacks

TINY_MODEL = {"backbone": "resnet18", "decoder_filters": [16, 8, 8, 4, 4], "precision": "float32"}
HISTORY_COLUMNS = ["epoch", "loss", "iou", "f1", "val_loss", "val_iou", "val_f1", "epoch_seconds", "lr"]


def write_sky_images(folder: Path, count: int = 8, size: tuple[int, int] = (96, 128)) -> None:
    """Synthetic photos: a bright blue sky above a horizon row that varies per image, dark noisy ground."""
    rng = np.random.default_rng(0)
    (folder / "images").mkdir(parents=True)
    (folder / "masks").mkdir()
    height, width = size
    for index in range(count):
        horizon = int(rng.integers(height // 4, 3 * height // 4))
        mask = np.zeros(size, np.uint8)
        mask[:horizon] = 255
        image = rng.integers(0, 90, (height, width, 3)).astype(np.uint8)
        image[:horizon] = rng.integers(0, 30, (horizon, width, 3)) + np.array([150, 180, 220], np.uint8)
        Image.fromarray(image).save(folder / "images" / f"img{index}.png")
        Image.fromarray(mask).save(folder / "masks" / f"img{index}.png")


def write_config(tmp_path: Path, **train) -> Path:
    data = tmp_path / "data"
    if not data.exists():
        write_sky_images(data)
    config = {
        "name": "tiny",
        "data": {
            "sources": [
                {"kind": "mask_folder", "name": "synth", "images": str(data / "images"), "masks": str(data / "masks")}
            ],
            "cache": str(tmp_path / "cache"),
            "patch_size": 64,
            "patches_per_image": 2,
            "val_fraction": 0.25,
        },
        "model": TINY_MODEL,
        "train": {
            "epochs": 2,
            "batch_size": 2,
            "steps_per_epoch": 3,
            "validation_steps": 2,
            "tensorboard_images": 2,
            "runs_root": str(tmp_path / "runs"),
            **train,
        },
    }
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def only_run_dir(tmp_path: Path) -> Path:
    runs = list((tmp_path / "runs" / "tiny").iterdir())
    assert len(runs) == 1
    return runs[0]


def event_tags(folder: Path) -> dict[str, str]:
    """Summary tag -> plugin name of every event file under ``folder``."""
    tags = {}
    for path in folder.glob("events.out.tfevents.*"):
        for record in tf.data.TFRecordDataset(str(path)):
            event = event_pb2.Event.FromString(record.numpy())
            for value in event.summary.value:
                tags[value.tag] = value.metadata.plugin_data.plugin_name or tags.get(value.tag, "")
    return tags


def weight_groups(model_file: Path) -> set[str]:
    """Top-level groups of the weights inside a ``.keras`` file (``optimizer`` when optimizer state was saved)."""
    with zipfile.ZipFile(model_file) as archive, h5py.File(io.BytesIO(archive.read("model.weights.h5"))) as weights:
        return set(weights)


def assert_run_files_valid(run_dir: Path, epochs: int) -> list[dict]:
    """Every file of a run folder parses; returns the history rows."""
    yaml.safe_load((run_dir / "config.yaml").read_text())
    model, info = load_model(run_dir / "best.keras")
    assert info.task == "segmenter" and info.tile_size == 64 and info.in_channels == 3
    assert model(tf.zeros([1, 64, 64, 3])).shape == (1, 64, 64, 1)
    assert "optimizer" not in weight_groups(run_dir / "best.keras")  # saved without optimizer state
    with (run_dir / "history.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [int(row["epoch"]) for row in rows] == list(range(1, epochs + 1))
    assert Image.open(run_dir / "learning_curves.png").format == "PNG"
    leftovers = [p for p in run_dir.rglob("*") if ".part" in p.name or p.name.startswith(".")]
    assert leftovers == []
    return rows


def test_train_segmenter_writes_a_complete_run_folder(tmp_path, cli):
    result = cli("train", "segmenter", "--config", write_config(tmp_path, threshold=0.4), "--quiet")
    assert result.exit_code == 0, result.stderr
    run_dir = only_run_dir(tmp_path)
    assert str(run_dir) in result.stdout and "val_iou" in result.stdout
    rows = assert_run_files_valid(run_dir, epochs=2)
    assert list(rows[0]) == HISTORY_COLUMNS
    _, info = load_model(run_dir / "best.keras")
    best = max(rows, key=lambda row: float(row["val_iou"]))
    assert info.metrics["val_iou"] == pytest.approx(float(best["val_iou"]))
    assert info.threshold == 0.4 and 0 < info.metrics["val_best_threshold"] < 1  # fixed, the validation's cut kept
    assert info.bfloat16["pixels"] == 2 * 2 * 64 * 64 and isinstance(info.bfloat16["ok"], bool)  # validation batches
    assert info.config["model"]["backbone"] == "resnet18"
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["train"]["epochs"] == 2
    assert (run_dir / "last" / "chief" / "checkpoint").is_file()
    assert event_tags(run_dir / "tensorboard" / "validation") == {
        "epoch_loss": "scalars",
        "epoch_iou": "scalars",
        "epoch_f1": "scalars",
    }
    assert event_tags(run_dir / "tensorboard" / "images") == {"validation image | true mask | predicted mask": "images"}


def test_resume_after_kill_continues_at_the_unfinished_epoch(tmp_path):
    config = write_config(tmp_path, epochs=3, steps_per_epoch=20, validation_steps=1)
    command = [str(Path(sys.executable).parent / "tfsky"), "train", "segmenter", "-c", str(config)]
    first = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    epoch_done = tmp_path / "runs" / "tiny"  # epoch 1 is complete once its resume checkpoint is written
    deadline = time.monotonic() + 120
    while not list(epoch_done.glob("*/last/chief/checkpoint")) and time.monotonic() < deadline and first.poll() is None:
        time.sleep(0.05)
    time.sleep(0.5)  # inside epoch 2 (an epoch takes seconds)
    os.kill(first.pid, signal.SIGKILL)
    first.wait()
    run_dir = only_run_dir(tmp_path)
    before = read_history(run_dir / "history.csv")
    assert [row["epoch"] for row in before] == [1], "the kill must land in epoch 2"

    second = subprocess.run([*command, "--resume"], capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stdout + second.stderr
    assert "Epoch 2/3" in second.stdout and "Epoch 1/3" not in second.stdout
    assert only_run_dir(tmp_path) == run_dir
    rows = assert_run_files_valid(run_dir, epochs=3)
    assert float(rows[0]["loss"]) == before[0]["loss"]  # epoch 1 was not redone


def assert_one_line_error(result, message: str) -> None:
    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    assert message in lines[0]


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.epoch=3", "config key 'train.epoch': unknown key"),
        ("train.epochs=many", "config key 'train.epochs': expected an integer"),
        ("data.patch_size=100", "config key 'data.patch_size': must be divisible by 32"),
        ("model.backbone=resnet35", "config key 'model.backbone': unknown backbone 'resnet35'"),
        ("train.deterministic=true", "config key 'train.deterministic': needs a seed"),
        ("train.learning_rate=.nan", "config key 'train.learning_rate': must be a finite number; got nan"),
        ("train.learning_rate=.inf", "config key 'train.learning_rate': must be a finite number; got inf"),
    ],
)
def test_config_errors_are_one_line_naming_the_key(tmp_path, cli, override, message):
    assert_one_line_error(cli("train", "segmenter", "-c", write_config(tmp_path), "--set", override), message)
    assert not (tmp_path / "runs").exists()


def test_missing_data_folder_is_one_line_naming_the_key(tmp_path, cli):
    config = write_config(tmp_path)
    result = cli(
        "train",
        "segmenter",
        "-c",
        config,
        "--set",
        f"data.cache={tmp_path}/new_cache",
        "--set",
        "data.sources=[{kind: mask_folder, images: nowhere, masks: nowhere}]",
    )
    assert_one_line_error(result, "config key 'data.sources[0].images': folder not found: nowhere")
    assert not (tmp_path / "runs").exists()


def test_cosine_schedule_warms_up_then_decays_to_zero():
    train = SegmenterTrainConfig(epochs=3, learning_rate=0.1, lr_schedule="cosine", warmup_epochs=1)
    rate = learning_rate(train, steps_per_epoch=10)
    assert [float(rate(step)) for step in (0, 5, 10, 30)] == pytest.approx([0.0, 0.05, 0.1, 0.0], abs=1e-7)
    assert float(rate(20)) == pytest.approx(0.05, abs=1e-7)  # half-way through the cosine


def test_plateau_and_early_stopping_callbacks_follow_the_config():
    train = SegmenterTrainConfig(lr_schedule="plateau", plateau_patience=2, early_stopping_patience=5)
    callbacks = schedule_callbacks(train)
    plateau, stopping = callbacks
    assert (plateau.monitor, plateau.factor, plateau.patience) == ("val_loss", 0.5, 2)
    assert (stopping.monitor, stopping.patience) == ("val_iou", 5) and stopping.monitor_op is np.greater
    assert schedule_callbacks(SegmenterTrainConfig()) == []


def test_resume_without_a_previous_run_starts_one(tmp_path):
    run_dir, resumed = run_directory(tmp_path, "fresh", resume=True)
    assert not resumed and run_dir.parent == tmp_path / "fresh"
    again, resumed = run_directory(tmp_path, "fresh", resume=True)
    assert resumed and again == run_dir
    other, _ = run_directory(tmp_path, "fresh")
    assert other != run_dir and other.parent == run_dir.parent


class TwoHeaded(tf.keras.Model):
    """A custom ``train_step`` model with its own second optimizer, as the translators are."""

    def __init__(self):
        super().__init__()
        self.net = tf.keras.Sequential([tf.keras.layers.Conv2D(1, 3, padding="same", activation="sigmoid")])
        self.aux_optimizer = tf.keras.optimizers.SGD(0.1)
        self.build([None, 16, 16, 3])

    def call(self, x):
        return self.net(x)

    def train_step(self, data):
        x, y = data
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(tf.abs(self(x) - y))
        self.aux_optimizer.apply_gradients(zip(tape.gradient(loss, self.trainable_variables), self.trainable_variables))
        return {"l1": loss}

    def test_step(self, data):
        x, y = data
        return {"l1": tf.reduce_mean(tf.abs(self(x) - y))}


def tiny_data(n: int = 8) -> tf.data.Dataset:
    x = tf.random.stateless_uniform([n, 16, 16, 3], seed=[1, 2])
    return tf.data.Dataset.from_tensor_slices((x, tf.cast(x[..., :1] > 0.5, tf.float32))).batch(4)


def test_runner_resumes_a_custom_train_step_model_with_its_optimizer_state(tmp_path):
    def fit(epochs, interrupt_at=None):
        model = TwoHeaded()
        model.compile()
        stop = [StopAt(interrupt_at)] if interrupt_at else []
        result = fit_run(
            model,
            tiny_data(),
            tiny_data(),
            run_dir=tmp_path,
            epochs=epochs,
            monitor="val_l1",
            mode="min",
            save_best=lambda m, path, logs: m.save_weights(str(path.with_suffix(".weights.h5"))),
            extra_callbacks=stop,
            verbose=0,
        )
        return model, result

    with pytest.raises(RuntimeError, match="interrupted"):
        fit(4, interrupt_at=2)  # epochs 1 and 2 complete, epoch 3 dies
    assert [row["epoch"] for row in read_history(tmp_path / "history.csv")] == [1, 2]
    half_written = tmp_path / ".best.x1y2.part.keras"  # what a kill during an atomic write leaves
    half_written.write_bytes(b"half")
    model, result = fit(4)
    assert not half_written.exists()
    assert model.aux_optimizer.iterations.numpy() == 4 * 2  # 2 steps per epoch, restored then continued
    assert result.resumed and result.epochs_completed == 4
    assert [row["epoch"] for row in read_history(tmp_path / "history.csv")] == [1, 2, 3, 4]


class StopAt(tf.keras.callbacks.Callback):
    def __init__(self, epoch):
        super().__init__()
        self.epoch = epoch

    def on_epoch_begin(self, epoch, logs=None):
        if epoch == self.epoch:
            raise RuntimeError("interrupted")


def test_runner_keeps_the_best_value_across_resumes_and_honours_early_stopping(tmp_path):
    def fit(epochs):
        inputs = tf.keras.Input((None, None, 3))
        model = tf.keras.Model(inputs, tf.keras.layers.Conv2D(1, 1, activation="sigmoid")(inputs))
        model.compile(tf.keras.optimizers.Adam(0.0), make_loss("bce"), segmentation_metrics())  # lr 0: flat val_iou
        saved = []
        result = fit_run(
            model,
            tiny_data(),
            tiny_data(),
            run_dir=tmp_path,
            epochs=epochs,
            monitor="val_iou",
            mode="max",
            save_best=lambda m, path, logs: saved.append(logs["val_iou"]),
            extra_callbacks=[tf.keras.callbacks.EarlyStopping(monitor="val_iou", mode="max", patience=2)],
            verbose=0,
        )
        return result, saved

    result, saved = fit(10)
    assert result.stopped_early and result.epochs_completed == 3 and result.best_epoch == 1 and len(saved) == 1
    result, saved = fit(10)  # nothing left to do: the run ended by early stopping
    assert saved == [] and result.epochs_completed == 3 and result.best_epoch == 1


def test_deterministic_seed_repeats_the_first_epoch_exactly(tmp_path, cli):
    """Last in the file: op determinism, once enabled, stays on for the process."""
    config = write_config(tmp_path, epochs=1, steps_per_epoch=2, validation_steps=1, tensorboard_images=0)
    for _ in range(2):
        seeded = ("--set", "train.seed=7", "--set", "train.deterministic=true")
        result = cli("train", "segmenter", "-c", config, "-q", *seeded)
        assert result.exit_code == 0, result.stderr
    first, second = [read_history(run / "history.csv")[0] for run in sorted((tmp_path / "runs" / "tiny").iterdir())]
    assert first["loss"] == second["loss"] and first["val_loss"] == second["val_loss"]


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    for sock in sockets:
        sock.bind(("localhost", 0))
    ports = [sock.getsockname()[1] for sock in sockets]
    for sock in sockets:
        sock.close()
    return ports


def test_multi_worker_run_has_one_run_folder_written_by_the_chief_only(tmp_path, cli):
    config = write_config(tmp_path, strategy="multi_worker")
    refused = cli("train", "segmenter", "-c", config)
    assert_one_line_error(refused, "config key 'data.cache':")  # the two workers would both prepare it
    assert cli("data", "prepare", "-c", config, "-q").exit_code == 0
    cluster = {"worker": [f"localhost:{port}" for port in free_ports(2)]}
    command = [str(Path(sys.executable).parent / "tfsky"), "train", "segmenter", "-c", str(config), "-q"]
    workers = [
        subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env={
            **os.environ, "TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}}),
        })
        for index in range(2)
    ]  # fmt: skip
    try:
        outputs = [worker.communicate(timeout=300)[0] for worker in workers]
    finally:  # a worker whose peer died waits on its collectives forever
        for worker in workers:
            worker.kill()
    assert [worker.returncode for worker in workers] == [0, 0], "\n".join(outputs)
    run_dir = only_run_dir(tmp_path)
    assert all(str(run_dir) in output for output in outputs)  # the chief chose it; worker 1 was told
    assert_run_files_valid(run_dir, epochs=2)
    assert (run_dir / "last" / "chief" / "checkpoint").is_file()
    assert not list(run_dir.rglob("*workertemp*"))  # worker 1 wrote nothing that stayed


def test_a_loss_that_becomes_nan_stops_the_run_with_one_line_and_saves_no_model_from_it(tmp_path):
    """Epoch 1 trains on finite data; in epoch 2 the inputs turn NaN: the run stops at its first batch."""
    from tfsky.train.runner import NonFiniteLoss

    poisoned = tf.Variable(0.0)  # added to every input: NaN from epoch 2 on

    class Poison(tf.keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            poisoned.assign(float("nan") if epoch == 1 else 0.0)

    inputs = tf.keras.Input((None, None, 3))
    shifted = tf.keras.layers.Lambda(lambda x: x + poisoned)(inputs)
    model = tf.keras.Model(inputs, tf.keras.layers.Conv2D(1, 1, activation="sigmoid")(shifted))
    model.compile(tf.keras.optimizers.Adam(1e-3), make_loss("bce"), segmentation_metrics())
    saved = []
    with pytest.raises(NonFiniteLoss, match=r"^training stopped: loss became nan at epoch 2, batch 1 "):
        fit_run(
            model,
            tiny_data(),
            tiny_data(),
            run_dir=tmp_path,
            epochs=3,
            monitor="val_iou",
            mode="max",
            save_best=lambda m, path, logs: saved.append(logs["val_iou"]),
            extra_callbacks=[Poison()],
            verbose=0,
        )
    assert len(saved) == 1 and np.isfinite(saved[0])  # the model of epoch 1 only
    assert [row["epoch"] for row in read_history(tmp_path / "history.csv")] == [1]
