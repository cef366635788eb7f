"""``tfsky client ...``: segment images and check model readiness through TF Serving (or ``tfsky serve``)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

from tfsky.cli.options import QuietOption

app = typer.Typer(help="Query a TF Serving server (gRPC 8500, or REST 8501 with --rest).", no_args_is_help=True)

ServerOption = Annotated[str, typer.Option("--server", help="host:port of the gRPC (or, with --rest, REST) API.")]
ModelOption = Annotated[str, typer.Option("--model", help="Model name.")]
VersionOption = Annotated[Optional[int], typer.Option("--version", help="Model version (default: newest).")]
LabelOption = Annotated[Optional[str], typer.Option("--label", help="Version label, e.g. stable or canary.")]
RestOption = Annotated[bool, typer.Option("--rest", help="Use the REST API instead of gRPC.")]
TimeoutOption = Annotated[float, typer.Option("--timeout", help="Deadline per request attempt, in seconds.")]
RetriesOption = Annotated[int, typer.Option("--retries", help="Retries (with backoff) while the server is unavailable.")]


@app.command()
def predict(
    inputs: Annotated[list[Path], typer.Argument(help="Image files, folders (recursive) or .txt manifests.")],
    out: Annotated[
        Path, typer.Option("--out", "-o", help="Output folder for <stem>_mask.png, <stem>_prob.png and <stem>.json.")
    ],
    server: ServerOption = "localhost:8500",
    model: ModelOption = "sky_segmenter",
    version: VersionOption = None,
    label: LabelOption = None,
    rest: RestOption = False,
    tiles: Annotated[
        Optional[Path],
        typer.Option("--tiles", help="Tile on the client with serving_default, using the preprocessing and tiling "
                     "of this exported version folder (e.g. models/sky_segmenter/1).", file_okay=False),
    ] = None,
    overwrite: Annotated[bool, typer.Option(help="Redo images whose outputs are already complete.")] = False,
    timeout: TimeoutOption = 60.0,
    retries: RetriesOption = 3,
    quiet: QuietOption = False,
) -> None:
    """Write a sky mask and a JSON sidecar per image; a re-run skips complete images. Exit 1 if any image failed."""
    from tfsky.cli.jobs import JobProgress, finish
    from tfsky.serving.client import Client
    from tfsky.serving.jobs import segment_files

    with Client(server, rest=rest, timeout=timeout, retries=retries) as client, JobProgress(quiet) as listener:
        report = segment_files(client, model, inputs, out, version=version, label=label, tiles_from=tiles,
                               overwrite=overwrite, listener=listener)
    finish(report, out, quiet)


@app.command()
def status(
    server: ServerOption = "localhost:8500",
    model: ModelOption = "sky_segmenter",
    version: VersionOption = None,
    label: LabelOption = None,
    rest: RestOption = False,
    timeout: TimeoutOption = 10.0,
    retries: RetriesOption = 3,
) -> None:
    """Print the state of each version of a model. Exit 1 unless one is AVAILABLE."""
    from tfsky.serving.client import Client

    with Client(server, rest=rest, timeout=timeout, retries=retries) as client:
        versions = client.status(model, version=version, label=label)
    out = Console(highlight=False, soft_wrap=True)
    for entry in versions:
        out.print(f"{model} version {entry.version}: {entry.state}" + (f" ({entry.error})" if entry.error else ""),
                  markup=False)
    if not any(entry.state == "AVAILABLE" for entry in versions):
        raise typer.Exit(1)
