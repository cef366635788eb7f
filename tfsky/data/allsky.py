"""Annotated all-sky camera folders (WSISEG layout): class masks with an ignore region.

An all-sky source is a folder of fisheye frames, a folder of same-named
annotation PNGs whose grey values are mapped to class ids through
``class_map``, and per camera an optional camera mask (white = sky seen by the
lens). Pixels whose annotation maps to `IGNORE` (WSISEG's 0 = outside /
undefined) and pixels outside the camera mask are stored as `IGNORE` in the
cache; the pipeline's one-hot of a softmax target turns them into all-zero
rows, so they count in no loss and no metric (`tfsky.models.losses`).

Several cameras may share one folder: each frame belongs to the camera whose
``frames`` range holds the frame number (the last run of digits in its file
name, e.g. ``ASC100-1006_451.png`` -> 451). Train/val are split per frame,
stratified by camera and by sky type (``labels_csv``). Frames in ``test_frames``
ranges are held out of both into the cache's ``test`` split (cross-validation
folds of consecutive frames: ``scripts/cloud_cv.py``).
"""

from __future__ import annotations

import csv
import dataclasses
import re
from pathlib import Path
from typing import Optional

import numpy as np

from tfsky.errors import ConfigError, InputError
from tfsky.io.images import DEFAULT_MAX_PIXELS, read_image

IGNORE = 255  # class id of pixels that count in no loss and no metric
MASK_THRESHOLD = 128  # camera-mask pixels >= this are seen by the lens
WSISEG_CLASS_MAP = {"255": 1, "100": 0, "0": IGNORE}  # cloud -> 1, clear sky -> 0, outside/undefined -> ignore


@dataclasses.dataclass
class AllSkyCamera:
    """One camera of an all-sky folder.

    Args:
        name: str. Camera name (split stratum, per-camera evaluation).
        first_frame: int. Smallest frame number of this camera (inclusive).
        last_frame: int. Largest frame number of this camera (inclusive).
        mask: Optional[Path]. Camera mask PNG (white = sky seen by the lens,
            same size as the frames); None when the annotations alone mark
            the outside. Defaults to None.
    """

    name: str
    first_frame: int
    last_frame: int
    mask: Optional[Path] = None

    def __post_init__(self):
        # Absolute: a cloud model records this config, and `tfsky predict` reads the mask from any folder.
        if self.mask is not None:
            self.mask = Path(self.mask).resolve()

    def validate(self) -> None:
        if self.first_frame > self.last_frame:
            raise ConfigError("last_frame", f"must be >= first_frame ({self.first_frame}); got {self.last_frame}")
        if self.mask is not None and not Path(self.mask).is_file():
            raise ConfigError("mask", f"camera mask not found: {self.mask}")


@dataclasses.dataclass
class AllSkyConfig:
    """The ``allsky:`` part of an ``allsky_folder`` source.

    Args:
        class_map: dict[str, int]. Annotation grey value -> class id (`IGNORE`
            = 255 for ignored pixels); a value not in the map is an error.
            Defaults to WSISEG's ``{255: 1 (cloud), 100: 0 (clear sky), 0: ignore}``.
        cameras: list[AllSkyCamera]. Cameras by frame-number range; a frame
            outside every range is skipped. Defaults to one camera ``camera``
            holding every frame, without mask.
        image_column: str. ``labels_csv`` column with the frame file name. Defaults to ``image_name``.
        label_column: str. ``labels_csv`` column with the sky type. Defaults to ``sky_type``.
        test_frames: list[list[int]]. ``[first, last]`` frame-number ranges (inclusive) held out of training
            and validation into the cache's ``test`` split, which training never reads and
            ``tfsky evaluate segmenter --split test`` scores. Defaults to ``[]``.
    """

    class_map: dict[str, int] = dataclasses.field(default_factory=lambda: dict(WSISEG_CLASS_MAP))
    cameras: list[AllSkyCamera] = dataclasses.field(default_factory=lambda: [AllSkyCamera("camera", 0, 10**12)])
    image_column: str = "image_name"
    label_column: str = "sky_type"
    test_frames: list[list[int]] = dataclasses.field(default_factory=list)

    def validate(self) -> None:
        if not self.class_map:
            raise ConfigError("class_map", "needs at least one annotation value")
        for value, class_id in self.class_map.items():
            if not value.isdigit() or not 0 <= int(value) <= 255:
                raise ConfigError(f"class_map.{value}", "annotation values must be integers 0..255")
            if not 0 <= class_id <= IGNORE:
                raise ConfigError(f"class_map.{value}", f"class ids must be in 0..{IGNORE} ({IGNORE} = ignore)")
        if not self.cameras:
            raise ConfigError("cameras", "needs at least one camera")
        for index, bounds in enumerate(self.test_frames):
            if len(bounds) != 2 or bounds[0] > bounds[1]:
                raise ConfigError(f"test_frames[{index}]", f"must be [first, last] with first <= last; got {bounds}")

    def lookup_table(self) -> np.ndarray:
        """``uint8[256]`` annotation value -> class id; values outside the map hold -1 as int16 to detect them."""
        table = np.full(256, -1, np.int16)
        for value, class_id in self.class_map.items():
            table[int(value)] = class_id
        return table

    def camera_of(self, path: Path) -> Optional[AllSkyCamera]:
        """The camera whose frame range holds ``path``'s frame number (None: no number or no camera)."""
        number = frame_number(path)
        if number is None:
            return None
        return next((c for c in self.cameras if c.first_frame <= number <= c.last_frame), None)

    def is_test_frame(self, path: Path) -> bool:
        """Whether ``path``'s frame number lies in a ``test_frames`` range."""
        number = frame_number(path)
        return number is not None and any(first <= number <= last for first, last in self.test_frames)


def frame_number(path: Path) -> Optional[int]:
    """The last run of digits in the file name (``ASC100-1006_451.png`` -> 451), or None."""
    runs = re.findall(r"\d+", Path(path).stem)
    return int(runs[-1]) if runs else None


def read_sky_types(path: Path, image_column: str, label_column: str) -> dict[str, str]:
    """``{frame file name: sky type}`` from a labels CSV; blank labels are left out.

    Raises:
        InputError: the CSV lacks one of the two columns.
    """
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        columns = reader.fieldnames or []
        if image_column not in columns or label_column not in columns:
            raise InputError(path, f"needs columns {image_column!r} and {label_column!r}; found {columns}")
        return {
            row[image_column].strip(): row[label_column].strip()
            for row in reader
            if row[image_column] and row[label_column] and row[label_column].strip()
        }


def load_class_mask(
    annotation: Path, camera_mask: Optional[Path], cfg: AllSkyConfig, max_pixels: int = DEFAULT_MAX_PIXELS
) -> np.ndarray:
    """``uint8 H x W`` class ids of an annotation PNG, `IGNORE` where it says so or outside the camera mask.

    Raises:
        InputError: unreadable annotation or camera mask, a grey value the class
            map does not cover, or a camera mask of another size.
    """
    values = _grey(annotation, max_pixels)
    classes = cfg.lookup_table()[values]
    unmapped = np.unique(values[classes < 0])
    if unmapped.size:
        known = ", ".join(sorted(cfg.class_map, key=int))
        shown = ", ".join(str(v) for v in unmapped[:5]) + (" ..." if unmapped.size > 5 else "")
        raise InputError(annotation, f"annotation values {shown} are not in the class map (known: {known})")
    classes = classes.astype(np.uint8)
    if camera_mask is not None:
        seen = read_camera_mask(camera_mask, max_pixels)
        if seen.shape != classes.shape:
            raise InputError(
                camera_mask,
                f"camera mask is {seen.shape[1]}x{seen.shape[0]} but annotation {annotation.name} is "
                f"{classes.shape[1]}x{classes.shape[0]}",
            )
        classes[~seen] = IGNORE
    return classes


def read_camera_mask(path: Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Boolean ``H x W``: True where the camera sees sky (grey >= `MASK_THRESHOLD`)."""
    return _grey(path, max_pixels) >= MASK_THRESHOLD


def _grey(path: Path, max_pixels: int) -> np.ndarray:
    """A single-channel 8-bit PNG as ``uint8 H x W`` (the first channel of a colour one; 16-bit reduced)."""
    pixels = read_image(path, channels=None, max_pixels=max_pixels)[..., 0]
    if pixels.dtype == np.uint16:
        return (pixels // 257).astype(np.uint8)
    if pixels.dtype != np.uint8:
        raise InputError(path, f"expected an 8- or 16-bit PNG, got {pixels.dtype}")
    return pixels
