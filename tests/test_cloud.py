"""Cloud cover: masked losses and metrics, cloud fraction / okta / condition, fisheye weights, baselines."""

from __future__ import annotations

import math

import numpy as np
import pytest
import tensorflow as tf

from tfsky.errors import InputError
from tfsky.evaluate.cloud import frame_score, summarise, FrameResult
from tfsky.evaluate.cloud_baselines import fit_threshold
from tfsky.models import cloudnet
from tfsky.models.losses import make_loss, masked_crossentropy
from tfsky.models.metrics import IoU
from tfsky.predict.cloud import CloudCoverConfig, FisheyeModel, cloud_cover, okta, sky_condition, timestamp_from_name

IGNORED = [0.0, 0.0]


def targets_with_ignore():
    """2 classes, 4 pixels: clear, cloud, ignored, cloud."""
    return tf.constant([[[[1.0, 0.0], [0.0, 1.0], IGNORED, [0.0, 1.0]]]])


@pytest.mark.parametrize("name", ["bce_jaccard", "bce_lovasz", "dice", "focal", "bce"])
def test_categorical_losses_ignore_pixels_with_empty_targets(name):
    truth = targets_with_ignore()
    pred = np.array([[[[0.7, 0.3], [0.2, 0.8], [0.5, 0.5], [0.4, 0.6]]]], np.float32)
    changed = pred.copy()
    changed[0, 0, 2] = [0.01, 0.99]  # only the ignored pixel's prediction changes
    loss = make_loss(name, 2)
    assert loss(truth, pred).numpy() == pytest.approx(loss(truth, changed).numpy(), rel=1e-6)
    worse = pred.copy()
    worse[0, 0, 1] = [0.9, 0.1]  # a labelled pixel gets worse
    assert loss(truth, worse).numpy() > loss(truth, pred).numpy()


def test_masked_crossentropy_averages_over_labelled_pixels_only():
    truth = targets_with_ignore()
    pred = tf.constant([[[[0.7, 0.3], [0.2, 0.8], [0.5, 0.5], [0.4, 0.6]]]])
    expected = -(math.log(0.7) + math.log(0.8) + math.log(0.6)) / 3
    assert masked_crossentropy(truth, pred).numpy() == pytest.approx(expected, rel=1e-5)


def test_masked_jaccard_without_ignore_matches_segmentation_models():
    from tfsky.models.segmenter import segmentation_models

    rng = np.random.default_rng(0)
    truth = tf.one_hot(rng.integers(0, 2, (2, 8, 8)), 2)
    pred = tf.nn.softmax(tf.constant(rng.normal(size=(2, 8, 8, 2)), tf.float32))
    ours = make_loss("dice", 2)(truth, pred).numpy()
    reference = segmentation_models().losses.DiceLoss()(truth, pred).numpy()
    assert ours == pytest.approx(reference, rel=1e-4)


def test_softmax_iou_counts_no_ignored_pixel():
    truth = targets_with_ignore()
    pred = tf.constant([[[[0.9, 0.1], [0.1, 0.9], [0.9, 0.1], [0.1, 0.9]]]])  # right on every labelled pixel
    metric = IoU(classes=2)
    metric.update_state(truth, pred)
    assert metric.result().numpy() == pytest.approx(1.0)  # the ignored pixel (predicted clear) is no false positive


@pytest.mark.parametrize(
    "fraction, expected",
    [(0.0, 0), (0.4, 0), (0.6, 1), (12.5, 1), (19.0, 2), (50.0, 4), (87.5, 7), (99.4, 7), (99.6, 8), (100.0, 8)],
)
def test_okta_reserves_0_and_8_for_completely_clear_and_overcast(fraction, expected):
    assert okta(fraction, tolerance_pp=0.5) == expected


def test_condition_thresholds_come_from_the_config():
    cfg = CloudCoverConfig(clear_max_okta=1, overcast_min_okta=7)
    assert [sky_condition(o, cfg) for o in (0, 1, 2, 6, 7, 8)] == ["clear"] * 2 + ["partial"] * 2 + ["overcast"] * 2
    assert sky_condition(2, CloudCoverConfig(clear_max_okta=2)) == "clear"


def disc(size: int, centre: tuple[float, float], radius: float) -> np.ndarray:
    rows, cols = np.ogrid[:size, :size]
    return np.hypot(rows - centre[0], cols - centre[1]) <= radius


def test_fisheye_fit_recovers_centre_and_radius_and_weights_follow_equidistant_projection():
    valid = disc(201, (90.0, 110.0), 80.0)
    model = FisheyeModel.fit(valid)
    assert model.centre == pytest.approx((90.0, 110.0), abs=0.05)
    assert model.radius == pytest.approx(80.0, rel=0.01)
    weights = model.solid_angle_weights(valid.shape)
    assert weights[90, 110] == pytest.approx(1.0)
    assert weights[90, 110 + 40] == pytest.approx(math.sin(math.pi / 4) / (math.pi / 4), rel=0.02)  # theta = 45 deg
    # The weights integrate to the hemisphere: sum(w) * dOmega(zenith pixel) = 2 pi, dOmega(zenith) = (pi/2 / R)^2
    assert (weights * valid).sum() * (math.pi / 2 / model.radius) ** 2 == pytest.approx(2 * math.pi, rel=0.02)


def test_cloud_cover_reports_pixel_and_solid_angle_fractions():
    valid = disc(201, (100.0, 100.0), 90.0)
    cloud = valid & (np.hypot(*np.ogrid[-100:101, -100:101]) > 60)  # a ring of cloud near the horizon
    facts = cloud_cover(cloud, valid, CloudCoverConfig())
    assert facts["cloud_fraction_pct"] == pytest.approx(100 * cloud.sum() / valid.sum(), abs=1e-3)
    assert facts["valid_pixels"] == int(valid.sum())
    # Equidistant: pixels near the horizon cover less solid angle than at the zenith
    assert facts["cloud_fraction_solid_angle_pct"] < facts["cloud_fraction_pct"]
    assert facts["okta"] == okta(facts["cloud_fraction_pct"]) and facts["sky_condition"] == "partial"
    equisolid = cloud_cover(cloud, valid, CloudCoverConfig(projection="equisolid"))
    assert equisolid["cloud_fraction_solid_angle_pct"] == pytest.approx(equisolid["cloud_fraction_pct"], abs=0.01)


def test_frame_without_valid_sky_is_an_input_error_not_a_division_by_zero():
    nothing = np.zeros((4, 4), bool)
    with pytest.raises(InputError, match=r"frame\.png: no valid sky pixel .*cloud fraction undefined"):
        cloud_cover(nothing, nothing, CloudCoverConfig(), "frame.png")


def test_timestamps_are_parsed_from_file_names():
    assert timestamp_from_name("20121024_124151.jpg") == "2012-10-24T12:41:51"
    assert timestamp_from_name("cam_2021-06-01T08-30-00.png") == "2021-06-01T08:30:00"
    assert timestamp_from_name("ASC100-1006_451.png") is None


def test_threshold_fit_is_the_best_of_every_possible_threshold():
    rng = np.random.default_rng(1)
    values = np.round(rng.normal(size=500), 1)
    cloud = values + rng.normal(scale=0.7, size=500) > 0.3
    threshold, accuracy = fit_threshold(values, cloud)
    brute = max(np.mean((values >= t) == cloud) for t in np.concatenate([np.unique(values), [np.inf]]))
    assert accuracy == pytest.approx(brute) and np.mean((values >= threshold) == cloud) == pytest.approx(brute)


def test_frame_scores_leave_ignored_pixels_out_and_summaries_add_counts():
    truth = np.array([[0, 1, 255], [1, 1, 0]], np.uint8)
    pred = np.array([[False, True, True], [True, False, True]])
    score = frame_score(pred, truth)
    np.testing.assert_array_equal(score.confusion, [[1, 1], [1, 2]])
    assert score.truth_pct == pytest.approx(60.0) and score.pred_pct == pytest.approx(60.0)
    frames = [FrameResult("a", "cam", "Partial cloud", {"model": score})]
    result = summarise(frames, "model", CloudCoverConfig())
    assert result["pixel_accuracy"] == pytest.approx(3 / 5)
    assert result["iou_per_class"]["cloud"] == pytest.approx(2 / 4)
    assert result["cloud_f1"] == pytest.approx(4 / 6)
    assert result["cloud_fraction_mae_pp"] == pytest.approx(0.0) and result["okta_exact"] == 1.0
    assert result["condition_confusion"]["partial"]["partial"] == 1
    # a frame with 2 of its 4 cloud pixels missed and one with a clear pixel called cloud: MAE vs bias
    under = frame_score(np.array([[True, False, False, True]]), np.array([[1, 1, 1, 1]], np.uint8))
    over = frame_score(np.array([[True, False, False, False]]), np.array([[0, 0, 0, 0]], np.uint8))
    both = summarise(
        [FrameResult(n, "cam", None, {"model": s}) for n, s in (("u", under), ("o", over))], "model", CloudCoverConfig()
    )
    assert under.pred_pct - under.truth_pct == pytest.approx(-50.0) and over.pred_pct == pytest.approx(25.0)
    assert both["cloud_fraction_mae_pp"] == pytest.approx(37.5) and both["cloud_fraction_bias_pp"] == pytest.approx(
        -12.5
    )


def test_cloudnet_is_the_described_network_and_classifies_one_pixel_per_patch():
    model = cloudnet.build_cloudnet()
    convs = [layer for layer in model.layers if isinstance(layer, tf.keras.layers.Conv2D)]
    assert [(c.filters, c.kernel_size) for c in convs] == [(64, (5, 5))] * 3
    assert [layer.units for layer in model.layers if isinstance(layer, tf.keras.layers.Dense)] == [384, 192, 2]
    assert model.output_shape == (None, 2)
    image = np.random.default_rng(0).integers(0, 255, (20, 24, 3), dtype=np.uint8)
    rows, cols = np.array([0, 19, 10]), np.array([0, 23, 5])
    patches = cloudnet.patches_at(cloudnet.padded(image), rows, cols)
    np.testing.assert_allclose(patches[:, 16, 16], image[rows, cols] / 255.0, rtol=1e-6)  # centred on the pixel
    probs = cloudnet.classify_pixels(model, image, rows, cols, batch=2)
    assert probs.shape == (3, 2) and np.allclose(probs.sum(1), 1, atol=1e-5)


# --- the valid sky of each frame: camera masks chosen per frame --------------------------------------------------


def write_mask(path, sky: np.ndarray):
    import cv2

    cv2.imwrite(str(path), sky.astype(np.uint8) * 255)
    return path


def fisheye_frames(size: int = 64):
    """Two cameras of one size: a wide disc whose outside is dim but not black, and a cropped ellipse that
    its camera blacks out (as WSISEG's cameras 1 and 2)."""
    rows, cols = np.ogrid[:size, :size]
    wide = disc(size, (size / 2, size / 2), size * 0.45)
    cropped = ((rows - size / 2) / (size * 0.3)) ** 2 + ((cols - size / 2) / (size * 0.4)) ** 2 <= 1
    sky = np.random.default_rng(0).integers(40, 255, (size, size, 3)).astype(np.uint8)
    first = np.where(wide[..., None], sky, np.uint8(20))  # a dim ring of the lens housing, not black
    second = np.where(cropped[..., None], sky, np.uint8(0))
    return wide, cropped, first, second


def test_each_frame_gets_the_camera_mask_that_fits_it_else_its_own_bright_pixels(tmp_path):
    from tfsky.predict.cloud import CameraMasks

    wide, cropped, first, second = fisheye_frames()
    masks = CameraMasks(CloudCoverConfig(camera_masks=[write_mask(tmp_path / "wide.png", wide)]))
    valid, mask = masks.valid_sky(first)
    assert mask.path.name == "wide.png" and np.array_equal(valid, wide)  # the dim ring is outside the lens
    valid, mask = masks.valid_sky(second)  # black on a fifth of the wide mask: it does not fit
    assert mask is None and np.array_equal(valid, cropped)
    both = CameraMasks(
        CloudCoverConfig(camera_masks=[tmp_path / "wide.png", write_mask(tmp_path / "crop.png", cropped)])
    )
    assert both.valid_sky(second)[1].path.name == "crop.png"
    assert CameraMasks(CloudCoverConfig(camera_masks=[])).valid_sky(first)[1] is None
    assert both.valid_sky(first[:40])[1] is None  # a frame of another size: no mask of its size
    forced = CameraMasks(CloudCoverConfig(camera_mask=tmp_path / "wide.png"))
    assert np.array_equal(forced.valid_sky(second)[0], wide)  # forced on every frame of its size
    with pytest.raises(InputError, match=r"small\.png: frame is 64x40 but the camera mask .*wide\.png is 64x64"):
        forced.valid_sky(first[:40], "small.png")


def test_serving_graph_chooses_the_same_valid_sky_as_tfsky_predict(tmp_path):
    from tfsky.predict.cloud import CameraMasks

    wide, cropped, first, second = fisheye_frames()
    cfg = CloudCoverConfig(camera_masks=[write_mask(tmp_path / "wide.png", wide)])
    masks = CameraMasks(cfg)
    graph = tf.function(masks.valid_sky_graph)
    sixteen_bit = second.astype(np.uint16) * 257
    sixteen_bit[0, :3] = [[2056] * 3, [2057] * 3, [2184] * 3]  # 8 * 257 is dark, one step above is bright
    for frame in (first, second, first[:40]):
        assert np.array_equal(graph(tf.constant(frame / 255.0, tf.float32)).numpy(), masks.valid_sky(frame)[0])
    assert np.array_equal(
        graph(tf.constant(sixteen_bit / 65535.0, tf.float32)).numpy(), masks.valid_sky(sixteen_bit)[0]
    )
    assert masks.valid_sky(sixteen_bit)[0][0, :3].tolist() == [False, True, True]


def test_default_masks_are_the_models_training_cameras_and_a_missing_one_is_one_line(tmp_path):
    from tfsky.data.config import Preprocess
    from tfsky.models.bundle import ModelInfo
    from tfsky.predict.cloud import FrameCover, training_camera_masks

    wide, _, first, second = fisheye_frames()
    mask = write_mask(tmp_path / "wide.png", wide)

    def model_info(mask_path):
        cameras = [
            {"name": "c1", "first_frame": 1, "last_frame": 9, "mask": str(mask_path)},
            {"name": "c2", "first_frame": 10, "last_frame": 20, "mask": None},
        ]
        source = {"kind": "allsky_folder", "name": "wsiseg", "allsky": {"cameras": cameras}}
        return ModelInfo(
            task="segmenter", preprocess=Preprocess(), tile_size=64, classes=2, config={"data": {"sources": [source]}}
        )

    assert training_camera_masks(model_info(mask)) == [mask]
    cover = FrameCover(CloudCoverConfig(), 0.5, model_info(mask))
    _, valid, facts = cover(first, np.ones(wide.shape, np.float32), "frame_0001.png")
    assert facts["camera_mask"] == str(mask) and facts["valid_pixels"] == int(wide.sum())
    assert facts["cloud_fraction_pct"] == 100.0
    assert cover(second, np.zeros(wide.shape, np.float32), "frame_0012.png")[2]["camera_mask"] is None
    with pytest.raises(InputError, match=r"gone\.png: camera mask of the model's training camera c1 not found"):
        FrameCover(CloudCoverConfig(), 0.5, model_info(tmp_path / "gone.png"))
    assert FrameCover(CloudCoverConfig(camera_masks=[]), 0.5, model_info(tmp_path / "gone.png")).masks.masks == []


def test_a_relative_camera_mask_is_recorded_resolved_so_predict_finds_it_from_any_folder(tmp_path, monkeypatch):
    """The training config's relative mask path is stored absolute in what the model records (its sidecar)."""
    from tfsky.config import from_dict, load_config, to_dict
    from tfsky.data.config import Preprocess
    from tfsky.models.bundle import ModelInfo
    from tfsky.predict.cloud import training_camera_masks
    from tfsky.train.config import SegmenterConfig

    for folder in ("images", "annotation"):
        (tmp_path / "data" / folder).mkdir(parents=True)
    mask = write_mask(tmp_path / "data" / "mask_cam.png", fisheye_frames()[0])
    (tmp_path / "run.yaml").write_text(
        "name: cloud\ndata:\n  sources:\n    - kind: allsky_folder\n      name: wsiseg\n"
        "      images: data/images\n      masks: data/annotation\n      allsky:\n        cameras:\n"
        "          - {name: c1, first_frame: 0, last_frame: 9, mask: data/mask_cam.png}\nmodel:\n  classes: 2\n"
    )
    monkeypatch.chdir(tmp_path)  # the training run's folder
    recorded = to_dict(load_config(SegmenterConfig, "run.yaml"))
    monkeypatch.chdir(tmp_path / "data" / "images")  # predict, from another folder
    info = ModelInfo(task="segmenter", preprocess=Preprocess(), tile_size=64, classes=2, config=recorded)
    assert training_camera_masks(info) == [mask]
    assert from_dict(SegmenterConfig, recorded, recorded=True).data.sources[0].allsky.cameras[0].mask == mask


def test_cloud_cover_config_checks_its_masks_and_fit_share(tmp_path):
    from tfsky.errors import ConfigError

    with pytest.raises(ConfigError, match=r"camera_masks\[1\]"):
        CloudCoverConfig(
            camera_masks=[write_mask(tmp_path / "m.png", np.ones((4, 4), bool)), tmp_path / "none.png"]
        ).validate()
    with pytest.raises(ConfigError, match="mask_fit_dark_pct"):
        CloudCoverConfig(mask_fit_dark_pct=100).validate()


def test_cloud_evaluation_refuses_a_cache_at_a_working_scale(tmp_path):
    import json

    from tfsky.data.cache import FORMAT, MANIFEST
    from tfsky.evaluate.cloud import evaluate_cloud

    (tmp_path / MANIFEST).write_text(json.dumps({"format": FORMAT, "config": {"working_scale": 224}, "splits": {}}))
    with pytest.raises(InputError, match="224-px working scale: evaluate on a native-resolution cache"):
        evaluate_cloud(tmp_path / "model.keras", tmp_path)  # refused before the model is even read
