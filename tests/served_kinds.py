"""Tiny untrained models of every kind tfsky exports (segmenter, cloud, classifier, colorizer), for serving tests.

Serving needs their files and graphs, not their skill: each is built and saved in a second or two.
"""

from __future__ import annotations

from pathlib import Path

import tensorflow as tf

from test_export import TILE, save_tiny
from tfsky.data.transforms import Preprocess
from tfsky.models.bundle import ModelInfo, save_model

REPO = Path(__file__).resolve().parents[1]
ALLSKY_SOURCE = {"kind": "allsky_folder", "allsky": {"cameras": []}}  # a cloud model without camera masks


def save_cloud(path: Path) -> Path:
    """A two-class softmax segmenter trained (says its sidecar) on an all-sky source: a cloud model."""
    tf.keras.utils.set_random_seed(0)
    inputs = tf.keras.Input((None, None, 3))
    x = tf.keras.layers.Conv2D(4, 3, padding="same", activation="relu")(inputs)
    outputs = tf.keras.layers.Conv2D(2, 3, padding="same", activation="softmax")(x)
    info = ModelInfo(
        task="segmenter",
        preprocess=Preprocess(),
        tile_size=TILE,
        classes=2,
        config={"data": {"sources": [ALLSKY_SOURCE]}},
    )
    save_model(tf.keras.Model(inputs, outputs), path, info)
    return path


def save_classifier(path: Path, classes: dict[str, str]) -> Path:
    """A 32-px weather classifier of two classes (folder name -> condition)."""
    from tfsky.data.labelled import ClassifierDataConfig, LabelledSource
    from tfsky.models.classifier import build_classifier
    from tfsky.train.classifier import save_classifier as save
    from tfsky.train.config import ClassifierConfig

    data = ClassifierDataConfig(sources=[LabelledSource("class_folders", path.parent)], image_size=32, classes=classes)
    cfg = ClassifierConfig(name="tiny", data=data)
    tf.keras.utils.set_random_seed(0)
    save(build_classifier(cfg.model, len(set(classes.values()))), path, cfg, {})
    return path


def save_colorizer(path: Path) -> Path:
    """The colorizer of ``configs/colorize_tiny.yaml``, untrained."""
    from tfsky.config import load_config
    from tfsky.models.colorize import build_colorizer
    from tfsky.train.colorize import save_colorizer as save
    from tfsky.train.config import TranslatorConfig

    cfg = load_config(
        TranslatorConfig,
        REPO / "configs" / "colorize_tiny.yaml",
        [f"colour.sources=[{{kind: camera_folder, images: {path.parent}, name: here}}]"],
    )
    tf.keras.utils.set_random_seed(0)
    save(build_colorizer(cfg.model.colorize, cfg.train.learning_rate), path, cfg, {})
    return path


def save_every_kind(folder: Path) -> dict[str, Path]:
    """``{kind: model file}`` for the four kinds, saved under ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    return {
        "segmenter": save_tiny(folder / "segmenter.keras"),
        "cloud": save_cloud(folder / "cloud.keras"),
        "classifier": save_classifier(folder / "classifier.keras", {"shine": "clear", "cloudy": "overcast"}),
        "colorizer": save_colorizer(folder / "colorizer.keras"),
    }
