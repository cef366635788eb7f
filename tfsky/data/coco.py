"""COCO instance annotations rasterised into binary masks (e.g. sky = 1).

A pixel is 1 when an annotation of a *positive* category covers it, then 0
again where a *negative* category covers it (objects in the sky such as birds
or aircraft cut out of the sky), the seed pipeline's ``class 2 -> 0`` rule.
Polygons, uncompressed RLE (``iscrowd=1``) and compressed RLE are decoded by
pycocotools, so masks match the reference COCO tools pixel for pixel.
"""

from __future__ import annotations

import dataclasses
import json
from collections import defaultdict
from pathlib import Path
from typing import Sequence

import numpy as np
from pycocotools import mask as mask_utils

from tfsky.data.config import SKY_CATEGORIES
from tfsky.errors import InputError
from tfsky.io.images import image_size
from tfsky.io.writers import write_mask_png


@dataclasses.dataclass(frozen=True)
class CocoImage:
    """One ``images`` entry; ``path`` is ``image_root / file_name`` resolved (it may not exist)."""

    id: int
    file_name: str
    path: Path
    height: int
    width: int


class CocoDataset:
    """A COCO annotation file read for binary mask rasterisation.

    Args:
        annotations: Path. The COCO JSON file.
        image_root: Path. Folder the images' ``file_name`` values are relative to.
        positive: Sequence[str]. Category names that make a pixel 1. Defaults to ``("sky",)``.
        negative: Sequence[str]. Category names cut out of the positive area. Defaults to ``()``.

    Raises:
        InputError: missing/invalid JSON, not COCO, unknown or no positive categories,
            or an image ``file_name`` outside ``image_root``.
    """

    def __init__(
        self,
        annotations: Path,
        image_root: Path,
        positive: Sequence[str] = SKY_CATEGORIES,
        negative: Sequence[str] = (),
    ):
        self.annotations = Path(annotations)
        self.image_root = Path(image_root)
        data = _load_coco_json(self.annotations)
        self._category_ids = _category_ids(self.annotations, data["categories"])
        if not positive:
            raise InputError(self.annotations, "no positive category given (e.g. --positive sky)")
        self._positive = self._ids(positive)
        self._negative = self._ids(negative)
        self._images = {image.id: image for image in self._read_images(data["images"])}
        self._annotations = _group_by_image(self.annotations, data["annotations"])

    def category_names(self) -> list[str]:
        """Category names in file order."""
        return list(self._category_ids)

    def images(self) -> list[CocoImage]:
        """All images in file order."""
        return list(self._images.values())

    def mask(self, image_id: int) -> np.ndarray:
        """``uint8`` ``H x W`` mask of image ``image_id``: positive categories minus negative ones."""
        image = self._images[image_id]
        positive = np.zeros((image.height, image.width), dtype=bool)
        negative = np.zeros_like(positive)
        for ann in self._annotations.get(image_id, []):
            if ann["category_id"] in self._positive:
                positive |= self._decode(ann, image)
            elif ann["category_id"] in self._negative:
                negative |= self._decode(ann, image)
        return (positive & ~negative).astype(np.uint8)

    def _ids(self, names: Sequence[str]) -> set[int]:
        for name in names:
            if name not in self._category_ids:
                known = ", ".join(repr(n) for n in self._category_ids)
                raise InputError(self.annotations, f"unknown category {name!r} (categories in the file: {known})")
        return {self._category_ids[name] for name in names}

    def _read_images(self, entries: list[dict]) -> list[CocoImage]:
        root = self.image_root.resolve()
        images = []
        for index, entry in enumerate(entries):
            try:
                image_id, file_name = int(entry["id"]), str(entry["file_name"])
                height, width = int(entry["height"]), int(entry["width"])
            except (KeyError, TypeError, ValueError) as err:
                raise InputError(self.annotations, f"images[{index}]: missing or invalid field {err}") from None
            path = (root / file_name).resolve()
            if not path.is_relative_to(root):
                raise InputError(self.annotations, f"image {file_name!r}: image path escapes the image root {root}")
            images.append(CocoImage(image_id, file_name, path, height, width))
        return images

    def _decode(self, ann: dict, image: CocoImage) -> np.ndarray:
        """Boolean ``H x W`` area of one annotation (polygons, RLE or compressed RLE)."""
        segmentation = ann.get("segmentation")
        try:
            if isinstance(segmentation, list):  # polygons: one or more [x0, y0, x1, y1, ...]
                rle = mask_utils.merge(mask_utils.frPyObjects(segmentation, image.height, image.width))
            elif isinstance(segmentation, dict) and isinstance(segmentation.get("counts"), list):
                rle = mask_utils.frPyObjects(segmentation, image.height, image.width)
            else:
                rle = segmentation
            area = mask_utils.decode(rle)
        except Exception as err:  # noqa: BLE001 - pycocotools raises assorted types on malformed input
            raise InputError(self.annotations, f"annotation {ann.get('id')}: invalid segmentation ({err})") from None
        if area.shape != (image.height, image.width):
            raise InputError(
                self.annotations,
                f"annotation {ann.get('id')}: segmentation is {area.shape[1]}x{area.shape[0]}, "
                f"image {image.file_name!r} is {image.width}x{image.height}",
            )
        return area.astype(bool)


def _category_ids(path: Path, categories: list[dict]) -> dict[str, int]:
    """``{name: id}`` of the ``categories`` entries, in file order."""
    ids = {}
    for index, cat in enumerate(categories):
        try:
            ids[cat["name"]] = cat["id"]
        except (KeyError, TypeError) as err:
            raise InputError(path, f"categories[{index}]: missing or invalid field {err}") from None
    return ids


def _group_by_image(path: Path, annotations: list[dict]) -> dict[int, list[dict]]:
    grouped: dict[int, list[dict]] = defaultdict(list)
    for index, ann in enumerate(annotations):
        if not isinstance(ann, dict) or not {"image_id", "category_id"} <= ann.keys():
            raise InputError(path, f"annotations[{index}]: needs image_id and category_id")
        grouped[ann["image_id"]].append(ann)
    return grouped


@dataclasses.dataclass
class MaskReport:
    """What `write_masks` did: masks written, and ``(file_name, reason)`` for each image skipped."""

    written: list[Path] = dataclasses.field(default_factory=list)
    skipped: list[tuple[str, str]] = dataclasses.field(default_factory=list)


def write_masks(
    annotations: Path,
    images_dir: Path,
    out_dir: Path,
    positive: Sequence[str] = SKY_CATEGORIES,
    negative: Sequence[str] = (),
) -> MaskReport:
    """Write one 0/255 PNG mask per annotated image, named like the image with ``.png``.

    Images whose file is missing, whose real size differs from the annotation,
    or whose mask name was already used by another image are skipped and
    reported; the others are written (atomically, so a re-run completes a
    killed one).

    Raises:
        InputError: the annotation file itself is unusable (see `CocoDataset`).
    """
    dataset = CocoDataset(annotations, images_dir, positive, negative)
    report = MaskReport()
    used_names: set[Path] = set()
    for image in dataset.images():
        out_path = Path(out_dir) / (Path(image.file_name).stem + ".png")
        problem = _skip_reason(image, out_path, used_names)
        if problem:
            report.skipped.append((image.file_name, problem))
            continue
        write_mask_png(out_path, dataset.mask(image.id))
        report.written.append(out_path)
        used_names.add(out_path)
    return report


def _skip_reason(image: CocoImage, out_path: Path, used_names: set[Path]) -> str | None:
    if not image.path.is_file():
        return f"image file not found: {image.path}"
    if out_path in used_names:
        return f"mask name {out_path.name} already used by another image"
    try:
        height, width = image_size(image.path)
    except InputError as err:
        return err.problem
    if (height, width) != (image.height, image.width):
        return f"image is {width}x{height} but the annotations say {image.width}x{image.height}"
    return None


def _load_coco_json(path: Path) -> dict:
    if not path.is_file():
        raise InputError(path, "annotation file not found")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise InputError(path, f"invalid JSON ({err})") from None
    missing = [key for key in ("images", "annotations", "categories") if not isinstance(data, dict) or key not in data]
    if missing:
        raise InputError(path, f"not a COCO annotation file (missing {', '.join(missing)})")
    return data
