"""``tfsky export``: turn a trained segmenter into a TF Serving model version, or describe one."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console


def export_cli(
    model: Annotated[
        Optional[Path],
        typer.Option("--model", "-m", help="Segmenter .keras file (with its .json sidecar).", dir_okay=False),
    ] = None,
    name: Annotated[str, typer.Option("--name", help="Model name in the repository.")] = "sky_segmenter",
    repo: Annotated[
        Path, typer.Option("--repo", help="Model repository root (mounted as /models by TF Serving).")
    ] = Path("models"),
    version: Annotated[
        Optional[int], typer.Option("--version", help="Version number (default: the next free one).")
    ] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing version folder.")] = False,
    precision: Annotated[
        str, typer.Option("--precision", help="float32 (CPU serving, the shipped image) or as_trained (keep a "
                          "mixed-precision model's float16 layers, for a GPU server).")
    ] = "float32",
    info: Annotated[
        Optional[Path],
        typer.Option("--info", help="Show the metadata and signatures of an exported version folder instead.",
                     file_okay=False),
    ] = None,
) -> None:
    """Export --model to REPO/NAME/VERSION as a SavedModel (written atomically), or show --info DIR."""
    if info is not None:
        _show_info(info)
        return
    if model is None:
        raise typer.BadParameter("pass --model to export, or --info DIR to describe an export")
    from tfsky.export.savedmodel import export_model

    if precision not in ("float32", "as_trained"):
        raise typer.BadParameter(f"--precision must be float32 or as_trained; got {precision!r}")
    target = export_model(model, repo, name, version=version, overwrite=overwrite, precision=precision)
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
