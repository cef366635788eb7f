"""``tfsky colorize``: grey (or colour, converted to L first) frames to colour, at full resolution."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

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
def colorize_cli(
    inputs: Annotated[list[Path], typer.Argument(help="Image files, folders (recursive) or .txt manifests.")],
    model: Annotated[Path, typer.Option("--model", "-m", help="Colorizer .keras file (model.kind colorize).")],
    out: OutOption,
    tile: TileOption = None,
    overlap: OverlapOption = None,
    window: WindowOption = None,
    tile_batch: TileBatchOption = None,
    tta: TtaOption = None,
    memory_budget: MemoryBudgetOption = None,
    overwrite: Annotated[bool, typer.Option(help="Redo images whose outputs exist.")] = False,
    engine: EngineFlags = EngineFlags(),  # --engine, --address, --workers, ... (engine_flags)
    config: ConfigOption = None,
    set_: SetOption = None,
    quiet: QuietOption = False,
) -> None:
    """Colorize whole frames: <name>_colour.png per input (8/16-bit; tone-map HDR first). Exit 1 if any failed.

    Options come from the ``colorize:`` section of --config, then --set, then the flags above.
    """
    from tfsky.predict.colorize import ColorizeOptions, colorize_images

    flags = tiling_flags(tile, overlap, window, tile_batch, tta, memory_budget=memory_budget)
    cfg = command_config(ColorizeOptions, "colorize", config, set_, flags)
    runner = engine.make()
    with JobProgress(quiet) as listener:
        report = colorize_images(model, inputs, out, cfg, overwrite=overwrite, listener=listener, engine=runner)
    finish(report, out, quiet)
