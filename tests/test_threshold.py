"""The sky threshold is chosen on validation data after training and travels with the model."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from tfsky.data.masks import best_iou_threshold
from tfsky.data.transforms import Preprocess
from tfsky.models.bundle import ModelInfo, load_info, save_model
from tfsky.train.segmenter import THRESHOLD_BINS, store_threshold


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


def test_store_threshold_writes_the_validation_choice_into_the_sidecar(tmp_path):
    inputs = tf.keras.Input((None, None, 3))
    model = tf.keras.Model(inputs, tf.reduce_mean(inputs, axis=-1, keepdims=True))  # P(sky) = brightness
    path = tmp_path / "best.keras"
    save_model(model, path, ModelInfo("segmenter", Preprocess(), tile_size=32))
    truth = np.zeros((4, 32, 32, 1), np.float32)
    truth[:, :12] = 1
    images = np.where(truth == 1, 0.33, 0.08).repeat(3, axis=-1).astype(np.float32)  # dim sky, dark ground
    val_ds = tf.data.Dataset.from_tensor_slices((images, truth)).batch(2)
    assert store_threshold(path, val_ds) == pytest.approx(0.32)
    assert load_info(path).threshold == pytest.approx(0.32)
