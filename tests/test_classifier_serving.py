"""The weather classifier beyond training: `tfsky export`, `tfsky predict` and `tfsky client predict` (gRPC, REST).

One tiny (untrained: serving needs its files, not its skill) two-class classifier at 32 px is exported once
and served by the dev server; every path must give the probabilities the local model gives.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from test_classifier import sky_photo
from tfsky.export.savedmodel import export_model
from tfsky.io.images import read_image
from tfsky.predict.classify import TABLE, WeatherClassifier
from tfsky.serving import Client, DevServer

CLASSES = ["clear", "overcast"]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """The classifier, its export as ``weather/1`` served on loopback, two photos and their local probabilities."""
    from tfsky.data.labelled import ClassifierDataConfig, LabelledSource
    from tfsky.models.classifier import build_classifier
    from tfsky.train.classifier import save_classifier
    from tfsky.train.config import ClassifierConfig

    root = tmp_path_factory.mktemp("classifier_serving")
    data = ClassifierDataConfig(
        sources=[LabelledSource("class_folders", root)], image_size=32, classes={"shine": "clear", "cloudy": "overcast"}
    )
    cfg = ClassifierConfig(name="tiny", data=data)
    model = root / "best.keras"
    tf.keras.utils.set_random_seed(0)
    untrained = build_classifier(cfg.model, len(CLASSES))
    logits = untrained.get_layer("logits")  # scaled down: probabilities that differ per photo, not saturated 1.0
    logits.set_weights([weight * 1e-4 for weight in logits.get_weights()])
    save_classifier(untrained, model, cfg, {})
    photos = root / "photos"
    (photos / "sub").mkdir(parents=True)
    Image.fromarray(sky_photo(1, True, size=96)).save(photos / "blue.png")
    Image.fromarray(sky_photo(2, False, size=80)).save(photos / "sub" / "grey.jpg", quality=95)
    files = [photos / "blue.png", photos / "sub" / "grey.jpg"]
    classifier = WeatherClassifier.load(model)
    expected = {f: classifier.probabilities(classifier.inputs(read_image(f))[None])[0] for f in files}
    export_model(model, root / "models", "weather")
    server = DevServer(root / "models", grpc_port=0, rest_port=0, poll_seconds=0.3).start()
    yield {
        "root": root,
        "model": model,
        "photos": photos,
        "files": files,
        "expected": expected,
        "id": classifier.id,
        "grpc": f"127.0.0.1:{server.grpc_port}",
        "rest": f"127.0.0.1:{server.rest_port}",
    }
    server.stop()


def sidecar(path: Path) -> dict:
    return json.loads(path.read_text())


def table(path: Path) -> list[dict]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def test_export_has_tensor_and_encoded_image_signatures_that_match_the_keras_model(served, cli):
    version = served["root"] / "models" / "weather" / "1"
    info = cli("export", "--info", version)
    assert info.exit_code == 0, info.stderr
    assert "signature serving_default" in info.stdout and "signature classify_image" in info.stdout
    metadata = json.loads((version / "assets" / "tfsky_model.json").read_text())
    assert (metadata["class_names"], metadata["image_size"], metadata["model"]["task"]) == (CLASSES, 32, "classifier")

    loaded = tf.saved_model.load(str(version))
    images = np.random.default_rng(3).random((2, 32, 32, 3), dtype=np.float32)
    keras_model = tf.keras.models.load_model(served["model"], compile=False)
    tensors = loaded.signatures["serving_default"](images=tf.constant(images))["probabilities"].numpy()
    np.testing.assert_allclose(tensors, keras_model(images), atol=1e-5)

    files = served["files"]
    answer = loaded.signatures["classify_image"](image_bytes=tf.constant([f.read_bytes() for f in files]))
    expected = np.stack([served["expected"][f] for f in files])
    np.testing.assert_allclose(answer["probabilities"].numpy(), expected, atol=1e-4)  # a wrong crop: 6e-3
    assert answer["class_names"].numpy().tolist() == [[b"clear", b"overcast"]] * 2
    assert answer["condition"].numpy().tolist() == [CLASSES[i].encode() for i in expected.argmax(axis=1)]
    assert not np.allclose(expected[0], expected[1], atol=1e-3)  # two photos the model tells apart


def test_predict_with_a_classifier_writes_sidecars_and_one_table_resumably(served, cli, tmp_path):
    photos, out = served["photos"], tmp_path / "out"
    result = cli("predict", "-m", served["model"], photos, "-o", out, "--quiet")
    assert result.exit_code == 0, result.stderr
    blue, grey = sidecar(out / "blue.json"), sidecar(out / "sub" / "grey.json")
    for facts, image in ((blue, photos / "blue.png"), (grey, photos / "sub" / "grey.jpg")):
        expected = served["expected"][image]
        assert list(facts["probabilities"]) == CLASSES
        np.testing.assert_allclose(list(facts["probabilities"].values()), expected, atol=1e-6)
        assert facts["condition"] == CLASSES[int(expected.argmax())]
        assert facts["probability"] == pytest.approx(expected.max(), abs=1e-6)
        assert facts["source"] == str(image)
    assert (blue["height"], blue["width"], grey["height"]) == (96, 96, 80)
    assert blue["model"]["id"] == served["id"]
    rows = table(out / TABLE)
    assert [row["file"] for row in rows] == [str(photos / "blue.png"), str(photos / "sub" / "grey.jpg")]
    assert list(rows[0]) == ["file", "condition", "probability", "p_clear", "p_overcast"]
    assert float(rows[1]["p_overcast"]) == pytest.approx(grey["probabilities"]["overcast"])

    rerun = cli("predict", "-m", served["model"], photos, "-o", out)
    assert rerun.exit_code == 0, rerun.stderr
    assert rerun.stdout.strip() == f"done 0, skipped 2, failed 0 -> {out}"
    assert len(table(out / TABLE)) == 2  # the table still lists the skipped images


def test_predict_with_a_classifier_takes_the_inference_precision(served, cli, tmp_path):
    image = served["files"][0]
    result = cli("predict", "-m", served["model"], image, "-o", tmp_path, "--precision", "bfloat16", "-q")
    assert result.exit_code == 0, result.stderr  # a setting of both kinds, not refused as a segmenter's
    facts = sidecar(tmp_path / "blue.json")
    assert facts["precision"] == "bfloat16"
    # bfloat16 maths (8 mantissa bits) through a ResNet18: probabilities near 0.5 move by a few 1e-3
    np.testing.assert_allclose(list(facts["probabilities"].values()), served["expected"][image], atol=0.02)


def test_predict_with_a_classifier_reports_a_bad_file_and_an_hdr_image_and_goes_on(served, cli, tmp_path):
    from tfsky.io.writers import write_exr

    folder = tmp_path / "in"
    folder.mkdir()
    Image.fromarray(sky_photo(5, True)).save(folder / "good.png")
    (folder / "broken.png").write_bytes(b"not a png")
    write_exr(folder / "radiance.exr", np.full((16, 16, 3), 2.0, np.float32))
    result = cli("predict", "-m", served["model"], folder, "-o", tmp_path / "out", "--quiet")
    assert result.exit_code == 1
    assert f"{folder / 'radiance.exr'}: HDR image: the weather classifier takes 8/16-bit images" in result.stderr
    assert str(folder / "broken.png") in result.stderr
    assert [row["file"] for row in table(tmp_path / "out" / TABLE)] == [str(folder / "good.png")]


def test_predict_with_a_classifier_refuses_segmenter_flags_in_one_line(served, cli, tmp_path):
    result = cli(
        "predict", "-m", served["model"], served["photos"], "-o", tmp_path / "out", "--tile", "64", "--threshold", "0.4"
    )
    assert result.exit_code == 1
    assert result.stderr.strip() == (
        f"Error: {served['model']}: is a weather classifier: --threshold, --tile apply to segmenters only"
    )
    assert not (tmp_path / "out").exists()


def test_predict_with_a_classifier_refuses_segmenter_settings_from_config_and_set_in_one_line(served, cli, tmp_path):
    """-c and --set predict.* values are refused like the flags, not ignored silently; unchanged defaults pass."""
    config = tmp_path / "predict.yaml"
    config.write_text("predict:\n  tiling:\n    tta: flip2\n  prob_format: png16\n")
    result = cli(
        "predict",
        "-m",
        served["model"],
        served["photos"],
        "-o",
        tmp_path / "out",
        "-c",
        config,
        "--set",
        "predict.threshold=0.4",
        "--threshold",
        "0.5",
    )
    assert result.exit_code == 1
    assert result.stderr.strip() == (
        f"Error: {served['model']}: is a weather classifier: --threshold, "
        "predict.tiling.tta (--config/--set) apply to segmenters only"
    )
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("rest", [False, True])
def test_client_predict_with_a_served_classifier_matches_local_prediction(served, cli, tmp_path, rest):
    photos, out = served["photos"], tmp_path / "out"
    server = served["rest"] if rest else served["grpc"]
    args = ["client", "predict", photos, "-o", out, "--server", server, "--model", "weather", *(["--rest"] * rest)]
    result = cli(*args)
    assert result.exit_code == 0, result.stderr
    assert f"done 2, skipped 0, failed 0 -> {out}" in result.stdout
    for name, image in (("blue.json", photos / "blue.png"), ("sub/grey.json", photos / "sub" / "grey.jpg")):
        facts = sidecar(out / name)
        expected = served["expected"][image]
        np.testing.assert_allclose(list(facts["probabilities"].values()), expected, atol=1e-4)
        assert list(facts["probabilities"]) == CLASSES and facts["condition"] == CLASSES[int(expected.argmax())]
        assert (facts["server"], facts["model"], facts["version"]) == (server, "weather", 1)
    assert sidecar(out / "blue.json")["height"] == 96
    assert [row["file"] for row in table(out / TABLE)] == [str(photos / "blue.png"), str(photos / "sub" / "grey.jpg")]

    inodes = {p: p.stat().st_ino for p in out.rglob("*.json")}
    rerun = cli(*args)
    assert rerun.exit_code == 0, rerun.stderr
    assert f"done 0, skipped 2, failed 0 -> {out}" in rerun.stdout
    assert {p: p.stat().st_ino for p in inodes} == inodes


def test_client_predict_with_a_classifier_reports_bad_files_and_goes_on(served, cli, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    Image.fromarray(sky_photo(5, True)).save(folder / "good.png")
    (folder / "broken.png").write_bytes(b"not a png")
    Image.fromarray(sky_photo(6, False)).save(folder / "tiff.tif")  # not sent as it is: re-encoded as PNG
    result = cli("client", "predict", folder, "-o", tmp_path / "out", "--server", served["grpc"], "--model", "weather")
    assert result.exit_code == 1
    assert str(folder / "broken.png") in result.stderr and "done 2, skipped 0, failed 1" in result.stdout
    assert [row["file"] for row in table(tmp_path / "out" / TABLE)] == [
        str(folder / "good.png"),
        str(folder / "tiff.tif"),
    ]


def test_client_classify_image_and_tiles_of_a_classifier_export(served, cli, tmp_path):
    with Client(served["grpc"]) as client:
        answer = client.classify_image("weather", (served["photos"] / "blue.png").read_bytes())
    assert list(answer.probabilities) == CLASSES and answer.version == 1
    assert sum(answer.probabilities.values()) == pytest.approx(1.0, abs=1e-5)

    version = served["root"] / "models" / "weather" / "1"
    result = cli(
        "client",
        "predict",
        served["photos"] / "blue.png",
        "-o",
        tmp_path / "out",
        "--server",
        served["grpc"],
        "--model",
        "weather",
        "--tiles",
        version,
    )
    assert result.exit_code == 1
    assert result.stderr.strip() == f"Error: {version}: is a classifier model, not a sky segmenter"
