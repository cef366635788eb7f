"""Time per 480x450 all-sky frame: the fully convolutional cloud segmenter vs the CloudNet patch classifier.

The FCN is a trained cloud model (``--model``, e.g. ``runs/cloud_wsiseg/<ts>/best.keras``) run as
`tfsky predict` runs it (`TiledSegmenter.probabilities`: its compiled forward, 25 % overlap, and for a
model trained at a working scale the resize to that scale and the guided-filter refinement back to
480x450); without ``--model`` a randomly initialised ResNet18 U-Net of ``configs/cloud_wsiseg.yaml``'s
shape is used (same cost). ``--tile`` (default: the smallest multiple of 32 that covers the frame at the
model's scale, one reflect-padded tile: 480 at native resolution, 256 at a 224-px working scale).
CloudNet (`tfsky.models.cloudnet`, weights irrelevant to its cost) classifies every pixel of the
frame from its 32x32 patch through one ``tf.function`` (`cloudnet.compiled_forward`, patches cut
included): ``--cloudnet-pixels`` pixels are timed at every batch size of ``--cloudnet-batches``
(warm) and the best batch size's median time per pixel is scaled to all 216 000 pixels of the
frame (the cost is linear in the pixel count). Both run on a real WSISEG frame, warm, on this CPU.
Wall time and process CPU time (all threads) are both recorded: on a machine shared with other jobs
the wall time of each grows with the load, while the CPU seconds a frame costs stay close to the
unloaded figure, so the CPU-time ratio is the fairer comparison there (``load_average`` is recorded).

Usage: python scripts/bench_cloud.py [--model best.keras] [--tile N] [--runs 5] [--cloudnet-pixels 32768]
       [--cloudnet-batches 256,1024,4096,16384] [--out scripts/results/bench_cloud.json]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import tfsky  # noqa: F401  (Keras 2 mode before TensorFlow is imported)

import numpy as np

from tfsky.config import load_config
from tfsky.io.atomic import write_json
from tfsky.models.precision import cpu_record
from tfsky.io.images import read_image
from tfsky.models import cloudnet
from tfsky.models.bundle import ModelInfo, save_model
from tfsky.models.segmenter import build_segmenter
from tfsky.data.config import SIZE_MULTIPLE
from tfsky.data.scale import working_size
from tfsky.models.bundle import load_info
from tfsky.predict.segment import TiledSegmenter
from tfsky.tiling import TilingConfig
from tfsky.train.config import SegmenterConfig

REPO = Path(__file__).resolve().parents[1]
FRAME = REPO.parent / "shared" / "data" / "allsky_wsiseg" / "images" / "ASC100-1006_001.png"
BATCHES = "256,1024,4096,16384"


def fcn_segmenter(model_path: Path | None, tmp: Path, tile: int | None, height: int, width: int) -> TiledSegmenter:
    """The trained model, or a random one of the shipped config's shape and working scale, with ``tile``
    (None: one tile covering the frame at the model's scale)."""
    if model_path is None:
        cfg = load_config(SegmenterConfig, REPO / "configs" / "cloud_wsiseg.yaml")
        model_path = tmp / "cloud.keras"
        save_model(
            build_segmenter(cfg.model, 3),
            model_path,
            ModelInfo(
                task="segmenter",
                preprocess=cfg.data.preprocess,
                tile_size=cfg.data.patch_size,
                classes=2,
                working_scale=cfg.data.working_scale,
            ),
        )
    scale = load_info(model_path).working_scale
    tile = tile or -(-max(working_size(height, width, scale)) // SIZE_MULTIPLE) * SIZE_MULTIPLE
    return TiledSegmenter.load(model_path, TilingConfig(tile=tile))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=None)
    parser.add_argument("--tile", type=int, default=None)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--cloudnet-pixels", type=int, default=32768)
    parser.add_argument("--cloudnet-batches", default=BATCHES)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "bench_cloud.json")
    args = parser.parse_args()

    image = read_image(FRAME)
    height, width = image.shape[:2]
    with tempfile.TemporaryDirectory() as tmp:
        segmenter = fcn_segmenter(args.model, Path(tmp), args.tile, height, width)
        scale = segmenter.info.working_scale
        segmenter.probabilities(image)  # warm-up: trace and first allocation
        fcn_times, fcn_cpu = [], []
        for _ in range(args.runs):
            start, cpu = time.perf_counter(), time.process_time()
            segmenter.probabilities(image)
            fcn_times.append(time.perf_counter() - start)
            fcn_cpu.append(time.process_time() - cpu)

    model = cloudnet.build_cloudnet()
    forward = cloudnet.compiled_forward(model)
    rng = np.random.default_rng(0)
    picks = rng.choice(height * width, size=args.cloudnet_pixels, replace=False)
    rows, cols = np.divmod(picks, width)
    per_pixel_by_batch, cpu_per_pixel_by_batch = {}, {}
    for batch in (int(b) for b in args.cloudnet_batches.split(",")):
        cloudnet.classify_pixels(model, image, rows[:batch], cols[:batch], batch=batch, forward=forward)  # warm-up
        batch_times, batch_cpu = [], []
        for start_index in range(0, args.cloudnet_pixels, batch):
            picked = slice(start_index, start_index + batch)
            start, cpu = time.perf_counter(), time.process_time()
            cloudnet.classify_pixels(model, image, rows[picked], cols[picked], batch=batch, forward=forward)
            batch_times.append((time.perf_counter() - start) / len(rows[picked]))
            batch_cpu.append((time.process_time() - cpu) / len(rows[picked]))
        per_pixel_by_batch[batch] = statistics.median(batch_times)
        cpu_per_pixel_by_batch[batch] = statistics.median(batch_cpu)
    best_batch = min(per_pixel_by_batch, key=per_pixel_by_batch.get)
    per_pixel = per_pixel_by_batch[best_batch]
    cloudnet_frame = per_pixel * height * width
    fcn_frame = statistics.median(fcn_times)
    cpu_best_batch = min(cpu_per_pixel_by_batch, key=cpu_per_pixel_by_batch.get)
    cloudnet_cpu_frame = cpu_per_pixel_by_batch[cpu_best_batch] * height * width
    fcn_cpu_frame = statistics.median(fcn_cpu)
    result = {
        "frame": str(FRAME.name), "height": height, "width": width,
        "fcn_model": str(args.model) if args.model else "random ResNet18 U-Net (configs/cloud_wsiseg.yaml shape)",
        "fcn_working_scale": scale, "fcn_tile": segmenter.tiling.tile, "fcn_seconds_per_frame": fcn_frame,
        "fcn_runs": fcn_times, "cloudnet_seconds_per_pixel": per_pixel, "cloudnet_best_batch": best_batch,
        "cloudnet_pixels_timed": args.cloudnet_pixels, "cloudnet_seconds_per_frame": cloudnet_frame,
        "speedup": cloudnet_frame / fcn_frame, "cloudnet_per_pixel_by_batch_size": per_pixel_by_batch,
        "fcn_cpu_seconds_per_frame": fcn_cpu_frame, "fcn_cpu_runs": fcn_cpu,
        "cloudnet_cpu_seconds_per_frame": cloudnet_cpu_frame, "cloudnet_cpu_best_batch": cpu_best_batch,
        "cloudnet_cpu_per_pixel_by_batch_size": cpu_per_pixel_by_batch,
        "speedup_cpu_time": cloudnet_cpu_frame / fcn_cpu_frame, "load_average": os.getloadavg(),
    }  # fmt: skip
    write_json(args.out, {**result, "cpu": cpu_record()})
    print(
        f"FCN {fcn_frame:.4f} s/frame (tile {segmenter.tiling.tile}, working scale {scale}), CloudNet "
        f"{cloudnet_frame:.1f} s/frame ({per_pixel * 1e6:.1f} us/pixel at batch {best_batch}) -> "
        f"{cloudnet_frame / fcn_frame:.0f}x wall; CPU time {fcn_cpu_frame:.4f} vs {cloudnet_cpu_frame:.1f} s/frame -> "
        f"{cloudnet_cpu_frame / fcn_cpu_frame:.0f}x; load {os.getloadavg()[0]:.1f}; wrote {args.out}"
    )


if __name__ == "__main__":
    main()
