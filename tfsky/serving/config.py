"""The ``serve:`` and ``client:`` sections of a config file: the dev server's and the client's settings.

The library classes (`tfsky.serving.DevServer`, `tfsky.serving.Client`) take
their defaults from here, so each default is written once.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Optional

from tfsky.errors import ConfigError


@dataclasses.dataclass
class ServeConfig:
    """``tfsky serve``: the development server (CLI flags override it).

    Args:
        repo: Path. Model repository root (``<repo>/<model>/<version>/``). Defaults to ``models``.
        host: str. Interface to bind; loopback unless you mean it. Defaults to ``127.0.0.1``.
        grpc_port: int. gRPC port (0 = any free port). Defaults to 8500.
        rest_port: int. REST port (0 = any free port). Defaults to 8501.
        model_config: Optional[Path]. ``models.config`` with version labels. Defaults to None
            (``<repo>/models.config`` when it exists).
        poll_seconds: float. Seconds between repository rescans. Defaults to 2.
        max_message_mb: int. Largest gRPC message (and REST body) accepted, in MiB. Defaults to 256.
        read_timeout: float. Seconds a REST connection may stay silent before it is closed. Defaults to 30.
        workers: int. gRPC request threads (REST runs one thread per connection). Defaults to 8.
    """

    repo: Path = Path("models")
    host: str = "127.0.0.1"
    grpc_port: int = 8500
    rest_port: int = 8501
    model_config: Optional[Path] = None
    poll_seconds: float = 2.0
    max_message_mb: int = 256
    read_timeout: float = 30.0
    workers: int = 8

    def validate(self) -> None:
        if self.workers < 1:
            raise ConfigError("workers", f"must be >= 1; got {self.workers}")
        for key in ("grpc_port", "rest_port"):
            if not 0 <= getattr(self, key) <= 65535:
                raise ConfigError(key, f"must be a port number in [0, 65535]; got {getattr(self, key)}")
        for key in ("poll_seconds", "read_timeout"):
            if getattr(self, key) <= 0:
                raise ConfigError(key, f"must be > 0 seconds; got {getattr(self, key)}")
        if self.max_message_mb < 1:
            raise ConfigError("max_message_mb", f"must be >= 1; got {self.max_message_mb}")


@dataclasses.dataclass
class ClientConfig:
    """``tfsky client ...``: which server and model, and how patiently to ask (CLI flags override it).

    Args:
        server: str. ``host:port`` of the gRPC (or, with ``rest``, REST) API. Defaults to ``localhost:8500``.
        model: str. Model name. Defaults to ``sky_segmenter``.
        version: Optional[int]. Model version. Defaults to None (the newest).
        label: Optional[str]. Version label (``stable``, ``canary``) instead of a version. Defaults to None.
        rest: bool. Use the REST API instead of gRPC. Defaults to False.
        timeout: float. Deadline of each request attempt in seconds (a full 8K image takes ~60 s on a
            CPU server). Defaults to 60.
        retries: int. Extra attempts while the server is unavailable, with exponential backoff. Defaults to 3.
    """

    server: str = "localhost:8500"
    model: str = "sky_segmenter"
    version: Optional[int] = None
    label: Optional[str] = None
    rest: bool = False
    timeout: float = 60.0
    retries: int = 3

    def validate(self) -> None:
        if self.version is not None and self.label is not None:
            raise ConfigError("label", "give a version or a version label, not both")
        if self.version is not None and self.version < 1:
            raise ConfigError("version", f"must be >= 1; got {self.version}")
        if self.timeout <= 0:
            raise ConfigError("timeout", f"must be > 0 seconds; got {self.timeout}")
        if self.retries < 0:
            raise ConfigError("retries", f"must be >= 0; got {self.retries}")
        host, _, port = self.server.rpartition(":")
        if not host or not port.isdigit() or not 1 <= int(port) <= 65535:
            raise ConfigError("server", f"must be host:port with a port number in [1, 65535]; got {self.server[:80]!r}")
