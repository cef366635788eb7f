"""The config system: defaults, overrides, sections, one-line errors naming the key or the file, and every
command reading its section of a config file the same way (``-c`` / ``--set`` / flags)."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path
from typing import Literal, Optional

import numpy as np
import pytest
import yaml

from tfsky.config import dump_config, from_dict, load_config, read_yaml, to_dict
from tfsky.errors import ConfigError, InputError

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


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


@dataclasses.dataclass
class Needs:
    name: str
    inner: Inner
    extra: int = 1


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
        ("inner.scale=.nan", "config key 'inner.scale': must be a finite number; got nan"),
        ("inner.scale=.inf", "config key 'inner.scale': must be a finite number; got inf"),
        ("inner.scale=-.inf", "config key 'inner.scale': must be a finite number; got -inf"),
        (f"inner.scale={10**400}", "config key 'inner.scale': must be a finite number; got 1000"),
        ("inner.size=*alias", "config key 'inner.size': expected an integer, got '*alias'"),
    ],
)
def test_errors_name_the_key(override, message):
    with pytest.raises(ConfigError, match="^" + re.escape(message)):
        load_config(Outer, None, [override])


def test_a_long_value_is_quoted_cut_short_in_the_error():
    for value in (["x" * 1000] * 1000, "y" * 100_000, {f"k{i}": list(range(100)) for i in range(100)}):
        with pytest.raises(ConfigError) as err:
            from_dict(Outer, {"inner": {"size": value}})
        assert str(err.value).startswith("config key 'inner.size': expected an integer, got ")
        assert len(str(err.value)) < 250


def test_missing_required_keys_are_named_not_python_internals():  # issue 15 item 4
    with pytest.raises(ConfigError) as err:
        load_config(Needs, None)
    assert str(err.value) == "config key 'name': is required (required keys here: name, inner)"
    with pytest.raises(ConfigError, match=r"^config key 'inner': is required"):
        load_config(Needs, None, ["name=x"])
    assert load_config(Needs, None, ["name=x", "inner.size=32"]) == Needs("x", Inner(size=32))


@pytest.mark.parametrize(
    "text, problem",
    [
        (None, "config file not found"),
        ("a: [1, 2\n", "not valid YAML (line 2)"),
        ("- 1\n- 2\n", "the file must hold a mapping of keys to values"),
        (
            "a: !!python/object/apply:os.system [echo hi]\n",
            "YAML tag '!!python/object/apply:os.system' is not allowed (line 1): config files hold plain data",
        ),
        ("a: !!python/name:os.system\n", "YAML tag '!!python/name:os.system' is not allowed"),
        ("a: &x 1\nb: *x\n", "YAML anchors and aliases (&, *) are not allowed (line 1): config files hold plain data"),
        ("a: 1\nb: 2\nc: *nowhere\n", "YAML anchors and aliases (&, *) are not allowed (line 3)"),
        (
            "".join(["l0: &l0 lol\n"] + [f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]\n" for i in range(1, 12)]),
            "YAML anchors and aliases (&, *) are not allowed (line 1)",
        ),  # a "billion laughs": 9 ** 11 once expanded
    ],
)
def test_file_problems_are_reported_as_the_file(tmp_path, text, problem):
    path = tmp_path / "c.yaml"
    if text is not None:
        path.write_text(text)
    with pytest.raises(InputError) as err:
        read_yaml(path)
    assert str(err.value).startswith(f"{path}: {problem}")
    assert "config key" not in str(err.value)


def test_dump_round_trips(tmp_path):
    cfg = Outer("y", Inner(size=32, path=Path("/x")))
    dump_config(cfg, tmp_path / "resolved.yaml")
    assert load_config(Outer, tmp_path / "resolved.yaml") == cfg
    assert not list(tmp_path.glob(".*part*"))


def _missing(written, loaded, key=""):
    """The first key of ``written`` (a file's YAML) whose value ``loaded`` (a config as plain data) does not hold."""
    if isinstance(written, dict):
        if not isinstance(loaded, dict):
            return key
        for name, value in written.items():
            where = f"{key}.{name}" if key else str(name)
            found = _missing(value, loaded[name], where) if name in loaded else where
            if found:
                return found
        return None
    if isinstance(written, list):
        if not isinstance(loaded, list) or len(loaded) != len(written):
            return key
        pairs = enumerate(zip(written, loaded))
        return next((found for i, (w, v) in pairs if (found := _missing(w, v, f"{key}[{i}]"))), None)
    if isinstance(written, str) and isinstance(loaded, str) and Path(loaded).is_absolute():
        return None if Path(written).resolve() == Path(loaded) else key  # a path the config stores resolved
    return None if written == loaded else key


def _shipped_schemas():
    from tfsky.predict.translate import TranslateConfig
    from tfsky.train.config import ClassifierConfig, SegmenterConfig, TranslatorConfig

    schemas = {"translate_cam623": (TranslateConfig, "translate")}
    translators = ("pix2pix_clear2cloudy", "vae_clear2cloudy", "translator_tiny", "colorize_cpu", "colorize_tiny")
    schemas |= {name: (TranslatorConfig, None) for name in translators}
    schemas |= {
        name: (SegmenterConfig, None)
        for name in (
            "sky_ldr",
            "sky_hdr",
            "sky_tiny",
            "sky_ldr_cpu",
            "sky_ldr_cpu_scratch",
            "sky_ldr_mobilenetv2",
            "cloud_tiny",
            "cloud_wsiseg",
        )
    }
    schemas |= {
        name: (ClassifierConfig, None)
        for name in ("weather_allsky", "weather_mwd", "weather_mwd_r34", "weather_mwd_scratch", "weather_tiny")
    }
    return schemas


def test_every_shipped_config_keeps_every_value_it_sets():
    """Each file in configs/ loads with its schema and every value written in it arrives unchanged."""
    schemas = _shipped_schemas()
    shipped = {path.stem for path in CONFIGS.glob("*.yaml")}
    assert shipped <= set(schemas), f"give these configs a schema here: {shipped - set(schemas)}"
    for name, (schema, section) in schemas.items():
        raw = read_yaml(CONFIGS / f"{name}.yaml")
        raw = raw[section] if section else raw
        loaded = to_dict(load_config(schema, CONFIGS / f"{name}.yaml", section=section))
        assert _missing(raw, loaded) is None, f"{name}.yaml: {_missing(raw, loaded)} was lost or changed on loading"


def test_the_shipped_config_check_catches_a_lost_value():
    assert _missing({"a": {"b": [1, {"c": 2}]}}, {"a": {"b": [1, {"c": 2, "d": 0}]}, "e": 1}) is None
    assert _missing({"a": {"b": [1, {"c": 2}]}}, {"a": {"b": [1, {"c": 3}]}}) == "a.b[1].c"
    assert _missing({"a": 1}, {}) == "a"


# --- whole files, whichever command reads them (issue 15 item 3) ------------------------------------------


def segmenter_file(tmp_path: Path, **top) -> Path:
    images, masks = tmp_path / "images", tmp_path / "masks"
    images.mkdir(exist_ok=True)
    masks.mkdir(exist_ok=True)
    from tfsky.io.writers import write_png

    write_png(images / "a.png", np.zeros((40, 40, 3), np.uint8))
    write_png(masks / "a.png", np.full((40, 40), 255, np.uint8))
    raw = {
        "name": "t",
        "data": {
            "sources": [{"kind": "mask_folder", "images": str(images), "masks": str(masks)}],
            "cache": str(tmp_path / "cache"),
            "patch_size": 32,
        },
    }
    raw.update(top)
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def assert_one_line(result, expected: str) -> None:
    assert result.exit_code == 1, result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert lines[0].startswith(expected), lines[0]


@pytest.mark.parametrize(
    "top, expected",
    [
        ({"trian": {"epochs": 3}}, "Error: config key 'trian': unknown key"),
        ({"train": {"epoch": 3}}, "Error: config key 'train.epoch': unknown key"),
        ({"train": {"epochs": -3}}, "Error: config key 'train.epochs': must be >= 1; got -3"),
        ({"train": {"epochs": [1, 2]}}, "Error: config key 'train.epochs': expected an integer, got [1, 2]"),
        ({"model": {"backbone": "resnet35"}}, "Error: config key 'model.backbone': unknown backbone 'resnet35'"),
    ],
)
def test_data_prepare_checks_the_whole_file_as_train_does(cli, tmp_path, top, expected):
    config = segmenter_file(tmp_path, **top)
    for command in (("data", "prepare", "-q"), ("train", "segmenter", "-q")):
        assert_one_line(cli(*command, "-c", config), expected)
    assert not (tmp_path / "cache").exists()  # refused before anything is written


def test_data_prepare_still_prepares_a_good_file(cli, tmp_path):
    result = cli("data", "prepare", "-q", "-c", segmenter_file(tmp_path))
    assert result.exit_code == 0, result.stderr
    assert (tmp_path / "cache" / "manifest.json").is_file()


def test_empty_config_says_what_is_required(cli, tmp_path):  # issue 15 item 4
    empty = tmp_path / "e.yaml"
    empty.write_text("")
    required = "Error: config key 'name': is required (required keys here: "
    assert_one_line(cli("train", "segmenter", "-c", empty), required + "name, data)")
    assert_one_line(cli("train", "translator", "-c", empty), required + "name)")
    assert_one_line(cli("data", "prepare", "-c", empty), "Error: config key 'name': is required")


@pytest.mark.parametrize(
    "command",
    [
        ("train", "segmenter"),
        ("data", "prepare"),
        ("evaluate", "segmenter", "-m", "m", "-d", "d"),
        ("export", "-m", "m"),
        ("serve",),
        ("client", "status"),
    ],
)
def test_config_file_problems_name_the_file_in_every_command(cli, tmp_path, command):
    missing = tmp_path / "x.yaml"
    assert_one_line(cli(*command, "-c", missing), f"Error: {missing}: config file not found")
    tagged = tmp_path / "tag.yaml"
    tagged.write_text("name: !!python/object/apply:os.system [touch pwned]\n")
    assert_one_line(
        cli(*command, "-c", tagged), f"Error: {tagged}: YAML tag '!!python/object/apply:os.system' is not allowed"
    )
    assert not (Path.cwd() / "pwned").exists()


# --- the command sections: evaluate, export, serve, client --------------------------------------------


def write_yaml(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.parametrize(
    "command, section",
    [
        (("serve",), "serve"),
        (("client", "status"), "client"),
        (("export", "-m", "m.keras"), "export"),
        (("evaluate", "segmenter", "-m", "m", "-d", "d"), "evaluate"),
        (("evaluate", "translator", "-m", "m", "-p", "p"), "evaluate"),
        (("evaluate", "classifier", "-m", "m"), "evaluate"),
    ],
)
def test_each_command_checks_its_section(cli, tmp_path, command, section):
    config = write_yaml(tmp_path / "c.yaml", {section: {"no_such_key": 1}})
    assert_one_line(cli(*command, "-c", config), f"Error: config key '{section}.no_such_key': unknown key")
    assert_one_line(cli(*command, "--set", f"{section}.no_such_key=1"), f"Error: config key '{section}.no_such_key'")


def test_client_takes_server_and_retries_from_the_file_and_flags_win(cli, tmp_path):
    config = write_yaml(tmp_path / "c.yaml", {"client": {"server": "127.0.0.1:9", "retries": 0, "timeout": 2}})
    from_file = cli("client", "status", "-c", config)
    assert_one_line(from_file, "Error: server 127.0.0.1:9: UNAVAILABLE: no answer after 1 attempts")  # retries: 0
    assert_one_line(
        cli("client", "status", "-c", config, "--set", "client.server=127.0.0.1:7"), "Error: server 127.0.0.1:7: "
    )
    assert_one_line(
        cli(
            "client",
            "status",
            "-c",
            config,
            "--set",
            "client.server=127.0.0.1:7",
            "--server",
            "127.0.0.1:8",
            "--retries",
            "1",
        ),
        "Error: server 127.0.0.1:8: UNAVAILABLE: no answer after 2 attempts",
    )
    assert_one_line(
        cli("client", "status", "-c", config, "--version", "2", "--label", "stable"),
        "Error: config key 'client.label': give a version or a version label, not both",
    )


def test_serve_section_values_are_checked(cli, tmp_path):
    config = write_yaml(tmp_path / "c.yaml", {"serve": {"grpc_port": 70000}})
    assert_one_line(cli("serve", "-c", config), "Error: config key 'serve.grpc_port': must be a port number")
    assert_one_line(cli("serve", "--poll-seconds", "0"), "Error: config key 'serve.poll_seconds': must be > 0")


def test_library_defaults_are_the_config_defaults():
    import inspect

    from tfsky.serving.client import Client
    from tfsky.serving.config import ClientConfig, ServeConfig
    from tfsky.serving.server import DevServer

    client, server = inspect.signature(Client).parameters, inspect.signature(DevServer).parameters
    for key in ("server", "rest", "timeout", "retries"):
        assert client[key].default == getattr(ClientConfig(), key), key
    for key in ("host", "grpc_port", "rest_port", "poll_seconds", "max_message_mb", "read_timeout"):
        assert server[key].default == getattr(ServeConfig(), key), key
    from tfsky.evaluate.config import EvaluateConfig
    from tfsky.evaluate.segmenter import evaluate_segmenter
    from tfsky.evaluate.translator import evaluate_translator
    from tfsky.export.config import ExportConfig
    from tfsky.export.savedmodel import export_model

    segmenter = inspect.signature(evaluate_segmenter).parameters
    translator = inspect.signature(evaluate_translator).parameters
    for key in ("split", "threshold", "band"):
        assert segmenter[key].default == getattr(EvaluateConfig(), key), key
    assert translator["split"].default == EvaluateConfig().split
    assert inspect.signature(export_model).parameters["precision"].default == ExportConfig().precision


# --- tiles the model cannot take, in every command with tiling flags (issue 15 item 1) ----------------


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    """A one-convolution segmenter (tile 32) and a depth-3 pix2pix generator (tile 64), saved as tfsky models."""
    import tensorflow as tf

    from tfsky.data.pairs import PairDataConfig
    from tfsky.data.transforms import Preprocess
    from tfsky.models.bundle import ModelInfo, save_model
    from tfsky.models.pix2pix import Pix2PixConfig, build_unet_generator
    from tfsky.train.config import TranslatorConfig, TranslatorModelConfig

    folder = tmp_path_factory.mktemp("models")
    inputs = tf.keras.Input((None, None, 3))
    segmenter = tf.keras.Model(inputs, tf.keras.layers.Conv2D(1, 1, activation="sigmoid")(inputs))
    save_model(segmenter, folder / "seg.keras", ModelInfo("segmenter", Preprocess(), tile_size=32))
    pix2pix = Pix2PixConfig(depth=3, base_filters=4, max_filters=8)
    trained = TranslatorConfig(
        "t", data=PairDataConfig(load_size=None, crop_size=64), model=TranslatorModelConfig(pix2pix=pix2pix)
    )
    save_model(
        build_unet_generator(pix2pix),
        folder / "tr.keras",
        ModelInfo("pix2pix", Preprocess(), tile_size=64, classes=3, config=to_dict(trained)),
    )
    from tfsky.io.writers import write_png

    images, masks = folder / "data" / "images", folder / "data" / "masks"
    images.mkdir(parents=True)
    masks.mkdir()
    write_png(images / "a.png", np.zeros((40, 50, 3), np.uint8))
    write_png(masks / "a.png", np.zeros((40, 50), np.uint8))
    return folder


@pytest.mark.parametrize("tile", [33, 48])
def test_a_tile_the_segmenter_cannot_take_is_one_line_everywhere(cli, tmp_path, tiny_models, tile):
    seg, data = tiny_models / "seg.keras", tiny_models / "data"
    expected = f"Error: config key 'tiling.tile': must be a multiple of 32 for this segmenter model; got {tile}"
    out = tmp_path / "out"
    commands = [
        ("predict", "-m", seg, data / "images" / "a.png", "-o", out),
        ("evaluate", "segmenter", "-m", seg, "-d", data, "-o", out),
        ("export", "-m", seg, "--repo", out),
    ]
    for command in commands:
        assert_one_line(cli(*command, "--tile", tile), expected)
        section = {"predict": "predict", "evaluate": "evaluate", "export": "export"}[command[0]]
        config = write_yaml(tmp_path / "c.yaml", {section: {"tiling": {"tile": tile}}})
        assert_one_line(cli(*command, "-c", config), expected)
    assert not out.exists() or not [p for p in out.rglob("*") if p.is_file()]


def test_a_tile_the_translator_cannot_take_is_one_line(cli, tmp_path, tiny_models):
    image = tiny_models / "data" / "images" / "a.png"
    expected = "Error: config key 'tiling.tile': must be a multiple of 8 for this pix2pix model; got 33"
    assert_one_line(
        cli("translate", "-m", tiny_models / "tr.keras", image, "-o", tmp_path / "o", "--tile", "33"), expected
    )


def test_export_takes_its_tiling_from_the_config(cli, tmp_path, tiny_models):
    config = write_yaml(
        tmp_path / "c.yaml",
        {
            "export": {
                "name": "cfg_model",
                "repo": str(tmp_path / "repo"),
                "tiling": {"tile": 64, "overlap": 0.5, "tta": "flip2"},
            }
        },
    )
    result = cli("export", "-m", tiny_models / "seg.keras", "-c", config, "--set", "export.tiling.window=hann")
    assert result.exit_code == 0, result.stderr
    import json

    metadata = json.loads((tmp_path / "repo" / "cfg_model" / "1" / "assets" / "tfsky_model.json").read_text())
    chosen = {key: metadata["tiling"][key] for key in ("tile", "overlap", "window", "tile_batch", "tta")}
    assert chosen == {"tile": 64, "overlap": 0.5, "window": "hann", "tile_batch": 8, "tta": "flip2"}


def test_a_misspelt_section_is_an_error_not_ignored(cli, tmp_path, tiny_models):
    config = write_yaml(tmp_path / "c.yaml", {"predcit": {"tiling": {"tile": 64}}})
    command = (
        "predict",
        "-m",
        tiny_models / "seg.keras",
        tiny_models / "data" / "images" / "a.png",
        "-o",
        tmp_path / "out",
    )
    assert_one_line(cli(*command, "-c", config), "Error: config key 'predcit': unknown key (known keys here: client, ")
    assert_one_line(cli(*command, "--set", "predcit.tiling.tile=64"), "Error: config key 'predcit': unknown key")
    assert not (tmp_path / "out").exists()
    shared = write_yaml(
        tmp_path / "shared.yaml",
        {"name": "run", "train": {"epochs": 1}, "export": {"name": "x"}, "predict": {"tiling": {"tile": 64}}},
    )
    result = cli(*command, "-c", shared)  # other commands' sections and a training config may share the file
    assert result.exit_code == 0, result.stderr
    assert json.loads((tmp_path / "out" / "a.json").read_text())["tile"] == 64


def test_a_recorded_training_config_is_read_back_typed_without_its_files_or_retired_keys():
    from tfsky.data.transforms import Preprocess
    from tfsky.models.bundle import ModelInfo
    from tfsky.models.pix2pix import Pix2PixConfig
    from tfsky.train.config import TranslatorConfig, TranslatorModelConfig, trained_config

    trained = TranslatorConfig("t", model=TranslatorModelConfig(pix2pix=Pix2PixConfig(depth=5)))
    recorded = to_dict(trained)
    recorded["model"]["pix2pix"] |= {"perceptual_weight": 1.0, "vgg_weights": "/gone/vgg19.h5"}  # not here
    recorded["train"] |= {"optimizer": "adam", "loss": "bce_jaccard"}  # recorded before the TrainConfig split
    info = ModelInfo("pix2pix", Preprocess(), tile_size=256, config=recorded)
    typed = trained_config(info, TranslatorConfig, "m.keras")
    assert (typed.model.size_multiple, typed.data.load_size) == (32, 286)
    assert typed.model.pix2pix.vgg_weights == Path("/gone/vgg19.h5")
    info.config["model"]["pix2pix"]["depth"] = "deep"
    with pytest.raises(
        InputError,
        match=r"^m.json: the recorded training config does not load \(config key "
        r"'model.pix2pix.depth': expected an integer",
    ):
        trained_config(info, TranslatorConfig, "m.keras")


def test_streams_commands_check_the_whole_translator_file_as_train_does(cli, tmp_path):
    raw = read_yaml(CONFIGS / "translator_tiny.yaml")
    raw["train"] = {**raw.get("train", {}), "epochs": -3}
    config = write_yaml(tmp_path / "t.yaml", raw)
    for command in (("streams", "validate"), ("streams", "pairs"), ("train", "translator")):
        assert_one_line(cli(*command, "-c", config), "Error: config key 'train.epochs': must be >= 1; got -3")


def test_one_file_holds_a_training_config_and_command_sections_each_checked(cli, tmp_path):
    config = segmenter_file(tmp_path, export={"name": "sky", "tiling": {"tile": 64}}, serve={"grpc_port": 70000})
    for command in (
        ("data", "prepare", "-q"),
        ("train", "segmenter", "-q"),
        ("export", "-m", "m.keras"),
        ("client", "status"),
    ):  # every command checks every command section the file holds
        assert_one_line(cli(*command, "-c", config), "Error: config key 'serve.grpc_port': must be a port number")
    good = segmenter_file(tmp_path, export={"name": "sky", "tiling": {"tile": 64}}, serve={"grpc_port": 0})
    result = cli("data", "prepare", "-q", "-c", good)
    assert result.exit_code == 0, result.stderr
