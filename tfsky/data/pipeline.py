"""The segmentation ``tf.data`` pipeline: cached full images -> patches -> augmented, normalised batches.

Patches are cut at read time from the full images in the cache (never stored):

* train: records decoded in parallel and images shuffled,
  ``patches_per_image`` random crops per image, patches shuffled
  (``shuffle_buffer``), batched (``drop_remainder``), then per batch (one
  op call for the whole batch each): HDR photometric augmentation on linear
  radiance, `Preprocess.apply`, paired geometric augmentation (in model
  space: ``augment.fill`` is a model-space value).
  When the decoded training images fit in ``MEMORY_CACHE_BYTES`` they are kept
  in memory after the first epoch (later epochs skip reading and
  decompressing the records); larger sets are streamed from the shards every
  epoch (shard order and images shuffled, with an image buffer bounded in bytes).
* val: a grid of patches every ``stride`` pixels per image, the last one
  shifted inward to end at the border (`tfsky.tiling.tile_starts`, the grid
  prediction uses), no augmentation.

Images smaller than a patch are reflect-padded (image and mask alike), as in
tiled prediction. Patches stay in the cache dtype (uint8 for LDR) until they
are batched, which keeps the shuffle buffer small. Each dataset is finite (one
epoch); Keras ``fit`` iterates it again every epoch with fresh crops,
shuffles and augmentation, reproducibly when ``seed`` is given (without a
seed, training batches may come out of order when that is faster).
"""

from __future__ import annotations

import math
from typing import Literal, Optional

import tensorflow as tf

from tfsky.data.augment import apply_affine, photometric, random_affine
from tfsky.data.cache import compression_type, read_manifest, shard_paths
from tfsky.data.config import DataConfig
from tfsky.data.records import parse_example
from tfsky.errors import InputError
from tfsky.tiling import reflect_indices, tile_starts

Split = Literal["train", "val"]
AUTOTUNE = tf.data.AUTOTUNE
# Decoded full images held by the image-level shuffle when streaming (an 8K float32 image is 400 MB).
IMAGE_SHUFFLE_BYTES = 512 * 2**20
# Decoded training images (with masks) up to this total are kept in memory after the first epoch.
MEMORY_CACHE_BYTES = 2**30


def segmentation_dataset(
    cfg: DataConfig,
    split: Split,
    batch_size: int,
    *,
    classes: int = 1,
    seed: Optional[int] = None,
    augment: Optional[bool] = None,
) -> tf.data.Dataset:
    """Batches ``(image float32 [B, P, P, channels], mask float32 [B, P, P, K])`` for one epoch.

    Args:
        cfg: DataConfig. The ``data:`` section the cache was prepared with.
        split: str. ``train`` (random crops, shuffled, augmented) or ``val`` (grid patches, in order).
        batch_size: int. Patches per batch.
        classes: int. 1: the mask is the 0/1 sky channel (K = 1); more: one-hot class ids (K = classes).
            Defaults to 1.
        seed: Optional[int]. Makes shuffles, crops and augmentation reproducible. Defaults to None.
        augment: Optional[bool]. Apply augmentation. Defaults to None
            (``cfg.augment.enabled`` for train, no augmentation for val).

    Raises:
        InputError: no cache, a cache prepared with other channels/preprocessing, or no image in ``split``.
    """
    manifest = read_manifest(cfg.cache)
    _check_compatible(cfg, manifest, split)
    augment = (split == "train" and cfg.augment.enabled) if augment is None else augment
    dtype = tf.as_dtype(manifest["dtype"])
    if split == "train":
        images = _training_images(cfg, manifest, dtype, seed)
        crop_seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2)
        patches = tf.data.Dataset.zip(images, crop_seeds).flat_map(
            lambda pair, crop_seed: _patches(*pair, *_random_origins(pair[0], cfg, crop_seed), cfg)
        )
        batches = patches.shuffle(cfg.shuffle_buffer, seed=seed).batch(batch_size, drop_remainder=True)
    else:
        records = tf.data.TFRecordDataset(shard_paths(cfg.cache, manifest, split), compression_type(manifest))
        images = records.map(lambda record: _image_and_mask(record, dtype, cfg), num_parallel_calls=AUTOTUNE)
        patches = images.flat_map(lambda image, mask: _patches(image, mask, *_grid_origins(image, cfg), cfg))
        batches = patches.batch(batch_size)
    aug_seeds = tf.data.Dataset.random(seed=None if seed is None else seed + 1, rerandomize_each_iteration=True)
    return (
        tf.data.Dataset.zip(batches, aug_seeds.batch(2))
        .map(
            lambda batch, aug_seed: _finish(*batch, aug_seed, cfg, augment, classes),
            num_parallel_calls=AUTOTUNE,
            deterministic=split == "val" or seed is not None,
        )
        .prefetch(AUTOTUNE)
    )


def steps_per_epoch(cfg: DataConfig, split: Split, batch_size: int) -> int:
    """Batches in one epoch of `segmentation_dataset` (train: full batches only; val: the last may be partial)."""
    manifest = read_manifest(cfg.cache)
    sizes = [(e["height"], e["width"]) for e in manifest["items"] if e["status"] == "written" and e["split"] == split]
    if split == "train":
        return len(sizes) * cfg.patches_per_image // batch_size
    patches = sum(grid_count(height, width, cfg.patch_size, cfg.grid_stride) for height, width in sizes)
    return math.ceil(patches / batch_size)


def grid_count(height: int, width: int, patch: int, stride: int) -> int:
    """Number of validation grid patches of a ``height x width`` image."""
    overlap = _overlap(patch, stride)
    return int(tf.size(tile_starts(height, patch, overlap)) * tf.size(tile_starts(width, patch, overlap)))


def _overlap(patch: int, stride: int) -> float:
    """The tiling module's overlap fraction for a grid step of ``stride`` pixels."""
    return 1 - stride / patch


def _check_compatible(cfg: DataConfig, manifest: dict, split: str) -> None:
    if (manifest["dtype"], manifest["channels"]) != (cfg.cache_dtype, cfg.channels):
        raise InputError(
            cfg.cache,
            f"cache holds {manifest['channels']}-channel {manifest['dtype']} images but the config wants "
            f"{cfg.channels}-channel {cfg.cache_dtype} (preprocess.mode {cfg.preprocess.mode}); "
            "re-run `tfsky data prepare`",
        )
    if not manifest["splits"][split]["images"]:
        raise InputError(cfg.cache, f"no {split} images in the cache (the split needs at least two groups)")


def _training_images(cfg: DataConfig, manifest: dict, dtype: tf.DType, seed: Optional[int]) -> tf.data.Dataset:
    """Decoded, padded training ``(image, mask)`` in shuffled order; held in memory if they fit (module docstring)."""
    files = shard_paths(cfg.cache, manifest, "train")
    written = [e for e in manifest["items"] if e["status"] == "written" and e["split"] == "train"]
    pixel_bytes = [e["height"] * e["width"] * (e["channels"] * dtype.size + 1) for e in written]  # + uint8 mask

    def decode(record: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        return _image_and_mask(record, dtype, cfg)

    if sum(pixel_bytes) <= MEMORY_CACHE_BYTES:  # the buffer only holds references to the cached tensors
        records = tf.data.TFRecordDataset(files, compression_type(manifest))
        return records.map(decode, num_parallel_calls=AUTOTUNE).cache().shuffle(len(written), seed=seed)
    buffer = max(1, min(len(written), IMAGE_SHUFFLE_BYTES // max(pixel_bytes)))
    return (
        tf.data.Dataset.from_tensor_slices(files)
        .shuffle(len(files), seed=seed)
        .interleave(
            lambda path: tf.data.TFRecordDataset(path, compression_type(manifest)),
            cycle_length=min(len(files), 4),
            num_parallel_calls=AUTOTUNE,
        )
        .shuffle(buffer, seed=seed)
        .map(decode, num_parallel_calls=AUTOTUNE)
    )


def _image_and_mask(record: tf.Tensor, dtype: tf.DType, cfg: DataConfig) -> tuple[tf.Tensor, tf.Tensor]:
    """Decode a record and reflect-pad it to at least one patch in each direction."""
    example = parse_example(record, dtype)
    image = tf.ensure_shape(example["image"], [None, None, cfg.channels])
    return _pad_to(image, cfg.patch_size), _pad_to(example["mask"], cfg.patch_size)


def _pad_to(tensor: tf.Tensor, size: int) -> tf.Tensor:
    """Mirror-extend ``[H, W, C]`` so both sides are >= ``size`` (no copy when they already are)."""
    for axis in (0, 1):
        length = tf.shape(tensor)[axis]
        tensor = tf.cond(
            length < size,
            lambda: tf.gather(tensor, reflect_indices(length, size), axis=axis),  # noqa: B023 - called at once
            lambda: tensor,  # noqa: B023
        )
    return tensor


def _random_origins(image: tf.Tensor, cfg: DataConfig, seed: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """``patches_per_image`` uniform random top-left corners of patches inside the image."""
    span = tf.shape(image)[:2] - cfg.patch_size + 1
    seeds = tf.random.experimental.stateless_split(seed, 2)
    shape = [cfg.patches_per_image]
    rows = tf.random.stateless_uniform(shape, seeds[0], 0, span[0], dtype=tf.int32)
    cols = tf.random.stateless_uniform(shape, seeds[1], 0, span[1], dtype=tf.int32)
    return rows, cols


def _grid_origins(image: tf.Tensor, cfg: DataConfig) -> tuple[tf.Tensor, tf.Tensor]:
    """Top-left corners of the validation grid, row-major, covering the whole image."""
    overlap = _overlap(cfg.patch_size, cfg.grid_stride)
    rows = tile_starts(tf.shape(image)[0], cfg.patch_size, overlap)
    cols = tile_starts(tf.shape(image)[1], cfg.patch_size, overlap)
    grid_rows, grid_cols = tf.meshgrid(rows, cols, indexing="ij")
    return tf.reshape(grid_rows, [-1]), tf.reshape(grid_cols, [-1])


def _patches(image: tf.Tensor, mask: tf.Tensor, rows: tf.Tensor, cols: tf.Tensor, cfg: DataConfig) -> tf.data.Dataset:
    """Patches at the given corners, cut lazily one by one (an 8K image has thousands of grid patches)."""
    size = cfg.patch_size

    def cut(row: tf.Tensor, col: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        return (
            tf.ensure_shape(tf.slice(image, [row, col, 0], [size, size, -1]), [size, size, cfg.channels]),
            tf.ensure_shape(tf.slice(mask, [row, col, 0], [size, size, -1]), [size, size, 1]),
        )

    return tf.data.Dataset.from_tensor_slices((rows, cols)).map(cut)


def _finish(image: tf.Tensor, mask: tf.Tensor, seed: tf.Tensor, cfg: DataConfig, augment: bool, classes: int):
    """A batch of cache-dtype patches -> model inputs and targets (augmented when ``augment``)."""
    photometric_seed, geometric_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    if augment and cfg.preprocess.mode == "log":
        image = photometric(tf.cast(image, tf.float32), photometric_seed, cfg.augment)
    image = cfg.preprocess.apply(image)
    if augment:  # the mask is warped as its uint8 class ids
        size = cfg.patch_size
        transforms = random_affine(geometric_seed, tf.shape(image)[0], size, size, cfg.augment)
        image, mask = apply_affine(image, mask, transforms, cfg.augment.fill)
    mask = tf.cast(mask, tf.float32)
    if classes > 1:
        mask = tf.one_hot(tf.cast(mask[..., 0], tf.int32), classes)
    return image, mask
