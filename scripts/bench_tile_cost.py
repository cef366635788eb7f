"""Measure what one model call costs by tile shape: resident memory after each stage and seconds per input pixel.

The real segmenter (``--model``) in one process: resident memory (``/proc/self/statm``) after importing
TensorFlow, after loading the model, and after the first call of each tile shape (TensorFlow keeps the
largest call's activations); then, in ``--rounds`` rounds, each shape's per-pixel cost (calls of one
tile repeated for ``--seconds`` seconds). The shapes are those `tile: auto` cuts an 8192x4096 image
into at the default budget (608 px tiles, the last row 64 px and the last column 128 px tall/wide,
their corner), a 576-px tile and its 288-px half row, and the 1024-px tile the benchmarks compare to.

Usage: python scripts/bench_tile_cost.py [--model best.keras] [--out scripts/results/bench_tile_cost.json]
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import tfsky  # noqa: F401  (Keras 2 mode before TensorFlow is imported)

HERE = Path(__file__).resolve()
MODEL = sorted((HERE.parents[1] / "runs" / "sky_ldr_cpu-without-skyfinder").glob("*/best.keras"))[-1:]
SHAPES = ((1024, 1024), (608, 608), (64, 608), (608, 128), (64, 128), (576, 576), (288, 576))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model",
        type=Path,
        default=MODEL[0] if MODEL else None,
        help="A tfsky segmenter (default: the newest leave-SkyFinder-out fold, as bench_predict).",
    )
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--out", type=Path, default=HERE.parent / "results" / "bench_tile_cost.json")
    args = parser.parse_args()
    if args.model is None:
        parser.error("--model: no trained segmenter under runs/sky_ldr_cpu-without-skyfinder/; pass one")
    resident = {"start": _resident_gb()}
    import numpy as np
    import tensorflow as tf  # noqa: F401

    resident["tensorflow_imported"] = _resident_gb()
    from tfsky.io.atomic import write_json
    from tfsky.models.precision import cpu_record
    from tfsky.predict.segment import TiledSegmenter

    segmenter = TiledSegmenter.load(args.model)
    resident["model_loaded"] = _resident_gb()
    tiles = {shape: np.random.default_rng(0).integers(0, 256, (1, *shape, 3), dtype=np.uint8) for shape in SHAPES}
    for shape in sorted(SHAPES, key=lambda s: s[0] * s[1]):  # smallest first: each step is that shape's growth
        segmenter.predict_tiles(tiles[shape]).numpy()
        resident[f"after_first_{shape[0]}x{shape[1]}_call"] = _resident_gb()
    per_pixel = {f"{h}x{w}": [] for h, w in SHAPES}
    for _ in range(args.rounds):
        for h, w in SHAPES:
            calls, start = 0, time.perf_counter()
            while time.perf_counter() - start < args.seconds:
                segmenter.predict_tiles(tiles[(h, w)]).numpy()
                calls += 1
            per_pixel[f"{h}x{w}"].append(round((time.perf_counter() - start) / calls / (h * w) * 1e6, 3))
    results = {
        "model": str(args.model),
        "load_average_before": os.getloadavg(),
        "resident_gb": resident,
        "microseconds_per_pixel": per_pixel,
    }
    write_json(args.out, {**results, "cpu": cpu_record()})
    print(results)


def _resident_gb() -> float:
    return round(int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e9, 3)


if __name__ == "__main__":
    main()
