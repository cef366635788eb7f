"""The segmentation ``tf.data`` pipeline: cached full images -> patches -> augmented, normalised batches.

Patches are cut at read time from the full images in the cache (never stored):

* train, decoded images within ``MEMORY_CACHE_BYTES``: the images are decoded
  once, when the dataset is built, and kept in memory. An epoch is
  `crop_counts` picks of each image (``patches_per_image`` each, unless
  sources are weighted), shuffled completely as integers
  and batched (``drop_remainder``); one parallel map per batch cuts a uniform
  random crop per pick, then augments and normalises (below). Nothing is cut
  before the map, so each epoch's first batch comes as fast as the others.
* train, larger sets: streamed from the shards every epoch (shard order and
  images shuffled, with an image buffer bounded in bytes),
  `crop_counts` random crops per image, patches shuffled
  (``shuffle_buffer``), batched (``drop_remainder``), then the same per-batch map.
* val: a grid of patches every ``stride`` pixels per image, the last one
  shifted inward to end at the border (`tfsky.tiling.tile_starts`, the grid
  prediction uses), no augmentation; ``max_batches`` keeps patches spread
  evenly over all of it (``train.validation_steps``).

The per-batch map makes one op call for the whole batch each: HDR photometric
augmentation on linear radiance, `Preprocess.apply`, paired geometric
augmentation (in model space: ``augment.fill`` is a model-space value).
Images smaller than a patch are reflect-padded (image and mask alike), as in
tiled prediction. Patches stay in the cache dtype (uint8 for LDR) until they
are batched, which keeps the shuffle buffer small. Each dataset is finite (one
epoch); every pass over it has fresh crops, shuffles and augmentation,
reproducibly when ``seed`` is given (without a seed, training batches may come
out of order when that is faster). Training reads ``dataset.repeat()`` with one
iterator (`tfsky.train.runner.fit_run`): a new iterator per epoch costs ~40 ms
of function instantiation, a sixth of a small epoch.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Literal, Optional, Sequence, TypeVar

import tensorflow as tf

from tfsky.data.augment import apply_affine, color_jitter, photometric, random_affine
from tfsky.data.cache import compression_type, read_manifest, shard_paths
from tfsky.data.config import AugmentConfig, DataConfig
from tfsky.data.records import parse_example
from tfsky.errors import InputError
from tfsky.tiling import count_tiles, reflect_indices, tile_starts

Split = Literal["train", "val"]
T = TypeVar("T")
AUTOTUNE = tf.data.AUTOTUNE
# Decoded full images held by the image-level shuffle when streaming (an 8K float32 image is 400 MB).
IMAGE_SHUFFLE_BYTES = 512 * 2**20
# Decoded training images (with masks) up to this total are kept in memory (decoded once).
MEMORY_CACHE_BYTES = 2**30


def segmentation_dataset(
    cfg: DataConfig,
    split: Split,
    batch_size: int,
    *,
    classes: int = 1,
    seed: Optional[int] = None,
    augment: Optional[bool] = None,
    max_batches: Optional[int] = None,
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
        max_batches: Optional[int]. val only: at most this many batches, their
            patches spread evenly over the whole grid of every val image (the
            same patches each epoch), not the first images' patches. Defaults
            to None (the whole grid).

    Raises:
        InputError: no cache, a cache prepared with other channels/preprocessing, or no image in ``split``.
    """
    manifest = read_manifest(cfg.cache)
    _check_compatible(cfg, manifest, split)
    augment = (split == "train" and cfg.augment.enabled) if augment is None else augment
    dtype = tf.as_dtype(manifest["dtype"])
    finish: Callable[[Any, tf.Tensor], tuple[tf.Tensor, tf.Tensor]]  # (picks or a batch, seed) -> the batch
    if split == "train" and _decoded_bytes(manifest, dtype) <= MEMORY_CACHE_BYTES:
        memory = _MemoryImages.load(cfg, manifest, dtype)
        picks = tf.repeat(tf.range(memory.count, dtype=tf.int64), crop_counts(cfg, _written(manifest, "train")))
        count = int(picks.shape[0])
        batches = (
            tf.data.Dataset.from_tensor_slices(picks).shuffle(count, seed=seed).batch(batch_size, drop_remainder=True)
        )

        def finish(picks: tf.Tensor, seed: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
            crop_seed, aug_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
            patches = memory.random_patches(picks, crop_seed)
            return _finish(*patches, aug_seed, cfg, augment, classes)

    else:
        if split == "val":
            batches = _grid_batches(cfg, manifest, dtype, batch_size, max_batches)
        else:
            batches = _streamed_batches(cfg, manifest, dtype, batch_size, seed)

        def finish(batch: tuple[tf.Tensor, tf.Tensor], seed: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
            return _finish(*batch, seed, cfg, augment, classes)

    aug_seeds = tf.data.Dataset.random(seed=None if seed is None else seed + 1, rerandomize_each_iteration=True)
    return (
        tf.data.Dataset.zip(batches, aug_seeds.batch(2))
        .map(finish, num_parallel_calls=AUTOTUNE, deterministic=split == "val" or seed is not None)
        .prefetch(AUTOTUNE)
    )


def _grid_batches(
    cfg: DataConfig, manifest: dict, dtype: tf.DType, batch_size: int, max_batches: Optional[int]
) -> tf.data.Dataset:
    """Cache-dtype validation grid batches, all of them or ``max_batches`` spread over the whole grid."""
    records = tf.data.TFRecordDataset(shard_paths(cfg.cache, manifest, "val"), compression_type(manifest))
    images = records.map(lambda record: _image_and_mask(record, dtype, cfg), num_parallel_calls=AUTOTUNE)
    corners = images.flat_map(lambda image, mask: _corners(image, mask, *_grid_origins(image, cfg)))
    total = _grid_patch_count(cfg, manifest)
    keep = total if max_batches is None else min(total, max_batches * batch_size)
    if keep < total:
        kept = tf.scatter_nd(tf.constant(evenly_spaced(range(total), keep))[:, None], tf.ones([keep], tf.bool), [total])
        corners = corners.enumerate().filter(lambda i, _: kept[i]).map(lambda _, corner: corner)
    return corners.map(lambda image, mask, row, col: _cut_patch(image, mask, row, col, cfg)).batch(batch_size)


def crop_counts(cfg: DataConfig, entries: list[dict]) -> list[int]:
    """Random crops per epoch of each training image (manifest entries, in shard order).

    The epoch keeps ``patches_per_image`` crops per image in total; each source
    gets a share proportional to its ``weight`` (split evenly over its images),
    and an image whose mask has no sky pixel counts ``no_sky_weight`` times. Counts
    are rounded by largest remainder, so they add up exactly (one source whose
    images all have sky: exactly ``patches_per_image`` each).
    """
    source_weight = {source.name: source.weight for source in cfg.sources}
    per_source: dict[str, float] = {}
    for entry in entries:
        per_source[entry["source"]] = per_source.get(entry["source"], 0.0) + _sky_weight(cfg, entry)
    shares = [source_weight.get(e["source"], 1.0) * _sky_weight(cfg, e) / per_source[e["source"]] for e in entries]
    total = len(entries) * cfg.patches_per_image
    exact = [total * share / sum(shares) for share in shares]
    counts = [math.floor(value) for value in exact]
    by_remainder = sorted(range(len(exact)), key=lambda i: counts[i] - exact[i])
    for index in by_remainder[: total - sum(counts)]:
        counts[index] += 1
    return counts


def _sky_weight(cfg: DataConfig, entry: dict) -> float:
    if "sky_fraction" not in entry:
        raise InputError(
            cfg.cache,
            f"{entry['id']} has no sky_fraction: the cache was prepared by an older tfsky; re-run `tfsky data prepare`",
        )
    return cfg.no_sky_weight if entry["sky_fraction"] == 0 else 1.0


def evenly_spaced(items: Sequence[T], count: int) -> list[T]:
    """``count`` items spread over the whole sequence, in order (all of them if it has no more).

    The sequence is cut into ``count`` equal bins and the last item of each is
    taken, so the last item is always among them.
    """
    if count >= len(items):
        return list(items)
    return [items[((index + 1) * len(items) - 1) // count] for index in range(count)]


def _streamed_batches(
    cfg: DataConfig, manifest: dict, dtype: tf.DType, batch_size: int, seed: Optional[int]
) -> tf.data.Dataset:
    """Cache-dtype training ``(image, mask)`` patch batches cut from images read from the shards this epoch."""
    written = _written(manifest, "train")
    counts = tf.lookup.StaticHashTable(
        tf.lookup.KeyValueTensorInitializer([e["id"] for e in written], crop_counts(cfg, written), tf.string, tf.int32),
        default_value=0,
    )
    images = _streamed_images(cfg, manifest, dtype, seed)
    crop_seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2)
    patches = tf.data.Dataset.zip(images, crop_seeds).flat_map(  # cut before the shuffle: it holds patches, not images
        lambda item, crop_seed: _corners(
            item[0], item[1], *_random_origins(item[0], cfg, counts.lookup(item[2]), crop_seed)
        ).map(lambda image, mask, row, col: _cut_patch(image, mask, row, col, cfg))
    )
    return patches.shuffle(cfg.shuffle_buffer, seed=seed).batch(batch_size, drop_remainder=True)


def steps_per_epoch(cfg: DataConfig, split: Split, batch_size: int) -> int:
    """Batches in one epoch of `segmentation_dataset` (train: full batches only; val: the last may be partial)."""
    manifest = read_manifest(cfg.cache)
    _check_compatible(cfg, manifest, split)
    if split == "train":
        return sum(crop_counts(cfg, _written(manifest, split))) // batch_size
    return math.ceil(_grid_patch_count(cfg, manifest) / batch_size)


def _grid_patch_count(cfg: DataConfig, manifest: dict) -> int:
    """Validation grid patches over all val images."""
    sizes = [(e["height"], e["width"]) for e in _written(manifest, "val")]
    return sum(grid_count(height, width, cfg.patch_size, cfg.grid_stride) for height, width in sizes)


def grid_count(height: int, width: int, patch: int, stride: int) -> int:
    """Number of validation grid patches of a ``height x width`` image."""
    return count_tiles(height, width, patch, _overlap(patch, stride))


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
    prepared_scale = manifest["config"].get("working_scale")
    if prepared_scale != cfg.working_scale:
        raise InputError(
            cfg.cache,
            f"cache was prepared at working_scale {prepared_scale} but the config wants "
            f"{cfg.working_scale}; re-run `tfsky data prepare`",
        )


def _decoded_bytes(manifest: dict, dtype: tf.DType) -> int:
    """Bytes of the decoded training images with their uint8 masks (before padding)."""
    return sum(_item_bytes(entry, dtype) for entry in _written(manifest, "train"))


def _item_bytes(entry: dict, dtype: tf.DType) -> int:
    return entry["height"] * entry["width"] * (entry["channels"] * dtype.size + 1)  # + the uint8 mask


def _written(manifest: dict, split: Split) -> list[dict]:
    return [e for e in manifest["items"] if e["status"] == "written" and e["split"] == split]


class _MemoryImages:
    """The decoded, padded training images and masks held in memory, cut into patches by image index.

    Cutting happens inside the parallel batch map (module docstring). The
    images, of any sizes, sit in two TensorLists: looking one up by index
    inside a tf.data function shares its buffer, so only the patch is copied.
    """

    def __init__(self, images: list[tf.Tensor], masks: list[tf.Tensor], patch: int):
        self.count = len(images)
        self.patch = patch
        self._shapes = tf.stack([tf.shape(image)[:2] for image in images])
        self._images, self._masks = _tensor_list(images), _tensor_list(masks)
        self._image_dtype = images[0].dtype

    @classmethod
    def load(cls, cfg: DataConfig, manifest: dict, dtype: tf.DType) -> "_MemoryImages":
        """Read and decode the training shards (once, when the dataset is built)."""
        records = tf.data.TFRecordDataset(shard_paths(cfg.cache, manifest, "train"), compression_type(manifest))
        pairs = list(records.map(lambda record: _image_and_mask(record, dtype, cfg), num_parallel_calls=AUTOTUNE))
        return cls([image for image, _ in pairs], [mask for _, mask in pairs], cfg.patch_size)

    def random_patches(self, indices: tf.Tensor, seed: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        """One uniformly placed patch of each image in ``indices`` (static length): ``(image, mask)`` batches."""
        spans = tf.cast(tf.gather(self._shapes, indices) - self.patch + 1, tf.float32)
        origins = tf.cast(tf.random.stateless_uniform(tf.shape(spans), seed) * spans, tf.int32)
        origins = tf.minimum(origins, tf.cast(spans, tf.int32) - 1)  # float rounding must not reach the span
        cuts = [self._cut(indices[k], origins[k]) for k in range(indices.shape[0])]
        return tf.stack([image for image, _ in cuts]), tf.stack([mask for _, mask in cuts])

    def _cut(self, index: tf.Tensor, origin: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        corner, size = tf.concat([origin, [0]], 0), [self.patch, self.patch, -1]
        image = _list_item(self._images, index, self._image_dtype)
        return tf.slice(image, corner, size), tf.slice(_list_item(self._masks, index, tf.uint8), corner, size)


def _tensor_list(tensors: list[tf.Tensor]) -> tf.Tensor:
    """A TensorList (variant) of ``[H, W, C]`` tensors of any sizes, usable inside tf.data functions."""
    handle = tf.raw_ops.EmptyTensorList(element_shape=[-1, -1, -1], max_num_elements=-1, element_dtype=tensors[0].dtype)
    for tensor in tensors:
        handle = tf.raw_ops.TensorListPushBack(input_handle=handle, tensor=tensor)
    return handle


def _list_item(handle: tf.Tensor, index: tf.Tensor, dtype: tf.DType) -> tf.Tensor:
    """Item ``index`` of a `_tensor_list`, sharing its buffer."""
    return tf.raw_ops.TensorListGetItem(
        input_handle=handle, index=tf.cast(index, tf.int32), element_shape=[-1, -1, -1], element_dtype=dtype
    )


def _streamed_images(cfg: DataConfig, manifest: dict, dtype: tf.DType, seed: Optional[int]) -> tf.data.Dataset:
    """Decoded, padded training ``(image, mask, id)``: shard order and images shuffled, image buffer bounded in bytes."""
    files = shard_paths(cfg.cache, manifest, "train")
    written = _written(manifest, "train")
    buffer = max(1, min(len(written), IMAGE_SHUFFLE_BYTES // max(_item_bytes(e, dtype) for e in written)))
    return (
        tf.data.Dataset.from_tensor_slices(files)
        .shuffle(len(files), seed=seed)
        .interleave(
            lambda path: tf.data.TFRecordDataset(path, compression_type(manifest)),
            cycle_length=min(len(files), 4),
            num_parallel_calls=AUTOTUNE,
        )
        .shuffle(buffer, seed=seed)
        .map(
            lambda record: _padded_item(record, dtype, cfg),
            num_parallel_calls=AUTOTUNE,
        )
    )


def _image_and_mask(record: tf.Tensor, dtype: tf.DType, cfg: DataConfig) -> tuple[tf.Tensor, tf.Tensor]:
    """Decode a record and reflect-pad it to at least one patch in each direction."""
    image, mask, _ = _padded_item(record, dtype, cfg)
    return image, mask


def _padded_item(record: tf.Tensor, dtype: tf.DType, cfg: DataConfig) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """``(image, mask, id)`` of a record, image and mask reflect-padded to at least one patch."""
    example = parse_example(record, dtype)
    image = tf.ensure_shape(example["image"], [None, None, cfg.channels])
    return _pad_to(image, cfg.patch_size), _pad_to(example["mask"], cfg.patch_size), example["id"]


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


def _random_origins(
    image: tf.Tensor, cfg: DataConfig, count: tf.Tensor, seed: tf.Tensor
) -> tuple[tf.Tensor, tf.Tensor]:
    """``count`` uniform random top-left corners of patches inside the image."""
    span = tf.shape(image)[:2] - cfg.patch_size + 1
    seeds = tf.random.experimental.stateless_split(seed, 2)
    shape = [count]
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


def _corners(image: tf.Tensor, mask: tf.Tensor, rows: tf.Tensor, cols: tf.Tensor) -> tf.data.Dataset:
    """``(image, mask, row, col)`` per patch corner; the image is shared, not copied (an 8K image has
    thousands of grid patches, cut one by one by `_cut_patch`)."""
    return tf.data.Dataset.from_tensor_slices((rows, cols)).map(lambda row, col: (image, mask, row, col))


def _cut_patch(image: tf.Tensor, mask: tf.Tensor, row: tf.Tensor, col: tf.Tensor, cfg: DataConfig):
    """The ``patch_size`` square of ``image`` and ``mask`` at ``(row, col)``."""
    size = cfg.patch_size
    return (
        tf.ensure_shape(tf.slice(image, [row, col, 0], [size, size, -1]), [size, size, cfg.channels]),
        tf.ensure_shape(tf.slice(mask, [row, col, 0], [size, size, -1]), [size, size, 1]),
    )


def _jitters_colour(augment: AugmentConfig) -> bool:
    return any((augment.brightness, augment.white_balance, augment.saturation, augment.haze))


def _finish(image: tf.Tensor, mask: tf.Tensor, seed: tf.Tensor, cfg: DataConfig, augment: bool, classes: int):
    """A batch of cache-dtype patches -> model inputs and targets (augmented when ``augment``)."""
    photometric_seed, geometric_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    if augment and cfg.preprocess.mode == "log":
        image = photometric(tf.cast(image, tf.float32), photometric_seed, cfg.augment)
    image = cfg.preprocess.apply(image)
    if augment and cfg.preprocess.mode == "ldr" and _jitters_colour(cfg.augment):
        image = color_jitter(image, photometric_seed, cfg.augment)
    if augment:  # the mask is warped as its uint8 class ids
        size = cfg.patch_size
        transforms = random_affine(geometric_seed, tf.shape(image)[0], size, size, cfg.augment)
        image, mask = apply_affine(image, mask, transforms, cfg.augment.fill, cfg.augment.mask_fill)
    mask = tf.cast(mask, tf.float32)
    if classes > 1:
        mask = tf.one_hot(tf.cast(mask[..., 0], tf.int32), classes)
    return image, mask
