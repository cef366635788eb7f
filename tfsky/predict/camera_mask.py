"""One sky mask per webcam, learnt from its own stream, and the camera prior that rescues frames without evidence.

A fixed webcam sees the same sky in every frame, but a frame alone may carry
no evidence of it (night, fog, a blank frame). ``tfsky streams skymask``
(`learn_camera_mask`, run over many streams by `skymask_streams`) fuses the
sky probabilities of a stream's usable frames into one camera mask:

* **Frames**: those the manifest marks usable (``tfsky streams validate``
  rejects night, blank, saturated, corrupt, odd-sized and low-confidence
  frames), plus the ones it marked ``moved`` (see alignment). A frame the model
  is unsure about (mean ``|2p - 1|`` below ``min_confidence``, e.g. fog) is
  rejected ``uncertain``; the others weigh by that confidence.
* **Consensus**: per pixel, the weighted median of the frames' probabilities,
  from a running weighted histogram (`Consensus`, `CONSENSUS_BINS` bins): it
  ignores a minority of frames with a bird, a crane or a wrong prediction, and
  its memory is the histogram (bins x the working-scale grid), whatever the
  number of frames. The agreement map is the weighted share of frames on the
  median's side of the threshold.
* **Moved camera**: frames are aligned, not split. Each frame's edge map is
  phase-correlated with the median frame's (`tfsky.data.streams.edge_offset`,
  as ``validate``); the probabilities are shifted back by the offset before
  they are fused, pixels shifted in from outside count for nothing. A frame
  shifted by more than ``max_offset`` of the width, or whose aligned edges
  still correlate below ``min_edge_correlation`` (it turned or zoomed), is
  rejected ``moved``. So the mask is in the geometry of the median frame.
* **Full resolution**: the working-scale consensus is brought to the frames'
  size by the guided filter of `tfsky.predict.refine` with the median of up to
  `MEDIAN_FRAMES` usable frames as guide (the sky line follows its edges).
* **Sky regions** (`sky_regions`): a model that calls a white wall sky does so
  in most frames, so no per-pixel consensus removes it; the shape of the mask
  does. A connected sky region smaller than ``min_region`` of the frame (a
  wall, a reflection, specks along the sky line) is dropped, and so is one
  that does not reach the frame's border (the sky lies beyond the scene; a
  region the scene encloses is a facade under its roof, a window); an all-sky
  fisheye, whose sky is a disc inside the frame, keeps it with
  ``keep_enclosed``. A camera that sees no sky gets an empty mask.
* **Resumable**: the running state is checkpointed every ``checkpoint_every``
  frames beside the outputs; an interrupted stream continues from it (same
  model and frames), a finished one is skipped by the job runner.

Outputs beside each manifest, each written atomically: ``camera_mask.png``
(0/255, white = sky, as SkyFinder's), ``camera_mask_agreement.png`` (0..255),
``camera_mask_overlay.jpg`` (the mask over the median frame),
``stream.json``'s ``skymask`` record, and last ``camera_mask.json`` (the
report: frames used, rejected and why, sky share, agreement, frames whose own
sky disagrees with the mask).

`CameraPrior` is what ``tfsky predict --camera-mask`` does with such a mask:
each frame's own probability and the camera's are mixed by the frame's
evidence (`CameraPrior.evidence`), so a night or fog frame takes the camera's
sky and a clear frame keeps its own (clouds, birds, a crane).
"""

from __future__ import annotations

import dataclasses
import json
from collections import Counter
from pathlib import Path
from typing import Callable, Iterator, Optional, Protocol, Sequence

import cv2
import numpy as np

from tfsky.data.masks import iou as mask_iou, sky_mask, sky_regions
from tfsky.data.scale import resize_image, working_size
from tfsky.data.streams import (
    NIGHT_LUMINANCE,
    Frame,
    Stream,
    analysis_luminance,
    analysis_size,
    correlation,
    edge_map,
    edge_offset,
    manifest_files,
    read_manifest,
    update_manifest,
)
from tfsky.errors import ConfigError, InputError
from tfsky.io.atomic import atomic_path, remove_stale_temps, write_json
from tfsky.io.images import read_image, read_mask
from tfsky.io.writers import write_jpeg, write_mask_png, write_png
from tfsky.batch import Decoded, Engine, Item, Listener, Report, Task, run_items
from tfsky.models.bundle import ModelKind, load_info
from tfsky.predict.outputs import overlay
from tfsky.predict.refine import refine
from tfsky.predict.segment import TiledSegmenter, model_id

CONSENSUS_BINS = 16  # histogram bins over [0, 1]: the median is interpolated within a 1/16-wide bin
MAX_CONSENSUS_SIDE = 384  # short side of the consensus grid, at most (the working scale of the CPU recipe)
MEDIAN_FRAMES = 9  # usable frames whose median is the guide of the refinement and the alignment reference
STEM = "camera_mask"


@dataclasses.dataclass
class SkymaskConfig:
    """How a camera mask is learnt (``tfsky streams skymask`` flags).

    Args:
        min_confidence: float. Frames whose mean ``|2p - 1|`` is below this are rejected ``uncertain``. Defaults to 0.4.
        max_offset: float. Largest shift that is aligned, as a fraction of the width. Defaults to 0.15.
        min_edge_correlation: float. Smallest edge correlation with the median frame after alignment. Defaults to 0.45.
        min_frame_iou: float. A used frame's own sky with a lower IoU with the mask is listed in
            ``sky_disagrees``. Defaults to 0.7.
        threshold: Optional[float]. Sky probability cut; None: the model's own. Defaults to None.
        min_region: float. Sky regions smaller than this share of the frame are dropped. Defaults to 0.01.
        keep_enclosed: bool. Keep sky regions that do not reach the frame's border (an all-sky fisheye's
            disc). Defaults to False.
        analysis_width: int. Width at which frames are aligned. Defaults to 320.
        checkpoint_every: int. Frames between checkpoints of the running consensus. Defaults to 25.
    """

    min_confidence: float = 0.4
    max_offset: float = 0.15
    min_edge_correlation: float = 0.45
    min_frame_iou: float = 0.7
    threshold: Optional[float] = None
    min_region: float = 0.01
    keep_enclosed: bool = False
    analysis_width: int = 320
    checkpoint_every: int = 25

    def validate(self) -> None:
        for key in ("min_confidence", "max_offset", "min_frame_iou", "min_region"):
            if not 0 <= getattr(self, key) <= 1:
                raise ConfigError(key, f"must be in [0, 1]; got {getattr(self, key)}")
        if self.threshold is not None and not 0 <= self.threshold <= 1:
            raise ConfigError("threshold", f"must be in [0, 1]; got {self.threshold}")
        if self.checkpoint_every < 1:
            raise ConfigError("checkpoint_every", f"must be >= 1; got {self.checkpoint_every}")


class SkySegmenter(Protocol):
    """What learning a camera mask needs from a segmenter (`tfsky.predict.segment.TiledSegmenter`)."""

    def sky_probability(self, image: np.ndarray) -> np.ndarray: ...

    def model_size(self, height: int, width: int) -> tuple[int, int]: ...

    def mask_threshold(self, requested: float | None = None) -> float: ...


@dataclasses.dataclass
class SkyModel:
    """A loaded segmenter and its identity (recorded in ``stream.json``; a checkpoint is resumed by the same model)."""

    segmenter: SkySegmenter
    id: str
    path: str

    @classmethod
    def load(cls, path: str | Path) -> "SkyModel":
        return cls(TiledSegmenter.load(path), model_id(path), str(path))


# --- the running consensus ------------------------------------------------------------------------


class Consensus:
    """Per-pixel weighted histogram of sky probabilities: a weighted median and agreement in bounded memory."""

    def __init__(self, shape: tuple[int, int], bins: int = CONSENSUS_BINS):
        self.bins = bins
        self.weights = np.zeros((bins, *shape), np.float32)

    def add(self, probability: np.ndarray, weight: float, valid: np.ndarray) -> None:
        """Count one frame's ``[h, w]`` probabilities with ``weight`` where ``valid``."""
        index = np.minimum((probability * self.bins).astype(np.int64), self.bins - 1).clip(0)
        pixels = probability.size
        flat = index.ravel() * pixels + np.arange(pixels)
        counts = np.bincount(flat, weights=(valid.ravel() * np.float32(weight)), minlength=self.bins * pixels)
        self.weights += counts.reshape(self.weights.shape).astype(np.float32)

    def probability(self) -> np.ndarray:
        """The weighted median per pixel, interpolated within its bin (0 where no frame counted)."""
        cumulative = np.cumsum(self.weights, axis=0)
        half = cumulative[-1] / 2
        median_bin = np.argmax(cumulative >= half, axis=0)
        below = np.where(median_bin > 0, np.take_along_axis(cumulative, np.maximum(median_bin - 1, 0)[None], 0)[0], 0)
        inside = np.take_along_axis(self.weights, median_bin[None], 0)[0]
        within = np.divide(half - below, inside, out=np.full_like(half, 0.5), where=inside > 0)
        median = (median_bin + within) / self.bins
        return np.where(cumulative[-1] > 0, median, 0.0).astype(np.float32)

    def agreement(self, threshold: float) -> np.ndarray:
        """Weighted share of frames whose probability falls on the median's side of ``threshold`` (0 where none)."""
        centres = (np.arange(self.bins, dtype=np.float32) + 0.5) / self.bins
        total = self.weights.sum(axis=0)
        sky_votes = self.weights[sky_mask(centres, threshold)].sum(axis=0)
        said_sky = sky_mask(self.probability(), threshold)
        agreeing = np.where(said_sky, sky_votes, total - sky_votes)
        return np.divide(agreeing, total, out=np.zeros_like(total), where=total > 0)


# --- learning one camera's mask -------------------------------------------------------------------


@dataclasses.dataclass
class CameraMask:
    """A learnt camera mask at the frames' size, its agreement, the median frame, and what went into it.

    ``probability`` is the fused consensus with the dropped regions (``regions_dropped``, `tfsky.data.masks.sky_regions`) at 0.
    """

    probability: np.ndarray
    mask: np.ndarray
    agreement: np.ndarray
    median_frame: np.ndarray
    used: list[dict]
    rejected: list[dict]
    sky_disagrees: list[str]
    grid: tuple[int, int]
    regions_dropped: dict


def learn_camera_mask(
    stream: Stream,
    model: SkyModel,
    cfg: SkymaskConfig,
    threshold: float,
    *,
    checkpoint: Optional[Path] = None,
    progress: Optional[Callable[[int, int], None]] = None,
    where: str | Path = "stream",
) -> CameraMask:
    """Fuse the sky probabilities of ``stream``'s frames into one mask (see the module docstring).

    Args:
        stream: Stream. A validated stream.
        model: SkyModel. The segmenter and its id.
        cfg: SkymaskConfig. Frame selection and alignment.
        threshold: float. Sky probability cut.
        checkpoint: Optional[Path]. Where the running state is saved and resumed from. Defaults to None.
        progress: Optional callable ``(done, total)`` called after each frame. Defaults to None.
        where: str | Path. What an `InputError` names (the manifest). Defaults to ``stream``.

    Raises:
        InputError: the stream has no usable frame, or none survives the checks.
    """
    candidates, rejected = candidate_frames(stream)
    steady = [f for f in candidates if f.reason != "moved"]
    if not steady:
        raise InputError(
            where,
            f"no usable frames to learn the camera mask from ({_reason_counts(rejected)}); "
            "run tfsky streams validate first",
        )
    median = median_frame([stream.path(f) for f in _evenly_spaced(steady, MEDIAN_FRAMES)])
    height, width = median.shape[:2]
    model_size = model.segmenter.model_size(height, width)
    grid = working_size(*model_size, MAX_CONSENSUS_SIDE)
    reference = edge_map(analysis_luminance(median, cfg.analysis_width))
    state = _State.resume(checkpoint, model.id, candidates, grid)
    for done, frame in enumerate(candidates, start=1):
        if frame.file not in state.seen:
            state.seen.append(frame.file)
            try:
                image = read_image(stream.path(frame))
            except InputError as err:
                state.rejected.append(_rejection(frame, "corrupt", err.problem))
            else:
                _fuse_frame(frame, image, (height, width), model, cfg, reference, model_size, grid, state)
            if checkpoint is not None and len(state.seen) % cfg.checkpoint_every == 0:
                state.save(checkpoint)
        if progress is not None:
            progress(len(rejected) + done, len(stream.frames))
    if not state.used:
        raise InputError(
            where, f"no frame survived the camera-mask checks ({_reason_counts(rejected + state.rejected)})"
        )
    small = state.consensus.probability()
    full = (height, width)
    probability = small if grid == full else refine(small[..., None], resize_image(median, grid), median)[..., 0]
    said_sky = sky_mask(probability, threshold)
    mask, dropped = sky_regions(said_sky, cfg.min_region, cfg.keep_enclosed)
    probability = np.where(said_sky & ~mask, np.float32(0), probability)
    agreement = cv2.resize(state.consensus.agreement(threshold), (width, height), interpolation=cv2.INTER_LINEAR)
    disagrees = _disagreeing(state, _on_grid(mask, grid), cfg.min_frame_iou)
    return CameraMask(
        probability, mask, agreement, median, state.used, rejected + state.rejected, disagrees, grid, dropped
    )


def candidate_frames(stream: Stream) -> tuple[list[Frame], list[dict]]:
    """The frames to fuse, in time order (usable ones and ones validation found ``moved``), and the others' rejections."""
    candidates, rejected = [], []
    for frame in sorted(stream.frames, key=lambda f: f.time):
        if frame.usable or (frame.reason == "moved" and frame.review != "rejected"):
            candidates.append(frame)
        else:
            rejected.append(_rejection(frame, frame.reason or "rejected by a reviewer", frame.detail))
    return candidates, rejected


def median_frame(paths: Sequence[Path]) -> np.ndarray:
    """The per-pixel median of a few uint8 RGB frames, row band by row band (no float copy of the stack)."""
    stack = np.stack([read_image(path) for path in paths])
    median = np.empty(stack.shape[1:], stack.dtype)
    for top in range(0, stack.shape[1], 64):
        median[top : top + 64] = np.median(stack[:, top : top + 64], axis=0)
    return median


def _fuse_frame(
    frame: Frame,
    image: np.ndarray,
    size: tuple[int, int],
    model: SkyModel,
    cfg: SkymaskConfig,
    reference: np.ndarray,
    model_size: tuple[int, int],
    grid: tuple[int, int],
    state: "_State",
) -> None:
    """Align one frame, predict it at the working scale and count it in the consensus (or record why not)."""
    if image.shape[:2] != size:
        state.rejected.append(
            _rejection(frame, "size", f"{image.shape[1]}x{image.shape[0]}, the median frame is {size[1]}x{size[0]}")
        )
        return
    edges = edge_map(analysis_luminance(image, cfg.analysis_width))
    dx, dy = edge_offset(edges, reference)
    if np.hypot(dx, dy) > cfg.max_offset * cfg.analysis_width:
        state.rejected.append(
            _rejection(frame, "moved", f"offset ({dx:+.1f}, {dy:+.1f}) analysis px is too far to align")
        )
        return
    aligned, inside = _shifted(edges, -dx, -dy)
    score = correlation(aligned[inside], reference[inside])
    if score < cfg.min_edge_correlation:
        state.rejected.append(_rejection(frame, "moved", f"edge correlation {score:.2f} after alignment"))
        return
    probability: np.ndarray = model.segmenter.sky_probability(resize_image(image, model_size)).astype(np.float32)
    if probability.shape != grid:
        probability = cv2.resize(probability, grid[::-1], interpolation=cv2.INTER_AREA)
    confidence = float(np.abs(2 * probability - 1).mean())
    if confidence < cfg.min_confidence:
        state.rejected.append(_rejection(frame, "uncertain", f"model confidence {confidence:.2f}"))
        return
    to_grid = grid[1] / cfg.analysis_width
    probability, valid = _shifted(probability, -dx * to_grid, -dy * to_grid)
    state.consensus.add(probability, confidence, valid)
    state.masks.append(np.packbits(sky_mask(probability)))
    state.valid.append(np.packbits(valid))
    state.used.append(
        {
            "file": frame.file,
            "weight": round(confidence, 4),
            "offset_px": [round(dx * size[1] / cfg.analysis_width, 1), round(dy * size[1] / cfg.analysis_width, 1)],
        }
    )


def _shifted(values: np.ndarray, dx: float, dy: float) -> tuple[np.ndarray, np.ndarray]:
    """``values`` translated by ``(dx, dy)`` pixels (bilinear), and where it has pixels from inside the frame."""
    if abs(dx) < 0.5 and abs(dy) < 0.5:  # sub-pixel noise of the phase correlation: keep the frame as it is
        return values, np.ones(values.shape, bool)
    matrix = np.array([[1, 0, dx], [0, 1, dy]], np.float32)
    size = values.shape[::-1]
    moved = cv2.warpAffine(values.astype(np.float32), matrix, size, flags=cv2.INTER_LINEAR)
    inside = cv2.warpAffine(np.ones(values.shape, np.float32), matrix, size, flags=cv2.INTER_LINEAR) > 0.999
    return moved, inside


def _disagreeing(state: "_State", consensus_sky: np.ndarray, min_iou: float) -> list[str]:
    """Used frames whose own sky (where they saw the scene) has an IoU with the consensus below ``min_iou``."""
    pixels = consensus_sky.size
    files = []
    for record, packed, packed_valid in zip(state.used, state.masks, state.valid):
        own = np.unpackbits(packed, count=pixels).reshape(consensus_sky.shape).astype(bool)
        valid = np.unpackbits(packed_valid, count=pixels).reshape(consensus_sky.shape).astype(bool)
        if mask_iou(own[valid], consensus_sky[valid]) < min_iou:
            files.append(record["file"])
    return files


def _on_grid(mask: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """The final mask at the consensus grid (area-averaged, cut at half), to compare each frame's own sky with."""
    if mask.shape == grid:
        return mask
    return cv2.resize(mask.astype(np.float32), grid[::-1], interpolation=cv2.INTER_AREA) >= 0.5


def _evenly_spaced(frames: list[Frame], count: int) -> list[Frame]:
    if len(frames) <= count:
        return frames
    return [frames[round(i * (len(frames) - 1) / (count - 1))] for i in range(count)]


def _rejection(frame: Frame, reason: str, detail: str) -> dict:
    return {"file": frame.file, "reason": reason, "detail": detail}


def _reason_counts(rejected: list[dict]) -> str:
    counts = Counter(r["reason"] for r in rejected)
    return ", ".join(f"{reason} {n}" for reason, n in counts.most_common()) or "no frames"


@dataclasses.dataclass
class _State:
    """The running state of one stream: what a checkpoint holds (the frames seen, used and rejected; the
    consensus; each used frame's packed mask and valid pixels, for ``sky_disagrees``)."""

    key: str
    consensus: Consensus
    seen: list[str] = dataclasses.field(default_factory=list)
    used: list[dict] = dataclasses.field(default_factory=list)
    rejected: list[dict] = dataclasses.field(default_factory=list)
    masks: list[np.ndarray] = dataclasses.field(default_factory=list)
    valid: list[np.ndarray] = dataclasses.field(default_factory=list)

    @classmethod
    def resume(cls, checkpoint: Optional[Path], model: str, candidates: list[Frame], grid: tuple[int, int]) -> "_State":
        """The checkpointed state when it was made by this model from these frames at this grid, else a new one."""
        key = json.dumps([model, [f.file for f in candidates], list(grid)])
        fresh = cls(key, Consensus(grid))
        if checkpoint is None:
            return fresh
        remove_stale_temps(checkpoint)
        if not checkpoint.is_file():
            return fresh
        try:
            with np.load(checkpoint) as saved:
                facts = json.loads(str(saved["facts"]))
                if facts["key"] != key:
                    return fresh
                consensus = Consensus(grid)
                consensus.weights = saved["weights"]
                count = len(facts["used"])
                return cls(
                    key,
                    consensus,
                    facts["seen"],
                    facts["used"],
                    facts["rejected"],
                    [saved[f"mask{i}"] for i in range(count)],
                    [saved[f"valid{i}"] for i in range(count)],
                )
        except (OSError, ValueError, KeyError):  # a damaged checkpoint: start over
            return fresh

    def save(self, checkpoint: Path) -> None:
        facts = {"key": self.key, "seen": self.seen, "used": self.used, "rejected": self.rejected}
        arrays = {f"mask{i}": m for i, m in enumerate(self.masks)} | {f"valid{i}": v for i, v in enumerate(self.valid)}
        with atomic_path(checkpoint) as tmp:
            # (numpy's stub matches **arrays against its allow_pickle flag too)
            np.savez(tmp, weights=self.consensus.weights, facts=np.array(json.dumps(facts)), **arrays)  # type: ignore[arg-type]


# --- the batch job over streams --------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class SkymaskPaths:
    """The outputs beside one manifest; the report, written last, marks the stream complete."""

    mask: Path
    agreement: Path
    overlay: Path
    report: Path
    checkpoint: Path

    @classmethod
    def beside(cls, manifest: Path) -> "SkymaskPaths":
        folder = manifest.parent
        return cls(
            folder / f"{STEM}.png",
            folder / f"{STEM}_agreement.png",
            folder / f"{STEM}_overlay.jpg",
            folder / f"{STEM}.json",
            folder / f"{STEM}.checkpoint.npz",
        )

    def __iter__(self) -> Iterator[Path]:
        return iter((self.mask, self.agreement, self.overlay, self.report))


class SkymaskTask(Task):
    """Learn the camera mask of one stream (an item is a ``stream.json``) and record it in the manifest.

    Args:
        model: Path | SkyModel. A segmenter file, or one already loaded (tests: a stand-in).
        cfg: SkymaskConfig. Frame selection and alignment.
    """

    def __init__(self, model: Path | SkyModel, cfg: SkymaskConfig):
        self.model = model
        self.cfg = cfg
        self.threshold = 0.5

    def check(self) -> None:
        self.cfg.validate()
        if isinstance(self.model, SkyModel):
            return
        if not Path(self.model).is_file():
            raise InputError(self.model, "model file not found")
        load_info(self.model, kind=ModelKind.SEGMENTER)

    def outputs(self, stem: Path) -> SkymaskPaths:
        return SkymaskPaths.beside(stem)

    def read(self, source: Path) -> Stream:
        return read_manifest(source)

    def load(self) -> None:
        if not isinstance(self.model, SkyModel):
            self.model = SkyModel.load(self.model)
        self.threshold = self.model.segmenter.mask_threshold(self.cfg.threshold)

    def process(self, item: Item, decoded: Decoded, outputs: SkymaskPaths, listener: Listener) -> None:
        """Learn the mask and write it, the ``stream.json`` record before the report (the report marks it done)."""
        assert isinstance(self.model, SkyModel)  # load() ran
        stream = decoded.take()
        listener.item_started(item.source, len(stream.frames))
        learnt = learn_camera_mask(
            stream,
            self.model,
            self.cfg,
            self.threshold,
            checkpoint=outputs.checkpoint,
            progress=listener.steps_done,
            where=item.source,
        )
        write_mask_png(outputs.mask, learnt.mask)
        write_png(outputs.agreement, np.rint(learnt.agreement * 255).astype(np.uint8))
        write_jpeg(outputs.overlay, overlay(learnt.median_frame, np.where(learnt.mask, 255, 0).astype(np.uint8)))
        report = skymask_report(stream, learnt, self.model, self.threshold, outputs)
        record = {
            "mask": str(outputs.mask.resolve()),
            "agreement": str(outputs.agreement.resolve()),
            "overlay": str(outputs.overlay.resolve()),
            "report": str(outputs.report.resolve()),
            "model": self.model.id,
            "frames_used": len(learnt.used),
            "sky_disagrees": learnt.sky_disagrees,
        }
        update_manifest(
            item.source, read_manifest(item.source).version, lambda latest: dataclasses.replace(latest, skymask=record)
        )
        write_json(outputs.report, report)
        outputs.checkpoint.unlink(missing_ok=True)


def skymask_report(
    stream: Stream, learnt: CameraMask, model: SkyModel, threshold: float, outputs: SkymaskPaths
) -> dict:
    """The facts of one learnt mask: ``camera_mask.json``."""
    return {
        "camera": stream.camera,
        "model": {"path": model.path, "id": model.id},
        "threshold": threshold,
        "size": list(learnt.mask.shape),
        "consensus_grid": list(learnt.grid),
        "frames": {
            "total": len(stream.frames),
            "used": len(learnt.used),
            "rejected": len(learnt.rejected),
            "rejected_by_reason": dict(Counter(r["reason"] for r in learnt.rejected)),
        },
        "sky_share": round(float(learnt.mask.mean()), 4),
        "regions_dropped": learnt.regions_dropped,
        "agreement": {
            "mean": round(float(learnt.agreement.mean()), 4),
            "share_below_0.8": round(float((learnt.agreement < 0.8).mean()), 4),
        },
        "alignment": "frames shifted by their edge offset against the median frame before fusing",
        "sky_disagrees": learnt.sky_disagrees,
        "used": learnt.used,
        "rejected": learnt.rejected,
        "outputs": {"mask": outputs.mask.name, "agreement": outputs.agreement.name, "overlay": outputs.overlay.name},
    }


def skymask_streams(
    inputs: Sequence[Path],
    model: Path | SkyModel,
    cfg: SkymaskConfig | None = None,
    *,
    overwrite: bool = False,
    listener: Optional[Listener] = None,
    engine: Optional[Engine] = None,
) -> Report:
    """Learn the camera mask of every stream under ``inputs`` (manifests or folders of them), beside each manifest.

    A stream that fails (no usable frame, an unreadable manifest) is reported and the job goes on; a
    finished one is skipped unless ``overwrite``; an interrupted one resumes from its checkpoint.
    """
    task = SkymaskTask(model, cfg or SkymaskConfig())
    task.check()
    manifests: dict[Path, None] = {}
    failures: list[tuple[Path, str]] = []
    for path in map(Path, inputs):
        try:
            manifests |= dict.fromkeys(manifest_files(path))
        except InputError as err:
            failures.append((path, err.problem))
    items = [Item(manifest, manifest) for manifest in manifests]
    return run_items(task, items, task.outputs, failures, overwrite=overwrite, listener=listener, engine=engine)


# --- the camera prior in prediction ----------------------------------------------------------------

# Evidence ramps: (no evidence, full evidence). Sky luminance: a frame `tfsky streams validate` calls night
# has none (it is not used to learn the mask either; a lit night sky still measured 0.31 on SkyFinder's camera
# 623), the day skies of the SkyFinder cameras measured 0.61-0.89; contrast: the luminance std of a foggy
# frame; confidence: the model's mean |2p - 1|.
BRIGHTNESS_RAMP = (NIGHT_LUMINANCE, NIGHT_LUMINANCE + 0.2)
CONTRAST_RAMP = (0.03, 0.08)
CONFIDENCE_RAMP = (0.2, 0.5)
MIN_SKY_AGREEMENT = 0.7  # a frame with evidence whose own sky has a lower IoU with the camera's: sky_disagrees
EVIDENCE_WIDTH = 320  # frames are measured for their evidence at this width


def ramp(value: float, bounds: tuple[float, float]) -> float:
    """0 at or below ``bounds[0]``, 1 at or above ``bounds[1]``, linear between."""
    low, high = bounds
    return float(np.clip((value - low) / (high - low), 0.0, 1.0))


class CameraPrior:
    """A camera's sky mask, mixed into each frame's own probabilities by the frame's evidence.

    Args:
        sky: np.ndarray. Boolean ``[H, W]`` camera mask (True = sky).
        path: Path. Where it was read from (named in errors and sidecars).
    """

    def __init__(self, sky: np.ndarray, path: Path):
        self.sky, self.path = sky, path
        small = cv2.resize(
            sky.astype(np.uint8), analysis_size(sky.shape, EVIDENCE_WIDTH), interpolation=cv2.INTER_NEAREST
        )
        self.small_sky = small > 0

    @classmethod
    def load(cls, path: str | Path) -> "CameraPrior":
        """Read a camera mask (white = sky), e.g. ``camera_mask.png`` of ``tfsky streams skymask``."""
        path = Path(path)
        if not path.is_file():
            raise InputError(path, "camera mask not found")
        return cls(read_mask(path) > 0, path)

    def at_size(self, shape: tuple[int, int]) -> "CameraPrior":
        """This prior for frames of ``shape`` (nearest pixel), e.g. the small frames `tfsky streams label` measures."""
        if shape == self.sky.shape:
            return self
        sky = cv2.resize(self.sky.astype(np.uint8), shape[::-1], interpolation=cv2.INTER_NEAREST) > 0
        return CameraPrior(sky, self.path)

    def evidence(self, image: np.ndarray, probability: np.ndarray, source: str | Path = "image") -> dict:
        """How much a frame shows of its own sky, each term 0..1, and ``weight``: the weakest of them.

        ``brightness``: mean luminance over the camera's sky (the whole frame when it has none) — night;
        ``contrast``: the frame's luminance std — fog, a blank frame; ``confidence``: the model's mean
        ``|2p - 1|`` — what the model itself makes of the frame.
        """
        if image.dtype.kind == "f":
            raise InputError(source, "a camera prior is for 8/16-bit webcam frames, this is a float (HDR) image")
        luma = analysis_luminance(image, EVIDENCE_WIDTH)
        sky = (
            self.small_sky if self.small_sky.shape == luma.shape and self.small_sky.any() else np.ones(luma.shape, bool)
        )
        terms = {
            "brightness": ramp(float(luma[sky].mean()), BRIGHTNESS_RAMP),
            "contrast": ramp(float(luma.std()), CONTRAST_RAMP),
            "confidence": ramp(float(np.abs(2 * probability - 1).mean()), CONFIDENCE_RAMP),
        }
        return {name: round(value, 4) for name, value in terms.items()} | {"weight": round(min(terms.values()), 4)}

    def fuse(
        self, image: np.ndarray, probability: np.ndarray, threshold: float, source: str | Path = "image"
    ) -> tuple[np.ndarray, dict]:
        """``weight * own + (1 - weight) * camera`` per pixel, and the facts for the sidecar.

        ``sky_disagrees``: the frame has evidence (weight >= 0.5) and its own sky's IoU with the camera's
        is below `MIN_SKY_AGREEMENT` (the camera moved, or something covers the sky): one to review.
        """
        if probability.shape != self.sky.shape:
            raise InputError(
                source,
                f"is {probability.shape[1]}x{probability.shape[0]} but the camera mask "
                f"{self.path} is {self.sky.shape[1]}x{self.sky.shape[0]}",
            )
        evidence = self.evidence(image, probability, source)
        weight = np.float32(evidence["weight"])
        fused = weight * probability + (1 - weight) * self.sky.astype(np.float32)
        own_iou = mask_iou(sky_mask(probability, threshold), self.sky)
        facts = {
            "mask": str(self.path),
            "evidence": evidence,
            "own_sky_iou": round(own_iou, 4),
            "sky_disagrees": bool(evidence["weight"] >= 0.5 and own_iou < MIN_SKY_AGREEMENT),
        }
        return fused, facts
