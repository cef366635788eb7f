"""Time per 480x450 all-sky frame: the fully convolutional cloud segmenter vs the CloudNet patch classifier.

The FCN is a trained cloud model (``--model``, e.g. ``runs/cloud_wsiseg/<ts>/best.keras``) run as
`tfsky predict` runs it (`TiledSegmenter`, its training tile, 25 % overlap); without ``--model`` a
randomly initialised ResNet18 U-Net of ``configs/cloud_wsiseg.yaml``'s shape is used (same cost).
``--tile 480`` (the default) covers the frame with one reflect-padded 480x480 tile; ``--tile 256`` is
the training tile with 25 % overlap (9 tiles, 2.7x the pixels).
CloudNet (`tfsky.models.cloudnet`, weights irrelevant to its cost) classifies every pixel of the
frame from its 32x32 patch: ``--cloudnet-pixels`` pixels are timed (batches of 4096, warm) and the
time is scaled to all 216 000 pixels of the frame (the cost is linear in the pixel count; the
printed per-pixel times of the batches show it). Both run on a real WSISEG frame, warm, on this CPU.

Usage: python scripts/bench_cloud.py [--model best.keras] [--tile 480] [--runs 5] [--cloudnet-pixels 32768]
       [--out scripts/results/bench_cloud.json]
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
from tfsky.io.images import read_image
from tfsky.models import cloudnet
from tfsky.models.bundle import ModelInfo, save_model
from tfsky.models.segmenter import build_segmenter
from tfsky.predict.segment import TiledSegmenter
from tfsky.tiling import TilingConfig
from tfsky.train.config import SegmenterConfig

REPO = Path(__file__).resolve().parents[1]
FRAME = REPO.parent / "shared" / "data" / "allsky_wsiseg" / "images" / "ASC100-1006_001.png"
BATCH = 4096


def fcn_segmenter(model_path: Path | None, tmp: Path, tiling: TilingConfig) -> TiledSegmenter:
    if model_path is not None:
        return TiledSegmenter.load(model_path, tiling)
    cfg = load_config(SegmenterConfig, REPO / "configs" / "cloud_wsiseg.yaml")
    model = build_segmenter(cfg.model, 3)
    path = tmp / "cloud.keras"
    save_model(model, path, ModelInfo(task="segmenter", preprocess=cfg.data.preprocess,
                                      tile_size=cfg.data.patch_size, classes=2))
    return TiledSegmenter.load(path, tiling)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=None)
    parser.add_argument("--tile", type=int, default=480)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--cloudnet-pixels", type=int, default=8 * BATCH)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "bench_cloud.json")
    args = parser.parse_args()

    image = read_image(FRAME)
    height, width = image.shape[:2]
    with tempfile.TemporaryDirectory() as tmp:
        segmenter = fcn_segmenter(args.model, Path(tmp), TilingConfig(tile=args.tile))
        segmenter.probabilities(image)  # warm-up: trace and first allocation
        fcn_times = []
        for _ in range(args.runs):
            start = time.perf_counter()
            segmenter.probabilities(image)
            fcn_times.append(time.perf_counter() - start)

    model = cloudnet.build_cloudnet()
    forward = cloudnet.compiled_forward(model)
    rng = np.random.default_rng(0)
    picks = rng.choice(height * width, size=args.cloudnet_pixels, replace=False)
    rows, cols = np.divmod(picks, width)
    cloudnet.classify_pixels(model, image, rows[:BATCH], cols[:BATCH], batch=BATCH, forward=forward)  # warm-up
    batch_times = []
    for start_index in range(0, args.cloudnet_pixels, BATCH):
        start = time.perf_counter()
        cloudnet.classify_pixels(model, image, rows[start_index : start_index + BATCH],
                                 cols[start_index : start_index + BATCH], batch=BATCH, forward=forward)
        batch_times.append((time.perf_counter() - start) / len(rows[start_index : start_index + BATCH]))
    per_pixel = statistics.median(batch_times)
    cloudnet_frame = per_pixel * height * width
    fcn_frame = statistics.median(fcn_times)
    result = {
        "frame": str(FRAME.name), "height": height, "width": width,
        "fcn_model": str(args.model) if args.model else "random ResNet18 U-Net (configs/cloud_wsiseg.yaml shape)",
        "fcn_tile": segmenter.tiling.tile, "fcn_seconds_per_frame": fcn_frame, "fcn_runs": fcn_times,
        "cloudnet_seconds_per_pixel": per_pixel, "cloudnet_pixels_timed": args.cloudnet_pixels,
        "cloudnet_seconds_per_frame": cloudnet_frame, "speedup": cloudnet_frame / fcn_frame,
        "cloudnet_per_pixel_by_batch": batch_times, "load_average": os.getloadavg(),
    }  # fmt: skip
    write_json(args.out, result)
    print(f"FCN {fcn_frame:.3f} s/frame, CloudNet {cloudnet_frame:.1f} s/frame "
          f"({per_pixel * 1e6:.1f} us/pixel) -> {cloudnet_frame / fcn_frame:.0f}x; wrote {args.out}")


if __name__ == "__main__":
    main()
