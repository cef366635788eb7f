"""The sky threshold is chosen on validation data after training and travels with the model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from tfsky.config import load_config
from tfsky.data.masks import best_iou_threshold, calibration_error
from tfsky.data.transforms import Preprocess
from tfsky.models.bundle import ModelInfo, load_info, save_model
from tfsky.errors import ConfigError
from tfsky.train.config import SegmenterConfig
from tfsky.train.segmenter import THRESHOLD_BINS, store_threshold

REPO = Path(__file__).resolve().parents[1]


def histogram(values) -> np.ndarray:
    return np.histogram(np.asarray(values, float), THRESHOLD_BINS, (0.0, 1.0))[0]


def test_best_threshold_separates_the_classes_and_ties_go_towards_one_half():
    positive, negative = histogram([0.31, 0.33, 0.35] * 10), histogram([0.05, 0.1] * 10)
    assert best_iou_threshold(positive, negative) == pytest.approx(0.30)  # every edge in (0.1, 0.3] separates
    positive, negative = histogram([0.9] * 10), histogram([0.6] * 30 + [0.1] * 30)
    assert best_iou_threshold(positive, negative) == pytest.approx(0.62)
    flat = np.zeros(THRESHOLD_BINS, np.int64)
    assert best_iou_threshold(flat, histogram([0.2])) == pytest.approx(0.5)  # nothing to gain: keep 0.5


def test_best_threshold_trades_false_positives_against_misses():
    # 100 sky pixels at 0.45, 10 at 0.8; 20 ground pixels at 0.45: calling 0.45 sky wins (IoU 110/130 > 10/110)
    positive, negative = histogram([0.45] * 100 + [0.8] * 10), histogram([0.45] * 20)
    assert best_iou_threshold(positive, negative) == pytest.approx(0.44)


def brightness_model_and_validation(tmp_path) -> tuple[Path, tf.data.Dataset]:
    """A saved model with P(sky) = brightness, and validation batches of dim sky (0.33) over dark ground (0.08)."""
    inputs = tf.keras.Input((None, None, 3))
    model = tf.keras.Model(inputs, tf.reduce_mean(inputs, axis=-1, keepdims=True))
    path = tmp_path / "best.keras"
    save_model(model, path, ModelInfo("segmenter", Preprocess(), tile_size=32))
    truth = np.zeros((4, 32, 32, 1), np.float32)
    truth[:, :12] = 1
    images = np.where(truth == 1, 0.33, 0.08).repeat(3, axis=-1).astype(np.float32)
    return path, tf.data.Dataset.from_tensor_slices((images, truth)).batch(2)


def test_store_threshold_writes_the_validation_choice_into_the_sidecar(tmp_path):
    path, val_ds = brightness_model_and_validation(tmp_path)
    assert store_threshold(path, val_ds) == pytest.approx(0.32)
    assert load_info(path).threshold == pytest.approx(0.32)
    assert load_info(path).metrics["val_best_threshold"] == pytest.approx(0.32)
    # 12 of 32 rows are sky at P = 0.33 (true share 1), 20 are ground at P = 0.08 (true share 0)
    assert load_info(path).metrics["val_calibration_error"] == pytest.approx(12 / 32 * 0.67 + 20 / 32 * 0.08, abs=1e-4)


def test_calibration_error_is_zero_when_probabilities_are_the_sky_share_and_grows_with_overconfidence():
    probabilities = np.array([0.3] * 10 + [0.9] * 10)
    is_sky = np.array([1] * 3 + [0] * 7 + [1] * 9 + [0])  # 30 % of the 0.3 pixels and 90 % of the 0.9 ones
    counts = (histogram(probabilities[is_sky == 1]), histogram(probabilities[is_sky == 0]))
    sums = np.histogram(probabilities, THRESHOLD_BINS, (0.0, 1.0), weights=probabilities)[0]
    assert calibration_error(*counts, sums) == pytest.approx(0.0, abs=1e-12)
    overconfident = np.where(probabilities == 0.3, 0.05, 0.99)  # same pixels, pushed to the extremes
    counts = (histogram(overconfident[is_sky == 1]), histogram(overconfident[is_sky == 0]))
    sums = np.histogram(overconfident, THRESHOLD_BINS, (0.0, 1.0), weights=overconfident)[0]
    assert calibration_error(*counts, sums) == pytest.approx((10 * 0.25 + 10 * 0.09) / 20)


def test_a_fixed_threshold_is_stored_and_the_validation_best_is_still_recorded(tmp_path):
    path, val_ds = brightness_model_and_validation(tmp_path)
    assert store_threshold(path, val_ds, fixed=0.5) == 0.5
    info = load_info(path)
    assert info.threshold == 0.5 and info.metrics["val_best_threshold"] == pytest.approx(0.32)


def test_a_cloud_model_gets_its_cut_on_p_cloud_from_the_labelled_pixels_only(tmp_path):
    """A two-class (softmax) model with P(cloud) = brightness; one-hot masks whose all-zero rows are ignored
    (outside the lens): thin cloud at 0.15 and thick at 0.33 (6 rows each), clear sky at 0.08 (4 rows),
    and 16 ignored rows at 0.2. On the labelled pixels every cut in (0.08, 0.15] is perfect (0.14 nearest
    0.5); counting the ignored rows as clear would make 0.14 call them all cloud (IoU 12/28) and pick 0.32."""
    inputs = tf.keras.Input((None, None, 3))
    brightness = tf.reduce_mean(inputs, axis=-1, keepdims=True)
    path = tmp_path / "best.keras"
    save_model(
        tf.keras.Model(inputs, tf.concat([1 - brightness, brightness], -1)),
        path,
        ModelInfo("segmenter", Preprocess(), tile_size=32, classes=2),
    )
    levels = np.repeat([0.15, 0.33, 0.08, 0.2], [6, 6, 4, 16])  # per row
    one_hot = np.repeat([[0, 1], [0, 1], [1, 0], [0, 0]], [6, 6, 4, 16], axis=0)
    images = np.broadcast_to(levels[None, :, None, None], (2, 32, 32, 3)).astype(np.float32)
    masks = np.broadcast_to(one_hot[None, :, None, :], (2, 32, 32, 2)).astype(np.float32)
    val_ds = tf.data.Dataset.from_tensor_slices((images, masks)).batch(1)
    assert store_threshold(path, val_ds) == pytest.approx(0.14)
    # calibration over the 16 labelled rows: cloud at 0.15 and 0.33 (true share 1), clear at 0.08 (share 0)
    expected = (6 * 0.85 + 6 * 0.67 + 4 * 0.08) / 16
    assert load_info(path).metrics["val_calibration_error"] == pytest.approx(expected, abs=1e-4)


@pytest.mark.parametrize("value", ["0", "1", "1.5", "-0.1"])
def test_a_fixed_threshold_outside_zero_one_is_one_config_error(value):
    with pytest.raises(ConfigError, match=r"'train.threshold': must be between 0 and 1 \(exclusive\), or null"):
        load_config(SegmenterConfig, REPO / "configs" / "sky_ldr_cpu.yaml", [f"train.threshold={value}"])
