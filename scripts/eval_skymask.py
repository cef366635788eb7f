"""Camera masks learnt from SkyFinder's webcam streams, against SkyFinder's own masks.

Use the segmenter of the leave-SkyFinder-out fold (``scripts/loso.py
--leave-out skyfinder``): the recipe trains on these cameras with these very
masks, so any other model has seen the answer. Per camera:

* ``mask_iou_by_frames``: IoU of the learnt camera mask with SkyFinder's, made
  from 3, 5 and 10 usable frames (fewer when the camera has fewer; the number
  used is stated);
* ``frames``: per frame, the IoU of today's prediction (``own``) and of the
  prediction fused with the camera prior of all usable frames (``fused``,
  `tfsky.predict.camera_mask.CameraPrior`), night frames (``streams validate``
  with no mask, so SkyFinder's mask does not pick the frames) reported apart;
* camera 10917 sees no sky: its false-sky pixels, of the mask and of every frame;
* ``regions_dropped``: the sky regions the region rules removed from each mask
  (`tfsky.data.masks.sky_regions`), and each frame's ``evidence`` terms.

Frames are validated without SkyFinder's mask. Results: ``scripts/results/eval_skymask.json``.

    python scripts/eval_skymask.py --model runs/sky_ldr_cpu-without-skyfinder/.../best.keras
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time
from pathlib import Path

import cv2
import numpy as np

import tfsky  # noqa: F401  (Keras 2 mode before TensorFlow)
from tfsky.data.masks import iou, sky_mask
from tfsky.data.streams import Stream, StreamsConfig, import_tree, validate_stream
from tfsky.errors import InputError
from tfsky.io.atomic import write_json
from tfsky.io.images import read_image, read_mask
from tfsky.models.precision import cpu_record
from tfsky.predict.camera_mask import CameraPrior, SkymaskConfig, SkyModel, learn_camera_mask

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "skyfinder_webcams"
RESULTS = Path(__file__).parent / "results" / "eval_skymask.json"
FRAME_COUNTS = (3, 5, 10)


def with_usable(stream: Stream, count: int) -> Stream:
    """``stream`` keeping only ``count`` of its usable frames, evenly spread in time (the others dropped)."""
    usable = sorted((f for f in stream.frames if f.usable), key=lambda f: f.time)
    if len(usable) > count:
        usable = [usable[round(i * (len(usable) - 1) / max(1, count - 1))] for i in range(count)]
    kept = {f.file for f in usable}
    return dataclasses.replace(stream, frames=[f for f in stream.frames if not f.usable or f.file in kept])


def at_size(mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """A boolean mask at ``shape`` (nearest pixel): SkyFinder's masks are the frames' size, this is a safeguard."""
    if mask.shape == shape:
        return mask
    return cv2.resize(mask.astype(np.uint8), shape[::-1], interpolation=cv2.INTER_NEAREST) > 0


def evaluate_camera(stream: Stream, truth: np.ndarray, model: SkyModel, cfg: SkymaskConfig, threshold: float) -> dict:
    checked = validate_stream(dataclasses.replace(stream, mask=None), StreamsConfig())
    result: dict = {
        "frames_total": len(checked.frames),
        "usable": sum(f.usable for f in checked.frames),
        "mask_iou_by_frames": {},
    }
    learnt = None
    for count in FRAME_COUNTS:
        try:
            learnt = learn_camera_mask(with_usable(checked, count), model, cfg, threshold, where=stream.camera)
        except InputError as err:
            result["mask_iou_by_frames"][count] = {"error": str(err)}
            continue
        truth_here = at_size(truth, learnt.mask.shape)
        result["mask_iou_by_frames"][count] = {
            "frames_used": len(learnt.used),
            "iou": round(iou(learnt.mask, truth_here), 4),
            "false_sky_pixels": int((learnt.mask & ~truth_here).sum()),
            "regions_dropped": learnt.regions_dropped,
        }
    if learnt is None:
        return result
    prior = CameraPrior(learnt.mask, Path(f"{stream.camera} (learnt from {len(learnt.used)} frames)"))
    result["false_sky_pixels"] = int((learnt.mask & ~at_size(truth, learnt.mask.shape)).sum())
    frames = []
    for frame in checked.frames:
        image = read_image(stream.path(frame))
        if image.shape[:2] != learnt.mask.shape:
            continue
        own = model.segmenter.sky_probability(image)
        fused, facts = prior.fuse(image, own, threshold, frame.file)
        truth_here = at_size(truth, own.shape)
        own_mask, fused_mask = sky_mask(own, threshold), sky_mask(fused, threshold)
        frames.append(
            {
                "file": frame.file,
                "night": frame.reason == "night",
                "evidence": facts["evidence"],
                "own_iou": round(iou(own_mask, truth_here), 4),
                "fused_iou": round(iou(fused_mask, truth_here), 4),
                "own_false_sky": int((own_mask & ~truth_here).sum()),
                "fused_false_sky": int((fused_mask & ~truth_here).sum()),
                "sky_disagrees": facts["sky_disagrees"],
            }
        )
    result["frames"] = frames
    for name, night in (("day", False), ("night", True)):
        chosen = [f for f in frames if f["night"] == night]
        if chosen:
            result[name] = {
                "frames": len(chosen),
                "own_iou_mean": round(float(np.mean([f["own_iou"] for f in chosen])), 4),
                "fused_iou_mean": round(float(np.mean([f["fused_iou"] for f in chosen])), 4),
            }
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True, help="the leave-SkyFinder-out fold's segmenter")
    parser.add_argument("--data", type=Path, default=DATA, help="SkyFinder webcams: <cam>/<frames>, <cam>-mask.png")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--min-confidence", type=float, default=SkymaskConfig.min_confidence)
    args = parser.parse_args()
    load_before, start = os.getloadavg(), time.perf_counter()
    model = SkyModel.load(args.model)
    threshold = model.segmenter.mask_threshold()
    cfg = SkymaskConfig(min_confidence=args.min_confidence)
    cameras = {}
    for stream in import_tree(StreamsConfig(root=args.data)).streams:
        truth = read_mask(stream.mask) > 0
        cameras[stream.camera] = evaluate_camera(stream, truth, model, cfg, threshold)
        print(stream.camera, json.dumps({k: v for k, v in cameras[stream.camera].items() if k != "frames"}))
    write_json(
        args.out,
        {
            "model": {"path": str(args.model), "id": model.id},
            "threshold": threshold,
            "skymask": dataclasses.asdict(cfg),
            "cpu": cpu_record(),
            "seconds": round(time.perf_counter() - start, 1),
            "load_average": {"before": load_before, "after": os.getloadavg()},
            "cameras": cameras,
        },
    )
    print(f"-> {args.out}")


if __name__ == "__main__":
    main()
