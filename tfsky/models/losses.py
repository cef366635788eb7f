"""Segmentation losses by config name, always computed in float32.

The formulas are segmentation-models' (``sm.losses``); this module picks the
binary or categorical form from the head and wraps it in a serialisable Keras
`Loss` that casts both tensors to float32 first, so a float16 tensor can never
reach a log or a ratio (the mixed-precision NaN).
"""

from __future__ import annotations

from typing import Literal

import tensorflow as tf

from tfsky.models.segmenter import segmentation_models

LossName = Literal["bce_jaccard", "dice", "focal", "bce"]


def _sm_loss(name: LossName, classes: int):
    """The segmentation-models loss for ``name``: binary forms for one class, categorical for more."""
    losses = segmentation_models().losses
    binary = classes == 1
    if name == "bce_jaccard":
        return losses.bce_jaccard_loss if binary else losses.cce_jaccard_loss
    if name == "dice":
        return losses.DiceLoss()
    if name == "focal":
        return losses.BinaryFocalLoss() if binary else losses.CategoricalFocalLoss()
    if name == "bce":
        return losses.BinaryCELoss() if binary else losses.CategoricalCELoss()
    raise ValueError(f"unknown loss {name!r}")


@tf.keras.utils.register_keras_serializable(package="tfsky")
class SegmentationLoss(tf.keras.losses.Loss):
    """A segmentation loss over ``[B, H, W, classes]`` probabilities, in float32.

    Args:
        kind: str. ``bce_jaccard`` (binary cross-entropy + soft Jaccard; the
            default), ``dice``, ``focal`` or ``bce``. With ``classes > 1`` the
            categorical counterparts are used.
        classes: int. Number of output channels (1 = sigmoid head).
    """

    def __init__(self, kind: LossName = "bce_jaccard", classes: int = 1, name: str | None = None, **kwargs):
        super().__init__(name=name or kind, **kwargs)
        self.kind = kind
        self.classes = classes
        self._loss = _sm_loss(kind, classes)

    def call(self, y_true, y_pred):
        return self._loss(tf.cast(y_true, tf.float32), tf.cast(y_pred, tf.float32))

    def get_config(self):
        return {**super().get_config(), "kind": self.kind, "classes": self.classes}


def make_loss(name: LossName, classes: int = 1) -> tf.keras.losses.Loss:
    """The loss named by ``train.loss`` for a head with ``classes`` outputs."""
    return SegmentationLoss(name, classes)
