"""(source, target) weather pairs from validated streams, and the paired tf.data pipeline.

Pairs are built inside each stream (one fixed camera) from a condition rule
(`PairsConfig`): every usable source-condition frame is paired with every
usable target-condition frame of the same camera, optionally only when they
are at most ``max_hours`` apart. The train/val split is BY STREAM, so no
camera is in both. The pairs file (``pairs.json``)::

    {"format": "tfsky-pairs/1", "rule": {...the pairs config...},
     "streams": {"623": {"split": "train", "pairs": 12, "size": [720, 1280]}},
     "pairs": [{"camera": "623", "split": "train", "source": "/abs/a.jpg",
                "target": "/abs/b.jpg", "mask": "/abs/623-mask.png", "hours": 1234.0}]}

Pixel normalisation (the one place it is defined): images are read as
uint8, scaled to [0, 1] by ``Preprocess(mode="ldr")`` (saved in the model's
`ModelInfo.preprocess`) and then mapped to [-1, 1] by `tfsky.data.transforms.to_model_range` for
the tanh generators (`from_model_range` maps outputs back to [0, 1]). Masks
stay in [0, 1] (1 = sky).
"""

from __future__ import annotations

import dataclasses
import json
import random
from collections import defaultdict
from pathlib import Path
from typing import Optional

import numpy as np
import tensorflow as tf

from tfsky.config import to_dict
from tfsky.data.streams import Frame, Stream
from tfsky.data.transforms import Preprocess, to_model_range
from tfsky.errors import ConfigError, InputError
from tfsky.io.atomic import write_json
from tfsky.io.images import image_size, read_image, read_mask

FORMAT = "tfsky-pairs/1"
SPLITS = ("train", "val")
PREPROCESS = Preprocess(mode="ldr")


@dataclasses.dataclass
class PairsConfig:
    """The ``pairs:`` config section: which frames make a (source, target) pair.

    Args:
        source: str. Condition of the input frames. Defaults to ``clear``.
        target: str. Condition the translator produces. Defaults to ``overcast``.
        min_confidence: float. Smallest label confidence of either frame (a label without
            confidence counts as 1.0). Defaults to 0.8.
        max_hours: Optional[float]. Largest time between the two frames. Defaults to None (any).
        val_fraction: float. Fraction of the cameras held out for validation. Defaults to 0.2.
        seed: int. Seed of the camera shuffle before the split. Defaults to 0.
        file: Path. The pairs file written by ``tfsky streams pairs`` and read by training.
            Defaults to ``pairs.json``.
    """

    source: str = "clear"
    target: str = "overcast"
    min_confidence: float = 0.8
    max_hours: Optional[float] = None
    val_fraction: float = 0.2
    seed: int = 0
    file: Path = Path("pairs.json")

    def validate(self) -> None:
        if self.source == self.target:
            raise ConfigError("target", f"must differ from source ({self.source!r})")
        if not 0 <= self.min_confidence <= 1:
            raise ConfigError("min_confidence", f"must be in [0, 1]; got {self.min_confidence}")
        if self.max_hours is not None and self.max_hours <= 0:
            raise ConfigError("max_hours", f"must be > 0; got {self.max_hours}")
        if not 0 <= self.val_fraction < 1:
            raise ConfigError("val_fraction", f"must be in [0, 1); got {self.val_fraction}")


@dataclasses.dataclass(frozen=True)
class Pair:
    """One training example: two frames of the same camera and the camera's sky mask."""

    camera: str
    split: str
    source: str
    target: str
    mask: Optional[str]
    hours: float


@dataclasses.dataclass
class PairSet:
    """Built pairs plus the per-stream facts written beside them."""

    pairs: list[Pair]
    streams: dict[str, dict]

    def split(self, name: str) -> list[Pair]:
        return [pair for pair in self.pairs if pair.split == name]


# --- building pairs -----------------------------------------------------------------------------


def build_pairs(streams: list[Stream], cfg: PairsConfig) -> PairSet:
    """Pairs of every stream under the rule ``cfg``, split by stream.

    Raises:
        ConfigError: a condition no stream uses, or no pair survives the filters.
        InputError: two paired frames of one stream differ in size.
    """
    _check_conditions(streams, cfg)
    by_camera: dict[str, list[tuple[Path, Path, Optional[Path], float]]] = {}
    sizes = {}
    for stream in streams:
        sources = _eligible(stream, cfg.source, cfg.min_confidence)
        targets = _eligible(stream, cfg.target, cfg.min_confidence)
        sizes[stream.camera] = _common_size(stream, sources + targets)
        found = [(stream.path(s), stream.path(t), stream.mask, _hours(s, t)) for s in sources for t in targets]
        found = [item for item in found if cfg.max_hours is None or item[3] <= cfg.max_hours]
        if found:
            by_camera[stream.camera] = found
    if not by_camera:
        raise ConfigError("pairs", _no_pairs_message(streams, cfg))
    splits = split_cameras(sorted(by_camera), cfg.val_fraction, cfg.seed)
    pairs = [
        Pair(camera, splits[camera], str(src), str(tgt), str(mask) if mask else None, round(hours, 3))
        for camera, items in by_camera.items()
        for src, tgt, mask, hours in items
    ]
    streams_info = {
        camera: {"split": splits[camera], "pairs": len(items), "size": list(sizes[camera])}
        for camera, items in by_camera.items()
    }
    return PairSet(pairs, streams_info)


def split_cameras(cameras: list[str], val_fraction: float, seed: int) -> dict[str, str]:
    """``{camera: "train" | "val"}``: a seeded shuffle, ``round(val_fraction * n)`` cameras to val.

    With two or more cameras and ``val_fraction > 0`` at least one camera goes
    to val and at least one stays in train; a single camera is always train.
    """
    order = sorted(cameras)
    random.Random(seed).shuffle(order)
    n_val = round(val_fraction * len(order))
    if len(order) >= 2 and val_fraction > 0:
        n_val = min(max(n_val, 1), len(order) - 1)
    else:
        n_val = 0
    return {camera: ("val" if index < n_val else "train") for index, camera in enumerate(order)}


def _check_conditions(streams: list[Stream], cfg: PairsConfig) -> None:
    known = sorted({f.condition for s in streams for f in s.frames if f.condition})
    for key in ("source", "target"):
        if getattr(cfg, key) not in known:
            raise ConfigError(
                f"pairs.{key}",
                f"unknown condition {getattr(cfg, key)!r} (known conditions: {', '.join(known) or 'none labelled'})",
            )


def _eligible(stream: Stream, condition: str, min_confidence: float) -> list[Frame]:
    return [f for f in stream.frames if f.usable and f.condition == condition and f.label_confidence >= min_confidence]


def _hours(a: Frame, b: Frame) -> float:
    return abs((a.time - b.time).total_seconds()) / 3600.0


def _common_size(stream: Stream, frames: list[Frame]) -> tuple[int, int]:
    """The size shared by ``frames``; a frame of another size is an `InputError` (validate marks those)."""
    sizes = [(frame, image_size(stream.path(frame))) for frame in frames]
    if not sizes:
        return (0, 0)
    first, size = sizes[0]
    for frame, other in sizes[1:]:
        if other != size:
            raise InputError(
                stream.path(frame),
                f"{other[1]}x{other[0]} differs from {first.file} ({size[1]}x{size[0]}) in stream {stream.camera}"
                " (tfsky streams validate marks such frames unusable)",
            )
    return size


def _no_pairs_message(streams: list[Stream], cfg: PairsConfig) -> str:
    n_src = sum(len(_eligible(s, cfg.source, cfg.min_confidence)) for s in streams)
    n_tgt = sum(len(_eligible(s, cfg.target, cfg.min_confidence)) for s in streams)
    within = f" within {cfg.max_hours} h of each other" if cfg.max_hours is not None else ""
    return (
        f"no pairs after filtering: {n_src} usable {cfg.source!r} and {n_tgt} usable {cfg.target!r} frames "
        f"with confidence >= {cfg.min_confidence} in {len(streams)} stream(s), but no stream has both{within}"
    )


# --- the pairs file -----------------------------------------------------------------------------


def write_pairs(pair_set: PairSet, cfg: PairsConfig, path: str | Path) -> None:
    """Write the pairs file atomically (format in the module docstring)."""
    write_json(
        path,
        {
            "format": FORMAT,
            "rule": to_dict(cfg),
            "streams": pair_set.streams,
            "pairs": [dataclasses.asdict(pair) for pair in pair_set.pairs],
        },
    )


def read_pairs(path: str | Path, split: Optional[str] = None) -> list[Pair]:
    """Pairs from a pairs file, optionally only one split; a bad file is an `InputError`."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "pairs file not found (write it with tfsky streams pairs)")
    try:
        pairs = [Pair(**item) for item in json.loads(path.read_text(encoding="utf-8"))["pairs"]]
    except (ValueError, KeyError, TypeError) as err:
        raise InputError(path, f"not a valid pairs file ({type(err).__name__}: {err})") from None
    return [p for p in pairs if split is None or p.split == split]


def pairs_summary(pair_set: PairSet) -> dict[str, dict[str, int]]:
    """``{split: {"cameras": n, "pairs": n}}`` for the CLI table."""
    counts: dict[str, dict[str, int]] = defaultdict(lambda: {"cameras": 0, "pairs": 0})
    for info in pair_set.streams.values():
        counts[info["split"]]["cameras"] += 1
        counts[info["split"]]["pairs"] += info["pairs"]
    return {split: counts[split] for split in SPLITS}


# --- the paired tf.data pipeline -----------------------------------------------------------------


@dataclasses.dataclass
class PairDataConfig:
    """The ``data:`` config section: how pairs become training tensors (pix2pix jitter).

    Args:
        load_size: Optional[int]. Frames are resized so their SHORTER side is this before
            cropping; None keeps the native scale (which matches full-resolution tiled
            inference). Defaults to 286.
        crop_size: int. Side of the square crops fed to the model. Defaults to 256.
        flip: bool. Random horizontal flip in training. Defaults to True.
    """

    load_size: Optional[int] = 286
    crop_size: int = 256
    flip: bool = True

    def validate(self) -> None:
        if self.crop_size < 8:
            raise ConfigError("crop_size", f"must be >= 8; got {self.crop_size}")
        if self.load_size is not None and self.load_size < self.crop_size:
            raise ConfigError("load_size", f"must be >= crop_size ({self.crop_size}); got {self.load_size}")


def load_pair_arrays(source: str, target: str, mask: Optional[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """uint8 source and target ``H x W x 3`` and the sky mask ``H x W x 1`` (0/1; zeros without a mask)."""
    src, tgt = read_image(source), read_image(target)
    if src.shape != tgt.shape:
        raise InputError(target, f"size {tgt.shape[:2]} differs from its source {source} {src.shape[:2]}")
    sky = read_mask(mask) if mask else np.zeros(src.shape[:2], np.uint8)
    if mask and sky.shape != src.shape[:2]:  # (without a mask the zeros have the frames' size)
        raise InputError(mask, f"mask size {sky.shape} differs from the frames' {src.shape[:2]}")
    return src, tgt, sky[..., None]


def make_pair_dataset(pairs: list[Pair], cfg: PairDataConfig, *, batch_size: int, training: bool) -> tf.data.Dataset:
    """Batches of ``((source, mask), target)``: [B, c, c, 3] in [-1, 1], [B, c, c, 1] in [0, 1], [B, c, c, 3].

    Source, target and mask are stacked into one 7-channel image before any
    geometric step, so the resize, the random crop and the flip are exactly
    the same for all three. Training crops at random positions (and flips);
    validation takes the centre crop. Decoded, resized frames are cached in memory.

    Args:
        pairs: list[Pair]. The examples.
        cfg: PairDataConfig. Sizes and flip.
        batch_size: int. Global batch size.
        training: bool. Random crop + flip + shuffle, else centre crop.
    """
    if not pairs:
        raise ConfigError("pairs.file", "no pairs for this split")
    paths = [(p.source, p.target, p.mask or "") for p in pairs]
    ds = tf.data.Dataset.from_tensor_slices(tuple(map(list, zip(*paths))))
    ds = ds.map(lambda s, t, m: _load_stacked(s, t, m, cfg.load_size), num_parallel_calls=tf.data.AUTOTUNE)
    ds = ds.cache()
    if training:
        ds = ds.shuffle(len(paths), reshuffle_each_iteration=True)
    crop = (
        (lambda x: _random_crop_flip(x, cfg.crop_size, cfg.flip))
        if training
        else (lambda x: _centre_crop(x, cfg.crop_size))
    )
    ds = ds.map(lambda x: _split(crop(x)), num_parallel_calls=tf.data.AUTOTUNE)
    return ds.batch(batch_size, drop_remainder=training).prefetch(tf.data.AUTOTUNE)


def _load_stacked(source, target, mask, load_size: Optional[int]) -> tf.Tensor:
    """Decode one pair and stack it as float32 ``H x W x 7`` (source, target in [0, 1]; mask), resized."""

    def load(s, t, m):
        return load_pair_arrays(s.decode(), t.decode(), m.decode() or None)

    src, tgt, sky = tf.numpy_function(load, [source, target, mask], [tf.uint8, tf.uint8, tf.uint8])
    stacked = tf.concat([PREPROCESS.apply(src), PREPROCESS.apply(tgt), tf.cast(sky, tf.float32)], axis=-1)
    stacked = tf.ensure_shape(stacked, [None, None, 7])
    if load_size is None:
        return stacked
    shape = tf.cast(tf.shape(stacked)[:2], tf.float32)
    scale = load_size / tf.reduce_min(shape)
    size = tf.cast(tf.round(shape * scale), tf.int32)
    return tf.image.resize(stacked, tf.maximum(size, load_size), antialias=True)


def _random_crop_flip(stacked: tf.Tensor, crop_size: int, flip: bool) -> tf.Tensor:
    cropped = tf.image.random_crop(stacked, [crop_size, crop_size, 7])
    return tf.image.random_flip_left_right(cropped) if flip else cropped


def _centre_crop(stacked: tf.Tensor, crop_size: int) -> tf.Tensor:
    shape = tf.shape(stacked)
    top, left = (shape[0] - crop_size) // 2, (shape[1] - crop_size) // 2
    return tf.ensure_shape(stacked[top : top + crop_size, left : left + crop_size], [crop_size, crop_size, 7])


def _split(stacked: tf.Tensor) -> tuple[tuple[tf.Tensor, tf.Tensor], tf.Tensor]:
    """Keras' ``(x, y)``: the inputs (source, sky mask) and the target."""
    return (to_model_range(stacked[..., :3]), stacked[..., 6:]), to_model_range(stacked[..., 3:6])
