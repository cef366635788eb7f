"""The TF Serving container files in serving/ are checked by parsing them: a typo fails here, not in production.

models.config is parsed with TF Serving's own ``ModelServerConfig`` proto.
``BatchingParameters`` and ``MonitoringConfig`` are not in tensorflow-serving-api,
so they are checked against a schema written here from TF Serving's
session_bundle_config.proto and monitoring_config.proto, compiled into
protobuf descriptors so protobuf's own text-format parser does the checking.
"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest
import tensorflow as tf
import yaml
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, text_format, wrappers_pb2
from tensorflow_serving.config import model_server_config_pb2

SERVING = Path(__file__).resolve().parents[1] / "serving"
CONTAINER_CONFIG_DIR = "/etc/tfsky-serving"

# name -> {field: type}; "repeated T" for lists, google.protobuf.* wrapper types as TF Serving declares them.
SCHEMA = {
    "BatchingParameters": {  # tensorflow_serving/servables/tensorflow/session_bundle_config.proto
        "max_batch_size": "google.protobuf.Int64Value",
        "batch_timeout_micros": "google.protobuf.Int64Value",
        "max_enqueued_batches": "google.protobuf.Int64Value",
        "num_batch_threads": "google.protobuf.Int64Value",
        "thread_pool_name": "google.protobuf.StringValue",
        "allowed_batch_sizes": "repeated int64",
        "pad_variable_length_inputs": "bool",
    },
    "PrometheusConfig": {"enable": "bool", "path": "string"},  # tensorflow_serving/config/monitoring_config.proto
    "MonitoringConfig": {"prometheus_config": "PrometheusConfig"},
}
_SCALARS = {
    "bool": descriptor_pb2.FieldDescriptorProto.TYPE_BOOL,
    "int64": descriptor_pb2.FieldDescriptorProto.TYPE_INT64,
    "string": descriptor_pb2.FieldDescriptorProto.TYPE_STRING,
}


def schema_classes(schema: dict[str, dict[str, str]], package: str = "tfsky_schema") -> dict[str, type]:
    """Compile ``{message: {field: type}}`` into protobuf message classes (fields numbered in order)."""
    pool = descriptor_pool.DescriptorPool()
    pool.AddSerializedFile(wrappers_pb2.DESCRIPTOR.serialized_pb)
    file = descriptor_pb2.FileDescriptorProto(
        name=f"{package}.proto", package=package, syntax="proto3", dependency=[wrappers_pb2.DESCRIPTOR.name]
    )
    for message_name, fields in schema.items():
        message = file.message_type.add(name=message_name)
        for number, (field_name, type_name) in enumerate(fields.items(), start=1):
            repeated, _, base = type_name.rpartition(" ")
            field = message.field.add(name=field_name, number=number)
            field.label = field.LABEL_REPEATED if repeated else field.LABEL_OPTIONAL
            if base in _SCALARS:
                field.type = _SCALARS[base]
            else:
                field.type = field.TYPE_MESSAGE
                field.type_name = f".{base}" if "." in base else f".{package}.{base}"
    pool.Add(file)
    return {name: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"{package}.{name}")) for name in schema}


def parse_with_schema(text: str, message_name: str, schema: dict = SCHEMA):
    """Parse protobuf text format against ``schema``; unknown fields or wrong types raise ``ParseError``."""
    return text_format.Parse(text, schema_classes(schema)[message_name]())


# ------------------------------------------------------------------ the schema checker itself

def test_schema_parser_accepts_wrappers_and_repeated_fields():
    params = parse_with_schema("max_batch_size { value: 8 } allowed_batch_sizes: 4 allowed_batch_sizes: 8",
                               "BatchingParameters")
    assert params.max_batch_size.value == 8
    assert list(params.allowed_batch_sizes) == [4, 8]


@pytest.mark.parametrize(
    "text, problem",
    [
        ("max_batch_sizes { value: 8 }", "no field named"),  # typo in a field name
        ("max_batch_size: 8", "expected"),  # wrapper written as a plain number
        ("max_batch_size { value: \"8\" }", "integer"),  # string where an int64 goes
        ("allowed_batch_sizes: 2.5", "integer"),  # float where an int64 goes
        ("pad_variable_length_inputs: 3", "true\" or \"false"),
    ],
)
def test_schema_parser_rejects_unknown_fields_and_wrong_types(text, problem):
    with pytest.raises(text_format.ParseError, match=re.compile(problem, re.IGNORECASE)):
        parse_with_schema(text, "BatchingParameters")


def test_schema_parser_rejects_unknown_nested_field():
    with pytest.raises(text_format.ParseError, match="enabled"):
        parse_with_schema("prometheus_config { enabled: true }", "MonitoringConfig")


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


def test_batching_config_matches_schema_and_rules():
    params = parse_with_schema((SERVING / "batching.config").read_text(), "BatchingParameters")
    sizes = list(params.allowed_batch_sizes)
    assert sizes == sorted(sizes) and sizes[-1] == params.max_batch_size.value  # TF Serving's own requirement
    assert params.batch_timeout_micros.value > 0
    assert params.num_batch_threads.value >= 1
    assert params.max_enqueued_batches.value >= 1


def test_monitoring_config_enables_prometheus():
    config = parse_with_schema((SERVING / "monitoring.config").read_text(), "MonitoringConfig")
    assert config.prometheus_config.enable
    assert config.prometheus_config.path == "/monitoring/prometheus/metrics"


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
    for flag, file in [("model_config_file", "models.config"), ("batching_parameters_file", "batching.config"),
                       ("monitoring_config_file", "monitoring.config")]:
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
