"""``tfsky train classifier``: fit the weather classifier on labelled images into a run folder.

The images are decoded once into memory (hundreds of photos at ~150 px);
training reads random crops with flips and mild brightness/contrast jitter,
validation the centre crops. ``best.keras`` is chosen on ``val_accuracy``; its
sidecar holds the preprocessing, the input size and the resolved config, from
which `class_names` and the split are rebuilt by ``tfsky evaluate classifier``. The config schema is
`tfsky.train.config.ClassifierConfig`.
"""

from __future__ import annotations

import math

import numpy as np
import tensorflow as tf

from tfsky.config import to_dict
from tfsky.data.labelled import ClassifierDataConfig, LabelledSet, labelled_set, load_images
from tfsky.data.transforms import Preprocess
from tfsky.errors import ConfigError
from tfsky.models.bundle import ModelInfo, save_model
from tfsky.models.classifier import build_classifier
from tfsky.models.precision import precision_policy
from tfsky.train.config import ClassifierConfig, SegmenterTrainConfig
from tfsky.train.runner import RunResult, fit_run, seed_everything, start_run
from tfsky.train.segmenter import make_optimizer, pace_callbacks

MONITOR = "val_accuracy"
PREPROCESS = Preprocess(mode="ldr")


def train_classifier(cfg: ClassifierConfig, *, resume: bool = False, verbose: int = 2) -> RunResult:
    """Train (or, with ``resume``, continue the newest run of) ``cfg.name``; returns the run's result."""
    seed_everything(cfg.train)
    data = labelled_set(cfg.data)
    train_ds, val_ds, steps = make_datasets(cfg, data)
    with precision_policy(cfg.model.precision):
        model = build_classifier(cfg.model, len(data.conditions))
        model.compile(
            optimizer=make_optimizer(cfg.train, steps, model, cfg.model.backbone),
            loss="sparse_categorical_crossentropy",
            metrics=["accuracy"],
        )
        run_dir, _ = start_run(cfg.train.runs_root, cfg.name, cfg, resume)
        return fit_run(
            model,
            train_ds,
            val_ds,
            run_dir=run_dir,
            epochs=cfg.train.epochs,
            monitor=MONITOR,
            mode="max",
            save_best=lambda model, path, logs: save_classifier(model, path, cfg, logs),
            extra_callbacks=pace_callbacks(cfg.train) + stopping_callbacks(cfg.train),
            steps_per_epoch=steps,
            verbose=verbose,
        )


def make_datasets(cfg: ClassifierConfig, data: LabelledSet) -> tuple[tf.data.Dataset, tf.data.Dataset, int]:
    """Training batches (random crops of the ``load_size`` images), validation batches (centre crops), steps."""
    d, batch = cfg.data, cfg.train.batch_size
    train, val = data.splits["train"], data.splits["val"]
    if len(train) < batch or not val:
        raise ConfigError(
            "data.val_fraction",
            f"the split left {len(train)} training and {len(val)} validation "
            f"images; need >= train.batch_size ({batch}) and >= 1",
        )
    labels = {
        split: np.array([data.conditions.index(i.condition) for i in items], np.int32)
        for split, items in data.splits.items()
    }
    train_images = load_images(train, d.load_size)
    val_images = load_images(val, d.load_size, d.image_size)
    augment = training_augmentation(d, cfg.train.seed)
    train_ds = (
        tf.data.Dataset.from_tensor_slices((train_images, labels["train"]))
        .shuffle(len(train), seed=cfg.train.seed)
        .map(augment, num_parallel_calls=tf.data.AUTOTUNE)
        .batch(batch)
        .prefetch(tf.data.AUTOTUNE)
    )
    val_ds = (
        tf.data.Dataset.from_tensor_slices((val_images, labels["val"]))
        .batch(batch)
        .map(lambda x, y: (PREPROCESS.apply(x), y))
    )
    return train_ds, val_ds, cfg.train.steps_per_epoch or math.ceil(len(train) / batch)


def training_augmentation(d: ClassifierDataConfig, seed):
    """Random ``image_size`` crop, then (with ``d.augment``) a flip and mild brightness/contrast jitter."""
    size = d.image_size

    def augment(image: tf.Tensor, label: tf.Tensor):
        if d.augment:
            image = tf.image.random_crop(image, (size, size, 3), seed=seed)
        else:
            start = (d.load_size - size) // 2
            image = image[start : start + size, start : start + size]
        image = PREPROCESS.apply(image)
        if d.augment:
            image = tf.image.random_flip_left_right(image, seed=seed)
            image = tf.image.random_brightness(image, 0.05, seed=seed)
            image = tf.clip_by_value(tf.image.random_contrast(image, 0.9, 1.1, seed=seed), 0.0, 1.0)
        return image, label

    return augment


def stopping_callbacks(train: SegmenterTrainConfig) -> list[tf.keras.callbacks.Callback]:
    """ReduceLROnPlateau (on ``val_loss``) and EarlyStopping (on ``val_accuracy``) as configured."""
    callbacks = []
    if train.lr_schedule == "plateau":
        callbacks.append(
            tf.keras.callbacks.ReduceLROnPlateau(
                monitor="val_loss", factor=train.plateau_factor, patience=train.plateau_patience, verbose=0
            )
        )
    if train.early_stopping_patience is not None:
        callbacks.append(
            tf.keras.callbacks.EarlyStopping(monitor=MONITOR, mode="max", patience=train.early_stopping_patience)
        )
    return callbacks


def save_classifier(model: tf.keras.Model, path, cfg: ClassifierConfig, logs: dict) -> None:
    """``best.keras`` (weights, no optimizer) + sidecar with the input size and the epoch's val metrics."""
    inference = tf.keras.Model(model.inputs, model.outputs, name=model.name)
    info = ModelInfo(
        task="classifier",
        preprocess=PREPROCESS,
        tile_size=cfg.data.image_size,
        in_channels=3,
        classes=len(set(cfg.data.classes.values())),
        config=to_dict(cfg),
        metrics={k: v for k, v in logs.items() if k.startswith("val_")},
    )
    save_model(inference, path, info)
