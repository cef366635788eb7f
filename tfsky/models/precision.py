"""Numeric precision and device strategy for training, chosen from config.

``precision: auto`` is the right default everywhere: mixed float16 on a GPU
(Keras then wraps the optimizer in a `LossScaleOptimizer` at compile time, so
small float16 gradients do not underflow) and float32 on a CPU, where float16
is slow. The policy is read when layers are *constructed*, so models must be
built inside `precision_policy`.

Batch size convention: ``train.batch_size`` is PER REPLICA. The global batch
fed to ``fit`` is ``batch_size * strategy.num_replicas_in_sync`` (see
`global_batch_size`), so adding GPUs keeps each GPU's load constant.
"""

from __future__ import annotations

import contextlib
import json
import os
from typing import Iterator, Literal

import tensorflow as tf

from tfsky.errors import ConfigError

Precision = Literal["auto", "float32", "mixed_float16", "mixed_bfloat16"]
InferencePrecision = Literal["auto", "float32", "as_trained"]
StrategyName = Literal["default", "mirrored", "multi_worker"]


def resolve_precision(name: Precision) -> str:
    """The Keras policy name for ``name``: ``auto`` is mixed_float16 with a GPU, float32 without."""
    if name != "auto":
        return name
    return "mixed_float16" if tf.config.list_physical_devices("GPU") else "float32"


def for_inference(model: tf.keras.Model, precision: InferencePrecision = "auto") -> tf.keras.Model:
    """``model`` computing in the dtype inference on this machine should use.

    A model trained with mixed precision keeps its float16 (or bfloat16)
    layers when it is loaded: right on a GPU, ~13x slower than float32 on a
    CPU. ``auto`` keeps them when there is a GPU and rebuilds the model in
    float32 without one; ``float32`` always rebuilds, ``as_trained`` never.
    Rebuilding loses nothing: mixed-precision weights are stored in float32
    (the weights of a layer built in plain float16 are widened).
    """
    rebuild = precision == "float32" or (precision == "auto" and not tf.config.list_physical_devices("GPU"))
    layers = [module for module in model.submodules if isinstance(module, tf.keras.layers.Layer)]
    if not rebuild or not any(_computes_in_half(layer) for layer in layers):
        return model
    rebuilt = _float32_clone(model)
    rebuilt.set_weights(model.get_weights())
    return rebuilt


def _computes_in_half(layer: tf.keras.layers.Layer) -> bool:
    return layer.compute_dtype in ("float16", "bfloat16")


def _float32_clone(model: tf.keras.Model) -> tf.keras.Model:
    """The same architecture (nested models included) with every float16/bfloat16 layer set to float32."""

    def clone_layer(layer: tf.keras.layers.Layer) -> tf.keras.layers.Layer:
        if isinstance(layer, tf.keras.Model):
            return _float32_clone(layer)
        config = layer.get_config()
        if _computes_in_half(layer):
            config["dtype"] = "float32"
        return layer.__class__.from_config(config)

    return tf.keras.models.clone_model(model, clone_function=clone_layer)


@contextlib.contextmanager
def precision_policy(name: Precision) -> Iterator[str]:
    """Set the global Keras dtype policy for the block (yields the resolved name), then restore it."""
    previous = tf.keras.mixed_precision.global_policy()
    resolved = resolve_precision(name)
    tf.keras.mixed_precision.set_global_policy(resolved)
    try:
        yield resolved
    finally:
        tf.keras.mixed_precision.set_global_policy(previous)


def make_strategy(name: StrategyName) -> tf.distribute.Strategy:
    """The `tf.distribute` strategy for ``train.strategy``.

    ``default`` is one device, ``mirrored`` all local GPUs, ``multi_worker``
    every worker listed in the ``TF_CONFIG`` environment variable (which must
    be set, as JSON with ``cluster`` and ``task``).
    """
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    if name == "multi_worker":
        check_tf_config(os.environ.get("TF_CONFIG"))
        return tf.distribute.MultiWorkerMirroredStrategy()
    raise ConfigError("train.strategy", f"must be one of default, mirrored, multi_worker; got {name!r}")


def check_tf_config(text: str | None) -> None:
    """Raise a `ConfigError` unless ``text`` is a TF_CONFIG JSON with ``cluster`` and ``task``."""
    problem = "multi_worker needs the TF_CONFIG environment variable"
    if not text:
        raise ConfigError("train.strategy", f"{problem} (it is not set)")
    try:
        spec = json.loads(text)
    except ValueError:
        raise ConfigError("train.strategy", f"{problem} to be JSON (it is not)") from None
    if not isinstance(spec, dict) or not {"cluster", "task"} <= set(spec):
        raise ConfigError("train.strategy", f"{problem} to hold 'cluster' and 'task'")


def global_batch_size(per_replica: int, strategy: tf.distribute.Strategy) -> int:
    """The batch size fed to ``fit``: per-replica batch times the number of replicas."""
    return per_replica * strategy.num_replicas_in_sync
