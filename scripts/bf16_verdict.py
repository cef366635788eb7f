"""bfloat16 against float32 for trained segmenters on their validation batches, and which layers cause the difference.

Per model: the verdict ``precision: auto`` goes by (`tfsky.models.precision.bfloat16_verdict`: mask agreement
at the stored threshold, validation IoU in each precision, ok iff agreement >= 0.999 and |IoU change| < 0.002)
with the whole network in bfloat16, and with ``--keep GROUP`` the same with a group of layers kept in float32
(`tfsky.models.precision.float32_part_layers`: ``encoder``, ``decoder``, ``last-stage``), with that group's share of the
network's multiply-accumulates at the training patch size: what keeping it float32 costs on a CPU with a
bfloat16 unit. The model's sidecar is not written (``tfsky evaluate precision`` does that), so a model may be
read-only. Each run merges one entry (model x group) into ``scripts/results/bf16_verdict.json``; a pass over
30 validation batches of 8 x 192 px takes 2-3 minutes on a 2-core CPU without a bfloat16 unit (emulated).

    python scripts/bf16_verdict.py --model runs/x/20261206-222052/best.keras --set data.cache=cache/x --keep encoder
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import get_args

import numpy as np

import tfsky  # noqa: F401  (Keras 2 mode before TensorFlow)
import tensorflow as tf
from tfsky.config import load_config
from tfsky.io.atomic import write_json
from tfsky.models.bundle import load_model
from tfsky.models.precision import (
    BF16_MAX_IOU_CHANGE,
    BF16_MIN_AGREEMENT,
    FloatPart,
    bfloat16_verdict,
    cpu_record,
    float32_part_layers,
)
from tfsky.train.bfloat16 import validation_batches
from tfsky.train.config import SegmenterConfig

RESULTS = Path(__file__).parent / "results" / "bf16_verdict.json"
GROUPS = ("none", *get_args(FloatPart))


def macs_share(model: tf.keras.Model, layers: list[str], size: int) -> float:
    """Share of the convolutions' multiply-accumulates (one ``size`` px patch) in ``layers``."""
    convs = [layer for layer in model.layers if isinstance(layer, tf.keras.layers.Conv2D)]  # depthwise too
    outputs = tf.keras.Model(model.inputs, [layer.output for layer in convs])(np.zeros((1, size, size, 3), np.float32))
    macs = {
        layer.name: int(np.prod(out.shape[1:3])) * int(np.prod(layer.kernel.shape))
        for layer, out in zip(convs, outputs)
    }
    return sum(macs[name] for name in layers if name in macs) / sum(macs.values())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True, help="best.keras of a trained segmenter")
    parser.add_argument("--config", type=Path, help="its training config (default: config.yaml beside it)")
    parser.add_argument("--set", action="append", default=[], help="config override, e.g. data.cache=...")
    parser.add_argument("--keep", choices=GROUPS, default="none", help="layer group kept in float32")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    cfg = load_config(SegmenterConfig, args.config or args.model.parent / "config.yaml", args.set)
    model, info = load_model(args.model, precision="float32")
    part = None if args.keep == "none" else args.keep
    kept = float32_part_layers(model, part)
    if part and not kept:
        raise SystemExit(f"{args.model}: no decoder_* layers (not a U-Net of segmentation-models)")
    batches = [(images.numpy(), masks.numpy()) for images, masks in validation_batches(cfg)]
    start = time.perf_counter()
    verdict = bfloat16_verdict(model, batches, info.threshold, float32_part=part, fallback=None)
    verdict["seconds"] = round(time.perf_counter() - start, 1)  # float32 and bfloat16 passes
    verdict["iou_change"] = round(verdict["iou_bfloat16"] - verdict["iou_float32"], 5)
    verdict["float32_layers"] = len(kept)
    verdict["float32_share_of_macs"] = round(macs_share(model, kept, cfg.data.patch_size), 4)

    results = json.loads(args.out.read_text()) if args.out.is_file() else {}
    results["rule"] = {"min_agreement": BF16_MIN_AGREEMENT, "max_iou_change": BF16_MAX_IOU_CHANGE}
    results["cpu"] = cpu_record()
    key = "/".join(args.model.resolve().parts[-4:])  # runs/<name>/<stamp>/best.keras
    entry = results.setdefault("models", {}).setdefault(key, {})
    entry.update(
        {
            "name": cfg.name,
            "backbone": cfg.model.backbone,
            "threshold": info.threshold,
            "validation": {"patches": sum(len(images) for images, _ in batches), "size": cfg.data.patch_size},
        }
    )
    entry.setdefault("float32_kept", {})[args.keep] = verdict
    write_json(args.out, results)
    print(args.keep, json.dumps(verdict))


if __name__ == "__main__":
    main()
