"""The sun disc: found where it is (synthetic and a real WSISEG frame), absent where it is not, left out of the
cloud fraction unless switched off."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest

from tfsky.errors import ConfigError
from tfsky.predict.cloud import CloudCoverConfig, FrameCover
from tfsky.predict.sun import find_sun

CLEAR_FRAME = "ASC100-1006_143.png"  # camera 1, clear sky; WSISEG marks the sun undefined (0) inside the lens


def sky_frame(size=(200, 240), sun=None, seed=0) -> np.ndarray:
    """A blue fisheye sky (dark outside a circle) with noise, and optionally a saturated disc ``(row, col, r)``."""
    rng = np.random.default_rng(seed)
    frame = np.zeros(size + (3,), np.uint8)
    rows, cols = np.ogrid[: size[0], : size[1]]
    lens = np.hypot(rows - size[0] / 2, cols - size[1] / 2) <= 0.45 * min(size)
    sky = np.clip(rng.normal((90, 130, 200), 12, size + (3,)), 0, 240).astype(np.uint8)
    frame[lens] = sky[lens]
    if sun is not None:
        row, col, radius = sun
        frame[np.hypot(rows - row, cols - col) <= radius] = 255
    return frame


@pytest.mark.parametrize("row, col, radius", [(100.0, 120.0, 12.0), (80.3, 141.6, 7.5), (120.0, 95.0, 20.0)])
def test_a_saturated_disc_is_found_at_its_centre_and_radius(row, col, radius):
    sun = find_sun(sky_frame(sun=(row, col, radius)), None, margin_px=4)
    assert sun is not None
    assert math.hypot(sun.centre[0] - row, sun.centre[1] - col) <= 1.0
    assert sun.radius == pytest.approx(radius, abs=1.0)
    assert sun.excluded_radius == pytest.approx(sun.radius + 4)


def test_no_sun_in_a_frame_without_one_nor_in_a_bright_streak_or_speck():
    assert find_sun(sky_frame(), None) is None
    streak = sky_frame()
    streak[100:103, 40:200] = 255  # a long thin saturated line: not a disc
    streak[50:53, 110:113] = 255  # a speck below the minimum size
    assert find_sun(streak, None) is None
    outside = sky_frame(sun=(100.0, 120.0, 12.0))
    assert find_sun(outside, np.zeros(outside.shape[:2], bool)) is None  # searched only within the given mask


def test_the_sun_of_a_real_clear_frame_is_where_wsiseg_leaves_it_undefined(shared_data):
    folder = shared_data / "allsky_wsiseg"
    frame = cv2.cvtColor(cv2.imread(str(folder / "images" / CLEAR_FRAME)), cv2.COLOR_BGR2RGB)
    annotation = cv2.imread(str(folder / "annotation" / CLEAR_FRAME), cv2.IMREAD_GRAYSCALE)
    lens = cv2.imread(str(folder / "mask_cam.png"), cv2.IMREAD_GRAYSCALE) >= 128
    inside = cv2.erode(lens.astype(np.uint8), np.ones((11, 11), np.uint8)) > 0
    count, labels, stats, centroids = cv2.connectedComponentsWithStats((inside & (annotation == 0)).astype(np.uint8))
    blob = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))  # the undefined blob inside the lens: the sun
    sun = find_sun(frame, lens)
    assert sun is not None
    assert math.hypot(sun.centre[0] - centroids[blob][1], sun.centre[1] - centroids[blob][0]) <= 5
    excluded = sun.mask(lens.shape) & lens
    assert np.mean(annotation[excluded] == 0) > 0.6  # mostly what the annotation leaves undefined
    assert np.mean(excluded[labels == blob]) > 0.85  # and most of that blob


def test_frame_cover_leaves_the_sun_out_unless_switched_off():
    frame = sky_frame(sun=(100.0, 120.0, 10.0))
    cloud_prob = np.zeros(frame.shape[:2], np.float32)
    cloud_prob[frame.min(axis=-1) == 255] = 1.0  # the model calls the sun cloud, as on WSISEG's clear frames
    cfg = CloudCoverConfig(camera_masks=[])
    cloud, valid, facts = FrameCover(cfg, 0.5)(frame, cloud_prob, "frame.png")
    assert facts["sun"]["found"] and facts["cloud_fraction_pct"] == 0 and not cloud.any()
    assert facts["sun"]["excluded_pixels"] == int((frame.max(axis=-1) > 8).sum() - valid.sum()) > 300
    assert facts["sun"]["centre_row"] == pytest.approx(100, abs=1) and facts["sun"]["radius"] == pytest.approx(
        10, abs=1
    )
    _, valid_off, off = FrameCover(CloudCoverConfig(camera_masks=[], sun=False), 0.5)(frame, cloud_prob, "frame.png")
    assert off["sun"] is None and off["cloud_fraction_pct"] > 1 and valid_off.sum() > valid.sum()
    _, _, clear = FrameCover(cfg, 0.5)(sky_frame(), np.zeros(frame.shape[:2], np.float32), "clear.png")
    assert clear["sun"] == {"found": False}


def test_sun_settings_are_checked():
    with pytest.raises(ConfigError, match="'sun_margin_px': must be >= 0"):
        CloudCoverConfig(sun_margin_px=-1).validate()
    with pytest.raises(ConfigError, match="'sun_level': must be in 1..255"):
        CloudCoverConfig(sun_level=0).validate()
