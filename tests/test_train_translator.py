"""``tfsky train translator`` on real SkyFinder camera 623 pairs: run folder, both model kinds, resume after kill -9."""

from __future__ import annotations

import csv
import io
import os
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import h5py
import pytest

from tfsky.config import load_config
from tfsky.models.bundle import load_info, load_model
from tfsky.train.config import TranslatorConfig
from tfsky.train.translator import train_translator

REPO = Path(__file__).resolve().parents[1]
TINY_CONFIG = REPO / "configs" / "translator_tiny.yaml"


def tiny_overrides(shared_data: Path, tmp_path: Path) -> list[str]:
    """The tiny config with every path pointed at the real data and at ``tmp_path``."""
    root = shared_data / "skyfinder_webcams"
    return [
        f"streams.root={root}",
        f"streams.labels_csv={root / 'weather_labels_cam623.csv'}",
        f"streams.manifests={tmp_path / 'streams'}",
        f"pairs.file={tmp_path / 'pairs.json'}",
        f"train.runs_root={tmp_path / 'runs'}",
    ]


def history_epochs(run_dir: Path) -> list[int]:
    path = run_dir / "history.csv"
    if not path.is_file():
        return []
    with path.open() as f:
        return [int(row["epoch"]) for row in csv.DictReader(f)]


def weight_groups(model_file: Path) -> set[str]:
    """Top-level groups of the weights inside a ``.keras`` file (``optimizer`` when optimizer state was saved)."""
    with zipfile.ZipFile(model_file) as archive, h5py.File(io.BytesIO(archive.read("model.weights.h5"))) as weights:
        return set(weights)


@pytest.mark.parametrize("kind", ["pix2pix", "vae"])
def test_tiny_translator_trains_two_epochs_into_a_run_folder(kind, shared_data, tmp_path):
    cfg = load_config(TranslatorConfig, TINY_CONFIG, [*tiny_overrides(shared_data, tmp_path), f"model.kind={kind}"])
    result = train_translator(cfg, verbose=0)
    run = result.run_dir
    assert result.epochs_completed == 2 and history_epochs(run) == [1, 2]
    for name in ("config.yaml", "best.keras", "best.json", "state.json", "learning_curves.png"):
        assert (run / name).is_file(), name
    assert any((run / "tensorboard" / "images").iterdir())  # the source | generated | target triplets
    assert (tmp_path / "pairs.json").is_file() and (tmp_path / "streams" / "623" / "stream.json").is_file()
    info = load_info(run / "best.keras")
    assert (info.task, info.tile_size, info.preprocess.mode, info.classes) == (kind, 64, "ldr", 3)
    assert "val_l1" in info.metrics and 0 < info.metrics["val_l1"] < 2
    model, _ = load_model(run / "best.keras")
    assert model.output_shape == (None, None, None, 3)
    assert "optimizer" not in weight_groups(run / "best.keras")  # the inference network only, no training state


def test_resume_after_kill_continues_at_the_unfinished_epoch(shared_data, tmp_path):
    args = [
        sys.executable,
        "-m",
        "tfsky.cli.main",
        "train",
        "translator",
        "--config",
        str(TINY_CONFIG),
        *(item for o in tiny_overrides(shared_data, tmp_path) for item in ("--set", o)),
        "--set",
        "train.epochs=2",
        "--set",
        "train.steps_per_epoch=80",
    ]
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    first = subprocess.Popen(args, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    runs = tmp_path / "runs" / "translator_tiny"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not list(runs.glob("*/last/chief/checkpoint")) and first.poll() is None:
        time.sleep(0.05)  # epoch 1 is complete once its resume checkpoint is written
    time.sleep(0.5)  # into epoch 2 (80 steps take a few seconds)
    first.send_signal(signal.SIGKILL)
    first.wait()
    (run_dir,) = runs.iterdir()
    assert history_epochs(run_dir) == [1], "killed too late: epoch 2 had already finished"

    second = subprocess.run([*args, "--resume"], cwd=REPO, env=env, capture_output=True, text=True, timeout=180)
    assert second.returncode == 0, second.stderr[-2000:]
    assert "Epoch 2/2" in second.stdout and "Epoch 1/2" not in second.stdout
    assert list(runs.iterdir()) == [run_dir]
    assert history_epochs(run_dir) == [1, 2]
    assert (run_dir / "best.keras").is_file()


@pytest.mark.parametrize("override", ["train.optimizer=sgd", "train.lr_schedule=cosine", "train.loss=dice"])
def test_segmenter_only_train_keys_are_refused(override):
    from tfsky.config import load_config
    from tfsky.errors import ConfigError
    from tfsky.train.config import TranslatorConfig

    key = override.split("=")[0]
    with pytest.raises(ConfigError, match=f"^config key '{key}': unknown key \\(known keys here: batch_size, "):
        load_config(TranslatorConfig, TINY_CONFIG, [override])
