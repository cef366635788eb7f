"""``tfsky train translator``: fit a pix2pix or VAE weather translator into a run folder.

The run folder is the segmenter's (`tfsky.train.runner`): ``best.keras`` +
``best.json``, ``last/`` for resume after a kill, ``history.csv``,
TensorBoard (scalars and, each epoch, fixed validation triplets
source | generated | target) and ``learning_curves.png``. ``best.keras`` is
the inference network only (the pix2pix generator, or the VAE translator
that decodes mu), chosen on ``val_l1`` (plain L1 in [-1, 1] units, lower is
better); its sidecar records ``Preprocess(ldr)`` — the [-1, 1] mapping is
`tfsky.data.transforms.to_model_range`.

The config schema is `tfsky.train.config.TranslatorConfig`. When
``pairs.file`` does not exist it is built first, as ``tfsky streams
validate`` + ``tfsky streams pairs`` would (from the manifests in
``streams.manifests`` when they exist, else by importing ``streams.root``).
With a single labelled camera there is no validation stream (the split is by
camera); validation then runs on the training pairs and says so — the scores
measure fit, not generalisation.
"""

from __future__ import annotations

import logging
from pathlib import Path

import tensorflow as tf

from tfsky.config import to_dict
from tfsky.data.pairs import PREPROCESS, build_pairs, make_pair_dataset, read_pairs, write_pairs
from tfsky.data.pipeline import evenly_spaced
from tfsky.data.streams import MANIFEST_NAME, load_streams, validate_streams
from tfsky.data.transforms import from_model_range
from tfsky.models.bundle import ModelInfo, save_model
from tfsky.models.pix2pix import build_pix2pix
from tfsky.models.precision import global_batch_size, make_strategy, precision_policy
from tfsky.models.vae import KLWarmup, VAETranslator, build_vae
from tfsky.train.config import TranslatorConfig
from tfsky.train.runner import RunResult, fit_run, seed_everything, start_run

MONITOR = "val_l1"
log = logging.getLogger("tfsky")


def train_translator(cfg: TranslatorConfig, *, resume: bool = False, verbose: int = 2) -> RunResult:
    """Train (or, with ``resume``, continue the newest run of) ``cfg.name``; returns the run result."""
    if cfg.model.kind == "colorize":
        from tfsky.train.colorize import train_colorizer

        return train_colorizer(cfg, resume=resume, verbose=verbose)
    seed_everything(cfg.train)
    ensure_pairs(cfg)
    train_pairs, val_pairs = read_pairs(cfg.pairs.file, "train"), read_pairs(cfg.pairs.file, "val")
    if not val_pairs:
        log.warning(
            "%s has no validation camera: validating on the training pairs (this measures fit, not generalisation)",
            cfg.pairs.file,
        )
        val_pairs = train_pairs
    strategy = make_strategy(cfg.train.strategy)
    batch_size = global_batch_size(cfg.train.batch_size, strategy)
    if cfg.train.validation_steps:
        val_pairs = evenly_spaced(val_pairs, cfg.train.validation_steps * batch_size)
    train_ds = make_pair_dataset(train_pairs, cfg.data, batch_size=batch_size, training=True)
    val_ds = make_pair_dataset(val_pairs, cfg.data, batch_size=batch_size, training=False)
    with precision_policy(cfg.model.precision), strategy.scope():
        model = build_translator_model(cfg)
        run_dir, _ = start_run(cfg.train.runs_root, cfg.name, cfg, resume)
        return fit_run(
            model,
            train_ds,
            val_ds,
            run_dir=run_dir,
            epochs=cfg.train.epochs,
            monitor=MONITOR,
            mode="min",
            save_best=lambda model, path, logs: save_translator(model, path, cfg, logs),
            images=triplet_panels(val_ds, cfg.train.tensorboard_images),
            extra_callbacks=_callbacks(cfg),
            steps_per_epoch=cfg.train.steps_per_epoch,
            verbose=verbose,
        )


def build_translator_model(cfg: TranslatorConfig) -> tf.keras.Model:
    """The compiled trainable model of ``model.kind`` (build it inside the policy and strategy scope)."""
    if cfg.model.kind == "vae":
        model = build_vae(cfg.model.vae, cfg.train.learning_rate)
    else:
        model = build_pix2pix(cfg.model.pix2pix, cfg.train.learning_rate)
    model(tf.zeros([1, cfg.data.crop_size, cfg.data.crop_size, 3]))  # built before fit, as BackupAndRestore needs
    return model


def inference_model(model: tf.keras.Model) -> tf.keras.Model:
    """The network saved as ``best.keras``: the pix2pix generator or the VAE translator."""
    return model.translator if isinstance(model, VAETranslator) else model.generator


def ensure_pairs(cfg: TranslatorConfig) -> None:
    """Build ``pairs.file`` from the streams when it does not exist yet (validating them if needed)."""
    if Path(cfg.pairs.file).is_file():
        return
    manifests = Path(cfg.streams.manifests)
    if not any(manifests.glob(f"*/{MANIFEST_NAME}")):
        validate_streams(cfg.streams)
    write_pairs(build_pairs(load_streams(manifests), cfg.pairs), cfg.pairs, cfg.pairs.file)


def save_translator(model: tf.keras.Model, path: Path, cfg: TranslatorConfig, logs: dict) -> None:
    """Write the inference network to ``best.keras`` with its sidecar (task, preprocess, tile, metrics)."""
    info = ModelInfo(
        task=cfg.model.kind,
        preprocess=PREPROCESS,
        tile_size=cfg.data.crop_size,
        in_channels=3,
        classes=3,
        config=to_dict(cfg),
        metrics={key: value for key, value in logs.items() if key.startswith("val_")},
    )
    save_model(inference_model(model), path, info)


def triplet_panels(val_ds: tf.data.Dataset, count: int):
    """The TensorBoard image function: ``count`` fixed validation rows source | generated | target."""
    if count == 0:
        return None
    (source, _), target = next(iter(val_ds.take(1)))
    source, target = source[:count], target[:count]

    def panels(model: tf.keras.Model) -> dict[str, tf.Tensor]:
        generated = tf.cast(model(source, training=False), tf.float32)
        row = tf.concat([from_model_range(source), from_model_range(generated), from_model_range(target)], axis=2)
        return {"source | generated | target": row}

    return panels


def _callbacks(cfg: TranslatorConfig) -> list[tf.keras.callbacks.Callback]:
    callbacks = []
    if cfg.model.kind == "vae":
        callbacks.append(KLWarmup(cfg.model.vae.kl_weight, cfg.model.vae.kl_warmup_epochs))
    if cfg.train.early_stopping_patience is not None:
        callbacks.append(
            tf.keras.callbacks.EarlyStopping(monitor=MONITOR, mode="min", patience=cfg.train.early_stopping_patience)
        )
    return callbacks
