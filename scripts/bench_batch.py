"""Benchmark the batch engines of `tfsky predict`: local vs Ray Data with 1 and 2 workers, same 8 images.

The images: 4 real webcam frames (/work/shared/data/skyfinder_webcams, 640x480 and 1280x960) and 4 real
HDR panoramas (hdr_polyhaven_1k) tone-mapped to 8 bits and upscaled to 8192x4096 JPEGs. The model: a
randomly initialised ResNet34 U-Net (float32, 256-pixel tiles, LDR preprocessing). Every run is one whole
``tfsky predict --overwrite`` process (start-up, model load, decode, prediction, writing the outputs):

(a) ``--engine local`` with TensorFlow (and oneDNN's OpenMP) limited to ``--threads`` threads;
(b) ``--engine ray --workers 1 --cpus-per-worker THREADS``;
(c) ``--engine ray --workers 2 --cpus-per-worker THREADS``.

The Ray runs start Ray on this machine themselves (no ``--address``), so their time includes Ray's start
(a few seconds): (b) / (a) is the engine's whole overhead as a one-machine user sees it (target <= 1.10).
The masks of (b) and (c) are checked byte for byte against (a). The load average is recorded before and
after: on a shared 2-core machine (c) can only show a speed-up if both cores are otherwise idle.

Usage: python scripts/bench_batch.py [--threads 1] [--size 8192x4096] [--out scripts/results/bench_batch.json]
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
SHARED = HERE.parents[2] / "shared" / "data"
WEBCAMS = [SHARED / "skyfinder_webcams" / camera for camera in ("684", "9730")]
PANORAMAS = ["quarry_01_1k.hdr", "blouberg_sunrise_2_1k.hdr", "royal_esplanade_1k.hdr", "venice_sunset_1k.hdr"]
TILE = 256
ENGINES = {"local": [], "ray_1_worker": ["--engine", "ray", "--workers", "1"],
           "ray_2_workers": ["--engine", "ray", "--workers", "2"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1, help="TensorFlow threads of the local run and per worker.")
    parser.add_argument("--size", default="8192x4096", help="WIDTHxHEIGHT of the upscaled panoramas.")
    parser.add_argument("--out", type=Path, default=HERE.parent / "results" / "bench_batch.json")
    parser.add_argument("--workdir", type=Path, help="Keep images, model and outputs here (default: a temp dir).")
    args = parser.parse_args()
    width, height = map(int, args.size.lower().split("x"))
    with tempfile.TemporaryDirectory(prefix="bench_batch.") as temp:
        workdir = args.workdir or Path(temp)
        workdir.mkdir(parents=True, exist_ok=True)
        images = setup(workdir, width, height)
        results = run_all(workdir, images, args.threads)
    results["panorama_size"] = {"width": width, "height": height}
    from tfsky.io.atomic import write_json

    write_json(args.out, results)
    print(json.dumps(results, indent=2))


def setup(workdir: Path, width: int, height: int) -> Path:
    """The 8 images (webcam frames linked, panoramas upscaled) in ``workdir/images`` and the model."""
    import cv2

    from tfsky.data.transforms import Preprocess
    from tfsky.io.images import read_image
    from tfsky.io.writers import write_jpeg
    from tfsky.models.bundle import ModelInfo, save_model
    from tfsky.models.segmenter import SegmenterModelConfig, build_segmenter
    from tfsky.predict.outputs import display_rgb, hdr_exposure

    images = workdir / "images"
    images.mkdir(exist_ok=True)
    frames = [frame for camera in WEBCAMS for frame in sorted(camera.glob("*.jpg"))[:2]]
    for frame in frames:
        link = images / f"{frame.parent.name}_{frame.name}"
        if not link.exists():
            link.symlink_to(frame)
    for name in PANORAMAS:
        target = images / f"{Path(name).stem}_{width}x{height}.jpg"
        if not target.exists():
            hdr = read_image(SHARED / "hdr_polyhaven_1k" / name)
            ldr = (display_rgb(hdr, hdr_exposure(hdr[::4, ::4])) * 255).round().astype("uint8")
            write_jpeg(target, cv2.resize(ldr, (width, height), interpolation=cv2.INTER_LINEAR))
    if not (workdir / "model.keras").exists():
        model = build_segmenter(SegmenterModelConfig(backbone="resnet34", precision="float32"), in_channels=3)
        save_model(model, workdir / "model.keras", ModelInfo(task="segmenter", preprocess=Preprocess(), tile_size=TILE))
    return images


def run_all(workdir: Path, images: Path, threads: int) -> dict:
    """Each engine once, in the order local, Ray 1 worker, Ray 2 workers; masks compared with the local run."""
    load_before = os.getloadavg()
    from tfsky.ray_engine import thread_limits

    env = dict(os.environ, **thread_limits(threads))  # the local run; Ray workers get the same from the engine
    count = len(list(images.iterdir()))
    runs = {}
    for name, flags in ENGINES.items():
        command = [sys.executable, "-m", "tfsky.cli.main", "predict", "-m", str(workdir / "model.keras"), str(images),
                   "-o", str(workdir / name), "--overwrite", "--quiet", *flags]
        if flags:
            command += ["--cpus-per-worker", str(threads)]
        start = time.perf_counter()
        subprocess.run(command, env=env, check=True)
        seconds = time.perf_counter() - start
        runs[name] = {"seconds": round(seconds, 1), "images_per_second": round(count / seconds, 4),
                      "load_average_after": round(os.getloadavg()[0], 2)}
    return {
        "note": "shared machine (2 CPU cores used by several engineers at once): timings drift with the load",
        "model": "ResNet34 U-Net, random init, float32, 256-px tiles, overlap 0.25, batches of 8",
        "images": count,
        "threads_per_worker": threads,
        "load_average_before": [round(value, 2) for value in load_before],
        "load_average_after": [round(value, 2) for value in os.getloadavg()],
        "runs": runs,
        "ray_1_worker_over_local": round(runs["ray_1_worker"]["seconds"] / runs["local"]["seconds"], 3),
        "ray_2_workers_speed_up_over_1": round(runs["ray_1_worker"]["seconds"] / runs["ray_2_workers"]["seconds"], 3),
        "masks_equal_to_local": {name: masks_equal(workdir / "local", workdir / name) for name in ENGINES if
                                 name != "local"},
    }


def masks_equal(reference: Path, other: Path) -> bool:
    masks = sorted(path.name for path in reference.glob("*_mask.png"))
    return bool(masks) and all((reference / name).read_bytes() == (other / name).read_bytes() for name in masks)


if __name__ == "__main__":
    main()
