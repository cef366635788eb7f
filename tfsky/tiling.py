"""Sliding-window inference on images of any size: THE tiling implementation.

Prediction, translation, data preparation and the serving signature all cut
images the same way:

* Grid (`tile_starts`): tiles of ``tile`` pixels every ``stride = tile -
  round(overlap * tile)`` pixels; the last tile is shifted inward so it ends
  exactly at the border, so nothing is dropped and the output has exactly the
  input's size. A side shorter than the tile is reflect-padded up to it and
  the padding is cropped from the output.
* Blending (`blend_window`): each tile's prediction is weighted by a window
  and the weighted sum is divided once by the sum of weights. The 2-D window is
  the outer product of a 1-D window with itself, so the weight sum is separable
  too: ``wsum[y, x] = wy[y] * wx[x]`` (`weight_profile`), and only one float32
  accumulator of the output's size is kept.
* Two drivers over the same helpers: `sliding_window_inference` (numpy,
  memory-bounded: tiles are cut in raster order straight from the image into
  batches of ``tile_batch``; nothing else of image size is allocated) and
  `sliding_window_graph` (TensorFlow ops only, for a ``tf.function`` with
  unknown height and width, e.g. a SavedModel signature).
* Optional flip test-time augmentation (`with_flip_tta`), averaged per tile
  before blending.

The grid and reflection helpers are written in TensorFlow ops so the same code
runs eagerly (the numpy driver takes ``.numpy()``) and in a graph.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Iterator, Literal, Optional

import numpy as np
import tensorflow as tf

from tfsky.errors import ConfigError

Window = Literal["constant", "gaussian", "hann", "spline"]
Tta = Literal["none", "flip2", "flip4"]
Resolution = Literal["working", "full"]
WINDOWS: tuple[str, ...] = ("constant", "gaussian", "hann", "spline")
PredictBatch = Callable[[object], object]  # [B, t, t, C] tiles -> [B, t, t, K] predictions

# Axes of a [B, H, W, C] batch flipped by each TTA variant (identity first).
_FLIPS: dict[str, tuple[tuple[int, ...], ...]] = {
    "none": ((),),
    "flip2": ((), (2,)),
    "flip4": ((), (2,), (1,), (1, 2)),
}


@dataclasses.dataclass
class TilingConfig:
    """How an image is cut into tiles and blended back.

    Args:
        tile: Optional[int]. Tile side in pixels. Defaults to None (the model's training tile size).
        overlap: float. Fraction of the tile shared by neighbours, in [0, 1). Defaults to 0.25.
        window: str. Blend window: ``constant``, ``gaussian``, ``hann`` or ``spline``. Defaults to ``gaussian``.
        tile_batch: int. Tiles per model call. Defaults to 8.
        tta: str. Flip test-time augmentation: ``none``, ``flip2`` (+ horizontal flip) or ``flip4``
            (+ vertical and both). Defaults to ``none``.
        resolution: str. ``working``: a model trained at a working scale
            (`tfsky.data.scale`) tiles the image resized to that scale and its
            probabilities are refined back to full size (`tfsky.predict.refine`);
            ``full``: tiles of the full-resolution image. Models trained at native
            resolution always use ``full``. Defaults to ``working``.
    """

    tile: Optional[int] = None
    overlap: float = 0.25
    window: Window = "gaussian"
    tile_batch: int = 8
    tta: Tta = "none"
    resolution: Resolution = "working"

    def validate(self) -> None:
        if self.tile is not None and self.tile < 1:
            raise ConfigError("tile", f"must be >= 1; got {self.tile}")
        if not 0 <= self.overlap < 1:
            raise ConfigError("overlap", f"must be in [0, 1); got {self.overlap}")
        if self.tile is not None and tile_stride(self.tile, self.overlap) < 1:
            raise ConfigError("overlap", f"{self.overlap} leaves no stride with tile {self.tile}")
        if self.tile_batch < 1:
            raise ConfigError("tile_batch", f"must be >= 1; got {self.tile_batch}")


def model_tiling(tiling: Optional[TilingConfig], model_tile: int, multiple: int, model: str) -> TilingConfig:
    """The tiling a model runs with: ``tile=None`` filled in with ``model_tile``, validated, and the
    tile checked against the model's size constraint (sides a multiple of ``multiple``).

    Every tiled model (segmenter, translator, the serving signature) starts here, so a bad tile is one
    `ConfigError` naming ``tiling.<key>`` before any image is read or any file is written.

    Args:
        tiling: Optional[TilingConfig]. The requested tiling. Defaults to the `TilingConfig` defaults.
        model_tile: int. The model's training tile, used when ``tiling.tile`` is None.
        multiple: int. Tile sides must be a multiple of this (2**downsamplings of the network).
        model: str. How the error names the model, e.g. ``segmenter``.
    """
    tiling = tiling or TilingConfig()
    resolved = dataclasses.replace(tiling, tile=model_tile if tiling.tile is None else tiling.tile)
    try:
        resolved.validate()
    except ConfigError as err:
        raise ConfigError(f"tiling.{err.key}", err.problem) from None
    if resolved.tile % multiple:
        raise ConfigError("tiling.tile",
                          f"must be a multiple of {multiple} for this {model} model; got {resolved.tile}")
    return resolved


def compiled_forward(model, channels: int, size: Optional[int] = None) -> PredictBatch:
    """``model`` in inference mode as one ``tf.function`` over float32 [B, H, W, channels] tiles, traced once.

    ``size`` fixes H = W (a model that only takes one input size); None takes any.
    """
    spec = tf.TensorSpec([None, size, size, channels], tf.float32)
    return tf.function(lambda tiles: model(tiles, training=False), input_signature=[spec])


def tile_stride(tile: int, overlap: float) -> int:
    """Distance between tile origins: ``tile - round(overlap * tile)``."""
    return tile - int(round(overlap * tile))


def tile_starts(length, tile: int, overlap: float) -> tf.Tensor:
    """Tile origins along one side of ``length`` pixels (Python int or scalar tensor).

    Origins are ``0, stride, 2 * stride, ...`` with the last one moved inward to
    ``max(length, tile) - tile`` so the tiles end exactly at the border. A side
    shorter than the tile has the single origin 0 (it is reflect-padded).
    """
    stride = tile_stride(tile, overlap)
    if stride < 1:
        raise ConfigError("overlap", f"{overlap} leaves no stride with tile {tile}")
    span = tf.maximum(tf.cast(length, tf.int32), tile) - tile
    count = (span + stride - 1) // stride + 1
    return tf.minimum(tf.range(count) * stride, span)


def count_tiles(height: int, width: int, tile: int, overlap: float) -> int:
    """Number of tiles `sliding_window_inference` cuts from a ``height x width`` image."""
    return int(tf.size(tile_starts(height, tile, overlap)) * tf.size(tile_starts(width, tile, overlap)))


def reflect_indices(length, size) -> tf.Tensor:
    """Indices ``0 .. size-1`` folded into ``[0, length)`` by mirror reflection (edge not repeated).

    Works for any ``size`` (pads larger than the image reflect back and forth)
    and for ``length == 1``.
    """
    length = tf.cast(length, tf.int32)
    period = tf.maximum(2 * (length - 1), 1)
    index = tf.range(size) % period
    return tf.where(index >= length, period - index, index)


def blend_window(tile: int, mode: str = "gaussian", floor: float = 1e-3) -> np.ndarray:
    """1-D blend weights of a tile, peak 1, floored at ``floor`` (float32, length ``tile``).

    ``constant``: all ones (plain average). ``gaussian``: sigma = 0.125 * tile
    around the centre, as MONAI. ``hann``: raised cosine sampled at pixel
    centres. ``spline``: the squared spline of Vooban's smoothly-blend-image-
    patches in 1-D, ``2 t**2`` for ``t < 1/2`` and ``1 - 2 (1 - t)**2`` above,
    where ``t`` is a triangle rising from the tile border to its centre. The
    floor keeps weights at the image border (covered by one tile) away from 0.
    """
    centre = (tile - 1) / 2
    position = np.arange(tile, dtype=np.float64)
    if mode == "constant":
        weights = np.ones(tile)
    elif mode == "gaussian":
        weights = np.exp(-0.5 * ((position - centre) / (0.125 * tile)) ** 2)
    elif mode == "hann":
        weights = 0.5 - 0.5 * np.cos(2 * np.pi * (position + 0.5) / tile)
    elif mode == "spline":
        triangle = 1 - np.abs(position - centre) / (centre + 1)
        weights = np.where(triangle < 0.5, 2 * triangle**2, 1 - 2 * (1 - triangle) ** 2)
    else:
        raise ConfigError("window", f"must be one of {', '.join(WINDOWS)}; got {mode!r}")
    return np.maximum(weights / weights.max(), floor).astype(np.float32)


def weight_profile(starts: tf.Tensor, length, window: np.ndarray) -> tf.Tensor:
    """Sum of the 1-D ``window`` placed at each of ``starts``: one factor of the separable weight sum."""
    tile = tf.shape(window)[0]
    positions = tf.reshape(starts[:, None] + tf.range(tile)[None, :], [-1, 1])
    weights = tf.tile(tf.convert_to_tensor(window, tf.float32), tf.shape(starts)[:1])
    return tf.scatter_nd(positions, weights, tf.reshape(tf.cast(length, tf.int32), [1]))


def with_flip_tta(predict_batch: PredictBatch, tta: str | None) -> PredictBatch:
    """Wrap ``predict_batch`` so each batch is also predicted flipped; flips are undone and averaged.

    One model call per flip keeps the batch size unchanged. Works on numpy
    arrays and tensors, eagerly and in graphs.
    """
    flips = _FLIPS[tta or "none"]
    if len(flips) == 1:
        return predict_batch

    def predict(tiles):
        tiles = tf.convert_to_tensor(tiles)
        total = 0.0
        for axes in flips:
            flipped = tf.reverse(tiles, axes) if axes else tiles
            pred = tf.cast(predict_batch(flipped), tf.float32)
            total += tf.reverse(pred, axes) if axes else pred
        return total / len(flips)

    return predict


def sliding_window_inference(
    image: np.ndarray,
    predict_batch: PredictBatch,
    tiling: TilingConfig,
    *,
    progress: Callable[[int, int], None] | None = None,
) -> np.ndarray:
    """Predict a large [H, W, C] image tile by tile; returns float32 [H, W, K].

    Tiles are cut in raster order in the image's own dtype (``predict_batch``
    normalises them) and sent in full batches of ``tiling.tile_batch`` (only the
    very last batch may be smaller). Memory beyond the input is one float32
    accumulator of the output's size plus one batch.

    Args:
        image: np.ndarray. [H, W, C] pixels, any dtype.
        predict_batch: callable. [B, tile, tile, C] tiles -> [B, tile, tile, K] predictions.
        tiling: TilingConfig. Tile (set, see `model_tiling`), overlap, window, tile batch and TTA.
        progress: callable. Called as ``progress(done_tiles, total_tiles)`` after each batch. Defaults to None.
    """
    tile, overlap = _tile_of(tiling), tiling.overlap
    height, width = image.shape[:2]
    padded = _reflect_pad(image, tile)
    starts_y, starts_x = tile_starts(height, tile, overlap), tile_starts(width, tile, overlap)
    origins = [(y, x) for y in starts_y.numpy() for x in starts_x.numpy()]
    window_1d = blend_window(tile, tiling.window)
    window_2d = np.outer(window_1d, window_1d)[..., None]
    predict = with_flip_tta(predict_batch, tiling.tta)
    total = None
    done = 0
    for batch_origins, tiles in _tile_batches(padded, origins, tile, tiling.tile_batch):
        preds = np.asarray(predict(tiles), dtype=np.float32)
        if total is None:
            total = np.zeros(padded.shape[:2] + preds.shape[-1:], np.float32)
        for (y, x), pred in zip(batch_origins, preds):
            total[y : y + tile, x : x + tile] += pred * window_2d
        done += len(batch_origins)
        if progress is not None:
            progress(done, len(origins))
    weights_y = weight_profile(starts_y, total.shape[0], window_1d).numpy()
    _divide_by_weights(total, weights_y, weight_profile(starts_x, total.shape[1], window_1d).numpy())
    if total.shape[:2] != (height, width):
        total = np.ascontiguousarray(total[:height, :width])
    return total


def _tile_of(tiling: TilingConfig) -> int:
    if tiling.tile is None:  # a caller bug: `model_tiling` fills it in
        raise ValueError("tiling.tile is None; resolve it with model_tiling() first")
    return tiling.tile


def _reflect_pad(image: np.ndarray, tile: int) -> np.ndarray:
    """Reflect-pad sides shorter than ``tile`` up to it (bottom/right); larger images are returned as is."""
    height, width = image.shape[:2]
    if height >= tile and width >= tile:
        return image
    rows = reflect_indices(height, max(height, tile)).numpy()
    cols = reflect_indices(width, max(width, tile)).numpy()
    return image[rows][:, cols]


def _tile_batches(image: np.ndarray, origins, tile: int, tile_batch: int) -> Iterator[tuple[list, np.ndarray]]:
    """Yield ``(origins, tiles)`` batches of ``tile_batch`` tiles, cut lazily in raster order."""
    for first in range(0, len(origins), tile_batch):
        batch = origins[first : first + tile_batch]
        yield batch, np.stack([image[y : y + tile, x : x + tile] for y, x in batch])


def _divide_by_weights(total: np.ndarray, weights_y: np.ndarray, weights_x: np.ndarray, band: int = 256) -> None:
    """``total /= wy[:, None] * wx[None, :]`` in place, band by band (no full-size temporary)."""
    for row in range(0, total.shape[0], band):
        total[row : row + band] /= (weights_y[row : row + band, None] * weights_x[None, :])[..., None]


def sliding_window_graph(image: tf.Tensor, predict_batch: PredictBatch, tiling: TilingConfig) -> tf.Tensor:
    """The same tiled prediction in TensorFlow ops only: [H, W, C] -> float32 [H, W, K].

    Usable inside a ``tf.function`` whose input has unknown height and width
    (the serving signature). Tiles are gathered straight from the image with
    reflected indices (no padded copy), predicted ``tiling.tile_batch`` at a
    time in a ``tf.while_loop`` and scattered into one accumulator. Matches
    `sliding_window_inference` to float32 rounding.
    """
    tile, overlap, tile_batch = _tile_of(tiling), tiling.overlap, tiling.tile_batch
    image = tf.convert_to_tensor(image)
    height, width = tf.shape(image)[0], tf.shape(image)[1]
    starts_y = tile_starts(height, tile, overlap)
    starts_x = tile_starts(width, tile, overlap)
    padded_size = (tf.maximum(height, tile), tf.maximum(width, tile))
    rows = reflect_indices(height, padded_size[0])
    cols = reflect_indices(width, padded_size[1])
    grid_y, grid_x = tf.meshgrid(starts_y, starts_x, indexing="ij")
    origins = tf.stack([tf.reshape(grid_y, [-1]), tf.reshape(grid_x, [-1])], axis=1)
    offsets = tf.stack(tf.meshgrid(tf.range(tile), tf.range(tile), indexing="ij"), axis=-1)
    window_1d = blend_window(tile, tiling.window)
    window_2d = tf.constant(np.outer(window_1d, window_1d)[None, ..., None])
    predict = with_flip_tta(predict_batch, tiling.tta)

    def weighted_batch(first):
        positions = origins[first : first + tile_batch, None, None, :] + offsets[None]
        source = tf.stack([tf.gather(rows, positions[..., 0]), tf.gather(cols, positions[..., 1])], axis=-1)
        preds = tf.cast(predict(tf.gather_nd(image, source)), tf.float32)
        return positions, preds * window_2d

    positions, weighted = weighted_batch(0)
    total = tf.scatter_nd(positions, weighted, tf.concat([tf.stack(padded_size), tf.shape(weighted)[-1:]], 0))

    def body(first, total):
        positions, weighted = weighted_batch(first)
        return first + tile_batch, tf.tensor_scatter_nd_add(total, positions, weighted)

    _, total = tf.while_loop(
        lambda first, _: first < tf.shape(origins)[0], body, (tf.constant(tile_batch), total),
        parallel_iterations=1,
    )
    weights = weight_profile(starts_y, padded_size[0], window_1d)[:, None] * weight_profile(
        starts_x, padded_size[1], window_1d
    )[None, :]
    return (total / weights[..., None])[:height, :width]


def seam_score(prob: np.ndarray, tile: int, overlap: float) -> float:
    """How visible tile borders are: mean |step| between neighbours across borders / inside tiles.

    Borders are the first and last pixel columns/rows of every tile of the grid
    ``(tile, overlap)`` that lie inside the image. 1 means seams are invisible;
    a hard seam gives values well above 1. ``prob`` is [H, W] or [H, W, K].
    """
    prob = np.asarray(prob, np.float32)
    prob = prob.reshape(prob.shape[:2] + (-1,))
    border_steps, inner_steps = [], []
    for axis in (0, 1):
        steps = np.abs(np.diff(prob, axis=axis))  # steps[i] is between pixels i and i + 1
        length = prob.shape[axis]
        starts = tile_starts(length, tile, overlap).numpy()
        edges = {s - 1 for s in starts if s > 0} | {s + tile - 1 for s in starts if s + tile < length}
        is_border = np.zeros(length - 1, bool)
        is_border[np.array(sorted(edges), dtype=np.intp)] = True
        border_steps.append(np.compress(is_border, steps, axis=axis).ravel())
        inner_steps.append(np.compress(~is_border, steps, axis=axis).ravel())
    border = np.concatenate(border_steps)
    inner = np.concatenate(inner_steps)
    if border.size == 0 or inner.size == 0 or inner.mean() == 0:
        return float("nan")
    return float(border.mean() / inner.mean())
