"""``tfsky predict``: sky masks (or, with a classifier, weather conditions) for images, files or folders, resumable."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from tfsky.cli.batch_options import EngineFlags, JobProgress, OutOption, engine_flags, finish
from tfsky.cli.options import ConfigOption, QuietOption, SetOption, command_config, tiling_flags
from tfsky.cli.options import OverlapOption, TileBatchOption, TileOption, TtaOption, WindowOption  # tiling flags
from tfsky.cli.options import MemoryBudgetOption, ResolutionOption


SHARED_SETTINGS = ("precision",)  # predict.* keys that classifiers take too


@engine_flags
def predict_cli(
    inputs: Annotated[list[Path], typer.Argument(help="Image files, folders (recursive) or .txt manifests.")],
    model: Annotated[
        Path,
        typer.Option("--model", "-m", help="Segmenter or weather classifier .keras file (with its .json sidecar)."),
    ],
    out: OutOption,
    tile: TileOption = None,
    overlap: OverlapOption = None,
    window: WindowOption = None,
    tile_batch: TileBatchOption = None,
    tta: TtaOption = None,
    resolution: ResolutionOption = None,
    memory_budget: MemoryBudgetOption = None,
    threshold: Annotated[
        Optional[float], typer.Option(help="Sky probability cut for the mask (config: predict.threshold).")
    ] = None,
    prob_format: Annotated[
        Optional[str], typer.Option(help="Probability map format: png16 | tif (config: predict.prob_format).")
    ] = None,
    camera_mask: Annotated[
        Optional[Path],
        typer.Option(
            help="Camera sky mask (tfsky streams skymask): frames without evidence (night, fog) take its sky "
            "(config: predict.camera_mask)."
        ),
    ] = None,
    sun: Annotated[
        Optional[bool],
        typer.Option(
            "--sun/--no-sun",
            help="Cloud models: leave the sun disc out of the cloud fraction, as WSISEG leaves it "
            "undefined (config: predict.cloud.sun; default: on).",
        ),
    ] = None,
    precision: Annotated[
        Optional[str],
        typer.Option(
            help="auto | float32 | bfloat16 | as_trained: what the model computes in; auto takes bfloat16 only on "
            "a CPU with a bfloat16 unit for a model whose masks keep (config: predict.precision).",
        ),
    ] = None,
    drop_enclosed: Annotated[
        Optional[bool],
        typer.Option(
            "--drop-enclosed/--keep-enclosed",
            help="Sky segmenters on photos of the horizon: leave out sky regions that touch no border of the "
            "frame (road or wall called sky); never for all-sky fisheye frames (config: predict.drop_enclosed; "
            "default: keep).",
        ),
    ] = None,
    overwrite: Annotated[bool, typer.Option(help="Redo images whose outputs are already complete.")] = False,
    engine: EngineFlags = EngineFlags(),  # --engine, --address, --workers, ... (engine_flags)
    config: ConfigOption = None,
    set_: SetOption = None,
    quiet: QuietOption = False,
) -> None:
    """Predict sky mask, probability map, overlay and JSON sidecar per image. Exit 1 if any image failed.

    Options come from the ``predict:`` section of --config, then --set, then the flags above.
    ``--engine ray`` spreads the images over the workers of a Ray cluster (same outputs).
    With a weather classifier: a JSON sidecar per image with the class probabilities, and classification.csv
    for the job (the segmenter options, as flags or from --config/--set, are refused).
    """
    from tfsky.errors import InputError
    from tfsky.models.bundle import ModelKind, kind_of
    from tfsky.predict.batch import PredictConfig, predict_many
    from tfsky.predict.classify import classify_many

    flags = {
        "precision": precision,
        "threshold": threshold,
        "prob_format": prob_format,
        "camera_mask": camera_mask,
        "cloud.sun": sun,
        "drop_enclosed": drop_enclosed,
        **tiling_flags(tile, overlap, window, tile_batch, tta, resolution, memory_budget),
    }
    cfg = command_config(PredictConfig, "predict", config, set_, flags)
    classifier = kind_of(model) is ModelKind.CLASSIFIER  # anything else goes the segmenter's way, and its checks
    segmenter_settings = _segmenter_settings(flags, config, set_) if classifier else []
    if segmenter_settings:
        raise InputError(model, f"is a weather classifier: {', '.join(segmenter_settings)} apply to segmenters only")
    runner = engine.make()
    with JobProgress(quiet) as listener:
        if classifier:
            report = classify_many(
                model, inputs, out, overwrite=overwrite, listener=listener, engine=runner, precision=cfg.precision
            )
        else:
            report = predict_many(model, inputs, out, cfg, overwrite=overwrite, listener=listener, engine=runner)
    finish(report, out, quiet)


def _segmenter_settings(flags: dict[str, Any], config: Optional[Path], set_: Optional[list[str]]) -> list[str]:
    """What a classifier is given of the segmenter settings: the flags (``--threshold``), then the ``predict.*``
    keys that --config and --set change from their defaults (``predict.tiling.tta (--config/--set)``); the
    precision applies to both kinds."""
    from tfsky.predict.batch import PredictConfig

    given = [key for key, value in flags.items() if value is not None and key not in SHARED_SETTINGS]
    from_files = _changed_keys(
        dataclasses.asdict(command_config(PredictConfig, "predict", config, set_, {})),
        dataclasses.asdict(PredictConfig()),
    )
    from_files = [key for key in from_files if key not in SHARED_SETTINGS]
    return [f"--{key.split('.')[-1].replace('_', '-')}" for key in given] + [
        f"predict.{key} (--config/--set)" for key in from_files if key not in given
    ]


def _changed_keys(values: dict[str, Any], defaults: dict[str, Any], prefix: str = "") -> list[str]:
    """The dotted keys of ``values`` (nested dicts) that differ from ``defaults``."""
    changed = []
    for key, value in values.items():
        if isinstance(value, dict):
            changed += _changed_keys(value, defaults[key], f"{prefix}{key}.")
        elif value != defaults[key]:
            changed.append(f"{prefix}{key}")
    return changed
