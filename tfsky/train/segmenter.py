"""``tfsky train segmenter``: fit the sky segmenter from the prepared cache into a run folder.

The cache (``data.cache``) is prepared automatically when it does not exist
yet (as ``tfsky data prepare`` would); an existing cache is used as it is, so
after changing ``data.sources`` run ``tfsky data prepare`` again. Patch size,
augmentation and preprocessing are applied at read time and may change freely.

``best.keras`` is chosen on ``val_iou``; its sidecar ``best.json`` holds the
preprocessing, tile size, working scale, channels, classes, resolved config,
the best epoch's validation metrics, the cut on P(sky) (or a two-class
cloud model's P(cloud)) with the best IoU on the validation batches (chosen
after training, unless ``train.threshold`` fixes it),
and the bfloat16 verdict measured on the same batches (`tfsky.train.bfloat16`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np
import tensorflow as tf

from tfsky.config import to_dict
from tfsky.data import cache, pipeline
from tfsky.errors import ConfigError
from tfsky.data.masks import SKY_CLASS, best_iou_threshold, calibration_error, sky_probability
from tfsky.io.atomic import write_json
from tfsky.models.bundle import ModelInfo, info_path, load_model, save_model
from tfsky.models.losses import make_loss
from tfsky.models.metrics import segmentation_metrics
from tfsky.models.precision import bfloat16_verdict, global_batch_size, make_strategy, precision_policy
from tfsky.models.segmenter import build_segmenter, encoder_layers
from tfsky.progress import Progress
from tfsky.train.bfloat16 import validation_batches
from tfsky.train.config import SegmenterConfig, SegmenterTrainConfig
from tfsky.train.encoder_rate import EncoderRate, encoder_scaled
from tfsky.train.runner import RunResult, fit_run, is_chief, seed_everything, start_run

MONITOR = "val_iou"
THRESHOLD_BINS = 50  # candidate sky thresholds every 0.02


def train_segmenter(
    cfg: SegmenterConfig, *, resume: bool = False, verbose: int = 2, progress: Optional[Progress] = None
) -> RunResult:
    """Train (or, with ``resume``, continue the newest run of) ``cfg.name``.

    Args:
        cfg: SegmenterConfig. The loaded config.
        resume: bool. Continue the newest run folder of ``cfg.name`` from its
            last completed epoch (a fresh run if there is none). Defaults to False.
        verbose: int. Keras progress output (0 silent, 2 one line per epoch). Defaults to 2.
        progress: Progress. Preparing the cache when it is missing (`tfsky.progress`). Defaults to None.

    Returns:
        RunResult with the run folder and the best epoch's metrics.
    """
    seed_everything(cfg.train)
    ensure_cache(cfg, progress)
    strategy = make_strategy(cfg.train.strategy)
    batch_size = global_batch_size(cfg.train.batch_size, strategy)
    train_ds, val_ds = make_datasets(cfg, batch_size)
    steps = training_steps(cfg, batch_size)
    with precision_policy(cfg.model.precision), strategy.scope():
        model = compiled_segmenter(cfg, steps)
        run_dir, _ = start_run(cfg.train.runs_root, cfg.name, cfg, resume)
        result = fit_run(
            model,
            train_ds,
            val_ds,
            run_dir=run_dir,
            epochs=cfg.train.epochs,
            monitor=MONITOR,
            mode="max",
            save_best=lambda model, path, logs: save_segmenter(model, path, cfg, logs),
            images=validation_panels(val_ds, cfg.train.tensorboard_images),
            extra_callbacks=schedule_callbacks(cfg.train),
            steps_per_epoch=steps,
            verbose=verbose,
        )
    best = run_dir / "best.keras"
    if best.is_file() and is_chief():
        model, info = load_model(best, precision="float32")  # loaded once for both choices
        if cfg.model.classes <= 2:  # one cut: P(sky), or a cloud model's P(cloud)
            choose_threshold(model, info, val_ds, cfg.train.threshold)
        info.bfloat16 = bfloat16_verdict(model, val_ds, info.threshold)  # at the chosen threshold
        write_json(info_path(best), info.to_json())
    return result


def store_threshold(path: Path, val_ds: tf.data.Dataset, fixed: Optional[float] = None) -> float:
    """Choose the sky threshold of the saved model at ``path`` on the validation batches (or take ``fixed``)
    and store it in its sidecar (`ModelInfo.threshold`), where predict, evaluate and export read it, with
    the validation's best cut and expected calibration error (`choose_threshold`)."""
    model, info = load_model(path, precision="float32")
    choose_threshold(model, info, val_ds, fixed)
    write_json(info_path(path), info.to_json())
    return info.threshold


def choose_threshold(
    model: tf.keras.Model, info: ModelInfo, val_ds: tf.data.Dataset, fixed: Optional[float] = None
) -> None:
    """Set ``info.threshold`` (``fixed``, or the best IoU of the positive class on the labelled pixels of the
    validation batches), and in ``info.metrics`` the validation's best cut (``val_best_threshold``) and
    expected calibration error (``val_calibration_error``)."""
    positive = np.zeros(THRESHOLD_BINS, np.int64)
    negative = np.zeros(THRESHOLD_BINS, np.int64)
    probability_sum = np.zeros(THRESHOLD_BINS, np.float64)
    for images, masks in val_ds:
        probability = sky_probability(model(images, training=False).numpy())
        truth, labelled = positive_pixels(masks.numpy())
        probability = probability[labelled]
        positive += np.histogram(probability[truth[labelled]], THRESHOLD_BINS, (0.0, 1.0))[0]
        negative += np.histogram(probability[~truth[labelled]], THRESHOLD_BINS, (0.0, 1.0))[0]
        probability_sum += np.histogram(probability, THRESHOLD_BINS, (0.0, 1.0), weights=probability)[0]
    best = best_iou_threshold(positive, negative)
    info.threshold = best if fixed is None else fixed
    info.metrics["val_best_threshold"] = best
    info.metrics["val_calibration_error"] = round(calibration_error(positive, negative, probability_sum), 4)


def positive_pixels(masks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(truth, labelled)`` of a batch of pipeline masks: the 0/1 sky channel (every pixel labelled), or
    one-hot rows whose positive class is `SKY_CLASS` (a cloud model's cloud; an all-zero row is ignored)."""
    if masks.shape[-1] == 1:
        truth = masks[..., 0] >= 0.5
        return truth, np.ones_like(truth)
    return masks[..., SKY_CLASS] >= 0.5, masks.sum(axis=-1) > 0


def compiled_segmenter(cfg: SegmenterConfig, steps_per_epoch: int) -> tf.keras.Model:
    """Build and compile under the current policy and strategy scope (loss, IoU/F1, optimizer, XLA flag)."""
    model = build_segmenter(cfg.model, cfg.data.channels)
    model.compile(
        optimizer=make_optimizer(cfg.train, steps_per_epoch, model, cfg.model.backbone),
        loss=make_loss(cfg.train.loss, cfg.model.classes),
        metrics=segmentation_metrics(cfg.model.classes),
        jit_compile=cfg.model.jit_compile,
    )
    return model


def ensure_cache(cfg: SegmenterConfig, progress: Optional[Progress] = None) -> None:
    """Prepare ``data.cache`` unless a complete cache (with its manifest) is already there.

    Raises:
        ConfigError: no cache for a multi-worker run, whose workers would all write it at once.
    """
    if (Path(cfg.data.cache) / cache.MANIFEST).is_file():
        return
    if cfg.train.strategy == "multi_worker":
        raise ConfigError(
            "data.cache",
            f"{cfg.data.cache} is not prepared; a multi-worker run needs it first (tfsky data prepare -c CONFIG)",
        )
    cache.prepare_cache(cfg.data, progress=progress)


def training_steps(cfg: SegmenterConfig, batch_size: int) -> int:
    """Training batches per epoch: ``train.steps_per_epoch``, else one pass over the patches.

    Raises:
        ConfigError: the cache holds less than one batch of training patches.
    """
    one_pass = pipeline.steps_per_epoch(cfg.data, "train", batch_size)
    if one_pass < 1:
        raise ConfigError("train.batch_size", f"the global batch ({batch_size}) is larger than an epoch of patches")
    return cfg.train.steps_per_epoch or one_pass


def make_datasets(cfg: SegmenterConfig, batch_size: int) -> tuple[tf.data.Dataset, tf.data.Dataset]:
    """Training and validation batches of the global ``batch_size`` (validation cut to ``validation_steps``)."""
    train_ds = pipeline.segmentation_dataset(
        cfg.data, "train", batch_size, classes=cfg.model.classes, seed=cfg.train.seed
    )
    return train_ds, validation_batches(cfg, batch_size)


def learning_rate(train: SegmenterTrainConfig, steps_per_epoch: int):
    """``train.learning_rate``, or for ``cosine`` a schedule: linear warm-up, then cosine decay to 0."""
    if train.lr_schedule != "cosine":
        return train.learning_rate
    warmup = train.warmup_epochs * steps_per_epoch
    return tf.keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=0.0 if warmup else train.learning_rate,
        decay_steps=train.epochs * steps_per_epoch - warmup,
        warmup_target=train.learning_rate if warmup else None,
        warmup_steps=warmup,
    )


def make_optimizer(
    train: SegmenterTrainConfig, steps_per_epoch: int, model: tf.keras.Model, backbone: str
) -> tf.keras.optimizers.Optimizer:
    """The optimizer of ``train.optimizer`` with the learning rate (or schedule) of ``train``; with
    `paces_encoder`, the updates of ``model``'s ``backbone`` layers are scaled (`tfsky.train.encoder_rate`,
    driven by `pace_callbacks`). Call inside the strategy scope."""
    rate = learning_rate(train, steps_per_epoch)
    optimizer_class, options = {
        "adamw": (tf.keras.optimizers.AdamW, {"weight_decay": train.weight_decay}),
        "sgd": (tf.keras.optimizers.SGD, {"momentum": 0.9}),
        "adam": (tf.keras.optimizers.Adam, {}),
    }[train.optimizer]
    if not paces_encoder(train):
        return optimizer_class(rate, **options)
    optimizer = encoder_scaled(optimizer_class)(rate, **options)
    optimizer.scale_encoder(
        variable for layer in encoder_layers(model, backbone) for variable in layer.trainable_weights
    )
    return optimizer


def paces_encoder(train: SegmenterTrainConfig) -> bool:
    """Whether the encoder learns at another pace than the decoder (`tfsky.train.encoder_rate`)."""
    return train.encoder_lr_factor != 1.0 or train.decoder_first_epochs > 0


def pace_callbacks(train: SegmenterTrainConfig) -> list[tf.keras.callbacks.Callback]:
    """`EncoderRate` when the encoder learns at another pace (`paces_encoder`), else none."""
    return [EncoderRate(train.encoder_lr_factor, train.decoder_first_epochs)] if paces_encoder(train) else []


def schedule_callbacks(train: SegmenterTrainConfig) -> list[tf.keras.callbacks.Callback]:
    """The encoder's pace, ReduceLROnPlateau and EarlyStopping as configured."""
    callbacks = pace_callbacks(train)
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


def save_segmenter(model: tf.keras.Model, path: Path, cfg: SegmenterConfig, logs: dict) -> None:
    """Write ``best.keras`` + sidecar: weights only (no optimizer state), metrics of this epoch."""
    inference = tf.keras.Model(model.inputs, model.outputs, name=model.name)  # same layers, not compiled
    metrics = {key: value for key, value in logs.items() if key.startswith("val_")}
    info = ModelInfo(
        task="segmenter",
        preprocess=cfg.data.preprocess,
        tile_size=cfg.data.patch_size,
        in_channels=cfg.data.channels,
        classes=cfg.model.classes,
        working_scale=cfg.data.working_scale,
        config=to_dict(cfg),
        metrics=metrics,
    )
    save_model(inference, path, info)


def validation_panels(val_ds: tf.data.Dataset, count: int):
    """The TensorBoard image function: ``count`` fixed validation images | true mask | predicted mask."""
    if count == 0:
        return None
    images, masks = next(iter(val_ds.take(1)))
    images, masks = images[:count], masks[:count]

    def panels(model: tf.keras.Model) -> dict[str, tf.Tensor]:
        predicted = model(images, training=False)
        row = tf.concat([_displayable(images), _mask_rgb(masks), _mask_rgb(predicted)], axis=2)
        return {"validation image | true mask | predicted mask": row}

    return panels


def _displayable(images: tf.Tensor) -> tf.Tensor:
    """Model-space images (any range, 1/3/4 channels) as RGB in [0, 1], each stretched to its own range."""
    rgb = tf.image.grayscale_to_rgb(images) if images.shape[-1] == 1 else images[..., :3]
    low = tf.reduce_min(rgb, axis=[1, 2, 3], keepdims=True)
    high = tf.reduce_max(rgb, axis=[1, 2, 3], keepdims=True)
    return (rgb - low) / tf.maximum(high - low, 1e-6)


def _mask_rgb(masks: tf.Tensor) -> tf.Tensor:
    """A probability map (one channel) or one-hot / softmax classes (grey levels by class) as RGB."""
    masks = tf.cast(masks, tf.float32)
    if masks.shape[-1] > 1:
        masks = tf.cast(tf.argmax(masks, axis=-1), tf.float32)[..., None] / (masks.shape[-1] - 1)
    return tf.image.grayscale_to_rgb(masks)
