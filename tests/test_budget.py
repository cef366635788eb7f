"""`tfsky train` states its own pace: measured seconds per step and the projected end, and epoch times in history."""

from __future__ import annotations

import logging
import re

import tensorflow as tf

from tests.test_train import tiny_data
from tfsky.models.losses import make_loss
from tfsky.models.metrics import segmentation_metrics
from tfsky.train.runner import fit_run, read_history


def one_conv_segmenter() -> tf.keras.Model:
    inputs = tf.keras.Input((None, None, 3))
    model = tf.keras.Model(inputs, tf.keras.layers.Conv2D(1, 1, activation="sigmoid")(inputs))
    model.compile(tf.keras.optimizers.Adam(1e-3), make_loss("bce"), segmentation_metrics())
    return model


def test_training_prints_measured_step_time_and_projected_end_and_records_epoch_seconds(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="tfsky")
    model = one_conv_segmenter()
    fit_run(
        model,
        tiny_data(),
        tiny_data(),
        run_dir=tmp_path,
        epochs=3,
        monitor="val_iou",
        mode="max",
        save_best=lambda m, path, logs: None,
        steps_per_epoch=2,
        verbose=2,
    )
    lines = [record.getMessage() for record in caplog.records if record.getMessage().startswith("budget:")]
    assert len(lines) == 1  # after epoch 2, the first epoch not slowed by tracing
    match = re.fullmatch(
        r"budget: (\d+\.\d\d) s/step measured \((\d+) s/epoch incl\. validation, 1 epoch\(s\)\); "
        r"1 epoch\(s\) left: ends ~\d\d:\d\d \(in \d+ min\)",
        lines[0],
    )
    assert match, lines[0]
    rows = read_history(tmp_path / "history.csv")
    assert [row["epoch"] for row in rows] == [1, 2, 3]
    assert all(row["epoch_seconds"] > 0 for row in rows)
    assert float(match.group(1)) == round(rows[1]["epoch_seconds"] / 2, 2)


def test_a_silent_run_prints_no_budget(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="tfsky")
    model = one_conv_segmenter()
    fit_run(
        model,
        tiny_data(),
        tiny_data(),
        run_dir=tmp_path,
        epochs=2,
        monitor="val_iou",
        mode="max",
        save_best=lambda m, path, logs: None,
        verbose=0,
    )
    assert "budget:" not in caplog.text
