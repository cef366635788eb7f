"""Weather classifier: labelled sources split by source, training through the runner, evaluation and baselines."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from tfsky.config import load_config
from tfsky.data.labelled import ClassifierDataConfig, LabelledSource, labelled_set
from tfsky.errors import ConfigError, InputError
from tfsky.evaluate.classifier import ColourBaseline, calibration, colour_features, score
from tfsky.train.config import ClassifierConfig

CLASSES = {"shine": "clear", "cloudy": "overcast"}


def sky_photo(seed: int, clear: bool, size: int = 64) -> np.ndarray:
    """A blue (clear) or grey (overcast) sky over a dark textured ground."""
    rng = np.random.default_rng(seed)
    image = np.empty((size, size, 3), np.float32)
    sky = np.array([90, 150, 235] if clear else [170, 170, 175], np.float32) + rng.normal(0, 12, 3)
    image[: size // 2] = sky
    ground = rng.uniform(0, 140, (2, 4, 3)).astype(np.float32)  # coarse blocks: every photo its own scene
    image[size // 2 :] = cv2.resize(ground, (size, size - size // 2), interpolation=cv2.INTER_NEAREST)
    return np.clip(image + rng.normal(0, 6, image.shape), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def photo_folders(tmp_path_factory) -> Path:
    """``shine/`` and ``cloudy/`` with 12 photos each (one an exact copy of another) and one unmapped class."""
    root = tmp_path_factory.mktemp("weather")
    for label, clear in (("shine", True), ("cloudy", False)):
        (root / label).mkdir()
        for index in range(12):
            Image.fromarray(sky_photo(index + 100 * clear, clear)).save(root / label / f"{label}{index}.png")
        Image.open(root / label / f"{label}0.png").save(root / label / f"{label}_copy.png")
    (root / "fog").mkdir()
    Image.fromarray(sky_photo(7, False)).save(root / "fog" / "fog0.png")
    return root


def data_config(root: Path, **changes) -> ClassifierDataConfig:
    return ClassifierDataConfig(
        sources=[LabelledSource("class_folders", root)], classes=CLASSES, image_size=32, val_fraction=0.25, **changes
    )


def test_class_folders_are_mapped_to_conditions_and_split_by_source(photo_folders):
    data = labelled_set(data_config(photo_folders))
    assert data.conditions == ["clear", "overcast"]
    assert data.skipped == [f"{photo_folders / 'fog' / 'fog0.png'}: label 'fog' is not in data.classes"]
    train, val = data.splits["train"], data.splits["val"]
    assert len(train) + len(val) == 26
    for condition in data.conditions:  # about a quarter of each condition held out
        assert 2 <= sum(i.condition == condition for i in val) <= 4
    assert not {i.source for i in train} & {i.source for i in val}
    copies = {i.path.name: split for split, items in data.splits.items() for i in items}
    assert copies["shine0.png"] == copies["shine_copy.png"] and copies["cloudy0.png"] == copies["cloudy_copy.png"]


def test_real_weather_photos_keep_near_duplicates_on_one_side(shared_data):
    cfg = load_config(
        ClassifierConfig,
        "configs/weather_mwd.yaml",
        [f"data.sources=[{{kind: class_folders, path: {shared_data / 'weather_mwd'}}}]"],
    )
    data = labelled_set(cfg.data)
    counts = {split: len(items) for split, items in data.splits.items()}
    assert counts == {"train": 668, "val": 169}
    sources = {split: {i.source for i in items} for split, items in data.splits.items()}
    assert not sources["train"] & sources["val"]
    assert len(sources["train"]) + len(sources["val"]) < 837 - 60  # dozens of photos are in the set twice


def test_csv_source_groups_by_folder(tmp_path):
    for camera in ("a", "b", "c", "d"):
        for index in range(3):
            (tmp_path / camera).mkdir(exist_ok=True)
            Image.fromarray(sky_photo(index, camera in "ab")).save(tmp_path / camera / f"{index}.png")
    rows = [f"{cam}/{i}.png,{'Clear sky' if cam in 'ab' else 'Overcast sky'}" for cam in "abcd" for i in range(3)]
    (tmp_path / "labels.csv").write_text("image_name,sky_type\n" + "\n".join(rows + ["z/9.png,Clear sky"]) + "\n")
    source = LabelledSource(
        "csv", tmp_path / "labels.csv", image_column="image_name", label_column="sky_type", group="folder"
    )
    data = labelled_set(
        ClassifierDataConfig(
            [source], {"Clear sky": "clear", "Overcast sky": "overcast"}, image_size=32, val_fraction=0.3
        )
    )
    val_cameras = {i.path.parent.name for i in data.splits["val"]}
    assert len(val_cameras) == 2 and {i.condition for i in data.splits["val"]} == {"clear", "overcast"}
    assert len(data.splits["val"]) == 6  # whole cameras
    assert data.skipped == [f"{tmp_path / 'labels.csv'}:14: image z/9.png not found under {tmp_path}"]
    with pytest.raises(InputError, match=r"labels.csv: no column 'image' \(columns: image_name, sky_type\)$"):
        labelled_set(ClassifierDataConfig([LabelledSource("csv", tmp_path / "labels.csv")], CLASSES))


@pytest.mark.parametrize(
    "override, key",
    [
        ("model.backbone=resnet7", "model.backbone"),
        ("train.loss=dice", "train.loss"),
        ("data.image_size=100", "data.image_size"),
        ("data.classes={shine: clear}", "data.classes"),
    ],
)
def test_config_errors_name_the_key(override, key):
    with pytest.raises(ConfigError, match=f"^config key '{key}'"):
        load_config(ClassifierConfig, "configs/weather_tiny.yaml", [override])


def test_metrics_on_hand_values():
    truth = np.array([0, 0, 1, 1])
    probabilities = np.array([[0.9, 0.1], [0.4, 0.6], [0.2, 0.8], [0.3, 0.7]])
    scores = score("m", truth, probabilities, ["clear", "overcast"])
    assert scores.accuracy == 0.75 and scores.confusion == [[1, 1], [0, 2]]
    assert scores.per_class["clear"] == {"precision": 1.0, "recall": 0.5, "f1": pytest.approx(2 / 3), "support": 2}
    assert scores.per_class["overcast"]["precision"] == pytest.approx(2 / 3)
    ece, bins = calibration(truth, probabilities, bins=10)
    # bins: 0.6 (wrong) | 0.7 (right), 0.8 (right) | 0.9 (right): |0.6-0| + |0.7-1| + |0.8-1| + |0.9-1|, over 4
    assert ece == pytest.approx((0.6 + 0.3 + 0.2 + 0.1) / 4)
    assert sum(b["count"] for b in bins) == 4


def test_colour_baseline_separates_blue_from_grey_skies():
    x = np.stack([colour_features(sky_photo(i, i % 2 == 0)) for i in range(40)])
    y = np.array([0 if i % 2 == 0 else 1 for i in range(40)])
    baseline = ColourBaseline.fit(x[:30], y[:30], 2)
    assert (baseline.probabilities(x[30:]).argmax(axis=1) == y[30:]).all()


@pytest.mark.slow
def test_train_resume_and_evaluate_a_tiny_classifier(photo_folders, tmp_path, cli):
    sources = f"data.sources=[{{kind: class_folders, path: {photo_folders}}}]"
    common = [
        "-c",
        "configs/weather_tiny.yaml",
        "--set",
        sources,
        "--set",
        "data.classes={shine: clear, cloudy: overcast}",
        "--set",
        "data.val_fraction=0.25",
        "--set",
        f"train.runs_root={tmp_path / 'runs'}",
        "--set",
        "train.batch_size=4",
        "-q",
    ]
    first = cli("train", "classifier", *common, "--set", "train.epochs=1")
    assert first.exit_code == 0, first.output
    run = next((tmp_path / "runs" / "weather_tiny").iterdir())
    resumed = cli("train", "classifier", *common, "--resume")
    assert resumed.exit_code == 0, resumed.output
    history = (run / "history.csv").read_text().splitlines()
    assert [line.split(",")[0] for line in history[1:]] == ["1", "2"]  # epoch 2 continued the same run
    assert "val_accuracy" in history[0]
    for name in ("best.keras", "best.json", "learning_curves.png", "config.yaml"):
        assert (run / name).is_file(), name
    assert json.loads((run / "best.json").read_text())["task"] == "classifier"

    evaluated = cli("evaluate", "classifier", "--model", run / "best.keras")
    assert evaluated.exit_code == 0, evaluated.output
    report = json.loads((run / "eval" / "classifier_eval.json").read_text())
    assert report["conditions"] == ["clear", "overcast"] and report["images"] == {"train": 18, "val": 8}
    names = [s["name"] for s in report["scores"]]
    assert names == ["classifier (resnet18)", "majority class", "colour statistics (logistic regression)"]
    assert report["scores"][2]["accuracy"] == 1.0  # blue vs grey: the colour baseline is perfect here
    assert sum(map(sum, report["scores"][0]["confusion"])) == 8
    markdown = (run / "eval" / "classifier_eval.md").read_text()
    assert "## Confusion matrix: classifier (resnet18)" in markdown and "| true clear |" in markdown
    for plot in ("confusion.png", "reliability.png"):
        with Image.open(run / "eval" / plot) as im:
            assert im.width > 200 and np.asarray(im.convert("L")).std() > 5


@pytest.fixture(scope="module")
def untrained_classifier(photo_folders, tmp_path_factory) -> Path:
    """A saved (untrained) two-class classifier at 32 px: labelling needs its files, not its skill.

    Its head is scaled down so its probabilities stay near 0.5, never a saturated 1.0 (an untrained ResNet
    fed 0-255 pixels by its encoder input gives huge logits).
    """
    from tfsky.models.classifier import build_classifier
    from tfsky.train.classifier import save_classifier

    cfg = ClassifierConfig(name="t", data=data_config(photo_folders))
    path = tmp_path_factory.mktemp("model") / "best.keras"
    model = build_classifier(cfg.model, 2)
    logits = model.get_layer("logits")
    logits.set_weights([weight * 1e-6 for weight in logits.get_weights()])
    save_classifier(model, path, cfg, {})
    return path


def test_streams_label_predicts_every_frame_and_human_labels_win(untrained_classifier, tmp_path, cli):
    from tfsky.data.streams import StreamsConfig, read_manifest, validate_streams
    from tfsky.predict.classify import WeatherClassifier

    (tmp_path / "frames" / "cam").mkdir(parents=True)
    for hour in range(10, 15):
        Image.fromarray(sky_photo(hour, hour % 2 == 0, size=96)).save(
            tmp_path / "frames" / "cam" / f"20200101_{hour}0000.png"
        )
    (tmp_path / "frames" / "cam" / "20200101_150000.png").write_bytes(b"not a png")
    (tmp_path / "labels.csv").write_text("image,sky_condition\ncam/20200101_100000.png,overcast\n")
    validate_streams(StreamsConfig(root=tmp_path / "frames", labels_csv=tmp_path / "labels.csv"), out=tmp_path / "m")
    result = cli("streams", "label", tmp_path / "m", "--classifier", untrained_classifier)
    assert result.exit_code == 0, result.output
    stream = read_manifest(tmp_path / "m" / "cam" / "stream.json")
    model = WeatherClassifier.load(untrained_classifier)
    human, *others, unreadable = stream.frames
    assert (human.condition, human.label_source, human.confidence) == ("overcast", None, None)  # kept
    assert human.prediction["model"] == model.id
    for frame in others:
        assert frame.label_source == "model" and frame.condition in ("clear", "overcast")
        assert frame.confidence == frame.prediction["probability"] and 0.5 <= frame.confidence <= 1
    assert unreadable.prediction is None and unreadable.condition is None

    validated = cli(
        "streams",
        "validate",
        tmp_path / "m",
        "--set",
        "streams.min_confidence=1.0",
        "--set",
        "streams.min_edge_correlation=-1",
        "--set",
        "streams.max_offset=1",
        "-q",
    )  # one scene per frame
    assert validated.exit_code == 0, validated.output
    reasons = [f.reason for f in read_manifest(tmp_path / "m" / "cam" / "stream.json").frames]
    assert reasons == ["", "low_confidence", "low_confidence", "low_confidence", "low_confidence", "corrupt"]


def blue_sky_segmenter(path: Path) -> Path:
    """A 1x1-convolution "segmenter": sky where blue exceeds red (logit 20 (B - R) - 2), saved as a tfsky model."""
    import tensorflow as tf

    from tfsky.data.transforms import Preprocess
    from tfsky.models.bundle import ModelInfo, save_model

    inputs = tf.keras.Input((None, None, 3))
    conv = tf.keras.layers.Conv2D(1, 1)
    logits = conv(inputs)
    conv.set_weights([np.array([-20.0, 0.0, 20.0], np.float32).reshape(1, 1, 3, 1), np.array([-2.0], np.float32)])
    model = tf.keras.Model(inputs, tf.keras.layers.Activation("sigmoid")(logits))
    save_model(model, path, ModelInfo(task="segmenter", preprocess=Preprocess(), tile_size=64))
    return path


def test_streams_label_with_a_segmenter_measures_the_sky_and_leaves_skyless_frames_unlabelled(
    untrained_classifier, tmp_path, cli
):
    from tfsky.data.streams import StreamsConfig, read_manifest, validate_streams

    frames = tmp_path / "frames" / "cam"
    frames.mkdir(parents=True)
    sky_over_ground = np.full((120, 160, 3), 40, np.uint8)
    sky_over_ground[:60] = (90, 150, 235)  # the top half is a blue sky
    Image.fromarray(sky_over_ground).save(frames / "20200101_100000.png")
    Image.fromarray(np.full((120, 160, 3), 128, np.uint8)).save(frames / "20200101_110000.png")  # a grey wall
    Image.fromarray(sky_over_ground).save(frames / "20200101_120000.png")
    (tmp_path / "labels.csv").write_text("image,sky_condition\ncam/20200101_120000.png,overcast\n")
    validate_streams(StreamsConfig(root=tmp_path / "frames", labels_csv=tmp_path / "labels.csv"), out=tmp_path / "m")
    segmenter = blue_sky_segmenter(tmp_path / "sky.keras")
    result = cli("streams", "label", tmp_path / "m", "--classifier", untrained_classifier, "--segmenter", segmenter)
    assert result.exit_code == 0, result.output
    assert "no sky" in result.stdout and "0.33" in result.stdout  # mean share of the three frames
    blue, wall, human = read_manifest(tmp_path / "m" / "cam" / "stream.json").frames

    sky = blue.prediction["sky"]
    assert sky["fraction"] == pytest.approx(0.5, abs=0.01)
    assert sky["blueness"] == pytest.approx((235 - 90) / 255, abs=0.01)  # of the sky pixels only
    assert sky["brightness"] == pytest.approx((0.2126 * 90 + 0.7152 * 150 + 0.0722 * 235) / 255, abs=0.01)
    assert sky["dark_share"] == 0 and sky["segmenter"].startswith("sha256-1MiB:")
    assert blue.label_source == "model" and blue.condition == blue.prediction["condition"]

    assert wall.prediction["sky"] == {"fraction": 0.0, "segmenter": sky["segmenter"]}
    assert wall.prediction["condition"] in ("clear", "overcast")  # predicted, but not taken as the label
    assert (wall.condition, wall.confidence, wall.label_source) == (None, None, None)

    assert (human.condition, human.label_source) == ("overcast", None)  # the human label wins
    assert human.prediction["sky"]["fraction"] == pytest.approx(0.5, abs=0.01)


def test_streams_label_refuses_a_segmenter_model(tmp_path, cli, untrained_classifier):
    import shutil

    other = tmp_path / "seg.keras"
    shutil.copy(untrained_classifier, other)
    sidecar = json.loads(untrained_classifier.with_suffix(".json").read_text()) | {"task": "segmenter"}
    other.with_suffix(".json").write_text(json.dumps(sidecar))
    (tmp_path / "m" / "cam").mkdir(parents=True)
    (tmp_path / "m" / "cam" / "stream.json").write_text('{"camera": "cam", "frames": []}')
    result = cli("streams", "label", tmp_path / "m", "--classifier", other)
    assert result.exit_code == 1
    assert result.stderr.strip() == f"Error: {other}: is a segmenter model, not a weather classifier"


def test_backbone_starts_from_a_trained_segmenters_encoder(tmp_path):
    """``model.encoder_from``: every backbone layer of the classifier takes the segmenter's weights."""
    from tfsky.data.transforms import Preprocess
    from tfsky.models.bundle import ModelInfo, save_model
    from tfsky.models.classifier import ClassifierModelConfig, build_classifier
    from tfsky.models.segmenter import SegmenterModelConfig, build_segmenter

    segmenter = build_segmenter(SegmenterModelConfig(backbone="resnet18", decoder_filters=(8, 8, 8, 8, 8)), 3)
    segmenter.get_layer("bn_data").set_weights([w + 0.5 for w in segmenter.get_layer("bn_data").get_weights()])
    path = tmp_path / "seg.keras"
    save_model(segmenter, path, ModelInfo(task="segmenter", preprocess=Preprocess(), tile_size=64))
    fresh = build_classifier(ClassifierModelConfig(backbone="resnet18"), 4)
    sky_aware = build_classifier(ClassifierModelConfig(backbone="resnet18", encoder_from=path), 4)
    for name in ("bn_data", "conv0", "stage4_unit2_conv2"):
        for ours, theirs in zip(sky_aware.get_layer(name).get_weights(), segmenter.get_layer(name).get_weights()):
            np.testing.assert_array_equal(ours, theirs)
    assert not np.array_equal(
        fresh.get_layer("bn_data").get_weights()[0], sky_aware.get_layer("bn_data").get_weights()[0]
    )
    with pytest.raises(InputError, match="encoder layer .* has other shapes|segmenter has no encoder layer"):
        build_classifier(ClassifierModelConfig(backbone="resnet34", encoder_from=path), 4)


def test_all_sky_frames_from_the_labels_csv_skip_the_unlabelled(shared_data):
    root = shared_data / "allsky_wsiseg"
    cfg = load_config(ClassifierConfig, "configs/weather_allsky.yaml")
    cfg.data.sources[0].path, cfg.data.sources[0].images = root / "sky_type.csv", root / "images"
    data = labelled_set(cfg.data)
    assert data.conditions == ["clear", "partly_cloudy", "overcast"]
    assert {split: len(items) for split, items in data.splits.items()} == {"train": 234, "val": 60}
    assert len(data.skipped) == 64 and all(line.endswith(": no label") for line in data.skipped)
    assert f"{root / 'images' / 'ASC100-1006_141.png'}: no label" in data.skipped
