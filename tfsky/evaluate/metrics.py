"""Binary segmentation metrics on numpy masks (``True`` = sky).

Every metric is computed from counts (`tfsky.data.masks.Confusion`, the one
home of the pixel counts and IoU), so that it can be aggregated two ways:

- **dataset-level** ("pooled"): sum the counts over all images, then compute
  the metric once — every pixel weighs the same, large images weigh more;
- **mean per image**: compute the metric on each image, then average — every
  image weighs the same.

Empty cases are defined, not NaN:

- IoU and F1 of an empty prediction against an empty truth are 1.0 (a
  correctly predicted sky-free image); empty against non-empty is 0.0.
- Boundary F1 with no boundary in either mask is 1.0; a boundary in only one
  of them gives 0.0.

Boundary F1 (as in the DAVIS / BSDS contour measures): the boundary of a mask
is its set of sky pixels with a non-sky 4-neighbour inside the image (the
image frame is not a boundary). A predicted boundary pixel is correct when a
true boundary pixel lies within ``band`` pixels (Euclidean); precision and
recall are the matched fractions of the predicted and true boundary pixels.
"""

from __future__ import annotations

from typing import NamedTuple, Sequence, TypeVar

import cv2
import numpy as np

from tfsky.data.masks import Confusion, check_shapes, confusion, iou, ratio  # noqa: F401 (iou: one of the metrics)

BOUNDARY_BAND = 3.0  # pixels: the default tolerance of boundary F1
METRIC_NAMES = ("iou", "f1", "pixel_accuracy", "mcr", "boundary_f1")

_CROSS = cv2.getStructuringElement(cv2.MORPH_CROSS, (3, 3))


class BoundaryMatch(NamedTuple):
    """Boundary pixel counts: predicted / true boundary pixels and how many of each are matched."""

    pred_matched: int
    pred_total: int
    truth_matched: int
    truth_total: int

    @property
    def precision(self) -> float:
        return ratio(self.pred_matched, self.pred_total, empty=1.0)

    @property
    def recall(self) -> float:
        return ratio(self.truth_matched, self.truth_total, empty=1.0)

    @property
    def f1(self) -> float:
        if self.pred_total == 0 or self.truth_total == 0:
            return 1.0 if self.pred_total == self.truth_total else 0.0
        precision, recall = self.precision, self.recall
        return ratio(2 * precision * recall, precision + recall, empty=0.0)


Counts = TypeVar("Counts", Confusion, BoundaryMatch)


def total(counts: Sequence[Counts]) -> Counts:
    """Field-wise sum of one or more `Confusion` (or `BoundaryMatch`) values: the dataset-level counts."""
    return type(counts[0])(*(int(sum(field)) for field in zip(*counts)))


def f1(pred: np.ndarray, truth: np.ndarray) -> float:
    """F1 (Dice) score of the sky class; 1.0 when both masks are empty."""
    return confusion(pred, truth).f1


def pixel_accuracy(pred: np.ndarray, truth: np.ndarray) -> float:
    """Fraction of pixels classified correctly."""
    return confusion(pred, truth).pixel_accuracy


def mcr(pred: np.ndarray, truth: np.ndarray) -> float:
    """Misclassification rate ``(fp + fn) / N`` (SkyFinder's measure)."""
    return confusion(pred, truth).mcr


def boundary(mask: np.ndarray) -> np.ndarray:
    """Sky pixels with a non-sky 4-neighbour; pixels on the image frame are not boundary by themselves."""
    mask = mask.astype(np.uint8)
    eroded = cv2.erode(mask, _CROSS, borderType=cv2.BORDER_REPLICATE)
    return mask > eroded


def _within_band(points: np.ndarray, reference: np.ndarray, band: float) -> int:
    """How many ``points`` pixels lie within ``band`` pixels of a ``reference`` pixel (both non-empty)."""
    distance = cv2.distanceTransform((~reference).astype(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
    return int(np.count_nonzero(distance[points] <= band))


def boundary_match(pred: np.ndarray, truth: np.ndarray, band: float = BOUNDARY_BAND) -> BoundaryMatch:
    """Match the boundaries of two masks within a tolerance of ``band`` pixels."""
    check_shapes(pred, truth)
    pred_edge, truth_edge = boundary(pred), boundary(truth)
    pred_total, truth_total = int(pred_edge.sum()), int(truth_edge.sum())
    if pred_total == 0 or truth_total == 0:
        return BoundaryMatch(0, pred_total, 0, truth_total)
    return BoundaryMatch(
        _within_band(pred_edge, truth_edge, band), pred_total, _within_band(truth_edge, pred_edge, band), truth_total
    )


def boundary_f1(pred: np.ndarray, truth: np.ndarray, band: float = BOUNDARY_BAND) -> float:
    """F1 of boundary pixels matched within ``band`` pixels; 1.0 when neither mask has a boundary."""
    return boundary_match(pred, truth, band).f1


class MaskScore(NamedTuple):
    """Everything measured on one prediction: the counts behind every metric in `METRIC_NAMES`."""

    confusion: Confusion
    boundary: BoundaryMatch

    def metrics(self) -> dict[str, float]:
        """The metrics plus the predicted and true sky fractions."""
        c = self.confusion
        return {
            "iou": c.iou,
            "f1": c.f1,
            "pixel_accuracy": c.pixel_accuracy,
            "mcr": c.mcr,
            "boundary_f1": self.boundary.f1,
            "sky_fraction_truth": ratio(c.tp + c.fn, c.total, empty=0.0),
            "sky_fraction_pred": ratio(c.tp + c.fp, c.total, empty=0.0),
        }


def score(pred: np.ndarray, truth: np.ndarray, band: float = BOUNDARY_BAND) -> MaskScore:
    """Measure one predicted mask against its truth."""
    return MaskScore(confusion(pred, truth), boundary_match(pred, truth, band))


def dataset_level(scores: Sequence[MaskScore]) -> dict[str, float]:
    """Metrics of the summed counts of all images (every pixel weighs the same)."""
    return MaskScore(total([s.confusion for s in scores]), total([s.boundary for s in scores])).metrics()


def mean_per_image(scores: Sequence[MaskScore]) -> dict[str, float]:
    """The mean over images of each per-image metric (every image weighs the same)."""
    per_image = [s.metrics() for s in scores]
    return {name: float(np.mean([m[name] for m in per_image])) for name in per_image[0]}
