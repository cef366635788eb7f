"""Training augmentation: paired geometric transforms and HDR photometric jitter.

Geometric: ONE random affine matrix per sample (rotation, shift, shear, zoom,
horizontal flip about the patch centre, as Keras' ``ImageDataGenerator``) is
applied to the image (bilinear) and to the mask (nearest) with the same
matrix, so both see the exact same geometry; outside the source area the
image gets ``fill`` and the mask ``mask_fill`` (0, or 255 = ignore for all-sky
frames). The warp itself is OpenCV's
``warpAffine`` (through ``tf.numpy_function``, so it runs inside ``tf.data``):
on 256-pixel float32 RGB patches it is ~8x faster than TensorFlow's
``ImageProjectiveTransformV3``, which re-derives the source coordinates for
every channel of every pixel (same matrices and fill; values within 1e-4).

Photometric, HDR: exposure ``x * 2**e`` and gamma ``x ** exp(g)`` on LINEAR
radiance, before the log transform. LDR (`color_jitter`): desaturation, a grey
haze veil, brightness and white balance (per-channel gains) in model space,
clipped to [0, 1].

All randomness is stateless TensorFlow (``seed`` is a ``[2]`` int tensor), so a
pipeline seeded once is reproducible.
"""

from __future__ import annotations

import math

import cv2
import numpy as np
import tensorflow as tf

from tfsky.data.config import AugmentConfig
from tfsky.io.images import REC709_LUMA


def affine_transforms(
    height: int,
    width: int,
    rotation: tf.Tensor,
    shift_x: tf.Tensor,
    shift_y: tf.Tensor,
    shear: tf.Tensor,
    zoom_x: tf.Tensor,
    zoom_y: tf.Tensor,
    flip: tf.Tensor,
) -> tf.Tensor:
    """``[B, 8]`` projective transforms (output pixel -> input pixel) for ``ImageProjectiveTransformV3``.

    Each argument is a ``[B]`` float tensor: ``rotation`` and ``shear`` in
    degrees, ``shift_*`` in pixels, ``zoom_*`` scale factors (> 1 zooms out),
    ``flip`` 1.0 to mirror left-right, else 0.0. All act about the patch centre.
    """
    theta, phi = rotation * (math.pi / 180), shear * (math.pi / 180)
    cx, cy = (width - 1) / 2, (height - 1) / 2
    sign = 1 - 2 * flip  # -1 mirrors x about the centre
    cos, sin = tf.cos(theta), tf.sin(theta)
    # Centred coordinates u = sign * (x - cx), v = y - cy go through zoom, shear, rotation, shift:
    #   [a b] = R(theta) @ [[1, -sin(phi)], [0, cos(phi)]] @ diag(zoom_x, zoom_y)
    a, b = cos * zoom_x, (-cos * tf.sin(phi) - sin * tf.cos(phi)) * zoom_y
    c, d = sin * zoom_x, (-sin * tf.sin(phi) + cos * tf.cos(phi)) * zoom_y
    a0, a1 = a * sign, b
    b0, b1 = c * sign, d
    a2 = cx + shift_x - a0 * cx - a1 * cy
    b2 = cy + shift_y - b0 * cx - b1 * cy
    zeros = tf.zeros_like(a0)
    return tf.stack([a0, a1, a2, b0, b1, b2, zeros, zeros], axis=1)


def random_affine(seed: tf.Tensor, batch: int | tf.Tensor, height: int, width: int, cfg: AugmentConfig) -> tf.Tensor:
    """``[B, 8]`` random transforms drawn from the ranges in ``cfg`` (stateless, from ``seed`` ``[2]``)."""
    seeds = tf.random.experimental.stateless_split(seed, 7)

    def uniform(index: int, bound: float, center: float = 0.0) -> tf.Tensor:
        return tf.random.stateless_uniform([batch], seeds[index], center - bound, center + bound)

    flip = tf.zeros([batch])
    if cfg.horizontal_flip:
        flip = tf.cast(tf.random.stateless_uniform([batch], seeds[6]) < 0.5, tf.float32)
    return affine_transforms(
        height,
        width,
        rotation=uniform(0, cfg.rotation),
        shift_x=uniform(1, cfg.shift * width),
        shift_y=uniform(2, cfg.shift * height),
        shear=uniform(3, cfg.shear),
        zoom_x=uniform(4, cfg.zoom, 1.0),
        zoom_y=uniform(5, cfg.zoom, 1.0),
        flip=flip,
    )


def apply_affine(image: tf.Tensor, mask: tf.Tensor, transforms: tf.Tensor, fill: float = 0.0, mask_fill: int = 0):
    """Warp ``image`` and ``mask`` by the same ``transforms`` (the ``[B, 8]`` of `affine_transforms`).

    ``image`` (``[B, H, W, C]``) is sampled bilinearly with ``fill`` outside
    the source; ``mask`` (``[B, H, W, K]``) by nearest neighbour with
    ``mask_fill`` outside. Both in a dtype OpenCV warps (uint8, uint16, int16, float32,
    float64). Works eagerly and in graphs (``tf.data``).

    Returns:
        ``(image, mask)`` with the dtypes and shapes they came in.
    """
    warped_image, warped_mask = tf.numpy_function(
        lambda images, masks, matrices: _warp_batch(images, masks, matrices, fill, mask_fill),
        [image, mask, tf.cast(transforms, tf.float32)],
        [image.dtype, mask.dtype],
        stateful=False,
    )
    return tf.ensure_shape(warped_image, image.shape), tf.ensure_shape(warped_mask, mask.shape)


def _warp_batch(images: np.ndarray, masks: np.ndarray, matrices: np.ndarray, fill: float, mask_fill: int):
    """`apply_affine` in numpy: one ``cv2.warpAffine`` per image and per mask, written in place into the outputs."""
    warped_images, warped_masks = np.empty_like(images), np.empty_like(masks)
    size = (images.shape[2], images.shape[1])  # OpenCV wants (width, height)
    for index, matrix in enumerate(matrices[:, :6].reshape(-1, 2, 3)):  # output pixel -> input pixel, as given
        for source, target, interpolation, value in (
            (images, warped_images, cv2.INTER_LINEAR, fill),
            (masks, warped_masks, cv2.INTER_NEAREST, float(mask_fill)),
        ):
            cv2.warpAffine(
                source[index], matrix, size, dst=target[index], flags=interpolation | cv2.WARP_INVERSE_MAP,
                borderMode=cv2.BORDER_CONSTANT, borderValue=(value,) * 4,
            )  # fmt: skip
    return warped_images, warped_masks


def photometric(radiance: tf.Tensor, seed: tf.Tensor, cfg: AugmentConfig) -> tf.Tensor:
    """Per sample of ``[B, H, W, C]`` radiance: exposure ``x * 2**U(-ev, ev)``, then gamma ``x ** exp(U(-g, g))``."""
    batch = tf.shape(radiance)[0]
    exposure_seed, gamma_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    stops = tf.random.stateless_uniform([batch, 1, 1, 1], exposure_seed, -cfg.exposure_ev, cfg.exposure_ev)
    radiance = radiance * tf.pow(2.0, stops)
    if cfg.gamma > 0:
        power = tf.exp(tf.random.stateless_uniform([batch, 1, 1, 1], gamma_seed, -cfg.gamma, cfg.gamma))
        radiance = tf.pow(tf.maximum(radiance, 0.0), power)
    return radiance


def color_jitter(image: tf.Tensor, seed: tf.Tensor, cfg: AugmentConfig) -> tf.Tensor:
    """Per sample of model-space LDR ``[B, H, W, C]``: colours pulled towards grey by ``U(0, saturation)``, a grey
    veil ``(1 - t) x + t a`` (``t ~ U(0, haze)``, ``a ~ U(0.6, 1)``), then brightness ``2**U(-b, b)`` times
    per-channel white-balance gains ``exp(U(-w, w))``, clipped to [0, 1]: the scene's air and colour, then the
    camera's exposure and colour drift. A switched-off part leaves the image exactly as it was."""
    batch, channels = tf.shape(image)[0], tf.shape(image)[-1]
    seeds = tf.unstack(tf.random.experimental.stateless_split(seed, 5))

    def per_sample(seed: tf.Tensor, low: float, high: float, width=1) -> tf.Tensor:
        return tf.random.stateless_uniform([batch, 1, 1, width], seed, low, high)

    if cfg.saturation:
        luminance = tf.reduce_sum(image * tf.constant(REC709_LUMA, tf.float32), axis=-1, keepdims=True)
        image += per_sample(seeds[0], 0.0, cfg.saturation) * (luminance - image)
    if cfg.haze:
        image += per_sample(seeds[1], 0.0, cfg.haze) * (per_sample(seeds[2], 0.6, 1.0) - image)
    stops = per_sample(seeds[3], -cfg.brightness, cfg.brightness)
    gains = per_sample(seeds[4], -cfg.white_balance, cfg.white_balance, channels)
    return tf.clip_by_value(image * tf.pow(2.0, stops) * tf.exp(gains), 0.0, 1.0)
