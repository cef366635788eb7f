"""Where a sky segmenter's errors lie on a labelled set: at the edge of real sky, or sky invented elsewhere.

The leave-one-source-out folds (`scripts/loso.py`) give one IoU per source; this
splits its errors, dataset-level, to say which lever could move it (issue 31).
The masks are those of `tfsky evaluate segmenter` (working scale + refinement,
the model's training tile, ``--threshold``, ``--drop-enclosed``). False sky is
split by the connected region of the predicted mask it lies in: a region that
also holds true sky (the sky reaches too far: edges, sky seen through foliage
that the labels call something else) or one that holds none (sky invented: a
road, a wall). It is also counted within ``--near`` px of true sky, and as
*bright*: at least as bright (Rec.709 luma) as the 10th percentile of the
image's own true sky; missed sky as *dark* when below it. Results merge into
``scripts/results/sky_error_anatomy.json`` under ``--name``.

    python scripts/sky_error_anatomy.py --model runs/<fold>/<ts>/best.keras \\
        --data ../shared/data/sky_cityscapes --name cityscapes-fold [--threshold 0.5] [--drop-enclosed]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import tfsky  # noqa: F401  (Keras 2 mode before TensorFlow is imported)

import cv2
import numpy as np

RESULTS = Path(__file__).parent / "results" / "sky_error_anatomy.json"
LUMA = np.array([0.2126, 0.7152, 0.0722], np.float32)
COUNTS = ("truth", "hit", "false", "false_in_sky_regions", "false_near_sky", "false_bright", "missed", "missed_dark")


def error_counts(mask: np.ndarray, truth: np.ndarray, image: np.ndarray, near: int) -> dict[str, int]:
    """Pixel counts of one image's hits, false and missed sky, and the false / missed sky split as the module says."""
    regions, labels = cv2.connectedComponents(mask.astype(np.uint8), connectivity=8)
    holds_sky = np.zeros(regions, bool)
    holds_sky[np.unique(labels[mask & truth])] = True
    holds_sky[0] = False  # label 0 is the background, never a sky region
    false, missed = mask & ~truth, truth & ~mask
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * near + 1, 2 * near + 1))
    near_sky = cv2.dilate(truth.astype(np.uint8), kernel) > 0
    luma = image[..., :3].astype(np.float32) @ LUMA
    floor = np.percentile(luma[truth], 10) if truth.any() else np.inf
    return {
        "truth": int(truth.sum()),
        "hit": int((mask & truth).sum()),
        "false": int(false.sum()),
        "false_in_sky_regions": int((false & holds_sky[labels]).sum()),
        "false_near_sky": int((false & near_sky).sum()),
        "false_bright": int((false & (luma >= floor)).sum()),
        "missed": int(missed.sum()),
        "missed_dark": int((missed & (luma < floor)).sum()),
    }


def summary(totals: dict[str, int]) -> dict[str, float]:
    """Dataset-level IoU, the shares of each split, and the IoU without the sky invented away from real sky."""
    false = max(totals["false"], 1)
    apart = totals["false"] - totals["false_in_sky_regions"]
    return {
        "iou": totals["hit"] / max(totals["hit"] + totals["false"] + totals["missed"], 1),
        "false_share_of_errors": totals["false"] / max(totals["false"] + totals["missed"], 1),
        "false_in_sky_regions_share": totals["false_in_sky_regions"] / false,
        "false_near_sky_share": totals["false_near_sky"] / false,
        "false_bright_share": totals["false_bright"] / false,
        "missed_dark_share": totals["missed_dark"] / max(totals["missed"], 1),
        "iou_without_invented_sky": totals["hit"] / max(totals["hit"] + totals["false"] - apart + totals["missed"], 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--data", type=Path, required=True, help="A mask folder or prepared cache.")
    parser.add_argument("--split", default="val", help="Split of a prepared cache.")
    parser.add_argument("--name", required=True, help="Key of this run in the results file.")
    parser.add_argument("--threshold", type=float, default=0.5)
    parser.add_argument("--drop-enclosed", action="store_true")
    parser.add_argument("--near", type=int, default=32, help="Pixels (full resolution) counted as near true sky.")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    from tfsky.data.masks import sky_mask
    from tfsky.evaluate.segmenter import open_data
    from tfsky.io.atomic import write_json
    from tfsky.models.precision import cpu_record
    from tfsky.predict.segment import TiledSegmenter

    segmenter = TiledSegmenter.load(args.model)
    totals = dict.fromkeys(COUNTS, 0)
    images = 0
    for item in open_data(args.data, args.split, None, segmenter.inputs).items():
        image, truth = item.load()
        mask = sky_mask(segmenter.probabilities(image)[..., 0], args.threshold, drop_enclosed=args.drop_enclosed)
        for key, value in error_counts(mask, truth, image, args.near).items():
            totals[key] += value
        images += 1
    results = json.loads(args.out.read_text()) if args.out.is_file() else {}
    results[args.name] = {
        "model": str(args.model),
        "data": str(args.data),
        "images": images,
        "threshold": args.threshold,
        "drop_enclosed": args.drop_enclosed,
        "near_px": args.near,
        "pixels": totals,
        **{key: round(value, 4) for key, value in summary(totals).items()},
        "cpu": cpu_record(),
    }
    write_json(args.out, results)
    print(json.dumps(results[args.name], indent=2))


if __name__ == "__main__":
    main()
