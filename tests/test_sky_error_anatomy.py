"""scripts/sky_error_anatomy.py: false sky split by region, distance and brightness, counted exactly."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import sky_error_anatomy  # noqa: E402


def _scene():
    """Sky in the top 5 rows of a 20 x 20 frame; the mask reaches one row too far, misses a dark column of
    the sky and invents a dark blob lower down."""
    truth = np.zeros((20, 20), bool)
    truth[:5] = True
    mask = np.zeros((20, 20), bool)
    mask[:6] = True
    mask[:5, 19] = False  # 5 missed sky pixels, dark
    mask[15:17, :4] = True  # 8 invented pixels, apart from any sky
    image = np.full((20, 20, 3), 50, np.uint8)
    image[:6] = 200  # the sky and the row below it are equally bright
    image[:5, 19] = 10
    return mask, truth, image


def test_error_counts_split_false_sky_by_region_distance_and_brightness():
    mask, truth, image = _scene()
    assert sky_error_anatomy.error_counts(mask, truth, image, near=2) == {
        "truth": 100,
        "hit": 95,
        "false": 28,
        "false_in_sky_regions": 20,
        "false_near_sky": 20,
        "false_bright": 20,
        "missed": 5,
        "missed_dark": 5,
    }


def test_summary_gives_the_iou_without_the_invented_sky():
    mask, truth, image = _scene()
    result = sky_error_anatomy.summary(sky_error_anatomy.error_counts(mask, truth, image, near=2))
    assert result["iou"] == 95 / 128
    assert result["iou_without_invented_sky"] == 95 / 120
    assert result["false_in_sky_regions_share"] == 20 / 28
    assert result["false_share_of_errors"] == 28 / 33
    assert result["missed_dark_share"] == 1.0
