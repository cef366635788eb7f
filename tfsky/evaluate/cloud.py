"""Evaluate a cloud segmenter (softmax: 0 clear sky, 1 cloud) on all-sky frames, next to three baselines.

`tfsky evaluate segmenter` comes here for a model with more than one class.
The frames come from a prepared all-sky cache (`tfsky.data.allsky`): their
masks hold class ids and `IGNORE`, and ignored pixels count in no metric.
Full frames go through `TiledSegmenter` (as `tfsky predict`); a pixel is
cloud when P(cloud) >= ``threshold``.

Per predictor, per camera and overall (cameras from the cache's source
config, by frame number): per-class IoU, mean IoU, pixel accuracy, F1 of the
cloud class (confusion counts summed over all labelled pixels, scored by
`tfsky.data.masks.Confusion`; a class in neither truth nor prediction is not
scored: None, left out of the mean), the mean absolute error of the cloud
fraction in percentage points and its mean signed error (the bias: positive
when the predictor calls too much cloud, so a systematic error is told from
scatter), exact and within-one okta agreement, and the
confusion matrix of the derived sky condition against the frames' sky-type
labels.

Baselines (`tfsky.evaluate.cloud_baselines`) are fitted on the cache's
``train`` split. CloudNet needs one network call per pixel (~10^5 per frame),
so it is scored on the labelled pixels of a ``cloudnet_stride`` grid (every
16th row and column by default; its cloud fraction comes from the same
sample) — `scripts/bench_cloud.py` times it on whole frames.

The sun (`tfsky.predict.sun`, unless ``cover.sun`` is off) is found as
`tfsky predict` finds it and reported per frame and in ``sun``: how often,
how much of the excluded disc the annotation leaves undefined (as WSISEG
marks the sun) and how much of it the model called cloud. Scores stay on the
annotation's labelled pixels, so the exclusion does not change them.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from tfsky.config import from_dict
from tfsky.data.allsky import IGNORE, AllSkyConfig
from tfsky.data.cache import iter_cached, read_manifest
from tfsky.data.masks import Confusion, sky_mask, sky_probability
from tfsky.errors import InputError
from tfsky.evaluate.cloud_baselines import CLOUD, CloudBaselines, fit_cloud_baselines
from tfsky.evaluate.report import Table, markdown_document, write_report
from tfsky.predict.cloud import CONDITIONS, CloudCoverConfig, FrameCover, okta, sky_condition
from tfsky.predict.segment import TiledSegmenter
from tfsky.progress import Progress, tracked
from tfsky.tiling import TilingConfig

PREDICTORS = ("model", "red_blue_ratio", "red_minus_blue", "cloudnet")
LABELS = {
    "model": "U-Net (FCN)",
    "red_blue_ratio": "red/blue ratio",
    "red_minus_blue": "red - blue",
    "cloudnet": "CloudNet patch classifier",
}
CLASSES = ("clear sky", "cloud")
# sky_type.csv labels -> derived conditions
SKY_TYPES = {"clear sky": "clear", "partial cloud": "partial", "overcast sky": "overcast"}
OVERALL = "overall"


@dataclasses.dataclass
class FrameScore:
    """One predictor on one frame: the 2x2 confusion (truth rows, prediction columns) and cloud fractions."""

    confusion: np.ndarray
    truth_pct: float
    pred_pct: float

    def to_json(self) -> dict:
        return {"confusion": self.confusion.tolist(), "truth_pct": self.truth_pct, "pred_pct": self.pred_pct}


@dataclasses.dataclass
class FrameResult:
    id: str
    camera: str
    sky_type: Optional[str]
    scores: dict[str, FrameScore]
    sun: Optional[dict] = None


def frame_score(cloud_pred: np.ndarray, truth: np.ndarray) -> FrameScore:
    """Score a boolean cloud prediction against class ids with `IGNORE` (same shape; ignored pixels left out)."""
    labelled = truth != IGNORE
    truth_cloud, pred_cloud = truth[labelled] == CLOUD, cloud_pred[labelled]
    confusion = np.array([
        [np.count_nonzero(~truth_cloud & ~pred_cloud), np.count_nonzero(~truth_cloud & pred_cloud)],
        [np.count_nonzero(truth_cloud & ~pred_cloud), np.count_nonzero(truth_cloud & pred_cloud)],
    ], dtype=np.int64)  # fmt: skip
    count = max(int(labelled.sum()), 1)
    return FrameScore(confusion, 100.0 * truth_cloud.sum() / count, 100.0 * pred_cloud.sum() / count)


def sun_score(
    frame_cover: FrameCover, image: np.ndarray, truth: np.ndarray, cloud: np.ndarray, source: str
) -> Optional[dict]:
    """The frame's sun facts with the excluded pixels the annotation leaves undefined and those the model called
    cloud."""
    lens, _ = frame_cover.masks.valid_sky(image, source)
    excluded, facts = frame_cover.sun(image, lens)
    if facts is None:  # sun exclusion is off
        return None
    return {
        **facts,
        "undefined_pixels": int(np.count_nonzero(excluded & (truth == IGNORE))),
        "model_cloud_pixels": int(np.count_nonzero(excluded & cloud)),
    }


def summarise_sun(frames: list[FrameResult]) -> Optional[dict]:
    """Frames with a sun (overall and per sky type) and the shares of all excluded pixels undefined / called cloud."""
    suns = [(frame, frame.sun) for frame in frames if frame.sun is not None]
    if not suns:
        return None
    found = [(frame, sun) for frame, sun in suns if sun["found"]]
    excluded = sum(sun["excluded_pixels"] for _, sun in found)
    by_type: dict[str, list[int]] = {}
    for frame, sun in suns:
        by_type.setdefault(frame.sky_type or "-", [0, 0])[0] += sun["found"]
        by_type[frame.sky_type or "-"][1] += 1
    return {
        "frames": len(suns),
        "found": len(found),
        "found_by_sky_type": {sky_type: f"{hit}/{total}" for sky_type, (hit, total) in sorted(by_type.items())},
        "excluded_pixels": excluded,
        "undefined_share": sum(sun["undefined_pixels"] for _, sun in found) / excluded if excluded else None,
        "model_cloud_share": sum(sun["model_cloud_pixels"] for _, sun in found) / excluded if excluded else None,
    }


def summarise(frames: list[FrameResult], name: str, cover: CloudCoverConfig) -> dict:
    """Every metric of predictor ``name`` over ``frames`` (see the module docstring)."""
    scores = [frame.scores[name] for frame in frames]
    total = sum((score.confusion for score in scores), np.zeros((2, 2), np.int64))
    (tn, fp), (fn, tp) = total.tolist()
    cloud = Confusion(tp, fp, fn, tn)
    per_class = (Confusion(tn, fn, fp, tp), cloud)  # each class as the positive one
    iou = [c.iou if c.tp + c.fp + c.fn else None for c in per_class]  # a class nowhere is not scored
    signed = np.array([score.pred_pct - score.truth_pct for score in scores])
    errors = np.abs(signed)
    okta_truth = np.array([okta(score.truth_pct, cover.okta_tolerance_pp) for score in scores])
    okta_pred = np.array([okta(score.pred_pct, cover.okta_tolerance_pp) for score in scores])
    conditions = {t: {p: 0 for p in CONDITIONS} for t in CONDITIONS}
    for frame, okta_value in zip(frames, okta_pred):
        label = SKY_TYPES.get((frame.sky_type or "").lower())
        if label:
            conditions[label][sky_condition(int(okta_value), cover)] += 1
    labelled_frames = sum(sum(row.values()) for row in conditions.values())
    agree = sum(conditions[c][c] for c in CONDITIONS)
    return {
        "frames": len(frames),
        "pixels": int(total.sum()),
        "iou_per_class": dict(zip(CLASSES, iou)),
        "mean_iou": float(np.mean([v for v in iou if v is not None])) if any(v is not None for v in iou) else None,
        "pixel_accuracy": cloud.pixel_accuracy if cloud.total else None,
        "cloud_f1": cloud.f1 if tp + fp + fn else None,
        "cloud_fraction_mae_pp": float(errors.mean()) if errors.size else None,
        "cloud_fraction_bias_pp": float(signed.mean()) if signed.size else None,
        "okta_exact": float(np.mean(okta_truth == okta_pred)) if errors.size else None,
        "okta_within_1": float(np.mean(np.abs(okta_truth - okta_pred) <= 1)) if errors.size else None,
        "condition_confusion": conditions,
        "condition_accuracy": agree / labelled_frames if labelled_frames else None,
    }


@dataclasses.dataclass
class CloudEvalReport:
    """Everything `evaluate_cloud` measured; `to_json` is what ``eval.json`` holds."""

    model: str
    data: str
    split: str
    threshold: float
    cloudnet_stride: int
    tiling: TilingConfig
    cover: CloudCoverConfig
    baselines: CloudBaselines
    frames: list[FrameResult]
    skipped: list[dict[str, str]]
    predictors: tuple[str, ...]

    def groups(self) -> dict[str, list[FrameResult]]:
        cameras = sorted({frame.camera for frame in self.frames})
        return {OVERALL: self.frames, **{c: [f for f in self.frames if f.camera == c] for c in cameras}}

    def to_json(self) -> dict:
        return {
            "task": "cloud",
            "model": self.model, "data": self.data, "split": self.split, "threshold": self.threshold,
            "cloudnet_stride": self.cloudnet_stride, "tiling": dataclasses.asdict(self.tiling),
            "cloud_cover": {k: str(v) if isinstance(v, Path) else v for k, v in dataclasses.asdict(self.cover).items()},
            "baselines": self.baselines.to_json(),
            "counts": {"evaluated": len(self.frames), "skipped": len(self.skipped)},
            "sun": {group: summarise_sun(frames) for group, frames in self.groups().items()},
            "results": {
                group: {name: summarise(frames, name, self.cover) for name in self.predictors}
                for group, frames in self.groups().items()
            },
            "frames": [
                {"id": f.id, "camera": f.camera, "sky_type": f.sky_type, "sun": f.sun,
                 **{name: score.to_json() for name, score in f.scores.items()}}
                for f in self.frames
            ],
            "skipped": self.skipped,
        }  # fmt: skip


def evaluate_cloud(
    model_path: str | Path,
    data: str | Path,
    *,
    split: str = "val",
    threshold: Optional[float] = None,
    out_dir: Optional[str | Path] = None,
    tiling: TilingConfig | None = None,
    cover: CloudCoverConfig | None = None,
    cloudnet_stride: int = 16,
    with_cloudnet: bool = True,
    progress: Optional[Progress] = None,
) -> CloudEvalReport:
    """Evaluate a cloud segmenter and the baselines on an all-sky cache; write ``eval.json`` and ``eval.md``.

    ``progress`` is advanced with each frame's id once it is scored (`tfsky.progress`).

    Raises:
        InputError: ``data`` is not a prepared cache, holds frames at a working scale (its labels would be
            scored at that reduced size), lacks the split, or no frame could be evaluated.
    """
    model_path, data = Path(model_path), Path(data)
    cover = cover or CloudCoverConfig()
    manifest = read_manifest(data)
    scale = manifest["config"].get("working_scale")
    if scale is not None:
        raise InputError(
            data,
            f"the cache holds the frames at a {scale}-px working scale: evaluate on a "
            "native-resolution cache of the same frames (prepared with data.working_scale unset), so "
            "every predictor is scored on the full-size labels",
        )
    segmenter = TiledSegmenter.load(model_path, tiling)
    threshold = segmenter.info.threshold if threshold is None else threshold  # None: the model's own
    if split not in manifest["splits"]:
        raise InputError(data, f"the cache has no split {split!r} (it has: {', '.join(manifest['splits'])})")
    camera_of = _camera_lookup(manifest)
    frame_cover = FrameCover(cover, threshold, segmenter.info) if cover.sun else None
    baselines = fit_cloud_baselines(
        ((c.image, c.mask) for c in iter_cached(data, "train")), with_cloudnet=with_cloudnet
    )
    if baselines is None:
        raise InputError(data, "no training frames to fit the baselines on")
    predictors = PREDICTORS if with_cloudnet else PREDICTORS[:3]
    frames, skipped = [], []
    with tracked(progress, manifest["splits"][split]["images"], "evaluate") as progress:
        for cached in iter_cached(data, split):
            try:
                segmenter.check(cached.image, cached.id)
            except InputError as err:
                skipped.append({"id": cached.id, "reason": str(err)})
                progress.advanced(cached.id)
                continue
            truth = cached.mask
            cloud = sky_mask(sky_probability(segmenter.probabilities(cached.image)), threshold)
            scores = {"model": frame_score(cloud, truth)}
            scores.update({n: frame_score(m, truth) for n, m in baselines.threshold_masks(cached.image).items()})
            if with_cloudnet:
                scores["cloudnet"] = _cloudnet_score(baselines, cached.image, truth, cloudnet_stride)
            sun = sun_score(frame_cover, cached.image, truth, cloud, cached.id) if frame_cover else None
            frames.append(FrameResult(cached.id, camera_of(cached.id), cached.condition, scores, sun))
            progress.advanced(cached.id)
    if not frames:
        first = f": {skipped[0]['reason']}" if skipped else ""
        raise InputError(data, f"no frame could be evaluated ({len(skipped)} skipped{first})")
    report = CloudEvalReport(
        str(model_path),
        str(data),
        split,
        threshold,
        cloudnet_stride,
        segmenter.tiling,
        cover,
        baselines,
        frames,
        skipped,
        predictors,
    )
    summary = report.to_json()
    write_report(Path(out_dir) if out_dir else model_path.parent / "eval", "eval", summary, report_markdown(summary))
    return report


def _cloudnet_score(baselines: CloudBaselines, image: np.ndarray, truth: np.ndarray, stride: int) -> FrameScore:
    """CloudNet (its arg-max class) on the labelled pixels of a ``stride`` grid (module docstring)."""
    sample = np.zeros(truth.shape, bool)
    sample[stride // 2 :: stride, stride // 2 :: stride] = True
    rows, cols = np.nonzero(sample & (truth != IGNORE))
    cloud = sky_mask(baselines.cloudnet_probabilities(image, rows, cols))
    return frame_score(cloud[None, :], truth[rows, cols][None, :])


def _camera_lookup(manifest: dict) -> Callable[[str], str]:
    """Item id -> camera name, from the all-sky sources of the cache's config (``-`` when unknown)."""
    cameras: dict[str, AllSkyConfig] = {}
    for source in manifest["config"]["sources"]:
        if source.get("kind") == "allsky_folder":
            cameras[source["name"]] = from_dict(AllSkyConfig, source.get("allsky") or {})

    def camera_of(item_id: str) -> str:
        source, _, name = item_id.partition("/")
        camera = cameras[source].camera_of(Path(name)) if source in cameras else None
        return camera.name if camera else "-"

    return camera_of


# --- report --------------------------------------------------------------------------------------


def results_table(summary: dict, group: str = OVERALL) -> Table:
    """Model vs baselines on one group (overall or one camera)."""
    rows = []
    for name, values in summary["results"][group].items():
        rows.append([
            LABELS[name], values["frames"], *values["iou_per_class"].values(), values["mean_iou"],
            values["pixel_accuracy"], values["cloud_f1"], values["cloud_fraction_mae_pp"],
            values["cloud_fraction_bias_pp"], values["okta_exact"], values["okta_within_1"], values["condition_accuracy"],
        ])  # fmt: skip
    columns = [
        "",
        "frames",
        "IoU clear",
        "IoU cloud",
        "mIoU",
        "pixel acc.",
        "cloud F1",
        "CF MAE (pp)",
        "CF bias (pp)",
        "okta exact",
        "okta ±1",
        "condition acc.",
    ]
    note = (
        "Confusion counts summed over every labelled pixel (ignore excluded); CF MAE = mean absolute error of "
        "the per-frame cloud fraction in percentage points, CF bias its mean signed error (> 0: too much cloud)."
    )
    return Table(f"Cloud segmentation: {group}", columns, rows, note)


def condition_table(summary: dict, name: str = "model", group: str = OVERALL) -> Table:
    """Derived sky condition (columns) vs the frames' sky-type label (rows)."""
    confusion = summary["results"][group][name]["condition_confusion"]
    rows = [[truth, *counts.values()] for truth, counts in confusion.items()]
    return Table(
        f"Sky condition of {LABELS[name]} ({group}): label (rows) vs derived (columns)",
        ["label \\ derived", *CONDITIONS],
        rows,
    )


def report_markdown(summary: dict) -> str:
    """``eval.md``: settings, a table per group, the model's condition confusion, skipped frames."""
    b = summary["baselines"]
    counts = summary["counts"]
    paragraphs = [
        f"Model `{summary['model']}` on `{summary['data']}` (split `{summary['split']}`): {counts['evaluated']} "
        f"frames evaluated, {counts['skipped']} skipped. Cloud = P(cloud) >= {summary['threshold']}.",
        f"Baselines fitted on {b['fit_frames']} training frames: R/B >= {b['thresholds']['red_blue_ratio']:.4f}, "
        f"R - B >= {b['thresholds']['red_minus_blue']:.1f}; CloudNet trained on {b['cloudnet_patches']} patches "
        f"({b['cloudnet_epochs']} epochs), scored on every {summary['cloudnet_stride']}th row and column.",
    ]
    sun = summary["sun"][OVERALL]
    if sun:
        shares = (
            f"{sun['undefined_share']:.0%} of its {sun['excluded_pixels']} excluded pixels undefined in the "
            f"annotation, {sun['model_cloud_share']:.0%} called cloud by the model"
            if sun["excluded_pixels"]
            else "nothing excluded"
        )
        paragraphs.append(
            f"Sun found on {sun['found']} of {sun['frames']} frames ({shares}); by sky type: "
            + ", ".join(f"{t} {n}" for t, n in sun["found_by_sky_type"].items())
            + "."
        )
    tables = [results_table(summary, group) for group in summary["results"]]
    tables.append(condition_table(summary))
    if summary["skipped"]:
        tables.append(Table("Skipped", ["frame", "reason"], [[s["id"], s["reason"]] for s in summary["skipped"]]))
    return markdown_document("Cloud segmenter evaluation", paragraphs, tables)
