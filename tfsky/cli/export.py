"""``tfsky export``: turn a trained segmenter or classifier into a TF Serving model version, or describe one."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

from tfsky.cli.options import ConfigOption, SetOption, command_config, tiling_flags
from tfsky.cli.options import (
    MemoryBudgetOption,
    OverlapOption,
    TileBatchOption,
    TileOption,
    TtaOption,
    WindowOption,
)  # tiling flags


def export_cli(
    model: Annotated[
        Optional[Path],
        typer.Option(
            "--model",
            "-m",
            help="Segmenter or weather classifier .keras file (with its .json sidecar).",
            dir_okay=False,
        ),
    ] = None,
    name: Annotated[
        Optional[str], typer.Option("--name", help="Model name in the repository (config: export.name).")
    ] = None,
    repo: Annotated[
        Optional[Path],
        typer.Option("--repo", help="Model repository root, mounted as /models by TF Serving (config: export.repo)."),
    ] = None,
    version: Annotated[
        Optional[int],
        typer.Option("--version", help="Version number (config: export.version; default: the next free one)."),
    ] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing version folder.")] = False,
    precision: Annotated[
        Optional[str],
        typer.Option(
            "--precision",
            help="float32 (CPU serving, the shipped image), as_trained (keep a mixed-precision model's "
            "float16 layers, for a GPU server) or bfloat16 (a CPU server with AMX-BF16/AVX512-BF16; a segmenter needs a "
            "passing bfloat16 verdict and exports the build it passed) "
            "(config: export.precision).",
        ),
    ] = None,
    max_pixels: Annotated[
        Optional[int],
        typer.Option(
            "--max-pixels",
            help="The served image signatures refuse larger images before decoding them (config: "
            "export.max_pixels; default: what --memory-budget holds).",
        ),
    ] = None,
    tile: TileOption = None,
    overlap: OverlapOption = None,
    window: WindowOption = None,
    tile_batch: TileBatchOption = None,
    tta: TtaOption = None,
    memory_budget: MemoryBudgetOption = None,
    config: ConfigOption = None,
    set_: SetOption = None,
    info: Annotated[
        Optional[Path],
        typer.Option(
            "--info", help="Show the metadata and signatures of an exported version folder instead.", file_okay=False
        ),
    ] = None,
) -> None:
    """Export --model to REPO/NAME/VERSION as a SavedModel (written atomically), or show --info DIR.

    Options (including the serving signature's tiling) come from the ``export:`` section of --config,
    then --set, then the flags above.
    """
    if info is not None:
        _show_info(info)
        return
    if model is None:
        raise typer.BadParameter("pass --model to export, or --info DIR to describe an export")
    from tfsky.export.config import ExportConfig
    from tfsky.export.savedmodel import export_model

    flags = {
        "name": name,
        "repo": repo,
        "version": version,
        "precision": precision,
        "max_pixels": max_pixels,
        **tiling_flags(tile, overlap, window, tile_batch, tta, memory_budget=memory_budget),
    }
    cfg = command_config(ExportConfig, "export", config, set_, flags)
    target = export_model(
        model,
        cfg.repo,
        cfg.name,
        version=cfg.version,
        overwrite=overwrite,
        tiling=cfg.tiling,
        precision=cfg.precision,
        cloud=cfg.cloud,
        max_pixels=cfg.max_pixels,
    )
    Console(highlight=False, soft_wrap=True).print(f"exported {model} -> {target}")


def _show_info(version_dir: Path) -> None:
    from tfsky.export.metadata import export_info

    metadata, signatures = export_info(version_dir)
    out = Console(highlight=False, soft_wrap=True)
    out.print(f"[bold]{version_dir}[/bold]")
    out.print(json.dumps(metadata, indent=2), markup=False)
    for signature in signatures:
        out.print(f"[bold]signature {signature.name}[/bold]")
        for kind, tensors in (("input", signature.inputs), ("output", signature.outputs)):
            for tensor in tensors:
                shape = "[" + ", ".join("?" if d is None else str(d) for d in tensor.shape) + "]"
                out.print(f"  {kind:6} {tensor.name}: {tensor.dtype} {shape}", markup=False)
