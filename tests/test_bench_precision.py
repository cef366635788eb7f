"""scripts/bench_predict.py, bench_train.py and bench_serving.py: the precision axis's speed-ups and agreement."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))
import bench_predict  # noqa: E402
import bench_serving  # noqa: E402
import bench_train  # noqa: E402


def _predict_row(full: float, first: float, working: float, per_image: float) -> dict:
    return {
        "full": {"first_prediction_seconds": first, "steady": {"warm_seconds_median": full}},
        "working": {"warm_seconds": working},
        "working_batch": {"wall_per_image": per_image},
    }


def test_predict_speedup_is_float32_wall_over_bfloat16_wall_per_measurement():
    rows = {"float32": _predict_row(30.0, 40.0, 2.0, 2.5), "bfloat16": _predict_row(10.0, 16.0, 4.0, 3.0)}
    assert bench_predict.precision_speedup(rows) == {
        "full": 3.0,
        "full_first": 2.5,
        "working": 0.5,
        "working_batch": 0.833,
    }


def test_predict_speedup_of_auto_divides_by_the_auto_rows():
    rows = {"float32": _predict_row(30.0, 40.0, 2.0, 2.5), "auto": _predict_row(15.0, 20.0, 1.0, 1.25)}
    assert bench_predict.precision_speedup(rows, "auto") == {
        "full": 2.0,
        "full_first": 2.0,
        "working": 2.0,
        "working_batch": 2.0,
    }
    assert bench_predict.precision_speedup(rows) is None


def test_predict_speedup_needs_both_precisions():
    assert bench_predict.precision_speedup({"float32": _predict_row(1, 1, 1, 1)}) is None
    assert bench_predict.precision_speedup({"bfloat16": _predict_row(1, 1, 1, 1)}) is None


def test_train_speedup_is_float32_step_over_mixed_bfloat16_step():
    rows = {"float32": {"seconds_per_step": 3.0}, "mixed_bfloat16": {"seconds_per_step": 1.5}}
    assert bench_train.speedup(rows) == 2.0
    assert bench_train.speedup({"float32": {"seconds_per_step": 3.0}}) is None


def test_serving_agreement_counts_mask_pixels_that_change_side_of_the_threshold():
    if not bench_serving.PHOTOS.is_dir():
        pytest.skip("../shared/data/sky_ade20k is not beside the repository")
    import tensorflow as tf

    from tfsky.data.transforms import Preprocess
    from tfsky.models.bundle import ModelInfo

    size = bench_serving.SIZE

    def constant(tiles):
        return {"probabilities": tf.fill([1, size, size, 1], 0.25)}

    def flips_left_columns(tiles):  # 64 of 512 columns cross 0.5: an agreement of exactly 0.875
        columns = tf.concat([tf.fill([1, size, 64, 1], 0.75), tf.fill([1, size, size - 64, 1], 0.25)], axis=2)
        return {"probabilities": columns}

    info = ModelInfo(task="segmenter", preprocess=Preprocess(), tile_size=size, threshold=0.5)
    signatures = {"float32": constant, "bfloat16": flips_left_columns}
    assert bench_serving.agreement_with_float32(signatures, "bfloat16", info, 2) == {
        "images": 2,
        "threshold": 0.5,
        "mask_agreement_mean": 0.875,
        "mask_agreement_min": 0.875,
        "largest_probability_change": 0.5,
    }
    assert bench_serving.agreement_with_float32(signatures, "float32", info, 2)["mask_agreement_min"] == 1.0
