"""k-fold cross-validation of a cloud recipe over every frame, in blocks of consecutive frames per camera.

One validation split is too noisy to choose between levers (issue #30). Each
camera's frames, sorted by frame number, are cut into ``--folds`` blocks of
consecutive numbers (neighbouring frames of one day stay together); fold ``i``
holds out block ``i`` of every camera as the cache's ``test`` split
(``allsky.test_frames``), trains on the rest (its own train/val split picks the
best epoch) and is scored on the held-out frames at full resolution by
`tfsky.evaluate.cloud.evaluate_cloud`, next to its baselines fitted on the
fold's training frames. ``--set`` overrides the recipe as ``tfsky train`` does
(each set of overrides gets its own runs, caches and results entry), so levers
are compared on the same folds. Results: ``scripts/results/cloud_cv.json``
(one number per fold and the mean, per camera and predictor), merged per
recipe, overrides and TTA.

    python scripts/cloud_cv.py -c configs/cloud_wsiseg.yaml --folds 5 [--fold 0 ...] \\
        [--stage train|evaluate|all] [--set key=value ...] [--tta rot8] [--cut stored|validation|0.5]
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from loso import newest_best, record  # noqa: E402 - the fold helpers shared with the leave-one-source-out check

RESULTS = Path(__file__).parent / "results" / "cloud_cv.json"
METRICS = ("pixel_accuracy", "cloud_fraction_mae_pp", "cloud_fraction_bias_pp", "iou_cloud", "okta_exact")


def frame_numbers(recipe) -> dict[tuple[str, str], list[int]]:
    """``{(source, camera): sorted frame numbers}`` of the recipe's usable all-sky frames (no pixel decoded)."""
    from tfsky.data.allsky import frame_number
    from tfsky.data.cache import list_items

    sources = {source.name: source for source in recipe.data.sources if source.kind == "allsky_folder"}
    numbers: dict[tuple[str, str], list[int]] = {}
    for item in list_items(recipe.data)[0]:
        if item.problem is None and item.source in sources:
            camera = sources[item.source].allsky.camera_of(item.image_path)
            numbers.setdefault((item.source, camera.name), []).append(frame_number(item.image_path))
    return {key: sorted(values) for key, values in sorted(numbers.items())}


def fold_ranges(numbers: dict[tuple[str, str], list[int]], folds: int) -> list[dict[str, list[list[int]]]]:
    """Per fold, ``{source: [[first, last], ...]}``: block ``i`` of each camera's sorted frames (sizes differ by <= 1).

    Raises:
        SystemExit: a camera has fewer frames than folds.
    """
    ranges: list[dict[str, list[list[int]]]] = [{} for _ in range(folds)]
    for (source, camera), values in numbers.items():
        if len(values) < folds:
            raise SystemExit(f"--folds {folds}: camera {camera} of {source} has only {len(values)} frames")
        size, extra = divmod(len(values), folds)
        start = 0
        for fold in range(folds):
            block = values[start : start + size + (fold < extra)]
            start += len(block)
            ranges[fold].setdefault(source, []).append([block[0], block[-1]])
    return ranges


def fold_config(recipe, ranges: dict[str, list[list[int]]], name: str):
    """The recipe with fold ``ranges`` held out as ``test_frames``, named ``name`` (its own runs and cache)."""
    sources = [
        dataclasses.replace(source, allsky=dataclasses.replace(source.allsky, test_frames=ranges.get(source.name, [])))
        if source.kind == "allsky_folder"
        else source
        for source in recipe.data.sources
    ]
    data = dataclasses.replace(recipe.data, sources=sources, cache=Path(recipe.data.cache).parent / name)
    return dataclasses.replace(recipe, name=name, data=data)


def native_data(cfg, name: str):
    """The fold's data at full resolution (the evaluator scores full-size labels), prepared once per fold."""
    from tfsky.data.cache import MANIFEST, prepare_cache

    data = dataclasses.replace(cfg.data, working_scale=None, cache=Path(cfg.data.cache).parent / name)
    if not (data.cache / MANIFEST).is_file():
        prepare_cache(data, progress=False)
    return data


def fold_scores(summary: dict) -> dict:
    """``{group: {predictor: {metric: value}}}`` of an ``eval.json`` summary (`METRICS`)."""

    def pick(values: dict) -> dict:
        return {
            "pixel_accuracy": values["pixel_accuracy"],
            "cloud_fraction_mae_pp": values["cloud_fraction_mae_pp"],
            "cloud_fraction_bias_pp": values["cloud_fraction_bias_pp"],
            "iou_cloud": values["iou_per_class"]["cloud"],
            "okta_exact": values["okta_exact"],
            "frames": values["frames"],
        }

    return {
        group: {name: pick(values) for name, values in predictors.items()}
        for group, predictors in summary["results"].items()
    }


def mean_over_folds(folds: dict[str, dict]) -> dict:
    """The mean of every metric over the folds done (a metric None or absent in a fold is left out of its mean)."""
    first = next(iter(folds.values()))["scores"]
    mean: dict = {}
    for group, predictors in first.items():
        for name in predictors:
            for metric in METRICS:
                values = [
                    fold["scores"][group][name][metric]
                    for fold in folds.values()
                    if group in fold["scores"] and fold["scores"][group][name].get(metric) is not None
                ]
                mean.setdefault(group, {}).setdefault(name, {})[metric] = sum(values) / len(values) if values else None
    return mean


def parse_cut(cut: str) -> float | None:
    """``--cut``: None for ``stored`` and ``validation`` (chosen per fold), else the number in (0, 1)."""
    if cut in ("stored", "validation"):
        return None
    try:
        value = float(cut)
    except ValueError:
        value = -1.0
    if not 0 < value < 1:
        raise SystemExit(f"--cut must be stored, validation or a number in (0, 1); got {cut!r}")
    return value


def validation_cut(cfg, model: Path) -> float:
    """The fold model's best-IoU P(cloud) cut on its own validation split (`choose_threshold`, as ``tfsky
    train`` stores it), without touching the model's sidecar."""
    from tfsky.models.bundle import load_model
    from tfsky.train.segmenter import choose_threshold, make_datasets

    network, info = load_model(model, precision="float32")
    choose_threshold(network, info, make_datasets(cfg, cfg.train.batch_size)[1])
    return info.threshold


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-c", "--config", required=True)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--fold", type=int, action="append", help="fold index 0..folds-1 (repeatable; default all)")
    parser.add_argument("--stage", choices=("train", "evaluate", "all"), default="all")
    parser.add_argument("--tta", default="none", help="TTA of the evaluation: none | flip2 | flip4 | rot4 | rot8")
    parser.add_argument(
        "--cut",
        default="stored",
        help="P(cloud) cut scored: stored (the model's own) | validation (the best cloud IoU on the fold's "
        "validation split, as tfsky train chooses it) | a number in (0, 1)",
    )
    parser.add_argument("--threads", type=int, default=0, help="TF intra-op threads per run (0 = all cores)")
    parser.add_argument("--set", action="append", default=[], help="recipe override key=value (repeatable)")
    args = parser.parse_args()
    if args.folds < 2:
        raise SystemExit(f"--folds must be >= 2; got {args.folds}")
    folds = args.fold if args.fold is not None else list(range(args.folds))
    if any(not 0 <= fold < args.folds for fold in folds):
        raise SystemExit(f"--fold must be in 0..{args.folds - 1}; got {folds}")
    fixed_cut = parse_cut(args.cut)

    import tfsky  # noqa: F401 - Keras 2 mode, set before TensorFlow is imported
    import tensorflow as tf
    from tfsky.config import load_config
    from tfsky.errors import TfskyError
    from tfsky.evaluate.cloud import evaluate_cloud
    from tfsky.models.precision import cpu_record
    from tfsky.tiling import TilingConfig
    from tfsky.train.config import SegmenterConfig
    from tfsky.train.segmenter import train_segmenter

    if args.threads:
        tf.config.threading.set_intra_op_parallelism_threads(args.threads)
        tf.config.threading.set_inter_op_parallelism_threads(args.threads)
    try:
        recipe = load_config(SegmenterConfig, args.config, args.set)
    except TfskyError as err:
        raise SystemExit(f"Error: {err}") from None
    lever = hashlib.sha256("\n".join(args.set).encode()).hexdigest()[:8] if args.set else ""
    stem = f"{recipe.name}-cv{args.folds}" + (f"-{lever}" if lever else "")
    ranges = fold_ranges(frame_numbers(recipe), args.folds)
    key = f"{stem}/{args.tta}" + ("" if args.cut == "stored" else f"-cut{args.cut}")
    for fold in folds:
        cfg = fold_config(recipe, ranges[fold], f"{stem}-{fold}")
        if args.stage in ("train", "all"):
            train_segmenter(cfg)
        if args.stage in ("evaluate", "all"):
            model = newest_best(cfg)
            data = native_data(cfg, f"{recipe.name}-cv{args.folds}-{fold}-native")
            threshold = validation_cut(cfg, model) if args.cut == "validation" else fixed_cut
            start = time.perf_counter()
            report = evaluate_cloud(
                model,
                data.cache,
                split="test",
                threshold=threshold,
                out_dir=model.parent / f"eval-cv-{key.split('/')[1]}",
                tiling=TilingConfig(tta=args.tta),
            )
            seconds = time.perf_counter() - start
            summary = report.to_json()
            results = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {}
            entry = results.get(key, {"config": args.config, "set": args.set, "folds_total": args.folds, "folds": {}})
            entry["folds"][str(fold)] = {
                "model": str(model),
                "test_frames": ranges[fold],
                "frames": summary["counts"]["evaluated"],
                "threshold": summary["threshold"],
                "seconds_per_frame": round(seconds / max(summary["counts"]["evaluated"], 1), 3),
                "load_average": os.getloadavg(),
                "cpu": cpu_record(),
                "sun": summary["sun"],
                "scores": fold_scores(summary),
            }
            entry["mean"] = mean_over_folds(entry["folds"])
            entry["folds_done"] = len(entry["folds"])
            record(key, entry, RESULTS)
            print(json.dumps({fold: entry["folds"][str(fold)]["scores"]["overall"]["model"]}, indent=1))


if __name__ == "__main__":
    main()
