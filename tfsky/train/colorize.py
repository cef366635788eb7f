"""``tfsky train translator`` with ``model.kind: colorize``: grey -> colour from any RGB images.

Pairs are made on the fly: each frame (``colour:`` sources, split by source; `tfsky.data.colour`)
is resized so its shorter side is ``data.load_size`` and converted to Lab once; each step takes
a random ``data.crop_size`` crop (and a mirrored frame half the time). The generator sees the
whole frame's L squeezed to ``model.colorize.generator_size``; the refinement sees the crop's L
and the coarse ab upsampled over the crop (`tfsky.models.colorize`).

The run folder, resume, TensorBoard and learning curves are the runner's (`tfsky.train.runner`);
TensorBoard shows fixed validation rows grey | prediction | truth. ``best.keras`` holds both
networks (chosen on ``val_ab_l1``, mean |ab error| of the refined crop in Lab units); its sidecar
records task ``colorize``, the refinement's tile (``crop_size``), in_channels 1 and classes 2.

Chroma gate (``model.colorize.chroma_gate``, on by default): after training,
`tfsky.train.chroma_gate.fit_chroma_gate`
colorizes every TRAINING image at its native size (as the evaluation does) and stores in the sidecar
the gate statistic below which grey beats the model on mean PSNR (`best_gate_threshold`); a frame
below it is then output grey by ``tfsky colorize``, the evaluation and the export. The validation
split the evaluation reports never sees the fit. ``tfsky evaluate translator --fit-gate`` fits it for
an existing model.
"""

from __future__ import annotations

import logging
from pathlib import Path

import tensorflow as tf

from tfsky.config import to_dict
from tfsky.data.colour import (
    ab_bin_prior,
    colour_split,
    lab_to_rgb,
    load_frames,
    model_to_lab,
    training_dataset,
    validation_dataset,
)
from tfsky.data.pairs import PREPROCESS
from tfsky.errors import InputError
from tfsky.models.bundle import ModelInfo, save_model
from tfsky.models.colorize import ColorizerTrainer, StageSchedule, build_colorizer, inference_model
from tfsky.models.precision import global_batch_size, make_strategy, precision_policy
from tfsky.train.chroma_gate import fit_chroma_gate
from tfsky.train.config import TranslatorConfig
from tfsky.train.runner import RunResult, fit_run, is_chief, seed_everything, start_run

MONITOR = "val_ab_l1"
log = logging.getLogger("tfsky")


def train_colorizer(cfg: TranslatorConfig, *, resume: bool = False, verbose: int = 2) -> RunResult:
    """Train (or resume) the colorizer of ``cfg``; returns the run result."""
    seed_everything(cfg.train)
    model_cfg, data = cfg.model.colorize, cfg.data
    split = colour_split(cfg.colour)
    skipped: list[str] = []
    frames = {
        name: load_frames(split[name], data.load_size, data.crop_size, model_cfg.generator_size, skipped)
        for name in ("train", "val")
    }
    for reason in skipped:
        log.warning("skipped %s", reason)
    if not frames["train"]:
        raise InputError(
            cfg.colour.class_folders[0] if cfg.colour.class_folders else "colour.sources", "no readable training image"
        )
    if not frames["val"]:
        log.warning("no validation images (split by source): validating on the training frames (this measures fit)")
        frames["val"] = frames["train"]
    log.info("colorize: %d training, %d validation frames", len(frames["train"]), len(frames["val"]))
    strategy = make_strategy(cfg.train.strategy)
    batch_size = global_batch_size(cfg.train.batch_size, strategy)
    val_frames = frames["val"]
    if cfg.train.validation_steps:
        val_frames = val_frames[: cfg.train.validation_steps * batch_size]
    train_ds = training_dataset(
        frames["train"], data.crop_size, model_cfg.generator_size, batch_size, data.flip, cfg.train.seed
    )
    val_ds = validation_dataset(val_frames, data.crop_size, batch_size)
    steps = cfg.train.steps_per_epoch or max(1, len(frames["train"]) // batch_size)
    prior = ab_bin_prior(frames["train"], model_cfg.ab_bin) if model_cfg.rebalance > 0 else None
    with precision_policy(cfg.model.precision), strategy.scope():
        model = build_colorizer(model_cfg, cfg.train.learning_rate, prior)
        model(next(iter(val_ds))[0])  # built before fit, as BackupAndRestore needs
        run_dir, _ = start_run(cfg.train.runs_root, cfg.name, cfg, resume)
        callbacks = [StageSchedule(model_cfg.coarse_epochs)] if model_cfg.schedule == "staged" else []
        if cfg.train.early_stopping_patience is not None:
            callbacks.append(
                tf.keras.callbacks.EarlyStopping(
                    monitor=MONITOR, mode="min", patience=cfg.train.early_stopping_patience
                )
            )
        result = fit_run(
            model,
            train_ds,
            val_ds,
            run_dir=run_dir,
            epochs=cfg.train.epochs,
            monitor=MONITOR,
            mode="min",
            save_best=lambda model, path, logs: save_colorizer(model, path, cfg, logs),
            images=colour_panels(val_ds, cfg.train.tensorboard_images),
            extra_callbacks=callbacks,
            steps_per_epoch=steps,
            verbose=verbose,
        )
    best = run_dir / "best.keras"
    if model_cfg.chroma_gate and best.is_file() and is_chief():
        # the gate is calibrated on the training split (colorized at native size, PSNR vs grey)
        summary = fit_chroma_gate(best).summary()
        log.info("colorize: %s", summary)  # the CLI shows it, like the budget line: what the gate does
    return result


def save_colorizer(model: ColorizerTrainer, path: Path, cfg: TranslatorConfig, logs: dict) -> None:
    """Write both networks to ``best.keras`` with the sidecar (task colorize, tile, training config, metrics)."""
    info = ModelInfo(
        task="colorize",
        preprocess=PREPROCESS,
        tile_size=cfg.data.crop_size,
        in_channels=1,
        classes=2,
        config=to_dict(cfg),
        metrics={key: value for key, value in logs.items() if key.startswith("val_")},
    )
    save_model(inference_model(model.generator, model.refiner), path, info)


def colour_panels(val_ds: tf.data.Dataset, count: int):
    """The TensorBoard image function: ``count`` fixed validation rows grey | prediction | truth."""
    if count == 0:
        return None
    inputs, (_, crop_ab) = next(iter(val_ds.take(1)))
    inputs = tuple(part[:count] for part in inputs)
    crop_l, crop_ab = inputs[1], crop_ab[:count]

    def panels(model: ColorizerTrainer) -> dict[str, tf.Tensor]:
        _, refined = model(inputs, training=False)
        grey = lab_to_rgb(model_to_lab(crop_l, tf.zeros_like(crop_ab)))
        row = tf.concat(
            [grey, lab_to_rgb(model_to_lab(crop_l, refined)), lab_to_rgb(model_to_lab(crop_l, crop_ab))], axis=2
        )
        return {"grey | prediction | truth": row}

    return panels
