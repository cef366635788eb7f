"""Benchmark segmenter training on CPU: steps/s, images/s and input wait, with and without XLA, per precision.

ResNet34 U-Net, float32, batch 8, 256x256 patches from the real `tf.data`
pipeline (a cache prepared from ../shared/data/sky_ade20k in a temporary
folder). Each step of a Python loop first takes a batch from the pipeline
(the time blocked there is the *input wait*), then runs the compiled Keras
train step (``train_on_batch``). An input-only loop over a fresh pipeline
gives the pipeline's own throughput for comparison. Target: input wait < 5%
of step time.

``precision``: the same loop (no XLA) with the model built and compiled under
each Keras policy of ``--precisions`` (`precision_policy`; mixed_bfloat16 is
what ``precision: auto`` trains in on a CPU with a bfloat16 unit, issue 25),
``speedup`` = float32 s/step / mixed_bfloat16 s/step, and ``loss_scale``:
whether Keras wrapped the optimizer in a `LossScaleOptimizer` (it must not for
bfloat16, whose exponent is float32's). Without a bfloat16 unit (``cpu``) the
bfloat16 maths is emulated and slower: the speed-up is then below 1.

    python scripts/bench_train.py [--steps 10] [--precisions float32,mixed_bfloat16] [--out scripts/results/bench_train.json]
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

import tfsky  # noqa: F401  (Keras 2 mode before TensorFlow)
import tensorflow as tf

from tfsky.data.cache import prepare_cache
from tfsky.data.config import DataConfig, SourceConfig
from tfsky.data.pipeline import segmentation_dataset
from tfsky.io.atomic import write_json
from tfsky.models.losses import make_loss
from tfsky.models.metrics import segmentation_metrics
from tfsky.models.precision import cpu_record, precision_policy, resolve_precision
from tfsky.models.segmenter import SegmenterModelConfig, build_segmenter

BATCH = 8
PATCH = 256
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "sky_ade20k"


def data_config(cache: Path) -> DataConfig:
    source = SourceConfig(kind="mask_folder", name="sky_ade20k", images=SHARED / "images", masks=SHARED / "masks")
    return DataConfig(sources=[source], cache=cache, patch_size=PATCH, patches_per_image=8)


def train_loop(model: tf.keras.Model, dataset: tf.data.Dataset, steps: int, warmup: int) -> dict:
    """Time ``steps`` train steps after ``warmup``; separate the time spent waiting for the next batch."""
    batches = iter(dataset.repeat())
    for _ in range(warmup):
        model.train_on_batch(*next(batches))
    waited = total = 0.0
    for _ in range(steps):
        start = time.perf_counter()
        images, masks = next(batches)
        got_batch = time.perf_counter()
        model.train_on_batch(images, masks)
        end = time.perf_counter()
        waited += got_batch - start
        total += end - start
    return {
        "steps": steps,
        "seconds_per_step": total / steps,
        "steps_per_s": steps / total,
        "images_per_s": steps * BATCH / total,
        "input_wait_fraction": waited / total,
    }


def input_only(dataset: tf.data.Dataset, batches: int) -> dict:
    """Throughput of the pipeline alone (a fresh iterator, first batch excluded)."""
    iterator = iter(dataset.repeat())
    next(iterator)
    start = time.perf_counter()
    for _ in range(batches):
        next(iterator)
    seconds = time.perf_counter() - start
    return {"batches": batches, "batches_per_s": batches / seconds, "images_per_s": batches * BATCH / seconds}


def bench(jit_compile: bool, dataset: tf.data.Dataset, steps: int, warmup: int, precision: str = "float32") -> dict:
    """`train_loop` of a fresh model built and compiled under the Keras policy ``precision``."""
    with precision_policy(precision) as policy:
        model = build_segmenter(SegmenterModelConfig(backbone="resnet34", jit_compile=jit_compile), 3)
        model.compile(
            optimizer=tf.keras.optimizers.Adam(1e-4),
            loss=make_loss("bce_jaccard"),
            metrics=segmentation_metrics(),
            jit_compile=jit_compile,
        )
        start = time.perf_counter()
        result = train_loop(model, dataset, steps, warmup)
    result["wall_seconds_including_warmup"] = time.perf_counter() - start
    result["policy"] = policy
    result["optimizer"] = type(model.optimizer).__name__
    result["loss_scale"] = isinstance(model.optimizer, tf.keras.mixed_precision.LossScaleOptimizer)
    return result


def bench_precisions(precisions: list[str], dataset: tf.data.Dataset, steps: int, warmup: int) -> dict:
    """The train-step loop (no XLA) in each Keras policy of ``precisions``, one after the other, with the speed-up."""
    rows = {name: bench(False, dataset, steps, warmup, name) for name in precisions}
    return {**rows, "speedup": speedup(rows)}


def speedup(rows: dict) -> float | None:
    """float32 s/step over mixed_bfloat16 s/step (> 1: bfloat16 trains faster), rounded to 3 places; None without
    both."""
    if not {"float32", "mixed_bfloat16"} <= set(rows) or not rows["mixed_bfloat16"]["seconds_per_step"]:
        return None
    return round(rows["float32"]["seconds_per_step"] / rows["mixed_bfloat16"]["seconds_per_step"], 3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument(
        "--precisions",
        default="float32,mixed_bfloat16",
        help="Keras policies of the precision section, comma-separated (empty: none).",
    )
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "bench_train.json")
    args = parser.parse_args()
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        cfg = data_config(Path(tmp) / "cache")
        prepare_cache(cfg, progress=False)
        dataset = segmentation_dataset(cfg, "train", BATCH, seed=0)
        results = {
            "setup": f"ResNet34 U-Net, float32, CPU, batch {BATCH}, {PATCH}x{PATCH}, Adam, bce_jaccard, "
            "real tf.data pipeline (sky_ade20k cache, augmentation on); the jit_compile model upsamples "
            "bilinearly (XLA has no nearest-neighbour resize gradient); precision: the no-XLA loop with the model "
            "built and compiled under each Keras policy",
            "input_only": input_only(dataset, 4 * args.steps),
            "no_jit": bench(False, dataset, args.steps, args.warmup),
            "jit_compile": bench(True, dataset, args.steps, args.warmup),
        }
        precisions = [name for name in args.precisions.split(",") if name]
        if precisions:
            results["precision"] = bench_precisions(precisions, dataset, args.steps, args.warmup)
    results["environment"] = {
        "tensorflow": tf.__version__,
        "cpu_count": os.cpu_count(),
        "machine": platform.processor() or platform.machine(),
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
        "precision_auto": resolve_precision("auto"),
        "note": "the CPU was shared with other engineers' jobs during the run; absolute numbers are pessimistic",
    }
    write_json(args.out, {**results, "cpu": cpu_record()})
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
