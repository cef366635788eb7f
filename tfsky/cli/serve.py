"""``tfsky serve``: a development server with TF Serving's gRPC and REST APIs over a model repository."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console


def serve_cli(
    repo: Annotated[
        Path, typer.Option("--repo", help="Model repository root (<repo>/<model>/<version>/).", file_okay=False)
    ] = Path("models"),
    host: Annotated[
        str, typer.Option("--host", help="Interface to bind (production uses the TF Serving container).")
    ] = "127.0.0.1",
    grpc_port: Annotated[int, typer.Option("--grpc-port", help="gRPC port (0 = any free port).")] = 8500,
    rest_port: Annotated[int, typer.Option("--rest-port", help="REST port (0 = any free port).")] = 8501,
    model_config: Annotated[
        Optional[Path],
        typer.Option("--model-config", help="models.config with version labels (default: <repo>/models.config).",
                     dir_okay=False),
    ] = None,
    poll_seconds: Annotated[float, typer.Option("--poll-seconds", help="Seconds between repository rescans.")] = 2.0,
    max_message_mb: Annotated[int, typer.Option("--max-message-mb", help="Largest gRPC message accepted.")] = 256,
) -> None:
    """Serve every model of --repo until Ctrl-C or SIGTERM; new version folders are picked up while running."""
    from tfsky.serving.server import DevServer

    server = DevServer(repo, host=host, grpc_port=grpc_port, rest_port=rest_port, poll_seconds=poll_seconds,
                       max_message_mb=max_message_mb, model_config=model_config).start()
    previous = signal.signal(signal.SIGTERM, lambda *_: server.stop())
    out = Console(highlight=False, soft_wrap=True)
    out.print(f"serving {repo} on gRPC {host}:{server.grpc_port} and REST http://{host}:{server.rest_port}",
              markup=False)
    try:
        server.wait()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
        signal.signal(signal.SIGTERM, previous)
    out.print("stopped")
