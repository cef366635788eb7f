"""The config system: defaults, overrides, sections and one-line errors naming the key."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Literal, Optional

import pytest

from tfsky.config import dump_config, load_config, read_yaml
from tfsky.errors import ConfigError


@dataclasses.dataclass
class Inner:
    size: int = 64
    mode: Literal["a", "b"] = "a"
    scale: float = 1.0
    path: Optional[Path] = None
    names: list[str] = dataclasses.field(default_factory=lambda: ["sky"])

    def validate(self) -> None:
        if self.size % 32:
            raise ConfigError("size", "must be divisible by 32")


@dataclasses.dataclass
class Outer:
    name: str = "run"
    inner: Inner = dataclasses.field(default_factory=Inner)


def test_defaults_file_and_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("name: x\ninner:\n  size: 128\n  scale: 2\n")
    cfg = load_config(Outer, path, ["inner.mode=b", "inner.names=[sky, clouds]", "inner.path=/tmp/a"])
    assert cfg == Outer("x", Inner(128, "b", 2.0, Path("/tmp/a"), ["sky", "clouds"]))
    assert isinstance(cfg.inner.scale, float)


def test_section_reads_only_its_part(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("inner:\n  size: 96\nother:\n  anything: 1\n")
    assert load_config(Inner, path, ["inner.scale=3"], section="inner") == Inner(size=96, scale=3.0)


@pytest.mark.parametrize(
    "override, message",
    [
        ("inner.sise=3", "config key 'inner.sise': unknown key"),
        ("inner.size=abc", "config key 'inner.size': expected an integer, got 'abc'"),
        ("inner.size=100", "config key 'inner.size': must be divisible by 32"),
        ("inner.mode=c", "config key 'inner.mode': must be one of a, b"),
        ("inner.scale=true", "config key 'inner.scale': expected a number"),
        ("inner=3", "config key 'inner': expected a section"),
        ("nonsense", "config key 'nonsense': an override must look like key=value"),
    ],
)
def test_errors_name_the_key(override, message):
    with pytest.raises(ConfigError, match="^" + message.replace("(", r"\(").replace("[", r"\[")):
        load_config(Outer, None, [override])


def test_bad_files(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(Outer, tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        read_yaml(bad)


def test_dump_round_trips(tmp_path):
    cfg = Outer("y", Inner(size=32, path=Path("/x")))
    dump_config(cfg, tmp_path / "resolved.yaml")
    assert load_config(Outer, tmp_path / "resolved.yaml") == cfg
    assert not list(tmp_path.glob(".*part*"))


def test_every_shipped_config_loads_with_its_schema():
    from tfsky.predict.translate import TranslateConfig
    from tfsky.train.config import SegmenterConfig
    from tfsky.train.translator import TranslatorConfig

    configs = Path(__file__).resolve().parents[1] / "configs"
    schemas = {"translate_cam623": (TranslateConfig, "translate")}
    schemas |= {name: (TranslatorConfig, None) for name in ("pix2pix_clear2cloudy", "vae_clear2cloudy", "translator_tiny")}
    schemas |= {name: (SegmenterConfig, None) for name in ("sky_ldr", "sky_hdr", "sky_tiny", "sky_ldr_cpu",
                                                       "cloud_tiny", "cloud_wsiseg")}
    assert {path.stem for path in configs.glob("*.yaml")} == set(schemas)  # a new config gets a schema here
    for name, (schema, section) in schemas.items():
        assert isinstance(load_config(schema, configs / f"{name}.yaml", section=section), schema)
