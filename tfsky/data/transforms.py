"""Pixel normalisation shared by training, prediction and the serving graph.

LDR images (uint8 / uint16) are scaled to [0, 1]. HDR images (float32 linear
radiance, 0 to ~1e5 with the sun in frame) go through the seed pipeline's log
transform, which compresses five decades of radiance into a range a network
trains on. Everything is written in TensorFlow ops so the same function runs
in `tf.data`, eagerly in `tfsky predict` and inside an exported SavedModel;
the preprocessing saved with a model is the one that is applied, never re-typed.

Log transform, with ``t = input_mul * x`` (x >= 0):

    u = ln(t + log_epsilon)                    if not log_split_around1
    u = t - 1 for t < 1, ln(t) for t >= 1      if log_split_around1 (C1 at t = 1; no epsilon needed)
    v = sign(u) * |u| ** log_pow
    y = (v + output_bias) * output_scale

`invert` undoes each step exactly: in float64 the round trip is exact to
~1e-12 relative over the whole HDR range (night skies at 1e-4 to the sun at
1e5). In float32, the dtype models see, it is ~1e-6 relative for radiance well
above ``log_epsilon``; below that the float32 resolution of the log value
(about 1e-6 of ``|ln(log_epsilon)|``) bounds it.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import numpy as np
import tensorflow as tf

from tfsky.errors import ConfigError

Mode = Literal["ldr", "log"]


@dataclasses.dataclass(frozen=True)
class Preprocess:
    """How pixels are normalised before they reach a model.

    Args:
        mode: str. ``ldr`` scales integer images to [0, 1] (uint8 / 255,
            uint16 / 65535; float inputs are taken as already in [0, 1]).
            ``log`` applies the HDR log transform above. Defaults to ``ldr``.
        input_mul: float. Exposure multiplier applied to radiance first. Defaults to 1.
        log_epsilon: float. Offset inside the log so 0 maps to a finite value. Defaults to 1e-4.
        log_split_around1: bool. Linear below 1, log above. Defaults to False.
        log_pow: float. Power applied to the log value (sign kept). Defaults to 1.
        output_bias: float. Added after the log. Defaults to 0.
        output_scale: float. Multiplies the result. Defaults to 1.
    """

    mode: Mode = "ldr"
    input_mul: float = 1.0
    log_epsilon: float = 1e-4
    log_split_around1: bool = False
    log_pow: float = 1.0
    output_bias: float = 0.0
    output_scale: float = 1.0

    def validate(self) -> None:
        if self.input_mul <= 0:
            raise ConfigError("input_mul", "must be > 0")
        if self.log_epsilon <= 0:
            raise ConfigError("log_epsilon", "must be > 0")
        if self.log_pow <= 0:
            raise ConfigError("log_pow", "must be > 0")
        if self.output_scale == 0:
            raise ConfigError("output_scale", "must not be 0")

    def apply(self, image: tf.Tensor, dtype: tf.DType = tf.float32) -> tf.Tensor:
        """Normalise ``image`` (any numeric dtype) to a float tensor of ``dtype``."""
        image = tf.convert_to_tensor(image)
        if self.mode == "ldr":
            return ldr_to_unit(image, dtype)
        return self.log_forward(tf.cast(image, dtype))

    def log_forward(self, x: tf.Tensor) -> tf.Tensor:
        """The HDR log transform of linear radiance ``x`` (float tensor).

        Steps whose parameter is neutral (a multiplier of 1, a bias of 0) are
        left out: this runs on every training patch, one pass over it per op.
        """
        t = tf.maximum(x, 0)
        if self.input_mul != 1:
            t = t * self.input_mul
        if self.log_split_around1:
            u = tf.where(t < 1, t - 1, tf.math.log(tf.maximum(t, 1)))
        else:
            u = tf.math.log(t + self.log_epsilon)
        v = tf.sign(u) * tf.pow(tf.abs(u), self.log_pow) if self.log_pow != 1 else u
        if self.output_bias != 0:
            v = v + self.output_bias
        return v * self.output_scale if self.output_scale != 1 else v

    def invert(self, y: tf.Tensor) -> tf.Tensor:
        """Exact inverse of `apply` for float inputs: model space back to [0, 1] or radiance."""
        y = tf.convert_to_tensor(y)
        if self.mode == "ldr":
            return y
        v = y / self.output_scale - self.output_bias
        u = tf.sign(v) * tf.pow(tf.abs(v), 1.0 / self.log_pow) if self.log_pow != 1 else v
        if self.log_split_around1:
            t = tf.where(u < 0, u + 1, tf.exp(tf.maximum(u, 0)))
        else:
            t = tf.exp(u) - self.log_epsilon
        return t / self.input_mul


def ldr_to_unit(image: tf.Tensor, dtype: tf.DType = tf.float32) -> tf.Tensor:
    """uint8 / 255, uint16 / 65535; floats pass through (taken to be in [0, 1] already)."""
    if image.dtype == tf.uint8:
        return tf.cast(image, dtype) / 255.0
    if image.dtype == tf.uint16:
        return tf.cast(image, dtype) / 65535.0
    return tf.cast(image, dtype)


def is_hdr(pixels: np.ndarray) -> bool:
    """HDR images are float (linear radiance); LDR images are 8 or 16-bit integers."""
    return np.issubdtype(pixels.dtype, np.floating)


def to_model_range(unit: tf.Tensor) -> tf.Tensor:
    """[0, 1] pixels -> [-1, 1], the range the translators (tanh generators) take and give."""
    return unit * 2.0 - 1.0


def from_model_range(output: tf.Tensor) -> tf.Tensor:
    """Generator output in [-1, 1] -> [0, 1] pixels (clipped)."""
    return tf.clip_by_value((output + 1.0) / 2.0, 0.0, 1.0)
