"""Batch jobs: predict sky masks for files, folders and manifests, resumably.

`predict_many` expands the inputs into images, skips images whose outputs are
complete (unless ``overwrite``), and predicts the rest one by one. The next
image is decoded in a background thread while the model works on the current
one, so an 8K EXR decode does not leave the model idle (at the price of
holding two decoded images at once; HDR images are held as float16, see
`tfsky.predict.segment`). A bad file is recorded with its reason
and the job goes on; the returned `BatchReport` counts done / skipped / failed.

Output stems: a file input ``a/b.jpg`` writes ``OUT/b_*``; an image
``DIR/sub/c.png`` found in a folder input ``DIR`` writes ``OUT/sub/c_*``; a
manifest (``.txt``, one file or folder per line, relative to the manifest's
folder, ``#`` starts a comment) keeps the relative sub-folders of its lines.
Two inputs that would write the same outputs are a failure of the second.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import time
from pathlib import Path
from typing import Callable, Iterable, Iterator, Optional, TypeVar

import numpy as np

from tfsky import __version__
from tfsky.errors import ConfigError, InputError, TfskyError
from tfsky.io.atomic import remove_stale_temps
from tfsky.io.images import is_image_file
from tfsky.models.bundle import load_info
from tfsky.predict.outputs import (
    OutputPaths,
    ProbFormat,
    overlay,
    write_maps,
    write_overlay,
    write_sidecar,
)
from tfsky.predict.segment import ModelInputs, TiledSegmenter, model_id, sky_probability
from tfsky.tiling import TilingConfig

MANIFEST_SUFFIX = ".txt"
Outputs = TypeVar("Outputs", bound=Iterable[Path])


@dataclasses.dataclass
class PredictConfig:
    """The ``predict:`` section of a config file (CLI flags override it).

    Args:
        tiling: TilingConfig. Tile, overlap, window, tile batch and TTA.
        threshold: float. Probability at or above which a pixel is sky in the mask. Defaults to 0.5.
        prob_format: str. ``png16`` (16-bit PNG, probability x 65535) or ``tif`` (float32). Defaults to ``png16``.
    """

    tiling: TilingConfig = dataclasses.field(default_factory=TilingConfig)
    threshold: float = 0.5
    prob_format: ProbFormat = "png16"

    def validate(self) -> None:
        if not 0 <= self.threshold <= 1:
            raise ConfigError("threshold", f"must be in [0, 1]; got {self.threshold}")


@dataclasses.dataclass(frozen=True)
class ImageJob:
    """One image to predict and the output stem (relative to the output folder) it writes."""

    source: Path
    stem: Path


@dataclasses.dataclass
class BatchReport:
    """What a batch job did: images done, skipped (already complete) and failed (with the reason)."""

    done: list[Path] = dataclasses.field(default_factory=list)
    skipped: list[Path] = dataclasses.field(default_factory=list)
    failed: list[tuple[Path, str]] = dataclasses.field(default_factory=list)


class BatchListener:
    """Progress hooks of `predict_many` (the CLI draws bars with them); every method is optional."""

    def begin(self, images: int) -> None:
        """The job has ``images`` images in total (including the ones that will be skipped)."""

    def image_started(self, source: Path, tiles: int) -> None:
        """Prediction of ``source`` starts; it has ``tiles`` tiles."""

    def tiles_done(self, done: int, total: int) -> None:
        """``done`` of ``total`` tiles of the current image are predicted."""

    def image_finished(self, source: Path, status: str, reason: str = "") -> None:
        """``source`` is ``done``, ``skipped`` or ``failed`` (with ``reason``)."""


def predict_many(
    model_path: str | Path,
    inputs: list[Path],
    out_dir: str | Path,
    config: PredictConfig = PredictConfig(),
    *,
    overwrite: bool = False,
    listener: Optional[BatchListener] = None,
) -> BatchReport:
    """Predict every image of ``inputs`` into ``out_dir``; see the module docstring.

    Args:
        model_path: str | Path. A tfsky segmenter (``.keras`` with its sidecar).
        inputs: list of Path. Image files, folders (searched recursively) and ``.txt`` manifests.
        out_dir: str | Path. Output folder (created).
        config: PredictConfig. Tiling and output options. Defaults to ``PredictConfig()``.
        overwrite: bool. Redo images whose outputs are complete. Defaults to False.
        listener: BatchListener. Progress hooks. Defaults to None.

    Raises:
        InputError: the model cannot be loaded. Problems with single images are reported, not raised.
    """
    out_dir = Path(out_dir)
    listener = listener or BatchListener()
    if not Path(model_path).is_file():  # before the sidecar: a mistyped path is reported as such
        raise InputError(model_path, "model file not found")
    inputs_of_model = ModelInputs(load_info(model_path))
    jobs, failed = collect_jobs(inputs, out_dir)
    report = BatchReport(failed=failed)
    listener.begin(len(jobs) + len(failed))
    for source, reason in failed:
        listener.image_finished(source, "failed", reason)
    pending = unfinished(jobs, lambda stem: OutputPaths.for_stem(out_dir / stem, config.prob_format), overwrite, report)
    for source in report.skipped:
        listener.image_finished(source, "skipped")
    if pending:
        facts = {"model": {"path": str(model_path), "id": model_id(model_path)}, "tfsky_version": __version__}
        _predict_pending(model_path, inputs_of_model, pending, config, facts, report, listener)
    return report


def unfinished(
    jobs: list[ImageJob], outputs_of: Callable[[Path], Outputs], overwrite: bool, report: BatchReport
) -> list[tuple[ImageJob, Outputs]]:
    """The jobs to run with their outputs; jobs whose outputs all exist go to ``report.skipped``.

    ``outputs_of(stem)`` iterates over an image's output files, the one written
    last (which marks the image complete) last. Temporaries a killed run left
    are removed first, so a re-run finishes the job. ``overwrite`` runs every job.
    """
    pending = []
    for job in jobs:
        outputs = outputs_of(job.stem)
        for path in outputs:
            remove_stale_temps(path)
        if not overwrite and all(path.is_file() for path in outputs):
            report.skipped.append(job.source)
        else:
            pending.append((job, outputs))
    return pending


def _predict_pending(model_path, inputs_of_model, pending, config, facts, report, listener) -> None:
    """Predict ``pending`` (job, paths) pairs in order; the next image is decoded while the current one runs.

    The first image is decoded before the model is loaded, so the decoder's and
    the model loader's memory peaks do not add up. Decoded images travel in a
    one-item list that `_predict_one` empties: it holds the only reference and
    frees the image as soon as it is drawn.
    """
    with concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="tfsky-read") as pool:
        read = functools.partial(pool.submit, _read, inputs_of_model)
        upcoming = read(pending[0][0].source)
        concurrent.futures.wait([upcoming])
        segmenter = TiledSegmenter.load(model_path, config.tiling)
        for index, (job, paths) in enumerate(pending):
            current = upcoming
            upcoming = read(pending[index + 1][0].source) if index + 1 < len(pending) else None
            try:
                _predict_one(segmenter, current.result(), job, paths, config, facts, listener)
            except (TfskyError, OSError) as err:
                reason = failure_reason(err, job.source)
                report.failed.append((job.source, reason))
                listener.image_finished(job.source, "failed", reason)
            else:
                report.done.append(job.source)
                listener.image_finished(job.source, "done")


def failure_reason(err: TfskyError | OSError, source: Path) -> str:
    """The reason a batch job reports for ``source``: an `InputError` about ``source`` itself without its path."""
    about_source = isinstance(err, InputError) and Path(err.path) == source
    return err.problem if about_source else str(err)


def _read(inputs_of_model: ModelInputs, source: Path) -> list[np.ndarray]:
    """Decode in the prefetch thread; the image is handed over in a list the consumer empties."""
    return [inputs_of_model.read(source)]


def _predict_one(segmenter, handed_over: list[np.ndarray], job, paths, config, facts, listener) -> None:
    """Predict one decoded image and write its outputs, sidecar last; big arrays are freed as soon as possible."""
    image = handed_over.pop()
    height, width = image.shape[:2]
    tiles = segmenter.tile_count(height, width)
    listener.image_started(job.source, tiles)
    start = time.perf_counter()
    probs = segmenter.probabilities(image, progress=listener.tiles_done)
    seconds = time.perf_counter() - start
    mask = write_maps(paths, sky_probability(probs), config.threshold)
    del probs
    shown = overlay(image, mask, segmenter.inputs.restore)
    del image
    write_overlay(paths, shown)
    del shown
    tiling = dataclasses.asdict(segmenter.tiling)
    facts = dict(source=str(job.source), height=height, width=width, tiles=tiles, **tiling, seconds=round(seconds, 3),
                 **facts)
    write_sidecar(paths, facts, mask, config.threshold)


def collect_jobs(inputs: list[Path], out_dir: Path) -> tuple[list[ImageJob], list[tuple[Path, str]]]:
    """Expand inputs into image jobs; returns ``(jobs, failures)`` (unreadable manifests, name collisions)."""
    jobs: list[ImageJob] = []
    failures: list[tuple[Path, str]] = []
    owners: dict[Path, Path] = {}
    for job in _expand(inputs, out_dir, failures):
        first = owners.get(job.stem)
        if first is None:
            owners[job.stem] = job.source
            jobs.append(job)
        elif first != job.source:
            failures.append((job.source, f"writes the same outputs ({job.stem}_*) as {first}"))
    return jobs, failures


def _expand(inputs: list[Path], out_dir: Path, failures: list) -> Iterator[ImageJob]:
    for path in map(Path, inputs):
        if path.is_dir():
            yield from _folder_jobs(path, Path(), out_dir)
        elif path.suffix.lower() == MANIFEST_SUFFIX:
            yield from _manifest_jobs(path, out_dir, failures)
        else:  # a missing or unreadable file fails when it is read, with the reader's reason
            yield ImageJob(path, Path(path.stem))


def _folder_jobs(folder: Path, prefix: Path, out_dir: Path) -> Iterator[ImageJob]:
    """Images under ``folder`` (recursive, sorted), skipping hidden files and the output folder."""
    out_dir = out_dir.resolve()
    for path in sorted(folder.rglob("*")):
        relative = path.relative_to(folder)
        if not path.is_file() or not is_image_file(path) or any(p.startswith(".") for p in relative.parts):
            continue
        if out_dir in path.resolve().parents:
            continue
        yield ImageJob(path, prefix / relative.with_suffix(""))


def _manifest_jobs(manifest: Path, out_dir: Path, failures: list) -> Iterator[ImageJob]:
    """The files and folders listed in ``manifest``; relative lines keep their sub-folders in the output."""
    try:
        lines = manifest.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        failures.append((manifest, f"cannot read manifest ({err.strerror if isinstance(err, OSError) else err})"))
        return
    for line in lines:
        entry = line.split("#", 1)[0].strip()
        if not entry:
            continue
        relative = Path(entry)
        path = manifest.parent / relative
        prefix = relative if not relative.is_absolute() and ".." not in relative.parts else Path(relative.name)
        if path.is_dir():
            yield from _folder_jobs(path, prefix, out_dir)
        else:
            yield ImageJob(path, prefix.with_suffix(""))
