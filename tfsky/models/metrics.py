"""IoU and F1 at threshold 0.5 as stateful Keras metrics (history columns ``iou``, ``f1``).

They accumulate true/false positive and false negative pixel counts over the
whole epoch, so ``val_iou`` is the IoU of the validation set, not a mean of
per-batch IoUs as ``sm.metrics.IOUScore`` gives under ``compile`` (the two
differ whenever batches hold different amounts of sky). Predictions count as
positive by the sky cut of masks, evaluation and export
(`tfsky.data.masks.sky_mask_graph`: P(sky) ``>= threshold``; segmentation-models
takes ``> threshold``); ground truth when ``> 0.5``. The scores come from the
counts by `tfsky.data.masks.iou_f1`, so on the same pixels ``val_iou`` is the
dataset-level IoU of ``tfsky evaluate``. With a softmax head each pixel goes to
its arg-max class and the score is the mean over classes; pixels whose one-hot
target row is all zero (ignored, e.g. outside an all-sky camera's lens) count
nowhere.

Empty masks score as `iou_f1` says (1). segmentation-models reaches the same 1
through its ``smooth=1e-5`` term, which also shifts every other value slightly
(IoU 0.5 reads 0.5000025 there); here non-empty cases are exact.
"""

from __future__ import annotations

import tensorflow as tf

from tfsky.data.masks import SKY_THRESHOLD, iou_f1, sky_mask_graph


class _ConfusionScore(tf.keras.metrics.Metric):
    """Per-class pixel counts accumulated over batches; subclasses pick their score of `iou_f1`."""

    _score: int

    def __init__(self, classes: int = 1, threshold: float = SKY_THRESHOLD, name: str | None = None, **kwargs):
        super().__init__(name=name, **kwargs)
        self.classes = classes
        self.threshold = threshold
        self.tp = self.add_weight("tp", shape=(classes,), initializer="zeros", dtype=tf.float64)
        self.fp = self.add_weight("fp", shape=(classes,), initializer="zeros", dtype=tf.float64)
        self.fn = self.add_weight("fn", shape=(classes,), initializer="zeros", dtype=tf.float64)

    def update_state(self, y_true, y_pred, sample_weight=None):
        y_true, y_pred = tf.cast(y_true, tf.float32), tf.cast(y_pred, tf.float32)
        if self.classes == 1:  # labels are 0/1; predictions take the sky cut
            truth = tf.cast(y_true > 0.5, tf.float32)
            pred = tf.cast(sky_mask_graph(y_pred, self.threshold), tf.float32)
        else:  # arg-max classes; an all-zero target row is an ignored pixel: it counts nowhere
            labelled = tf.reduce_sum(y_true, axis=-1, keepdims=True)
            truth, pred = self._argmax(y_true) * labelled, self._argmax(y_pred) * labelled
        axes = tf.range(tf.rank(pred) - 1)  # every axis but channels
        self.tp.assign_add(tf.cast(tf.reduce_sum(truth * pred, axes), tf.float64))
        self.fp.assign_add(tf.cast(tf.reduce_sum((1 - truth) * pred, axes), tf.float64))
        self.fn.assign_add(tf.cast(tf.reduce_sum(truth * (1 - pred), axes), tf.float64))

    def reset_state(self):
        for count in (self.tp, self.fp, self.fn):
            count.assign(tf.zeros_like(count))

    def _argmax(self, probabilities):
        return tf.one_hot(tf.argmax(probabilities, axis=-1), self.classes, dtype=tf.float32)

    def result(self):
        per_class = iou_f1(self.tp, self.fp, self.fn)[self._score]
        return tf.cast(tf.reduce_mean(per_class), tf.float32)

    def get_config(self):
        return {**super().get_config(), "classes": self.classes, "threshold": self.threshold}


@tf.keras.utils.register_keras_serializable(package="tfsky")
class IoU(_ConfusionScore):
    """Intersection over union, ``tp / (tp + fp + fn)``, over the epoch.

    Args:
        classes: int. Output channels of the head (1 = sigmoid). Defaults to 1.
        threshold: float. Probability from which a pixel is positive (sigmoid head, ``>=``). Defaults to 0.5.
        name: str. History column name. Defaults to ``iou``.
    """

    _score = 0  # in `iou_f1`

    def __init__(self, classes: int = 1, threshold: float = SKY_THRESHOLD, name: str = "iou", **kwargs):
        super().__init__(classes, threshold, name=name, **kwargs)


@tf.keras.utils.register_keras_serializable(package="tfsky")
class F1(_ConfusionScore):
    """F1 score (Dice), ``2 tp / (2 tp + fp + fn)``, over the epoch.

    Args:
        classes: int. Output channels of the head (1 = sigmoid). Defaults to 1.
        threshold: float. Probability from which a pixel is positive (sigmoid head, ``>=``). Defaults to 0.5.
        name: str. History column name. Defaults to ``f1``.
    """

    _score = 1  # in `iou_f1`

    def __init__(self, classes: int = 1, threshold: float = SKY_THRESHOLD, name: str = "f1", **kwargs):
        super().__init__(classes, threshold, name=name, **kwargs)


def segmentation_metrics(classes: int = 1) -> list[tf.keras.metrics.Metric]:
    """The metrics every segmenter is compiled with: ``[IoU, F1]``."""
    return [IoU(classes), F1(classes)]
