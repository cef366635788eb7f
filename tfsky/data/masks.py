"""The sky cut and the mask scores: where a pixel is sky, and how a mask compares with the truth.

The one home of both, in the lowest layer that compares masks (data: stream
validation), so every user imports them from here:

- `sky_probability`: P(sky) ``[H, W]`` from a model output ``[H, W, K]``;
- `sky_mask` (numpy) and `sky_mask_graph` (the TensorFlow op, for graphs:
  export signatures, the Keras metrics): a pixel is sky when P(sky) ``>=``
  the threshold. Masks, sky fractions, evaluation, export, serving, streams,
  composites and the Keras IoU/F1 all cut here;
- `sky_regions`: the connected sky regions a frame can hold (camera masks
  drop small and enclosed ones; ``drop_enclosed`` masks of photos the
  enclosed ones);
- `iou_f1`: IoU and F1 from confusion counts (numbers, arrays or TF
  tensors), with the one convention for empty masks. `Confusion` holds the
  counts of numpy masks; `tfsky.evaluate.metrics` builds the evaluation
  metrics on it and `tfsky.models.metrics` streams the same IoU and F1 inside
  Keras.
"""

from __future__ import annotations

from typing import NamedTuple

import cv2
import numpy as np
import tensorflow as tf

SKY_THRESHOLD = 0.5  # a pixel is sky when its sky probability is at least this (masks, sky fractions, IoU)
SKY_CLASS = 1  # class id of sky in label masks and in softmax outputs (0 = not sky)


def sky_probability(probabilities: np.ndarray) -> np.ndarray:
    """P(sky) ``[H, W]`` from model output ``[H, W, K]``: the sigmoid channel, or softmax channel `SKY_CLASS`."""
    return probabilities[..., 0] if probabilities.shape[-1] == 1 else probabilities[..., SKY_CLASS]


def sky_mask(probability: np.ndarray, threshold: float = SKY_THRESHOLD, drop_enclosed: bool = False) -> np.ndarray:
    """Boolean sky mask of sky (or cloud) probabilities: True where ``probability >= threshold``.

    The one sky cut: a pixel exactly at the threshold is sky. Float probabilities are compared in their
    own precision, as `sky_mask_graph` (the same cut as a TensorFlow op) compares them. ``drop_enclosed``
    (an ``[H, W]`` frame only) also drops the sky regions that touch no border of the frame
    (`sky_regions`): in a photo of the horizon the sky reaches the frame's edge, a patch of grey road or
    wall called sky inside the scene does not. Never for an all-sky fisheye frame, whose sky is a disc.
    """
    probability = np.asarray(probability)
    if probability.dtype.kind == "f":
        threshold = probability.dtype.type(threshold)
    mask = probability >= threshold
    return sky_regions(mask, 0.0)[0] if drop_enclosed else mask


def sky_regions(mask: np.ndarray, min_region: float, keep_enclosed: bool = False) -> tuple[np.ndarray, dict]:
    """``mask`` without the regions that cannot be a camera's sky, and what was dropped per reason.

    A connected (8-neighbour) region is dropped as ``small`` when it covers less than ``min_region`` of
    the frame, else as ``enclosed`` when it touches no border of the frame (unless ``keep_enclosed``).
    The facts: ``{reason: {"regions": n, "pixels": n}}``.
    """
    _, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    left, top, width, height, area = stats[1:].T  # row 0 is the background
    small = area < min_region * mask.size
    inside = (left > 0) & (top > 0) & (left + width < mask.shape[1]) & (top + height < mask.shape[0])
    enclosed = ~small & inside & (not keep_enclosed)
    keep = np.concatenate([[False], ~(small | enclosed)])
    dropped = {
        reason: {"regions": int(chosen.sum()), "pixels": int(area[chosen].sum())}
        for reason, chosen in (("small", small), ("enclosed", enclosed))
        if chosen.any()
    }
    return keep[labels], dropped


def sky_mask_graph(probability: tf.Tensor, threshold: float | tf.Tensor = SKY_THRESHOLD) -> tf.Tensor:
    """`sky_mask` as a TensorFlow op (boolean tensor), for graphs: export signatures and the Keras metrics."""
    probability = tf.convert_to_tensor(probability)
    return tf.greater_equal(probability, tf.cast(threshold, probability.dtype))


def iou_f1(tp, fp, fn):
    """``(IoU, F1)`` of confusion counts: ``tp / (tp + fp + fn)`` and ``2 tp / (2 tp + fp + fn)``.

    Empty masks: when no pixel is positive in the prediction nor in the truth (``tp + fp + fn == 0``)
    both scores are 1.0 — a correct "no sky" answer is perfect. This is the one statement of the
    convention; every IoU and F1 of tfsky (evaluation, the Keras metrics, the tuned threshold) comes
    from here.

    The counts are Python or NumPy numbers or arrays (element-wise, NumPy results), or TensorFlow
    tensors (element-wise, tensor results of their float dtype, e.g. per-class counts in a Keras metric).
    """
    terms = ((tp, tp + fp + fn), (2 * tp, 2 * tp + fp + fn))
    if tf.is_tensor(tp):
        return tuple(tf.where(den > 0, num / tf.maximum(den, 1), tf.ones_like(num)) for num, den in terms)
    return tuple(np.where(np.greater(den, 0), np.divide(num, np.maximum(den, 1)), 1.0) for num, den in terms)


def ratio(numerator: float, denominator: float, empty: float) -> float:
    """``numerator / denominator``, or ``empty`` when the denominator is 0."""
    return numerator / denominator if denominator else empty


class Confusion(NamedTuple):
    """Pixel counts of a binary prediction against the truth."""

    tp: int
    fp: int
    fn: int
    tn: int

    @property
    def total(self) -> int:
        return self.tp + self.fp + self.fn + self.tn

    @property
    def iou(self) -> float:
        """IoU of the counts (`iou_f1`)."""
        return float(iou_f1(self.tp, self.fp, self.fn)[0])

    @property
    def f1(self) -> float:
        """F1 (Dice) of the counts (`iou_f1`)."""
        return float(iou_f1(self.tp, self.fp, self.fn)[1])

    @property
    def pixel_accuracy(self) -> float:
        return ratio(self.tp + self.tn, self.total, empty=1.0)

    @property
    def mcr(self) -> float:
        """Misclassification rate ``(fp + fn) / N``, the SkyFinder measure (= 1 - pixel accuracy)."""
        return ratio(self.fp + self.fn, self.total, empty=0.0)


def check_shapes(pred: np.ndarray, truth: np.ndarray) -> None:
    """A prediction and its truth must have the same shape (a caller bug otherwise)."""
    if pred.shape != truth.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from truth shape {truth.shape}")


def confusion(pred: np.ndarray, truth: np.ndarray) -> Confusion:
    """Count true/false positives/negatives of two boolean masks of the same shape."""
    check_shapes(pred, truth)
    pred, truth = pred.astype(bool, copy=False), truth.astype(bool, copy=False)
    tp = int(np.count_nonzero(pred & truth))
    fp = int(np.count_nonzero(pred)) - tp
    fn = int(np.count_nonzero(truth)) - tp
    return Confusion(tp, fp, fn, truth.size - tp - fp - fn)


def iou(pred: np.ndarray, truth: np.ndarray) -> float:
    """Intersection over union of two boolean masks (`iou_f1`)."""
    return confusion(pred, truth).iou


def calibration_error(positive: np.ndarray, negative: np.ndarray, probability_sum: np.ndarray) -> float:
    """Expected calibration error of sky probabilities, from per-bin counts of truly positive and negative
    pixels and the sum of their probabilities (equal bins of [0, 1], as for `best_iou_threshold`).

    The pixel-weighted mean over bins of |mean probability - share of sky|: 0 for a model whose
    0.3 means "sky 30 % of the time"; a badly calibrated one also has its best threshold far from 0.5.
    """
    pixels = positive.sum() + negative.sum()
    return float(np.abs(probability_sum - positive).sum() / pixels) if pixels else 0.0


def best_iou_threshold(positive: np.ndarray, negative: np.ndarray) -> float:
    """The threshold with the best dataset-level IoU, from histograms of the probabilities of truly
    positive and truly negative pixels over equal bins of [0, 1].

    Thresholds are bin edges strictly inside (0, 1); pixels of a bin at or above the edge count as
    positive (`sky_mask`). Ties go to the edge nearest `SKY_THRESHOLD`, so a flat curve keeps the usual
    0.5; so does a set without positive pixels (nothing to find: every edge is as good).
    """
    bins = len(positive)
    edges = np.arange(1, bins) / bins
    if not np.any(positive):
        return float(edges[np.argmin(np.abs(edges - SKY_THRESHOLD))])
    above_tp = np.cumsum(positive[::-1])[::-1]  # positives with probability in bins k.. (>= edge k)
    above_fp = np.cumsum(negative[::-1])[::-1]
    tp, fp = above_tp[1:], above_fp[1:]
    iou = iou_f1(tp, fp, positive.sum() - tp)[0]
    best = np.flatnonzero(np.isclose(iou, iou.max(), rtol=0, atol=1e-12))
    return float(edges[best[np.argmin(np.abs(edges[best] - SKY_THRESHOLD))]])
