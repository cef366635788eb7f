"""The tf.data pipeline: batch shapes, the validation grid, the group split, determinism, HDR aug order."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from numpy.lib.stride_tricks import sliding_window_view

from tfsky.config import load_config
from tfsky.data.cache import iter_cached, prepare_cache, read_manifest
from tfsky.data import pipeline
from tfsky.data.config import DataConfig
from tfsky.data.pipeline import evenly_spaced, grid_count, segmentation_dataset, steps_per_epoch
from tfsky.errors import InputError
from tfsky.io.writers import write_mask_png, write_png, write_tif
from tfsky.tiling import tile_starts

PATCH, STRIDE, BATCH = 32, 20, 4
SIZES = [(70, 90), (32, 45), (20, 50), (64, 64), (51, 33), (40, 100)]  # (20, 50) is smaller than a patch


def config(cache: Path, sources: list[dict], **extra) -> DataConfig:
    raw = {"sources": sources, "cache": str(cache), "patch_size": PATCH, "stride": STRIDE, "shuffle_buffer": 8, **extra}
    return load_config(DataConfig, None, [f"data={json.dumps(raw)}"], section="data")


@pytest.fixture(scope="module")
def ldr(tmp_path_factory) -> DataConfig:
    root = tmp_path_factory.mktemp("ldr")
    rng = np.random.default_rng(0)
    for index, (height, width) in enumerate(SIZES):
        write_png(root / "images" / f"p{index}.png", rng.integers(0, 256, (height, width, 3), dtype=np.uint8))
        write_mask_png(root / "masks" / f"p{index}.png", rng.random((height, width)) > 0.5)
    source = {"kind": "mask_folder", "name": "p", "images": str(root / "images"), "masks": str(root / "masks")}
    cfg = config(root / "cache", [source], val_fraction=0.34, patches_per_image=3)
    prepare_cache(cfg)
    return cfg


def batches(dataset: tf.data.Dataset) -> list[tuple[np.ndarray, np.ndarray]]:
    return [(image.numpy(), mask.numpy()) for image, mask in dataset]


def test_train_batches_have_the_model_shapes_and_dtypes(ldr):
    epoch = batches(segmentation_dataset(ldr, "train", BATCH, seed=0))
    assert len(epoch) == steps_per_epoch(ldr, "train", BATCH) == 4 * 3 // BATCH
    for image, mask in epoch:
        assert image.shape == (BATCH, PATCH, PATCH, 3) and image.dtype == np.float32
        assert mask.shape == (BATCH, PATCH, PATCH, 1) and mask.dtype == np.float32
        assert 0 <= image.min() and image.max() <= 1 and set(np.unique(mask)) <= {0.0, 1.0}
    image, mask = next(iter(segmentation_dataset(ldr, "train", BATCH, classes=3, seed=0)))
    assert mask.shape == (BATCH, PATCH, PATCH, 3)
    np.testing.assert_array_equal(tf.reduce_sum(mask, -1).numpy(), 1.0)  # one-hot
    assert np.all(mask.numpy()[..., 2] == 0)  # binary labels: class 2 never occurs


def test_val_grid_covers_every_pixel_of_every_val_image(ldr):
    patches = np.concatenate([image for image, _ in batches(segmentation_dataset(ldr, "val", BATCH))])
    masks = np.concatenate([mask for _, mask in batches(segmentation_dataset(ldr, "val", BATCH))])
    assert len(batches(segmentation_dataset(ldr, "val", BATCH))) == steps_per_epoch(ldr, "val", BATCH)
    used = 0
    for item in iter_cached(ldr.cache, "val"):
        height, width = item.image.shape[:2]
        image = np.pad(item.image, _reflect_to(height, width), mode="reflect") / 255
        mask = np.pad(item.mask, _reflect_to(height, width)[:2], mode="reflect")
        canvas, mask_canvas, covered = np.full(image.shape, -1.0), np.full(mask.shape, -1.0), np.zeros(mask.shape, bool)
        overlap = 1 - STRIDE / PATCH
        for row in tile_starts(height, PATCH, overlap).numpy():
            for col in tile_starts(width, PATCH, overlap).numpy():
                canvas[row : row + PATCH, col : col + PATCH] = patches[used]
                mask_canvas[row : row + PATCH, col : col + PATCH] = masks[used, ..., 0]
                covered[row : row + PATCH, col : col + PATCH] = True
                used += 1
        assert covered.all()
        np.testing.assert_allclose(canvas, image, atol=1e-6)
        np.testing.assert_array_equal(mask_canvas, mask)
    assert used == len(patches) > 0


def test_val_max_batches_spreads_patches_over_every_val_image(ldr):
    grid = [image for batch, _ in batches(segmentation_dataset(ldr, "val", 1)) for image in batch]
    assert len(grid) == steps_per_epoch(ldr, "val", 1) > 3  # 2 val images
    counts = [grid_count(*item.image.shape[:2], PATCH, STRIDE) for item in iter_cached(ldr.cache, "val")]
    owner = np.repeat(np.arange(2), counts)
    for max_batches in (1, 2, 100):
        kept = batches(segmentation_dataset(ldr, "val", 2, max_batches=max_batches))
        patches = [image for batch, _ in kept for image in batch]
        assert len(kept) == min(max_batches, steps_per_epoch(ldr, "val", 2))
        index = [next(i for i, g in enumerate(grid) if np.array_equal(g, p)) for p in patches]
        assert index == sorted(set(index))  # distinct grid patches, in grid order
        assert set(owner[index]) == {0, 1}  # not only the first image's patches
        np.testing.assert_array_equal(
            batches(segmentation_dataset(ldr, "val", 2, max_batches=max_batches))[0][0], kept[0][0]
        )  # the same patches every epoch


def test_grid_count_shifts_the_last_patch_inward():
    assert grid_count(70, 90, 32, 20) == 3 * 4  # rows 0 20 38; cols 0 20 40 58
    assert grid_count(20, 50, 32, 20) == 1 * 2  # padded to 32 rows; cols 0 18
    assert grid_count(64, 64, 32, 32) == 4


@pytest.mark.parametrize("memory_cache_bytes", [pipeline.MEMORY_CACHE_BYTES, 0], ids=["in_memory", "streaming"])
def test_train_patches_are_exact_crops_of_the_train_images(ldr, monkeypatch, memory_cache_bytes):
    monkeypatch.setattr(pipeline, "MEMORY_CACHE_BYTES", memory_cache_bytes)
    windows = []
    for item in iter_cached(ldr.cache, "train"):
        height, width = item.image.shape[:2]
        padded = np.pad(np.dstack([item.image, item.mask]), _reflect_to(height, width), mode="reflect")
        windows.append(sliding_window_view(padded, (PATCH, PATCH, 4)).reshape(-1, PATCH, PATCH, 4))
    windows = np.concatenate(windows).astype(np.float64)
    for image, mask in batches(segmentation_dataset(ldr, "train", BATCH, seed=3, augment=False)):
        for patch in np.concatenate([image * 255, mask], axis=-1):
            assert np.any(np.all(np.abs(windows - patch) < 1e-3, axis=(1, 2, 3)))


def test_in_memory_epoch_crops_each_train_image_patches_per_image_times(ldr):
    owners = []  # per train image: its padded image + mask, to find which image a patch came from
    for item in iter_cached(ldr.cache, "train"):
        height, width = item.image.shape[:2]
        padded = np.pad(np.dstack([item.image, item.mask]), _reflect_to(height, width), mode="reflect")
        owners.append(sliding_window_view(padded, (PATCH, PATCH, 4)).reshape(-1, PATCH, PATCH, 4).astype(np.float64))
    counts = np.zeros(len(owners), int)
    for image, mask in batches(segmentation_dataset(ldr, "train", BATCH, seed=5, augment=False)):
        for patch in np.concatenate([image * 255, mask], axis=-1):
            matches = [np.any(np.all(np.abs(w - patch) < 1e-3, axis=(1, 2, 3))) for w in owners]
            assert sum(matches) == 1
            counts += matches
    np.testing.assert_array_equal(counts, ldr.patches_per_image)  # 4 images x 3 picks = 3 full batches of 4


def test_decoded_train_images_are_kept_in_memory_only_when_they_fit(tmp_path, monkeypatch):
    rng = np.random.default_rng(2)
    for name in ("a", "b", "c"):
        write_png(tmp_path / "images" / f"{name}.png", rng.integers(0, 256, (40, 40, 3), dtype=np.uint8))
        write_mask_png(tmp_path / "masks" / f"{name}.png", rng.random((40, 40)) > 0.5)
    source = {"kind": "mask_folder", "name": "m", "images": str(tmp_path / "images"), "masks": str(tmp_path / "masks")}
    cfg = config(tmp_path / "cache", [source], val_fraction=0.34)
    prepare_cache(cfg)
    in_memory = segmentation_dataset(cfg, "train", 2, seed=0)
    monkeypatch.setattr(pipeline, "MEMORY_CACHE_BYTES", 2 * 40 * 40 * 4 - 1)  # one byte short of the 2 train images
    streaming = segmentation_dataset(cfg, "train", 2, seed=0)
    assert len(batches(in_memory)) == len(batches(streaming)) == 2 * 8 // 2
    for shard in Path(cfg.cache).glob("train-*.tfrecord"):
        shard.unlink()
    assert len(batches(in_memory)) == 8  # decoded once, when the dataset was built: no shard is read again
    with pytest.raises(tf.errors.NotFoundError):
        batches(streaming)


def test_same_seed_same_batches_new_epoch_new_batches(ldr):
    first = batches(segmentation_dataset(ldr, "train", BATCH, seed=7))
    again = batches(segmentation_dataset(ldr, "train", BATCH, seed=7))
    other = batches(segmentation_dataset(ldr, "train", BATCH, seed=8))
    for (image, mask), (image2, mask2) in zip(first, again):
        np.testing.assert_array_equal(image, image2)
        np.testing.assert_array_equal(mask, mask2)
    assert not np.array_equal(first[0][0], other[0][0])
    dataset = segmentation_dataset(ldr, "train", BATCH, seed=7)
    epoch1, epoch2 = batches(dataset), batches(dataset)
    assert not np.array_equal(epoch1[0][0], epoch2[0][0])  # fresh crops and augmentation each epoch
    steps = len(first)
    repeated = batches(segmentation_dataset(ldr, "train", BATCH, seed=7).repeat().take(2 * steps))  # as fit_run reads
    for (image, _), (image2, _) in zip(repeated, first + epoch2):  # one iterator: the same epochs, in order
        np.testing.assert_array_equal(image, image2)


def test_camera_frames_never_straddle_the_split(tmp_path):
    rng = np.random.default_rng(1)
    for camera in ("c1", "c2", "c3", "c4", "c5"):
        write_mask_png(tmp_path / "cams" / f"{camera}-mask.png", rng.random((40, 48)) > 0.5)
        for frame in range(3):
            write_png(tmp_path / "cams" / camera / f"f{frame}.png", rng.integers(0, 256, (40, 48, 3), dtype=np.uint8))
    cfg = config(tmp_path / "cache", [{"kind": "camera_folder", "name": "cams", "images": str(tmp_path / "cams")}])
    prepare_cache(cfg)
    groups = {split: {item.group for item in iter_cached(cfg.cache, split)} for split in ("train", "val")}
    assert groups["val"] and groups["train"] and not groups["train"] & groups["val"]
    assert sum(len(item_groups) for item_groups in groups.values()) == 5
    val_patches = sum(len(image) for image, _ in segmentation_dataset(cfg, "val", BATCH))
    assert val_patches == 3 * len(groups["val"]) * grid_count(40, 48, PATCH, STRIDE)


def test_hdr_exposure_is_applied_to_radiance_before_the_log_transform(tmp_path):
    radiance = 0.37
    for name in ("a", "b"):
        write_tif(tmp_path / "hdr" / f"{name}.tif", np.full((64, 64, 3), radiance, np.float32))
        write_mask_png(tmp_path / "masks" / f"{name}.png", np.ones((64, 64)))
    source = {"kind": "mask_folder", "name": "hdr", "images": str(tmp_path / "hdr"), "masks": str(tmp_path / "masks")}
    geometric_off = {"rotation": 0, "shift": 0, "shear": 0, "zoom": 0, "horizontal_flip": False, "exposure_ev": 2.0}
    preprocess = {"mode": "log", "output_scale": 0.25, "output_bias": 1.0}
    cfg = config(tmp_path / "cache", [source], preprocess=preprocess, augment=geometric_off, patches_per_image=8)
    prepare_cache(cfg)
    image, _ = next(iter(segmentation_dataset(cfg, "train", 8, seed=0)))
    stops = np.log2(cfg.preprocess.invert(image).numpy() / radiance)
    assert np.allclose(stops, stops[:, :1, :1, :1], atol=1e-4)  # radiance * 2**e, one e per patch
    assert np.all(np.abs(stops) <= 2 + 1e-4) and np.ptp(stops[:, 0, 0, 0]) > 0.5
    plain, _ = next(iter(segmentation_dataset(cfg, "train", 8, seed=0, augment=False)))
    np.testing.assert_allclose(plain.numpy(), cfg.preprocess.apply(tf.constant(radiance)).numpy(), rtol=1e-6)


def test_cache_prepared_for_another_mode_is_refused(ldr):
    sources = "data.sources=[{kind: coco, images: x, annotations: y}]"
    hdr_view = load_config(DataConfig, None, [f"data.cache={ldr.cache}", sources, "data.preprocess.mode=log"], "data")
    with pytest.raises(InputError, match="cache holds 3-channel uint8 images but the config wants 3-channel float32"):
        segmentation_dataset(hdr_view, "train", BATCH)


def test_manifest_split_counts_match_the_images_read(ldr):
    manifest = read_manifest(ldr.cache)
    assert manifest["splits"]["train"]["images"] == 4 and manifest["splits"]["val"]["images"] == 2


def _reflect_to(height: int, width: int) -> list[tuple[int, int]]:
    return [(0, max(0, PATCH - height)), (0, max(0, PATCH - width)), (0, 0)]


def test_evenly_spaced_takes_the_last_item_of_equal_bins():  # validation_steps: val patches and translator pairs
    assert evenly_spaced(list(range(10)), 3) == [3, 6, 9]
    assert evenly_spaced(list(range(10)), 4) == [2, 4, 7, 9]
    assert evenly_spaced(list(range(3)), 8) == [0, 1, 2]
