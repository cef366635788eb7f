"""Working scale + guided refinement vs full-resolution tiling: accuracy on photos, time on a full 8K image.

Both modes run the same trained segmenter (a model trained at a working scale,
e.g. a leave-one-source-out run of configs/sky_ldr_cpu.yaml) in the same
process, each after a warm-up call, so the ratio compares like with like:

1. Accuracy: every image of a labelled folder (the source the model never
   trained on) through ``resolution: working`` (predict at the working scale,
   refine to full size), the same with flip TTA (``flip2``), a multi-scale
   TTA (the refined probabilities at 0.75, 1 and 1.25 x the working scale,
   averaged) and ``resolution: full`` (tiles of the full image); dataset-level
   IoU and seconds per image of each at the model's threshold.
2. Refinement study: the working-scale probabilities of every image computed
   once, then brought to full size by plain bilinear upsampling and by the
   guided filter at each radius x eps of a grid; dataset-level IoU and mean
   3-px boundary F1 of each (this is where `tfsky.predict.refine`'s constants
   come from). Also the same model predicted at 1.5 x its working scale.
3. Time: one image of that folder upscaled to ``--size`` (default 8192x4096,
   cv2 bicubic) through both modes; wall time of ``TiledSegmenter.probabilities``.

Usage: python scripts/bench_scale.py --model runs/.../best.keras --data ../shared/data/sky_cityscapes
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time
from pathlib import Path

import tfsky  # noqa: F401  (Keras 2 mode before TensorFlow is imported)

HERE = Path(__file__).resolve()
MULTI_SCALE = (0.75, 1.0, 1.25)  # working scales averaged by the multi-scale test-time augmentation
REFINE_RADII = (1, 2, 4, 8)  # guided-filter grid of the refinement study (working-scale pixels)
REFINE_EPS = (1e-4, 1e-3, 1e-2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--data", type=Path, required=True, help="images/ + masks/ folder the model never saw")
    parser.add_argument("--size", default="8192x4096", help="WIDTHxHEIGHT of the upscaled timing image")
    parser.add_argument("--limit", type=int, default=0, help="evaluate only the first N images (0 = all)")
    parser.add_argument("--out", type=Path, default=HERE.parent / "results" / "bench_scale.json")
    args = parser.parse_args()

    import cv2
    import numpy as np

    from tfsky.data.masks import confusion, sky_mask, sky_probability
    from tfsky.data.scale import resize_image
    from tfsky.evaluate.metrics import boundary_f1
    from tfsky.io.images import read_image, read_mask
    from tfsky.models.bundle import load_model
    from tfsky.predict.refine import refine
    from tfsky.predict.segment import TiledSegmenter
    from tfsky.tiling import TilingConfig, sliding_window_inference

    model, info = load_model(args.model)
    modes = {mode: TiledSegmenter(model, info, TilingConfig(resolution=mode)) for mode in ("working", "full")}
    flip = TiledSegmenter(model, info, TilingConfig(tta="flip2"))
    scales = [
        TiledSegmenter(model, dataclasses.replace(info, working_scale=round(info.working_scale * factor)))
        for factor in MULTI_SCALE
    ]
    variants = {
        "working": modes["working"].probabilities,
        "working_flip2": flip.probabilities,
        "working_multiscale": lambda image: sum(s.probabilities(image) for s in scales) / len(scales),
        "working_x1.5": TiledSegmenter(
            model, dataclasses.replace(info, working_scale=round(info.working_scale * 1.5))
        ).probabilities,
        "full": modes["full"].probabilities,
    }
    upsamplers = {
        "bilinear": lambda small_probs, small, image: cv2.resize(
            small_probs, image.shape[1::-1], interpolation=cv2.INTER_LINEAR
        )[..., None]
    }
    for radius in REFINE_RADII:
        for eps in REFINE_EPS:
            upsamplers[f"guided_r{radius}_eps{eps:g}"] = lambda small_probs, small, image, r=radius, e=eps: refine(
                small_probs, small, image, r, e
            )
    images = sorted((args.data / "images").iterdir())[: args.limit or None]
    counts = {name: np.zeros(4, np.int64) for name in [*variants, *upsamplers]}
    seconds = {name: 0.0 for name in counts}
    boundaries = {name: [] for name in upsamplers}
    working = modes["working"]
    for path in images:
        image = read_image(path, channels=3)
        truth = read_mask(args.data / "masks" / f"{path.stem}.png") > 0
        for name, probabilities in variants.items():
            start = time.perf_counter()
            sky = sky_mask(sky_probability(probabilities(image)), info.threshold)
            seconds[name] += time.perf_counter() - start
            counts[name] += np.array(confusion(sky, truth))
        small = resize_image(image, working.model_size(*image.shape[:2]))
        small_probs = sliding_window_inference(small, working.predict_tiles, working.tiling)
        for name, upsample in upsamplers.items():
            start = time.perf_counter()
            sky = sky_mask(sky_probability(upsample(small_probs, small, image)), info.threshold)
            seconds[name] += time.perf_counter() - start
            counts[name] += np.array(confusion(sky, truth))
            boundaries[name].append(boundary_f1(sky, truth))
    accuracy = {name: _scores(counts[name], seconds[name], len(images)) for name in variants}
    refinement = {
        name: {
            **_scores(counts[name], seconds[name], len(images)),
            "boundary_f1": round(float(np.mean(boundaries[name])), 4),
        }
        for name in upsamplers
    }

    width, height = map(int, args.size.lower().split("x"))
    big = cv2.resize(read_image(images[0], channels=3), (width, height), interpolation=cv2.INTER_CUBIC)
    timing = {}
    for mode, segmenter in modes.items():
        segmenter.probabilities(big[:512, :512])  # trace the tf.function outside the timing
        start = time.perf_counter()
        segmenter.probabilities(big)
        timing[mode] = {
            "seconds": round(time.perf_counter() - start, 2),
            "tiles": segmenter.tile_count(height, width),
            "model_size": list(segmenter.model_size(height, width)),
        }
    result = {
        "model": str(args.model),
        "working_scale": info.working_scale,
        "tile": modes["working"].tiling.tile,
        "threshold": info.threshold,
        "data": str(args.data),
        "accuracy": accuracy,
        "iou_difference_working_minus_full": round(accuracy["working"]["iou"] - accuracy["full"]["iou"], 4),
        "refinement": refinement,
        "timing_8k": {"size": [height, width], **timing},
        "speedup_8k": round(timing["full"]["seconds"] / timing["working"]["seconds"], 1),
        "load_average": os.getloadavg(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    from tfsky.io.atomic import write_json
    from tfsky.models.precision import cpu_record

    write_json(args.out, {**result, "cpu": cpu_record()})
    print(json.dumps(result, indent=2))


def _scores(counts, seconds: float, images: int) -> dict:
    from tfsky.data.masks import Confusion

    matrix = Confusion(*map(int, counts))
    return {
        "images": images,
        "iou": round(matrix.iou, 4),
        "mcr": round(matrix.mcr, 4),
        "seconds_per_image": round(seconds / max(images, 1), 3),
    }


if __name__ == "__main__":
    main()
