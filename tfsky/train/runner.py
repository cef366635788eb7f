"""The training loop around ``Model.fit`` shared by every tfsky model family.

A run lives in ``<runs_root>/<name>/<timestamp>/`` (`run_directory`) and holds::

    config.yaml            resolved config (`start_run`)
    best.keras, best.json  best model so far on the monitored metric (written by ``save_best``)
    state.json             best value/epoch and whether early stopping ended the run
    last/                  resume checkpoint (model, optimizer, epoch counter), every epoch
    history.csv            one row per completed epoch, across resumes
    tensorboard/           scalars (train/, validation/) and images (images/)
    learning_curves.png    drawn when fit returns

Every file is written atomically. After ``kill -9`` the same call with the
same ``run_dir`` continues at the first unfinished epoch: Keras
`BackupAndRestore` restores weights, optimizer state and the epoch counter
(from ``last/``, written at the end of each epoch after every other file of
that epoch); ``history.csv`` drops rows of epochs that are being redone.

Multi-worker training (``MultiWorkerMirroredStrategy``): every worker runs
the same calls. The chief picks the run folder and every worker gets its path
(they must share the file system, as Keras' `BackupAndRestore` requires to
resume); only the chief writes the run's files — the others write theirs into
a temporary folder that is deleted when ``fit`` returns, so every worker does
the same work (saving a model may involve collectives) without two writers on
one file.

Usage (any Keras model, including one with a custom ``train_step`` — track
extra optimizers as attributes of the model so the checkpoint holds them)::

    run_dir, resumed = start_run(Path("runs"), "pix2pix_tiny", cfg, resume=True)
    result = fit_run(
        model, train_ds, val_ds, run_dir=run_dir, epochs=cfg.train.epochs,
        monitor="val_l1", mode="min",
        save_best=lambda model, path, logs: bundle.save_model(model, path, info(logs)),
        images=lambda model: {"source|generated|target": triplets(model)},
    )
    result.best_metrics["val_l1"], result.best_epoch, result.run_dir

``images(model)`` returns named float image batches ``[N, H, W, 1|3|4]`` in
[0, 1]; they are logged to TensorBoard at the end of every epoch.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import datetime
import io
import json
import math
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, Literal, Optional

import tensorflow as tf
from tensorflow.core.framework import summary_pb2

from tfsky.config import dump_config
from tfsky.errors import TfskyError
from tfsky.io.atomic import atomic_path, prepare_out_dir, remove_stale_temps, write_json, write_text
from tfsky.progress import logger

if TYPE_CHECKING:
    from tfsky.train.config import TrainConfig

log = logger("train")

RUN_FILES = ("config.yaml", "best.keras", "best.json", "state.json", "history.csv", "learning_curves.png")

SaveBest = Callable[[tf.keras.Model, Path, dict], None]
ImageFn = Callable[[tf.keras.Model], dict]


@dataclasses.dataclass
class RunResult:
    """What a finished (or resumed and finished) run produced.

    Args:
        run_dir: Path. The run folder.
        best_epoch: Optional[int]. 1-based epoch of ``best.keras`` (None if no epoch finished).
        best_metrics: dict. The history row of that epoch (all train and val logs).
        epochs_completed: int. Rows in ``history.csv``.
        resumed: bool. Whether training continued an existing run folder.
        stopped_early: bool. Whether early stopping ended it.
    """

    run_dir: Path
    best_epoch: Optional[int]
    best_metrics: dict[str, float]
    epochs_completed: int
    resumed: bool
    stopped_early: bool


def seed_everything(train: TrainConfig) -> None:
    """Seed Python, NumPy and TF from ``train.seed``; with ``deterministic`` also fix op order."""
    if train.seed is not None:
        tf.keras.utils.set_random_seed(train.seed)
    if train.deterministic:
        tf.config.experimental.enable_op_determinism()


def start_run(runs_root: Path, name: str, config: Any, resume: bool = False) -> tuple[Path, bool]:
    """`run_directory`, with the resolved ``config`` (a config dataclass) written into it as ``config.yaml``."""
    run_dir, resumed = run_directory(runs_root, name, resume)
    if is_chief():
        dump_config(config, run_dir / "config.yaml")
    return run_dir, resumed


def run_directory(runs_root: Path, name: str, resume: bool = False) -> tuple[Path, bool]:
    """``(run_dir, resumed)``: the newest run of ``name`` when resuming and one exists, else a new one.

    New runs are named by local time, ``YYYYmmdd-HHMMSS`` (``-1``, ``-2``... if
    taken). Under a multi-worker strategy the chief chooses and creates the
    folder and the other workers receive its name (call it in the strategy scope).
    """
    parent = Path(runs_root) / name
    folder, resumed = "", False
    if is_chief():
        existing = sorted(p for p in parent.glob("*") if p.is_dir() and not p.name.startswith("."))
        if resume and existing:
            folder, resumed = existing[-1].name, True
        else:
            folder = _new_run_name(parent)
            prepare_out_dir(parent)  # runs_root inside a file, read-only...: one line, not a traceback
            (parent / folder).mkdir(parents=True)
    chosen = _from_chief(("+" if resumed else "-") + folder)
    return parent / chosen[1:], chosen[0] == "+"


def _new_run_name(parent: Path) -> str:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    name, suffix = stamp, 0
    while (parent / name).exists():
        suffix += 1
        name = f"{stamp}-{suffix}"
    return name


def is_chief() -> bool:
    """Whether this process writes the run's files: always, except on non-chief workers of a multi-worker run."""
    return tf.distribute.get_strategy().extended.should_checkpoint


def _from_chief(text: str, length: int = 256) -> str:
    """The chief's ``text`` (<= ``length`` UTF-8 bytes: a file name) on every worker; other strategies return it.

    A collective: every worker calls it. Only replica 0 (on the chief) adds
    its character codes to an all-reduce sum that the others feed zeros.
    """
    strategy = tf.distribute.get_strategy()
    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return text
    codes = tf.constant(list(text.encode().ljust(length, b"\0")), tf.float32)

    def replica_share() -> tf.Tensor:
        first = tf.distribute.get_replica_context().replica_id_in_sync_group == 0
        return tf.where(first, codes, tf.zeros_like(codes))

    summed = strategy.reduce(tf.distribute.ReduceOp.SUM, strategy.run(replica_share), axis=None)
    return bytes(int(code) for code in summed.numpy()).rstrip(b"\0").decode()


def fit_run(
    model: tf.keras.Model,
    train_ds: tf.data.Dataset,
    val_ds: tf.data.Dataset,
    *,
    run_dir: Path,
    epochs: int,
    monitor: str,
    mode: Literal["min", "max"],
    save_best: SaveBest,
    images: Optional[ImageFn] = None,
    extra_callbacks: Iterable[tf.keras.callbacks.Callback] = (),
    steps_per_epoch: Optional[int] = None,
    verbose: int = 2,
) -> RunResult:
    """Fit a compiled ``model`` into ``run_dir``, resuming from ``run_dir/last`` if present.

    Args:
        model: tf.keras.Model. Compiled (built inside the strategy scope if any).
        train_ds: tf.data.Dataset. Training batches, one epoch of them (finite).
        val_ds: tf.data.Dataset. Finite validation batches (evaluated in full each epoch).
        run_dir: Path. From `run_directory`.
        epochs: int. Total epochs, counting those done before a resume.
        monitor: str. Validation log key that picks ``best.keras``, e.g. ``val_iou``.
        mode: str. ``max`` or ``min``: which direction of ``monitor`` is better.
        save_best: callable ``(model, path, logs)`` that writes the model to
            ``path`` (``run_dir/best.keras``) atomically; ``logs`` is the epoch's row.
        images: optional callable ``model -> {name: images [N, H, W, C] in [0, 1]}``
            logged to TensorBoard each epoch.
        extra_callbacks: e.g. EarlyStopping, ReduceLROnPlateau. Run before the
            resume checkpoint is written.
        steps_per_epoch: Optional[int]. Batches per epoch. Defaults to None:
            one pass, the cardinality of ``train_ds``.
        verbose: int. Keras progress output (0 silent, 1 bar, 2 one line per epoch).

    ``train_ds`` is repeated and read by ONE iterator for the whole fit (Keras
    keeps the iterator of an infinite dataset given ``steps_per_epoch``): a
    fresh iterator every epoch re-instantiates every function of the pipeline,
    ~40 ms per epoch for the segmentation pipeline. Shuffles and random
    augmentation still change every epoch. Only a dataset of unknown length
    without ``steps_per_epoch`` is read one pass per epoch with a new iterator.
    """
    run_dir = Path(run_dir)
    resumed = (run_dir / "last").exists()
    with _files_folder(run_dir) as files:
        for name in RUN_FILES:  # temp files of writes a kill interrupted
            remove_stale_temps(files / name)
        state = RunState.load(run_dir / "state.json", monitor, mode)  # the chief's, on every worker
        state.path = files / "state.json"
        steps = steps_per_epoch or _known_length(train_ds)
        if not state.stopped_early:  # a run ended by early stopping has nothing left to do
            model.fit(
                train_ds.repeat() if steps else train_ds,
                validation_data=val_ds,
                epochs=epochs,
                steps_per_epoch=steps,
                callbacks=run_callbacks(run_dir, files, state, save_best, images, extra_callbacks, verbose > 0),
                verbose=verbose,
            )
            state.stopped_early = bool(model.stop_training)
            state.save()
        rows = read_history(files / "history.csv")
        if rows:
            draw_learning_curves(rows, files / "learning_curves.png")
    best_row = next((row for row in rows if row["epoch"] == state.best_epoch), {})
    return RunResult(run_dir, state.best_epoch, best_row, len(rows), resumed, state.stopped_early)


@contextlib.contextmanager
def _files_folder(run_dir: Path) -> Iterator[Path]:
    """Where this process writes the run's files: ``run_dir``, or a temporary folder on a non-chief worker."""
    if is_chief():
        yield run_dir
        return
    with tempfile.TemporaryDirectory(prefix="tfsky-worker-run.") as temp:
        yield Path(temp)


def _known_length(dataset: tf.data.Dataset) -> Optional[int]:
    """Batches in one pass of ``dataset``, or None when tf.data cannot tell (e.g. after ``flat_map``)."""
    length = int(dataset.cardinality())
    return length if length >= 0 else None


def run_callbacks(
    run_dir: Path,
    files: Path,
    state: "RunState",
    save_best: SaveBest,
    images: Optional[ImageFn],
    extra_callbacks: Iterable[tf.keras.callbacks.Callback],
    report_budget: bool = False,
) -> list[tf.keras.callbacks.Callback]:
    """The run's callbacks, in the order their epoch-end work must happen.

    They write into ``files`` (``run_dir`` on the chief); the resume checkpoint
    goes to ``run_dir/last`` on every worker (Keras keeps non-chief writes
    apart), and comes last: once it is written, every other file of the epoch
    is already in place, so "epoch N done" means all of it.
    """
    return [
        StopOnNonFiniteLoss(),
        Budget(report=report_budget),
        HistoryCSV(files / "history.csv", read_from=run_dir / "history.csv"),
        BestModel(state, files / "best.keras", save_best),
        TensorBoardLogger(files / "tensorboard", images),
        *extra_callbacks,
        tf.keras.callbacks.BackupAndRestore(str(run_dir / "last"), delete_checkpoint=False),
    ]


@dataclasses.dataclass
class RunState:
    """The best monitored value so far, kept in ``state.json`` so it survives a resume."""

    path: Path
    monitor: str
    mode: str
    best: Optional[float] = None
    best_epoch: Optional[int] = None
    stopped_early: bool = False

    @classmethod
    def load(cls, path: Path, monitor: str, mode: str) -> "RunState":
        saved = json.loads(path.read_text()) if path.is_file() else {}
        if saved.get("monitor", monitor) != monitor:
            saved = {}  # a different metric: the old best is not comparable
        keep = {k: saved[k] for k in ("best", "best_epoch", "stopped_early") if k in saved}
        return cls(path, monitor, mode, **keep)

    def improves(self, value: float) -> bool:
        if self.best is None:
            return True
        return value > self.best if self.mode == "max" else value < self.best

    def save(self) -> None:
        fields = dataclasses.asdict(self)
        del fields["path"]
        write_json(self.path, fields)


class BestModel(tf.keras.callbacks.Callback):
    """Calls ``save_best`` when the monitored value improves, then records it in the run state."""

    def __init__(self, state: RunState, path: Path, save_best: SaveBest):
        super().__init__()
        self.state, self.path, self.save_best = state, path, save_best

    def on_epoch_end(self, epoch, logs=None):
        logs = _plain_logs(logs)
        if self.state.monitor not in logs:
            raise KeyError(f"monitored metric {self.state.monitor!r} not in the epoch logs {sorted(logs)}")
        value = logs[self.state.monitor]
        if math.isfinite(value) and self.state.improves(value):  # a NaN metric is never "the best so far"
            self.save_best(self.model, self.path, logs)
            self.state.best, self.state.best_epoch = logs[self.state.monitor], epoch + 1
            self.state.save()


class NonFiniteLoss(TfskyError):
    """The training loss became NaN or infinite: the weights are ruined, so the run stops there."""


class StopOnNonFiniteLoss(tf.keras.callbacks.Callback):
    """Keras' `TerminateOnNaN`, but raising: no epoch-end callback runs, so no ``best.keras`` or resume
    checkpoint is written from the ruined weights (``last/`` keeps the last good epoch)."""

    def __init__(self):
        super().__init__()
        self.epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        for key, value in _plain_logs(logs).items():
            if key.endswith("loss") and not math.isfinite(value):
                raise NonFiniteLoss(
                    f"training stopped: {key} became {value} at epoch {self.epoch + 1}, batch "
                    f"{batch + 1} (too high a learning rate? inputs with NaN?); no model was saved "
                    "from this epoch"
                )


class Budget(tf.keras.callbacks.Callback):
    """Measures each epoch's wall time (``epoch_seconds`` in the logs, so in ``history.csv``) and, from
    the second epoch of a fit on (the first one also traces the graphs), logs the measured seconds per
    training step and the projected end time, so a stated budget can be checked against this machine.
    """

    def __init__(self, report: bool = True, report_every: int = 5):
        super().__init__()
        self.report, self.report_every = report, report_every
        self.epochs_done = 0
        self.steady: list[float] = []  # seconds of the epochs after the first of this fit

    def on_epoch_begin(self, epoch, logs=None):
        self.started = time.monotonic()

    def on_epoch_end(self, epoch, logs=None):
        seconds = time.monotonic() - self.started
        if logs is not None:
            logs["epoch_seconds"] = seconds
        self.epochs_done += 1
        if self.epochs_done > 1:
            self.steady.append(seconds)
        due = len(self.steady) == 1 or (self.steady and epoch % self.report_every == 0)
        if self.report and due and is_chief():
            log.info("%s", self.projection(epoch + 1))

    def projection(self, epochs_completed: int) -> str:
        """One line: measured seconds per step and epoch, and when the run will end at that pace."""
        per_epoch = sum(self.steady) / len(self.steady)
        steps = self.params.get("steps") or 1
        left = max(0, self.params.get("epochs", epochs_completed) - epochs_completed)
        end = datetime.datetime.now() + datetime.timedelta(seconds=left * per_epoch)
        return (
            f"budget: {per_epoch / steps:.2f} s/step measured ({per_epoch:.0f} s/epoch incl. validation, "
            f"{len(self.steady)} epoch(s)); {left} epoch(s) left: ends ~{end:%H:%M} (in {left * per_epoch / 60:.0f} min)"
        )


class HistoryCSV(tf.keras.callbacks.Callback):
    """``history.csv``: one row per completed epoch (``epoch`` is 1-based), rewritten atomically.

    Rows of epochs at or after the first epoch of this ``fit`` are dropped, so an
    epoch redone after a kill appears once.
    """

    def __init__(self, path: Path, read_from: Optional[Path] = None):
        super().__init__()
        self.path, self.read_from = path, read_from or path
        self.rows: Optional[list[dict]] = None

    def on_epoch_begin(self, epoch, logs=None):
        if self.rows is None:
            self.rows = [row for row in read_history(self.read_from) if row["epoch"] <= epoch]

    def on_epoch_end(self, epoch, logs=None):
        row = {"epoch": epoch + 1, **_plain_logs(logs)}
        learning_rate = current_learning_rate(self.model)
        if learning_rate is not None:
            row["lr"] = learning_rate
        assert self.rows is not None  # on_epoch_begin read them
        self.rows.append(row)
        write_text(self.path, history_text(self.rows))


class TensorBoardLogger(tf.keras.callbacks.Callback):
    """Epoch scalars (``tensorboard/train``, ``tensorboard/validation``) and ``images(model)`` (``tensorboard/images``).

    Written with core ``tf.summary.write`` plus the TensorBoard plugin metadata,
    so logging works without the ``tensorboard`` package installed (TF 2.21
    no longer depends on it); ``tensorboard --logdir runs`` reads the files.
    """

    def __init__(self, log_dir: Path, images: Optional[ImageFn] = None):
        super().__init__()
        self.log_dir, self.images = log_dir, images
        self.writers: dict[str, tf.summary.SummaryWriter] = {}

    def on_train_begin(self, logs=None):
        self.writers = {name: tf.summary.create_file_writer(str(self.log_dir / name)) for name in _TB_RUNS}

    def on_epoch_end(self, epoch, logs=None):
        for key, value in _plain_logs(logs).items():
            run, name = ("validation", key[4:]) if key.startswith("val_") else ("train", key)
            with self.writers[run].as_default():
                tf.summary.write(f"epoch_{name}", tf.constant(value, tf.float32), epoch + 1, _scalar_metadata())
        if self.images is not None:
            with self.writers["images"].as_default():
                for name, batch in self.images(self.model).items():
                    tf.summary.write(name, png_summary_tensor(batch), epoch + 1, _image_metadata())
        for writer in self.writers.values():
            writer.flush()

    def on_train_end(self, logs=None):
        for writer in self.writers.values():
            writer.close()


_TB_RUNS = ("train", "validation", "images")


def _scalar_metadata() -> bytes:
    return _plugin_metadata("scalars", summary_pb2.DATA_CLASS_SCALAR)


def _image_metadata() -> bytes:
    return _plugin_metadata("images", summary_pb2.DATA_CLASS_BLOB_SEQUENCE)


def _plugin_metadata(plugin: str, data_class: int) -> bytes:
    """Serialized `SummaryMetadata` that tells TensorBoard which plugin shows a summary."""
    plugin_data = summary_pb2.SummaryMetadata.PluginData(plugin_name=plugin)
    return summary_pb2.SummaryMetadata(plugin_data=plugin_data, data_class=data_class).SerializeToString()


def png_summary_tensor(images: tf.Tensor) -> tf.Tensor:
    """TensorBoard's image summary layout: ``[width, height, png_1, ..., png_N]`` as strings."""
    pixels = tf.image.convert_image_dtype(tf.clip_by_value(tf.cast(images, tf.float32), 0, 1), tf.uint8)
    pngs = [tf.io.encode_png(image) for image in tf.unstack(pixels)]
    shape = tf.shape(pixels)
    return tf.stack([tf.as_string(shape[2]), tf.as_string(shape[1]), *pngs])


def current_learning_rate(model: tf.keras.Model) -> Optional[float]:
    """The optimizer's learning rate now (schedules evaluated at the current step); None without one."""
    optimizer = getattr(model, "optimizer", None)
    if optimizer is None or not hasattr(optimizer, "learning_rate"):
        return None
    rate = optimizer.learning_rate
    if isinstance(rate, tf.keras.optimizers.schedules.LearningRateSchedule):  # legacy optimizers
        rate = rate(optimizer.iterations)
    return float(tf.keras.backend.get_value(rate))


def _plain_logs(logs) -> dict[str, float]:
    return {key: float(value) for key, value in (logs or {}).items()}


def read_history(path: Path) -> list[dict]:
    """Rows of ``history.csv`` with numbers parsed (``epoch`` as int); [] if there is none yet."""
    if not path.is_file():
        return []
    with path.open(newline="") as f:
        return [
            {key: int(value) if key == "epoch" else float(value) for key, value in row.items() if value != ""}
            for row in csv.DictReader(f)
        ]


def history_text(rows: list[dict]) -> str:
    """CSV text of ``rows``; columns in first-seen order (a resumed run may add one)."""
    columns = list(dict.fromkeys(key for row in rows for key in row))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def draw_learning_curves(rows: list[dict], path: Path) -> None:
    """One panel per metric (train and ``val_`` curves against epoch), saved atomically as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = [key for key in rows[0] if key not in ("epoch", "lr", "epoch_seconds") and not key.startswith("val_")]
    fig, axes = plt.subplots(1, len(metrics), figsize=(4 * len(metrics), 3.2), squeeze=False)
    epochs = [row["epoch"] for row in rows]
    for ax, metric in zip(axes[0], metrics):
        for key, style in ((metric, "-"), (f"val_{metric}", "--")):
            if key in rows[0]:
                ax.plot(epochs, [row.get(key) for row in rows], style, marker="o", markersize=3, label=key)
        values = [value for row in rows for key in (metric, f"val_{metric}") if (value := row.get(key)) is not None]
        if "loss" in metric and min(values) > 0:  # (a log-likelihood loss such as log_l2 goes negative)
            ax.set_yscale("log")  # the first validation loss of a fresh BatchNorm model can be 1000x the rest
        ax.set_xlabel("epoch")
        ax.set_title(metric)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100)
    plt.close(fig)
