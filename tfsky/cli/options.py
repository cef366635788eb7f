"""Options shared by several commands, declared once."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Optional, TypeVar

import typer

from tfsky.cli.messages import silence

T = TypeVar("T")

ConfigOption = Annotated[
    Optional[Path], typer.Option("--config", "-c", help="YAML config file (see configs/).", dir_okay=False)
]
SetOption = Annotated[
    Optional[list[str]],
    typer.Option("--set", "-s", help="Override a config key, e.g. --set train.epochs=3 (repeatable)."),
]
QuietOption = Annotated[
    bool,
    typer.Option("--quiet", "-q", callback=silence, help="No progress bars, tables or messages (warnings still show)."),
]
PortOption = Annotated[int, typer.Option(min=0, max=65535, help="Port; 0 picks a free one.")]


# Tiling flags of the commands that run a model over tiles; each overrides ``<section>.tiling.<key>``.
# Flags default to None ("not given"): the defaults live in the config dataclasses (`tfsky.tiling.TilingConfig`).
def _tile_value(value: str) -> int | str:
    """``auto`` or a whole number of pixels; anything else is the one-line error of the ``tiling.tile`` key."""
    if value == "auto":
        return value
    try:
        return int(value)
    except ValueError:
        from tfsky.errors import ConfigError

        raise ConfigError("tiling.tile", f"must be auto or a whole number of pixels; got {value!r}") from None


TileOption = Annotated[
    Optional[str],
    typer.Option(
        parser=_tile_value,
        metavar="auto|PIXELS",
        help="Tile size: auto (the one that computes the fewest pixels within --memory-budget, shown on stderr) or a multiple "
        "of the model's (32 for segmenters) (config: tiling.tile; default: auto).",
    ),
]
MemoryBudgetOption = Annotated[
    Optional[float],
    typer.Option(
        help="GB the process may use when --tile is auto (config: tiling.memory_budget; default: 1.5 on a CPU, the "
        "GPU's free memory on a GPU)."
    ),
]
OverlapOption = Annotated[
    Optional[float],
    typer.Option(
        help="Tile overlap fraction in [0, 1) (config: tiling.overlap; default: 16 px, at most a quarter tile)."
    ),
]
WindowOption = Annotated[
    Optional[str],
    typer.Option(help="Blend window: ramp | constant | gaussian | hann | spline (config: tiling.window)."),
]
TileBatchOption = Annotated[Optional[int], typer.Option(help="Tiles per model call (config: tiling.tile_batch).")]
TtaOption = Annotated[
    Optional[str],
    typer.Option(
        help="Test-time augmentation: none | flip2 | flip4 | rot4 | rot8 (rotations, for fisheye frames; config: tiling.tta)."
    ),
]
ResolutionOption = Annotated[
    Optional[str],
    typer.Option(
        help="working: at the model's working scale, refined to full size | full: tiles of the full image "
        "(config: tiling.resolution)."
    ),
]


def flag_overrides(section: str, flags: dict[str, Any], set_: Optional[list[str]]) -> list[str]:
    """``--set`` overrides, then every flag given (None = not given) as ``section.key=value``.

    Flags come last, so they win over --set and the config file. Values are
    written as JSON (valid YAML): they keep their types and a path stays a
    string whatever its text (``yes``, ``null``).
    """
    given = [f"{section}.{key}={json.dumps(value, default=str)}" for key, value in flags.items() if value is not None]
    return list(set_ or []) + given


def tiling_flags(
    tile: Optional[int | str],
    overlap: Optional[float],
    window: Optional[str],
    tile_batch: Optional[int],
    tta: Optional[str],
    resolution: Optional[str] = None,
    memory_budget: Optional[float] = None,
) -> dict[str, Any]:
    """The tiling flags of a command as ``tiling.<key>`` flags for `flag_overrides` (None = not given)."""
    return {
        "tiling.tile": tile,
        "tiling.overlap": overlap,
        "tiling.window": window,
        "tiling.tile_batch": tile_batch,
        "tiling.tta": tta,
        "tiling.resolution": resolution,
        "tiling.memory_budget": memory_budget,
    }


def training_section(schema: type, section: str, config: Optional[Path], overrides: Optional[list[str]]) -> Any:
    """The ``section`` of a training config file (``data``, ``streams``, ``pairs``) for a command that uses it.

    With a --config file the whole file is checked against ``schema`` exactly as ``tfsky train`` checks
    it, so a file one command accepts no other refuses; without one, the section is built from --set.
    """
    import typing

    from tfsky.config import load_config

    if config is not None:
        return getattr(training_config(schema, config, overrides), section)
    return load_config(typing.get_type_hints(schema)[section], None, overrides, section=section)


def training_config(schema: type[T], config: Optional[Path], overrides: Optional[list[str]]) -> T:
    """A whole training config file (``tfsky train ...``); the command sections it may also hold are checked too."""
    from tfsky.config import load_config

    return load_config(schema, config, overrides, other_sections=command_schemas())


def command_config(
    schema: type[T], section: str, config: Optional[Path], set_: Optional[list[str]], flags: dict[str, Any]
) -> T:
    """A command's settings: the ``section`` of --config, then --set, then the flags given (None = not given).

    One loader for every command, so a key has one default (in ``schema``) and one error message. The
    file may also hold other commands' sections (checked too) and a training config; any other
    top-level key is an error.
    """
    from tfsky.config import load_config

    schemas = command_schemas()
    assert schemas[section] is schema, f"register {section!r} in command_schemas()"  # so other commands accept it
    return load_config(
        schema,
        config,
        flag_overrides(section, flags, set_),
        section=section,
        file_keys=config_file_keys(),
        other_sections=schemas,
    )


def command_schemas() -> dict[str, type]:
    """The section each command that reads one (`command_config`) owns, and its schema."""
    from tfsky.evaluate.config import EvaluateConfig
    from tfsky.export.config import ExportConfig
    from tfsky.predict.batch import PredictConfig
    from tfsky.predict.colorize import ColorizeOptions
    from tfsky.predict.translate import TranslateConfig
    from tfsky.serving.config import ClientConfig, ServeConfig

    return {
        "predict": PredictConfig,
        "translate": TranslateConfig,
        "evaluate": EvaluateConfig,
        "export": ExportConfig,
        "serve": ServeConfig,
        "client": ClientConfig,
        "colorize": ColorizeOptions,
    }


def config_file_keys() -> set[str]:
    """Every top-level key a tfsky config file may hold: the command sections and the training files' keys."""
    import dataclasses

    from tfsky.train.config import ClassifierConfig, SegmenterConfig, TranslatorConfig

    training = {
        field.name
        for schema in (SegmenterConfig, TranslatorConfig, ClassifierConfig)
        for field in dataclasses.fields(schema)
    }
    return training | set(command_schemas())
