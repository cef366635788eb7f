"""Blend windows: the 1-D weights each tile's prediction is multiplied by, and their separable sum (`tfsky.tiling`)."""

from __future__ import annotations

from typing import Literal

import numpy as np
import tensorflow as tf

from tfsky.errors import ConfigError

Window = Literal["ramp", "constant", "gaussian", "hann", "spline"]
WINDOWS: tuple[str, ...] = ("ramp", "constant", "gaussian", "hann", "spline")


def blend_window(tile: int, mode: str = "ramp", floor: float = 1e-3, ramp: int = 0) -> np.ndarray:
    """1-D blend weights of a tile, peak 1, floored at ``floor`` (float32, length ``tile``).

    ``ramp``: 1 inside, rising over the first and last ``ramp`` pixels (the
    overlap) as ``0.5 - 0.5 cos(pi (i + 0.5) / ramp)``; where two tiles overlap
    by exactly ``ramp`` pixels their weights sum to 1, so the blend cross-fades
    from one tile to the next and nothing steps at a tile's border (at most half
    the tile on each side; ``ramp`` 0 is ``constant``). ``constant``: all ones
    (plain average). ``gaussian``: sigma = 0.125 * tile
    around the centre, as MONAI. ``hann``: raised cosine sampled at pixel
    centres. ``spline``: the squared spline of Vooban's smoothly-blend-image-
    patches in 1-D, ``2 t**2`` for ``t < 1/2`` and ``1 - 2 (1 - t)**2`` above,
    where ``t`` is a triangle rising from the tile border to its centre. The
    floor keeps weights at the image border (covered by one tile) away from 0.
    """
    return window_tensor(tile, mode, floor, ramp).numpy()


def window_tensor(size, mode: str = "ramp", floor: float = 1e-3, ramp=0) -> tf.Tensor:
    """`blend_window` in TensorFlow ops, for a length known only in the graph (a last, smaller tile)."""
    size = tf.cast(size, tf.float64)
    centre = (size - 1) / 2
    position = tf.range(size, dtype=tf.float64)
    if mode == "ramp":
        ramp = tf.minimum(tf.cast(ramp, tf.float64), tf.floor(size / 2))
        inward = tf.minimum(position, size - 1 - position)  # pixels to the nearer end
        rising = 0.5 - 0.5 * tf.cos(np.pi * (inward + 0.5) / tf.maximum(ramp, 1))
        weights = tf.where(inward < ramp, rising, tf.ones_like(position))  # peak 1 unless all ramp: kept
        return tf.cast(tf.maximum(weights, floor), tf.float32)  # (the cross-fade sums to exactly 1)
    elif mode == "constant":
        weights = tf.ones_like(position)
    elif mode == "gaussian":
        weights = tf.exp(-0.5 * ((position - centre) / (0.125 * size)) ** 2)
    elif mode == "hann":
        weights = 0.5 - 0.5 * tf.cos(2 * np.pi * (position + 0.5) / size)
    elif mode == "spline":
        triangle = 1 - tf.abs(position - centre) / (centre + 1)
        weights = tf.where(triangle < 0.5, 2 * triangle**2, 1 - 2 * (1 - triangle) ** 2)
    else:
        raise ConfigError("window", f"must be one of {', '.join(WINDOWS)}; got {mode!r}")
    return tf.cast(tf.maximum(weights / tf.reduce_max(weights), floor), tf.float32)


def weight_profile(starts: tf.Tensor, length, window, last_window=None) -> tf.Tensor:
    """Sum of the 1-D ``window`` placed at each of ``starts`` (the last at ``last_window`` when given, for a
    smaller last tile): one factor of the separable weight sum."""
    window = tf.convert_to_tensor(window, tf.float32)
    shape = tf.reshape(tf.cast(length, tf.int32), [1])
    if last_window is None:
        regular, last_window = starts, window[:0]
    else:
        regular = starts[:-1]
    last_window = tf.convert_to_tensor(last_window, tf.float32)
    positions = tf.reshape(regular[:, None] + tf.range(tf.shape(window)[0])[None, :], [-1, 1])
    weights = tf.tile(window, tf.shape(regular)[:1])
    last_positions = tf.reshape(starts[-1] + tf.range(tf.shape(last_window)[0]), [-1, 1])
    return tf.scatter_nd(tf.concat([positions, last_positions], 0), tf.concat([weights, last_window], 0), shape)
