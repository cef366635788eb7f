"""Measure what NumPy's huge-page hint costs here: fresh 8K arrays and the time an 8K prediction spends outside the model.

`import tfsky` turns the hint off (``NUMPY_MADVISE_HUGEPAGE=0``, see `tfsky`); this script switches it
with NumPy's own runtime switch, alternately on and off in one process:

1. ``fresh_array``: make a 4096x8192 float32 array (134 MB, one 8K accumulator), touch every page,
   free it, wait ``--pause`` seconds (freed memory goes back to the host meanwhile), ``--repeat`` times.
2. with ``--model``: predict a real 8192x4096 image (``--image``, e.g. bench_predict's ``image.png``)
   at full resolution with ``tile: auto`` after one warm-up prediction, and split each prediction's
   wall into the model's calls and everything else (cutting tiles, blending, the accumulator).

Usage: python scripts/bench_alloc.py [--model best.keras --image image.png] [--out scripts/results/bench_alloc.json]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import tfsky  # noqa: F401  (Keras 2 mode before TensorFlow is imported)

HERE = Path(__file__).resolve()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--pause", type=float, default=5.0)
    parser.add_argument("--model", type=Path, help="A tfsky segmenter: also time an 8K prediction both ways.")
    parser.add_argument("--image", type=Path, help="The 8K image to predict (with --model).")
    parser.add_argument("--out", type=Path, default=HERE.parent / "results" / "bench_alloc.json")
    args = parser.parse_args()
    import numpy as np

    from tfsky.io.atomic import write_json

    from tfsky.models.precision import cpu_record

    results = {
        "transparent_hugepage": _thp_settings(),
        "load_average_before": os.getloadavg(),
        "fresh_array_seconds": {"hint": [], "no_hint": []},
    }
    for _ in range(args.repeat):
        for name, hint in (("hint", True), ("no_hint", False)):
            np._core.multiarray._set_madvise_hugepage(hint)
            time.sleep(args.pause)
            start = time.perf_counter()
            array = np.zeros((4096, 8192), np.float32)
            array += 1
            results["fresh_array_seconds"][name].append(round(time.perf_counter() - start, 3))
            del array
    if args.model:
        results["prediction"] = _prediction(args.model, args.image, args.repeat)
    np._core.multiarray._set_madvise_hugepage(os.environ.get("NUMPY_MADVISE_HUGEPAGE", "0") != "0")
    write_json(args.out, {**results, "cpu": cpu_record()})
    print(results)


def _prediction(model: Path, image_path: Path, repeat: int) -> dict:
    import numpy as np

    from tfsky.io.images import read_image
    from tfsky.predict.segment import TiledSegmenter
    from tfsky.tiling import TilingConfig

    segmenter = TiledSegmenter.load(model, TilingConfig(resolution="full"))
    image = read_image(image_path)
    forward = segmenter.predict_tiles
    in_model = [0.0]

    def timed(tiles):
        start = time.perf_counter()
        out = np.asarray(forward(tiles))
        in_model[0] += time.perf_counter() - start
        return out

    segmenter.predict_tiles = timed
    segmenter.sky_probability(image)  # warm-up: tracing and every tile shape
    rows = {"hint": [], "no_hint": []}
    for _ in range(repeat):
        for name, hint in (("hint", True), ("no_hint", False)):
            np._core.multiarray._set_madvise_hugepage(hint)
            in_model[0] = 0.0
            start = time.perf_counter()
            segmenter.sky_probability(image)
            wall = time.perf_counter() - start
            rows[name].append({"wall": round(wall, 2), "outside_model": round(wall - in_model[0], 2)})
    return {
        "image": f"{image.shape[1]}x{image.shape[0]}",
        "tile": segmenter.tiling_for(*image.shape[:2]).tile,
        "runs": rows,
        "outside_model_median": {
            name: statistics.median(r["outside_model"] for r in runs) for name, runs in rows.items()
        },
    }


def _thp_settings() -> dict:
    settings = {}
    for name in ("enabled", "defrag"):
        try:
            settings[name] = Path(f"/sys/kernel/mm/transparent_hugepage/{name}").read_text().strip()
        except OSError:
            settings[name] = None
    return settings


if __name__ == "__main__":
    main()
