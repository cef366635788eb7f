"""The one tiled-prediction algorithm, with two drivers: `sliding_window_inference` (numpy, memory-bounded)
and `sliding_window_graph` (TensorFlow ops only); test-time augmentation (`with_tta`) wraps the model call."""

from __future__ import annotations

from typing import Any, Callable, Iterator, Optional

import numpy as np
import tensorflow as tf

from tfsky.tiling.config import TilingConfig, overlap_of, resolved_tile
from tfsky.tiling.grid import overlap_pixels, reflect_indices, tile_axis
from tfsky.tiling.windows import blend_window, weight_profile, window_tensor

PredictBatch = Callable[[Any], Any]  # [B, t, t, C] tiles -> [B, t, t, K] predictions

# Each TTA variant's transforms of a [B, H, W, C] batch, identity first: (axes flipped, then quarter turns).
_TRANSFORMS: dict[str, tuple[tuple[tuple[int, ...], int], ...]] = {
    "none": (((), 0),),
    "flip2": (((), 0), ((2,), 0)),
    "flip4": (((), 0), ((2,), 0), ((1,), 0), ((1, 2), 0)),
    "rot4": tuple(((), turns) for turns in range(4)),
    "rot8": tuple((axes, turns) for axes in ((), (2,)) for turns in range(4)),
}


def compiled_forward(model, channels: int, size: Optional[int] = None) -> PredictBatch:
    """``model`` in inference mode as one ``tf.function`` over float32 [B, H, W, channels] tiles, traced once.

    ``size`` fixes H = W (a model that only takes one input size); None takes any.
    """
    spec = tf.TensorSpec([None, size, size, channels], tf.float32)
    return tf.function(lambda tiles: model(tiles, training=False), input_signature=[spec])


def with_tta(predict_batch: PredictBatch, tta: str | None) -> PredictBatch:
    """Wrap ``predict_batch`` so each batch is also predicted transformed (`_TRANSFORMS`); each prediction is
    transformed back (rotated back, then flipped back) and the predictions are averaged.

    One model call per transform keeps the batch size unchanged. A quarter turn swaps a tile's sides: every
    tile of a fixed-size model is square, and a model taking any multiple of its size takes the swapped
    sides too, so no tile needs padding. Works on numpy arrays and tensors, eagerly and in graphs.
    """
    transforms = _TRANSFORMS[tta or "none"]
    if len(transforms) == 1:
        return predict_batch

    def predict(tiles):
        tiles = tf.convert_to_tensor(tiles)
        total = 0.0
        for axes, turns in transforms:
            moved = tf.reverse(tiles, axes) if axes else tiles
            moved = tf.image.rot90(moved, turns) if turns else moved
            pred = tf.cast(predict_batch(moved), tf.float32)
            pred = tf.image.rot90(pred, 4 - turns) if turns else pred
            total += tf.reverse(pred, axes) if axes else pred
        return total / len(transforms)

    return predict


def sliding_window_inference(
    image: np.ndarray,
    predict_batch: PredictBatch,
    tiling: TilingConfig,
    *,
    progress: Callable[[int, int], None] | None = None,
    multiple: Optional[int] = None,
) -> np.ndarray:
    """Predict a large [H, W, C] image tile by tile; returns float32 [H, W, K].

    Tiles are cut in raster order in the image's own dtype (``predict_batch``
    normalises them) and sent in full batches of ``tiling.tile_batch``, one tile
    shape at a time (only the last batch of each shape may be smaller). Memory
    beyond the input is one float32 accumulator of the output's size plus one batch.

    Args:
        image: np.ndarray. [H, W, C] pixels, any dtype.
        predict_batch: callable. [B, h, w, C] tiles -> [B, h, w, K] predictions.
        tiling: TilingConfig. Tile (set, see `model_tiling`), overlap, window, tile batch and TTA.
        progress: callable. Called as ``progress(done_tiles, total_tiles)`` after each batch. Defaults to None.
        multiple: Optional[int]. The model takes sides that are any multiple of this: the last row and
            column of tiles shrink to what they must cover (`tile_axis`). Defaults to None (all tiles square).
    """
    tile, overlap = resolved_tile(tiling), overlap_of(tiling)
    height, width = image.shape[:2]
    (starts_y, last_y, padded_h), (starts_x, last_x, padded_w) = (
        [np.asarray(value) for value in tile_axis(length, tile, overlap, multiple)] for length in (height, width)
    )
    padded = _reflect_pad(image, int(padded_h), int(padded_w))
    rows = [(y, tile) for y in starts_y[:-1]] + [(starts_y[-1], int(last_y))]
    cols = [(x, tile) for x in starts_x[:-1]] + [(starts_x[-1], int(last_x))]
    shapes: dict[tuple[int, int], list[tuple[int, int]]] = {}
    for y, h in rows:
        for x, w in cols:
            shapes.setdefault((h, w), []).append((y, x))
    ramp = overlap_pixels(tile, overlap)
    windows = {length: blend_window(length, tiling.window, ramp=ramp) for length in {tile, int(last_y), int(last_x)}}
    predict = with_tta(predict_batch, tiling.tta)
    total: Optional[np.ndarray] = None
    done, count = 0, len(rows) * len(cols)
    for (h, w), origins in shapes.items():
        window_2d = np.outer(windows[h], windows[w])[..., None]
        for batch_origins, tiles in _tile_batches(padded, origins, h, w, tiling.tile_batch):
            preds = np.asarray(predict(tiles), dtype=np.float32)
            if total is None:
                total = np.zeros(padded.shape[:2] + preds.shape[-1:], np.float32)
            for (y, x), pred in zip(batch_origins, preds):
                total[y : y + h, x : x + w] += pred * window_2d
            done += len(batch_origins)
            if progress is not None:
                progress(done, count)
    profiles = [
        weight_profile(starts, length, windows[tile], windows[last]).numpy()
        for starts, length, last in ((starts_y, padded_h, int(last_y)), (starts_x, padded_w, int(last_x)))
    ]
    assert total is not None  # an image has at least one tile
    _divide_by_weights(total, *profiles)
    if total.shape[:2] != (height, width):
        total = np.ascontiguousarray(total[:height, :width])
    return total


def _reflect_pad(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Reflect-pad ``image`` (bottom/right) to ``height x width``; an image of that size is returned as is."""
    if image.shape[:2] == (height, width):
        return image
    rows = reflect_indices(image.shape[0], height).numpy()
    cols = reflect_indices(image.shape[1], width).numpy()
    return image[rows][:, cols]


def _tile_batches(
    image: np.ndarray, origins, height: int, width: int, tile_batch: int
) -> Iterator[tuple[list, np.ndarray]]:
    """Yield ``(origins, tiles)`` batches of ``tile_batch`` tiles of ``height x width``, cut lazily in raster order."""
    for first in range(0, len(origins), tile_batch):
        batch = origins[first : first + tile_batch]
        yield batch, np.stack([image[y : y + height, x : x + width] for y, x in batch])


def _divide_by_weights(total: np.ndarray, weights_y: np.ndarray, weights_x: np.ndarray, band: int = 256) -> None:
    """``total /= wy[:, None] * wx[None, :]`` in place, band by band (no full-size temporary)."""
    for row in range(0, total.shape[0], band):
        total[row : row + band] /= (weights_y[row : row + band, None] * weights_x[None, :])[..., None]


def sliding_window_graph(
    image: tf.Tensor, predict_batch: PredictBatch, tiling: TilingConfig, multiple: Optional[int] = None
) -> tf.Tensor:
    """The same tiled prediction in TensorFlow ops only: [H, W, C] -> float32 [H, W, K].

    Usable inside a ``tf.function`` whose input has unknown height and width
    (the serving signature). Tiles are gathered straight from the image with
    reflected indices (no padded copy), predicted ``tiling.tile_batch`` at a
    time in a ``tf.while_loop`` per tile shape (the corner tile, the regular
    tiles, the last column, the last row) and scattered into one accumulator.
    Matches `sliding_window_inference` (same ``multiple``) to float32 rounding.
    """
    tile, overlap, tile_batch = resolved_tile(tiling), overlap_of(tiling), tiling.tile_batch
    image = tf.convert_to_tensor(image)
    height, width = tf.shape(image)[0], tf.shape(image)[1]
    starts_y, last_y, padded_h = tile_axis(height, tile, overlap, multiple)
    starts_x, last_x, padded_w = tile_axis(width, tile, overlap, multiple)
    rows, cols = reflect_indices(height, padded_h), reflect_indices(width, padded_w)
    ramp = overlap_pixels(tile, overlap)
    window, window_y, window_x = (window_tensor(size, tiling.window, ramp=ramp) for size in (tile, last_y, last_x))
    predict = with_tta(predict_batch, tiling.tta)

    def group(ys, xs, h, w, window_h, window_w) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
        grid_y, grid_x = tf.meshgrid(ys, xs, indexing="ij")
        origins = tf.stack([tf.reshape(grid_y, [-1]), tf.reshape(grid_x, [-1])], axis=1)
        offsets = tf.stack(tf.meshgrid(tf.range(h), tf.range(w), indexing="ij"), axis=-1)
        return origins, offsets, (window_h[:, None] * window_w[None, :])[None, ..., None]

    def weighted_batch(origins, offsets, window_2d, first):
        positions = origins[first : first + tile_batch, None, None, :] + offsets[None]
        source = tf.stack([tf.gather(rows, positions[..., 0]), tf.gather(cols, positions[..., 1])], axis=-1)
        preds = tf.cast(predict(tf.gather_nd(image, source)), tf.float32)
        return positions, preds * window_2d

    corner = group(starts_y[-1:], starts_x[-1:], last_y, last_x, window_y, window_x)
    positions, weighted = weighted_batch(*corner, 0)
    total = tf.scatter_nd(positions, weighted, tf.concat([tf.stack([padded_h, padded_w]), tf.shape(weighted)[-1:]], 0))
    for ys, xs, h, w, window_h, window_w in (
        (starts_y[:-1], starts_x[:-1], tile, tile, window, window),
        (starts_y[:-1], starts_x[-1:], tile, last_x, window, window_x),
        (starts_y[-1:], starts_x[:-1], last_y, tile, window_y, window),
    ):
        origins, offsets, window_2d = group(ys, xs, h, w, window_h, window_w)

        def body(first, total, origins=origins, offsets=offsets, window_2d=window_2d):
            positions, weighted = weighted_batch(origins, offsets, window_2d, first)
            return first + tile_batch, tf.tensor_scatter_nd_add(total, positions, weighted)

        _, total = tf.while_loop(
            lambda first, _, origins=origins: first < tf.shape(origins)[0],
            body,
            (tf.constant(0), total),
            parallel_iterations=1,
        )
    weights = (
        weight_profile(starts_y, padded_h, window, window_y)[:, None]
        * weight_profile(starts_x, padded_w, window, window_x)[None, :]
    )
    return (total / weights[..., None])[:height, :width]
