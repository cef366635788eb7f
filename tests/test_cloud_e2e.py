"""A cloud model end to end on real WSISEG frames: train (the segmenter runner), evaluate, predict."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from tfsky.config import load_config
from tfsky.models.bundle import load_info
from tfsky.train.config import SegmenterConfig

REPO = Path(__file__).resolve().parents[1]
FRAMES = [
    "ASC100-1006_001.png",
    "ASC100-1006_002.png",
    "ASC100-1006_004.png",
    "ASC100-1006_007.png",
    "ASC100-1006_042.png",
    "ASC100-1006_076.png",
    "ASC100-1006_451.png",
    "ASC100-1006_480.png",
    "ASC100-1006_509.png",
    "ASC100-1006_539.png",
]


@pytest.fixture(scope="module")
def trained(shared_data, tmp_path_factory):
    """A tiny cloud model trained by `tfsky train segmenter` on 10 frames linked from the shared data."""
    from tfsky.train.segmenter import train_segmenter

    root = tmp_path_factory.mktemp("cloud")
    data = root / "allsky_wsiseg"
    for folder in ("images", "annotation"):
        (data / folder).mkdir(parents=True)
        for name in FRAMES:
            (data / folder / name).symlink_to(shared_data / "allsky_wsiseg" / folder / name)
    shared = shared_data / "allsky_wsiseg"
    cfg = load_config(SegmenterConfig, REPO / "configs" / "cloud_tiny.yaml")
    cfg.data.sources[0].images, cfg.data.sources[0].masks = data / "images", data / "annotation"
    cfg.data.sources[0].allsky.cameras[0].mask = shared / "mask_cam.png"
    cfg.data.cache, cfg.train.runs_root, cfg.train.validation_steps = root / "cache", root / "runs", 8
    result = train_segmenter(cfg, verbose=0)
    return root, result.run_dir / "best.keras", data


def test_evaluate_segmenter_on_a_cloud_model_reports_cloud_metrics_per_camera(trained, cli):
    root, model, _ = trained
    result = cli("evaluate", "segmenter", "--model", model, "--data", root / "cache", "--out", root / "eval", "--quiet")
    assert result.exit_code == 0, result.output
    summary = json.loads((root / "eval" / "eval.json").read_text())
    assert summary["task"] == "cloud"
    assert set(summary["results"]) >= {"overall"} and len(summary["results"]) >= 2  # overall + camera(s)
    overall = summary["results"]["overall"]
    assert set(overall) == {"model", "red_blue_ratio", "red_minus_blue", "cloudnet"}
    for values in overall.values():
        assert 0 <= values["pixel_accuracy"] <= 1 and values["cloud_fraction_mae_pp"] >= 0
        assert set(values["condition_confusion"]) == {"clear", "partial", "overcast"}
    frame = summary["frames"][0]
    truth_pixels = np.asarray(frame["model"]["confusion"]).sum()
    assert truth_pixels == np.asarray(frame["red_blue_ratio"]["confusion"]).sum()  # same labelled pixels
    assert "Cloud segmentation: overall" in (root / "eval" / "eval.md").read_text()
    info = load_info(model)  # the cut on P(cloud) was chosen on validation (cloud_tiny fixes none) and scored
    assert info.threshold == info.metrics["val_best_threshold"] and 0 < info.threshold < 1
    assert summary["threshold"] == info.threshold and 0 <= info.metrics["val_calibration_error"] <= 1
    enclosed = cli("evaluate", "segmenter", "-m", model, "-d", root / "cache", "-o", root / "x", "--drop-enclosed")
    assert enclosed.exit_code == 1 and enclosed.stderr.strip() == (
        "Error: config key 'evaluate.drop_enclosed': is for sky segmenters; a cloud model's clouds are enclosed"
    )
    sun = summary["sun"]["overall"]  # the sun as tfsky predict finds it, against the annotation's undefined pixels
    assert sun["frames"] == summary["counts"]["evaluated"] and 0 <= sun["found"] <= sun["frames"]
    found = [f["sun"] for f in summary["frames"] if f["sun"]["found"]]
    assert sun["excluded_pixels"] == sum(s["excluded_pixels"] for s in found)
    assert all(0 <= s["undefined_pixels"] <= s["excluded_pixels"] for s in found)


def test_predict_with_a_cloud_model_writes_cloud_cover_and_a_time_series(trained, cli, shared_data):
    root, model, data = trained
    out = root / "predict"
    frames = data / "images"
    mask = shared_data / "allsky_wsiseg" / "mask_cam.png"
    first = cli(
        "predict",
        "--model",
        model,
        frames / FRAMES[0],
        frames / FRAMES[1],
        "--out",
        out,
        "--quiet",
        "--set",
        f"predict.cloud.camera_mask={mask}",
    )
    assert first.exit_code == 0, first.output
    sidecar = json.loads((out / "ASC100-1006_001.json").read_text())
    cover = sidecar["cloud_cover"]
    lens = cv2.imread(str(mask), cv2.IMREAD_GRAYSCALE) >= 128
    assert cover["valid_pixels"] == int(lens.sum()) - cover["sun"].get("excluded_pixels", 0)
    classes = cv2.imread(str(out / "ASC100-1006_001_classes.png"), cv2.IMREAD_UNCHANGED)
    assert set(np.unique(classes)) <= {0, 100, 255} and np.all(classes[~lens] == 0)
    assert np.count_nonzero(classes[lens] == 0) == cover["sun"].get("excluded_pixels", 0)  # the sun: undefined
    assert cover["cloud_fraction_pct"] == pytest.approx(100 * np.mean(classes[lens & (classes > 0)] == 255), abs=1e-3)
    assert 0 <= cover["okta"] <= 8 and cover["sky_condition"] in ("clear", "partial", "overcast")
    assert sidecar["outputs"]["classes"] == "ASC100-1006_001_classes.png"
    with open(out / "cloud_cover.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [Path(r["file"]).name for r in rows] == FRAMES[:2]
    assert float(rows[0]["cloud_fraction_pct"]) == pytest.approx(cover["cloud_fraction_pct"])
    assert (out / "cloud_cover.png").stat().st_size > 1000


def test_predict_skips_a_frame_without_valid_sky_and_reports_it(trained, cli, tmp_path):
    _, model, data = trained
    black = tmp_path / "frames" / "black.png"
    black.parent.mkdir()
    cv2.imwrite(str(black), np.zeros((450, 480, 3), np.uint8))
    (tmp_path / "frames" / FRAMES[0]).symlink_to(data / "images" / FRAMES[0])
    result = cli("predict", "--model", model, tmp_path / "frames", "--out", tmp_path / "out", "--quiet")
    assert result.exit_code == 1
    assert "black.png: no valid sky pixel" in result.output and "cloud fraction undefined" in result.output
    assert (tmp_path / "out" / f"{Path(FRAMES[0]).stem}.json").is_file()
    assert not (tmp_path / "out" / "black.json").exists() and not (tmp_path / "out" / "black_mask.png").exists()


def test_each_camera_gets_its_valid_sky_in_tfsky_predict_and_in_the_export(trained, cli, tmp_path, shared_data):
    """No mask option: camera 1 gets the model's training mask, camera 2 (black outside its cropped view)
    its own bright pixels, in `tfsky predict` and in the served ``predict_cloud`` alike."""
    import tensorflow as tf

    from tfsky.export import export_model

    _, model, data = trained
    lens = cv2.imread(str(shared_data / "allsky_wsiseg" / "mask_cam.png"), cv2.IMREAD_GRAYSCALE) >= 128
    frames = [data / "images" / FRAMES[0], data / "images" / FRAMES[6]]  # camera 1, camera 2
    no_sun = ("--no-sun",)  # the served signature does not look for the sun
    assert cli("predict", "--model", model, *frames, "--out", tmp_path / "out", "--quiet", *no_sun).exit_code == 0
    covers = [json.loads((tmp_path / "out" / f"{f.stem}.json").read_text())["cloud_cover"] for f in frames]
    assert covers[0]["camera_mask"] == str(shared_data / "allsky_wsiseg" / "mask_cam.png")
    assert covers[0]["valid_pixels"] == int(lens.sum())
    assert covers[1]["camera_mask"] is None
    second = cv2.imread(str(frames[1]))
    assert covers[1]["valid_pixels"] == int((second.max(axis=-1) > 8).sum()) < 0.85 * lens.sum()  # 0.81
    annotation = cv2.imread(str(data / "annotation" / FRAMES[6]), cv2.IMREAD_GRAYSCALE)
    classes = cv2.imread(str(tmp_path / "out" / f"{frames[1].stem}_classes.png"), cv2.IMREAD_UNCHANGED)
    assert np.mean(classes[annotation > 0] > 0) > 0.999  # every labelled sky pixel of camera 2 is valid sky

    version = export_model(model, tmp_path / "models", "cloud")
    signature = tf.saved_model.load(str(version)).signatures["predict_cloud"]
    outputs = signature(image_bytes=tf.constant([f.read_bytes() for f in frames]))
    for index, (frame, expected) in enumerate(zip(frames, covers)):
        assert int(outputs["valid_pixels"][index]) == expected["valid_pixels"]
        assert float(outputs["cloud_fraction_pct"][index]) == pytest.approx(expected["cloud_fraction_pct"], abs=0.05)
        served = tf.io.decode_png(outputs["class_mask_png_bytes"][index]).numpy()[..., 0]
        predicted = cv2.imread(str(tmp_path / "out" / f"{frame.stem}_classes.png"), cv2.IMREAD_UNCHANGED)
        assert np.mean(served == predicted) > 0.999
    black = tf.io.encode_png(tf.zeros([64, 64, 3], tf.uint8))
    assert np.isnan(signature(image_bytes=tf.reshape(black, [1]))["cloud_fraction_pct"][0].numpy())
    metadata = json.loads((version / "assets" / "tfsky_model.json").read_text())
    assert metadata["cloud_camera_masks"]["files"] == [covers[0]["camera_mask"]]
