"""``tfsky serve``: a development server with TF Serving's gRPC and REST APIs over a model repository."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

from tfsky.cli.options import ConfigOption, SetOption, command_config


def serve_cli(
    repo: Annotated[
        Optional[Path],
        typer.Option(
            "--repo", help="Model repository root, <repo>/<model>/<version>/ (config: serve.repo).", file_okay=False
        ),
    ] = None,
    host: Annotated[
        Optional[str],
        typer.Option(
            "--host", help="Interface to bind; production uses the TF Serving container (config: serve.host)."
        ),
    ] = None,
    grpc_port: Annotated[
        Optional[int], typer.Option("--grpc-port", help="gRPC port, 0 = any free port (config: serve.grpc_port).")
    ] = None,
    rest_port: Annotated[
        Optional[int], typer.Option("--rest-port", help="REST port, 0 = any free port (config: serve.rest_port).")
    ] = None,
    model_config: Annotated[
        Optional[Path],
        typer.Option(
            "--model-config",
            help="models.config with version labels (config: serve.model_config; default: <repo>/models.config).",
            dir_okay=False,
        ),
    ] = None,
    poll_seconds: Annotated[
        Optional[float],
        typer.Option("--poll-seconds", help="Seconds between repository rescans (config: serve.poll_seconds)."),
    ] = None,
    max_message_mb: Annotated[
        Optional[int],
        typer.Option(
            "--max-message-mb", help="Largest gRPC message or REST body accepted, MiB (config: serve.max_message_mb)."
        ),
    ] = None,
    read_timeout: Annotated[
        Optional[float],
        typer.Option("--read-timeout", help="Seconds a silent REST connection is kept (config: serve.read_timeout)."),
    ] = None,
    config: ConfigOption = None,
    set_: SetOption = None,
) -> None:
    """Serve every model of --repo until Ctrl-C or SIGTERM; new version folders are picked up while running.

    Options come from the ``serve:`` section of --config, then --set, then the flags above.
    """
    from tfsky.serving.config import ServeConfig
    from tfsky.serving.server import DevServer

    flags = {
        "repo": repo,
        "host": host,
        "grpc_port": grpc_port,
        "rest_port": rest_port,
        "model_config": model_config,
        "poll_seconds": poll_seconds,
        "max_message_mb": max_message_mb,
        "read_timeout": read_timeout,
    }
    cfg = command_config(ServeConfig, "serve", config, set_, flags)
    server = DevServer(
        cfg.repo,
        host=cfg.host,
        grpc_port=cfg.grpc_port,
        rest_port=cfg.rest_port,
        poll_seconds=cfg.poll_seconds,
        max_message_mb=cfg.max_message_mb,
        model_config=cfg.model_config,
        read_timeout=cfg.read_timeout,
        workers=cfg.workers,
    ).start()
    previous = signal.signal(signal.SIGTERM, lambda *_: server.stop())
    out = Console(highlight=False, soft_wrap=True)
    out.print(
        f"serving {cfg.repo} on gRPC {cfg.host}:{server.grpc_port} and REST http://{cfg.host}:{server.rest_port}",
        markup=False,
    )
    try:
        server.wait()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
        signal.signal(signal.SIGTERM, previous)
    out.print("stopped")
