"""Image-level labelled data for the weather classifier: class folders and labels CSVs, split by source.

Two source kinds:

``class_folders``  ``<path>/<class>/<images>`` (e.g. ``weather_mwd``: cloudy/, rain/...);
``csv``            a CSV with an image column (paths relative to ``images``) and a label
                   column (e.g. ``allsky_wsiseg/sky_type.csv``, SkyFinder's labels).

Source labels are mapped to tfsky conditions by ``classes`` (``{cloudy:
overcast, shine: clear, ...}``); a label the map does not name is skipped and
reported. The model's outputs are the conditions in their first-seen order in
``classes`` (`condition_names`).

The validation split is made by SOURCE, never by random frame: for a CSV
source with ``group: folder`` a source is the image's folder (one camera);
otherwise near-duplicate photos (mean absolute difference of 24x24 colour
thumbnails at most ``duplicate_threshold``; web-scraped sets hold the same
photo twice) form one source, so a photo and its copy never straddle the split.
"""

from __future__ import annotations

import csv
import dataclasses
import random
from collections import Counter, defaultdict
from pathlib import Path
from typing import Literal, Optional

import cv2
import numpy as np

from tfsky.errors import ConfigError, InputError
from tfsky.io.images import REC709_LUMA, is_image_file, read_image

SPLITS = ("train", "val")
_DUPLICATE_THUMB = 24


@dataclasses.dataclass
class LabelledSource:
    """One labelled image set.

    Args:
        kind: str. ``class_folders`` or ``csv``.
        path: Path. The folder of class folders, or the CSV file.
        images: Optional[Path]. For ``csv``: folder the image column is relative to. Defaults to the CSV's folder.
        image_column: str. For ``csv``. Defaults to ``image``.
        label_column: str. For ``csv``. Defaults to ``label``.
        group: str. What one source is: ``near_duplicates`` (see module doc) or, for ``csv``,
            ``folder`` (the image's folder: one camera). Defaults to ``near_duplicates``.
    """

    kind: Literal["class_folders", "csv"]
    path: Path
    images: Optional[Path] = None
    image_column: str = "image"
    label_column: str = "label"
    group: Literal["near_duplicates", "folder"] = "near_duplicates"

    def validate(self) -> None:
        if self.group == "folder" and self.kind != "csv":
            raise ConfigError("group", "'folder' is for csv sources (class folders are not cameras)")


@dataclasses.dataclass
class ClassifierDataConfig:
    """The ``data:`` section of a classifier config.

    Args:
        sources: list[LabelledSource]. The labelled image sets.
        classes: dict[str, str]. Source label -> tfsky condition; other labels are skipped.
        image_size: int. Side of the square model input. Defaults to 128.
        load_scale: float. Images are resized to ``image_size * load_scale`` and cropped to
            ``image_size`` (random crops for training, the centre otherwise). Defaults to 1.15.
        val_fraction: float. Share of each condition's images held out, whole sources at a time.
            Defaults to 0.2.
        duplicate_threshold: float. Largest thumbnail difference (0..1) of two copies of one photo.
            Defaults to 0.03.
        seed: int. Seed of the source shuffle before the split. Defaults to 0.
        augment: bool. Random crop, horizontal flip and mild brightness/contrast jitter. Defaults to True.
    """

    sources: list[LabelledSource]
    classes: dict[str, str]
    image_size: int = 128
    load_scale: float = 1.15
    val_fraction: float = 0.2
    duplicate_threshold: float = 0.03
    seed: int = 0
    augment: bool = True

    def validate(self) -> None:
        if not self.sources:
            raise ConfigError("sources", "needs at least one labelled source")
        if len(set(self.classes.values())) < 2:
            raise ConfigError("classes", f"must map labels to at least two conditions; got {self.classes}")
        if self.image_size < 32 or self.image_size % 32:
            raise ConfigError("image_size", f"must be a multiple of 32, >= 32; got {self.image_size}")
        if self.load_scale < 1:
            raise ConfigError("load_scale", f"must be >= 1; got {self.load_scale}")
        if not 0 < self.val_fraction < 1:
            raise ConfigError("val_fraction", f"must be in (0, 1); got {self.val_fraction}")

    @property
    def load_size(self) -> int:
        return round(self.image_size * self.load_scale)


@dataclasses.dataclass(frozen=True)
class LabelledImage:
    path: Path
    condition: str
    source: str  # the group the split keeps together


@dataclasses.dataclass
class LabelledSet:
    """Images by split, and the label rows that were skipped (with the reason)."""

    splits: dict[str, list[LabelledImage]]
    conditions: list[str]
    skipped: list[str]


def condition_names(classes: dict[str, str]) -> list[str]:
    """The classifier's output classes: the conditions of ``classes`` in first-seen order."""
    return list(dict.fromkeys(classes.values()))


def labelled_set(cfg: ClassifierDataConfig) -> LabelledSet:
    """Every labelled image of ``cfg.sources``, mapped to conditions and split by source."""
    images: list[LabelledImage] = []
    skipped: list[str] = []
    for index, source in enumerate(cfg.sources):
        rows = _class_folder_rows(source) if source.kind == "class_folders" else _csv_rows(source, skipped)
        found = []
        for path, label, folder in rows:
            if not label:
                skipped.append(f"{path}: no label")
            elif label not in cfg.classes:
                skipped.append(f"{path}: label {label!r} is not in data.classes")
            else:
                found.append((path, cfg.classes[label], folder))
        groups = (
            _folder_groups(found)
            if source.group == "folder"
            else _duplicate_groups([p for p, _, _ in found], cfg.duplicate_threshold)
        )
        images += [LabelledImage(p, c, f"{index}:{g}") for (p, c, _), g in zip(found, groups)]
    if not images:
        raise InputError(cfg.sources[0].path, "no labelled images found (check data.classes)")
    return LabelledSet(split_by_source(images, cfg.val_fraction, cfg.seed), condition_names(cfg.classes), skipped)


def _class_folder_rows(source: LabelledSource) -> list[tuple[Path, str, str]]:
    root = Path(source.path)
    if not root.is_dir():
        raise InputError(root, "class folders root not found")
    rows = [
        (p, folder.name, folder.name)
        for folder in sorted(root.iterdir())
        if folder.is_dir()
        for p in sorted(folder.iterdir())
        if p.is_file() and is_image_file(p)
    ]
    if not rows:
        raise InputError(root, "no <class>/<image> files found")
    return rows


def _csv_rows(source: LabelledSource, skipped: list[str]) -> list[tuple[Path, str, str]]:
    path = Path(source.path)
    if not path.is_file():
        raise InputError(path, "labels CSV not found")
    root = Path(source.images) if source.images else path.parent
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        for column in (source.image_column, source.label_column):
            if column not in (reader.fieldnames or []):
                raise InputError(path, f"no column '{column}' (columns: {', '.join(reader.fieldnames or [])})")
        rows = []
        for line, row in enumerate(reader, start=2):
            image = root / row[source.image_column]
            if image.is_file():
                rows.append((image, row[source.label_column].strip(), str(Path(row[source.image_column]).parent)))
            else:
                skipped.append(f"{path}:{line}: image {row[source.image_column]} not found under {root}")
    return rows


def _folder_groups(found: list[tuple[Path, str, str]]) -> list[str]:
    return [folder for _, _, folder in found]


def _duplicate_groups(paths: list[Path], threshold: float) -> list[str]:
    """A group name per image: images within ``threshold`` of each other (transitively) share one."""
    if not paths:
        return []
    thumbs = np.stack([_duplicate_thumb(p) for p in paths])
    parent = list(range(len(paths)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i in range(len(paths)):
        close = np.nonzero(np.abs(thumbs[i + 1 :] - thumbs[i]).mean(axis=1) <= threshold)[0] + i + 1
        for j in close:
            parent[root(int(j))] = root(i)
    return [paths[root(i)].name for i in range(len(paths))]


def _duplicate_thumb(path: Path) -> np.ndarray:
    image = read_image(path)
    scale = np.float32(np.iinfo(image.dtype).max)
    small = cv2.resize(image, (_DUPLICATE_THUMB, _DUPLICATE_THUMB), interpolation=cv2.INTER_AREA)
    return (small.astype(np.float32) / scale).ravel()


def split_by_source(images: list[LabelledImage], val_fraction: float, seed: int) -> dict[str, list[LabelledImage]]:
    """Hold out about ``val_fraction`` of each condition's images, taking whole sources (shuffled by ``seed``).

    A source goes with its most common condition; every condition keeps at
    least one training source.
    """
    by_source: dict[str, list[LabelledImage]] = defaultdict(list)
    for image in images:
        by_source[image.source].append(image)
    by_condition: dict[str, list[str]] = defaultdict(list)
    for source, members in sorted(by_source.items()):
        by_condition[Counter(m.condition for m in members).most_common(1)[0][0]].append(source)
    rng = random.Random(seed)
    val_sources = set()
    for condition, sources in sorted(by_condition.items()):
        rng.shuffle(sources)
        target = val_fraction * sum(len(by_source[s]) for s in sources)
        taken = 0
        for source in sources[:-1]:
            if taken >= target:
                break
            val_sources.add(source)
            taken += len(by_source[source])
    return {
        "train": [i for i in images if i.source not in val_sources],
        "val": [i for i in images if i.source in val_sources],
    }


def load_images(images: list[LabelledImage], size: int, crop: Optional[int] = None) -> np.ndarray:
    """The images as ``[N, size, size, 3]`` uint8 (`square_rgb8`), centre-cropped to ``crop`` when given."""
    return np.stack([classifier_input(read_image(image.path), size, crop or size) for image in images])


def classifier_input(image: np.ndarray, load_size: int, image_size: int) -> np.ndarray:
    """What the classifier sees of a frame: squeezed to ``load_size`` square, the centre ``image_size`` crop."""
    square = square_rgb8(image, load_size)
    start = (load_size - image_size) // 2
    return square[start : start + image_size, start : start + image_size]


def square_rgb8(image: np.ndarray, size: int) -> np.ndarray:
    """An 8/16-bit RGB image squeezed to ``size x size`` uint8: the classifier sees the whole frame."""
    return resized_rgb8(image, size, size)


def resized_rgb8(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """An 8/16-bit RGB image area-resized to ``width x height``, as uint8 (for models and thumbnails)."""
    small = cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA)
    return (small // 257).astype(np.uint8) if small.dtype == np.uint16 else small


COLOUR_STATISTICS = (
    "brightness",
    "brightness_std",
    "saturation",
    "saturation_std",
    "blueness",
    "bright_share",
    "dark_share",
    "texture",
)


def colour_statistics(rgb: np.ndarray, region: np.ndarray) -> np.ndarray:
    """The `COLOUR_STATISTICS` of the ``region`` (boolean [H, W], not empty) of a uint8 RGB image.

    Brightness is Rec.709 luma (0..1), blueness B - R, the shares count pixels brighter than 0.9 and darker
    than 0.1, texture is the mean gradient magnitude: what tells a blue sky from a grey one or a sunset.
    """
    hsv = cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV).astype(np.float32) / 255.0
    unit = rgb.astype(np.float32) / 255.0
    grey = unit @ REC709_LUMA
    gradient = np.hypot(cv2.Sobel(grey, cv2.CV_32F, 1, 0), cv2.Sobel(grey, cv2.CV_32F, 0, 1))
    value, saturation = grey[region], hsv[..., 1][region]
    blue = unit[..., 2][region] - unit[..., 0][region]
    return np.array(
        [
            value.mean(),
            value.std(),
            saturation.mean(),
            saturation.std(),
            blue.mean(),
            (value > 0.9).mean(),
            (value < 0.1).mean(),
            gradient[region].mean(),
        ],
        np.float64,
    )
