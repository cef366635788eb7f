"""The TF Serving container files in serving/ are checked by parsing them: a typo fails here, not in production.

models.config is parsed with TF Serving's own ``ModelServerConfig`` proto.
``BatchingParameters`` and ``MonitoringConfig`` are not in tensorflow-serving-api,
so there is no real schema to check those two against here (a hand-copied one
would only check the copy); their tests instead check what tfsky relies on:
the batch sizes tfsky's clients and warm-up send fit TF Serving's batching, and
the metrics path is the one the serving guide and the compose file use.
"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest
import tensorflow as tf
import yaml
from google.protobuf import text_format
from tensorflow_serving.config import model_server_config_pb2

SERVING = Path(__file__).resolve().parents[1] / "serving"
CONTAINER_CONFIG_DIR = "/etc/tfsky-serving"
_ENTRY = re.compile(r"^\s*(\w+)\s*(?::\s*(\S+)|\{\s*value:\s*(\S+)\s*\})\s*$")  # key: v | key { value: v }


def text_proto_values(text: str) -> dict[str, list[str]]:
    """The flat ``key: value`` / ``key { value: v }`` entries of a protobuf text file, repeated keys listed."""
    values: dict[str, list[str]] = {}
    for line in text.splitlines():
        match = _ENTRY.match(line.split("#", 1)[0])
        if match:
            values.setdefault(match[1], []).append(match[2] or match[3])
    return values


# ------------------------------------------------------------------ the files


def test_models_config_parses_with_tf_serving_proto():
    config = text_format.Parse((SERVING / "models.config").read_text(), model_server_config_pb2.ModelServerConfig())
    models = {model.name: model for model in config.model_config_list.config}
    assert set(models) == {"sky_segmenter", "sky_segmenter_hdr"}
    segmenter = models["sky_segmenter"]
    assert segmenter.base_path == "/models/sky_segmenter"
    assert segmenter.model_platform == "tensorflow"
    assert list(segmenter.model_version_policy.specific.versions) == [1, 2]
    assert dict(segmenter.version_labels) == {"stable": 1, "canary": 2}
    assert models["sky_segmenter_hdr"].model_version_policy.latest.num_versions == 1


def test_models_config_typo_would_fail():
    text = (SERVING / "models.config").read_text().replace("version_labels", "version_label", 1)
    with pytest.raises(text_format.ParseError, match="version_label"):
        text_format.Parse(text, model_server_config_pb2.ModelServerConfig())


def test_batching_fits_every_batch_tfsky_sends():
    from tfsky.export.warmup import warmup_inputs
    from tfsky.tiling import TilingConfig

    values = text_proto_values((SERVING / "batching.config").read_text())
    max_batch = int(values["max_batch_size"][0])
    sizes = [int(size) for size in values["allowed_batch_sizes"]]
    assert sizes == sorted(sizes) and sizes[-1] == max_batch  # TF Serving refuses the file otherwise
    assert int(values["batch_timeout_micros"][0]) > 0 and int(values["num_batch_threads"][0]) >= 1
    warmup = warmup_inputs(tile=64, channels=3, tile_batch=TilingConfig().tile_batch, hdr=False)
    sent = {len(request["tiles"]) for request in warmup["serving_default"]}
    assert max(sent) <= max_batch  # a larger serving_default request would be refused by the batcher


def test_text_proto_reader_reads_wrapped_plain_and_repeated_values():
    assert text_proto_values(
        "max_batch_size { value: 8 }  # c\nallowed_batch_sizes: 4\nallowed_batch_sizes: 8\n"
        "prometheus_config {\n  enable: true\n}\n"
    ) == {"max_batch_size": ["8"], "allowed_batch_sizes": ["4", "8"], "enable": ["true"]}


def test_monitoring_enables_prometheus_at_the_path_the_serving_guide_uses():
    text = (SERVING / "monitoring.config").read_text()
    values = text_proto_values(text)
    assert "prometheus_config {" in text and values["enable"] == ["true"]
    path = values["path"][0].strip('"')
    assert f"localhost:8501{path}" in (SERVING.parent / "docs" / "guide" / "serve.md").read_text()


def _compose() -> dict:
    return yaml.safe_load((SERVING / "docker-compose.yml").read_text())["services"]["tf-serving"]


def _flags(args: list[str]) -> dict[str, str]:
    return dict(arg.removeprefix("--").split("=", 1) for arg in args)


def test_compose_ports_volumes_and_flags():
    service = _compose()
    assert service["ports"] == ["8500:8500", "8501:8501"]
    mounts = {}
    for volume in service["volumes"]:
        host, container, *_ = volume.split(":")
        assert (SERVING / host).resolve().parent.is_dir(), volume
        mounts[container] = (SERVING / host).resolve()
    assert mounts["/models"] == SERVING.parent / "models"
    config_dir = mounts[CONTAINER_CONFIG_DIR]
    assert (SERVING / service["build"]["context"] / service["build"]["dockerfile"]).is_file()

    flags = _flags(service["command"])
    assert flags["port"] == "8500" and flags["rest_api_port"] == "8501"
    assert flags["enable_batching"] == "true"
    for flag, file in [
        ("model_config_file", "models.config"),
        ("batching_parameters_file", "batching.config"),
        ("monitoring_config_file", "monitoring.config"),
    ]:
        assert flags[flag] == f"{CONTAINER_CONFIG_DIR}/{file}"
        assert (config_dir / file).is_file(), flag
    channel_args = dict(item.split("=") for item in flags["grpc_channel_arguments"].split(","))
    assert int(channel_args["grpc.max_receive_message_length"]) == 256 * 1024 * 1024


def test_compose_health_check_parses_the_status_state():
    test = " ".join(_compose()["healthcheck"]["test"])
    assert "localhost:8501/v1/models/sky_segmenter" in test
    assert "AVAILABLE" in test  # the REST status answers 200 for every state


def _dockerfile_instructions() -> list[tuple[str, str]]:
    text = (SERVING / "Dockerfile").read_text().replace("\\\n", " ")
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    return [tuple(line.split(None, 1)) for line in lines]


def test_dockerfile_matches_tensorflow_pin_and_compose():
    instructions = _dockerfile_instructions()
    base = [args for op, args in instructions if op == "FROM"]
    assert base == [f"tensorflow/serving:{tf.__version__}"]
    user = [args for op, args in instructions if op == "USER"]
    assert user and user[-1] not in ("root", "0")
    copies = [shlex.split(args) for op, args in instructions if op == "COPY"]
    for source in copies[0][:-1]:
        assert (SERVING.parent / source).is_file(), source
    default_models = next(args for op, args in instructions if op == "ARG" and args.startswith("MODELS="))
    assert (SERVING.parent / default_models.split("=", 1)[1]).is_dir()
    cmd = json.loads(next(args for op, args in instructions if op == "CMD"))
    assert cmd == _compose()["command"]
