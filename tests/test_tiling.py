"""Tiling: exact blending, graph == numpy driver, full batches, flip and rotation TTA, fewer seams than plain
averaging."""

from __future__ import annotations

import dataclasses
import re

import numpy as np
import pytest
import tensorflow as tf

from tfsky.errors import ConfigError
from tfsky.tiling import (
    WINDOWS,
    TilingConfig,
    blend_window,
    compiled_forward,
    model_tiling,
    reflect_indices,
    seam_score,
    sliding_window_graph,
    sliding_window_inference,
    tile_starts,
    weight_profile,
    with_tta,
)

SIZES = [(1000, 777), (33, 65), (5, 200), (1, 1)]


def first_channel(tiles):
    return tiles[..., :1]


def double(tiles):
    return 2 * tiles


def random_image(height, width, channels=3, seed=0):
    return np.random.default_rng(seed).random((height, width, channels), dtype=np.float32)


def graph_driver(channels, predict_batch, tiling):
    """The graph driver compiled once for images of any height and width."""
    spec = tf.TensorSpec([None, None, channels], tf.float32)
    return tf.function(lambda image: sliding_window_graph(image, predict_batch, tiling), input_signature=[spec])


@pytest.mark.parametrize("window", WINDOWS)
@pytest.mark.parametrize("tile", [16, 32, 64])
@pytest.mark.parametrize("overlap", [0.0, 0.25, 0.5])
def test_numpy_driver_reproduces_identity_exactly(window, tile, overlap):
    for height, width in SIZES:
        image = random_image(height, width)
        out = sliding_window_inference(image, first_channel, TilingConfig(tile, overlap, window, 16))
        assert out.shape == (height, width, 1) and out.dtype == np.float32
        np.testing.assert_allclose(out, image[..., :1], atol=1e-6, rtol=0)


@pytest.mark.parametrize("window", WINDOWS)
@pytest.mark.parametrize("tile,overlap", [(16, 0.5), (32, 0.0), (64, 0.25)])
def test_graph_driver_with_dynamic_size_reproduces_identity_exactly(window, tile, overlap):
    run = graph_driver(3, double, TilingConfig(tile, overlap, window, 64))
    for height, width in SIZES:
        image = random_image(height, width)
        out = run(image).numpy()
        assert out.shape == (height, width, 3)
        np.testing.assert_allclose(out, 2 * image, atol=1e-6, rtol=0)


def test_graph_driver_equals_numpy_driver_on_a_position_dependent_model():
    kernel = tf.constant(np.random.default_rng(1).normal(size=(3, 3, 3, 2)).astype(np.float32))

    def conv(tiles):  # zero padding makes tile borders differ from the interior: blending matters
        return tf.nn.conv2d(tf.cast(tiles, tf.float32), kernel, 1, "SAME")

    image = random_image(150, 97, seed=2)
    tiling = TilingConfig(tile=32, overlap=0.25, window="gaussian", tile_batch=5)
    expected = sliding_window_inference(image, conv, tiling)
    got = graph_driver(3, conv, tiling)(image).numpy()
    assert seam_score(expected, 32, 0.25) > 0  # a real, non-trivial output
    np.testing.assert_allclose(got, expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("length", [1, 5, 31, 32, 33, 100, 777, 1000])
@pytest.mark.parametrize("tile,overlap", [(32, 0.0), (32, 0.25), (16, 0.5), (64, 0.9)])
def test_grid_covers_every_pixel_and_ends_at_the_border(length, tile, overlap):
    starts = tile_starts(length, tile, overlap)
    padded = max(length, tile)
    steps = np.diff(starts.numpy())
    assert starts[0] == 0 and starts[-1] + tile == padded
    assert np.all(steps > 0) and np.all(steps <= tile)
    for mode in WINDOWS:
        assert weight_profile(starts, padded, blend_window(tile, mode)).numpy().min() >= 1e-3


def test_tile_starts_follow_the_stride():
    assert tile_starts(1000, 64, 0.25).numpy().tolist() == list(range(0, 937, 48)) + [936]
    assert tile_starts(128, 64, 0.0).numpy().tolist() == [0, 64]


def test_reflect_indices_mirror_without_repeating_the_edge():
    assert reflect_indices(3, 10).numpy().tolist() == [0, 1, 2, 1, 0, 1, 2, 1, 0, 1]
    assert reflect_indices(1, 4).numpy().tolist() == [0, 0, 0, 0]


@pytest.mark.parametrize("mode", WINDOWS)
def test_windows_are_symmetric_peak_one_and_floored(mode):
    window = blend_window(256, mode, ramp=100)
    assert window.shape == (256,) and window.dtype == np.float32
    assert window.max() == pytest.approx(1.0) and window.min() >= 1e-3
    np.testing.assert_allclose(window, window[::-1])
    if mode != "constant":
        assert window[0] < 0.2 and window[0] < window[64] < window[127]


@pytest.mark.parametrize("tile,overlap_px", [(64, 16), (384, 64), (96, 48)])
def test_ramp_windows_of_neighbours_sum_to_one_across_the_overlap(tile, overlap_px):
    window = blend_window(tile, "ramp", floor=0, ramp=overlap_px)
    assert np.all(window[overlap_px : tile - overlap_px] == 1)
    stride = tile - overlap_px
    starts = tf.range(4) * stride
    profile = weight_profile(starts, 3 * stride + tile, window).numpy()
    inside = profile[overlap_px : 3 * stride + tile - overlap_px]  # every pixel two tiles or one interior cover
    np.testing.assert_allclose(inside, 1, atol=1e-6)


def test_ramp_window_is_at_most_half_the_tile_on_each_side():
    window = blend_window(32, "ramp", floor=0, ramp=64)
    np.testing.assert_allclose(window, blend_window(32, "ramp", floor=0, ramp=16))
    assert window[15] == window[16] and window[15] > 0.99
    assert np.all(blend_window(32, "ramp", ramp=0) == 1)


def test_gaussian_window_has_monai_sigma():
    window = blend_window(64, "gaussian", floor=0)
    centre, sigma = 31.5, 8.0
    assert window[0] == pytest.approx(np.exp(-0.5 * (centre / sigma) ** 2) / np.exp(-0.5 * (0.5 / sigma) ** 2))


def test_unknown_window_is_a_config_error():
    with pytest.raises(ConfigError, match="config key 'window': must be one of ramp, constant, gaussian, hann, spline"):
        blend_window(32, "triangle")


def test_numpy_driver_feeds_full_batches_except_the_last():
    batch_sizes = []

    def record(tiles):
        batch_sizes.append(len(tiles))
        return tiles[..., :1]

    progress = []
    image = random_image(100, 90)  # 4 x 4 = 16 tiles of 32 at 25 % overlap: rows of 4 carried across bands
    sliding_window_inference(
        image, record, TilingConfig(32, 0.25, tile_batch=6), progress=lambda *a: progress.append(a)
    )
    assert batch_sizes == [6, 6, 4]
    assert progress == [(6, 16), (12, 16), (16, 16)]


def test_numpy_driver_passes_tiles_in_the_image_dtype():
    dtypes = set()

    def record(tiles):
        dtypes.add(tiles.dtype)
        return tiles[..., :1].astype(np.float32) / 255

    image = (random_image(40, 50) * 255).astype(np.uint8)
    out = sliding_window_inference(image, record, TilingConfig(32))
    assert dtypes == {np.dtype(np.uint8)}
    np.testing.assert_allclose(out[..., 0], image[..., 0] / 255, atol=1e-6)


def test_flip_tta_is_neutral_for_a_flip_equivariant_model():
    image = random_image(70, 90)
    squares = lambda tiles: tf.reduce_sum(tf.square(tiles), axis=-1, keepdims=True)  # noqa: E731
    plain = sliding_window_inference(image, squares, TilingConfig(32, window="hann"))
    for tta in ("flip2", "flip4"):
        np.testing.assert_allclose(
            sliding_window_inference(image, squares, TilingConfig(32, window="hann", tta=tta)), plain, atol=1e-6
        )


def test_flip_tta_undoes_flips_before_averaging():
    ramp = np.arange(8, dtype=np.float32)

    def skewed(tiles):  # depends on position: a flip changes the answer
        return tiles * ramp[None, :, None, None] + tiles * 10 * ramp[None, None, :, None]

    tiles = np.random.default_rng(3).random((2, 8, 8, 1), dtype=np.float32)
    flip_w = skewed(tiles[:, :, ::-1])[:, :, ::-1]
    flip_h = skewed(tiles[:, ::-1])[:, ::-1]
    flip_hw = skewed(tiles[:, ::-1, ::-1])[:, ::-1, ::-1]
    np.testing.assert_allclose(with_tta(skewed, "flip2")(tiles).numpy(), (skewed(tiles) + flip_w) / 2, rtol=1e-6)
    np.testing.assert_allclose(
        with_tta(skewed, "flip4")(tiles).numpy(), (skewed(tiles) + flip_w + flip_h + flip_hw) / 4, rtol=1e-6
    )
    assert with_tta(skewed, "none") is skewed


def dihedral(tiles, flip: bool, turns: int) -> np.ndarray:
    """numpy's own flip-then-rotate of a [B, H, W, C] batch (a reference independent of `with_tta`)."""
    return np.rot90(tiles[:, :, ::-1] if flip else tiles, turns, axes=(1, 2))


def undo(pred, flip: bool, turns: int) -> np.ndarray:
    back = np.rot90(pred, -turns, axes=(1, 2))
    return back[:, :, ::-1] if flip else back


@pytest.mark.parametrize("tta, flips", [("rot4", (False,)), ("rot8", (False, True))])
def test_rotation_tta_averages_the_back_rotated_predictions(tta, flips):
    ramp = np.arange(8, dtype=np.float32)

    def skewed(tiles):  # depends on position and orientation: each rotation answers differently
        tiles = np.asarray(tiles)
        return tiles * ramp[None, :, None, None] + tiles**2 * 10 * ramp[None, None, :, None]

    tiles = np.random.default_rng(4).random((2, 8, 8, 1), dtype=np.float32)
    expected = np.mean(
        [undo(skewed(dihedral(tiles, flip, turns)), flip, turns) for flip in flips for turns in range(4)], axis=0
    )
    got = with_tta(skewed, tta)(tiles).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-6)
    assert not np.allclose(got, skewed(tiles), rtol=1e-3)  # the transforms did change the answer


@pytest.mark.parametrize("tta", ["rot4", "rot8"])
def test_rotation_tta_is_exact_for_a_rotation_equivariant_model(tta):
    """A 3x3 convolution with a kernel invariant under the dihedral group, on non-square image and tiles
    (the last row and column of tiles shrink to a multiple of 8, so rotated tiles swap their sides)."""
    ring = np.array([[1.0, 2.0, 1.0], [2.0, -3.0, 2.0], [1.0, 2.0, 1.0]], np.float32)
    kernel = tf.constant(np.einsum("hw,io->hwio", ring, np.ones((3, 1), np.float32)))

    def conv(tiles):
        return tf.nn.conv2d(tf.cast(tiles, tf.float32), kernel, 1, "SAME")

    tiles = np.random.default_rng(5).random((3, 16, 24, 3), dtype=np.float32)
    transformed = np.mean(
        [undo(conv(dihedral(tiles, flip, turns)).numpy(), flip, turns) for flip in (False, True) for turns in range(4)],
        axis=0,
    )
    np.testing.assert_allclose(with_tta(conv, tta)(tiles).numpy(), transformed, atol=1e-5)
    np.testing.assert_allclose(transformed, conv(tiles).numpy(), atol=1e-5)
    image = random_image(70, 90)
    tiling = TilingConfig(32, 0.25, "ramp", 4)
    plain = sliding_window_inference(image, conv, tiling, multiple=8)
    rotated = sliding_window_inference(image, conv, dataclasses.replace(tiling, tta=tta), multiple=8)
    np.testing.assert_allclose(rotated, plain, atol=1e-5)
    in_graph = tf.function(lambda x: sliding_window_graph(x, conv, dataclasses.replace(tiling, tta=tta), multiple=8))
    np.testing.assert_allclose(in_graph(tf.constant(image)).numpy(), plain, atol=1e-5)


def test_tiling_config_rejects_bad_values():
    with pytest.raises(ConfigError, match="'overlap': must be in \\[0, 1\\); got 1.0"):
        TilingConfig(overlap=1.0).validate()
    with pytest.raises(ConfigError, match="'tile_batch': must be >= 1"):
        TilingConfig(tile_batch=0).validate()


@pytest.mark.parametrize(
    "tiling, message",
    [
        (TilingConfig(tile=33), "config key 'tiling.tile': must be a multiple of 32 for this segmenter model; got 33"),
        (TilingConfig(tile=48), "config key 'tiling.tile': must be a multiple of 32 for this segmenter model; got 48"),
        (TilingConfig(tile=0), "config key 'tiling.tile': must be >= 1; got 0"),
        (TilingConfig(tile=64, overlap=-0.1), "config key 'tiling.overlap': must be in"),
        (TilingConfig(tile_batch=0), "config key 'tiling.tile_batch': must be >= 1"),
    ],
)
def test_model_tiling_refuses_tiles_the_model_cannot_take(tiling, message):  # issue 15 item 1
    with pytest.raises(ConfigError, match="^" + re.escape(message)):
        model_tiling(tiling, 64, 32, "segmenter")


def test_model_tiling_fills_in_the_training_tile_and_keeps_the_rest():
    assert model_tiling(TilingConfig(tile=None), 96, 32, "segmenter") == TilingConfig(tile=96)
    assert model_tiling(None, 96, 32, "segmenter") == TilingConfig(tile="auto")  # chosen per image later
    chosen = TilingConfig(tile=None, overlap=0.5, window="hann", tile_batch=3, tta="flip2")
    assert model_tiling(chosen, 64, 32, "segmenter") == TilingConfig(64, 0.5, "hann", 3, "flip2")
    assert model_tiling(TilingConfig(tile=128), 64, 32, "segmenter").tile == 128
    assert chosen.tile is None  # the caller's config is not changed


def test_drivers_refuse_an_unresolved_tile():
    with pytest.raises(ValueError, match="model_tiling"):
        sliding_window_inference(random_image(8, 8), first_channel, TilingConfig())
    with pytest.raises(ValueError, match="choose_tiling"):
        sliding_window_inference(random_image(8, 8), first_channel, TilingConfig(tile=None))


def test_seam_score_is_one_without_seams_and_high_with_them():
    smooth = np.tile(np.linspace(0, 1, 128, dtype=np.float32), (128, 1))
    assert seam_score(smooth, 32, 0.0) == pytest.approx(1.0)
    blocky = smooth + np.repeat(np.arange(4), 32)[None, :] * 0.5  # steps at every tile border
    assert seam_score(blocky, 32, 0.0) > 10


@pytest.fixture(scope="module")
def unet():
    """A real segmentation network (random init): its tiles disagree near their borders."""
    import segmentation_models as sm

    tf.keras.utils.set_random_seed(0)
    model = sm.Unet("resnet18", encoder_weights=None, decoder_filters=(32, 16, 8, 8, 4), input_shape=(None, None, 3))
    return compiled_forward(model, 3)


def test_ramp_and_gaussian_blending_hide_seams_of_a_real_model(unet, shared_data):
    import cv2

    photo = sorted((shared_data / "sky_ade20k" / "images").glob("*.jpg"))[0]
    image = cv2.imread(str(photo))[..., ::-1].astype(np.float32) / 255
    scores = {
        window: seam_score(sliding_window_inference(image, unet, TilingConfig(64, 0.25, window)), 64, 0.25)
        for window in ("constant", "gaussian", "ramp")
    }
    assert scores["gaussian"] < 1.2 and scores["constant"] > 1.5, scores
    assert scores["ramp"] < 1.05, scores
