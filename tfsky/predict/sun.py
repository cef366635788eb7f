"""The sun disc of an all-sky frame, left out of the cloud fraction as WSISEG's annotators leave it undefined.

A cloud model calls the saturated disc cloud on clear frames (white, like
cloud), while WSISEG marks it undefined (0) and counts it nowhere. The rule,
chosen on WSISEG's clear frames: the sun is the largest connected set of pixels
saturated in every channel (>= ``sun_level`` on the 0..255 scale) within the
valid sky, if it is big enough (`MIN_PIXELS`) and compact (it fills at least
`MIN_FILL` of the circle around its centroid that holds it: a disc, not a
ragged bright cloud edge). Its radius is that of the disc of equal area; the
pixels within ``radius + sun_margin_px`` of its centre are excluded.

Measured on WSISEG's 104 clear frames:
camera 1 (36 frames): a sun is found on every one, equal-area radius ~22 px,
centre within ~5 px of the annotation's undefined blob; with the default
3 px margin 68 % of the excluded pixels are undefined in the annotation and
91 % of that blob is excluded. Camera 2 (68 frames) marks a wider halo
(radius ~45 px around a ~12 px saturated disc): found on all, the default
margin excludes only 10 % of its blob, ``sun_margin_px: 33`` 79 % (87 %
precise). On 21 of camera 1's 190 cloudy frames a saturated cloud passes for
the sun (the annotation calls it cloud): the frame's JSON says what was left out.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Optional

import cv2
import numpy as np

MIN_PIXELS = 20  # smaller saturated specks (glints, a star-like reflection) are not the sun
MIN_FILL = (
    0.25  # area / (pi * reach**2): WSISEG's saturated suns fill 0.29-0.74 (flare arms, glints), a thin streak less
)


@dataclasses.dataclass(frozen=True)
class SunDisc:
    """A found sun: centre ``(row, col)``, equal-area radius of its saturated core and the excluded radius."""

    centre: tuple[float, float]
    radius: float
    excluded_radius: float

    def mask(self, shape: tuple[int, int]) -> np.ndarray:
        """Boolean ``H x W``: the pixels within ``excluded_radius`` of the centre."""
        rows, cols = np.ogrid[: shape[0], : shape[1]]
        return np.hypot(rows - self.centre[0], cols - self.centre[1]) <= self.excluded_radius


def find_sun(
    image: np.ndarray, within: Optional[np.ndarray], level: int = 250, margin_px: float = 3.0
) -> Optional[SunDisc]:
    """The sun disc of a raw ``H x W x C`` frame (8- or 16-bit), searched ``within`` a boolean mask; None if absent.

    See the module docstring for the rule.
    """
    scale = 257 if image.dtype == np.uint16 else 1
    saturated = image.min(axis=-1) >= level * scale
    if within is not None:
        saturated &= within
    count, labels, stats, centroids = cv2.connectedComponentsWithStats(saturated.astype(np.uint8), connectivity=8)
    if count < 2:
        return None
    largest = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    area = int(stats[largest, cv2.CC_STAT_AREA])
    if area < MIN_PIXELS:
        return None
    col, row = (float(value) for value in centroids[largest])
    rows, cols = np.nonzero(labels == largest)
    reach = float(np.hypot(rows - row, cols - col).max()) + 0.5
    if area / (math.pi * reach**2) < MIN_FILL:
        return None
    radius = math.sqrt(area / math.pi)
    return SunDisc((row, col), radius, radius + margin_px)


def sun_facts(sun: Optional[SunDisc], excluded_pixels: int) -> dict[str, object]:
    """The ``sun`` entry of a frame's cloud-cover facts."""
    if sun is None:
        return {"found": False}
    return {
        "found": True,
        "centre_row": round(sun.centre[0], 2),
        "centre_col": round(sun.centre[1], 2),
        "radius": round(sun.radius, 2),
        "excluded_radius": round(sun.excluded_radius, 2),
        "excluded_pixels": excluded_pixels,
    }
