"""Batch sky masks: `tfsky predict` over files, folders and manifests, resumably.

`predict_many` runs a `PredictTask` with the job runner (`tfsky.batch`), which
expands the inputs, skips images whose outputs are complete, records a bad
file with its reason and goes on, and returns the done / skipped / failed
`tfsky.batch.Report`. On the local engine the next image is decoded in a
background thread while the model works on the current one, so an 8K EXR
decode does not leave the model idle (at the price of holding two decoded
images at once; HDR images are held as float16, see `tfsky.predict.segment`).
The outputs of one image are those of `tfsky.predict.outputs.OutputPaths`; they
are encoded and written in the runner's writer thread while the model works
on the next image (`tfsky.batch.LocalEngine`), sidecar last as ever. A
cloud model (`tfsky.models.bundle.ModelKind.CLOUD`) adds the class mask and the
cloud cover of each frame, and the job ends with the cloud-cover time series
of every finished frame (`tfsky.predict.outputs.write_cloud_series`).
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np

from tfsky import __version__
from tfsky.data.masks import sky_probability
from tfsky.errors import ConfigError, InputError
from tfsky.io.stores import as_path
from tfsky.batch import Decoded, Engine, Item, Listener, Report, Task, run_job
from tfsky.models.bundle import ModelKind, load_info
from tfsky.models.precision import InferencePrecision
from tfsky.predict.outputs import (
    Maps,
    OutputPaths,
    ProbFormat,
    overlay,
    write_maps,
    write_class_mask,
    write_cloud_series,
    write_overlay,
    write_sidecar,
)
from tfsky.predict.camera_mask import CameraPrior
from tfsky.predict.cloud import CloudCoverConfig, FrameCover
from tfsky.predict.segment import ModelInputs, TiledSegmenter, model_id
from tfsky.tiling import TilingConfig


@dataclasses.dataclass
class PredictConfig:
    """The ``predict:`` section of a config file (CLI flags override it).

    Args:
        tiling: TilingConfig. Tile, overlap, window, tile batch and TTA.
        threshold: Optional[float]. Probability at or above which a pixel is sky in the mask.
            Defaults to None: the model's own threshold, chosen on validation data after training.
        prob_format: str. ``png16`` (16-bit PNG, probability x 65535) or ``tif`` (float32). Defaults to ``png16``.
        cloud: CloudCoverConfig. Cloud models only: camera mask, okta and condition settings.
        camera_mask: Optional[Path]. A sky segmenter's camera prior (``tfsky streams skymask``'s
            ``camera_mask.png``, white = sky): each frame's probabilities are mixed with it by the frame's
            evidence (`tfsky.predict.camera_mask.CameraPrior`). Defaults to None.
        precision: str. ``auto``, ``float32``, ``bfloat16`` or ``as_trained``
            (`tfsky.models.precision.for_inference`): ``auto`` computes in bfloat16 only on a CPU with a
            bfloat16 unit and for a model whose stored verdict says its masks keep. Sidecars record what
            the model computed in. Defaults to ``auto``.
        drop_enclosed: bool. Sky segmenters: leave out of the mask the sky regions that touch no border of
            the frame (`tfsky.data.masks.sky_mask`) — for photos of the horizon, where they are road or wall
            called sky (Cityscapes left out: +0.05 IoU, docs/results/segmenter-generalisation.md); never for
            all-sky fisheye frames. The sidecar counts what was dropped. Defaults to False.
    """

    tiling: TilingConfig = dataclasses.field(default_factory=TilingConfig)
    threshold: Optional[float] = None
    prob_format: ProbFormat = "png16"
    cloud: CloudCoverConfig = dataclasses.field(default_factory=CloudCoverConfig)
    camera_mask: Optional[Path] = None
    precision: InferencePrecision = "auto"
    drop_enclosed: bool = False

    def validate(self) -> None:
        if self.threshold is not None and not 0 <= self.threshold <= 1:
            raise ConfigError("threshold", f"must be in [0, 1]; got {self.threshold}")


def predict_many(
    model_path: str | Path,
    inputs: Sequence[Path],
    out_dir: str | Path,
    config: PredictConfig | None = None,
    *,
    overwrite: bool = False,
    listener: Optional[Listener] = None,
    engine: Optional[Engine] = None,
) -> Report:
    """Predict every image of ``inputs`` into ``out_dir``; see the module docstring.

    Args:
        model_path: str | Path. A tfsky segmenter (``.keras`` with its sidecar).
        inputs: sequence of Path. Image files, folders (searched recursively) and ``.txt`` manifests.
        out_dir: str | Path. Output folder (created), or ``s3://bucket/prefix`` (`tfsky.io.stores`).
        config: PredictConfig. Tiling and output options. Defaults to None (the `PredictConfig` defaults).
        overwrite: bool. Redo images whose outputs are complete. Defaults to False.
        listener: Listener. Progress hooks. Defaults to None.
        engine: Engine. Where the images run. Defaults to the local engine.

    Raises:
        InputError: the model or the output folder cannot be used. Problems with single images are
            reported, not raised.
    """
    task = PredictTask(model_path, config or PredictConfig())
    report = run_job(task, inputs, out_dir, overwrite=overwrite, listener=listener, engine=engine)
    if task.cloud:
        finished = {str(source) for source in (*report.done, *report.skipped)}
        write_cloud_series(as_path(out_dir), finished)
    return report


class PredictTask(Task):
    """Mask, probability map, overlay and sidecar of one image (sidecar last: it marks the image complete).

    Args:
        model_path: str | Path. A tfsky segmenter.
        config: PredictConfig. Tiling and output options.
    """

    def __init__(self, model_path: str | Path, config: PredictConfig):
        self.model_path = Path(model_path)
        self.config = config
        self.inputs_of_model: Optional[ModelInputs] = None
        self.segmenter: Optional[TiledSegmenter] = None
        self.facts: dict = {}
        self.cloud = False
        self.cover: Optional[FrameCover] = None
        self.prior: Optional[CameraPrior] = None

    def check(self) -> None:
        if not self.model_path.is_file():  # before the sidecar: a mistyped path is reported as such
            raise InputError(self.model_path, "model file not found")
        info = load_info(self.model_path, kind=ModelKind.SEGMENTER)
        self.inputs_of_model = ModelInputs(info)
        self.cloud = info.kind is ModelKind.CLOUD
        if self.config.camera_mask is not None:
            if self.cloud:
                raise ConfigError(
                    "predict.camera_mask", "is for sky segmenters; a cloud model takes predict.cloud.camera_mask"
                )
            self.prior = CameraPrior.load(self.config.camera_mask)
        if self.config.drop_enclosed and self.cloud:
            raise ConfigError("predict.drop_enclosed", "is for sky segmenters; a cloud model's clouds are enclosed")

    def outputs(self, stem: Path) -> OutputPaths:
        return OutputPaths.for_stem(stem, self.config.prob_format, cloud=self.cloud)

    def read(self, source: Path) -> np.ndarray:
        assert self.inputs_of_model is not None  # check() ran
        return self.inputs_of_model.read(source)

    def load(self) -> None:
        self.segmenter = TiledSegmenter.load(self.model_path, self.config.tiling, self.config.precision)
        self.threshold = self.segmenter.mask_threshold(self.config.threshold)
        self.cover = FrameCover(self.config.cloud, self.threshold, self.segmenter.info) if self.cloud else None
        self.facts = {
            "model": {"path": str(self.model_path), "id": model_id(self.model_path)},
            "precision": self.segmenter.precision,
            "tfsky_version": __version__,
        }

    def process(self, item: Item, decoded: Decoded, outputs: OutputPaths, listener: Listener) -> Callable[[], None]:
        """Predict one decoded image; returns the writing of its outputs (sidecar last) for the runner's writer.

        The maps are converted here (cheap) so only the image, the stored maps and the masks wait for the
        writer, which draws the overlay and does the slow part: PNG/JPEG encoding.
        """
        image = decoded.take()
        segmenter, threshold = self.segmenter, self.threshold
        assert segmenter is not None  # load() ran
        height, width = image.shape[:2]
        tiles = segmenter.tile_count(height, width)
        listener.item_started(item.source, tiles)
        start = time.perf_counter()
        probs = segmenter.probabilities(image, progress=listener.steps_done)
        seconds = time.perf_counter() - start
        probability = sky_probability(probs)
        frame_facts, classes = {}, None
        if self.prior is not None:
            probability, frame_facts["camera_prior"] = self.prior.fuse(image, probability, threshold, item.source)
        if self.cover is not None:  # before any output: a frame without valid sky fails whole
            cloud, valid, frame_facts["cloud_cover"] = self.cover(image, probability, item.source)
            probability = np.where(valid, probability, 0.0)
            classes = (cloud, valid)
        maps = Maps.of(outputs, probability, threshold, self.config.drop_enclosed)
        if maps.dropped is not None:
            frame_facts["enclosed_sky_dropped"] = maps.dropped
        del probs, probability
        tiling = dataclasses.asdict(segmenter.tiling_for(height, width))
        facts = dict(
            source=str(item.source),
            height=height,
            width=width,
            tiles=tiles,
            **tiling,
            seconds=round(seconds, 3),
            **self.facts,
            **frame_facts,
        )
        restore = segmenter.inputs.restore

        def write() -> None:
            if classes is not None:
                write_class_mask(outputs, *classes)
            write_maps(outputs, maps)
            write_overlay(outputs, overlay(image, maps.mask, restore, in_place=True))
            write_sidecar(outputs, facts, maps.mask, threshold)

        return write
