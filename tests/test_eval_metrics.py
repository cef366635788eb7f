"""Segmentation metrics and naive baselines against hand-computed small cases."""

from __future__ import annotations

import numpy as np
import pytest

from tfsky.evaluate import metrics
from tfsky.evaluate.baselines import (
    Baselines,
    color_threshold_confusions,
    color_threshold_mask,
    fit_baselines,
    horizon_confusions,
    horizon_mask,
    tone_map,
    unit_rgb,
)


def mask(rows: list[str]) -> np.ndarray:
    """A boolean mask from strings of '#' (sky) and '.' (not sky)."""
    return np.array([[c == "#" for c in row] for row in rows])


def square(shift: int = 0) -> np.ndarray:
    """A 20 x 20 sky square in a 40 x 40 image, shifted right by ``shift`` pixels."""
    result = np.zeros((40, 40), dtype=bool)
    result[10:30, 10 + shift : 30 + shift] = True
    return result


# --- pixel metrics -------------------------------------------------------------------------------


def test_confusion_counts():
    pred = mask(["##..", "##.."])
    truth = mask(["#...", "#..#"])
    assert metrics.confusion(pred, truth) == (2, 2, 1, 3)


def test_iou_of_one_half():
    assert metrics.iou(mask(["##"]), mask(["#."])) == 0.5


def test_iou_of_one_third_and_f1_of_one_half():
    pred, truth = mask(["##."]), mask([".##"])  # tp 1, fp 1, fn 1
    assert metrics.iou(pred, truth) == pytest.approx(1 / 3)
    assert metrics.f1(pred, truth) == 0.5


def test_f1_of_two_thirds():
    pred, truth = mask(["##.."]), mask(["#..."])  # tp 1, fp 1, fn 0: 2 / (2 + 1)
    assert metrics.f1(pred, truth) == pytest.approx(2 / 3)


def test_empty_against_empty_is_perfect():
    empty = np.zeros((3, 4), dtype=bool)
    assert metrics.iou(empty, empty) == 1.0
    assert metrics.f1(empty, empty) == 1.0
    assert metrics.pixel_accuracy(empty, empty) == 1.0
    assert metrics.mcr(empty, empty) == 0.0


def test_empty_against_non_empty_is_zero():
    empty, sky = np.zeros((2, 2), dtype=bool), mask(["#.", ".."])
    assert metrics.iou(empty, sky) == metrics.iou(sky, empty) == 0.0
    assert metrics.f1(empty, sky) == metrics.f1(sky, empty) == 0.0


def test_pixel_accuracy_and_mcr():
    pred, truth = mask(["##..", "##.."]), mask(["#...", "#..#"])  # 2 fp + 1 fn of 8 pixels
    assert metrics.pixel_accuracy(pred, truth) == 5 / 8
    assert metrics.mcr(pred, truth) == 3 / 8


def test_shape_mismatch_is_refused():
    with pytest.raises(ValueError, match=r"prediction shape \(1, 2\) differs from truth shape \(2, 1\)"):
        metrics.confusion(np.zeros((1, 2)), np.zeros((2, 1)))


# --- boundary F1 -----------------------------------------------------------------------------------


def test_boundary_is_the_inner_edge_and_not_the_image_frame():
    edge = metrics.boundary(square())
    assert edge.sum() == 76  # perimeter pixels of a 20 x 20 square
    assert not metrics.boundary(np.ones((5, 5), dtype=bool)).any()
    half = np.zeros((6, 6), dtype=bool)
    half[:3] = True
    assert np.array_equal(np.flatnonzero(metrics.boundary(half).any(axis=1)), [2])


@pytest.mark.parametrize("shift", [1, 3])
def test_boundary_f1_tolerates_shifts_within_the_band(shift):
    assert metrics.boundary_f1(square(shift), square(), band=3) == 1.0


def test_boundary_f1_of_a_five_pixel_shift():
    # Of the 76 boundary pixels of the shifted square, 42 lie within 3 px of the true boundary:
    # 18 on the top row (15 on it, 3 past its corner), 18 on the bottom row, 6 on the near side.
    match = metrics.boundary_match(square(5), square(), band=3)
    assert match == (42, 76, 42, 76)
    assert metrics.boundary_f1(square(5), square(), band=3) == pytest.approx(42 / 76)
    assert metrics.boundary_f1(square(5), square(), band=5) == 1.0


def test_boundary_f1_empty_cases():
    empty, full = np.zeros((8, 8), dtype=bool), np.ones((8, 8), dtype=bool)
    assert metrics.boundary_f1(empty, empty) == 1.0
    assert metrics.boundary_f1(full, empty) == 1.0  # neither has a boundary inside the image
    assert metrics.boundary_f1(square(), np.zeros_like(square())) == 0.0


# --- aggregation -------------------------------------------------------------------------------------


def test_dataset_level_and_mean_per_image_differ_as_defined():
    big = metrics.score(mask(["####", "####"]), mask(["####", "##.."]))  # IoU 6/8
    empty = metrics.score(np.zeros((1, 2), bool), np.zeros((1, 2), bool))  # IoU 1
    assert metrics.total([big.confusion, empty.confusion]) == (6, 2, 0, 2)
    assert metrics.dataset_level([big, empty])["iou"] == 6 / 8
    assert metrics.mean_per_image([big, empty])["iou"] == (6 / 8 + 1) / 2
    assert metrics.dataset_level([big, empty])["sky_fraction_truth"] == 6 / 10


# --- baselines ---------------------------------------------------------------------------------------


def half_sky_image(height: int = 20, width: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """Bright blue top half (sky), dark red-brown bottom half."""
    image = np.zeros((height, width, 3), dtype=np.uint8)
    image[: height // 2] = (90, 150, 230)
    image[height // 2 :] = (120, 60, 30)
    truth = np.zeros((height, width), dtype=bool)
    truth[: height // 2] = True
    return image, truth


def test_horizon_mask_rows():
    assert np.array_equal(horizon_mask((4, 3, 3), 0.5), mask(["###", "###", "...", "..."]))
    assert not horizon_mask((4, 3), 0.0).any()
    assert horizon_mask((4, 3), 1.0).all()


def test_fit_on_a_half_sky_image_finds_the_middle_row_and_the_colour():
    image, truth = half_sky_image()
    fitted = fit_baselines([(image, truth)], "test images")
    assert fitted.horizon_fraction == 0.5
    assert metrics.iou(horizon_mask(image.shape, fitted.horizon_fraction), truth) == 1.0
    assert metrics.iou(color_threshold_mask(image, fitted.color_threshold), truth) == 1.0
    assert (fitted.fitted_on, fitted.fit_images) == ("test images", 1)


def test_fit_maximises_the_dataset_level_iou_not_the_mean_per_image():
    sky_image, sky_truth = half_sky_image()
    ground = np.zeros_like(sky_truth)
    # Mean per-image IoU would prefer "never sky" (0 + 1 + 1) / 3 over the true horizon (1 + 0 + 0) / 3.
    fitted = fit_baselines([(sky_image, sky_truth), (sky_image, ground), (sky_image, ground)], "test images")
    assert fitted.horizon_fraction == 0.5


def test_fit_without_samples_is_none():
    assert fit_baselines([], "nothing") is None


def test_grid_counts_equal_the_counts_of_the_predicted_masks():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (23, 17, 3), dtype=np.uint8)
    truth = rng.random((23, 17)) < 0.4
    grid = np.linspace(0, 1, 11)
    for value, counts in zip(grid, horizon_confusions(truth, grid)):
        assert counts == metrics.confusion(horizon_mask(truth.shape, value), truth)
    for value, counts in zip(grid, color_threshold_confusions(image, truth, grid)):
        assert counts == metrics.confusion(color_threshold_mask(image, value), truth)


def test_color_rule_needs_blue_and_brightness():
    image = np.array([[[200, 200, 255], [255, 200, 200], [20, 20, 40]]], dtype=np.uint8)
    assert color_threshold_mask(image, 0.5).tolist() == [[True, False, False]]


def test_unit_rgb_scales_ldr_and_tone_maps_hdr():
    assert unit_rgb(np.full((1, 1, 1), 65535, np.uint16)).tolist() == [[[1.0, 1.0, 1.0]]]
    hdr = np.array([[[1e4, 1e4, 2e4], [1.0, 1.0, 1.0]]], dtype=np.float32)
    mapped = unit_rgb(hdr)
    assert mapped.min() > 0 and mapped.max() < 1
    assert mapped[0, 0, 2] > mapped[0, 0, 0] > mapped[0, 1, 0]  # order kept
    assert np.array_equal(mapped, tone_map(hdr))


def test_baselines_predict_both_masks():
    image, truth = half_sky_image()
    masks = Baselines(horizon_fraction=0.25, color_threshold=0.5).predict(image)
    assert masks["horizon"].sum() == 5 * 8
    assert np.array_equal(masks["color_threshold"], truth)
