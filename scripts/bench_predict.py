"""Benchmark `tfsky predict` on a synthetic 8K HDR panorama against pure forward passes and the seed's approach.

Measured in one run, each part in its own process (peak RSS via ``os.wait4``):

1. Overhead: ``tfsky predict`` (overlap 0.25, gaussian window, batches of 8) vs
   pure forward passes of the same model over the same number of tiles in
   batches of the same size, timed BEFORE and AFTER the tiled run and averaged
   (the machine drifts by up to +-15 %). Both start from an untraced
   ``tf.function``. The ratio uses the prediction time the sidecar records; the
   whole process (startup, model load, decode, output files) is reported too.
2. Peak RSS of the whole ``tfsky predict`` process.
3. The seed's approach: ``tf.image.extract_patches`` of all non-overlapping
   patches at once, ``model.predict``, reshape back ("unpatchify"): time, peak
   RSS and seam score (`tfsky.tiling.seam_score`) next to ours.

The image is /work/shared/data/hdr_polyhaven_1k/quarry_01_1k.hdr upscaled with
cv2.resize and written as an uncompressed float32 .tif (the input of all three
measurements); the model is a randomly initialised ResNet34 U-Net (float32)
saved as a tfsky model with 256-pixel tiles and the log preprocessing. The
peak RSS of decoding the same image from a zlib TIFF and a half-float EXR
(`tfsky.io.images.read_image` alone, no TensorFlow) is reported beside it,
because the decoder's temporary memory adds to the peak of ``tfsky predict``.

Usage: python scripts/bench_predict.py [--size 8192x4096] [--out scripts/results/bench_predict.json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import tfsky  # noqa: F401  (Keras 2 mode before TensorFlow is imported)

HERE = Path(__file__).resolve()
SOURCE_HDR = HERE.parents[2] / "shared" / "data" / "hdr_polyhaven_1k" / "quarry_01_1k.hdr"
TILE, OVERLAP, TILE_BATCH = 256, 0.25, 8
DECODED_FORMATS = {"tif": "image.tif", "zlib_tif": "image_zlib.tif", "exr": "image.exr"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="8192x4096", help="WIDTHxHEIGHT of the synthetic image.")
    parser.add_argument("--out", type=Path, default=HERE.parent / "results" / "bench_predict.json")
    parser.add_argument("--workdir", type=Path, help="Keep the image, model and outputs here (default: a temp dir).")
    parser.add_argument("--phase", help=argparse.SUPPRESS)  # internal: run one measured part in this process
    args = parser.parse_args()
    width, height = map(int, args.size.lower().split("x"))
    if args.phase:
        PHASES[args.phase](args.workdir, width, height)
        return
    with tempfile.TemporaryDirectory(prefix="bench_predict.") as temp:
        workdir = args.workdir or Path(temp)
        workdir.mkdir(parents=True, exist_ok=True)
        results = run_all(workdir, width, height)
    from tfsky.io.atomic import write_json

    write_json(args.out, results)
    print(json.dumps(results, indent=2))


def run_all(workdir: Path, width: int, height: int) -> dict:
    """Setup, then pure -> tiled -> pure -> seed, each in a fresh process; returns the results."""
    run_phase("setup", workdir, width, height)
    before = run_phase("pure", workdir, width, height)
    tiled_wall, tiled_rss = measure([
        sys.executable, "-m", "tfsky.cli.main", "predict", "-m", str(workdir / "model.keras"),
        str(workdir / "image.tif"), "-o", str(workdir / "ours"), "--overlap", str(OVERLAP),
        "--tile-batch", str(TILE_BATCH), "--window", "gaussian", "--prob-format", "tif", "--overwrite", "--quiet",
    ])
    after = run_phase("pure", workdir, width, height)
    seed = run_phase("seed", workdir, width, height)
    decoders = {name: run_phase(f"read_{name}", workdir, width, height)["peak_rss_gb"] for name in DECODED_FORMATS}
    sidecar = json.loads((workdir / "ours" / "image.json").read_text())
    pure = (before["seconds"] + after["seconds"]) / 2
    return {
        "note": "shared machine (2 CPU cores used by several engineers at once): timings drift",
        "image": {"width": width, "height": height, "source": SOURCE_HDR.name, "format": "uncompressed float32 .tif"},
        "model": "ResNet34 U-Net, random init, float32, log preprocessing",
        "tiling": {"tile": TILE, "overlap": OVERLAP, "window": "gaussian", "tile_batch": TILE_BATCH,
                   "tiles": sidecar["tiles"]},
        "pure_forward_seconds": {"before": before["seconds"], "after": after["seconds"], "mean": round(pure, 2),
                                 "first_call_with_trace": [before["first_call"], after["first_call"]]},
        "tfsky_predict": {
            "prediction_seconds": sidecar["seconds"],
            "ratio_to_pure_forward": round(sidecar["seconds"] / pure, 4),
            "process_wall_seconds": round(tiled_wall, 2),
            "process_ratio_to_pure_forward": round(tiled_wall / pure, 4),
            "peak_rss_gb": tiled_rss,
            "seam_score": ours_seam(workdir, width, height),
        },
        "pure_forward_peak_rss_gb": before["peak_rss_gb"],
        "decode_only_peak_rss_gb": decoders,
        "seed_extract_patches_unpatchify": {
            "tiles": seed["tiles"],
            "seconds": seed["seconds"],
            "ratio_to_pure_forward_per_tile": round(seed["seconds"] * sidecar["tiles"] / seed["tiles"] / pure, 4),
            "peak_rss_gb": seed["peak_rss_gb"],
            "seam_score": seed["seam_score"],
        },
    }


def run_phase(phase: str, workdir: Path, width: int, height: int) -> dict:
    """Run one phase of this script in a fresh process; returns its JSON result plus its peak RSS."""
    result = workdir / f"{phase}.json"
    result.unlink(missing_ok=True)
    _, rss = measure([sys.executable, str(HERE), "--phase", phase, "--workdir", str(workdir),
                      "--size", f"{width}x{height}"])
    data = json.loads(result.read_text()) if result.exists() else {}
    return dict(data, peak_rss_gb=rss)


def measure(command: list[str]) -> tuple[float, float]:
    """Wall seconds and peak RSS (GB) of a child process; raises if it fails."""
    start = time.perf_counter()
    child = subprocess.Popen(command)
    _, status, usage = os.wait4(child.pid, 0)
    seconds = time.perf_counter() - start
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed with exit code {child.returncode}")
    return seconds, round(usage.ru_maxrss * 1024 / 1e9, 3)  # ru_maxrss is in KiB on Linux


def setup(workdir: Path, width: int, height: int) -> None:
    """Write the upscaled HDR image and the ResNet34 U-Net model."""
    import cv2
    import tifffile

    from tfsky.data.transforms import Preprocess
    from tfsky.io.atomic import atomic_path
    from tfsky.io.images import read_image
    from tfsky.io.writers import write_exr, write_tif
    from tfsky.models.bundle import ModelInfo, save_model
    from tfsky.models.segmenter import SegmenterModelConfig, build_segmenter

    image = cv2.resize(read_image(SOURCE_HDR), (width, height), interpolation=cv2.INTER_LINEAR)
    with atomic_path(workdir / "image.tif") as tmp:
        tifffile.imwrite(tmp, image)  # uncompressed
    write_tif(workdir / "image_zlib.tif", image)
    write_exr(workdir / "image.exr", image)
    model = build_segmenter(SegmenterModelConfig(backbone="resnet34", precision="float32"), in_channels=3)
    info = ModelInfo(task="segmenter", preprocess=Preprocess(mode="log", output_scale=0.25), tile_size=TILE)
    save_model(model, workdir / "model.keras", info)


def pure(workdir: Path, width: int, height: int) -> None:
    """Time a fresh ``tf.function`` of the model over pre-cut, pre-normalised tile batches."""
    import numpy as np
    import tensorflow as tf

    from tfsky.io.images import read_image
    from tfsky.models.bundle import load_model
    from tfsky.tiling import tile_starts

    model, info = load_model(workdir / "model.keras")
    image = read_image(workdir / "image.tif")
    starts_y, starts_x = tile_starts(height, TILE, OVERLAP).numpy(), tile_starts(width, TILE, OVERLAP).numpy()
    tiles = [image[y : y + TILE, x : x + TILE] for y in starts_y for x in starts_x]
    batches = [info.preprocess.apply(np.stack(tiles[i : i + TILE_BATCH])) for i in range(0, len(tiles), TILE_BATCH)]
    count = len(tiles)
    del image, tiles
    spec = tf.TensorSpec([None, None, None, 3], tf.float32)
    forward = tf.function(lambda tiles: model(tiles, training=False), input_signature=[spec])
    start = time.perf_counter()
    forward(batches[0]).numpy()
    first_call = time.perf_counter() - start
    for batch in batches[1:]:
        forward(batch).numpy()
    seconds = time.perf_counter() - start
    _write_result(workdir, "pure", {"seconds": round(seconds, 2), "first_call": round(first_call, 2),
                                    "tiles": count})


def seed(workdir: Path, width: int, height: int) -> None:
    """The seed pipeline: all non-overlapping patches at once, model.predict, reshape back."""
    import tensorflow as tf

    from tfsky.io.images import read_image
    from tfsky.models.bundle import load_model
    from tfsky.tiling import seam_score

    model, info = load_model(workdir / "model.keras")
    image = read_image(workdir / "image.tif")
    start = time.perf_counter()
    normalised = info.preprocess.apply(image[None])
    patches = tf.image.extract_patches(normalised, [1, TILE, TILE, 1], [1, TILE, TILE, 1], [1, 1, 1, 1], "VALID")
    rows, cols = int(patches.shape[1]), int(patches.shape[2])
    patches = tf.reshape(patches, [rows * cols, TILE, TILE, 3])
    probs = model.predict(patches, batch_size=TILE_BATCH, verbose=0)
    prob = probs.reshape(rows, cols, TILE, TILE).transpose(0, 2, 1, 3).reshape(rows * TILE, cols * TILE)
    seconds = time.perf_counter() - start
    _write_result(workdir, "seed", {"seconds": round(seconds, 2), "tiles": rows * cols,
                                    "seam_score": round(seam_score(prob, TILE, 0.0), 4)})


def ours_seam(workdir: Path, width: int, height: int) -> float:
    from tfsky.io.images import read_image
    from tfsky.tiling import seam_score

    prob = read_image(workdir / "ours" / "image_prob.tif", channels=None)[..., 0]
    return round(seam_score(prob, TILE, OVERLAP), 4)


def _write_result(workdir: Path, phase: str, data: dict) -> None:
    from tfsky.io.atomic import write_json

    write_json(workdir / f"{phase}.json", data)


def decode(name: str):
    """A phase that only decodes the image from one file format (no TensorFlow)."""

    def read(workdir: Path, width: int, height: int) -> None:
        from tfsky.io.images import read_image

        read_image(workdir / DECODED_FORMATS[name])

    return read


PHASES = {"setup": setup, "pure": pure, "seed": seed} | {f"read_{name}": decode(name) for name in DECODED_FORMATS}

if __name__ == "__main__":
    main()
