"""What an exported version folder says about itself.

Two sources, both inside the folder TF Serving loads:

* ``assets/tfsky_model.json``: the tfsky metadata written at export (the
  model's `ModelInfo` with its resolved training config, preprocessing and
  metrics, the in-graph tiling parameters, the source model file);
* ``saved_model.pb``: the signatures, read back from the SavedModel itself so
  what is shown is what TF Serving will serve.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import tensorflow as tf
from tensorflow.core.protobuf import saved_model_pb2

from tfsky.errors import InputError

METADATA_FILE = "assets/tfsky_model.json"
SAVED_MODEL_FILE = "saved_model.pb"
SERVE_TAG = "serve"


@dataclasses.dataclass(frozen=True)
class TensorSummary:
    """One signature input or output: its alias, dtype name and shape (None = any size)."""

    name: str
    dtype: str
    shape: tuple[int | None, ...]


@dataclasses.dataclass(frozen=True)
class SignatureSummary:
    """A serving signature's inputs and outputs, sorted by alias."""

    name: str
    inputs: tuple[TensorSummary, ...]
    outputs: tuple[TensorSummary, ...]


def read_signature_defs(version_dir: str | Path) -> dict[str, Any]:
    """The serving ``SignatureDef`` protos of a SavedModel's ``serve`` meta graph, by name.

    Internal entries (``__saved_model_init_op``) are left out.

    Raises:
        InputError: the folder holds no readable ``saved_model.pb``.
    """
    path = Path(version_dir) / SAVED_MODEL_FILE
    if not path.is_file():
        raise InputError(version_dir, f"not a SavedModel folder ({SAVED_MODEL_FILE} not found)")
    saved_model = saved_model_pb2.SavedModel()
    try:
        saved_model.ParseFromString(path.read_bytes())
    except Exception as err:  # protobuf raises its own DecodeError
        raise InputError(path, f"cannot parse SavedModel ({err})") from None
    for meta_graph in saved_model.meta_graphs:
        if SERVE_TAG in meta_graph.meta_info_def.tags:
            return {name: sig for name, sig in meta_graph.signature_def.items() if not name.startswith("__")}
    raise InputError(path, f"no meta graph tagged '{SERVE_TAG}'")


def summarize_signatures(signature_defs: dict[str, Any]) -> list[SignatureSummary]:
    """Plain summaries of ``SignatureDef`` protos (serving_default first, then by name)."""
    names = sorted(signature_defs, key=lambda name: (name != "serving_default", name))
    return [
        SignatureSummary(
            name=name,
            inputs=_tensor_summaries(signature_defs[name].inputs),
            outputs=_tensor_summaries(signature_defs[name].outputs),
        )
        for name in names
    ]


def _tensor_summaries(tensor_infos) -> tuple[TensorSummary, ...]:
    return tuple(
        TensorSummary(
            name=alias,
            dtype=tf.dtypes.as_dtype(info.dtype).name,
            shape=()
            if info.tensor_shape.unknown_rank
            else tuple(None if dim.size < 0 else dim.size for dim in info.tensor_shape.dim),
        )
        for alias, info in sorted(tensor_infos.items())
    )


def read_metadata(version_dir: str | Path) -> dict[str, Any]:
    """The tfsky metadata JSON of an exported version folder."""
    path = Path(version_dir) / METADATA_FILE
    if not path.is_file():
        raise InputError(version_dir, f"not a tfsky export ({METADATA_FILE} not found)")
    try:
        return json.loads(path.read_text())
    except ValueError as err:
        raise InputError(path, f"not valid JSON ({err})") from None


def export_info(version_dir: str | Path) -> tuple[dict[str, Any], list[SignatureSummary]]:
    """``(metadata, signatures)`` of an exported version folder, for ``tfsky export --info``."""
    return read_metadata(version_dir), summarize_signatures(read_signature_defs(version_dir))
