"""``tfsky translate``: frames in another weather, at full resolution, optionally sky-only composites."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

from tfsky.cli.options import QuietOption


def translate_cli(
    inputs: Annotated[list[Path], typer.Argument(help="Image files, folders (recursive) or .txt manifests.")],
    model: Annotated[Path, typer.Option("--model", "-m", help="Translator .keras file (pix2pix or vae).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder.")],
    composite: Annotated[bool, typer.Option(help="Also write <name>_composite.png: only the sky translated.")] = False,
    segmenter: Annotated[Optional[Path], typer.Option(help="Sky segmenter for --composite.")] = None,
    mask: Annotated[Optional[Path], typer.Option(help="Camera sky mask for --composite (wins over --segmenter).")] = None,
    feather: Annotated[float, typer.Option(help="Sky edge feathering (Gaussian sigma, pixels).")] = 5.0,
    tile: Annotated[Optional[int], typer.Option(help="Tile size (default: the model's training tile).")] = None,
    overlap: Annotated[float, typer.Option(help="Tile overlap fraction in [0, 1).")] = 0.25,
    window: Annotated[str, typer.Option(help="Blend window: constant | gaussian | hann | spline.")] = "gaussian",
    tile_batch: Annotated[int, typer.Option(help="Tiles per model call.")] = 8,
    sample: Annotated[bool, typer.Option(help="VAE: sample the latent instead of using its mean.")] = False,
    native_scale: Annotated[bool, typer.Option(
        help="Run the network on full-resolution pixels even if it was trained on downscaled frames.")] = False,
    overwrite: Annotated[bool, typer.Option(help="Redo images whose outputs exist.")] = False,
    quiet: QuietOption = False,
) -> None:
    """Translate the weather of whole frames through overlapping tiles. Exit 1 if any image failed."""
    from tfsky.config import from_dict
    from tfsky.predict.translate import CompositeOptions, translate_images
    from tfsky.tiling import TilingConfig

    tiling = from_dict(TilingConfig, {"tile": tile, "overlap": overlap, "window": window, "tile_batch": tile_batch},
                       "tiling")
    options = CompositeOptions(segmenter, mask, feather) if composite else None
    console = Console(stderr=True, highlight=False, soft_wrap=True)

    def progress(source: Path, status: str) -> None:
        if not quiet and status != "failed":  # failures are listed with their reason below
            console.print(f"{status} {source}", markup=False)

    report = translate_images(model, inputs, out, tiling=tiling, composite_with=options, sample=sample,
                              native_scale=native_scale, overwrite=overwrite, progress=progress)
    for source, reason in report.failed:
        console.print(f"failed {source}: {reason}", markup=False)
    if not quiet:
        console.print(f"done {len(report.done)}, skipped {len(report.skipped)}, failed {len(report.failed)} -> {out}",
                      markup=False)
    if report.failed:
        raise typer.Exit(1)
