"""Issue 17: the shrunk last row/column of tiles (exact blending, no redundant tile, graph == numpy) and
``tile: auto`` (the tile that computes the fewest pixels within the memory budget, logged once)."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import tensorflow as tf

from test_tiling import double, first_channel, random_image
from tfsky.progress import Once
from tfsky.tiling import (
    AUTO_OVERLAP_PX,
    CPU_MEMORY_BUDGET_GB,
    IMAGE_BYTES,
    RUNTIME_BYTES,
    FORWARD_BYTES_PER_PIXEL,
    MAX_AUTO_TILE,
    WINDOWS,
    TilingConfig,
    auto_tiling_message,
    available_memory,
    choose_tiling,
    computed_pixels,
    count_tiles,
    model_tiling,
    seam_score,
    sliding_window_graph,
    sliding_window_inference,
    tile_axis,
    tile_stride,
)

SIZES = [(300, 197), (33, 65), (5, 200), (1, 1)]


def axis_tiles(length, tile, overlap, multiple):
    """[(start, end)] of the tiles along one side."""
    starts, last, padded = (np.asarray(v) for v in tile_axis(length, tile, overlap, multiple))
    sizes = [tile] * (len(starts) - 1) + [int(last)]
    return [(int(s), int(s) + size) for s, size in zip(starts, sizes)], int(padded)


@pytest.mark.parametrize("length", [1, 5, 31, 32, 33, 100, 255, 256, 257, 777, 1000, 4096, 8192])
@pytest.mark.parametrize("tile,overlap", [(256, 0.25), (256, 0.0), (96, 0.5), (1024, 64 / 1024)])
def test_last_tile_is_only_as_large_as_it_must_be_and_no_tile_is_redundant(length, tile, overlap):
    tiles, padded = axis_tiles(length, tile, overlap, 32)
    overlap_px = tile - tile_stride(tile, overlap)
    assert tiles[0][0] == 0 and tiles[-1][1] == padded == max(length, tiles[-1][1] - tiles[-1][0])
    assert all(end - start <= tile and (end - start) % 32 == 0 for start, end in tiles)
    assert padded - length < 32  # at most the rounding up to the model's multiple is padding
    for (_, end), (start, _) in zip(tiles, tiles[1:]):
        assert end - start >= overlap_px  # neighbours still share the whole overlap
    margin = overlap_px // 2
    interiors = [(s + (margin if s > 0 else 0), e - (margin if e < padded else 0)) for s, e in tiles]
    for index, (start, end) in enumerate(tiles):  # every tile holds a pixel no other tile's interior holds
        others = [iv for j, iv in enumerate(interiors) if j != index]
        assert any(not any(a <= p < b for a, b in others) for p in range(start, end)), (index, tiles)
    if len(tiles) > 1:  # the last tile adds less than one multiple beyond what it must cover
        assert tiles[-1][1] - tiles[-1][0] < length - tiles[-2][1] + overlap_px + 32


def test_the_8k_grid_computes_fewer_pixels_than_the_old_one_with_the_same_tiles():
    old = computed_pixels(4096, 8192, 256, 0.25)
    new = computed_pixels(4096, 8192, 256, 0.25, multiple=32)
    assert old == 903 * 256 * 256 and count_tiles(4096, 8192, 256, 0.25, 32) == 903
    assert new == (21 * 256) * (42 * 256 + 128)  # the last column is 128 px wide: 64 new pixels + the overlap
    assert new < old


@pytest.mark.parametrize("window", WINDOWS)
@pytest.mark.parametrize("tile,overlap", [(64, 0.25), (96, 0.5)])
def test_both_drivers_blend_shrunk_last_tiles_exactly(window, tile, overlap):
    tiling = TilingConfig(tile, overlap, window, 5)
    spec = tf.TensorSpec([None, None, 3], tf.float32)
    graph = tf.function(lambda image: sliding_window_graph(image, double, tiling, multiple=32), input_signature=[spec])
    shapes = set()

    def record(tiles):
        shapes.add(tuple(tiles.shape[1:3]))
        return first_channel(tiles)

    for height, width in SIZES:
        image = random_image(height, width)
        np.testing.assert_allclose(
            sliding_window_inference(image, record, tiling, multiple=32), image[..., :1], atol=1e-6, rtol=0
        )
        np.testing.assert_allclose(graph(image).numpy(), 2 * image, atol=1e-6, rtol=0)
    assert all(h % 32 == 0 and w % 32 == 0 and h <= tile and w <= tile for h, w in shapes)
    assert any(h != w for h, w in shapes)  # some tiles really were shrunk


def test_graph_driver_equals_numpy_driver_with_shrunk_tiles_on_a_position_dependent_model():
    kernel = tf.constant(np.random.default_rng(1).normal(size=(3, 3, 3, 2)).astype(np.float32))

    def conv(tiles):
        return tf.nn.conv2d(tf.cast(tiles, tf.float32), kernel, 1, "SAME")

    tiling = TilingConfig(tile=64, overlap=0.25, window="gaussian", tile_batch=3)
    spec = tf.TensorSpec([None, None, 3], tf.float32)
    graph = tf.function(lambda image: sliding_window_graph(image, conv, tiling, multiple=32), input_signature=[spec])
    for height, width in [(20, 20), (40, 300), (150, 97)]:
        image = random_image(height, width, seed=2)
        expected = sliding_window_inference(image, conv, tiling, multiple=32)
        assert expected.shape == (height, width, 2)
        np.testing.assert_allclose(graph(image).numpy(), expected, atol=1e-5, rtol=0)
    assert seam_score(expected, 64, 0.25, 32) > 0  # a real, non-trivial output


def test_numpy_driver_batches_each_tile_shape_in_full_batches():
    batches = []

    def record(tiles):
        batches.append(tuple(tiles.shape[:3]))
        return tiles[..., :1]

    # 120 x 90, tile 64 at 25 %: rows at 0, 48 (64 px) and a last row of 32 px at 88; columns at 0 and 26 (64 px)
    sliding_window_inference(random_image(120, 90), record, TilingConfig(64, 0.25, tile_batch=3), multiple=32)
    assert batches == [(3, 64, 64), (1, 64, 64), (2, 32, 64)]


# --- tile: auto ---------------------------------------------------------------------------------------------


def budget_for(tile, batch=1):
    return FORWARD_BYTES_PER_PIXEL * tile * tile * batch


def test_auto_takes_the_largest_multiple_of_32_whose_call_fits_the_budget():
    auto = model_tiling(None, 192, 32, "segmenter")
    chosen = choose_tiling(auto, 32, (4096, 8192), budget_for(700))
    assert (chosen.tile, chosen.overlap, chosen.tile_batch) == (672, AUTO_OVERLAP_PX / 672, 1)
    assert choose_tiling(auto, 32, (4096, 8192), budget_for(1024, batch=3)).tile_batch == 3  # beyond the largest tile
    assert choose_tiling(auto, 32, (4096, 8192), budget_for(4000)).tile == MAX_AUTO_TILE
    assert choose_tiling(auto, 32, (4096, 8192), 0).tile == 256  # nothing fits: the smallest useful tile
    # far fewer pixels through the network than the old 256-px default (1.76x the image)
    assert (
        computed_pixels(4096, 8192, 672, chosen.overlap, 32)
        < 1.25 * 4096 * 8192
        < computed_pixels(4096, 8192, 256, 0.25)
    )


def test_auto_is_the_same_for_every_image_and_the_serving_signature():
    auto = TilingConfig()
    budget = budget_for(700, batch=2)
    anywhere = choose_tiling(auto, 32, None, budget)  # the exported signature: images of any size
    for size in [(4096, 8192), (720, 1280), (1000, 777)]:
        assert choose_tiling(auto, 32, size, budget) == anywhere
    small = choose_tiling(auto, 32, (100, 90), budget)  # capped at the image: the same single tile, fuller batch
    assert small.tile == 128 and small.tile_batch == 8
    image = random_image(100, 90)
    np.testing.assert_allclose(
        sliding_window_inference(image, double, small, multiple=32),  # one tile either way:
        sliding_window_inference(image, double, anywhere, multiple=32),
        atol=1e-6,
        rtol=0,
    )
    assert count_tiles(100, 90, small.tile, small.overlap, 32) == 1


def test_available_memory_is_the_budget_less_the_runtime_and_the_images_in_flight():
    assert available_memory(2.0) == 2e9 - RUNTIME_BYTES - IMAGE_BYTES
    assert available_memory(2.0, held_bytes=0) == 2e9 - RUNTIME_BYTES
    assert available_memory(None) == available_memory(CPU_MEMORY_BUDGET_GB)  # no GPU here


def test_explicit_tile_and_overlap_win_over_auto():
    explicit = model_tiling(TilingConfig(tile=256, overlap=0.25), 192, 32, "segmenter")
    assert choose_tiling(explicit, 32, (4096, 8192), budget_for(1024)) == explicit
    given_overlap = choose_tiling(TilingConfig(overlap=0.5), 32, (4096, 8192), budget_for(1024))
    assert given_overlap.overlap == 0.5 and given_overlap.tile % 32 == 0
    unset = model_tiling(TilingConfig(tile=512), 192, 32, "segmenter")  # overlap not given: 64 px
    assert unset.overlap is None and choose_tiling(unset, 32, (100, 100), 0).overlap == AUTO_OVERLAP_PX / 512
    out = sliding_window_inference(
        random_image(300, 300), first_channel, model_tiling(TilingConfig(tile=64), 64, 32, "x")
    )
    assert out.shape == (300, 300, 1)


def test_the_choice_is_logged_once_per_owner_when_the_image_takes_several_tiles(caplog):
    caplog.set_level(logging.INFO, logger="tfsky")
    requested = TilingConfig(memory_budget=1.25)
    chosen = choose_tiling(requested, 32, (480, 640), budget_for(384))
    announce = Once()  # owned by the object that chose the tiling (a TiledSegmenter, a TiledTranslator)
    for _ in range(3):
        announce(auto_tiling_message(chosen, (480, 640), requested, 32))
    one_tile = choose_tiling(requested, 32, (60, 60), budget_for(384))
    announce(auto_tiling_message(one_tile, (60, 60), requested, 32))
    explicit = TilingConfig(tile=64)
    announce(auto_tiling_message(model_tiling(explicit, 64, 32, "x"), (480, 640), explicit, 32))
    printed = [record.getMessage() for record in caplog.records]
    assert count_tiles(480, 640, chosen.tile, chosen.overlap, 32) > 1
    assert printed == [
        f"tiling auto: tile {chosen.tile}, overlap {AUTO_OVERLAP_PX} px, tile batch {chosen.tile_batch} "
        f"for 640x480 images ({chosen.tile**2 * chosen.tile_batch * FORWARD_BYTES_PER_PIXEL / 1e9:.2f}"
        " GB per call; memory budget 1.25 GB)"
    ]
    Once()(auto_tiling_message(chosen, (480, 640), requested, 32))  # another owner says it again: no global record
    assert [record.getMessage() for record in caplog.records] == printed * 2


def test_tile_and_memory_budget_flags_reach_the_predict_config(cli, tmp_path):
    from tfsky.cli.options import command_config, tiling_flags
    from tfsky.errors import ConfigError
    from tfsky.predict.batch import PredictConfig

    flags = tiling_flags("auto", None, None, None, None, memory_budget=2.0)
    assert command_config(PredictConfig, "predict", None, None, flags).tiling == TilingConfig(memory_budget=2.0)
    assert (
        command_config(PredictConfig, "predict", None, None, tiling_flags(256, None, None, None, None)).tiling.tile
        == 256
    )
    with pytest.raises(ConfigError, match="'predict.tiling.memory_budget': must be > 0"):
        command_config(PredictConfig, "predict", None, ["predict.tiling.memory_budget=0"], {})
    bad = cli("predict", "-m", tmp_path / "m.keras", tmp_path, "-o", tmp_path / "o", "--tile", "big")
    assert bad.exit_code == 1
    assert bad.stderr.strip() == "Error: config key 'tiling.tile': must be auto or a whole number of pixels; got 'big'"


@pytest.mark.parametrize(
    "command,section",
    [
        (["translate", "-m", "m.keras", "in", "-o", "out"], "translate"),
        (["colorize", "-m", "m.keras", "in", "-o", "out"], "colorize"),
        (["export", "-m", "m.keras", "--name", "sky", "--repo", "repo"], "export"),
        (["evaluate", "segmenter", "-m", "m.keras", "--data", "d"], "evaluate"),
        (["evaluate", "translator", "-m", "m.keras"], "evaluate"),
    ],
)
def test_every_tiling_command_takes_the_memory_budget_into_its_config(cli, tmp_path, command, section):
    result = cli(
        *[tmp_path / arg if arg in ("m.keras", "in", "out", "repo", "d") else arg for arg in command],
        "--memory-budget",
        "0",
    )
    assert result.exit_code == 1
    assert result.stderr.strip() == f"Error: config key '{section}.tiling.memory_budget': must be > 0 (GB); got 0.0"
