"""``tfsky client ...``: segment, classify or colorize images and check model readiness through TF Serving (or
``tfsky serve``)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Callable, Optional

import typer
from rich.console import Console

from tfsky.cli.batch_options import JobProgress, OutOption, finish
from tfsky.cli.options import ConfigOption, QuietOption, SetOption, command_config

if TYPE_CHECKING:
    from tfsky.batch import Report

app = typer.Typer(help="Query a TF Serving server (gRPC 8500, or REST 8501 with --rest).", no_args_is_help=True)

# Each flag overrides ``client.<key>`` (None = not given; the defaults live in `tfsky.serving.config.ClientConfig`).
ServerOption = Annotated[
    Optional[str],
    typer.Option("--server", help="host:port of the gRPC (or, with --rest, REST) API (config: client.server)."),
]
ModelOption = Annotated[Optional[str], typer.Option("--model", help="Model name (config: client.model).")]
VersionOption = Annotated[
    Optional[int], typer.Option("--version", help="Model version (config: client.version; default: the newest).")
]
LabelOption = Annotated[
    Optional[str], typer.Option("--label", help="Version label, e.g. stable or canary (config: client.label).")
]
RestOption = Annotated[
    Optional[bool],
    typer.Option("--rest/--grpc", help="Use the REST API instead of gRPC (config: client.rest).", show_default=False),
]
TimeoutOption = Annotated[
    Optional[float],
    typer.Option("--timeout", help="Deadline per request attempt, in seconds (config: client.timeout)."),
]
RetriesOption = Annotated[
    Optional[int],
    typer.Option("--retries", help="Retries (with backoff) while the server is unavailable (config: client.retries)."),
]


def connect(config, set_, **flags):
    """The ``client:`` settings (--config, then --set, then the flags given) and a `Client` opened with them."""
    from tfsky.serving.client import Client
    from tfsky.serving.config import ClientConfig

    cfg = command_config(ClientConfig, "client", config, set_, flags)
    return cfg, Client(cfg.server, rest=cfg.rest, timeout=cfg.timeout, retries=cfg.retries)


@app.command()
def predict(
    inputs: Annotated[list[Path], typer.Argument(help="Image files, folders (recursive) or .txt manifests.")],
    out: OutOption,
    server: ServerOption = None,
    model: ModelOption = None,
    version: VersionOption = None,
    label: LabelOption = None,
    rest: RestOption = None,
    tiles: Annotated[
        Optional[Path],
        typer.Option(
            "--tiles",
            help="Tile on the client with serving_default, using the preprocessing and tiling "
            "of this exported version folder (e.g. models/sky_segmenter/1).",
            file_okay=False,
        ),
    ] = None,
    overwrite: Annotated[bool, typer.Option(help="Redo images whose outputs are already complete.")] = False,
    timeout: TimeoutOption = None,
    retries: RetriesOption = None,
    config: ConfigOption = None,
    set_: SetOption = None,
    quiet: QuietOption = False,
) -> None:
    """Write a sky mask and a JSON sidecar per image; a re-run skips complete images. Exit 1 if any image failed.

    Per image <stem>_mask.png, <stem>_prob.png and <stem>.json. What the served model is comes from its
    signatures (asked once per job), and each kind writes the files of its local command: a cloud model adds
    <stem>_classes.png, the cloud cover in the sidecar and cloud_cover.csv/.png for the job (tfsky predict);
    a weather classifier writes a JSON sidecar with the class probabilities per image and classification.csv
    (tfsky predict); a colorizer writes <stem>_colour.png (tfsky colorize). --tiles is for a sky segmenter only.
    Server and model come from the ``client:`` section of --config, then --set, then the flags above.
    """
    from tfsky.models.bundle import ModelKind
    from tfsky.serving.classify_jobs import classify_files
    from tfsky.serving.colorize_jobs import colorize_files
    from tfsky.serving.segment_jobs import segment_files

    jobs: dict[ModelKind, Callable[..., Report]] = {  # what each served kind writes (its local command's files)
        ModelKind.SEGMENTER: lambda **job: segment_files(**job, tiles_from=tiles, cloud=False),
        ModelKind.CLOUD: lambda **job: segment_files(**job, tiles_from=tiles, cloud=True),
        ModelKind.CLASSIFIER: classify_files,
        ModelKind.COLORIZER: colorize_files,
    }
    cfg, client = connect(
        config,
        set_,
        server=server,
        model=model,
        version=version,
        label=label,
        rest=rest,
        timeout=timeout,
        retries=retries,
    )
    with client:
        # --tiles: the export folder says what the model is (a sky segmenter, or a one-line error)
        kind = (
            ModelKind.SEGMENTER
            if tiles is not None
            else client.served_kind(cfg.model, version=cfg.version, label=cfg.label)
        )
        with JobProgress(quiet) as listener:
            report = jobs[kind](
                client=client,
                model=cfg.model,
                inputs=inputs,
                out=out,
                listener=listener,
                version=cfg.version,
                label=cfg.label,
                overwrite=overwrite,
            )
    finish(report, out, quiet)


@app.command()
def status(
    server: ServerOption = None,
    model: ModelOption = None,
    version: VersionOption = None,
    label: LabelOption = None,
    rest: RestOption = None,
    timeout: TimeoutOption = None,
    retries: RetriesOption = None,
    config: ConfigOption = None,
    set_: SetOption = None,
) -> None:
    """Print the state of each version of a model. Exit 1 unless one is AVAILABLE.

    Server and model come from the ``client:`` section of --config, then --set, then the flags above.
    """
    cfg, client = connect(
        config,
        set_,
        server=server,
        model=model,
        version=version,
        label=label,
        rest=rest,
        timeout=timeout,
        retries=retries,
    )
    with client:
        versions = client.status(cfg.model, version=cfg.version, label=cfg.label)
    out = Console(highlight=False, soft_wrap=True)
    for entry in versions:
        out.print(
            f"{cfg.model} version {entry.version}: {entry.state}" + (f" ({entry.error})" if entry.error else ""),
            markup=False,
        )
    if not any(entry.state == "AVAILABLE" for entry in versions):
        raise typer.Exit(1)
