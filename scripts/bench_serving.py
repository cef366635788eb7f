"""Benchmark one 512x512 request: in-memory Keras vs the exported SavedModel vs the dev server over gRPC.

By default the model is a randomly initialised ResNet34 U-Net (float32), saved
as a tfsky model; ``--model`` takes a trained one instead. It is exported with
``tfsky.export.export_model`` at each of ``--export-precisions`` (``float32``;
``bfloat16`` needs a trained model whose stored bfloat16 verdict passed, issue
25), and the same [1, 512, 512, 3] -> [1, 512, 512, 1] prediction is timed,
warm, interleaved round by round so machine drift hits all of them alike:

1. ``keras``: the in-memory float32 model in a ``tf.function`` with a fixed
   input signature (how `tfsky.predict.segment.TiledSegmenter` calls it);
2. ``savedmodel_<precision>``: the ``serving_default`` signature of the loaded
   export (target for float32: ratio to keras <= 1.05);
3. ``grpc_<precision>``: `tfsky.serving.Client.predict_tiles` against
   `tfsky.serving.DevServer` on loopback (serialisation + gRPC + server
   overhead, reported in ms).

The request is a real photo resized to 512x512 when a trained model is given
(random pixels otherwise). Each non-float32 export is also scored against the
float32 export on ``--agreement-images`` photos of ``../shared/data/sky_ade20k``
resized to 512x512: mask agreement at the model's threshold and the largest
probability change, with its speed-up over the float32 export in the same run.

Usage: python scripts/bench_serving.py [--runs 15] [--model runs/<name>/<ts>/best.keras]
       [--export-precisions float32,bfloat16] [--out scripts/results/bench_serving.json]
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
from tfsky.models.bundle import ModelInfo, load_model, save_model
from tfsky.models.segmenter import SegmenterModelConfig, build_segmenter
from tfsky.serving import Client, DevServer

SIZE, WARMUP = 512, 3
PHOTOS = Path(__file__).resolve().parents[2] / "shared" / "data" / "sky_ade20k" / "images"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--model", type=Path, help="A trained tfsky segmenter (default: a random ResNet34 U-Net).")
    parser.add_argument("--export-precisions", default="float32", help="Comma-separated export.precision values.")
    parser.add_argument("--agreement-images", type=int, default=8)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "bench_serving.json")
    args = parser.parse_args()
    precisions = args.export_precisions.split(",")
    if "float32" not in precisions:
        parser.error("--export-precisions must include float32 (the reference)")

    with tempfile.TemporaryDirectory() as tmp:
        model_path = args.model or save_random_model(Path(tmp) / "resnet34_unet.keras")
        model, info = load_model(model_path, precision="float32")
        tiles = photo_tiles(1, info.preprocess) if args.model else random_tiles()
        keras_call = tf.function(
            lambda x: model(x, training=False), input_signature=[tf.TensorSpec([None, None, None, 3], tf.float32)]
        )
        signatures = {
            precision: tf.saved_model.load(
                str(export_model(model_path, Path(tmp) / "models", f"bench_{precision}", precision=precision))
            ).signatures["serving_default"]
            for precision in precisions
        }
        with DevServer(Path(tmp) / "models", grpc_port=0, rest_port=0, poll_seconds=60) as server:
            with Client(f"127.0.0.1:{server.grpc_port}", timeout=120) as client:
                calls = {"keras": lambda: keras_call(tiles).numpy()}
                for precision, signature in signatures.items():
                    calls[f"savedmodel_{precision}"] = bound_signature(signature, tiles)
                    calls[f"grpc_{precision}"] = bound_client(client, f"bench_{precision}", tiles)
                check_same_output({name: call for name, call in calls.items() if name.endswith(("keras", "float32"))})
                medians = time_interleaved(calls, args.runs)
        agreement = {
            precision: agreement_with_float32(signatures, precision, info, args.agreement_images)
            for precision in precisions
            if precision != "float32"
        }

    result = {
        "what": "median latency of one [1, 512, 512, 3] float32 request, warm, per export precision",
        "model": str(args.model) if args.model else "ResNet34 U-Net, random init, float32",
        "request": "a real photo resized to 512x512" if args.model else "random pixels",
        "machine": "shared 2-core CPU, no GPU: absolute times drift with the load, ratios are measured with "
        "interleaved runs",
        "runs": args.runs,
        "keras_ms": medians["keras"],
        "savedmodel_ms": medians["savedmodel_float32"],
        "savedmodel_over_keras": round(medians["savedmodel_float32"] / medians["keras"], 3),
        "target_savedmodel_over_keras": 1.05,
        "grpc_dev_server_ms": medians["grpc_float32"],
        "grpc_overhead_ms": round(medians["grpc_float32"] - medians["savedmodel_float32"], 1),
        "grpc_over_savedmodel": round(medians["grpc_float32"] / medians["savedmodel_float32"], 3),
        "export_precisions": {
            precision: {
                "savedmodel_ms": medians[f"savedmodel_{precision}"],
                "grpc_dev_server_ms": medians[f"grpc_{precision}"],
                "speedup_over_float32_savedmodel": round(
                    medians["savedmodel_float32"] / medians[f"savedmodel_{precision}"], 3
                ),
                **agreement.get(precision, {}),
            }
            for precision in precisions
        },
    }
    write_json(args.out, {**result, "cpu": cpu_record()})
    print(result)


def save_random_model(path: Path) -> Path:
    """A randomly initialised float32 ResNet34 U-Net saved as a tfsky segmenter (the default subject)."""
    model = build_segmenter(SegmenterModelConfig(backbone="resnet34", precision="float32"), 3)
    save_model(model, path, ModelInfo(task="segmenter", preprocess=Preprocess(), tile_size=SIZE))
    return path


def random_tiles() -> np.ndarray:
    return np.random.default_rng(0).random((1, SIZE, SIZE, 3), dtype=np.float32)


def photo_tiles(count: int, preprocess: Preprocess) -> np.ndarray:
    """The first ``count`` ADE20K photos resized to SIZE x SIZE and normalised as the model expects."""
    import cv2

    from tfsky.io.images import read_image

    photos = sorted(PHOTOS.glob("*.jpg"))[:count]
    resized = [cv2.resize(read_image(path), (SIZE, SIZE), interpolation=cv2.INTER_AREA) for path in photos]
    return np.stack([preprocess.apply(image).numpy() for image in resized])


def bound_signature(signature, tiles: np.ndarray):
    return lambda: signature(tiles=tf.constant(tiles))["probabilities"].numpy()


def bound_client(client: Client, name: str, tiles: np.ndarray):
    return lambda: client.predict_tiles(name, tiles)


def agreement_with_float32(signatures: dict, precision: str, info: ModelInfo, count: int) -> dict:
    """Mask agreement at the model's threshold and the largest probability change of an export against float32."""
    agree, largest = [], 0.0
    for tile in photo_tiles(count, info.preprocess):
        batch = tf.constant(tile[None])
        reference = signatures["float32"](tiles=batch)["probabilities"].numpy()
        other = signatures[precision](tiles=batch)["probabilities"].numpy()
        agree.append(float(np.mean((reference >= info.threshold) == (other >= info.threshold))))
        largest = max(largest, float(np.abs(reference - other).max()))
    return {
        "images": len(agree),
        "threshold": info.threshold,
        "mask_agreement_mean": round(float(np.mean(agree)), 6),
        "mask_agreement_min": round(min(agree), 6),
        "largest_probability_change": round(largest, 4),
    }


def check_same_output(calls) -> None:
    """The float32 paths compute the same probabilities (a benchmark of different work would be meaningless)."""
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
