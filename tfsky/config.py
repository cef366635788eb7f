"""One config system for every command: YAML files checked against dataclasses.

Each command declares its configuration as a (nested) dataclass next to the
code that uses it. `load_config` reads a YAML file, applies ``--set key=value``
overrides, and builds the dataclass, rejecting unknown keys and wrong types
with a `ConfigError` that names the dotted key. Defaults live in the
dataclass, once. Dataclasses may define ``validate(self)`` that raises
`ConfigError` with a key relative to themselves; the loader prefixes it.

Example:

    @dataclasses.dataclass
    class Train:
        epochs: int = 10

    @dataclasses.dataclass
    class Run:
        name: str = "demo"
        train: Train = dataclasses.field(default_factory=Train)

    cfg = load_config(Run, "configs/run.yaml", ["train.epochs=3"])
"""

from __future__ import annotations

import dataclasses
import enum
import math
import reprlib
import types
import typing
from pathlib import Path
from typing import Any, Iterable, Mapping, TypeVar

import yaml

from tfsky.errors import ConfigError, InputError
from tfsky.io.atomic import write_text
from tfsky.io.images import link_problem

T = TypeVar("T")


def load_config(
    schema: type[T],
    path: str | Path | None = None,
    overrides: list[str] | tuple[str, ...] | None = (),
    section: str | None = None,
    file_keys: Iterable[str] | None = None,
    other_sections: Mapping[str, type] | None = None,
) -> T:
    """Build ``schema`` from an optional YAML file plus ``key=value`` overrides.

    With ``section`` (e.g. ``"data"``) only that top-level section of the file
    is read, so a command can use its part of a shared config file; overrides
    are still written with full keys (``data.patch_size=256``). ``file_keys``
    are the top-level keys such a file may hold at all: any other one (a
    misspelt section) is an error rather than silently ignored.
    ``other_sections`` (name -> schema) are sections of other commands the file
    may hold: each present one is checked against its schema, then left out.
    """
    raw: dict[str, Any] = {}
    if path is not None:
        raw = read_yaml(path)
    for item in overrides or ():
        key, value = parse_override(item)
        set_dotted(raw, key, value)
    for name, other in (other_sections or {}).items():
        if name != section and name in raw:
            from_dict(other, raw.pop(name) or {}, name)
    if section is None:
        return from_dict(schema, raw)
    if file_keys is not None:
        known = sorted(set(file_keys) | {section})
        unknown = sorted(set(raw) - set(known))
        if unknown:
            raise ConfigError(str(unknown[0]), f"unknown key (known keys here: {', '.join(known)})")
    return from_dict(schema, raw.get(section) or {}, section)


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping with ``safe_load``; every failure is a one-line `InputError` naming the file."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, link_problem(path) or "config file not found")
    try:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=PlainDataLoader)
    except AliasRefused as err:
        raise InputError(
            path, f"YAML anchors and aliases (&, *) are not allowed (line {err.line}): config files hold plain data"
        ) from None
    except yaml.constructor.ConstructorError as err:  # safe_load refuses !!python/... tags: say so
        tag = (err.problem or "").rpartition("tag:yaml.org,2002:")[2].rstrip("'")
        where = f" (line {err.problem_mark.line + 1})" if err.problem_mark else ""
        raise InputError(path, f"YAML tag '!!{tag}' is not allowed{where}: config files hold plain data") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark else ""
        raise InputError(path, f"not valid YAML{where}") from None
    except (OSError, UnicodeDecodeError) as err:
        raise InputError(path, f"cannot read the config file ({err.__class__.__name__})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise InputError(path, "the file must hold a mapping of keys to values")
    return data


class AliasRefused(yaml.YAMLError):
    """An anchor or alias in a config: refused, since nested aliases expand exponentially (a "billion laughs")."""

    def __init__(self, line: int):
        super().__init__(f"YAML anchor or alias at line {line}")
        self.line = line


class PlainDataLoader(yaml.SafeLoader):
    """`yaml.SafeLoader` without anchors and aliases: config files are small trees of plain values."""

    def compose_node(self, parent, index):
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None) is not None:
            raise AliasRefused(event.start_mark.line + 1)
        return super().compose_node(parent, index)


def parse_override(item: str) -> tuple[str, Any]:
    """Split ``a.b=value``; the value is parsed as YAML so ``3``, ``true`` and ``[1, 2]`` keep their types."""
    key, sep, text = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(item, "an override must look like key=value")
    try:
        value = yaml.load(text, Loader=PlainDataLoader) if text.strip() else ""
    except yaml.YAMLError:
        value = text
    return key.strip(), value


def set_dotted(raw: dict[str, Any], key: str, value: Any) -> None:
    """Set ``raw['a']['b'] = value`` for key ``a.b``, creating mappings on the way."""
    parts = key.split(".")
    node = raw
    for depth, part in enumerate(parts[:-1]):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(".".join(parts[: depth + 1]), "is a value, not a section")
        node = child
    node[parts[-1]] = value


def from_dict(schema: type[T], raw: dict[str, Any], prefix: str = "", recorded: bool = False) -> T:
    """Build dataclass ``schema`` from ``raw``, checking keys and types recursively.

    ``recorded=True`` reads a config an earlier run wrote (a model's sidecar): keys this tfsky no longer
    has are ignored and the ``validate`` methods are skipped (the values were checked when the run
    started, and files they name need not exist where the model is used); types are still checked.
    """
    if not isinstance(raw, dict):
        raise ConfigError(prefix or "<root>", f"expected a section (mapping), got {type(raw).__name__}")
    hints = typing.get_type_hints(schema)
    fields = {f.name: f for f in dataclasses.fields(schema) if f.init}  # type: ignore[arg-type]  # a dataclass
    if recorded:
        raw = {key: value for key, value in raw.items() if key in fields}
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        known = ", ".join(sorted(fields))
        raise ConfigError(_join(prefix, str(unknown[0])), f"unknown key (known keys here: {known})")
    required = [name for name, f in fields.items() if _is_required(f)]
    missing = [name for name in required if name not in raw]
    if missing:
        raise ConfigError(_join(prefix, missing[0]), f"is required (required keys here: {', '.join(required)})")
    values = {name: _coerce(hints[name], raw[name], _join(prefix, name), recorded) for name in raw}
    obj = schema(**values)
    check = None if recorded else getattr(obj, "validate", None)
    if check is not None:
        try:
            check()
        except ConfigError as err:
            raise ConfigError(_join(prefix, err.key), err.problem) from None
    return obj


def _is_required(field: dataclasses.Field) -> bool:
    return field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING


def to_dict(cfg: Any) -> dict[str, Any]:
    """The plain-data form of a config (enums as values, tuples as lists), ready for YAML or JSON."""
    return _plain(dataclasses.asdict(cfg))


def dump_config(cfg: Any, path: str | Path) -> None:
    """Write the resolved config as YAML, atomically, so a run can be reproduced from it."""
    write_text(path, yaml.safe_dump(to_dict(cfg), sort_keys=False))


def _plain(value: Any) -> Any:
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


QUOTED_LENGTH = 80
_SHORT = reprlib.Repr()  # never builds the whole repr of a huge value
_SHORT.maxstring = _SHORT.maxother = 40
_SHORT.maxlist = _SHORT.maxtuple = _SHORT.maxdict = 4
_SHORT.maxlevel = 2


def quoted(value: Any) -> str:
    """``repr(value)`` cut to `QUOTED_LENGTH` characters: an error line quotes a value, never a whole tree of it."""
    text = _SHORT.repr(value)
    return text if len(text) <= QUOTED_LENGTH else text[: QUOTED_LENGTH - 3] + "..."


def _join(prefix: str, key: str) -> str:
    return f"{prefix}.{key}" if prefix else key


def _coerce(hint: Any, value: Any, key: str, recorded: bool = False) -> Any:
    """Check ``value`` against type ``hint`` and convert where lossless (int -> float, str -> Path/Enum)."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        problems = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(arg, value, key, recorded)
            except ConfigError as err:
                problems.append(err.problem)
        raise ConfigError(key, " or ".join(problems))
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(key, f"must be one of {', '.join(map(str, args))}; got {quoted(value)}")
        return value
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(key, f"expected a list, got {quoted(value)}")
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(args) != len(value):
                raise ConfigError(key, f"expected {len(args)} values, got {len(value)}")
            return tuple(_coerce(a, v, f"{key}[{i}]", recorded) for i, (a, v) in enumerate(zip(args, value)))
        item = args[0] if args else Any
        items = [_coerce(item, v, f"{key}[{i}]", recorded) for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(key, f"expected a mapping, got {quoted(value)}")
        vtype = args[1] if args else Any
        return {str(k): _coerce(vtype, v, f"{key}.{k}", recorded) for k, v in value.items()}
    if hint is Any:
        return value
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        return from_dict(hint, value if value is not None else {}, key, recorded)
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        try:
            return hint(value)
        except ValueError:
            raise ConfigError(
                key, f"must be one of {', '.join(str(m.value) for m in hint)}; got {quoted(value)}"
            ) from None
    if hint is Path:
        if not isinstance(value, (str, Path)):
            raise ConfigError(key, f"expected a path, got {quoted(value)}")
        return Path(value)
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(key, f"expected a number, got {quoted(value)}")
        try:
            number = float(value)
        except OverflowError:  # an integer beyond the float range
            number = math.inf
        if not math.isfinite(number):  # .nan / .inf: a NaN learning rate or threshold trains or checks nothing
            raise ConfigError(key, f"must be a finite number; got {quoted(value)}")
        return number
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(key, f"expected an integer, got {quoted(value)}")
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(key, f"expected true or false, got {quoted(value)}")
        return value
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(key, f"expected a string, got {quoted(value)}")
        return value
    raise TypeError(f"config type {hint!r} at {key} is not supported")  # a schema bug, not a user error
