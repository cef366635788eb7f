"""scripts/cloud_cv.py: folds are blocks of consecutive frames per camera, every frame in one test fold."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from tfsky.config import load_config
from tfsky.train.config import SegmenterConfig

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))
import cloud_cv  # noqa: E402


@pytest.fixture(scope="module")
def recipe(shared_data):
    return load_config(SegmenterConfig, REPO / "configs" / "cloud_wsiseg.yaml")


@pytest.mark.parametrize("folds", [2, 5, 7])
def test_every_frame_is_in_exactly_one_test_fold_as_blocks_of_consecutive_frames_per_camera(recipe, folds):
    numbers = cloud_cv.frame_numbers(recipe)
    assert {camera for _, camera in numbers} == {"camera1", "camera2"}
    assert sum(len(values) for values in numbers.values()) == 358
    ranges = cloud_cv.fold_ranges(numbers, folds)
    assert len(ranges) == folds
    for (source, camera), values in numbers.items():
        camera_cfg = next(c for c in recipe.data.sources[0].allsky.cameras if c.name == camera)
        blocks = []
        for fold in ranges:  # each fold holds out one range of this camera
            mine = [r for r in fold[source] if camera_cfg.first_frame <= r[0] <= camera_cfg.last_frame]
            assert len(mine) == 1
            first, last = mine[0]
            blocks.append([n for n in values if first <= n <= last])
        assert [n for block in blocks for n in block] == values  # a partition, in frame order: consecutive blocks
        assert max(map(len, blocks)) - min(map(len, blocks)) <= 1


def test_a_fold_config_holds_its_blocks_out_under_its_own_name_and_cache(recipe):
    ranges = cloud_cv.fold_ranges(cloud_cv.frame_numbers(recipe), 5)
    cfg = cloud_cv.fold_config(recipe, ranges[2], "cloud_wsiseg-cv5-2")
    assert cfg.name == "cloud_wsiseg-cv5-2" and cfg.data.cache.name == "cloud_wsiseg-cv5-2"
    assert cfg.data.sources[0].allsky.test_frames == ranges[2]["wsiseg"]
    assert recipe.data.sources[0].allsky.test_frames == []  # the recipe itself is untouched
    from tfsky.data.cache import list_items

    items = [item for item in list_items(cfg.data)[0] if item.problem is None]
    held_out = [item for item in items if item.test]
    assert 358 // 5 <= len(held_out) <= 358 // 5 + 2  # one block of each camera


def test_too_many_folds_for_a_camera_is_one_line():
    with pytest.raises(SystemExit, match="--folds 4: camera cam of src has only 3 frames"):
        cloud_cv.fold_ranges({("src", "cam"): [1, 2, 3]}, 4)


def test_fold_means_skip_a_metric_a_fold_did_not_record():
    def fold(accuracy, bias=None):
        scores = {"pixel_accuracy": accuracy, "cloud_fraction_mae_pp": 2.0, "iou_cloud": None, "okta_exact": 1.0}
        if bias is not None:
            scores["cloud_fraction_bias_pp"] = bias
        return {"scores": {"camera1": {"model": scores}}}

    # fold 0 was scored before the bias was recorded; IoU cloud is None (no cloud) in every fold
    mean = cloud_cv.mean_over_folds({"0": fold(0.9), "1": fold(0.95, -1.5), "2": fold(0.97, 0.5)})["camera1"]["model"]
    assert mean["pixel_accuracy"] == pytest.approx(0.94) and mean["cloud_fraction_bias_pp"] == pytest.approx(-0.5)
    assert mean["iou_cloud"] is None and mean["cloud_fraction_mae_pp"] == pytest.approx(2.0)


def test_the_cut_flag_is_stored_validation_or_a_number_inside_zero_one():
    assert cloud_cv.parse_cut("stored") is None and cloud_cv.parse_cut("validation") is None
    assert cloud_cv.parse_cut("0.45") == 0.45
    for bad in ("1", "0", "half"):
        with pytest.raises(
            SystemExit, match=f"--cut must be stored, validation or a number in \\(0, 1\\); got '{bad}'"
        ):
            cloud_cv.parse_cut(bad)
