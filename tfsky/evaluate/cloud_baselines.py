"""Cloud baselines a trained cloud segmenter has to beat, fitted on the training frames.

- **red/blue ratio**: the classic all-sky method: cloud (white/grey) scatters
  red and blue alike, clear sky is blue, so a pixel is cloud when
  ``R / B >= t``.
- **red - blue difference**: cloud when ``R - B >= t`` (8-bit units).
- **CloudNet**: the per-pixel 32x32 patch classifier (`tfsky.models.cloudnet`),
  trained on patches sampled at labelled pixels of the training frames.

Thresholds are fitted exactly: the labelled pixels' feature values are
sorted once, and the pixel accuracy of every possible threshold is read from
cumulative counts of clear and cloud pixels (`fit_threshold`).
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Iterable, Optional

import numpy as np
import tensorflow as tf

from tfsky.data.allsky import IGNORE
from tfsky.models import cloudnet

CLOUD = 1
FIT_STRIDE = 4  # every 4th row and column of each training frame feeds the threshold fit
CLOUDNET_PATCHES_PER_FRAME = 64
CLOUDNET_EPOCHS = 4


def red_blue_ratio(image: np.ndarray) -> np.ndarray:
    """``R / B`` of a uint8 RGB frame (B floored at 1)."""
    rgb = image.astype(np.float32)
    return rgb[..., 0] / np.maximum(rgb[..., 2], 1.0)


def red_minus_blue(image: np.ndarray) -> np.ndarray:
    """``R - B`` of a uint8 RGB frame, in 8-bit units."""
    rgb = image.astype(np.float32)
    return rgb[..., 0] - rgb[..., 2]


FEATURES: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "red_blue_ratio": red_blue_ratio,
    "red_minus_blue": red_minus_blue,
}


def fit_threshold(values: np.ndarray, cloud: np.ndarray) -> tuple[float, float]:
    """The threshold ``t`` maximising the accuracy of ``values >= t`` as cloud, and that accuracy.

    Candidates are the observed values (and +inf: nothing is cloud); ties go to the lowest threshold.
    """
    order = np.argsort(values, kind="stable")
    sorted_values, sorted_cloud = values[order], cloud[order]
    # With t = sorted_values[i], pixels before i are called clear and the rest cloud.
    clear_before = np.concatenate([[0], np.cumsum(~sorted_cloud)])
    cloud_from = np.concatenate([np.cumsum(sorted_cloud[::-1])[::-1], [0]])
    starts = np.concatenate([[True], sorted_values[1:] != sorted_values[:-1], [True]])  # a threshold per new value
    correct = np.where(starts, clear_before + cloud_from, -1)
    best = int(np.argmax(correct))
    threshold = float(sorted_values[best]) if best < len(values) else float("inf")
    return threshold, float(correct[best]) / max(len(values), 1)


@dataclasses.dataclass
class CloudBaselines:
    """The fitted baselines; `predict` gives each one's boolean cloud mask of a frame."""

    thresholds: dict[str, float]
    train_accuracy: dict[str, float]
    fit_frames: int
    cloudnet: Optional[tf.keras.Model] = dataclasses.field(default=None, repr=False)
    cloudnet_patches: int = 0
    _forward: Optional[Callable] = dataclasses.field(default=None, repr=False, init=False)

    def threshold_masks(self, image: np.ndarray) -> dict[str, np.ndarray]:
        """Cloud masks of the two threshold baselines."""
        return {name: FEATURES[name](image) >= self.thresholds[name] for name in FEATURES}

    def cloudnet_probabilities(self, image: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """P(cloud) of CloudNet at pixels ``(rows, cols)`` (one network call per pixel)."""
        if self._forward is None:
            self._forward = cloudnet.compiled_forward(self.cloudnet)
        return cloudnet.classify_pixels(self.cloudnet, image, rows, cols, forward=self._forward)[:, CLOUD]

    def to_json(self) -> dict:
        return {
            "thresholds": self.thresholds,
            "train_accuracy": self.train_accuracy,
            "fit_frames": self.fit_frames,
            "cloudnet_patches": self.cloudnet_patches,
            "cloudnet_epochs": CLOUDNET_EPOCHS if self.cloudnet else 0,
        }


def fit_cloud_baselines(
    frames: Iterable[tuple[np.ndarray, np.ndarray]], *, with_cloudnet: bool = True, seed: int = 0
) -> Optional[CloudBaselines]:
    """Fit both thresholds (and CloudNet) on ``(uint8 RGB frame, class mask with IGNORE)`` pairs; None if empty."""
    values: dict[str, list[np.ndarray]] = {name: [] for name in FEATURES}
    labels: list[np.ndarray] = []
    kept: list[tuple[np.ndarray, np.ndarray]] = []
    for image, mask in frames:
        small_image, small_mask = image[::FIT_STRIDE, ::FIT_STRIDE], mask[::FIT_STRIDE, ::FIT_STRIDE]
        labelled = small_mask != IGNORE
        for name, feature in FEATURES.items():
            values[name].append(feature(small_image)[labelled])
        labels.append(small_mask[labelled] == CLOUD)
        if with_cloudnet:
            kept.append((image, mask))
    if not labels:
        return None
    cloud = np.concatenate(labels)
    fitted = {name: fit_threshold(np.concatenate(parts), cloud) for name, parts in values.items()}
    baselines = CloudBaselines(
        thresholds={name: value for name, (value, _) in fitted.items()},
        train_accuracy={name: accuracy for name, (_, accuracy) in fitted.items()},
        fit_frames=len(labels),
    )
    if with_cloudnet:
        patches, classes = cloudnet.sample_patches(kept, CLOUDNET_PATCHES_PER_FRAME, IGNORE, seed)
        baselines.cloudnet = cloudnet.train_cloudnet(patches, classes, epochs=CLOUDNET_EPOCHS, seed=seed)
        baselines.cloudnet_patches = len(classes)
    return baselines
