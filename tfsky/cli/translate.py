"""``tfsky translate``: frames in another weather, at full resolution, optionally sky-only composites."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from tfsky.cli.batch_options import EngineFlags, JobProgress, OutOption, engine_flags, finish
from tfsky.cli.options import ConfigOption, QuietOption, SetOption, command_config, tiling_flags
from tfsky.cli.options import (
    MemoryBudgetOption,
    OverlapOption,
    TileBatchOption,
    TileOption,
    TtaOption,
    WindowOption,
)  # tiling flags


@engine_flags
def translate_cli(
    inputs: Annotated[list[Path], typer.Argument(help="Image files, folders (recursive) or .txt manifests.")],
    model: Annotated[Path, typer.Option("--model", "-m", help="Translator .keras file (pix2pix or vae).")],
    out: OutOption,
    composite: Annotated[
        Optional[bool],
        typer.Option(
            help="Also write <name>_composite.png: only the sky translated (config: translate.composite.enabled)."
        ),
    ] = None,
    segmenter: Annotated[Optional[Path], typer.Option(help="Sky segmenter for --composite.")] = None,
    mask: Annotated[Optional[Path], typer.Option(help="Camera sky mask for --composite (beats --segmenter).")] = None,
    feather: Annotated[
        Optional[float], typer.Option(help="Sky edge blur: Gaussian sigma, px (config: translate.composite.feather).")
    ] = None,
    tile: TileOption = None,
    overlap: OverlapOption = None,
    window: WindowOption = None,
    tile_batch: TileBatchOption = None,
    tta: TtaOption = None,
    memory_budget: MemoryBudgetOption = None,
    sample: Annotated[
        Optional[bool],
        typer.Option(help="VAE: sample the latent instead of using its mean (config: translate.sample)."),
    ] = None,
    native_scale: Annotated[
        Optional[bool],
        typer.Option(
            help="Run the network on full-resolution pixels even if it was trained downscaled "
            "(config: translate.native_scale)."
        ),
    ] = None,
    overwrite: Annotated[bool, typer.Option(help="Redo images whose outputs exist.")] = False,
    engine: EngineFlags = EngineFlags(),  # --engine, --address, --workers, ... (engine_flags)
    config: ConfigOption = None,
    set_: SetOption = None,
    quiet: QuietOption = False,
) -> None:
    """Translate the weather of whole frames through overlapping tiles. Exit 1 if any image failed.

    Options come from the ``translate:`` section of --config, then --set, then the flags above.
    ``--engine ray`` spreads the images over the workers of a Ray cluster (same outputs).
    """
    from tfsky.predict.translate import TranslateConfig, translate_images

    flags = {
        "composite.enabled": composite,
        "composite.segmenter": segmenter,
        "composite.mask": mask,
        "composite.feather": feather,
        "sample": sample,
        "native_scale": native_scale,
        **tiling_flags(tile, overlap, window, tile_batch, tta, memory_budget=memory_budget),
    }
    cfg = command_config(TranslateConfig, "translate", config, set_, flags)
    runner = engine.make()
    with JobProgress(quiet) as listener:
        report = translate_images(model, inputs, out, cfg, overwrite=overwrite, listener=listener, engine=runner)
    finish(report, out, quiet)
