"""Options shared by several commands, declared once."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Optional

import typer

if TYPE_CHECKING:
    from tfsky.tiling import TilingConfig

ConfigOption = Annotated[
    Optional[Path], typer.Option("--config", "-c", help="YAML config file (see configs/).", dir_okay=False)
]
SetOption = Annotated[
    Optional[list[str]],
    typer.Option("--set", "-s", help="Override a config key, e.g. --set train.epochs=3 (repeatable)."),
]
QuietOption = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars or tables.")]

# Tiling flags of the commands that run a model over tiles; each overrides ``<section>.tiling.<key>``.
TileOption = Annotated[Optional[int], typer.Option(help="Tile size (default: the model's training tile).")]
OverlapOption = Annotated[Optional[float], typer.Option(help="Tile overlap fraction in [0, 1) (default: 0.25).")]
WindowOption = Annotated[Optional[str], typer.Option(help="constant | gaussian | hann | spline (default: gaussian).")]
TileBatchOption = Annotated[Optional[int], typer.Option(help="Tiles per model call (default: 8).")]
TtaOption = Annotated[Optional[str], typer.Option(help="Flip TTA: none | flip2 | flip4 (default: none).")]


def flag_overrides(section: str, flags: dict[str, Any], set_: Optional[list[str]]) -> list[str]:
    """``--set`` overrides, then every flag given (None = not given) as ``section.key=value``.

    Flags come last, so they win over --set and the config file. Values are
    written as JSON (valid YAML): they keep their types and a path stays a
    string whatever its text (``yes``, ``null``).
    """
    given = [f"{section}.{key}={json.dumps(value, default=str)}" for key, value in flags.items() if value is not None]
    return list(set_ or []) + given


def tiling_from_flags(**flags: Any) -> "TilingConfig":
    """The `TilingConfig` of the tiling flags given (None = not given: the default), checked like a config."""
    from tfsky.config import from_dict
    from tfsky.tiling import TilingConfig

    return from_dict(TilingConfig, {key: value for key, value in flags.items() if value is not None}, "tiling")
