"""Colorization data: exact sRGB <-> CIELAB, the image sources, and (L, ab) training examples.

Conversion (`rgb_to_lab`, `lab_to_rgb`): sRGB in [0, 1] (IEC 61966-2-1 gamma) -> linear RGB
-> XYZ (the Rec.709/D65 matrix) -> CIELAB against the D65 white, with OpenCV's constants (L in
[0, 100], a and b roughly [-110, 110]), computed exactly in float32: within 0.01 of scikit-image's
float64 ``rgb2lab`` on real photos, while OpenCV's own float ``COLOR_RGB2Lab`` tabulates the curves
and is off by up to 0.4, 0.1 on average (tests/test_colorize.py). The inverse is exact (round trip to 1e-4). Written in TensorFlow ops so the
training pipeline, the tiled prediction and the serving signature share it.

Model units: L -> ``L / 50 - 1`` and ab -> ``ab / AB_SCALE`` (`lab_to_model`, `model_to_lab`),
both about [-1, 1] for the tanh heads.

Sources (`ColourSourcesConfig`, the ``colour:`` section): colour needs no labels, so any
image collection tfsky reads serves: segmentation sources (``mask_folder``, ``camera_folder``,
``coco``, ``allsky_folder``; `tfsky.data.sources`) and class folders (`tfsky.data.labelled`).
The validation split is BY SOURCE: a webcam's frames stay together (its camera), near-duplicate
photos of class folders stay together (`tfsky.data.labelled.split_by_source`, stratified by
class), and ``val_sources`` holds whole named sources out.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Iterator, Optional

import cv2
import numpy as np
import tensorflow as tf

from tfsky.data.config import SourceConfig
from tfsky.data.labelled import ClassifierDataConfig, LabelledSource, labelled_set
from tfsky.data.pairs import split_cameras
from tfsky.data.scale import resize_image
from tfsky.data.sources import iter_source
from tfsky.errors import ConfigError, InputError
from tfsky.io.images import read_image

AB_SCALE = 110.0
# sRGB (D65) -> XYZ, and the D65 white, as OpenCV's float RGB2Lab.
_RGB_TO_XYZ = np.array(
    [[0.412453, 0.357580, 0.180423], [0.212671, 0.715160, 0.072169], [0.019334, 0.119193, 0.950227]], np.float64
)
_WHITE = np.array([0.950456, 1.0, 1.088754], np.float64)
_XYZ_TO_RGB = np.linalg.inv(_RGB_TO_XYZ)
_EPSILON, _KAPPA = 0.008856, 903.3  # CIE constants as OpenCV writes them


# --- conversion ----------------------------------------------------------------------------------


def rgb_to_lab(rgb) -> tf.Tensor:
    """sRGB in [0, 1], [..., 3] -> CIELAB [..., 3] (L 0..100), float32."""
    rgb = tf.cast(rgb, tf.float32)
    linear = tf.where(rgb <= 0.04045, rgb / 12.92, tf.pow((tf.maximum(rgb, 0.04045) + 0.055) / 1.055, 2.4))
    xyz = tf.tensordot(linear, tf.constant((_RGB_TO_XYZ / _WHITE[:, None]).T, tf.float32), 1)
    f = tf.where(xyz > _EPSILON, tf.pow(tf.maximum(xyz, _EPSILON), 1 / 3), 7.787 * xyz + 16 / 116)
    y = xyz[..., 1]
    lightness = tf.where(y > _EPSILON, 116 * f[..., 1] - 16, _KAPPA * y)
    return tf.stack([lightness, 500 * (f[..., 0] - f[..., 1]), 200 * (f[..., 1] - f[..., 2])], axis=-1)


def lab_to_rgb(lab) -> tf.Tensor:
    """CIELAB [..., 3] -> sRGB [..., 3] in [0, 1] (out-of-gamut colours clipped per channel), float32."""
    linear = tf.clip_by_value(_lab_to_linear(lab), 0, 1)
    srgb = tf.where(linear <= 0.0031308, 12.92 * linear, 1.055 * tf.pow(tf.maximum(linear, 0.0031308), 1 / 2.4) - 0.055)
    return tf.clip_by_value(srgb, 0, 1)


def fit_gamut(lab, steps: int = 10) -> tf.Tensor:
    """``lab`` with the chroma of out-of-gamut colours reduced until they fit sRGB; L and hue kept.

    Clipping each RGB channel instead (`lab_to_rgb` alone) changes the lightness of a bright or dark
    pixel given a strong colour: a predicted colour should change the colour, never the grey image.
    Bisection on the chroma factor, ``steps`` halvings (10: within 0.1 % of the gamut border).
    """
    lab = tf.cast(lab, tf.float32)

    def fits(factor):
        linear = _lab_to_linear(tf.concat([lab[..., :1], lab[..., 1:] * factor[..., None]], axis=-1))
        return tf.reduce_all((linear >= -1e-4) & (linear <= 1 + 1e-4), axis=-1)

    low, high = tf.zeros_like(lab[..., 0]), tf.ones_like(lab[..., 0])
    inside = fits(high)
    for _ in range(steps):
        middle = (low + high) / 2
        ok = fits(middle)
        low, high = tf.where(ok, middle, low), tf.where(ok, high, middle)
    factor = tf.where(inside, 1.0, low)
    return tf.concat([lab[..., :1], lab[..., 1:] * factor[..., None]], axis=-1)


def _lab_to_linear(lab) -> tf.Tensor:
    """CIELAB [..., 3] -> linear RGB [..., 3], not clipped."""
    lab = tf.cast(lab, tf.float32)
    lightness = lab[..., 0]
    y = tf.where(lightness > _KAPPA * _EPSILON, tf.pow((lightness + 16) / 116, 3), lightness / _KAPPA)
    fy = tf.where(y > _EPSILON, (lightness + 16) / 116, 7.787 * y + 16 / 116)
    fx, fz = fy + lab[..., 1] / 500, fy - lab[..., 2] / 200
    inverse_f = lambda f: tf.where(f > 6 / 29, tf.pow(f, 3), (f - 16 / 116) / 7.787)  # noqa: E731
    xyz = tf.stack([inverse_f(fx), y, inverse_f(fz)], axis=-1)
    return tf.tensordot(xyz, tf.constant((_XYZ_TO_RGB * _WHITE[None, :]).T, tf.float32), 1)


def lab_to_model(lab) -> tuple[tf.Tensor, tf.Tensor]:
    """Lab [..., 3] -> (L [..., 1], ab [..., 2]) in model units, about [-1, 1]."""
    return lab[..., :1] / 50 - 1, lab[..., 1:] / AB_SCALE


def model_to_lab(lightness, ab) -> tf.Tensor:
    """(L, ab) in model units -> Lab [..., 3]."""
    return tf.concat([(tf.cast(lightness, tf.float32) + 1) * 50, tf.cast(ab, tf.float32) * AB_SCALE], axis=-1)


def unit_rgb(image: np.ndarray, source: str | Path = "image") -> np.ndarray:
    """An 8- or 16-bit RGB image as float32 [0, 1]; HDR (float) input is refused: tone-map it first.

    Raises:
        InputError: a floating-point (HDR) image.
    """
    if image.dtype == np.uint8:
        return image.astype(np.float32) / 255
    if image.dtype == np.uint16:
        return image.astype(np.float32) / 65535
    raise InputError(
        source,
        f"is an HDR ({image.dtype}) image: tone-map it to 8 or 16 bits first "
        "(colorization works on display-referred sRGB)",
    )


def lab_of(image: np.ndarray, source: str | Path = "image") -> np.ndarray:
    """Float32 Lab [H, W, 3] of an 8/16-bit RGB image."""
    return rgb_to_lab(unit_rgb(image, source)).numpy()


# --- sources and split ---------------------------------------------------------------------------


@dataclasses.dataclass
class ColourSourcesConfig:
    """The ``colour:`` section of a colorization config: which images, and the split by source.

    Args:
        sources: list[SourceConfig]. Segmentation sources (their labels are ignored). Defaults to [].
        class_folders: list[Path]. ``<path>/<class>/<images>`` folders (e.g. weather_mwd). Defaults to [].
        val_sources: list[str]. Source names held out whole (a source's name: ``SourceConfig.name``
            or the class folders' folder name); when empty, ``val_fraction`` of each source's split
            groups is held out. Defaults to [].
        val_fraction: float. Share held out when ``val_sources`` is empty. Defaults to 0.2.
        duplicate_threshold: float. Near-duplicate photos of class folders (one group). Defaults to 0.03.
        seed: int. Seed of the split. Defaults to 0.
    """

    sources: list[SourceConfig] = dataclasses.field(default_factory=list)
    class_folders: list[Path] = dataclasses.field(default_factory=list)
    val_sources: list[str] = dataclasses.field(default_factory=list)
    val_fraction: float = 0.2
    duplicate_threshold: float = 0.03
    seed: int = 0

    def validate(self) -> None:
        if not 0 <= self.val_fraction < 1:
            raise ConfigError("val_fraction", f"must be in [0, 1); got {self.val_fraction}")


def source_name(folder: Path) -> str:
    """The name of a class-folders source: its folder's name."""
    return Path(folder).name


def colour_split(cfg: ColourSourcesConfig) -> dict[str, list[Path]]:
    """``{"train": [...], "val": [...]}`` image files of every source, split by source (module docstring).

    Raises:
        ConfigError: no source configured, or a ``val_sources`` name no source has.
        InputError: a source folder or label file cannot be used.
    """
    if not cfg.sources and not cfg.class_folders:
        raise ConfigError("colour.sources", "no image source: add colour.sources or colour.class_folders")
    names = [s.name for s in cfg.sources if s.name is not None] + [source_name(f) for f in cfg.class_folders]
    unknown = sorted(set(cfg.val_sources) - set(names))
    if unknown:
        raise ConfigError("colour.val_sources", f"no source named {unknown[0]!r} (sources: {', '.join(names)})")
    split: dict[str, list[Path]] = {"train": [], "val": []}
    for source in cfg.sources:
        items = list(iter_source(source))
        if source.name in cfg.val_sources:
            split["val"] += [item.image_path for item in items]
            continue
        groups = split_cameras(sorted({item.group for item in items}), cfg.val_fraction, cfg.seed)
        for item in items:
            split[groups[item.group]].append(item.image_path)
    for folder in cfg.class_folders:
        classes = (
            {d.name: d.name for d in sorted(Path(folder).iterdir()) if d.is_dir()} if Path(folder).is_dir() else {}
        )
        fraction = 0.0 if source_name(folder) in cfg.val_sources else cfg.val_fraction
        labelled = labelled_set(
            ClassifierDataConfig(
                sources=[LabelledSource(kind="class_folders", path=Path(folder))],
                classes=classes or {"-": "-"},
                val_fraction=fraction,
                duplicate_threshold=cfg.duplicate_threshold,
                seed=cfg.seed,
            )
        )
        if source_name(folder) in cfg.val_sources:
            split["val"] += [image.path for image in labelled.splits["train"]]
        else:
            for name in ("train", "val"):
                split[name] += [image.path for image in labelled.splits[name]]
    return split


# --- training examples ---------------------------------------------------------------------------


@dataclasses.dataclass
class ColourFrame:
    """One training frame: its Lab pixels at the training scale and the generator's view of it."""

    lab: np.ndarray  # [H, W, 3] float32 at the training scale
    small_l: np.ndarray  # [g, g, 1] model-unit L of the whole frame squeezed to the generator's size
    coarse_ab: np.ndarray  # [g/4, g/4, 2] model-unit ab of the whole frame (the coarse target)


def generator_view(lab: np.ndarray, size: int) -> np.ndarray:
    """The generator's input: the frame's L squeezed to ``size x size`` (area), model units [size, size, 1]."""
    small = cv2.resize(lab[..., 0], (size, size), interpolation=cv2.INTER_AREA)
    return (small / 50 - 1).astype(np.float32)[..., None]


def coarse_target(lab: np.ndarray, size: int) -> np.ndarray:
    """The frame's ab squeezed to ``size x size`` (area), model units."""
    return (cv2.resize(lab[..., 1:], (size, size), interpolation=cv2.INTER_AREA) / AB_SCALE).astype(np.float32)


def load_frames(
    paths: list[Path],
    load_size: Optional[int],
    crop_size: int,
    generator_size: int,
    skipped: Optional[list[str]] = None,
) -> list[ColourFrame]:
    """The frames of ``paths`` at the training scale (shorter side ``load_size``, at least ``crop_size``).

    Unreadable or HDR files are left out and listed in ``skipped`` (with the reason).
    """
    frames = []
    for path in paths:
        try:
            image = read_image(path)
            unit_rgb(image[:1, :1], path)  # HDR check before the resize
        except InputError as err:
            if skipped is not None:
                skipped.append(str(err))
            continue
        height, width = image.shape[:2]
        factor = max(crop_size, load_size or min(height, width)) / min(height, width)
        lab = lab_of(
            resize_image(image, (max(crop_size, round(height * factor)), max(crop_size, round(width * factor)))), path
        )
        frames.append(ColourFrame(lab, generator_view(lab, generator_size), coarse_target(lab, generator_size // 4)))
    return frames


def crop_example(frame: ColourFrame, crop: int, rng: np.random.Generator, flip: bool, centre: bool = False):
    """One example ``((small_l, crop_l, box), (coarse_ab, crop_ab))``: a crop of the frame and its place.

    ``box`` is the crop as ``[y0, x0, y1, x1]`` fractions of the frame (what `tf.image.crop_and_resize`
    takes to upsample the coarse ab over exactly the crop).
    """
    height, width = frame.lab.shape[:2]
    if centre:
        y, x = (height - crop) // 2, (width - crop) // 2
    else:
        y, x = int(rng.integers(0, height - crop + 1)), int(rng.integers(0, width - crop + 1))
    lab = frame.lab[y : y + crop, x : x + crop]
    small_l, coarse = frame.small_l, frame.coarse_ab
    box = np.array([y / height, x / width, (y + crop) / height, (x + crop) / width], np.float32)
    if flip and rng.random() < 0.5:  # the whole frame mirrored: crop, generator view and box alike
        lab, small_l, coarse = lab[:, ::-1], small_l[:, ::-1], coarse[:, ::-1]
        box = np.array([box[0], 1 - box[3], box[2], 1 - box[1]], np.float32)
    crop_l = (lab[..., :1] / 50 - 1).astype(np.float32)
    crop_ab = (lab[..., 1:] / AB_SCALE).astype(np.float32)
    return (small_l, crop_l, box), (coarse, crop_ab)


def example_signature(generator_size: int, crop: int):
    """The ``tf.data`` signature of `crop_example`'s output."""
    spec = lambda *shape: tf.TensorSpec(shape, tf.float32)  # noqa: E731
    return (
        (spec(generator_size, generator_size, 1), spec(crop, crop, 1), spec(4)),
        (spec(generator_size // 4, generator_size // 4, 2), spec(crop, crop, 2)),
    )


def training_dataset(
    frames: list[ColourFrame], crop: int, generator_size: int, batch_size: int, flip: bool, seed: Optional[int]
) -> tf.data.Dataset:
    """Endless random crops (a new crop of a random frame each time), batched."""

    def examples() -> Iterator:
        rng = np.random.default_rng(seed)
        while True:
            for index in rng.permutation(len(frames)):
                yield crop_example(frames[index], crop, rng, flip)

    dataset = tf.data.Dataset.from_generator(examples, output_signature=example_signature(generator_size, crop))
    return dataset.batch(batch_size, drop_remainder=True).prefetch(2)


def validation_dataset(frames: list[ColourFrame], crop: int, batch_size: int) -> tf.data.Dataset:
    """The centre crop of every frame, the same each epoch."""
    rng = np.random.default_rng(0)
    examples = [crop_example(frame, crop, rng, flip=False, centre=True) for frame in frames]
    columns = tf.nest.map_structure(lambda *parts: np.stack(parts), *examples)
    return tf.data.Dataset.from_tensor_slices(columns).batch(batch_size)


def ab_bin_prior(frames: list[ColourFrame], bin_size: float) -> np.ndarray:
    """Empirical distribution of the coarse-target ab over square bins of ``bin_size`` Lab units."""
    bins = ab_bin_count(bin_size)
    counts = np.zeros(bins * bins, np.float64)
    for frame in frames:
        np.add.at(counts, ab_bin_index(frame.coarse_ab * AB_SCALE, bin_size).ravel(), 1)
    return (counts / counts.sum()).astype(np.float32)


def ab_bin_count(bin_size: float) -> int:
    """Bins per ab axis covering [-AB_SCALE, AB_SCALE]."""
    return int(np.ceil(2 * AB_SCALE / bin_size))


def ab_bin_index(ab, bin_size: float):
    """Flat bin index of ab values in Lab units (numpy or TF)."""
    bins = ab_bin_count(bin_size)
    if isinstance(ab, np.ndarray):
        cell = np.clip(np.floor((ab + AB_SCALE) / bin_size), 0, bins - 1).astype(np.int64)
    else:
        cell = tf.cast(tf.clip_by_value(tf.floor((ab + AB_SCALE) / bin_size), 0, bins - 1), tf.int32)
    return cell[..., 0] * bins + cell[..., 1]


def read_truth(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(image, Lab, sRGB in [0, 1])`` of a colour image as the evaluation (and the gate's fit) compare to it.

    Raises:
        InputError: unreadable or HDR.
    """
    image = read_image(path)
    truth_lab = lab_of(image, path)
    return image, truth_lab, lab_to_rgb(truth_lab).numpy()
