"""The grid of tiles: where tiles start along each side, how many there are, and the reflection that pads a side.

Tiles of ``tile`` pixels every ``stride = tile - round(overlap * tile)`` pixels; the last tile ends exactly at
the border. Written in TensorFlow ops so the same code runs eagerly and in a graph (`tfsky.tiling`).
"""

from __future__ import annotations

from typing import Optional

import tensorflow as tf

from tfsky.errors import ConfigError


def overlap_pixels(tile: int, overlap: float) -> int:
    """Pixels neighbouring tiles share: ``round(overlap * tile)`` (the ``ramp`` window's ramp)."""
    return int(round(overlap * tile))


def tile_stride(tile: int, overlap: float) -> int:
    """Distance between tile origins: ``tile - overlap_pixels``."""
    return tile - overlap_pixels(tile, overlap)


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


def tile_axis(length, tile: int, overlap: float, multiple: Optional[int] = None):
    """The tiles along one side of ``length`` pixels: ``(origins, last_size, padded_length)`` as tensors.

    Every tile but the last is ``tile`` long, at ``0, stride, 2 * stride, ...``; the last one ends at the
    border. With ``multiple`` (a model that takes any multiple of it) the last tile is only what the
    others leave uncovered plus the overlap, rounded up to ``multiple`` (at most ``tile``), and a side
    shorter than the tile has one tile of its length rounded up; without it the last tile is ``tile``
    long, moved inward (`tile_starts`). ``padded_length`` >= ``length`` is what the image is
    reflect-padded to.
    """
    length = tf.cast(length, tf.int32)
    if multiple is None:
        return tile_starts(length, tile, overlap), tf.constant(tile), tf.maximum(length, tile)
    stride = tile_stride(tile, overlap)
    regular = (tf.maximum(length, tile) - tile + stride - 1) // stride  # tiles before the last one
    covered = regular * stride  # where the last regular tile ends, less the overlap
    last = tf.minimum(tile, (length - covered + multiple - 1) // multiple * multiple)
    origins = tf.concat([tf.range(regular) * stride, tf.reshape(tf.maximum(length - last, 0), [1])], 0)
    return origins, last, tf.maximum(length, last)


def count_tiles(height: int, width: int, tile: int, overlap: float, multiple: Optional[int] = None) -> int:
    """Number of tiles `sliding_window_inference` cuts from a ``height x width`` image."""
    return int(
        tf.size(tile_axis(height, tile, overlap, multiple)[0]) * tf.size(tile_axis(width, tile, overlap, multiple)[0])
    )


def computed_pixels(height: int, width: int, tile: int, overlap: float, multiple: Optional[int] = None) -> int:
    """Pixels the model computes for a ``height x width`` image (before TTA): the sum of its tiles' areas."""
    sides = []
    for length in (height, width):
        origins, last, _ = tile_axis(length, tile, overlap, multiple)
        sides.append((int(tf.size(origins)) - 1) * tile + int(last))
    return sides[0] * sides[1]


def reflect_indices(length, size) -> tf.Tensor:
    """Indices ``0 .. size-1`` folded into ``[0, length)`` by mirror reflection (edge not repeated).

    Works for any ``size`` (pads larger than the image reflect back and forth)
    and for ``length == 1``.
    """
    length = tf.cast(length, tf.int32)
    period = tf.maximum(2 * (length - 1), 1)
    index = tf.range(size) % period
    return tf.where(index >= length, period - index, index)
