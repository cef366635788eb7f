"""``tfsky evaluate segmenter`` end to end, with a model whose output is known exactly.

The "blue detector" is a real saved segmenter: a 1x1 convolution with a
float32 sigmoid head that says sky where the blue channel is >= 128
(``sigmoid(20 * (B / 255 - 0.5))``). It works pixel by pixel, so the tiled
predictor returns exactly its per-pixel answer and every metric in
``eval.json`` can be computed by hand.
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import tensorflow as tf

from tfsky.data.transforms import Preprocess
from tfsky.evaluate import metrics
from tfsky.io.images import read_image, read_mask
from tfsky.models.bundle import ModelInfo, save_model

SKY_BLUE = (50, 100, 255)  # blue >= 128: the model says sky; brightness 0.53
CLOUD = (120, 120, 120)  # blue < 128: the model misses it; grey (B >= R), brightness 0.47
GROUND = (120, 80, 40)  # not blue-ish
CAR = (0, 0, 255)  # blue on the ground: a model false positive; brightness 0.33
HEIGHT, WIDTH = 40, 64


def blue_detector(path: Path, tile_size: int) -> Path:
    inputs = tf.keras.Input((None, None, 3))
    conv = tf.keras.layers.Conv2D(1, 1)
    outputs = tf.keras.layers.Activation("sigmoid", dtype="float32")(conv(inputs))
    conv.set_weights([np.array([0.0, 0.0, 20.0]).reshape(1, 1, 3, 1), np.array([-10.0])])
    save_model(tf.keras.Model(inputs, outputs), path, ModelInfo("segmenter", Preprocess(), tile_size=tile_size))
    return path


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    return blue_detector(tmp_path_factory.mktemp("model") / "best.keras", tile_size=32)


def write_png(path: Path, rgb: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), np.ascontiguousarray(rgb[..., ::-1]) if rgb.ndim == 3 else rgb)


def scene(sky: tuple = SKY_BLUE, sky_rows: int = HEIGHT // 2) -> np.ndarray:
    """Sky above ``sky_rows``, ground below."""
    image = np.empty((HEIGHT, WIDTH, 3), dtype=np.uint8)
    image[:sky_rows], image[sky_rows:] = sky, GROUND
    return image


def half_sky_mask() -> np.ndarray:
    mask = np.zeros((HEIGHT, WIDTH), dtype=np.uint8)
    mask[: HEIGHT // 2] = 255
    return mask


def photo_with_errors() -> np.ndarray:
    """Half sky with a 5x16 cloud the model misses (80 fn) and a 4x10 blue car it takes for sky (40 fp)."""
    image = scene()
    image[0:5, 0:16] = CLOUD
    image[30:34, 0:10] = CAR
    return image


@pytest.fixture
def mask_folder(tmp_path) -> Path:
    """a, c: half sky with errors; b: no sky at all."""
    root = tmp_path / "photos"
    for name, image, mask in [
        ("a", photo_with_errors(), half_sky_mask()),
        ("b", scene(sky_rows=0), np.zeros((HEIGHT, WIDTH), np.uint8)),
        ("c", photo_with_errors(), half_sky_mask()),
    ]:
        write_png(root / "images" / f"{name}.png", image)
        write_png(root / "masks" / f"{name}.png", mask)
    return root


@pytest.fixture
def camera_folder(tmp_path) -> Path:
    """One camera, half sky: a clear frame, an overcast (grey) frame, an unlabelled night frame."""
    root = tmp_path / "webcams"
    write_png(root / "cam1-mask.png", half_sky_mask())
    write_png(root / "cam1" / "f1.png", scene())
    write_png(root / "cam1" / "f2.png", scene(sky=CLOUD))
    write_png(root / "cam1" / "f3.png", np.zeros((HEIGHT, WIDTH, 3), np.uint8))
    (root / "labels.csv").write_text("image,sky_condition\ncam1/f1.png,clear\ncam1/f2.png,overcast\n")
    return root


def read_report(out: Path) -> dict:
    assert (out / "eval.md").is_file()
    return json.loads((out / "eval.json").read_text())


def test_mask_folder_metrics_are_exact(cli, model, mask_folder, tmp_path):
    out = tmp_path / "report"
    result = cli("evaluate", "segmenter", "--model", model, "--data", mask_folder, "--out", out)
    assert result.exit_code == 0, result.stderr
    report = read_report(out)
    assert report["data_kind"] == "mask_folder" and report["counts"] == {"evaluated": 3, "skipped": 0}

    model_scores = report["overall"]["model"]
    # a and c: tp 1200, fp 40, fn 80 of 2560 pixels each; b: 2560 tn.
    assert model_scores["dataset_level"]["iou"] == pytest.approx(2400 / 2640)
    assert model_scores["dataset_level"]["f1"] == pytest.approx(4800 / 5040)
    assert model_scores["dataset_level"]["mcr"] == pytest.approx(240 / 7680)
    assert model_scores["mean_per_image"]["iou"] == pytest.approx((1200 / 1320 * 2 + 1) / 3)

    # Baselines are fitted on the same images: the middle row, and a threshold between the car and the cloud.
    baselines = report["baselines"]
    assert baselines["horizon_fraction"] == 0.5 and 0.33 < baselines["color_threshold"] <= 0.47
    assert "evaluated images themselves" in baselines["fitted_on"]
    horizon = report["overall"]["horizon"]["dataset_level"]
    assert horizon["iou"] == pytest.approx(2 / 3)  # perfect on a and c, 1280 false positives on b
    assert report["overall"]["color_threshold"]["dataset_level"]["iou"] == 1.0
    assert report["model_minus_baseline"]["horizon"]["iou"] == pytest.approx(2400 / 2640 - 2 / 3)

    per_image = {image["id"]: image for image in report["images"]}
    assert per_image["photos/b.png"]["model"]["iou"] == 1.0  # empty vs empty
    assert per_image["photos/a.png"]["model"]["sky_fraction_truth"] == 0.5
    assert per_image["photos/a.png"]["model"]["sky_fraction_pred"] == pytest.approx(1240 / 2560)
    assert report["conditions"] == {}

    markdown = (out / "eval.md").read_text()
    assert "The model beats the horizon baseline (+0.2424 IoU)" in markdown
    assert "does not beat the color threshold baseline (-0.0909 IoU)" in markdown
    assert "| photos/a.png |" in markdown and "Per condition" not in markdown
    assert "Headline (dataset-level)" in result.stdout


def test_tiling_flags_reach_the_predictor_and_the_report(cli, model, mask_folder, tmp_path):
    default, tiled = tmp_path / "default", tmp_path / "tiled"
    assert cli("evaluate", "segmenter", "--model", model, "--data", mask_folder, "--out", default).exit_code == 0
    result = cli(
        "evaluate",
        "segmenter",
        "--model",
        model,
        "--data",
        mask_folder,
        "--out",
        tiled,
        "--tile",
        "64",
        "--overlap",
        "0.5",
        "--window",
        "constant",
        "--tta",
        "flip4",
    )
    assert result.exit_code == 0, result.stderr
    report = read_report(tiled)
    chosen = {key: report["tiling"][key] for key in ("tile", "overlap", "window", "tile_batch", "tta")}
    assert chosen == {"tile": 64, "overlap": 0.5, "window": "constant", "tile_batch": 8, "tta": "flip4"}
    config = tmp_path / "c.yaml"
    config.write_text("evaluate:\n  tiling: {tile: 96, tile_batch: 3}\n")
    from_file = cli(
        "evaluate",
        "segmenter",
        "--model",
        model,
        "--data",
        mask_folder,
        "--out",
        tmp_path / "cfg",
        "-c",
        config,
        "--set",
        "evaluate.tiling.tile_batch=2",
    )
    assert from_file.exit_code == 0, from_file.stderr
    assert [read_report(tmp_path / "cfg")["tiling"][key] for key in ("tile", "tile_batch")] == [96, 2]
    from tfsky.tiling import TilingConfig, available_memory, choose_tiling

    auto = choose_tiling(TilingConfig(), 32, None, available_memory(None))  # tile auto, as tfsky predict chooses it
    assert read_report(default)["tiling"]["tile"] == auto.tile != 96
    assert report["overall"] == read_report(default)["overall"]  # a per-pixel model: tiles and flips change nothing
    bad = cli("evaluate", "segmenter", "--model", model, "--data", mask_folder, "--tta", "flip3")
    assert bad.exit_code == 1 and bad.stderr.startswith("Error: config key 'evaluate.tiling.tta':")


def test_camera_folder_with_labels_breaks_down_by_condition(cli, model, camera_folder):
    result = cli(
        "evaluate", "segmenter", "--model", model, "--data", camera_folder, "--labels", camera_folder / "labels.csv"
    )
    assert result.exit_code == 0, result.stderr
    report = read_report(model.parent / "eval")  # default: beside the model
    assert report["data_kind"] == "camera_folder"
    conditions = report["conditions"]
    assert list(conditions) == ["(no label)", "clear", "overcast"]
    assert [conditions[c]["images"] for c in conditions] == [1, 1, 1]
    assert conditions["clear"]["model"]["dataset_level"]["iou"] == 1.0
    assert conditions["overcast"]["model"]["dataset_level"]["iou"] == 0.0  # grey sky: blue < 128
    assert conditions["overcast"]["model"]["dataset_level"]["mcr"] == 0.5
    assert {image["condition"] for image in report["images"]} == {"clear", "overcast", None}
    markdown = (model.parent / "eval" / "eval.md").read_text()
    assert "## Per condition (dataset-level)" in markdown and "| overcast | 1 | color threshold |" in markdown


def test_prepared_cache_evaluates_val_and_fits_baselines_on_train(cli, model, mask_folder, tmp_path):
    from tfsky.data.cache import prepare_cache
    from tfsky.data.config import DataConfig, SourceConfig

    source = SourceConfig(kind="mask_folder", images=mask_folder / "images", masks=mask_folder / "masks")
    cache = tmp_path / "cache"
    config = DataConfig(sources=[source], cache=cache, val_fraction=0.34, patch_size=32)
    prepared = prepare_cache(config)
    assert prepared.written == {"train": 2, "val": 1}
    out = tmp_path / "report"
    result = cli("evaluate", "segmenter", "--model", model, "--data", cache, "--out", out)
    assert result.exit_code == 0, result.stderr
    report = read_report(out)
    assert (report["data_kind"], report["split"], report["counts"]["evaluated"]) == ("cache", "val", 1)
    assert (report["baselines"]["fitted_on"], report["baselines"]["fit_images"]) == ("the cache's train split", 2)
    image = report["images"][0]
    expected_iou = {"photos/a.png": 1200 / 1320, "photos/b.png": 1.0, "photos/c.png": 1200 / 1320}
    assert image["model"]["iou"] == pytest.approx(expected_iou[image["id"]])

    wrong_split = cli("evaluate", "segmenter", "--model", model, "--data", cache, "--split", "test")
    assert wrong_split.exit_code == 1
    assert wrong_split.stderr.strip() == f"Error: {cache}: the cache has no split 'test' (it has: train, val)"
    labels = cli("evaluate", "segmenter", "--model", model, "--data", cache, "--labels", tmp_path / "x.csv")
    assert labels.exit_code == 1 and "--labels is for image folders" in labels.stderr


def test_bad_image_is_skipped_reported_and_fails_the_run(cli, model, mask_folder, tmp_path):
    write_png(mask_folder / "masks" / "c.png", np.zeros((HEIGHT + 1, WIDTH), np.uint8))
    (mask_folder / "images" / "d.png").write_bytes(b"")
    write_png(mask_folder / "masks" / "d.png", half_sky_mask())
    write_png(mask_folder / "images" / "e.png", scene())
    out = tmp_path / "report"
    result = cli("evaluate", "segmenter", "--model", model, "--data", mask_folder, "--out", out, "--quiet")
    assert result.exit_code == 1
    image, mask = mask_folder / "images" / "c.png", mask_folder / "masks" / "c.png"
    assert f"skipped photos/c.png: {image}: mask {mask} is 64x41 but the image is 64x40" in result.stderr
    report = read_report(out)
    assert report["counts"] == {"evaluated": 2, "skipped": 3}
    assert [s["id"] for s in report["skipped"]] == ["photos/c.png", "photos/d.png", "photos/e.png"]
    assert report["skipped"][1]["reason"].endswith("d.png: file is empty (0 bytes)")
    assert report["skipped"][2]["reason"].endswith(f"e.png: missing mask {mask_folder / 'masks' / 'e.png'}")
    assert "## Skipped" in (out / "eval.md").read_text()
    assert result.stdout.strip() == f"evaluated 2 images, skipped 3; wrote {out}/eval.json, eval.md"


def test_drop_enclosed_scores_the_mask_without_the_blue_car_inside_the_scene(cli, model, tmp_path):
    image = photo_with_errors()
    image[30:34, 0:10] = GROUND
    image[30:34, 20:30] = CAR  # 40 false-sky pixels that touch no border of the frame
    write_png(tmp_path / "photos" / "images" / "a.png", image)
    write_png(tmp_path / "photos" / "masks" / "a.png", half_sky_mask())
    reports = {}
    for flag, out, iou in (("--keep-enclosed", "kept", 1200 / 1320), ("--drop-enclosed", "dropped", 1200 / 1280)):
        result = cli("evaluate", "segmenter", "-m", model, "-d", tmp_path / "photos", "-o", tmp_path / out, flag)
        assert result.exit_code == 0, result.stderr
        reports[out] = report = read_report(tmp_path / out)
        assert report["overall"]["model"]["dataset_level"]["iou"] == pytest.approx(iou)
        assert report["drop_enclosed"] is (flag == "--drop-enclosed")
    for baseline in ("horizon", "color_threshold"):  # the baselines' masks stay whole
        assert reports["dropped"]["overall"][baseline] == reports["kept"]["overall"][baseline]
    assert "without the sky regions that touch no border" in (tmp_path / "dropped" / "eval.md").read_text()


def test_sky_mask_thresholds_the_sky_probability_of_sigmoid_and_softmax_models():
    from tfsky.evaluate.segmenter import sky_mask

    sigmoid = np.array([[[0.49], [0.5], [0.9]]], dtype=np.float32)
    assert sky_mask(sigmoid, 0.5).tolist() == [[False, True, True]]
    softmax = np.array([[[0.5, 0.3, 0.2], [0.2, 0.5, 0.3], [0.1, 0.4, 0.5]]], dtype=np.float32)
    assert sky_mask(softmax, 0.5).tolist() == [[False, True, False]]  # channel 1 is sky
    assert sky_mask(softmax, 0.35).tolist() == [[False, True, True]]


def test_errors_are_one_line(cli, model, mask_folder, tmp_path):
    def error(*args) -> str:
        result = cli("evaluate", "segmenter", *args)
        assert result.exit_code == 1
        assert len(result.stderr.strip().splitlines()) == 1
        return result.stderr.strip()

    missing_model = tmp_path / "nope.keras"
    assert error("--model", missing_model, "--data", mask_folder) == f"Error: {missing_model}: model file not found"
    missing = tmp_path / "nowhere"
    assert error("--model", model, "--data", missing) == f"Error: {missing}: data folder not found"
    (tmp_path / "empty").mkdir()
    empty = error("--model", model, "--data", tmp_path / "empty")
    assert empty.startswith(f"Error: {tmp_path / 'empty'}: no labelled images found: expected a prepared cache")
    (tmp_path / "hollow" / "images").mkdir(parents=True)
    (tmp_path / "hollow" / "masks").mkdir()
    assert error("--model", model, "--data", tmp_path / "hollow").endswith("hollow: no labelled images found")
    wrong_labels = tmp_path / "labels.csv"
    wrong_labels.write_text("image,sky_condition\nother/x.jpg,clear\n")
    assert "names none of the images" in error("--model", model, "--data", mask_folder, "--labels", wrong_labels)


def test_real_skyfinder_webcams_per_condition(cli, shared_data, tmp_path):
    """All 40 SkyFinder frames, camera 623 labelled clear / overcast / night: numbers match a direct computation."""
    webcams = shared_data / "skyfinder_webcams"
    model = blue_detector(tmp_path / "blue.keras", tile_size=256)
    out = tmp_path / "report"
    result = cli(
        "evaluate",
        "segmenter",
        "--model",
        model,
        "--data",
        webcams,
        "--labels",
        webcams / "weather_labels_cam623.csv",
        "--out",
        out,
        "--quiet",
    )
    assert result.exit_code == 0, result.stderr
    report = read_report(out)
    assert report["counts"] == {"evaluated": 40, "skipped": 0}
    conditions = {name: group["images"] for name, group in report["conditions"].items()}
    assert conditions == {"(no label)": 30, "clear": 4, "overcast": 3, "unlabelled(night)": 3}

    frame = "623/20121024_124151.jpg"
    truth = read_mask(webcams / "623-mask.png").astype(bool)
    expected = metrics.score(read_image(webcams / frame)[..., 2] >= 128, truth).metrics()
    measured = next(image for image in report["images"] if image["id"] == f"skyfinder_webcams/{frame}")
    assert measured["condition"] == "clear"
    assert measured["model"] == pytest.approx(expected)
    assert report["conditions"]["unlabelled(night)"]["model"]["dataset_level"]["sky_fraction_pred"] < 0.05
