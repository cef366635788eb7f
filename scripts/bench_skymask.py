"""``tfsky streams skymask`` on a 500-frame 1280x720 webcam stream: frames per second and peak memory.

The stream is synthetic (a fixed scene under changing light, with night, fog
and shifted frames, as the tests' but full size), written as JPEGs and
validated first (``streams validate``, timed apart). The camera mask is then
learnt in a child process, so its peak RSS is the job's alone: a segmenter of
the CPU recipe's working scale (short side 384, 192-px tiles; random weights:
the cost of a model does not depend on its training) with the recipe's
architecture, or ``--architecture tiny`` (sky_tiny's). The RSS is sampled as
frames are fused: a running consensus keeps it flat after the first frames.
Results: ``scripts/results/bench_skymask.json``.

    python scripts/bench_skymask.py [--frames 500] [--architecture recipe|tiny]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results" / "bench_skymask.json"
SIZE = (720, 1280)
ARCHITECTURES = {"recipe": ("resnet34", (256, 128, 64, 32, 16)), "tiny": ("resnet18", (32, 16, 8, 8, 4))}


def make_stream(root: Path, frames: int) -> None:
    """``frames`` JPEGs of one camera: light varies over a day; every 25th is night, every 40th fog, every 30th shifted."""
    import cv2
    import numpy as np

    rng = np.random.default_rng(0)
    height, width = SIZE[0] + 64, SIZE[1] + 64
    rows, cols = np.mgrid[:height, :width]
    sky = rows < 300 + 60 * np.sin(cols / 90.0)
    sky[:, 900:1000] &= rows[:, 900:1000] < 150
    texture = cv2.GaussianBlur(rng.uniform(-60, 60, sky.shape).astype(np.float32), (0, 0), 2)
    scene = np.where(sky[..., None], np.float32([150, 200, 255]), np.float32([110, 100, 40]) + texture[..., None])
    folder = root / "cam"
    folder.mkdir(parents=True)
    for index in range(frames):
        light = 0.15 if index % 25 == 0 else 0.8 + 0.4 * rng.random()
        image = np.clip(scene * light, 0, 255)
        if index % 40 == 1:
            image = 0.25 * image + 0.75 * 200
        shift = 12 if index % 30 == 2 else 0
        view = image[32 : 32 + SIZE[0], 32 + shift : 32 + shift + SIZE[1]].astype(np.uint8)
        stamp = f"2020{1 + index // 28 % 12:02d}{1 + index % 28:02d}_{8 + index % 10:02d}0000"
        cv2.imwrite(str(folder / f"{stamp}_{index:03d}.jpg"), view[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 90])


def rss_mb() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e6


def learn(manifests: Path, architecture: str) -> dict:
    """The child process: build the segmenter, learn the camera mask, report time and memory."""
    import tfsky  # noqa: F401  (Keras 2 mode before TensorFlow)
    from tfsky.data.transforms import Preprocess
    from tfsky.batch import Listener
    from tfsky.models.bundle import ModelInfo
    from tfsky.models.segmenter import SegmenterModelConfig, build_segmenter
    from tfsky.predict.camera_mask import SkyModel, SkymaskConfig, skymask_streams
    from tfsky.predict.segment import TiledSegmenter

    backbone, filters = ARCHITECTURES[architecture]
    model = build_segmenter(SegmenterModelConfig(backbone=backbone, decoder_filters=filters), 3)
    info = ModelInfo(task="segmenter", preprocess=Preprocess(mode="ldr"), tile_size=192, working_scale=384)
    segmenter = TiledSegmenter(model, info)
    samples = {}

    class Sampler(Listener):
        def steps_done(self, done: int, total: int) -> None:
            if done % 50 == 0 or done == total:
                samples[done] = round(rss_mb(), 1)

    before = rss_mb()
    start = time.perf_counter()
    report = skymask_streams(
        [manifests],
        SkyModel(segmenter, f"random {architecture}", architecture),
        SkymaskConfig(min_confidence=0.0),
        listener=Sampler(),
    )
    seconds = time.perf_counter() - start
    facts = json.loads((manifests / "cam" / "camera_mask.json").read_text())
    return {
        "summary": report.summary(),
        "failed": [str(f) for f in report.failed],
        "seconds": round(seconds, 1),
        "frames_used": facts["frames"]["used"],
        "frames_rejected": facts["frames"]["rejected_by_reason"],
        "consensus_grid": facts["consensus_grid"],
        "rss_before_job_mb": round(before, 1),
        "rss_by_frame_mb": samples,
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e6, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=500)
    parser.add_argument("--architecture", choices=sorted(ARCHITECTURES), default="recipe")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--learn", type=Path, help=argparse.SUPPRESS)  # the child process: a manifests folder
    args = parser.parse_args()
    if args.learn:
        print(json.dumps(learn(args.learn, args.architecture)))
        return
    from tfsky.data.streams import StreamsConfig, validate_streams
    from tfsky.io.atomic import write_json
    from tfsky.models.precision import cpu_record

    with tempfile.TemporaryDirectory(prefix="bench_skymask.") as tmp:
        root, manifests = Path(tmp) / "frames", Path(tmp) / "streams"
        make_stream(root, args.frames)
        start = time.perf_counter()
        validate_streams(StreamsConfig(root=root, manifests=manifests))
        validate_seconds = time.perf_counter() - start
        child = subprocess.run(
            [sys.executable, __file__, "--learn", str(manifests), "--architecture", args.architecture],
            capture_output=True,
            text=True,
            check=True,
        )
        job = json.loads(child.stdout.strip().splitlines()[-1])
    result = {
        "frames": args.frames,
        "size": f"{SIZE[1]}x{SIZE[0]}",
        "architecture": args.architecture,
        "validate_seconds": round(validate_seconds, 1),
        **job,
        "frames_per_second": round(args.frames / job["seconds"], 2),
        "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
        "cpus": os.cpu_count(),
    }
    write_json(args.out, {**result, "cpu": cpu_record()})
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
