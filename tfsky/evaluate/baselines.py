"""Naive sky segmenters a trained model has to beat (the seed compared against naive models).

- **horizon**: every pixel above a horizon row is sky; the row is a fraction
  of the image height.
- **color threshold**: a pixel is sky when it is blue-ish and bright: on RGB
  scaled to [0, 1], ``B >= R`` and ``mean(R, G, B) >= threshold``. HDR
  (float) images are tone mapped first with Reinhard's global operator
  (key 0.18 over the log-average luminance, then ``x / (1 + x)``).

Each parameter is fitted by maximising the dataset-level IoU over a grid of
values (see `GridSearch`). The search never builds one mask per grid value: the counts of every
candidate are read from cumulative sums (horizon) or sorted brightness values
(color threshold), and are exactly those `confusion` gives on the mask the
baseline then predicts (tested).
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Iterable, Optional

import numpy as np

from tfsky.data.transforms import is_hdr
from tfsky.evaluate.metrics import Confusion
from tfsky.io.images import REC709_LUMA

FRACTION_GRID = np.round(np.linspace(0.0, 1.0, 41), 3)  # steps of 0.025
REINHARD_KEY = 0.18


def horizon_mask(shape: tuple[int, ...], fraction: float) -> np.ndarray:
    """Boolean ``H x W`` mask, True on the rows above ``round(fraction * H)``."""
    height, width = shape[:2]
    mask = np.zeros((height, width), dtype=bool)
    mask[: _horizon_row(height, fraction)] = True
    return mask


def _horizon_row(height: int, fraction: float) -> int:
    return int(round(float(fraction) * height))


def horizon_confusions(truth: np.ndarray, fractions: np.ndarray) -> list[Confusion]:
    """The `Confusion` of `horizon_mask` at each fraction, from per-row sky counts."""
    height, width = truth.shape
    sky_above = np.concatenate([[0], np.cumsum(np.count_nonzero(truth, axis=1))])
    sky = int(sky_above[-1])
    result = []
    for fraction in fractions:
        row = _horizon_row(height, fraction)
        tp = int(sky_above[row])
        result.append(_counts(tp, predicted=row * width, sky=sky, size=truth.size))
    return result


def _counts(tp: int, *, predicted: int, sky: int, size: int) -> Confusion:
    fp, fn = predicted - tp, sky - tp
    return Confusion(tp, fp, fn, size - tp - fp - fn)


def unit_rgb(image: np.ndarray) -> np.ndarray:
    """``H x W x 3`` float32 in [0, 1]: integer images scaled, HDR tone mapped, grey repeated, alpha dropped."""
    rgb = image[..., :3] if image.shape[-1] >= 3 else np.repeat(image[..., :1], 3, axis=-1)
    if is_hdr(rgb):
        return tone_map(rgb.astype(np.float32, copy=False))
    return rgb.astype(np.float32) / np.iinfo(rgb.dtype).max


def tone_map(rgb: np.ndarray) -> np.ndarray:
    """Reinhard's global operator: scale to key 0.18 over the log-average luminance, then ``x / (1 + x)``."""
    rgb = np.maximum(rgb, 0)
    log_average = np.exp(np.mean(np.log(1e-6 + rgb @ REC709_LUMA)))
    scaled = rgb * (REINHARD_KEY / log_average)
    return scaled / (1 + scaled)


def _brightness_of_blueish(image: np.ndarray) -> np.ndarray:
    """Brightness ``mean(R, G, B)`` of blue-ish pixels (``B >= R``) and -1 elsewhere (never sky)."""
    rgb = unit_rgb(image)
    return np.where(rgb[..., 2] >= rgb[..., 0], rgb.mean(axis=-1), -1.0)


def color_threshold_mask(image: np.ndarray, threshold: float) -> np.ndarray:
    """Boolean ``H x W`` mask of blue-ish pixels with brightness >= ``threshold``."""
    return _brightness_of_blueish(image) >= threshold


def color_threshold_confusions(image: np.ndarray, truth: np.ndarray, thresholds: np.ndarray) -> list[Confusion]:
    """The `Confusion` of `color_threshold_mask` at each threshold, from sorted brightness values."""
    brightness = _brightness_of_blueish(image)
    truth = truth.astype(bool, copy=False)
    sky_sorted, other_sorted = np.sort(brightness[truth]), np.sort(brightness[~truth])
    tps = len(sky_sorted) - np.searchsorted(sky_sorted, thresholds, side="left")
    fps = len(other_sorted) - np.searchsorted(other_sorted, thresholds, side="left")
    return [_counts(int(tp), predicted=int(tp + fp), sky=len(sky_sorted), size=truth.size) for tp, fp in zip(tps, fps)]


@dataclasses.dataclass
class Baselines:
    """The parameters of both naive segmenters and where they came from.

    Args:
        horizon_fraction: float. Horizon row as a fraction of the image height. Defaults to 0.5.
        color_threshold: float. Minimum brightness (0..1) of a blue-ish sky pixel. Defaults to 0.5.
        fitted_on: str. What the parameters were fitted on. Defaults to ``defaults (not fitted)``.
        fit_images: int. Number of images used for the fit. Defaults to 0.
    """

    horizon_fraction: float = 0.5
    color_threshold: float = 0.5
    fitted_on: str = "defaults (not fitted)"
    fit_images: int = 0

    def predict(self, image: np.ndarray) -> dict[str, np.ndarray]:
        """The sky mask of each baseline, by name."""
        return {
            "horizon": horizon_mask(image.shape, self.horizon_fraction),
            "color_threshold": color_threshold_mask(image, self.color_threshold),
        }


class GridSearch:
    """Sums the counts of every grid value over images; the best value maximises the dataset-level IoU.

    Dataset-level, like the headline of the report: on data where many images
    have no sky (63 of the 100 ADE20K samples), maximising the mean per-image
    IoU would pick "never sky", which scores 1.0 on every sky-free image.
    Ties are common (a threshold anywhere between the sky's and the ground's
    brightness separates them equally well); the middle of the tied values is
    the most robust choice.
    """

    def __init__(self, grid: np.ndarray, confusions: Callable[..., list[Confusion]]):
        self.grid = np.asarray(grid, dtype=np.float64)
        self.confusions = confusions
        self.counts = np.zeros((len(self.grid), 4), dtype=np.int64)
        self.images = 0

    def add(self, *sample: np.ndarray) -> None:
        self.counts += np.array(self.confusions(*sample, self.grid), dtype=np.int64)
        self.images += 1

    def best(self) -> Optional[float]:
        if not self.images:
            return None
        iou = np.array([Confusion(*map(int, row)).iou for row in self.counts])
        best = np.flatnonzero(np.isclose(iou, iou.max(), rtol=0, atol=1e-12))
        return float(self.grid[best[len(best) // 2]])


def fit_baselines(
    samples: Iterable[tuple[np.ndarray, np.ndarray]], fitted_on: str, grid: np.ndarray = FRACTION_GRID
) -> Optional[Baselines]:
    """Fit both baselines in one pass over ``(image, truth)`` pairs; ``None`` when there are none.

    Args:
        samples: iterable of (image ``H x W x C``, boolean truth ``H x W``).
        fitted_on: str. Description of the samples, kept in the result for the report.
        grid: array. Candidate values for both parameters (both live in [0, 1]).
            Defaults to 0, 0.025, ..., 1.
    """
    horizon = GridSearch(grid, horizon_confusions)
    color = GridSearch(grid, color_threshold_confusions)
    for image, truth in samples:
        horizon.add(truth)
        color.add(image, truth)
    horizon_best, color_best = horizon.best(), color.best()
    if horizon_best is None or color_best is None:  # no samples
        return None
    return Baselines(horizon_best, color_best, fitted_on, horizon.images)
