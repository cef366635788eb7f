"""Binary sky masks: the probability at which a pixel is sky, and pixel counts of a mask against the truth.

The lowest layer that compares masks (stream validation) is data, so the
threshold and the counts live here; `tfsky.evaluate.metrics` builds the
evaluation metrics on them and `tfsky.models.metrics` streams the same IoU
inside Keras.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

SKY_THRESHOLD = 0.5  # a pixel is sky when its sky probability is at least this (masks, sky fractions, IoU)


def ratio(numerator: int, denominator: int, empty: float) -> float:
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
        """``tp / (tp + fp + fn)``; 1.0 when both masks are empty (a correct "no sky")."""
        return ratio(self.tp, self.tp + self.fp + self.fn, empty=1.0)

    @property
    def f1(self) -> float:
        return ratio(2 * self.tp, 2 * self.tp + self.fp + self.fn, empty=1.0)

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
    """Intersection over union of two boolean masks; 1.0 when both are empty."""
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
    positive. Ties go to the edge nearest `SKY_THRESHOLD`, so a flat curve keeps the usual 0.5.
    """
    bins = len(positive)
    above_tp = np.cumsum(positive[::-1])[::-1]  # positives with probability in bins k.. (>= edge k)
    above_fp = np.cumsum(negative[::-1])[::-1]
    edges = np.arange(1, bins) / bins
    tp, fp = above_tp[1:], above_fp[1:]
    fn = positive.sum() - tp
    iou = np.divide(tp, tp + fp + fn, out=np.zeros(bins - 1), where=(tp + fp + fn) > 0)
    best = np.flatnonzero(np.isclose(iou, iou.max(), rtol=0, atol=1e-12))
    return float(edges[best[np.argmin(np.abs(edges[best] - SKY_THRESHOLD))]])
