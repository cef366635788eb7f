"""The working scale: images resized so their short side is a fixed number of pixels.

A segmenter trained on crops of full-resolution photos sees a 128-px square of
grey that may be overcast sky or a concrete wall; at a working scale (short
side ~256-384 px) a crop holds most of the scene. Training data is stored at
that scale (`tfsky.data.cache`) and prediction runs at the same scale before
the probabilities are brought back to full resolution (`tfsky.predict.refine`).
Downscaling uses OpenCV's area interpolation (the anti-aliased mean of the
source pixels); nothing is ever enlarged.
"""

from __future__ import annotations

from typing import Optional

import cv2
import numpy as np
import tensorflow as tf


def working_size(height: int, width: int, short_side: Optional[int]) -> tuple[int, int]:
    """``(height, width)`` with the short side at ``short_side`` (aspect kept, rounded); unchanged if already smaller."""
    if short_side is None or min(height, width) <= short_side:
        return height, width
    factor = short_side / min(height, width)
    return max(1, round(height * factor)), max(1, round(width * factor))


def resize_image(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``[H, W, C]`` image of any dtype OpenCV resizes (uint8, uint16, float16/32) at ``size`` = (height, width)."""
    if image.shape[:2] == tuple(size):
        return image
    dtype = image.dtype
    work = image.astype(np.float32) if dtype == np.float16 else image
    resized = cv2.resize(work, (size[1], size[0]), interpolation=cv2.INTER_AREA)
    return resized.reshape(size[0], size[1], image.shape[2]).astype(dtype, copy=False)


def resize_mask(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A ``uint8 [H, W]`` class-id mask at ``size``.

    Binary (0/1) masks are area-averaged and thresholded at one half, so a thin
    sky strip keeps its place; masks with more class ids take the nearest pixel
    (an average of class ids means nothing).
    """
    if mask.shape == tuple(size):
        return mask
    if mask.max(initial=0) <= 1:
        share = cv2.resize(mask.astype(np.float32), (size[1], size[0]), interpolation=cv2.INTER_AREA)
        return (share >= 0.5).astype(np.uint8)
    return cv2.resize(mask, (size[1], size[0]), interpolation=cv2.INTER_NEAREST_EXACT)


def working_size_graph(height: tf.Tensor, width: tf.Tensor, short_side: int) -> tuple[tf.Tensor, tf.Tensor]:
    """`working_size` in TensorFlow ops (scalar int32 tensors), with the same float64 rounding."""
    size = tf.cast(tf.stack([height, width]), tf.float64)
    factor = tf.minimum(tf.constant(1.0, tf.float64), short_side / tf.reduce_min(size))
    scaled = tf.maximum(1, tf.cast(tf.round(size * factor), tf.int32))
    return scaled[0], scaled[1]
