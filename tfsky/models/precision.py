"""Numeric precision and device strategy for training, chosen from config.

``precision: auto`` is the right default everywhere: mixed float16 on a GPU
(Keras then wraps the optimizer in a `LossScaleOptimizer` at compile time, so
small float16 gradients do not underflow), mixed bfloat16 on a CPU with a
bfloat16 matrix unit (AMX-BF16 or AVX512-BF16, which oneDNN uses: 2-4x faster
than float32 there; bfloat16 needs no loss scaling and Keras adds none), and
float32 on any other CPU, where bfloat16 ran ~3.5x *slower* than float32
(MobileNetV2 U-Net forward on a 544-px tile, AVX-512F without BF16) and
float16 ~13x slower. `resolve_precision` is the one place that decides. The
policy is read when layers are *constructed*, so models must be built inside
`precision_policy`.

Batch size convention: ``train.batch_size`` is PER REPLICA. The global batch
fed to ``fit`` is ``batch_size * strategy.num_replicas_in_sync`` (see
`global_batch_size`), so adding GPUs keeps each GPU's load constant.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
from pathlib import Path
from typing import Iterator, Literal

import tensorflow as tf

from tfsky.errors import ConfigError

Precision = Literal["auto", "float32", "mixed_float16", "mixed_bfloat16"]
InferencePrecision = Literal["auto", "float32", "bfloat16", "as_trained"]
StrategyName = Literal["default", "mirrored", "multi_worker"]


BF16_CPU_FLAGS = frozenset({"amx_bf16", "avx512_bf16"})  # /proc/cpuinfo flags of a bfloat16 matrix unit
BF16_OVERRIDE = "TFSKY_CPU_BF16"  # 1 / 0: take the CPU's bfloat16 support as given (tests, odd platforms)


def resolve_precision(name: Precision) -> str:
    """The Keras policy name for ``name``: ``auto`` is mixed_float16 with a GPU, mixed_bfloat16 on a CPU with a
    bfloat16 unit (`cpu_has_bf16`), float32 otherwise."""
    if name != "auto":
        return name
    if tf.config.list_physical_devices("GPU"):
        return "mixed_float16"
    return "mixed_bfloat16" if cpu_has_bf16() else "float32"


def cpu_has_bf16() -> bool:
    """Whether this CPU has a bfloat16 matrix unit, from ``TFSKY_CPU_BF16`` if set, else the CPU flags."""
    override = os.environ.get(BF16_OVERRIDE)
    if override in ("0", "1"):
        return override == "1"
    return bool(BF16_CPU_FLAGS & _cpu_flags())


@functools.cache
def _cpuinfo(path: Path = Path("/proc/cpuinfo")) -> str:
    """The text of ``path`` (empty where there is no such file, e.g. macOS)."""
    try:
        return path.read_text()
    except OSError:
        return ""


def _cpu_flags() -> frozenset[str]:
    return cpu_flags_of(_cpuinfo())


def cpu_flags_of(cpuinfo_text: str) -> frozenset[str]:
    """The ``flags`` line of the first processor in a /proc/cpuinfo text, as a set."""
    return frozenset(_first_field(cpuinfo_text, "flags").split())


def _first_field(cpuinfo_text: str, name: str) -> str:
    for line in cpuinfo_text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == name:
            return value.strip()
    return ""


def cpu_record() -> dict:
    """The CPU a benchmark ran on, for its JSON: a figure compares only with one from the same model and flags
    (bfloat16 is 2-4x faster than float32 with a bfloat16 unit and ~3.5x slower without)."""
    flags = _cpu_flags()
    return {
        "model": _first_field(_cpuinfo(), "model name"),
        "cores": os.cpu_count(),
        "bf16_unit": bool(BF16_CPU_FLAGS & flags),
        "simd_flags": sorted(flag for flag in flags if flag.startswith(("avx", "amx"))),
    }


def for_inference(model: tf.keras.Model, precision: InferencePrecision = "auto") -> tf.keras.Model:
    """``model`` computing in the dtype inference on this machine should use.

    A model trained with mixed precision keeps its float16 (or bfloat16)
    layers when it is loaded: right on a GPU, ~13x slower than float32 on a
    CPU. ``auto`` keeps them when there is a GPU and rebuilds the model in
    float32 without one; ``float32`` always rebuilds, ``as_trained`` never.
    ``bfloat16`` rebuilds every layer in mixed_bfloat16 (float32 weights,
    bfloat16 maths; layers pinned to float32, like the probability head, stay
    float32): for a CPU with a bfloat16 unit, asked for explicitly, since its
    effect on the masks is a property of each model that ``auto`` does not
    assume. Rebuilding loses nothing: mixed-precision weights are stored in
    float32 (the weights of a layer built in plain float16 are widened).
    """
    layers = [module for module in model.submodules if isinstance(module, tf.keras.layers.Layer)]
    if precision == "bfloat16":
        rebuilt = _clone_in(model, "mixed_bfloat16")
    elif precision == "as_trained" or (precision == "auto" and tf.config.list_physical_devices("GPU")):
        return model
    elif any(_computes_in_half(layer) for layer in layers):
        rebuilt = _clone_in(model, "float32")
    else:
        return model
    rebuilt.set_weights(model.get_weights())
    return rebuilt


def _computes_in_half(layer: tf.keras.layers.Layer) -> bool:
    return layer.compute_dtype in ("float16", "bfloat16")


def _clone_in(model: tf.keras.Model, policy: str) -> tf.keras.Model:
    """The same architecture (nested models included) with its computing layers in ``policy``.

    float32: every float16/bfloat16 layer becomes float32. mixed_bfloat16:
    every layer but the inputs and the output layers (the probability head,
    which the training builders pin to float32) computes in bfloat16.
    """
    outputs = {id(layer) for layer in getattr(model, "_output_layers", [])}

    def clone_layer(layer: tf.keras.layers.Layer) -> tf.keras.layers.Layer:
        if isinstance(layer, tf.keras.Model):
            return _clone_in(layer, policy)
        config = layer.get_config()
        if policy == "float32" and _computes_in_half(layer):
            config["dtype"] = "float32"
        elif policy != "float32" and not isinstance(layer, tf.keras.layers.InputLayer) and id(layer) not in outputs:
            config["dtype"] = policy
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
