"""IoU and F1 at threshold 0.5 as stateful Keras metrics (history columns ``iou``, ``f1``).

They accumulate true/false positive and false negative pixel counts over the
whole epoch, so ``val_iou`` is the IoU of the validation set, not a mean of
per-batch IoUs as ``sm.metrics.IOUScore`` gives under ``compile`` (the two
differ whenever batches hold different amounts of sky). Predictions count as
positive when ``> 0.5`` (as in segmentation-models); ground truth when ``> 0.5``.
With a softmax head each pixel goes to its arg-max class and the score is the
mean over classes; pixels whose one-hot target row is all zero (ignored, e.g.
outside an all-sky camera's lens) count nowhere.

Empty versus empty (no positive pixel predicted nor labelled) scores 1: a
correct "no sky" answer is perfect. segmentation-models reaches the same 1
through its ``smooth=1e-5`` term, which also shifts every other value slightly
(IoU 0.5 reads 0.5000025 there); here non-empty cases are exact.
"""

from __future__ import annotations

import tensorflow as tf

from tfsky.data.masks import SKY_THRESHOLD


class _ConfusionScore(tf.keras.metrics.Metric):
    """Per-class pixel counts accumulated over batches; subclasses turn them into a score."""

    def __init__(self, classes: int = 1, threshold: float = SKY_THRESHOLD, name: str | None = None, **kwargs):
        super().__init__(name=name, **kwargs)
        self.classes = classes
        self.threshold = threshold
        self.tp = self.add_weight("tp", shape=(classes,), initializer="zeros", dtype=tf.float64)
        self.fp = self.add_weight("fp", shape=(classes,), initializer="zeros", dtype=tf.float64)
        self.fn = self.add_weight("fn", shape=(classes,), initializer="zeros", dtype=tf.float64)

    def update_state(self, y_true, y_pred, sample_weight=None):
        truth, pred = self._binarise(tf.cast(y_true, tf.float32)), self._binarise(tf.cast(y_pred, tf.float32))
        if self.classes > 1:  # an all-zero target row is an ignored pixel: it counts nowhere
            labelled = tf.reduce_sum(tf.cast(y_true, tf.float32), axis=-1, keepdims=True)
            truth, pred = truth * labelled, pred * labelled
        axes = tf.range(tf.rank(pred) - 1)  # every axis but channels
        self.tp.assign_add(tf.cast(tf.reduce_sum(truth * pred, axes), tf.float64))
        self.fp.assign_add(tf.cast(tf.reduce_sum((1 - truth) * pred, axes), tf.float64))
        self.fn.assign_add(tf.cast(tf.reduce_sum(truth * (1 - pred), axes), tf.float64))

    def reset_state(self):
        for count in (self.tp, self.fp, self.fn):
            count.assign(tf.zeros_like(count))

    def _binarise(self, probabilities):
        if self.classes == 1:
            return tf.cast(probabilities > self.threshold, tf.float32)
        return tf.one_hot(tf.argmax(probabilities, axis=-1), self.classes, dtype=tf.float32)

    def result(self):
        numerator, denominator = self._ratio()
        per_class = tf.where(denominator > 0, numerator / tf.maximum(denominator, 1.0), 1.0)
        return tf.cast(tf.reduce_mean(per_class), tf.float32)

    def _ratio(self):
        raise NotImplementedError

    def get_config(self):
        return {**super().get_config(), "classes": self.classes, "threshold": self.threshold}


@tf.keras.utils.register_keras_serializable(package="tfsky")
class IoU(_ConfusionScore):
    """Intersection over union, ``tp / (tp + fp + fn)``, over the epoch.

    Args:
        classes: int. Output channels of the head (1 = sigmoid). Defaults to 1.
        threshold: float. Probability above which a pixel is positive (sigmoid head). Defaults to 0.5.
        name: str. History column name. Defaults to ``iou``.
    """

    def __init__(self, classes: int = 1, threshold: float = SKY_THRESHOLD, name: str = "iou", **kwargs):
        super().__init__(classes, threshold, name=name, **kwargs)

    def _ratio(self):
        return self.tp, self.tp + self.fp + self.fn


@tf.keras.utils.register_keras_serializable(package="tfsky")
class F1(_ConfusionScore):
    """F1 score (Dice), ``2 tp / (2 tp + fp + fn)``, over the epoch.

    Args:
        classes: int. Output channels of the head (1 = sigmoid). Defaults to 1.
        threshold: float. Probability above which a pixel is positive (sigmoid head). Defaults to 0.5.
        name: str. History column name. Defaults to ``f1``.
    """

    def __init__(self, classes: int = 1, threshold: float = SKY_THRESHOLD, name: str = "f1", **kwargs):
        super().__init__(classes, threshold, name=name, **kwargs)

    def _ratio(self):
        return 2 * self.tp, 2 * self.tp + self.fp + self.fn


def segmentation_metrics(classes: int = 1) -> list[tf.keras.metrics.Metric]:
    """The metrics every segmenter is compiled with: ``[IoU, F1]``."""
    return [IoU(classes), F1(classes)]
