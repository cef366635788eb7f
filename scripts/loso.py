"""Leave-one-source-out check of a segmenter recipe: train without a source, evaluate on it.

For every source named with ``--leave-out``, the recipe's ``data.sources`` lose
that source, the run is named ``<recipe>-without-<source>`` (its own cache),
and the best model is evaluated on the left-out source's full-resolution
images with `tfsky.evaluate.segmenter` (dataset-level and mean-per-image IoU,
MCR, boundary F1, both naive baselines fitted on those images — their best
case), after the fold model's threshold is chosen on its own validation split.
Webcam sources (``camera_folder``) are also scored on their daytime frames with
sky alone: a frame after dark has no visible sky for any appearance model.
Results: ``scripts/results/loso.json`` (merged per fold name and TTA).

    python scripts/loso.py -c configs/sky_ldr_cpu.yaml --leave-out sky_cityscapes [--stage train|evaluate|all]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results" / "loso.json"


def fold_config(recipe, held_out: str):
    """The recipe without ``held_out`` (its own name and cache), and the left-out source."""
    by_name = {source.name: source for source in recipe.data.sources}
    if held_out not in by_name:
        raise SystemExit(f"--leave-out {held_out}: not a source of the recipe ({', '.join(by_name)})")
    name = f"{recipe.name}-without-{held_out}"
    data = dataclasses.replace(
        recipe.data,
        sources=[source for source in recipe.data.sources if source.name != held_out],
        cache=Path(recipe.data.cache).parent / name,
    )
    return dataclasses.replace(recipe, name=name, data=data), by_name[held_out]


def newest_best(cfg) -> Path:
    runs = sorted((Path(cfg.train.runs_root) / cfg.name).glob("*/best.keras"))
    if not runs:
        raise SystemExit(f"no trained run of {cfg.name} under {cfg.train.runs_root}; run --stage train first")
    return runs[-1]


def evaluate_fold(
    cfg, source, tta: str, working_factor: float = 1.0, tile: int | None = None, drop_enclosed: bool = False
) -> dict:
    """Choose the fold model's threshold on its own validation split (as `tfsky train` does), then
    evaluate it on the left-out source's full-resolution images (``drop_enclosed``: as ``tfsky evaluate
    --drop-enclosed`` scores them)."""
    from tfsky.evaluate.segmenter import evaluate_segmenter
    from tfsky.models.bundle import load_info
    from tfsky.models.precision import cpu_record
    from tfsky.tiling import TilingConfig
    from tfsky.train.runner import read_history
    from tfsky.train.segmenter import make_datasets, store_threshold

    model = newest_best(cfg)
    threshold = store_threshold(model, make_datasets(cfg, cfg.train.batch_size)[1], cfg.train.threshold)
    metrics = load_info(model).metrics
    data = source.images if source.kind == "camera_folder" else Path(source.images).parent
    start = time.perf_counter()
    name = variant(tta, working_factor, tile, cfg.train.threshold, drop_enclosed)
    tiling = TilingConfig(tta=tta, working_factor=working_factor, tile=tile)
    report = evaluate_segmenter(
        model, data, out_dir=model.parent / f"eval-{source.name}-{name}", tiling=tiling, drop_enclosed=drop_enclosed
    )
    seconds = time.perf_counter() - start
    with_sky = [image for image in report.images if image.scores["model"].metrics()["sky_fraction_truth"] > 0]
    daytime = daytime_files(source) if source.kind == "camera_folder" else None
    return {
        "model": str(model),
        "threshold": threshold,
        "val_best_threshold": metrics["val_best_threshold"],
        "val_calibration_error": metrics["val_calibration_error"],
        "tta": tta,
        "working_factor": working_factor,
        "tile": tile or "training tile",
        "drop_enclosed": drop_enclosed,
        "images": len(report.images),
        "skipped": len(report.skipped),
        "seconds_per_image": round(seconds / max(len(report.images), 1), 2),
        "cpu": cpu_record(),  # the time above compares only with a run on the same CPU
        "epochs": len(read_history(model.parent / "history.csv")),
        "overall": report.to_json()["overall"],
        "images_with_sky": len(with_sky),
        "overall_with_sky": report.overall(with_sky),
        **(daytime_result(report, with_sky, daytime) if daytime is not None else {}),
    }


def daytime_files(source) -> set[str]:
    """Frames of a webcam source lit by day, as paths relative to its images folder.

    Night is what `tfsky data validate` calls night: the mean Rec.709 luminance
    over the frame's sky (its camera mask; the whole frame for a camera without
    sky) below `NIGHT_LUMINANCE` — measured, not read from the clock.
    """
    from tfsky.data.sources import iter_source
    from tfsky.data.streams import NIGHT_LUMINANCE, analysis_luminance
    from tfsky.io.images import read_image

    daytime = set()
    for labelled in iter_source(source):
        image = read_image(labelled.image_path)
        sky = labelled.load_mask() > 0
        luminance = analysis_luminance(image, image.shape[1])
        level = luminance[sky].mean() if sky.any() else luminance.mean()
        if level >= NIGHT_LUMINANCE:
            daytime.add(labelled.image_path.relative_to(source.images).as_posix())
    return daytime


def daytime_result(report, with_sky: list, daytime: set[str]) -> dict:
    """The report's scores on the daytime frames with sky (ids are ``<data folder>/<relative path>``)."""
    images = [image for image in with_sky if image.id.split("/", 1)[1] in daytime]
    return {"images_daytime_with_sky": len(images), "overall_daytime_with_sky": report.overall(images)}


def variant(
    tta: str,
    working_factor: float,
    tile: int | None = None,
    threshold: float | None = None,
    drop_enclosed: bool = False,
) -> str:
    """The evaluation's name in results: the TTA, with ``-x<factor>`` when not at the working scale itself,
    ``-tile<N>`` when not with the model's training tile, ``-t<cut>`` with a fixed threshold and
    ``-dropenclosed`` without the enclosed sky regions."""
    name = tta if working_factor == 1 else f"{tta}-x{working_factor:g}"
    name = name if tile is None else f"{name}-tile{tile}"
    name = name if threshold is None else f"{name}-t{threshold:g}"
    return f"{name}-dropenclosed" if drop_enclosed else name


def record(key: str, result: dict, path: Path = RESULTS) -> None:
    """Merge one fold's result into the results file ``path``, read just before (folds may run side by side)."""
    results = json.loads(path.read_text()) if path.is_file() else {}
    results[key] = result
    path.parent.mkdir(exist_ok=True)
    temp = path.with_suffix(f".{os.getpid()}.tmp")
    temp.write_text(json.dumps(results, indent=2) + "\n")
    temp.replace(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-c", "--config", required=True)
    parser.add_argument("--leave-out", action="append", required=True, help="source name (repeatable)")
    parser.add_argument("--stage", choices=("train", "evaluate", "all"), default="all")
    parser.add_argument("--tta", default="none", help="TTA of the evaluation: none | flip2 | flip4 | rot4 | rot8")
    parser.add_argument(
        "--working-factor",
        type=float,
        default=1.0,
        help="predict at this multiple of the working scale (predict.tiling.working_factor)",
    )
    parser.add_argument(
        "--tile",
        type=int,
        default=None,
        help="prediction tile in pixels (predict.tiling.tile; default: the training tile)",
    )
    parser.add_argument(
        "--drop-enclosed",
        action="store_true",
        help="score the masks without the sky regions that touch no border (tfsky evaluate --drop-enclosed)",
    )
    parser.add_argument("--threads", type=int, default=0, help="TF intra-op threads per run (0 = all cores)")
    parser.add_argument("--set", action="append", default=[], help="recipe override key=value")
    args = parser.parse_args()

    import tfsky  # noqa: F401 - Keras 2 mode, set before TensorFlow is imported
    import tensorflow as tf
    from tfsky.config import load_config
    from tfsky.train.config import SegmenterConfig
    from tfsky.train.segmenter import train_segmenter

    if args.threads:
        tf.config.threading.set_intra_op_parallelism_threads(args.threads)
        tf.config.threading.set_inter_op_parallelism_threads(args.threads)
    recipe = load_config(SegmenterConfig, args.config, args.set)
    for held_out in args.leave_out:
        cfg, source = fold_config(recipe, held_out)
        if args.stage in ("train", "all"):
            train_segmenter(cfg)
        if args.stage in ("evaluate", "all"):
            result = evaluate_fold(cfg, source, args.tta, args.working_factor, args.tile, args.drop_enclosed)
            result["load_average"] = os.getloadavg()
            name = variant(args.tta, args.working_factor, args.tile, cfg.train.threshold, args.drop_enclosed)
            record(f"{cfg.name}/{name}", result)
            print(json.dumps(result["overall"], indent=1))


if __name__ == "__main__":
    main()
