"""Benchmark the batch engines of `tfsky predict`: local vs Ray Data with 1 and 2 workers, same 8 images.

The images: 4 real webcam frames (/work/shared/data/skyfinder_webcams, 640x480 and 1280x960) and 4 real
HDR panoramas (hdr_polyhaven_1k) tone-mapped to 8 bits and upscaled to 8192x4096 JPEGs. The model: a
randomly initialised ResNet34 U-Net (float32, ``tile: auto``, LDR preprocessing), or a trained one
(``--model``); it predicts at ``--precision`` (default ``auto``: bfloat16 on a CPU with a bfloat16 unit for a
model whose stored bfloat16 verdict passed, issue 25; a random model has none, so float32) and
``--resolution`` (default ``full``: tiles of the full image). Every run is one whole
``tfsky predict --overwrite`` process (start-up, model load, decode, prediction, writing the outputs):

(a) ``--engine local`` with TensorFlow (and oneDNN's OpenMP) limited to ``--threads`` threads;
(b) ``--engine ray --workers 1 --cpus-per-worker THREADS``;
(c) ``--engine ray --workers 2 --cpus-per-worker THREADS``.

The Ray runs start Ray on this machine themselves (no ``--address``), so their time includes Ray's start
(a few seconds): (b) / (a) is the engine's whole overhead as a one-machine user sees it (target <= 1.10).
The masks of (b) and (c) are checked byte for byte against (a).

A shared machine's load drifts by minutes, so one run per engine compares moments, not engines. The
engines run in ``--rounds`` rounds, each in a rotated order (a b c, b c a, c a b, ...), and each engine is
summarised by its medians over the rounds: wall time, the model time its sidecars record (``seconds``: the
tiled prediction alone) summed over the images of a run, and that per image. The first ratio includes everything the engine
adds (start-up, Ray, scheduling, decode and encode in the workers); the second shows whether the work
itself ran slower. The 1-minute load average is recorded before and after every run.

Usage: python scripts/bench_batch.py [--threads 1] [--size 8192x4096] [--rounds 3]
       [--model runs/<name>/<ts>/best.keras] [--precision auto] [--resolution full]
       [--out scripts/results/bench_batch.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
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
ENGINES = {
    "local": [],
    "ray_1_worker": ["--engine", "ray", "--workers", "1"],
    "ray_2_workers": ["--engine", "ray", "--workers", "2"],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1, help="TensorFlow threads of the local run and per worker.")
    parser.add_argument("--size", default="8192x4096", help="WIDTHxHEIGHT of the upscaled panoramas.")
    parser.add_argument("--rounds", type=int, default=3, help="Runs of each engine, interleaved (median reported).")
    parser.add_argument("--out", type=Path, default=HERE.parent / "results" / "bench_batch.json")
    parser.add_argument("--workdir", type=Path, help="Keep images, model and outputs here (default: a temp dir).")
    parser.add_argument("--model", type=Path, help="A trained tfsky segmenter (default: a random ResNet34 U-Net).")
    parser.add_argument("--precision", default="auto", help="tfsky predict --precision of every run.")
    parser.add_argument("--resolution", default="full", help="tfsky predict --resolution of every run.")
    args = parser.parse_args()
    flags = ["--precision", args.precision, "--resolution", args.resolution]
    width, height = map(int, args.size.lower().split("x"))
    with tempfile.TemporaryDirectory(prefix="bench_batch.") as temp:
        workdir = args.workdir or Path(temp)
        workdir.mkdir(parents=True, exist_ok=True)
        images = setup(workdir, width, height)
        model = args.model or random_model(workdir)
        results = run_all(workdir, model, images, args.threads, args.rounds, flags)
    results["panorama_size"] = {"width": width, "height": height}
    from tfsky.io.atomic import write_json
    from tfsky.models.precision import cpu_record

    write_json(args.out, {**results, "cpu": cpu_record()})
    print(json.dumps(results, indent=2))


def setup(workdir: Path, width: int, height: int) -> Path:
    """The 8 images (webcam frames linked, panoramas upscaled) in ``workdir/images``."""
    import cv2

    from tfsky.io.images import read_image
    from tfsky.io.writers import write_jpeg
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
    return images


def random_model(workdir: Path) -> Path:
    """``workdir/model.keras``: a randomly initialised float32 ResNet34 U-Net (the default subject)."""
    from tfsky.data.transforms import Preprocess
    from tfsky.models.bundle import ModelInfo, save_model
    from tfsky.models.segmenter import SegmenterModelConfig, build_segmenter

    path = workdir / "model.keras"
    if not path.exists():
        model = build_segmenter(SegmenterModelConfig(backbone="resnet34", precision="float32"), in_channels=3)
        save_model(model, path, ModelInfo(task="segmenter", preprocess=Preprocess(), tile_size=TILE))
    return path


def run_all(workdir: Path, model: Path, images: Path, threads: int, rounds: int, flags: list[str]) -> dict:
    """Every engine once per round, in a rotated order; medians per engine; masks compared with the local run."""
    load_before = os.getloadavg()
    names = list(ENGINES)
    count = len(list(images.iterdir()))
    runs: dict[str, list[dict]] = {name: [] for name in names}
    for round_number in range(rounds):
        shift = round_number % len(names)
        for name in names[shift:] + names[:shift]:
            runs[name].append(run_once(workdir, model, images, name, threads, flags))
            print(f"round {round_number + 1} {name}: {runs[name][-1]}", file=sys.stderr, flush=True)
    summary = {name: summarise(runs[name], count) for name in names}
    return {
        "note": "shared machine (2 CPU cores used by several engineers at once): timings drift with the load",
        "model": str(model) if model != workdir / "model.keras" else "ResNet34 U-Net, random init, float32",
        "predict_flags": flags,
        "tiling": "tile auto at the default budget (see each run's tiling)",
        "images": count,
        "threads_per_worker": threads,
        "rounds": rounds,
        "load_average_before": [round(value, 2) for value in load_before],
        "load_average_after": [round(value, 2) for value in os.getloadavg()],
        "engines": summary,
        "ray_1_worker_over_local_wall": ratio(summary, "ray_1_worker", "local", "median_seconds"),
        "ray_1_worker_over_local_model_time": ratio(summary, "ray_1_worker", "local", "median_model_seconds_per_run"),
        "ray_2_workers_speed_up_over_1": ratio(summary, "ray_1_worker", "ray_2_workers", "median_seconds"),
        "masks_equal_to_local": {
            name: masks_equal(workdir / "local", workdir / name) for name in names if name != "local"
        },
        "runs": runs,
    }


def run_once(workdir: Path, model: Path, images: Path, name: str, threads: int, flags: list[str]) -> dict:
    """One whole ``tfsky predict --overwrite`` process of engine ``name``: wall time, model times, precision, load."""
    from tfsky.batch.ray_engine import thread_limits

    env = dict(os.environ, **thread_limits(threads))  # the local run; Ray workers get the same from the engine
    engine = ENGINES[name]
    command = [
        sys.executable,
        "-m",
        "tfsky.cli.main",
        "predict",
        "-m",
        str(model),
        str(images),
        "-o",
        str(workdir / name),
        "--overwrite",
        "--quiet",
        *flags,
        *engine,
    ]
    if engine:
        command += ["--cpus-per-worker", str(threads)]
    load = os.getloadavg()[0]
    start = time.perf_counter()
    subprocess.run(command, env=env, check=True)
    seconds = time.perf_counter() - start
    sidecars = [json.loads(path.read_text()) for path in (workdir / name).glob("*.json")]
    model_seconds = sorted(sidecar["seconds"] for sidecar in sidecars)
    tiles = sorted(
        {
            f"{s['width']}x{s['height']}: tile {s['tile']}, overlap {round(s['overlap'] * s['tile'])} px, "
            f"{s['tile_batch']} per call"
            for s in sidecars
        }
    )
    return {
        "seconds": round(seconds, 1),
        "model_seconds": model_seconds,
        "precision": sorted({sidecar["precision"] for sidecar in sidecars}),
        "tiling": tiles,
        "load_average_before": round(load, 2),
        "load_average_after": round(os.getloadavg()[0], 2),
    }


def summarise(runs: list[dict], count: int) -> dict:
    """Medians over the rounds: wall time (and images/s from it), and the per-image model time of all runs."""
    median_seconds = statistics.median(run["seconds"] for run in runs)
    return {
        "median_seconds": round(median_seconds, 1),
        "images_per_second": round(count / median_seconds, 4),
        "median_model_seconds_per_image": round(
            statistics.median(value for run in runs for value in run["model_seconds"]), 3
        ),
        "median_model_seconds_per_run": round(statistics.median(sum(run["model_seconds"]) for run in runs), 1),
        "seconds_per_round": [run["seconds"] for run in runs],
    }


def ratio(summary: dict, top: str, bottom: str, key: str) -> float:
    return round(summary[top][key] / summary[bottom][key], 3)


def masks_equal(reference: Path, other: Path) -> bool:
    masks = sorted(path.name for path in reference.glob("*_mask.png"))
    return bool(masks) and all((reference / name).read_bytes() == (other / name).read_bytes() for name in masks)


if __name__ == "__main__":
    main()
