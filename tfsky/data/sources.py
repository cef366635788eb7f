"""Label sources: turn a `SourceConfig` into a list of labelled images, without decoding pixels.

Each item knows its image file, how to load its mask, its split group and
its condition label. Listing is cheap (file names and small label files only),
so `tfsky data prepare` can plan the train/val split before it decodes any
image. Items that cannot be used (an image without a mask) are still listed,
with ``problem`` set, so they are reported as skipped rather than lost.
"""

from __future__ import annotations

import csv
import dataclasses
import fnmatch
import functools
import re
from pathlib import Path
from typing import Callable, Iterator, Optional

import numpy as np

from tfsky.data import allsky
from tfsky.data.coco import CocoDataset
from tfsky.data.config import SourceConfig
from tfsky.errors import ConfigError, InputError
from tfsky.io.images import DEFAULT_MAX_PIXELS, is_image_file, read_mask

CAMERA_MASK_SUFFIX = "-mask.png"


@dataclasses.dataclass(frozen=True)
class LabelledImage:
    """One image and its label, not yet decoded.

    Args:
        id: str. Unique across sources: ``<source>/<path relative to the source's images>``.
        image_path: Path. The image file.
        source: str. Name of the source it comes from.
        group: str. The split unit: the image itself for photos, the camera for
            webcam frames (all frames of a camera land in the same split).
        condition: Optional[str]. Condition label (e.g. ``clear``, ``overcast``), when known.
        mask_path: Optional[Path]. Mask image, thresholded at ``mask_threshold``.
        mask_threshold: int. Threshold of ``mask_path`` on the 0..255 scale.
        coco: Optional[CocoDataset]. COCO annotations the mask is rasterised from (with ``coco_id``).
        coco_id: Optional[int]. Image id in ``coco``.
        problem: Optional[str]. Why the item cannot be used (e.g. its mask is missing); None when fine.
        stratum: Optional[str]. Split stratum (groups are split within it); None: the source.
        mask_loader: Optional[Callable[[int], np.ndarray]]. Loads the class mask (given
            ``max_pixels``) instead of thresholding ``mask_path`` (all-sky class maps).
        test: bool. Held out of train and val into the ``test`` split (all-sky ``test_frames``).
    """

    id: str
    image_path: Path
    source: str
    group: str
    condition: Optional[str] = None
    mask_path: Optional[Path] = None
    mask_threshold: int = 128
    coco: Optional[CocoDataset] = dataclasses.field(default=None, compare=False, repr=False)
    coco_id: Optional[int] = None
    problem: Optional[str] = None
    stratum: Optional[str] = None
    mask_loader: Optional[Callable[[int], np.ndarray]] = dataclasses.field(default=None, compare=False, repr=False)
    test: bool = False

    def load_mask(self, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
        """The ``uint8`` ``H x W`` class-id mask (0/1 for binary sky).

        Raises:
            InputError: the mask file cannot be read.
        """
        if self.coco is not None:
            assert self.coco_id is not None  # set with coco
            return self.coco.mask(self.coco_id)
        if self.mask_loader is not None:
            return self.mask_loader(max_pixels)
        assert self.mask_path is not None  # an item has a mask path, a COCO id or a mask loader
        return read_mask(self.mask_path, threshold=self.mask_threshold, max_pixels=max_pixels)


def iter_source(cfg: SourceConfig) -> Iterator[LabelledImage]:
    """The labelled images of one source, in a stable (sorted or file) order.

    Raises:
        ConfigError: a folder or file named in ``cfg`` does not exist (key relative to the source).
        InputError: a label file (COCO JSON, labels CSV) is unusable as a whole.
    """
    _check_paths(cfg)
    readers = {"mask_folder": _mask_folder, "camera_folder": _camera_folder, "allsky_folder": _allsky_folder}
    items = readers.get(cfg.kind, _coco)(cfg)
    if not cfg.exclude:
        return items
    return (item for item in items if not _excluded(item, cfg.exclude))


def _excluded(item: LabelledImage, patterns: list[str]) -> bool:
    relative = item.id.split("/", 1)[1]  # ids are <source>/<path relative to images>
    return any(fnmatch.fnmatchcase(relative, pattern) for pattern in patterns)


def _check_paths(cfg: SourceConfig) -> None:
    for key in ("images", "masks", "annotations", "labels_csv"):
        path = getattr(cfg, key)
        if path is None:
            continue
        wanted_file = key in ("annotations", "labels_csv")
        if not (path.is_file() if wanted_file else path.is_dir()):
            raise ConfigError(key, f"{'file' if wanted_file else 'folder'} not found: {path}")


def _image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and is_image_file(p))


def _mask_folder(cfg: SourceConfig) -> Iterator[LabelledImage]:
    assert cfg.masks is not None and cfg.name is not None  # validate() requires masks; __post_init__ sets name
    group_pattern = re.compile(cfg.group_pattern) if cfg.group_pattern else None
    for path in _image_files(cfg.images):
        relative = path.relative_to(cfg.images)
        mask_path = cfg.masks / relative.with_suffix(".png")
        item_id = f"{cfg.name}/{relative.as_posix()}"
        match = group_pattern.search(relative.as_posix()) if group_pattern else None
        yield LabelledImage(
            id=item_id,
            image_path=path,
            source=cfg.name,
            group=f"{cfg.name}/{match.group(0)}" if match else item_id,
            mask_path=mask_path,
            mask_threshold=cfg.mask_threshold,
            problem=None if mask_path.is_file() else f"missing mask {mask_path}",
        )


def _camera_folder(cfg: SourceConfig) -> Iterator[LabelledImage]:
    assert cfg.name is not None  # __post_init__ sets it
    conditions = read_conditions(cfg.labels_csv) if cfg.labels_csv else {}
    found = sorted(p.name for p in cfg.images.iterdir() if p.is_dir())
    unknown = sorted(set(cfg.cameras or ()) - set(found))
    if unknown:
        raise ConfigError("cameras", f"camera folder(s) not found in {cfg.images}: {', '.join(unknown)}")
    mask_folder = cfg.masks or cfg.images
    for camera in cfg.cameras or found:
        mask_path = mask_folder / f"{camera}{CAMERA_MASK_SUFFIX}"
        problem = None if mask_path.is_file() else f"missing camera mask {mask_path}"
        for path in _image_files(cfg.images / camera):
            relative = path.relative_to(cfg.images).as_posix()
            yield LabelledImage(
                id=f"{cfg.name}/{relative}",
                image_path=path,
                source=cfg.name,
                group=f"{cfg.name}/{camera}",
                condition=conditions.get(relative),
                mask_path=mask_path,
                mask_threshold=cfg.mask_threshold,
                problem=problem,
            )


def read_conditions(path: Path) -> dict[str, str]:
    """``{relative image path: condition}`` from a labels CSV (columns ``image`` and ``condition``/``sky_condition``).

    Raises:
        InputError: the CSV lacks those columns.
    """
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        columns = reader.fieldnames or []
        condition = next((c for c in ("condition", "sky_condition") if c in columns), None)
        if "image" not in columns or condition is None:
            raise InputError(path, f"needs columns 'image' and 'condition' (or 'sky_condition'); found {columns}")
        return {row["image"].strip(): row[condition].strip() for row in reader if row["image"]}


def _coco(cfg: SourceConfig) -> Iterator[LabelledImage]:
    assert cfg.annotations is not None and cfg.name is not None  # validate() requires annotations
    dataset = CocoDataset(cfg.annotations, cfg.images, cfg.positive, cfg.negative)
    for image in dataset.images():
        item_id = f"{cfg.name}/{Path(image.file_name).as_posix()}"
        yield LabelledImage(
            id=item_id, image_path=image.path, source=cfg.name, group=item_id, coco=dataset, coco_id=image.id
        )


def _allsky_folder(cfg: SourceConfig) -> Iterator[LabelledImage]:
    """Frames split one by one, stratified by camera and sky type; masks through the class map (`tfsky.data.allsky`)."""
    assert cfg.masks is not None and cfg.name is not None  # validate() requires masks; __post_init__ sets name
    settings = cfg.allsky
    sky_types = (
        allsky.read_sky_types(cfg.labels_csv, settings.image_column, settings.label_column) if cfg.labels_csv else {}
    )
    for path in _image_files(cfg.images):
        relative = path.relative_to(cfg.images)
        annotation = cfg.masks / relative.with_suffix(".png")
        camera = settings.camera_of(path)
        problem = None if annotation.is_file() else f"missing annotation {annotation}"
        if camera is None:
            problem = f"frame number of {path.name} is in no camera's frame range"
        item_id = f"{cfg.name}/{relative.as_posix()}"
        sky_type = sky_types.get(relative.as_posix())
        yield LabelledImage(
            id=item_id,
            image_path=path,
            source=cfg.name,
            group=item_id,
            condition=sky_type,
            mask_path=annotation,
            problem=problem,
            stratum=f"{cfg.name}/{camera.name if camera else '-'}/{sky_type or '-'}",
            mask_loader=functools.partial(
                allsky.load_class_mask, annotation, camera.mask if camera else None, settings
            ),
            test=settings.is_test_frame(path),
        )
