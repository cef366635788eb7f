"""The Lovász-softmax loss (``bce_lovasz``) against its definition: the Lovász extension of 1 - IoU."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from tfsky.models.losses import make_loss, masked_crossentropy, masked_lovasz, two_classes
from tfsky.models.segmenter import segmentation_models


def jaccard_loss_of_errors(truth: np.ndarray, wrong: np.ndarray) -> float:
    """1 - IoU of one class when the pixels in ``wrong`` are mispredicted: |wrong| / |truth or wrong|."""
    union = np.logical_or(truth, wrong).sum()
    return wrong.sum() / union if union else 0.0


def lovasz_by_definition(truth: np.ndarray, pred: np.ndarray) -> float:
    """Lovász extension of the Jaccard loss at the error vector, class by class, from the set function itself.

    ``truth`` one-hot ``[N, C]`` (rows of zeros are ignored), ``pred`` ``[N, C]``; mean over present classes.
    """
    labelled = truth.sum(axis=1) > 0
    truth, pred = truth[labelled].astype(bool), pred[labelled]
    losses = []
    for c in range(truth.shape[1]):
        if not truth[:, c].any():
            continue
        errors = np.abs(truth[:, c] - pred[:, c])
        order = np.argsort(-errors, kind="stable")
        wrong = np.zeros(len(errors), bool)
        total, previous = 0.0, 0.0
        for i in order:
            wrong[i] = True
            current = jaccard_loss_of_errors(truth[:, c], wrong)
            total += errors[i] * (current - previous)
            previous = current
        losses.append(total)
    return float(np.mean(losses))


def random_case(seed: int, pixels: int = 40, classes: int = 3, ignored: int = 6):
    rng = np.random.default_rng(seed)
    truth = np.eye(classes, dtype=np.float32)[rng.integers(0, classes, pixels)]
    truth[rng.choice(pixels, ignored, replace=False)] = 0
    pred = rng.dirichlet(np.ones(classes), pixels).astype(np.float32)
    return truth, pred


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_lovasz_matches_the_extension_of_the_jaccard_loss(seed):
    truth, pred = random_case(seed)
    ours = masked_lovasz(tf.constant(truth.reshape(1, 5, 8, 3)), tf.constant(pred.reshape(1, 5, 8, 3))).numpy()
    assert ours == pytest.approx(lovasz_by_definition(truth, pred), rel=1e-5)


def test_lovasz_at_a_hard_prediction_is_one_minus_iou_over_present_classes():
    truth = np.eye(3, dtype=np.float32)[[0, 0, 0, 1, 1, 1, 0, 1]]  # class 2 absent
    truth[7] = 0  # ignored
    predicted = [0, 0, 1, 1, 1, 2, 0, 2]  # the ignored pixel's wrong class must not count
    pred = np.eye(3, dtype=np.float32)[predicted]
    iou_0 = 3 / 4  # truth {0,1,2,6}, predicted {0,1,6}
    iou_1 = 2 / 4  # truth {3,4,5}, predicted {2,3,4}
    loss = masked_lovasz(tf.constant(truth[None, None]), tf.constant(pred[None, None])).numpy()
    assert loss == pytest.approx(1 - (iou_0 + iou_1) / 2, rel=1e-6)


def test_lovasz_gives_ignored_pixels_no_gradient_and_labelled_ones_some():
    truth, pred = random_case(3)
    pred_var = tf.Variable(pred.reshape(1, 5, 8, 3))
    with tf.GradientTape() as tape:
        loss = masked_lovasz(tf.constant(truth.reshape(1, 5, 8, 3)), pred_var)
    grad = tape.gradient(loss, pred_var).numpy().reshape(-1, 3)
    ignored = truth.sum(axis=1) == 0
    assert np.all(grad[ignored] == 0)
    assert np.all(np.isfinite(grad)) and np.abs(grad[~ignored]).sum() > 0


def test_lovasz_compiles_with_xla_to_the_same_value():
    truth, pred = random_case(6)
    truth, pred = tf.constant(truth.reshape(1, 5, 8, 3)), tf.constant(pred.reshape(1, 5, 8, 3))
    compiled = tf.function(masked_lovasz, jit_compile=True)
    assert compiled(truth, pred).numpy() == pytest.approx(masked_lovasz(truth, pred).numpy(), rel=1e-5)


def test_lovasz_of_an_all_ignored_batch_is_zero():
    assert masked_lovasz(tf.zeros([1, 2, 2, 2]), tf.fill([1, 2, 2, 2], 0.5)).numpy() == 0.0


def test_bce_lovasz_on_a_softmax_head_is_the_sum_of_its_terms():
    truth, pred = random_case(4, classes=2)
    truth, pred = tf.constant(truth.reshape(1, 5, 8, 2)), tf.constant(pred.reshape(1, 5, 8, 2))
    expected = masked_crossentropy(truth, pred) + masked_lovasz(truth, pred)
    assert make_loss("bce_lovasz", 2)(truth, pred).numpy() == pytest.approx(expected.numpy(), rel=1e-6)


def test_bce_lovasz_on_a_sigmoid_head_scores_sky_and_not_sky():
    rng = np.random.default_rng(5)
    truth = tf.constant(rng.integers(0, 2, (2, 4, 4, 1)).astype(np.float32))
    pred = tf.constant(rng.uniform(0.01, 0.99, (2, 4, 4, 1)).astype(np.float32))
    bce = segmentation_models().losses.BinaryCELoss()(truth, pred)
    expected = bce + masked_lovasz(two_classes(truth), two_classes(pred))
    assert make_loss("bce_lovasz", 1)(truth, pred).numpy() == pytest.approx(expected.numpy(), rel=1e-6)
    assert two_classes(pred).numpy()[..., 0] == pytest.approx(1 - pred.numpy()[..., 0])
