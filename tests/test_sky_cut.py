"""One sky cut (P(sky) >= threshold) and one IoU/F1, shared by the Keras metrics, evaluation and export."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from tfsky.data.masks import Confusion, iou_f1, sky_mask, sky_mask_graph, sky_regions
from tfsky.evaluate import metrics
from tfsky.evaluate.segmenter import sky_mask as evaluator_mask
from tfsky.models.metrics import F1, IoU

LEVELS = np.array([0.0, 0.2, 0.3, 0.5, 0.7, 1.0], np.float32)  # 0.3, 0.5 and 0.7 sit exactly on a threshold


def batch(seed: int, shape=(3, 6, 7)) -> tuple[np.ndarray, np.ndarray]:
    """Sigmoid probabilities [B, H, W, 1] drawn from `LEVELS` and 0/1 truth of the same shape."""
    rng = np.random.default_rng(seed)
    return rng.choice(LEVELS, shape)[..., None], rng.integers(0, 2, shape)[..., None].astype(np.float32)


def evaluator_scores(probabilities: np.ndarray, truth: np.ndarray, threshold: float) -> dict[str, float]:
    """Dataset-level IoU and F1 as ``tfsky evaluate`` computes them, image by image."""
    scores = [metrics.score(evaluator_mask(p, threshold), t[..., 0] > 0.5) for p, t in zip(probabilities, truth)]
    return metrics.dataset_level(scores)


@pytest.mark.parametrize("threshold", [0.3, 0.5, 0.7])
def test_numpy_and_tensorflow_cuts_agree_and_a_pixel_at_the_threshold_is_sky(threshold):
    probabilities = np.array([0.0, np.nextafter(np.float32(threshold), np.float32(0)), threshold, 1.0], np.float32)
    expected = [False, False, True, True]
    assert sky_mask(probabilities, threshold).tolist() == expected
    assert sky_mask_graph(tf.constant(probabilities), threshold).numpy().tolist() == expected
    assert tf.function(sky_mask_graph)(tf.constant(probabilities), threshold).numpy().tolist() == expected


@pytest.mark.parametrize("threshold", [0.3, 0.5, 0.7])
def test_keras_metrics_give_the_evaluators_numbers_on_the_same_pixels(threshold):
    iou, f1 = IoU(threshold=threshold), F1(threshold=threshold)
    batches = [batch(seed) for seed in range(3)]
    for probabilities, truth in batches:
        assert np.any(probabilities == np.float32(threshold))  # where `>` and `>=` differ
        for metric in (iou, f1):
            metric.update_state(tf.constant(truth), tf.constant(probabilities))
    expected = evaluator_scores(
        np.concatenate([b[0] for b in batches]), np.concatenate([b[1] for b in batches]), threshold
    )
    assert iou.result().numpy() == pytest.approx(expected["iou"], rel=1e-6)
    assert f1.result().numpy() == pytest.approx(expected["f1"], rel=1e-6)
    strictly_above = evaluator_scores(*[np.concatenate(part) for part in zip(*batches)], threshold + 1e-6)
    assert strictly_above["iou"] != pytest.approx(expected["iou"], rel=1e-6)  # the test sees the difference


def test_keras_metrics_and_the_evaluator_agree_on_empty_masks():
    truth = np.zeros((1, 2, 3, 1), np.float32)
    nothing = np.full_like(truth, 0.2)
    at_threshold = nothing.copy()
    at_threshold[0, 0, 0, 0] = 0.5
    for probabilities, score in ((nothing, 1.0), (at_threshold, 0.0)):  # right "no sky"; one false sky pixel
        expected = evaluator_scores(probabilities, truth, 0.5)
        for metric, name in ((IoU(), "iou"), (F1(), "f1")):
            metric.update_state(tf.constant(truth), tf.constant(probabilities))
            assert metric.result().numpy() == expected[name] == score


@pytest.mark.parametrize("counts", [(0, 0, 0), (3, 1, 2), (0, 4, 0), (5, 0, 0), (0, 0, 7)])
def test_iou_f1_is_the_same_on_numbers_arrays_and_tensors(counts):
    tp, fp, fn = counts
    on_numbers = Confusion(tp, fp, fn, 0)
    on_arrays = iou_f1(*(np.array([c, c]) for c in counts))
    on_tensors = iou_f1(*(tf.constant([c, c], tf.float64) for c in counts))
    for index, value in enumerate((on_numbers.iou, on_numbers.f1)):
        assert on_arrays[index].tolist() == [value, value]
        assert on_tensors[index].numpy().tolist() == pytest.approx([value, value], rel=1e-15)
    assert on_numbers.iou == (1.0 if counts == (0, 0, 0) else tp / (tp + fp + fn))


def test_sky_regions_drop_small_ones_and_the_ones_the_scene_encloses():
    mask = np.zeros((100, 100), bool)
    mask[:30, 10:90] = True  # the sky: reaches the top
    mask[50:70, 40:60] = True  # 4 %, enclosed: a facade
    mask[80:84, 97:] = True  # 0.12 %, at the border: a speck
    kept, dropped = sky_regions(mask, 0.01)
    np.testing.assert_array_equal(kept, np.pad(np.ones((30, 80), bool), ((0, 70), (10, 10))))
    assert dropped == {"small": {"regions": 1, "pixels": 12}, "enclosed": {"regions": 1, "pixels": 400}}
    kept, dropped = sky_regions(mask, 0.0, keep_enclosed=True)  # an all-sky fisheye keeps everything
    np.testing.assert_array_equal(kept, mask)
    assert dropped == {}
    fisheye = np.zeros((100, 100), bool)
    fisheye[10:90, 10:90] = True
    np.testing.assert_array_equal(sky_regions(fisheye, 0.01, keep_enclosed=True)[0], fisheye)
    assert not sky_regions(fisheye, 0.01)[0].any()


def test_drop_enclosed_cuts_a_photo_without_the_sky_regions_inside_the_scene():
    probability = np.zeros((60, 80), np.float32)
    probability[:20] = 0.9  # the sky: reaches the top, left and right borders
    probability[40:50, 30:45] = 0.7  # grey road called sky: touches no border
    probability[52:, 70:] = 0.6  # a patch in the corner: touches the bottom and right borders, kept
    sky = sky_mask(probability, 0.5, drop_enclosed=True)
    np.testing.assert_array_equal(sky, sky_mask(probability, 0.5) & ~(probability == np.float32(0.7)))
    assert sky[:20].all() and sky[52:, 70:].all() and not sky[40:50, 30:45].any()
    np.testing.assert_array_equal(evaluator_mask(probability[..., None], 0.5, drop_enclosed=True), sky)
    all_sky = np.full((60, 80), 0.9, np.float32)
    all_sky[0] = all_sky[-1] = all_sky[:, 0] = all_sky[:, -1] = 0.1  # a fisheye disc inside the frame
    assert not sky_mask(all_sky, 0.5, drop_enclosed=True).any()  # why it is never for all-sky frames
