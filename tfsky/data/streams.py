"""Webcam streams: frames of one fixed camera, their weather labels, and frame validation.

A stream is one camera: a folder of frames, per-frame labels (condition and
an optional confidence) and an optional camera sky mask. It is stored as a
manifest, ``stream.json``::

    {
      "format": "tfsky-stream/1",
      "camera": "623",
      "image_dir": "/data/skyfinder_webcams/623",        # optional: defaults to the manifest's folder
      "mask": "/data/skyfinder_webcams/623-mask.png",    # optional camera sky mask (white = sky)
      "version": 3,                                      # bumped by every write (edit conflicts)
      "moved_from": null,                                # reviewer: the camera moved at this frame
      "skymask": null,                                   # the mask `tfsky streams skymask` learnt (below)
      "frames": [
        {"file": "20121024_124151.jpg", "timestamp": "2012-10-24T12:41:51",
         "condition": "clear", "confidence": null, "label_source": null,
         "prediction": {"condition": "clear", "probability": 0.93, "model": "weather_mwd/1"},
         "review": null, "usable": true, "reason": "", "detail": ""}
      ],
      "edits": [{"frame": "20121024_124151.jpg", "field": "review",
                 "previous": {"review": null}, "value": "rejected"}]
    }

Relative ``image_dir`` / ``mask`` paths are resolved against the manifest's
folder; tfsky writes absolute ones, so manifests can live in any output
folder (the image folders may be read-only; images are never touched).
``condition`` is ``null`` for an unlabelled frame; a ``null`` confidence
means the label is taken as certain (1.0). ``reason`` is one of `REASONS`
for an unusable frame, with the measured value in ``detail``.

Labels have a source: ``label_source`` ``null`` is the imported labels CSV,
``human`` a reviewer's change and ``model`` the classifier of ``tfsky streams
label`` (whose output is kept in ``prediction`` either way; a label that is
not the model's is never overwritten by it; with a segmenter ``prediction``
also holds ``sky``, the segmented sky's share of the frame and its colour
statistics, `tfsky.predict.classify.SkyRegion`). A reviewer's ``review``
(``accepted`` / ``rejected``) wins over the automatic checks: ``usable`` is
the verdict, ``reason`` stays what the checks found. ``edits`` is the undo
stack of `apply_edit`: each entry keeps the values it replaced.
``skymask`` is written by ``tfsky streams skymask``
(`tfsky.predict.camera_mask`): the camera mask it fused from the stream's own
frames (``mask``, ``agreement``, ``overlay``, ``report`` paths), the model's
id, the frames used and the frames whose own sky disagrees with it
(``sky_disagrees``); ``mask`` stays the imported (e.g. SkyFinder's) mask.

Importers: `import_tree` for a folder tree ``<root>/<camera>/<frames>``
with one labels CSV for all cameras (the SkyFinder layout) and `load_streams`
for manifests. Timestamps come from the file name (``20130101_120000.jpg``),
else EXIF DateTimeOriginal, else the file's modification time.

`validate_stream` marks frames unusable, first failing check wins:

``corrupt``  the file cannot be decoded;
``size``     its size differs from the stream's most common frame size;
``blank``    near-constant luminance (std below ``blank_std``);
``saturated`` more than ``max_saturated`` of the pixels are white in every channel;
``night``    mean luminance below ``night_luminance`` — measured over the
             camera's sky mask when it has sky (city lights below the horizon
             do not make a frame "day"), else over the whole frame;
``moved``    the frame's edge map correlates with the stream's median frame's
             below ``min_edge_correlation``, or is shifted against it by more
             than ``max_offset`` of the frame width (phase correlation of the
             edge maps; the offset found is in ``detail``) — both only with >= 3
             candidate frames — or, with a segmenter, its predicted sky's IoU
             with the camera mask is below ``min_mask_iou``;
``low_confidence`` the label's confidence is below ``min_confidence``.

A reviewer's ``moved_from`` frame marks it and every later frame ``moved``
(unless an earlier check already failed it).
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import datetime as dt
import fcntl
import json
import os
import re
from collections import Counter
from pathlib import Path
from typing import Optional, Protocol

import cv2
import numpy as np
from PIL import Image

from tfsky.data.masks import iou as mask_iou, sky_mask
from tfsky.data.transforms import is_hdr
from tfsky.config import quoted
from tfsky.errors import ConfigError, InputError, TfskyError, first_line
from tfsky.io.atomic import write_json
from tfsky.io.images import REC709_LUMA, image_size, is_image_file, read_image, read_mask

FORMAT = "tfsky-stream/1"
MANIFEST_NAME = "stream.json"
NIGHT_LUMINANCE = 0.35  # mean Rec.709 sky luminance below which a frame is night (validation, camera prior)
REASONS = ("corrupt", "size", "blank", "saturated", "night", "moved", "low_confidence")
CONDITIONS = ("clear", "partly_cloudy", "overcast", "rain", "snow", "fog", "sunrise", "night")
REVIEWS = ("accepted", "rejected")
LABEL_SOURCES = ("human", "model")  # None: the imported labels CSV
EDIT_FIELDS = ("review", "condition", "moved_from")
REVIEWER_MOVED = "marked by a reviewer: the camera moved at "
CONDITION_NAME = re.compile(r"[a-z][a-z0-9_()]{0,39}")  # clear, partly_cloudy, SkyFinder's unlabelled(night)
_STAMP = re.compile(r"(\d{4})(\d{2})(\d{2})[_\-T]?(\d{2})(\d{2})(\d{2})")
_EXIF_IFD, _DATETIME_ORIGINAL = 0x8769, 36867


@dataclasses.dataclass
class StreamsConfig:
    """The ``streams:`` config section: where streams come from and how frames are validated.

    Args:
        root: Optional[Path]. Folder tree ``<root>/<camera>/<frames>`` to import. Defaults to None.
        labels_csv: Optional[Path]. One labels CSV for all cameras; its image column holds paths
            relative to ``root`` (``623/20121024_124151.jpg``). Defaults to None (no labels).
        image_column: str. CSV column with the frame path. Defaults to ``image``.
        condition_column: str. CSV column with the condition. Defaults to ``sky_condition``.
        confidence_column: Optional[str]. CSV column with a 0..1 label confidence. Defaults to None.
        mask_pattern: str. Camera mask path relative to ``root``; ``{camera}`` is replaced.
            Defaults to ``{camera}-mask.png``.
        manifests: Path. Folder the manifests are written to (``<manifests>/<camera>/stream.json``).
            Defaults to ``streams``.
        night_luminance: float. Frames with mean Rec.709 luminance (0..1) below this are night. Defaults to 0.35.
        blank_std: float. Frames whose luminance std is below this are blank. Defaults to 0.02.
        max_saturated: float. Largest fraction of fully white pixels. Defaults to 0.5.
        min_edge_correlation: float. Smallest edge-map correlation with the median frame. Defaults to 0.45.
        max_offset: float. Largest shift against the median frame, as a fraction of the width. Defaults to 0.03.
        min_mask_iou: float. Smallest IoU of the segmented sky with the camera mask. Defaults to 0.7.
        min_confidence: float. Labels less confident than this make the frame unusable. Defaults to 0.5.
        analysis_width: int. Frames are downscaled to this width for the checks. Defaults to 320.
    """

    root: Optional[Path] = None
    labels_csv: Optional[Path] = None
    image_column: str = "image"
    condition_column: str = "sky_condition"
    confidence_column: Optional[str] = None
    mask_pattern: str = "{camera}-mask.png"
    manifests: Path = Path("streams")
    night_luminance: float = NIGHT_LUMINANCE
    blank_std: float = 0.02
    max_saturated: float = 0.5
    min_edge_correlation: float = 0.45
    max_offset: float = 0.03
    min_mask_iou: float = 0.7
    min_confidence: float = 0.5
    analysis_width: int = 320

    def validate(self) -> None:
        for key in ("night_luminance", "max_saturated", "max_offset", "min_mask_iou", "min_confidence"):
            if not 0 <= getattr(self, key) <= 1:
                raise ConfigError(key, f"must be in [0, 1]; got {getattr(self, key)}")
        if not -1 <= self.min_edge_correlation <= 1:
            raise ConfigError("min_edge_correlation", f"must be in [-1, 1]; got {self.min_edge_correlation}")
        if self.analysis_width < 16:
            raise ConfigError("analysis_width", f"must be >= 16; got {self.analysis_width}")


@dataclasses.dataclass
class Frame:
    """One frame of a stream (see the module docstring for the fields)."""

    file: str
    timestamp: str
    condition: Optional[str] = None
    confidence: Optional[float] = None
    label_source: Optional[str] = None
    prediction: Optional[dict] = None
    review: Optional[str] = None
    usable: bool = True
    reason: str = ""
    detail: str = ""

    @property
    def label_confidence(self) -> float:
        """The confidence, with an unstated one taken as certain."""
        return 1.0 if self.confidence is None else self.confidence

    @property
    def human_labelled(self) -> bool:
        """A label from the CSV or a reviewer: the classifier never replaces it."""
        return self.condition is not None and self.label_source != "model"

    @property
    def time(self) -> dt.datetime:
        return dt.datetime.fromisoformat(self.timestamp)


@dataclasses.dataclass
class Stream:
    """One fixed camera: its frames, their folder and its optional sky mask."""

    camera: str
    image_dir: Path
    frames: list[Frame]
    mask: Optional[Path] = None
    version: int = 0
    moved_from: Optional[str] = None
    edits: list[dict] = dataclasses.field(default_factory=list)
    skymask: Optional[dict] = None

    def path(self, frame: Frame) -> Path:
        return self.image_dir / frame.file

    def frame(self, file: str) -> Frame:
        """The frame named ``file``; `KeyError` when the stream has none."""
        for frame in self.frames:
            if frame.file == file:
                return frame
        raise KeyError(file)


class SkyProbability(Protocol):
    """What validation needs from a segmenter (`tfsky.predict.segment.TiledSegmenter`)."""

    def sky_probability(self, image: np.ndarray) -> np.ndarray: ...


@dataclasses.dataclass
class ImportResult:
    """Streams found by an importer, and label rows that were skipped (with the reason)."""

    streams: list[Stream]
    skipped: list[str] = dataclasses.field(default_factory=list)


# --- manifests ---------------------------------------------------------------------------------


def manifest_path(folder: str | Path, camera: str) -> Path:
    """Where the manifest of ``camera`` lives in an output folder: ``<folder>/<camera>/stream.json``."""
    return Path(folder) / camera / MANIFEST_NAME


def write_manifest(stream: Stream, path: str | Path) -> None:
    """Write ``stream`` as a manifest, atomically, with absolute image and mask paths and the next version."""
    write_json(
        path,
        {
            "format": FORMAT,
            "camera": stream.camera,
            "image_dir": str(stream.image_dir.resolve()),
            "mask": str(stream.mask.resolve()) if stream.mask else None,
            "version": stream.version + 1,
            "moved_from": stream.moved_from,
            "frames": [dataclasses.asdict(frame) for frame in stream.frames],
            "edits": stream.edits,
            "skymask": stream.skymask,
        },
    )


def read_manifest(path: str | Path) -> Stream:
    """Read one ``stream.json``; a malformed file is an `InputError` naming it."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        base = path.parent
        mask = data.get("mask")
        return Stream(
            camera=str(data["camera"]),
            image_dir=base / data.get("image_dir", "."),
            mask=base / mask if mask else None,
            frames=[_frame_from_json(item) for item in data["frames"]],
            version=int(data.get("version", 0)),
            moved_from=data.get("moved_from"),
            edits=list(data.get("edits", [])),
            skymask=data.get("skymask"),
        )
    except FileNotFoundError:
        raise InputError(path, "stream manifest not found") from None
    except (ValueError, KeyError, TypeError, AttributeError) as err:  # AttributeError: JSON that is not an object
        raise InputError(path, f"not a valid stream manifest ({type(err).__name__}: {err})") from None


def _frame_from_json(item: dict) -> Frame:
    known = {f.name for f in dataclasses.fields(Frame)}
    frame = Frame(**{k: v for k, v in item.items() if k in known})
    dt.datetime.fromisoformat(frame.timestamp)  # ValueError for a bad timestamp
    return frame


def manifest_files(path: str | Path) -> list[Path]:
    """``path`` itself when it is a file, else every ``*/stream.json`` (or ``stream.json``) in the folder."""
    path = Path(path)
    if path.is_file():
        return [path]
    manifests = sorted(path.glob(f"*/{MANIFEST_NAME}")) or sorted(path.glob(MANIFEST_NAME))
    if not manifests:
        raise InputError(path, f"no {MANIFEST_NAME} manifests found (run tfsky streams validate first)")
    return manifests


def load_streams(path: str | Path) -> list[Stream]:
    """Streams from a manifest file or a folder of manifests (see `manifest_files`)."""
    return [read_manifest(m) for m in manifest_files(path)]


# --- importing a folder tree with a labels CSV ------------------------------------------------


def import_tree(cfg: StreamsConfig) -> ImportResult:
    """Streams from ``cfg.root`` (one sub-folder of frames per camera) labelled by ``cfg.labels_csv``.

    Label rows naming frames that do not exist are skipped and reported in
    `ImportResult.skipped`; frames without a label row are unlabelled.
    """
    if cfg.root is None:
        raise ConfigError("streams.root", "is not set (the folder holding one sub-folder per camera)")
    root = Path(cfg.root)
    if not root.is_dir():
        raise InputError(root, "stream root folder not found")
    labels, skipped = read_labels(cfg, root) if cfg.labels_csv else ({}, [])
    streams = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        files = sorted(p for p in folder.iterdir() if p.is_file() and is_image_file(p))
        if not files:
            continue
        mask = root / cfg.mask_pattern.format(camera=folder.name)
        frames = [_new_frame(path, labels.get(path.resolve())) for path in files]
        streams.append(Stream(folder.name, folder, frames, mask if mask.is_file() else None))
    if not streams:
        raise InputError(root, "no camera folders with images found (expected <root>/<camera>/<frames>)")
    return ImportResult(streams, skipped)


def read_labels(cfg: StreamsConfig, root: Path) -> tuple[dict[Path, tuple[str, Optional[float]]], list[str]]:
    """``{resolved frame path: (condition, confidence)}`` from the labels CSV, and the skipped rows.

    A row is skipped (reported as ``<csv>:<line>: why``) when it names no frame or a missing one, has
    no condition or one that is not a condition name (`CONDITION_NAME`: the page shows labels, so
    markup never gets in), or labels a frame an earlier row labelled. Excel's byte-order mark is read.
    """
    assert cfg.labels_csv is not None  # the caller reads labels only when there is a CSV
    path = Path(cfg.labels_csv)
    if not path.is_file():
        raise InputError(path, "labels CSV not found")
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            columns = [c for c in (cfg.image_column, cfg.condition_column, cfg.confidence_column) if c]
            missing = [c for c in columns if c not in (reader.fieldnames or [])]
            if missing:
                raise InputError(path, f"no column '{missing[0]}' (columns: {', '.join(reader.fieldnames or [])})")
            labels: dict[Path, tuple[str, Optional[float]]] = {}
            skipped: list[str] = []
            labelled_on: dict[Path, int] = {}
            for row in reader:
                line = reader.line_num
                name, condition = row[cfg.image_column], row[cfg.condition_column]
                frame = root / name if name else None
                if frame is None or not frame.is_file():
                    problem = f"frame {name} not found under {root}" if name else "no frame name (a short row)"
                elif not condition:
                    problem = f"frame {name} has no condition (a short row)"
                elif not is_condition_name(condition):
                    problem = (
                        f"condition {quoted(condition)} of frame {name} is not a condition name "
                        "(lower-case letters, digits, _ and ())"
                    )
                elif frame.resolve() in labelled_on:
                    problem = f"frame {name} is already labelled on line {labelled_on[frame.resolve()]}"
                else:
                    labelled_on[frame.resolve()] = line
                    labels[frame.resolve()] = (condition, _confidence(row, cfg, path, line))
                    continue
                skipped.append(f"{path}:{line}: {problem}")
    except (UnicodeDecodeError, csv.Error) as err:
        raise InputError(path, f"not a readable UTF-8 CSV ({first_line(err)})") from None
    return labels, skipped


def is_condition_name(value) -> bool:
    """Whether ``value`` may be a frame's condition, on import and in a reviewer's edit alike."""
    return isinstance(value, str) and CONDITION_NAME.fullmatch(value) is not None


def _confidence(row: dict, cfg: StreamsConfig, path: Path, line: int) -> Optional[float]:
    text = row.get(cfg.confidence_column or "", "") or ""
    if not text.strip():
        return None
    try:
        return float(text)
    except ValueError:
        raise InputError(path, f"line {line}: confidence {text!r} is not a number") from None


def _new_frame(path: Path, label: Optional[tuple[str, Optional[float]]]) -> Frame:
    condition, confidence = label if label else (None, None)
    return Frame(path.name, frame_timestamp(path).isoformat(), condition, confidence)


def frame_timestamp(path: Path) -> dt.datetime:
    """The capture time: from the file name, else EXIF DateTimeOriginal, else the modification time."""
    match = _STAMP.search(path.stem)
    if match:
        try:
            year, month, day, hour, minute, second = map(int, match.groups())
            return dt.datetime(year, month, day, hour, minute, second)
        except ValueError:
            pass  # digits that are not a date: fall through to EXIF
    try:
        with Image.open(path) as im:
            text = im.getexif().get_ifd(_EXIF_IFD).get(_DATETIME_ORIGINAL)
        if text:
            return dt.datetime.strptime(str(text).strip(), "%Y:%m:%d %H:%M:%S")
    except (OSError, ValueError):
        pass  # no readable EXIF: use the file time
    return dt.datetime.fromtimestamp(os.path.getmtime(path)).replace(microsecond=0)


# --- validation ---------------------------------------------------------------------------------


def analysis_luminance(image: np.ndarray, width: int) -> np.ndarray:
    """Rec.709 luminance in [0, 1] of an RGB uint8/uint16 frame, downscaled (area) to ``width`` pixels."""
    scale = np.float32(np.iinfo(image.dtype).max)
    small = cv2.resize(image, analysis_size(image.shape, width), interpolation=cv2.INTER_AREA)
    return (small.astype(np.float32) / scale) @ REC709_LUMA


def analysis_size(shape: tuple[int, ...], width: int) -> tuple[int, int]:
    """OpenCV ``(width, height)`` of an ``H x W`` frame scaled to ``width`` pixels wide, aspect kept."""
    return width, max(1, round(shape[0] * width / shape[1]))


def edge_map(luminance: np.ndarray) -> np.ndarray:
    """Gradient magnitude of a lightly blurred luminance image (Sobel)."""
    blurred = cv2.GaussianBlur(luminance, (0, 0), 1.0)
    return np.hypot(cv2.Sobel(blurred, cv2.CV_32F, 1, 0), cv2.Sobel(blurred, cv2.CV_32F, 0, 1))


def correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation of two equal-shape arrays (0 when either is constant)."""
    a, b = a - a.mean(), b - b.mean()
    denominator = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / denominator) if denominator > 0 else 0.0


def edge_offset(edges: np.ndarray, reference: np.ndarray) -> tuple[float, float]:
    """``(dx, dy)`` in pixels that best aligns ``edges`` onto ``reference`` (phase correlation, Hann-windowed)."""
    window = cv2.createHanningWindow(edges.shape[::-1], cv2.CV_32F)
    (dx, dy), _ = cv2.phaseCorrelate(reference.astype(np.float32), edges.astype(np.float32), window)
    return float(dx), float(dy)


def validate_stream(stream: Stream, cfg: StreamsConfig, segmenter: Optional[SkyProbability] = None) -> Stream:
    """A copy of ``stream`` with every frame's ``usable``/``reason``/``detail`` recomputed (see module doc)."""
    camera_mask = read_mask(stream.mask) if stream.mask else None
    checks = _FrameChecks(cfg, _reference_size(stream), camera_mask, segmenter)
    frames, lumas = [], {}
    for frame in stream.frames:
        reason, detail, luma = checks.single(stream.path(frame))
        frames.append(_judged(frame, reason, detail))
        if luma is not None and not reason:
            lumas[len(frames) - 1] = luma
    if len(lumas) >= 3:
        median_edges = edge_map(np.median(np.stack(list(lumas.values())), axis=0))
        to_frame = checks.size[1] / cfg.analysis_width  # analysis pixels -> frame pixels
        for index, luma in lumas.items():
            edges = edge_map(luma)
            score = correlation(edges, median_edges)
            dx, dy = edge_offset(edges, median_edges)
            shift = float(np.hypot(dx, dy)) / cfg.analysis_width
            if score < cfg.min_edge_correlation or shift > cfg.max_offset:
                detail = (
                    f"edge correlation {score:.2f} with the median frame, "
                    f"offset ({dx * to_frame:+.0f}, {dy * to_frame:+.0f}) px"
                )
                frames[index] = _judged(frames[index], "moved", detail)
    frames = mark_moved_from(frames, stream.moved_from)
    for index, frame in enumerate(frames):
        if not frame.reason and frame.condition and frame.label_confidence < cfg.min_confidence:
            frames[index] = _judged(frame, "low_confidence", f"label confidence {frame.label_confidence:.2f}")
    return dataclasses.replace(stream, frames=frames)


def _judged(frame: Frame, reason: str, detail: str) -> Frame:
    return dataclasses.replace(frame, usable=verdict(frame.review, reason), reason=reason, detail=detail)


def verdict(review: Optional[str], reason: str) -> bool:
    """Whether a frame is usable: the reviewer's decision when there is one, else the automatic checks'."""
    return review == "accepted" if review else not reason


def mark_moved_from(frames: list[Frame], moved_from: Optional[str]) -> list[Frame]:
    """``frames`` with the reviewer's camera-moved mark applied from the frame ``moved_from`` on (by time).

    Frames an automatic check failed keep that reason; the marks of an earlier
    ``moved_from`` are cleared first, so moving or removing the mark is exact.
    """
    frames = [_judged(f, "", "") if f.detail.startswith(REVIEWER_MOVED) else f for f in frames]
    if moved_from is None:
        return frames
    start = next(f.time for f in frames if f.file == moved_from)
    mark = REVIEWER_MOVED + moved_from
    return [_judged(f, "moved", mark) if not f.reason and f.time >= start else f for f in frames]


def _reference_size(stream: Stream) -> Optional[tuple[int, int]]:
    """The most common ``(height, width)`` among the readable frames."""
    sizes: Counter[tuple[int, int]] = Counter()
    for frame in stream.frames:
        try:
            sizes[image_size(stream.path(frame))] += 1
        except InputError:
            continue
    return sizes.most_common(1)[0][0] if sizes else None


class _FrameChecks:
    """The per-frame checks (all but the stream-level edge correlation), sharing the camera mask."""

    def __init__(self, cfg: StreamsConfig, size, camera_mask: Optional[np.ndarray], segmenter):
        self.cfg, self.size, self.camera_mask, self.segmenter = cfg, size, camera_mask, segmenter
        self.small_sky = None
        if camera_mask is not None and camera_mask.any():
            size = analysis_size(camera_mask.shape, cfg.analysis_width)
            self.small_sky = cv2.resize(camera_mask, size, interpolation=cv2.INTER_NEAREST) > 0

    def single(self, path: Path) -> tuple[str, str, Optional[np.ndarray]]:
        """``(reason, detail, analysis luminance)`` of one frame; reason ``""`` when it passes."""
        try:
            image = read_image(path)
        except InputError as err:
            return "corrupt", err.problem, None
        if is_hdr(image):
            return "corrupt", "a float (HDR) frame: a webcam stream holds 8/16-bit frames", None
        if image.shape[:2] != self.size:
            return (
                "size",
                f"{image.shape[1]}x{image.shape[0]} differs from the stream's {self.size[1]}x{self.size[0]}",
                None,
            )
        luma = analysis_luminance(image, self.cfg.analysis_width)
        reason, detail = self._pixel_checks(image, luma)
        if not reason and self.segmenter is not None and self.camera_mask is not None:
            iou = mask_iou(sky_mask(self.segmenter.sky_probability(image)), self.camera_mask > 0)
            if iou < self.cfg.min_mask_iou:
                reason, detail = "moved", f"sky IoU {iou:.2f} with the camera mask"
        return reason, detail, luma

    def _pixel_checks(self, image: np.ndarray, luma: np.ndarray) -> tuple[str, str]:
        cfg = self.cfg
        spread = float(luma.std())
        if spread < cfg.blank_std:
            return "blank", f"luminance std {spread:.3f}"
        white = float((image >= np.iinfo(image.dtype).max - 5).all(axis=-1).mean())
        if white > cfg.max_saturated:
            return "saturated", f"{white:.0%} of pixels saturated"
        sky = self.small_sky if self.small_sky is not None and self.small_sky.shape == luma.shape else None
        level = float(luma[sky].mean() if sky is not None else luma.mean())
        if level < cfg.night_luminance:
            where = "sky" if sky is not None else "frame"
            return "night", f"mean {where} luminance {level:.2f}"
        return "", ""


# --- review edits -------------------------------------------------------------------------------


class StaleVersion(TfskyError):
    """An edit was made against an older version of a manifest than the one on disk."""

    def __init__(self, path: Path, expected: int, found: int):
        self.path, self.expected, self.found = path, expected, found
        super().__init__(
            f"{path}: the stream changed since you loaded it (your version {expected}, now {found}); "
            "reload to see the other changes, then redo yours"
        )


class EditError(TfskyError):
    """An edit that names an unknown frame or field, or a value the field cannot take."""


def apply_edit(stream: Stream, frame_file: Optional[str], field: Optional[str], value) -> Stream:
    """A copy of ``stream`` with one reviewer edit applied and pushed on its undo stack.

    Fields: ``review`` (``accepted`` / ``rejected`` / None) and ``condition`` (a
    label; it becomes a human label, certain) of frame ``frame_file``;
    ``moved_from`` (a frame file or None) of the stream, ``frame_file`` unused.
    """
    if field not in EDIT_FIELDS:
        raise EditError(f"unknown field {field!r} (fields: {', '.join(EDIT_FIELDS)})")
    if field == "moved_from":
        if value is not None:
            _known_frame(stream, value)
        edit = {"frame": None, "field": field, "previous": {"moved_from": stream.moved_from}, "value": value}
        return _with_frames(stream, stream.frames, moved_from=value, edits=[*stream.edits, edit])
    frame = _known_frame(stream, frame_file)
    if field == "review":
        if value is not None and value not in REVIEWS:
            raise EditError(f"review must be one of {', '.join(REVIEWS)} or null; got {value!r}")
        changes = {"review": value}
    else:
        if not is_condition_name(value):
            raise EditError(f"condition must be a lower-case name such as {CONDITIONS[0]!r}; got {quoted(value)}")
        changes = {"condition": value, "confidence": None, "label_source": "human"}
    edit = {"frame": frame.file, "field": field, "previous": {k: getattr(frame, k) for k in changes}, "value": value}
    return _with_frames(stream, _replace_frame(stream.frames, frame.file, changes), edits=[*stream.edits, edit])


def undo_edit(stream: Stream) -> Stream:
    """A copy of ``stream`` with its last edit reverted (the previous values restored) and popped."""
    if not stream.edits:
        raise EditError("nothing to undo")
    edit = stream.edits[-1]
    if edit["field"] == "moved_from":
        return _with_frames(stream, stream.frames, moved_from=edit["previous"]["moved_from"], edits=stream.edits[:-1])
    return _with_frames(stream, _replace_frame(stream.frames, edit["frame"], edit["previous"]), edits=stream.edits[:-1])


def _known_frame(stream: Stream, file) -> Frame:
    try:
        return stream.frame(file)
    except KeyError:
        raise EditError(f"stream {stream.camera} has no frame {file!r}") from None


def _replace_frame(frames: list[Frame], file: str, changes: dict) -> list[Frame]:
    return [dataclasses.replace(f, **changes) if f.file == file else f for f in frames]


def _with_frames(stream: Stream, frames: list[Frame], **changes) -> Stream:
    """``stream`` with new frames and fields, the reviewer's verdicts and moved marks recomputed."""
    moved_from = changes.get("moved_from", stream.moved_from)
    frames = mark_moved_from([_judged(f, f.reason, f.detail) for f in frames], moved_from)
    return dataclasses.replace(stream, frames=frames, **changes)


def update_manifest(path: str | Path, expected_version: int, change) -> Stream:
    """Read the manifest, check its version, apply ``change(stream) -> stream`` and write it back atomically.

    An exclusive ``flock`` on a hidden sibling lock file serialises every
    update of one manifest — the review server's threads, a ``tfsky streams
    label`` in another process — so no read and write interleave; the version
    check turns an edit made on a stale page into `StaleVersion` instead of
    silently dropping the other change.
    """
    path = Path(path)
    with _locked(path):
        stream = read_manifest(path)
        if stream.version != expected_version:
            raise StaleVersion(path, expected_version, stream.version)
        changed = change(stream)
        write_manifest(changed, path)
    return dataclasses.replace(changed, version=changed.version + 1)


@contextlib.contextmanager
def _locked(path: Path):
    with open(path.parent / f".{path.name}.lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


# --- the command-level API ----------------------------------------------------------------------


@dataclasses.dataclass
class StreamSummary:
    """One row of the per-stream table printed by ``tfsky streams validate``."""

    camera: str
    frames: int
    usable: int
    reasons: dict[str, int]
    manifest: Path


@dataclasses.dataclass
class ValidateReport:
    streams: list[StreamSummary]
    skipped: list[str]


def summarize(stream: Stream, manifest: Path) -> StreamSummary:
    counts = Counter(frame.reason for frame in stream.frames if not frame.usable)
    return StreamSummary(
        stream.camera,
        len(stream.frames),
        sum(f.usable for f in stream.frames),
        {reason: counts.get(reason, 0) for reason in REASONS},
        manifest,
    )


def validate_streams(
    cfg: StreamsConfig,
    source: Optional[Path] = None,
    out: Optional[Path] = None,
    segmenter: Optional[SkyProbability] = None,
) -> ValidateReport:
    """Import (or load) streams, validate every frame and write one manifest per stream.

    Args:
        cfg: StreamsConfig. Thresholds, and ``root``/``labels_csv`` when importing.
        source: Optional[Path]. A manifest or folder of manifests to re-validate; None imports
            ``cfg.root``. Defaults to None.
        out: Optional[Path]. Folder for the manifests. Defaults to ``cfg.manifests``, or the
            folder of each loaded manifest when ``source`` is given.
        segmenter: Optional. Sky segmenter for the camera-moved IoU check. Defaults to None.
    """
    if source is None:
        imported = import_tree(cfg)
        streams, skipped, origins = imported.streams, imported.skipped, None
    else:
        origins = manifest_files(source)
        streams, skipped = [read_manifest(m) for m in origins], []
    summaries = []
    for index, stream in enumerate(streams):
        if out is None and origins is not None:  # in place: under the manifest's lock, as the review page edits it
            target = origins[index]
            checked = update_manifest(target, stream.version, lambda latest: validate_stream(latest, cfg, segmenter))
        else:
            target = manifest_path(out or cfg.manifests, stream.camera)
            checked = validate_stream(stream, cfg, segmenter)
            write_manifest(checked, target)
        summaries.append(summarize(checked, target))
    return ValidateReport(summaries, skipped)
