"""Bring working-scale probabilities back to full resolution along the image's own edges.

A segmenter that predicts at a working scale (`tfsky.data.scale`) gives a
probability map several times smaller than an 8K panorama; plain upsampling
blurs the sky line. The fast guided filter (He & Sun, 2015) fits, in every
window of the small map, the probability as a linear function of the image's
brightness (``q = a * I + b``), smooths the coefficients, and evaluates them at
full resolution with the full-resolution brightness: edges follow the image,
and only the last step touches full-size pixels. That step runs band by band
(`cv2.remap` of the coefficients for a band of rows), so besides the input
image and the output only a band-sized buffer is ever full width.
"""

from __future__ import annotations

import cv2
import numpy as np
import tensorflow as tf

# Box radius of the filter in working-scale pixels and its regulariser (brightness variance units);
# chosen by `scripts/bench_scale.py`'s refinement study on photos the model never saw (README, "Working scale").
RADIUS = 4
EPS = 1e-3
_BAND = 256  # full-resolution rows evaluated at a time


def brightness(image: np.ndarray) -> np.ndarray:
    """Float32 ``[H, W]`` guide: the channel mean, scaled to ~[0, 1] for 8/16-bit images (model space kept)."""
    scale = {np.dtype(np.uint8): 1 / 255, np.dtype(np.uint16): 1 / 65535}.get(image.dtype, 1.0)
    colour = image[..., :3] if image.shape[-1] >= 3 else image
    return colour.mean(axis=-1, dtype=np.float32) * np.float32(scale)


def refine(
    probabilities: np.ndarray, small_image: np.ndarray, image: np.ndarray, radius: int = RADIUS, eps: float = EPS
) -> np.ndarray:
    """Float32 ``[H, W, K]`` probabilities at ``image``'s size from ``[h, w, K]`` ones at ``small_image``'s size.

    Args:
        probabilities: np.ndarray. Model output at the working scale.
        small_image: np.ndarray. The image the model saw (``image`` resized to ``h x w``).
        image: np.ndarray. The full-resolution image (any dtype `brightness` takes).
        radius: int. Box radius in working-scale pixels (the shipped `RADIUS` unless studying it).
        eps: float. Regulariser: larger values follow the image's edges less.
    """
    guide = brightness(small_image)
    height, width = image.shape[:2]
    channels = probabilities.shape[-1]
    coefficients = [_coefficients(guide, probabilities[..., k], radius, eps) for k in range(channels)]
    out = np.empty((height, width, channels), np.float32)
    map_x = _source_coordinates(width, guide.shape[1])[None, :]
    for top in range(0, height, _BAND):
        rows = slice(top, min(top + _BAND, height))
        map_y = _source_coordinates(height, guide.shape[0])[rows, None]
        band = (map_y.shape[0], width)
        maps = np.ascontiguousarray(np.broadcast_to(map_x, band)), np.ascontiguousarray(np.broadcast_to(map_y, band))
        full_guide = brightness(image[rows])
        for k, (a, b) in enumerate(coefficients):
            out[rows, :, k] = _upsample(a, maps) * full_guide + _upsample(b, maps)
    np.clip(out, 0.0, 1.0, out=out)
    if channels > 1:  # softmax outputs stay a distribution
        out /= np.maximum(out.sum(axis=-1, keepdims=True), 1e-6)
    return out


def _coefficients(guide: np.ndarray, target: np.ndarray, radius: int, eps: float) -> tuple[np.ndarray, np.ndarray]:
    """The smoothed linear coefficients ``(a, b)`` of the guided filter at the working scale."""
    size = (2 * radius + 1, 2 * radius + 1)

    def box(values: np.ndarray) -> np.ndarray:
        return cv2.boxFilter(values, cv2.CV_32F, size, borderType=cv2.BORDER_REFLECT)

    target = np.ascontiguousarray(target, np.float32)
    mean_guide, mean_target = box(guide), box(target)
    variance = box(guide * guide) - mean_guide * mean_guide
    covariance = box(guide * target) - mean_guide * mean_target
    a = covariance / (variance + eps)
    b = mean_target - a * mean_guide
    return box(a), box(b)


def _upsample(values: np.ndarray, maps: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """Bilinear samples of a working-scale map at a band's full-resolution pixel centres."""
    return cv2.remap(values, maps[0], maps[1], cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


def _source_coordinates(full: int, small: int) -> np.ndarray:
    """Float32 position in the small map of each full-resolution pixel centre (OpenCV's resize convention)."""
    return ((np.arange(full, dtype=np.float32) + 0.5) * (small / full) - 0.5).astype(np.float32)


def refine_graph(probabilities: tf.Tensor, small_image: tf.Tensor, image: tf.Tensor) -> tf.Tensor:
    """`refine` in TensorFlow ops, for a SavedModel signature: ``[h, w, K]`` -> ``[H, W, K]`` float32.

    ``small_image`` and ``image`` are normalised (model-space) images, whose
    brightness is what `refine` uses for LDR (``/ 255``) and HDR (model space)
    inputs alike. Same box filter (reflected borders) and the same bilinear
    pixel-centre convention as `refine`, so both agree to float rounding.
    """
    guide = _brightness_graph(small_image)[..., None]
    mean_guide, mean_target = _box_graph(guide), _box_graph(probabilities)
    variance = _box_graph(guide * guide) - mean_guide * mean_guide
    covariance = _box_graph(guide * probabilities) - mean_guide * mean_target
    a = covariance / (variance + EPS)
    b = mean_target - a * mean_guide
    size = tf.shape(image)[:2]
    a_full = tf.image.resize(_box_graph(a), size, method="bilinear")
    b_full = tf.image.resize(_box_graph(b), size, method="bilinear")
    out = tf.clip_by_value(a_full * _brightness_graph(image)[..., None] + b_full, 0.0, 1.0)
    if probabilities.shape[-1] != 1:
        out = out / tf.maximum(tf.reduce_sum(out, axis=-1, keepdims=True), 1e-6)
    return out


def _brightness_graph(image: tf.Tensor) -> tf.Tensor:
    return tf.reduce_mean(tf.cast(image[..., :3], tf.float32), axis=-1)


def _box_graph(values: tf.Tensor) -> tf.Tensor:
    """Mean over (2 RADIUS + 1)^2 windows of ``[h, w, K]`` with mirrored borders (OpenCV's BORDER_REFLECT)."""
    padded = tf.pad(values, [[RADIUS, RADIUS], [RADIUS, RADIUS], [0, 0]], mode="SYMMETRIC")
    return tf.nn.avg_pool2d(padded[None], 2 * RADIUS + 1, 1, "VALID")[0]
