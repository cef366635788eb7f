"""Numeric precision and device strategy for training, chosen from config.

``precision: auto`` is the right default everywhere: mixed float16 on a GPU
(Keras then wraps the optimizer in a `LossScaleOptimizer` at compile time, so
small float16 gradients do not underflow), mixed bfloat16 on a CPU with a
bfloat16 matrix unit (AMX-BF16 or AVX512-BF16, which oneDNN uses: 2-4x faster
than float32 there; bfloat16 needs no loss scaling and Keras adds none), and
float32 on any other CPU, where bfloat16 ran ~3.5x *slower* than float32
(MobileNetV2 U-Net forward on a 544-px tile, AVX-512F without BF16) and
float16 ~13x slower. `resolve_precision` is the one place that decides, for
training and (through `for_inference`) for inference, where bfloat16 is used
only for a model whose stored verdict (`bfloat16_verdict`: its masks agree
with float32's on its validation batches) is ok. The policy is read when
layers are *constructed*, so models must be built inside `precision_policy`.

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
from typing import Collection, Iterable, Iterator, Literal, Optional

import numpy as np
import tensorflow as tf

from tfsky.data.masks import SKY_THRESHOLD, sky_mask
from tfsky.errors import ConfigError
from tfsky.models.metrics import IoU
from tfsky.progress import Progress, logger, tracked

Precision = Literal["auto", "float32", "mixed_float16", "mixed_bfloat16"]
InferencePrecision = Literal["auto", "float32", "bfloat16", "as_trained"]
FloatPart = Literal["encoder", "decoder", "last-stage"]  # a part of a U-Net a bfloat16 build may keep in float32
StrategyName = Literal["default", "mirrored", "multi_worker"]


BF16_CPU_FLAGS = frozenset({"amx_bf16", "avx512_bf16"})  # /proc/cpuinfo flags of a bfloat16 matrix unit
BF16_OVERRIDE = "TFSKY_CPU_BF16"  # 1 / 0: take the CPU's bfloat16 support as given (tests, odd platforms)
BF16_MIN_AGREEMENT = 0.999  # share of mask pixels bfloat16 must leave unchanged for `auto` to use it (issue 25)
BF16_MAX_IOU_CHANGE = 0.002  # and the validation IoU must move by less than this
FALLBACK_PART: FloatPart = "encoder"  # kept in float32 when the whole network in bfloat16 fails the verdict


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


def for_inference(
    model: tf.keras.Model, precision: InferencePrecision = "auto", verdict: Optional[dict] = None
) -> tf.keras.Model:
    """``model`` computing in the dtype inference on this machine should use.

    A model trained with mixed precision keeps its float16 (or bfloat16)
    layers when it is loaded: right on a GPU, ~13x slower than float32 on a
    CPU. ``auto`` follows `resolve_precision`: it keeps them on a GPU; on a CPU
    with a bfloat16 unit it computes in bfloat16 when the model's stored
    ``verdict`` (`bfloat16_verdict`) is ok, else in float32, saying why on the
    ``tfsky`` logger, and keeps the part the verdict names (``float32_part``:
    the encoder, where only that build kept the masks) in float32; on any
    other CPU in float32. ``float32`` always rebuilds, ``as_trained`` never.
    ``bfloat16`` rebuilds every layer in mixed_bfloat16 (float32 weights,
    bfloat16 maths; layers pinned to float32, like the probability head, stay
    float32), whatever the verdict. Rebuilding loses nothing: mixed-precision
    weights are stored in float32 (the weights of a layer built in plain
    float16 are widened).
    """
    chosen = inference_precision(precision, verdict)
    layers = [module for module in model.submodules if isinstance(module, tf.keras.layers.Layer)]
    if chosen == "bfloat16":
        return verified_bfloat16(model, verdict if precision == "auto" else None)
    if chosen == "as_trained" or not any(_computes_in_half(layer) for layer in layers):
        return model
    return _rebuilt(model, "float32")


def verified_bfloat16(model: tf.keras.Model, verdict: Optional[dict]) -> tf.keras.Model:
    """``model`` computing in mixed_bfloat16 as its ``verdict`` was measured: with the verdict's ``float32_part``
    in float32 (None: the whole network)."""
    part = verdict.get("float32_part") if isinstance(verdict, dict) else None
    return _rebuilt(model, "mixed_bfloat16", float32_part_layers(model, part))


def inference_precision(precision: InferencePrecision, verdict: Optional[dict]) -> InferencePrecision:
    """``precision`` with ``auto`` resolved for a model with the bfloat16 ``verdict`` on this machine."""
    return auto_for_inference(verdict) if precision == "auto" else precision


def compute_dtype(model: tf.keras.Model) -> str:
    """What ``model`` computes in, as the sidecars of `tfsky predict` record it: ``bfloat16`` or ``float16`` when
    its layers do (a float32 head aside), else ``float32``."""
    dtypes = {module.compute_dtype for module in model.submodules if isinstance(module, tf.keras.layers.Layer)}
    return next((half for half in ("bfloat16", "float16") if half in dtypes), "float32")


def auto_for_inference(verdict: Optional[dict]) -> InferencePrecision:
    """What ``auto`` means for a model with the bfloat16 ``verdict`` on this machine (see `for_inference`)."""
    machine = resolve_precision("auto")
    if machine == "mixed_float16":
        return "as_trained"
    if machine == "float32":
        return "float32"
    chosen: InferencePrecision = "bfloat16" if bfloat16_ok(verdict) else "float32"
    logger("precision").info("precision auto: %s (this CPU has a bfloat16 unit; %s)", chosen, describe_verdict(verdict))
    return chosen


def bfloat16_ok(verdict: Optional[dict]) -> bool:
    """Whether a stored bfloat16 verdict (`bfloat16_verdict`; None: none was measured) lets ``auto`` use bfloat16."""
    return isinstance(verdict, dict) and verdict.get("ok") is True


def describe_verdict(verdict: Optional[dict]) -> str:
    """A stored bfloat16 verdict in words, for the ``auto`` note and ``tfsky evaluate precision``."""
    if not isinstance(verdict, dict) or not {"agreement", "iou_float32", "iou_bfloat16"} <= set(verdict):
        return "the model has no bfloat16 verdict (tfsky evaluate precision measures a segmenter's)"
    change = verdict["iou_bfloat16"] - verdict["iou_float32"]
    figures = (
        f"mask agreement {verdict['agreement']:.5f}, IoU {verdict['iou_float32']:.4f} -> "
        f"{verdict['iou_bfloat16']:.4f} ({change:+.4f})"
    )
    if bfloat16_ok(verdict) and verdict.get("float32_part"):
        whole = verdict.get("whole_network", {})
        failed = f"; the whole network in bfloat16: agreement {whole['agreement']:.5f}" if whole else ""
        return f"its bfloat16 verdict is ok with the {verdict['float32_part']} in float32: {figures}{failed}"
    if bfloat16_ok(verdict):
        return f"its bfloat16 verdict is ok: {figures}"
    return (
        f"its bfloat16 verdict failed: {figures}; needs agreement >= {BF16_MIN_AGREEMENT} and an IoU change "
        f"< {BF16_MAX_IOU_CHANGE}"
    )


def bfloat16_verdict(
    model: tf.keras.Model,
    batches: Iterable,
    threshold: float = SKY_THRESHOLD,
    progress: Optional[Progress] = None,
    float32_part: Optional[FloatPart] = None,
    fallback: Optional[FloatPart] = FALLBACK_PART,
) -> dict:
    """Whether ``model`` keeps its masks when it computes in bfloat16 (`for_inference`), measured on ``batches``.

    bfloat16 keeps 8 mantissa bits, and a trained U-Net moved up to 2.5 % of an
    image's mask pixels with it (issue 25), so ``auto`` trusts it per model, on
    evidence. ``batches`` are ``(images, true masks)`` as the validation split
    gives them (iterable twice: a list or a `tf.data.Dataset`). The float32 and
    bfloat16 masks (the sky cut at ``threshold`` of a one-class model, the
    arg-max class of a softmax head) are compared pixel by pixel
    (``agreement``), and each is scored against the truth with the IoU of
    training (`tfsky.models.metrics.IoU`). ``ok`` when agreement >=
    `BF16_MIN_AGREEMENT` and the IoU changes by less than `BF16_MAX_IOU_CHANGE`.
    ``cpu`` is the CPU measured on: without a bfloat16 unit the same roundings
    are emulated, and accumulation order may differ from a unit's.

    ``float32_part`` (`float32_part_layers`) is kept in float32 in the bfloat16
    build. When the whole network fails, the ``fallback`` part is tried (the
    encoder: in the MobileNetV2 U-Nets the error came from there, and it holds
    ~8 % of the multiply-accumulates, `scripts/bf16_verdict.py`); if that
    build passes, the verdict is its own, with ``float32_part`` naming the
    part `for_inference` keeps and ``whole_network`` the failed attempt.
    """
    verdict = _compared(model, batches, threshold, progress, float32_part)
    if verdict["ok"] or float32_part or not fallback or not float32_part_layers(model, fallback):
        return verdict
    kept = _compared(model, batches, threshold, progress, fallback)
    if not kept["ok"]:
        return verdict
    whole = {key: verdict[key] for key in ("agreement", "iou_bfloat16")}
    return {**kept, "whole_network": whole}


def _compared(
    model: tf.keras.Model,
    batches: Iterable,
    threshold: float,
    progress: Optional[Progress],
    float32_part: Optional[FloatPart],
) -> dict:
    """The verdict of `bfloat16_verdict` for one bfloat16 build (``float32_part`` kept in float32)."""
    reference = for_inference(model, "float32")
    fast = _rebuilt(model, "mixed_bfloat16", float32_part_layers(model, float32_part))
    scores: dict[str, IoU] = {}
    same = pixels = 0
    with tracked(progress, None, "float32 and bfloat16") as progress:
        for images, truth in batches:
            outputs = {"float32": reference(images, training=False), "bfloat16": fast(images, training=False)}
            for name, output in outputs.items():
                scores.setdefault(name, IoU(int(output.shape[-1]), threshold)).update_state(truth, output)
            labels = [_mask_labels(output.numpy(), threshold) for output in outputs.values()]
            same += int(np.count_nonzero(labels[0] == labels[1]))
            pixels += labels[0].size
            progress.advanced()
    if not pixels:
        raise ValueError("no validation batches to measure the bfloat16 verdict on")
    agreement = round(same / pixels, 6)
    iou = {name: round(float(score.result()), 5) for name, score in scores.items()}
    ok = agreement >= BF16_MIN_AGREEMENT and abs(iou["bfloat16"] - iou["float32"]) < BF16_MAX_IOU_CHANGE
    return {
        "agreement": agreement,
        "iou_float32": iou["float32"],
        "iou_bfloat16": iou["bfloat16"],
        "ok": ok,
        "float32_part": float32_part,
        "pixels": pixels,
        "cpu": cpu_record()["model"] or "unknown",
    }


def float32_part_layers(model: tf.keras.Model, part: Optional[FloatPart]) -> list[str]:
    """Names of the layers of ``part`` in an encoder-decoder of segmentation-models (flat, its decoder layers named
    ``decoder_*``): ``encoder``, the layers between the input (and its fixed ``encoder_input`` scaling) and the
    decoder; ``decoder``, the decoder and the head; ``last-stage``, the last decoder stage and the head. Empty for
    no part or a model without ``decoder_*`` layers."""
    names = [layer.name for layer in model.layers]
    decoder = [i for i, name in enumerate(names) if name.startswith("decoder_")]
    if part is None or not decoder:
        return []
    if part == "encoder":
        return names[1 : decoder[0]]
    if part == "decoder":
        return names[decoder[0] :]
    stage = names[decoder[-1]].split("_")[1].rstrip("ab")  # decoder_stage4b_relu -> stage4
    return [name for i, name in enumerate(names) if i > decoder[-1] or name.startswith(f"decoder_{stage}")]


def _mask_labels(probabilities: np.ndarray, threshold: float) -> np.ndarray:
    """Each pixel's predicted class: the sky cut of a one-class output, the arg-max of a softmax."""
    if probabilities.shape[-1] == 1:
        return sky_mask(probabilities[..., 0], threshold)
    return np.argmax(probabilities, axis=-1)


def _computes_in_half(layer: tf.keras.layers.Layer) -> bool:
    return layer.compute_dtype in ("float16", "bfloat16")


def _rebuilt(model: tf.keras.Model, policy: str, float32_layers: Collection[str] = ()) -> tf.keras.Model:
    """`_clone_in` with ``model``'s weights."""
    rebuilt = _clone_in(model, policy, float32_layers)
    rebuilt.set_weights(model.get_weights())
    return rebuilt


def _clone_in(model: tf.keras.Model, policy: str, float32_layers: Collection[str] = ()) -> tf.keras.Model:
    """The same architecture (nested models included) with its computing layers in ``policy``.

    float32: every float16/bfloat16 layer becomes float32. mixed_bfloat16:
    every layer but the inputs, the output layers (the probability head,
    which the training builders pin to float32) and those named in
    ``float32_layers`` (float32: where bfloat16's rounding hurts the masks)
    computes in bfloat16.
    """
    outputs = {id(layer) for layer in getattr(model, "_output_layers", [])}

    def clone_layer(layer: tf.keras.layers.Layer) -> tf.keras.layers.Layer:
        if isinstance(layer, tf.keras.Model):
            return _clone_in(layer, policy, float32_layers)
        config = layer.get_config()
        if (policy == "float32" and _computes_in_half(layer)) or layer.name in float32_layers:
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
