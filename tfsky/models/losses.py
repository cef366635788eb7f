"""Segmentation losses by config name, always computed in float32.

One-class (sigmoid) heads use segmentation-models' binary formulas
(``sm.losses``). Softmax heads use the masked categorical forms below: a pixel
whose one-hot target row is all zero (a mask value >= ``classes`` in the
cache, `tfsky.data.allsky.IGNORE` = 255 for all-sky frames) is ignored — it
adds nothing to the cross-entropy (averaged over the valid pixels only) nor to
the soft Dice / Jaccard counts (its prediction is zeroed). Without ignored
pixels they are the usual categorical losses (the cross-entropy is per pixel,
summed over classes). A serialisable Keras `Loss` casts both tensors to
float32 first, so a float16 tensor can never reach a log or a ratio (the
mixed-precision NaN).

``bce_lovasz`` swaps the soft Jaccard term for the Lovász-softmax loss (Berman
et al., CVPR 2018): the tight convex extension of 1 - IoU, whose gradient goes
to the pixels ranked worst — at a segmentation's edges — rather than being
spread over every pixel's probability. A sigmoid head is scored as the two
classes (1 - p, p). Segmentation-models has no Lovász loss, so it lives here.
"""

from __future__ import annotations

from typing import Literal

import tensorflow as tf

from tfsky.models.segmenter import segmentation_models

LossName = Literal["bce_jaccard", "bce_lovasz", "dice", "focal", "bce"]


SMOOTH = 1e-5  # segmentation-models' smoothing of the soft Dice / Jaccard ratios
EPSILON = 1e-7  # probabilities are clipped to [EPSILON, 1 - EPSILON] before the log
FOCAL_GAMMA, FOCAL_ALPHA = 2.0, 0.25  # segmentation-models' categorical focal defaults


def _binary_loss(name: LossName):
    """The segmentation-models loss for ``name`` on a sigmoid head."""
    losses = segmentation_models().losses
    if name == "bce_jaccard":
        return losses.bce_jaccard_loss
    if name == "dice":
        return losses.DiceLoss()
    if name == "focal":
        return losses.BinaryFocalLoss()
    if name == "bce":
        return losses.BinaryCELoss()
    if name == "bce_lovasz":
        bce = losses.BinaryCELoss()
        return lambda y_true, y_pred: bce(y_true, y_pred) + masked_lovasz(two_classes(y_true), two_classes(y_pred))
    raise ValueError(f"unknown loss {name!r}")


def two_classes(y: tf.Tensor) -> tf.Tensor:
    """A one-channel sky target or probability ``[..., 1]`` as the two-class ``[..., (1 - y, y)]``."""
    return tf.concat([1 - y, y], axis=-1)


def valid_pixels(y_true: tf.Tensor) -> tf.Tensor:
    """``[..., 1]`` weight of each pixel of a one-hot target: 1 when labelled, 0 when ignored (all-zero row)."""
    return tf.reduce_sum(y_true, axis=-1, keepdims=True)


def masked_crossentropy(y_true: tf.Tensor, y_pred: tf.Tensor) -> tf.Tensor:
    """Categorical cross-entropy averaged over the labelled pixels only."""
    log_p = tf.math.log(tf.clip_by_value(y_pred, EPSILON, 1 - EPSILON))
    return -tf.reduce_sum(y_true * log_p) / tf.maximum(tf.reduce_sum(y_true), 1.0)


def masked_focal(y_true: tf.Tensor, y_pred: tf.Tensor) -> tf.Tensor:
    """Categorical focal loss (``alpha (1 - p)**gamma`` times the cross-entropy) over the labelled pixels."""
    p = tf.clip_by_value(y_pred, EPSILON, 1 - EPSILON)
    focal = FOCAL_ALPHA * tf.pow(1 - p, FOCAL_GAMMA) * -tf.math.log(p)
    return tf.reduce_sum(y_true * focal) / tf.maximum(tf.reduce_sum(y_true), 1.0)


def _masked_counts(y_true: tf.Tensor, y_pred: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """Per-class soft intersection, labelled and predicted sums, with ignored pixels' predictions zeroed."""
    y_pred = y_pred * valid_pixels(y_true)
    axes = tf.range(tf.rank(y_true) - 1)
    return tf.reduce_sum(y_true * y_pred, axes), tf.reduce_sum(y_true, axes), tf.reduce_sum(y_pred, axes)


def masked_jaccard(y_true: tf.Tensor, y_pred: tf.Tensor) -> tf.Tensor:
    """1 - soft Jaccard index, mean over classes, over the labelled pixels of the batch."""
    intersection, truth, pred = _masked_counts(y_true, y_pred)
    return 1 - tf.reduce_mean((intersection + SMOOTH) / (truth + pred - intersection + SMOOTH))


def masked_dice(y_true: tf.Tensor, y_pred: tf.Tensor) -> tf.Tensor:
    """1 - soft Dice (F1), mean over classes, over the labelled pixels of the batch."""
    intersection, truth, pred = _masked_counts(y_true, y_pred)
    return 1 - tf.reduce_mean((2 * intersection + SMOOTH) / (truth + pred + SMOOTH))


def lovasz_gradient(truth_sorted: tf.Tensor) -> tf.Tensor:
    """The Lovász extension's weights for errors sorted in decreasing order: the Jaccard loss's increments."""
    positives = tf.reduce_sum(truth_sorted)
    intersection = positives - tf.cumsum(truth_sorted)
    union = positives + tf.cumsum(1 - truth_sorted)
    jaccard = 1 - intersection / union
    return tf.concat([jaccard[:1], jaccard[1:] - jaccard[:-1]], axis=0)


def masked_lovasz(y_true: tf.Tensor, y_pred: tf.Tensor) -> tf.Tensor:
    """Lovász-softmax over the labelled pixels of the batch, mean over the classes present in the target.

    At a hard (one-hot) prediction it equals 1 - IoU exactly, averaged over those classes. An ignored
    pixel gets error 0 and is no positive, so it sorts after every error and changes no weight before it:
    the same value as dropping it, with static shapes (XLA compiles it).
    """
    classes = y_pred.shape[-1]
    y_true, y_pred = tf.reshape(y_true, [-1, classes]), tf.reshape(y_pred, [-1, classes])
    labelled = tf.reduce_sum(y_true, axis=-1)
    losses, present = [], []
    for c in range(classes):
        truth = y_true[:, c]
        errors = tf.abs(truth - y_pred[:, c]) * labelled
        order = tf.argsort(errors, direction="DESCENDING")
        weights = tf.stop_gradient(lovasz_gradient(tf.gather(truth, order)))
        losses.append(tf.tensordot(tf.gather(errors, order), weights, 1))
        present.append(tf.cast(tf.reduce_sum(truth) > 0, tf.float32))
    present_classes = tf.stack(present)
    return tf.math.divide_no_nan(tf.reduce_sum(tf.stack(losses) * present_classes), tf.reduce_sum(present_classes))


def _categorical_loss(name: LossName):
    """The masked categorical loss for ``name`` on a softmax head."""
    if name == "bce_jaccard":
        return lambda y_true, y_pred: masked_crossentropy(y_true, y_pred) + masked_jaccard(y_true, y_pred)
    if name == "bce_lovasz":
        return lambda y_true, y_pred: masked_crossentropy(y_true, y_pred) + masked_lovasz(y_true, y_pred)
    if name == "dice":
        return masked_dice
    if name == "focal":
        return masked_focal
    if name == "bce":
        return masked_crossentropy
    raise ValueError(f"unknown loss {name!r}")


@tf.keras.utils.register_keras_serializable(package="tfsky")
class SegmentationLoss(tf.keras.losses.Loss):
    """A segmentation loss over ``[B, H, W, classes]`` probabilities, in float32.

    Args:
        kind: str. ``bce_jaccard`` (binary cross-entropy + soft Jaccard; the
            default), ``bce_lovasz`` (cross-entropy + Lovász-softmax),
            ``dice``, ``focal`` or ``bce``. With ``classes > 1`` the
            masked categorical counterparts are used.
        classes: int. Number of output channels (1 = sigmoid head).
    """

    def __init__(self, kind: LossName = "bce_jaccard", classes: int = 1, name: str | None = None, **kwargs):
        super().__init__(name=name or kind, **kwargs)
        self.kind = kind
        self.classes = classes
        self._loss = _binary_loss(kind) if classes == 1 else _categorical_loss(kind)

    def call(self, y_true, y_pred):
        return self._loss(tf.cast(y_true, tf.float32), tf.cast(y_pred, tf.float32))

    def get_config(self):
        return {**super().get_config(), "kind": self.kind, "classes": self.classes}


def make_loss(name: LossName, classes: int = 1) -> tf.keras.losses.Loss:
    """The loss named by ``train.loss`` for a head with ``classes`` outputs."""
    return SegmentationLoss(name, classes)
