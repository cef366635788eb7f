"""Evaluate a sky segmenter on labelled images, next to two naive baselines.

Full images go through `TiledSegmenter`, the tiled predictor `tfsky predict`
uses, so nothing is resized. A pixel is sky when its sky probability is
``>= threshold`` (`tfsky.data.masks.sky_mask`), exactly as `tfsky predict`
draws masks: the sigmoid output of one-class models (as Keras' ``BinaryIoU``),
or softmax channel 1.
Truth masks are sky where their class id is 1.

The baselines (see `tfsky.evaluate.baselines`) are fitted on the cache's
``train`` split when the data is a prepared cache that has one; otherwise on
the evaluated images themselves, which is the best case for the baselines and
is stated in the report.

Headline numbers are dataset-level (counts summed over all pixels of all
images); means of per-image values are reported beside them.
"""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path
from typing import Callable, Iterable, Iterator, NamedTuple, Optional, Sized

import numpy as np

from tfsky.data.cache import MANIFEST, CachedImage, iter_cached, read_manifest
from tfsky.data.config import SourceConfig
from tfsky.data import masks as sky
from tfsky.data.masks import SKY_CLASS
from tfsky.data.sources import CAMERA_MASK_SUFFIX, LabelledImage, iter_source, read_conditions
from tfsky.errors import InputError
from tfsky.evaluate import metrics
from tfsky.evaluate.config import EvaluateConfig
from tfsky.evaluate.metrics import BOUNDARY_BAND
from tfsky.evaluate.baselines import Baselines, fit_baselines
from tfsky.evaluate.report import Table, markdown_document, signed, write_report
from tfsky.models.bundle import ModelKind, read_model
from tfsky.models.precision import for_inference
from tfsky.predict.segment import ModelInputs, TiledSegmenter, segmenter_tiling
from tfsky.progress import Progress, tracked
from tfsky.tiling import TilingConfig

PREDICTORS = ("model", "horizon", "color_threshold")
HEADLINE = "dataset_level"
NO_LABEL = "(no label)"


class Item(NamedTuple):
    """One labelled image, loaded on demand: ``load()`` returns (image, boolean truth) or raises `InputError`."""

    id: str
    condition: Optional[str]
    load: Callable[[], tuple[np.ndarray, np.ndarray]]


@dataclasses.dataclass
class EvalData:
    """Labelled images to evaluate and the images the baselines are fitted on."""

    kind: str
    items: Callable[[], Iterator[Item]]
    fit_items: Optional[Callable[[], Iterator[Item]]]


@dataclasses.dataclass
class ImageResult:
    """The scores of every predictor on one image."""

    id: str
    condition: Optional[str]
    shape: tuple[int, int]
    scores: dict[str, metrics.MaskScore]

    def to_json(self) -> dict:
        height, width = self.shape
        scores = {name: score.metrics() for name, score in self.scores.items()}
        return {"id": self.id, "condition": self.condition, "height": height, "width": width, **scores}


@dataclasses.dataclass
class EvalReport:
    """Everything `evaluate_segmenter` measured; `to_json` is what ``eval.json`` holds."""

    model: str
    data: str
    data_kind: str
    split: Optional[str]
    threshold: float
    band: float
    tiling: TilingConfig
    drop_enclosed: bool
    baselines: Baselines
    images: list[ImageResult]
    skipped: list[dict[str, str]]

    def overall(self, images: Optional[list[ImageResult]] = None) -> dict[str, dict[str, dict[str, float]]]:
        """Dataset-level and mean-per-image metrics of each predictor."""
        images = self.images if images is None else images
        result = {}
        for name in PREDICTORS:
            scores = [image.scores[name] for image in images]
            result[name] = {
                "dataset_level": metrics.dataset_level(scores),
                "mean_per_image": metrics.mean_per_image(scores),
            }
        return result

    def conditions(self) -> dict[str, dict]:
        """`overall` per condition label (images without one are grouped as ``(no label)``); empty without labels."""
        if all(image.condition is None for image in self.images):
            return {}
        groups: dict[str, list[ImageResult]] = {}
        for image in self.images:
            groups.setdefault(image.condition or NO_LABEL, []).append(image)
        return {name: {"images": len(group), **self.overall(group)} for name, group in sorted(groups.items())}

    def to_json(self) -> dict:
        overall = self.overall()
        return {
            "model": self.model,
            "data": self.data,
            "data_kind": self.data_kind,
            "split": self.split,
            "threshold": self.threshold,
            "drop_enclosed": self.drop_enclosed,
            "boundary_band": self.band,
            "tiling": dataclasses.asdict(self.tiling),
            "headline": HEADLINE,
            "baselines": dataclasses.asdict(self.baselines),
            "counts": {"evaluated": len(self.images), "skipped": len(self.skipped)},
            "overall": overall,
            "model_minus_baseline": model_minus_baselines(overall),
            "conditions": self.conditions(),
            "images": [image.to_json() for image in self.images],
            "skipped": self.skipped,
        }


def model_minus_baselines(overall: dict, aggregation: str = HEADLINE) -> dict[str, dict[str, float]]:
    """Model metric minus each baseline's (positive IoU/F1 = the model is better; for MCR, negative is)."""
    model = overall["model"][aggregation]
    return {
        name: {key: model[key] - overall[name][aggregation][key] for key in metrics.METRIC_NAMES}
        for name in PREDICTORS[1:]
    }


def sky_mask(probabilities: np.ndarray, threshold: float, drop_enclosed: bool = False) -> np.ndarray:
    """Boolean sky mask from ``H x W x K`` probabilities: P(sky) ``>= threshold`` (without the enclosed sky
    regions with ``drop_enclosed``), as `tfsky predict` draws it."""
    return sky.sky_mask(sky.sky_probability(probabilities), threshold, drop_enclosed)


def score_items(
    items: Iterable[Item],
    predict: Callable[[np.ndarray], np.ndarray],
    baselines: Baselines,
    band: float = BOUNDARY_BAND,
    progress: Optional[Progress] = None,
) -> tuple[list[ImageResult], list[dict[str, str]]]:
    """Score the model's and the baselines' masks on each item; items that fail to load are skipped.

    Args:
        items: the labelled images.
        predict: image -> boolean sky mask of the same height and width.
        baselines: the fitted baselines.
        band: float. Boundary F1 tolerance in pixels. Defaults to 3.
        progress: Progress. Advanced with each item's id once it is scored or skipped (`tfsky.progress`).
    """
    results, skipped = [], []
    with tracked(progress, len(items) if isinstance(items, Sized) else None, "evaluate") as progress:
        for item in items:
            try:
                image, truth = item.load()
            except InputError as err:
                skipped.append({"id": item.id, "reason": str(err)})
                progress.advanced(item.id)
                continue
            masks = {"model": predict(image), **baselines.predict(image)}
            scores = {name: metrics.score(mask, truth, band) for name, mask in masks.items()}
            results.append(ImageResult(item.id, item.condition, truth.shape, scores))
            progress.advanced(item.id)
    return results, skipped


def evaluate_segmenter(
    model_path: str | Path,
    data: str | Path,
    *,
    split: str = EvaluateConfig.split,
    threshold: Optional[float] = EvaluateConfig.threshold,
    band: float = EvaluateConfig.band,
    labels_csv: Optional[str | Path] = None,
    out_dir: Optional[str | Path] = None,
    tiling: TilingConfig | None = None,
    drop_enclosed: bool = EvaluateConfig.drop_enclosed,
    progress: Optional[Progress] = None,
) -> EvalReport:
    """Evaluate a saved segmenter and both baselines; write ``eval.json`` and ``eval.md``.

    Args:
        model_path: a ``.keras`` model written by ``tfsky train`` (with its sidecar).
        data: a prepared cache folder (with ``manifest.json``), a mask folder
            (``images/`` + ``masks/``) or a camera folder (``<cam>/*.jpg`` + ``<cam>-mask.png``).
        split: str. Cache split to evaluate; ignored for folders. Defaults to ``val``.
        threshold: Optional[float]. Sky probability threshold (one-class models). Defaults to None:
            the model's own (`TiledSegmenter.mask_threshold`).
        band: float. Boundary F1 tolerance in pixels. Defaults to 3.
        labels_csv: optional CSV (``image,sky_condition``) giving each folder image a condition.
        out_dir: where the reports go. Defaults to ``eval/`` beside the model.
        tiling: TilingConfig. Tiles, blending and flip TTA, as ``tfsky predict`` takes them (the model's
            training tile by default). Defaults to None (the `TilingConfig` defaults).
        drop_enclosed: bool. Score the masks without the sky regions that touch no border of the frame, as
            ``tfsky predict --drop-enclosed`` draws them (the baselines' masks stay whole). Defaults to False.
        progress: Progress. Advanced with each image id once it is scored (`tfsky.progress`).

    Raises:
        InputError: missing model or data folder, unknown layout or cache split, unusable labels CSV,
            no image that could be evaluated.
    """
    model_path, data = Path(model_path), Path(data)
    # a bad model file, a tile it cannot take, then bad data: each one line, before the precision note
    model, info = read_model(model_path, ModelKind.SEGMENTER)
    segmenter_tiling(tiling, info)
    source = open_data(data, split, labels_csv, ModelInputs(info))
    baselines = _fit(source, data)
    segmenter = TiledSegmenter(for_inference(model, "auto", info.bfloat16), info, tiling)
    threshold = segmenter.mask_threshold(threshold)
    results, skipped = score_items(
        source.items(),
        lambda image: sky_mask(segmenter.probabilities(image), threshold, drop_enclosed),
        baselines,
        band,
        progress,
    )
    if not results:
        first = f": {skipped[0]['reason']}" if skipped else ""
        raise InputError(data, f"no image could be evaluated ({len(skipped)} skipped{first})")
    report = EvalReport(
        str(model_path),
        str(data),
        source.kind,
        split if source.kind == "cache" else None,
        threshold,
        band,
        segmenter.tiling,
        drop_enclosed,
        baselines,
        results,
        skipped,
    )
    summary = report.to_json()
    write_report(Path(out_dir) if out_dir else model_path.parent / "eval", "eval", summary, report_markdown(summary))
    return report


def _fit(source: EvalData, data: Path) -> Baselines:
    """Fit the baselines on the training split, else on the evaluated images (the best case for them)."""

    def pairs(items: Iterator[Item]) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for item in items:
            try:
                yield item.load()
            except InputError:
                continue  # reported once, by the evaluation pass

    if source.fit_items is not None:
        fitted = fit_baselines(pairs(source.fit_items()), "the cache's train split")
        if fitted is not None:
            return fitted
    fitted = fit_baselines(
        pairs(source.items()), "the evaluated images themselves (no train split): a best case for the baselines"
    )
    if fitted is None:
        raise InputError(data, "no labelled images found")
    return fitted


def open_data(data: Path, split: str, labels_csv: Optional[str | Path], inputs: ModelInputs) -> EvalData:
    """Recognise the layout of ``data`` and list its labelled images (checked against the model when loaded).

    Raises:
        InputError: ``data`` is missing or has no recognised layout; ``labels_csv`` given for a cache or
            naming none of the images.
    """
    if not data.is_dir():
        raise InputError(data, "data folder not found")
    if (data / MANIFEST).is_file():
        splits = read_manifest(data)["splits"]
        if split not in splits:
            raise InputError(data, f"the cache has no split {split!r} (it has: {', '.join(splits)})")
        if labels_csv is not None:
            raise InputError(
                labels_csv, "--labels is for image folders; a prepared cache keeps the conditions it was prepared with"
            )
        return EvalData(
            "cache",
            functools.partial(_cached_items, data, split, inputs),
            functools.partial(_cached_items, data, "train", inputs),
        )
    config = _folder_source(data)
    conditions = read_conditions(Path(labels_csv)) if labels_csv is not None else {}
    items = functools.partial(_folder_items, config, conditions, inputs)
    if labels_csv is not None and conditions and all(item.condition is None for item in items()):
        raise InputError(labels_csv, f"names none of the images in {data} (paths are relative to {config.images})")
    return EvalData(config.kind, items, None)


def _folder_source(data: Path) -> SourceConfig:
    """A mask folder (``images/`` + ``masks/``) or a SkyFinder-style camera folder."""
    if (data / "images").is_dir() and (data / "masks").is_dir():
        return SourceConfig(kind="mask_folder", images=data / "images", masks=data / "masks")
    if any(data.glob(f"*{CAMERA_MASK_SUFFIX}")):
        return SourceConfig(kind="camera_folder", images=data)
    raise InputError(
        data,
        f"no labelled images found: expected a prepared cache (manifest.json), images/ + masks/ folders, "
        f"or camera folders with <camera>{CAMERA_MASK_SUFFIX} masks",
    )


def _cached_items(cache: Path, split: str, inputs: ModelInputs) -> Iterator[Item]:
    for cached in iter_cached(cache, split=split):
        yield Item(cached.id, cached.condition, functools.partial(_checked_cached, cached, inputs))


def _checked_cached(cached: CachedImage, inputs: ModelInputs) -> tuple[np.ndarray, np.ndarray]:
    inputs.check(cached.image, cached.id)
    return cached.image, cached.mask == SKY_CLASS


def _folder_items(config: SourceConfig, conditions: dict[str, str], inputs: ModelInputs) -> Iterator[Item]:
    for labelled in iter_source(config):
        condition = conditions.get(labelled.image_path.relative_to(config.images).as_posix())
        yield Item(labelled.id, condition, functools.partial(_load_labelled, labelled, inputs))


def _load_labelled(labelled: LabelledImage, inputs: ModelInputs) -> tuple[np.ndarray, np.ndarray]:
    """Read an image for the model and its mask; a missing mask or a size mismatch is an `InputError`."""
    if labelled.problem:
        raise InputError(labelled.image_path, labelled.problem)
    image = inputs.read(labelled.image_path)
    mask = labelled.load_mask()
    if mask.shape != image.shape[:2]:
        raise InputError(
            labelled.image_path,
            f"mask {labelled.mask_path} is {mask.shape[1]}x{mask.shape[0]} but the image is "
            f"{image.shape[1]}x{image.shape[0]}",
        )
    return image, mask == SKY_CLASS


# --- report tables -------------------------------------------------------------------------------

PREDICTOR_LABELS = {"model": "model", "horizon": "horizon", "color_threshold": "color threshold"}
METRIC_LABELS = {"iou": "IoU", "f1": "F1", "pixel_accuracy": "pixel acc.", "mcr": "MCR", "boundary_f1": "boundary F1"}
DELTA_METRICS = ("iou", "f1", "mcr")
DELTA_NOTE = "Δ = model minus that baseline (higher IoU/F1 and lower MCR are better)."
AGGREGATION_NOTES = {
    "dataset_level": "Dataset-level: confusion counts summed over every pixel of every image, then each metric.",
    "mean_per_image": "Mean per image: each metric on each image, then averaged (an empty-vs-empty image counts 1.0).",
}


def overall_table(summary: dict, aggregation: str = HEADLINE) -> Table:
    """Model and baselines side by side, with the model's difference to each baseline."""
    overall = summary["overall"]
    deltas = model_minus_baselines(overall, aggregation)
    rows = []
    for name in PREDICTORS:
        values = overall[name][aggregation]
        gains = [signed(deltas[name][key]) if name in deltas else None for key in DELTA_METRICS]
        rows.append([PREDICTOR_LABELS[name], *(values[key] for key in metrics.METRIC_NAMES), *gains])
    columns = ["", *METRIC_LABELS.values(), *(f"Δ{METRIC_LABELS[key]}" for key in DELTA_METRICS)]
    title = "Headline (dataset-level)" if aggregation == HEADLINE else "Mean per image"
    return Table(title, columns, rows, f"{AGGREGATION_NOTES[aggregation]} {DELTA_NOTE}")


def conditions_table(summary: dict) -> Table:
    """Dataset-level metrics of each predictor per condition label."""
    rows = []
    for condition, group in summary["conditions"].items():
        for name in PREDICTORS:
            values = group[name][HEADLINE]
            rows.append(
                [condition, group["images"], PREDICTOR_LABELS[name], *(values[k] for k in metrics.METRIC_NAMES)]
            )
    return Table("Per condition (dataset-level)", ["condition", "images", "", *METRIC_LABELS.values()], rows)


def images_table(summary: dict) -> Table:
    """One row per image: the model's metrics and both baselines' IoU."""
    rows = [
        [
            image["id"],
            image["condition"],
            f"{image['width']}x{image['height']}",
            image["model"]["sky_fraction_truth"],
            image["model"]["sky_fraction_pred"],
            *(image["model"][key] for key in metrics.METRIC_NAMES),
            image["horizon"]["iou"],
            image["color_threshold"]["iou"],
        ]
        for image in summary["images"]
    ]
    columns = [
        "image",
        "condition",
        "size",
        "sky (truth)",
        "sky (model)",
        *METRIC_LABELS.values(),
        "horizon IoU",
        "color IoU",
    ]
    return Table("Per image (model)", columns, rows)


def verdict(summary: dict) -> str:
    """One sentence: by how much IoU the model beats (or trails) each baseline."""
    parts = []
    for name, delta in summary["model_minus_baseline"].items():
        verb = "beats" if delta["iou"] > 0 else "does not beat"
        parts.append(f"{verb} the {PREDICTOR_LABELS[name]} baseline ({signed(delta['iou'])} IoU)")
    return "The model " + " and ".join(parts) + " (dataset-level)."


def report_markdown(summary: dict) -> str:
    """``eval.md``: settings, the verdict, then the headline, mean, per-condition, per-image and skipped tables."""
    b = summary["baselines"]
    counts = summary["counts"]
    split = f", split `{summary['split']}`" if summary["split"] else ""
    paragraphs = [
        f"Model `{summary['model']}` on `{summary['data']}` ({summary['data_kind']}{split}): "
        f"{counts['evaluated']} images evaluated, {counts['skipped']} skipped.",
        f"Sky = probability >= {summary['threshold']} (softmax models: channel 1)"
        f"{', without the sky regions that touch no border of the frame' if summary['drop_enclosed'] else ''}. "
        f"Boundary F1 tolerance: {summary['boundary_band']} px.",
        f"Baselines: horizon at {b['horizon_fraction']:.3f} of the image height; color threshold: B >= R and "
        f"brightness >= {b['color_threshold']:.3f}. Fitted on {b['fitted_on']} ({b['fit_images']} images).",
        f"**{verdict(summary)}**",
    ]
    tables = [overall_table(summary), overall_table(summary, "mean_per_image")]
    if summary["conditions"]:
        tables.append(conditions_table(summary))
    tables.append(images_table(summary))
    if summary["skipped"]:
        tables.append(Table("Skipped", ["image", "reason"], [[s["id"], s["reason"]] for s in summary["skipped"]]))
    return markdown_document("Sky segmenter evaluation", paragraphs, tables)
