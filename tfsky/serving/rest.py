"""TF Serving's REST API: URLs and the JSON encoding of tensors, for the client and the dev server.

Endpoints (port 8501): ``GET /v1/models/<name>[/versions/<n>|/labels/<l>]``
(status), ``.../metadata`` and ``POST ...:predict``. A predict body has
``signature_name`` and either ``instances`` (row format: a list with one
entry per batch item, each a value or an object of named inputs; answered
with ``predictions``) or ``inputs`` (columnar: a value, or an object of named
inputs; answered with ``outputs``). Binary strings travel as ``{"b64": ...}``;
string outputs whose alias ends in ``_bytes`` are answered that way, as TF
Serving does (``json_tensor.cc``).
"""

from __future__ import annotations

import base64
import re
from typing import Any

import grpc
import numpy as np
import tensorflow as tf

BYTES_SUFFIX = "_bytes"
MODEL_URL = re.compile(
    r"^/v1/models/(?P<name>[^/:]+)(?:/versions/(?P<version>\d+)|/labels/(?P<label>[^/:]+))?(?P<verb>:predict|/metadata)?$"
)
HTTP_STATUS = {  # gRPC code -> HTTP status, as TF Serving's REST handler maps them
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
}
GRPC_CODE = {status: code for code, status in HTTP_STATUS.items() if code != grpc.StatusCode.FAILED_PRECONDITION}


def model_url(base: str, name: str, version: int | None = None, label: str | None = None, verb: str = "") -> str:
    """``<base>/v1/models/<name>[/versions/<n>|/labels/<l>]<verb>`` (verb ``:predict``, ``/metadata`` or empty)."""
    url = f"{base}/v1/models/{name}"
    if version is not None:
        url += f"/versions/{version}"
    elif label:
        url += f"/labels/{label}"
    return url + verb


def encode_value(name: str, array: np.ndarray) -> Any:
    """A tensor as nested JSON lists; strings as ``{"b64": ...}`` when ``name`` ends in ``_bytes``."""
    array = np.asarray(array)
    if array.dtype.kind not in "OSU":
        return array.tolist()
    as_b64 = name.endswith(BYTES_SUFFIX)
    encode = np.frompyfunc(
        lambda s: {"b64": base64.b64encode(s).decode("ascii")} if as_b64 else s.decode("utf-8", "replace"), 1, 1
    )
    return encode(array).tolist() if array.ndim else encode(array.item())


def decode_value(value: Any, dtype: tf.DType) -> np.ndarray:
    """JSON value -> numpy array of ``dtype`` (strings: text or ``{"b64": ...}``); `ValueError` if it does not fit."""
    if dtype != tf.string:
        array = np.asarray(value)
        if array.dtype == object or array.dtype.kind in "SU":
            raise ValueError(f"expected {dtype.name} numbers, got {type(value).__name__}")
        return array.astype(dtype.as_numpy_dtype)
    return np.array(_decode_strings(value), dtype=object)


def _decode_strings(value: Any):
    if isinstance(value, list):
        return [_decode_strings(item) for item in value]
    if isinstance(value, dict) and set(value) == {"b64"}:
        return base64.b64decode(value["b64"], validate=True)
    if isinstance(value, str):
        return value.encode("utf-8")
    raise ValueError(f"expected a string or {{'b64': ...}}, got {type(value).__name__}")


def parse_predict_body(body: Any, input_dtypes: dict[str, tf.DType]) -> tuple[dict[str, np.ndarray], bool]:
    """``(inputs, row_format)`` from a predict body, given the signature's input dtypes by alias."""
    if not isinstance(body, dict) or ("instances" in body) == ("inputs" in body):
        raise ValueError("the body must be an object with exactly one of 'instances' or 'inputs'")
    names = sorted(input_dtypes)
    if "inputs" in body:
        columns = body["inputs"]
        if len(names) == 1 and not _is_named(columns):
            columns = {names[0]: columns}
        if not _is_named(columns):
            raise ValueError(f"'inputs' must be an object with keys {names}")
        return {key: decode_value(value, input_dtypes.get(key, tf.string)) for key, value in columns.items()}, False
    rows = body["instances"]
    if not isinstance(rows, list) or not rows:
        raise ValueError("'instances' must be a non-empty list")
    if not all(_is_named(row) for row in rows):
        if len(names) != 1:
            raise ValueError(f"'instances' must be a list of objects with keys {names}")
        rows = [{names[0]: row} for row in rows]
    columns = {key: [row.get(key) for row in rows] for key in rows[0]}
    return {key: decode_value(value, input_dtypes.get(key, tf.string)) for key, value in columns.items()}, True


def predict_response(outputs: dict[str, np.ndarray], row_format: bool) -> dict[str, Any]:
    """The JSON answer: ``predictions`` (one entry per batch item) or ``outputs`` (one entry per tensor)."""
    named = len(outputs) > 1
    if not row_format:
        if not named:
            ((name, value),) = outputs.items()
            return {"outputs": encode_value(name, value)}
        return {"outputs": {name: encode_value(name, value) for name, value in outputs.items()}}
    if any(np.ndim(value) == 0 for value in outputs.values()):
        raise ValueError("row format needs outputs with a batch dimension; use 'inputs' (columnar) for this signature")
    batch = {len(value) for value in outputs.values()}
    if len(batch) != 1:
        raise ValueError(f"outputs have different batch sizes {sorted(batch)}")
    items = [{name: encode_value(name, value[i]) for name, value in outputs.items()} for i in range(batch.pop())]
    return {"predictions": items if named else [next(iter(item.values())) for item in items]}


def parse_outputs(body: dict[str, Any], output_dtypes: dict[str, tf.DType]) -> dict[str, np.ndarray]:
    """Columnar ``outputs`` of a predict answer -> numpy arrays, given the expected aliases and dtypes."""
    outputs = body["outputs"]
    if len(output_dtypes) == 1 and not _is_named(outputs):
        outputs = {next(iter(output_dtypes)): outputs}
    return {name: decode_value(outputs[name], dtype) for name, dtype in output_dtypes.items()}


def _is_named(value: Any) -> bool:
    """An object of named tensors (as opposed to a value or a ``{"b64": ...}`` string)."""
    return isinstance(value, dict) and set(value) != {"b64"}
