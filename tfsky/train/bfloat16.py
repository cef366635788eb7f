"""The bfloat16 verdict of a trained segmenter: measured on its validation batches, stored in its sidecar.

``precision: auto`` computes in bfloat16 on a CPU with a bfloat16 unit only for a model whose stored verdict
is ok (`tfsky.models.precision.for_inference`), so the verdict is measured where the threshold is chosen: at
the end of ``tfsky train segmenter`` (with the threshold, on the same loaded model), and for a model trained before, by
``tfsky evaluate precision`` (`check_bfloat16`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import tensorflow as tf

from tfsky.data import pipeline
from tfsky.errors import ConfigError
from tfsky.io.atomic import write_json
from tfsky.models.bundle import ModelKind, info_path, load_info, load_model
from tfsky.models.precision import bfloat16_verdict
from tfsky.progress import Progress
from tfsky.train.config import SegmenterConfig


def store_bfloat16_verdict(path: str | Path, batches, progress: Optional[Progress] = None) -> dict:
    """Measure the bfloat16 verdict of the saved model at ``path`` on ``batches`` (images, true masks) at its
    stored threshold and write it into its sidecar (`ModelInfo.bfloat16`); returns it."""
    model, info = load_model(path, precision="float32")
    info.bfloat16 = bfloat16_verdict(model, batches, info.threshold, progress)
    write_json(info_path(path), info.to_json())
    return info.bfloat16


def check_bfloat16(model_path: str | Path, cfg: SegmenterConfig, progress: Optional[Progress] = None) -> dict:
    """`store_bfloat16_verdict` for a segmenter trained with ``cfg``, on the validation batches of its cache.

    Raises:
        InputError: the model or its sidecar is missing or not a segmenter, or the cache is not prepared.
        ConfigError: ``cfg`` is not the model's (other classes or preprocessing), so its batches would not fit it.
    """
    info = load_info(model_path, ModelKind.SEGMENTER)
    if cfg.model.classes != info.classes:
        raise ConfigError("model.classes", f"is {cfg.model.classes} but {model_path} has {info.classes}")
    if cfg.data.preprocess != info.preprocess:
        raise ConfigError("data.preprocess", f"differs from the one {model_path} was trained with")
    return store_bfloat16_verdict(model_path, validation_batches(cfg), progress)


def validation_batches(cfg: SegmenterConfig, batch_size: Optional[int] = None) -> tf.data.Dataset:
    """The validation batches training measures the model on (``train.validation_steps`` batches of
    ``batch_size``, default one replica's ``train.batch_size``)."""
    return pipeline.segmentation_dataset(
        cfg.data,
        "val",
        batch_size or cfg.train.batch_size,
        classes=cfg.model.classes,
        seed=cfg.train.seed,
        max_batches=cfg.train.validation_steps,
    )
