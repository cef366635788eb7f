"""The working scale end to end: resized caches, weighted crops, prediction at scale + guided refinement."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
import tensorflow as tf

from tests.test_cache import data_config, mask_source
from tfsky.data.cache import iter_cached, prepare_cache, read_manifest
from tfsky.data.pipeline import crop_counts, segmentation_dataset, steps_per_epoch
from tfsky.data.scale import resize_image, resize_mask, working_size
from tfsky.data.transforms import Preprocess
from tfsky.errors import ConfigError
from tfsky.io.writers import write_mask_png, write_png
from tfsky.export.savedmodel import export_model
from tfsky.export.segmenter import SegmenterModule
from tfsky.models.bundle import ModelInfo, save_model
from tfsky.predict.refine import refine, refine_graph
from tfsky.predict.segment import TiledSegmenter, segmenter_tiling
from tfsky.tiling import AUTO_OVERLAP_PX, TilingConfig, sliding_window_inference


def horizon_scene(height: int, width: int, horizon: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A bright textured sky over dark textured ground with a wavy sky line; returns (uint8 image, 0/1 mask)."""
    rng = np.random.default_rng(seed)
    cols = np.arange(width)
    line = (horizon + 6 * np.sin(cols / 17.0)).astype(int)
    mask = (np.arange(height)[:, None] < line[None, :]).astype(np.uint8)
    sky = np.array([200, 215, 235]) + rng.normal(0, 6, (height, width, 3))
    ground = np.array([60, 70, 50]) + rng.normal(0, 12, (height, width, 3))
    image = np.where(mask[..., None] == 1, sky, ground)
    return np.clip(image, 0, 255).astype(np.uint8), mask


def test_working_size_keeps_aspect_and_never_enlarges():
    assert working_size(1024, 2048, 288) == (288, 576)
    assert working_size(4096, 8192, 288) == (288, 576)
    assert working_size(450, 480, 288) == (288, 307)
    assert working_size(200, 300, 288) == (200, 300)
    assert working_size(200, 300, None) == (200, 300)


def test_resized_masks_stay_aligned_with_resized_images():
    image, mask = horizon_scene(600, 900, 250)
    size = working_size(600, 900, 150)
    small_image, small_mask = resize_image(image, size), resize_mask(mask, size)
    assert small_image.shape == (150, 225, 3) and small_mask.shape == (150, 225)
    # the sky line is where the resized image changes from bright to dark, column by column
    bright = small_image.mean(axis=-1) > 130
    assert np.mean(bright == small_mask.astype(bool)) > 0.995


def test_multiclass_masks_resize_to_existing_class_ids_only():
    mask = np.zeros((90, 120), np.uint8)
    mask[:30], mask[30:60], mask[60:] = 100, 255, 0
    small = resize_mask(mask, (45, 60))
    assert set(np.unique(small)) == {0, 100, 255}


def test_prepare_at_a_working_scale_stores_resized_pairs_and_sky_fractions(tmp_path):
    images, masks = tmp_path / "images", tmp_path / "masks"
    for index, (height, width) in enumerate([(400, 640), (320, 320), (48, 64)]):
        image, mask = horizon_scene(height, width, height // 3, seed=index)
        write_png(images / f"s{index}.png", image)
        write_mask_png(masks / f"s{index}.png", mask.astype(bool))
    cfg = data_config(tmp_path, [mask_source(images, masks)], working_scale=96)
    prepare_cache(cfg)
    entries = {e["id"]: e for e in read_manifest(cfg.cache)["items"]}
    assert (entries["photos/s0.png"]["height"], entries["photos/s0.png"]["width"]) == (96, 154)
    assert (entries["photos/s0.png"]["source_height"], entries["photos/s0.png"]["source_width"]) == (400, 640)
    assert (entries["photos/s2.png"]["height"], entries["photos/s2.png"]["width"]) == (48, 64)  # never enlarged
    for cached in iter_cached(cfg.cache):
        bright = cached.image.mean(axis=-1) > 130
        assert np.mean(bright == cached.mask.astype(bool)) > 0.99
        assert entries[cached.id]["sky_fraction"] == pytest.approx(cached.mask.mean(), abs=1e-6)


def _entries(*specs: tuple[str, float]) -> list[dict]:
    return [{"id": f"{source}/{i}", "source": source, "sky_fraction": sky} for i, (source, sky) in enumerate(specs)]


def test_crop_counts_share_the_epoch_by_source_weight_and_sky(tmp_path):
    sources = [mask_source(tmp_path, tmp_path, "a"), {**mask_source(tmp_path, tmp_path, "b"), "weight": 0.5}]
    cfg = data_config(tmp_path, sources, patches_per_image=4)
    entries = _entries(("a", 0.5), ("a", 0.5), ("b", 0.2), ("b", 0.2), ("b", 0.2), ("b", 0.2))
    counts = crop_counts(cfg, entries)
    assert sum(counts) == 6 * 4
    assert sum(counts[:2]) == 16 and sum(counts[2:]) == 8  # 2 : 1 by weight, whatever the image counts
    equal = data_config(
        tmp_path, [mask_source(tmp_path, tmp_path, "a"), mask_source(tmp_path, tmp_path, "b")], patches_per_image=3
    )
    assert crop_counts(equal, entries) == [
        5,
        5,
        2,
        2,
        2,
        2,
    ]  # 9 : 9 exactly, the two spare crops to the largest remainders
    one_source = data_config(tmp_path, [mask_source(tmp_path, tmp_path, "b")], patches_per_image=3)
    assert crop_counts(one_source, entries[2:]) == [3] * 4
    no_sky = data_config(tmp_path, [mask_source(tmp_path, tmp_path, "a")], patches_per_image=5, no_sky_weight=0.25)
    counts = crop_counts(no_sky, _entries(("a", 0.4), ("a", 0.0), ("a", 0.3), ("a", 0.0)))
    assert counts == [8, 2, 8, 2]


def test_weighted_crops_reach_the_training_batches(tmp_path):
    images, masks = tmp_path / "images", tmp_path / "masks"
    for index in range(4):  # two images with sky, two without (all-zero masks)
        image, mask = horizon_scene(64, 64, 100 if index < 2 else -10, seed=index)  # all sky or none
        write_png(images / f"s{index}.png", image)
        write_mask_png(masks / f"s{index}.png", mask.astype(bool))
    cfg = data_config(
        tmp_path, [mask_source(images, masks)], patches_per_image=4, no_sky_weight=1 / 3, val_fraction=0.25
    )
    cfg.augment.enabled = False
    prepare_cache(cfg)
    train = [e for e in read_manifest(cfg.cache)["items"] if e["split"] == "train"]
    expected = sum(crop_counts(cfg, train))
    assert steps_per_epoch(cfg, "train", 1) == expected == 12
    batches = list(segmentation_dataset(cfg, "train", 1, seed=0))
    assert len(batches) == expected
    with_sky = sum(float(tf.reduce_max(mask)) > 0 for _, mask in batches)
    assert with_sky == sum(count for e, count in zip(train, crop_counts(cfg, train)) if e["sky_fraction"] > 0)


def test_refine_follows_the_full_resolution_sky_line():
    image, truth = horizon_scene(480, 720, 200)
    small = resize_image(image, (60, 90))
    coarse = cv2.GaussianBlur(resize_mask(truth, (60, 90)).astype(np.float32), (5, 5), 1.5)[..., None]
    refined = refine(coarse, small, image)
    assert refined.shape == (480, 720, 1) and refined.dtype == np.float32
    bilinear = cv2.resize(coarse[..., 0], (720, 480), interpolation=cv2.INTER_LINEAR)

    def wrong(probability):
        return int(np.count_nonzero((probability >= 0.5) != truth.astype(bool)))

    assert wrong(bilinear) > 200  # plain upsampling misses the wavy line by a few pixels all along it
    assert wrong(refined[..., 0]) * 10 < wrong(bilinear)


def test_refine_keeps_a_constant_map_and_softmax_outputs_a_distribution():
    image, _ = horizon_scene(100, 150, 40)
    small = resize_image(image, (50, 75))
    constant = refine(np.full((50, 75, 1), 0.3, np.float32), small, image)
    np.testing.assert_allclose(constant, 0.3, atol=1e-4)
    two = np.stack([np.full((50, 75), 0.2), np.full((50, 75), 0.8)], -1).astype(np.float32)
    np.testing.assert_allclose(refine(two, small, image).sum(-1), 1.0, atol=1e-5)


def _brightness_model() -> tf.keras.Model:
    """A fully convolutional stand-in: P(sky) = mean of the (normalised) channels."""
    inputs = tf.keras.Input((None, None, 3))
    return tf.keras.Model(inputs, tf.reduce_mean(inputs, axis=-1, keepdims=True))


def test_segmenter_predicts_at_its_working_scale_and_refines_to_full_size():
    image, _ = horizon_scene(300, 500, 120)
    info = ModelInfo(task="segmenter", preprocess=Preprocess(), tile_size=64, working_scale=96)
    segmenter = TiledSegmenter(_brightness_model(), info, TilingConfig(tile=64))
    assert segmenter.model_size(300, 500) == (96, 160)
    probabilities = segmenter.probabilities(image)
    assert probabilities.shape == (300, 500, 1)
    small = resize_image(image, (96, 160))
    expected = refine(sliding_window_inference(small, segmenter.predict_tiles, segmenter.tiling), small, image)
    np.testing.assert_array_equal(probabilities, expected)
    assert segmenter.tile_count(300, 500) == 6  # tiles of the 96 x 160 image, not of the full one

    full = TiledSegmenter(_brightness_model(), info, TilingConfig(tile=64, resolution="full"))
    assert full.model_size(300, 500) == (300, 500)
    direct = sliding_window_inference(image, full.predict_tiles, full.tiling_for(300, 500), multiple=32)
    np.testing.assert_array_equal(full.probabilities(image), direct)
    native = TiledSegmenter(_brightness_model(), ModelInfo("segmenter", Preprocess(), tile_size=64))
    assert native.model_size(300, 500) == (300, 500)  # a model without a working scale predicts at full size


def test_refine_graph_agrees_with_refine():
    image, truth = horizon_scene(240, 360, 100)
    small = resize_image(image, (60, 90))
    coarse = cv2.GaussianBlur(resize_mask(truth, (60, 90)).astype(np.float32), (5, 5), 1.5)[..., None]
    expected = refine(coarse, small, image)
    graph = refine_graph(
        tf.constant(coarse), tf.constant(small / 255.0, tf.float32), tf.constant(image / 255.0, tf.float32)
    )
    np.testing.assert_allclose(graph.numpy(), expected, atol=1e-4)


def test_exported_working_scale_model_predicts_like_tfsky_predict_at_its_threshold(tmp_path):
    ramp = np.linspace(0, 255, 500)[None, :, None] + np.random.default_rng(0).normal(0, 4, (300, 500, 3))
    image = np.clip(ramp, 0, 255).astype(np.uint8)  # P(sky) = brightness rises from left to right
    path = tmp_path / "scaled.keras"
    save_model(
        _brightness_model(), path, ModelInfo("segmenter", Preprocess(), tile_size=64, working_scale=96, threshold=0.42)
    )
    loaded = tf.saved_model.load(str(export_model(path, tmp_path / "models", "scaled")))
    png = cv2.imencode(".png", image[..., ::-1])[1].tobytes()
    out = loaded.signatures["predict_image"](image_bytes=tf.constant([png]))
    served = tf.io.decode_png(out["probability_png_bytes"][0], dtype=tf.uint16).numpy()[..., 0] / 65535.0
    local = TiledSegmenter.load(path).probabilities(image)[..., 0]
    assert served.shape == (300, 500)
    # the graph resizes float pixels where OpenCV resizes uint8 ones: agreement to a fraction of a grey level
    np.testing.assert_allclose(served, local, atol=5e-3)
    mask = tf.io.decode_png(out["mask_png_bytes"][0]).numpy()[..., 0] == 255
    assert np.mean(mask == (local >= 0.42)) > 0.995  # the model's threshold...
    assert np.mean(mask) > np.mean(local >= 0.5) + 0.05  # ...not 0.5


def test_cli_predict_runs_at_the_working_scale_unless_told_full(tmp_path, cli):
    image, _ = horizon_scene(300, 700, 120)
    write_png(tmp_path / "scene.png", image)
    path = tmp_path / "scaled.keras"
    save_model(_brightness_model(), path, ModelInfo("segmenter", Preprocess(), tile_size=64, working_scale=96))
    for flags, resolution, tiles in (((), "working", 10), (("--resolution", "full"), "full", 2)):
        # working scale: the 64-px training tile; full resolution: tile auto (544 px at the default budget)
        out = tmp_path / resolution
        result = cli("predict", tmp_path / "scene.png", "-m", path, "-o", out, "-q", *flags)
        assert result.exit_code == 0, result.output
        sidecar = json.loads((out / "scene.json").read_text())
        assert (sidecar["resolution"], sidecar["tiles"]) == (resolution, tiles)
    result = cli("predict", tmp_path / "scene.png", "-m", path, "-o", tmp_path / "bad", "--resolution", "half")
    assert result.exit_code == 1 and "tiling.resolution" in result.output and "Traceback" not in result.output


def test_a_cache_of_another_working_scale_or_an_older_tfsky_is_one_clear_error(tmp_path):
    from tfsky.errors import InputError

    images, masks = tmp_path / "images", tmp_path / "masks"
    for index in range(3):
        image, mask = horizon_scene(120, 160, 50, seed=index)
        write_png(images / f"s{index}.png", image)
        write_mask_png(masks / f"s{index}.png", mask.astype(bool))
    cfg = data_config(tmp_path, [mask_source(images, masks)], working_scale=64)
    prepare_cache(cfg)
    cfg.working_scale = 96
    with pytest.raises(InputError, match="prepared at working_scale 64 but the config wants 96"):
        steps_per_epoch(cfg, "train", 1)
    cfg.working_scale = 64
    manifest_path = cfg.cache / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    for entry in manifest["items"]:
        entry.pop("sky_fraction", None)
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(InputError, match="prepared by an older tfsky; re-run `tfsky data prepare`"):
        steps_per_epoch(cfg, "train", 1)


def test_tile_auto_at_the_working_scale_is_the_training_tile_in_predict_and_export():
    scaled = ModelInfo(task="segmenter", preprocess=Preprocess(), tile_size=96, working_scale=192)
    native = ModelInfo(task="segmenter", preprocess=Preprocess(), tile_size=96)
    assert segmenter_tiling(TilingConfig(), scaled).tile == 96
    assert segmenter_tiling(TilingConfig(tile=64), scaled).tile == 64  # an explicit tile wins
    assert segmenter_tiling(TilingConfig(resolution="full"), scaled).tile == "auto"  # full-res 8K: the budget
    assert segmenter_tiling(TilingConfig(), native).tile == "auto"
    predictor = TiledSegmenter(_brightness_model(), scaled)
    assert (predictor.tiling.tile, predictor.tiling.overlap) == (96, min(AUTO_OVERLAP_PX, 96 // 4) / 96)
    assert predictor.tile_count(300, 500) > 1  # the 192 x 320 working image is tiled, not one whole tile
    assert SegmenterModule(_brightness_model(), scaled, None).tiling.tile == 96  # the serving signature too


def test_working_factor_predicts_at_a_multiple_of_the_working_scale_in_predict_and_export():
    info = ModelInfo(task="segmenter", preprocess=Preprocess(), tile_size=64, working_scale=96)
    tiling = TilingConfig(tile=64, working_factor=1.5)
    assert TiledSegmenter(_brightness_model(), info, tiling).model_size(300, 500) == (144, 240)
    assert SegmenterModule(_brightness_model(), info, tiling).working_scale == 144
    assert TiledSegmenter(_brightness_model(), info, TilingConfig(resolution="full", working_factor=1.5)).model_size(
        300, 500
    ) == (300, 500)
    with pytest.raises(ConfigError, match="'tiling.working_factor': must be > 0"):
        TiledSegmenter(_brightness_model(), info, TilingConfig(working_factor=0))
