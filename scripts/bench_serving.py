"""Benchmark one 512x512 request: in-memory Keras vs the exported SavedModel vs the dev server over gRPC.

The model is a randomly initialised ResNet34 U-Net (float32), saved as a tfsky
model and exported with ``tfsky.export.export_model``. Three ways of computing
the same [1, 512, 512, 3] -> [1, 512, 512, 1] prediction are timed, warm,
interleaved round by round so machine drift hits all of them alike:

1. ``keras``: the in-memory model in a ``tf.function`` with a fixed input
   signature (how `tfsky.predict.segment.TiledSegmenter` calls it);
2. ``savedmodel``: the ``serving_default`` signature of the loaded export
   (target: ratio to keras <= 1.05);
3. ``grpc``: `tfsky.serving.Client.predict_tiles` against `tfsky.serving.DevServer`
   on loopback (serialisation + gRPC + server overhead, reported in ms).

Usage: python scripts/bench_serving.py [--runs 15] [--out scripts/results/bench_serving.json]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import tfsky  # noqa: F401  (Keras 2 mode before TensorFlow is imported)

import numpy as np
import tensorflow as tf

from tfsky.data.transforms import Preprocess
from tfsky.export import export_model
from tfsky.io.atomic import write_json
from tfsky.models.precision import cpu_record
from tfsky.models.bundle import ModelInfo, save_model
from tfsky.models.segmenter import SegmenterModelConfig, build_segmenter
from tfsky.serving import Client, DevServer

SIZE, WARMUP = 512, 3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "bench_serving.json")
    args = parser.parse_args()

    tiles = np.random.default_rng(0).random((1, SIZE, SIZE, 3), dtype=np.float32)
    model = build_segmenter(SegmenterModelConfig(backbone="resnet34", precision="float32"), 3)
    keras_call = tf.function(
        lambda x: model(x, training=False), input_signature=[tf.TensorSpec([None, None, None, 3], tf.float32)]
    )
    with tempfile.TemporaryDirectory() as tmp:
        model_path = Path(tmp) / "resnet34_unet.keras"
        save_model(model, model_path, ModelInfo(task="segmenter", preprocess=Preprocess(), tile_size=SIZE))
        version_dir = export_model(model_path, Path(tmp) / "models", "bench")
        serving_default = tf.saved_model.load(str(version_dir)).signatures["serving_default"]
        with DevServer(Path(tmp) / "models", grpc_port=0, rest_port=0, poll_seconds=60) as server:
            with Client(f"127.0.0.1:{server.grpc_port}", timeout=120) as client:
                calls = {
                    "keras": lambda: keras_call(tiles).numpy(),
                    "savedmodel": lambda: serving_default(tiles=tf.constant(tiles))["probabilities"].numpy(),
                    "grpc": lambda: client.predict_tiles("bench", tiles),
                }
                check_same_output(calls)
                medians = time_interleaved(calls, args.runs)

    result = {
        "what": "median latency of one [1, 512, 512, 3] float32 request, ResNet34 U-Net (random init, float32), warm",
        "machine": "shared 2-core CPU, no GPU, other engineers' jobs running concurrently: absolute times are noisy, "
        "ratios are measured with interleaved runs",
        "runs": args.runs,
        "keras_ms": medians["keras"],
        "savedmodel_ms": medians["savedmodel"],
        "savedmodel_over_keras": round(medians["savedmodel"] / medians["keras"], 3),
        "target_savedmodel_over_keras": 1.05,
        "grpc_dev_server_ms": medians["grpc"],
        "grpc_overhead_ms": round(medians["grpc"] - medians["savedmodel"], 1),
        "grpc_over_savedmodel": round(medians["grpc"] / medians["savedmodel"], 3),
    }
    write_json(args.out, {**result, "cpu": cpu_record()})
    print(result)


def check_same_output(calls) -> None:
    """All three paths compute the same probabilities (a benchmark of different work would be meaningless)."""
    outputs = {name: np.asarray(call()) for name, call in calls.items()}
    for name, output in outputs.items():
        np.testing.assert_allclose(output, outputs["keras"], atol=1e-5, err_msg=name)


def time_interleaved(calls, runs: int) -> dict[str, float]:
    """Median milliseconds per call, after `WARMUP` untimed calls each, alternating between the calls."""
    for call in calls.values():
        for _ in range(WARMUP):
            call()
    times = {name: [] for name in calls}
    for _ in range(runs):
        for name, call in calls.items():
            start = time.perf_counter()
            call()
            times[name].append(time.perf_counter() - start)
    return {name: round(1e3 * statistics.median(values), 1) for name, values in times.items()}


if __name__ == "__main__":
    main()
