"""Evaluate a weather translator on (source, target) pairs against naive baselines.

Every pair is translated at full resolution exactly as ``tfsky translate``
does (tiled). Methods compared:

- ``model``: the translator's output;
- ``model (sky composite)``: the output only inside the camera sky mask
  (feathered, `tfsky.predict.translate.composite`) — pairs with a mask only;
- ``identity``: output = source (what doing nothing scores);
- ``mean target sky``: the source with its sky pixels replaced by the mean
  sky colour of the TRAINING split's target frames (of the evaluated split
  when the training split has no readable masked pair) — pairs with a mask only.

Metrics (images in [0, 1], averaged over pairs): ``psnr``, ``ssim``
(`tf.image.ssim`, max 1) and ``l1`` against the target; ``nonsky_psnr``
between output and SOURCE over non-sky pixels (what is not weather should
not change: higher is better); ``sky_psnr`` against the target over sky
pixels. PSNR of identical pixels is reported as `PSNR_CAP` dB (JSON has no
infinity). Sky metrics need the camera mask and are None without one.

A pair whose source, target or mask cannot be read (or does not fit the
model or the other frames) is skipped and listed with its reason in both
reports, as the segmenter evaluation does; the rest is evaluated.

Outputs in ``out_dir``: ``translator_eval.json``, ``translator_eval.md``
and ``contact_sheet.png`` (rows source | output | target), all atomic.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Optional

import cv2
import numpy as np
import tensorflow as tf

from tfsky.data.pairs import Pair, load_pair_arrays, read_pairs
from tfsky.errors import InputError
from tfsky.evaluate.config import EvaluateConfig
from tfsky.evaluate.report import Table, markdown_document, write_report
from tfsky.io.writers import write_png
from tfsky.models.image_quality import PSNR_CAP, psnr
from tfsky.predict.translate import CompositeConfig, TiledTranslator, composite, feathered_sky_weight, to_uint8
from tfsky.progress import Progress, tracked
from tfsky.tiling import TilingConfig

METRICS = ("psnr", "ssim", "l1", "nonsky_psnr", "sky_psnr")
METHODS = ("model", "model (sky composite)", "identity", "mean target sky")
REPORT_STEM = "translator_eval"
THUMB_WIDTH = 320


def image_metrics(
    output: np.ndarray, source: np.ndarray, target: np.ndarray, sky: Optional[np.ndarray]
) -> dict[str, Optional[float]]:
    """All `METRICS` of one output (float [H, W, 3] in [0, 1]); ``sky`` is a boolean [H, W] mask or None."""
    ssim = tf.image.ssim(tf.constant(output[None]), tf.constant(target[None]), max_val=1.0)
    return {
        "psnr": psnr(output, target),
        "ssim": float(ssim[0]),
        "l1": float(np.mean(np.abs(output - target))),
        "nonsky_psnr": psnr(output, source, ~sky) if sky is not None else None,
        "sky_psnr": psnr(output, target, sky) if sky is not None else None,
    }


def mean_sky_colour(pairs: list[Pair]) -> Optional[np.ndarray]:
    """Mean RGB in [0, 1] over the sky pixels of the pairs' distinct target frames (None without masks)."""
    total, count, seen = np.zeros(3), 0, set()
    for pair in pairs:
        if not pair.mask or pair.target in seen:
            continue
        try:
            _, target, mask = load_pair_arrays(pair.source, pair.target, pair.mask)
        except InputError:
            continue  # another pair may have this target; evaluated pairs are reported by the evaluation pass
        seen.add(pair.target)
        sky = mask[..., 0] > 0
        total += target[sky].sum(axis=0) / 255.0
        count += int(sky.sum())
    return total / count if count else None


@dataclasses.dataclass
class TranslatorReport:
    """Per-pair metrics of every method, their means, the skipped pairs and the written files."""

    split: str
    tiling: TilingConfig
    per_pair: list[dict]
    skipped: list[dict[str, str]]
    means: dict[str, dict[str, Optional[float]]]
    files: list[Path]

    def to_json(self) -> dict:
        return {
            "split": self.split,
            "tiling": dataclasses.asdict(self.tiling),
            "counts": {"evaluated": len(self.per_pair), "skipped": len(self.skipped)},
            "means": self.means,
            "per_pair": self.per_pair,
            "skipped": self.skipped,
        }


def evaluate_translator(
    model_path: str | Path,
    pairs_path: str | Path,
    out_dir: str | Path,
    *,
    split: str = EvaluateConfig.split,
    tiling: TilingConfig | None = None,
    feather: float = CompositeConfig.feather,
    contact_rows: int = 6,
    progress: Optional[Progress] = None,
) -> TranslatorReport:
    """Evaluate ``model_path`` on the ``split`` pairs of ``pairs_path``; write the report into ``out_dir``.

    Args:
        model_path: str | Path. A translator (``.keras`` with its sidecar).
        pairs_path: str | Path. Pairs file written by ``tfsky streams pairs``.
        out_dir: str | Path. Report folder.
        split: str. Pairs split to evaluate. Defaults to ``val``.
        tiling: TilingConfig. Tiles and blending of the translation. Defaults to None (the `TilingConfig` defaults).
        feather: float. Sky edge of the composite method, Gaussian sigma in pixels. Defaults to 5.
        contact_rows: int. Pairs shown in the contact sheet. Defaults to 6.
        progress: Progress. Advanced with each pair's source file name once it is evaluated or skipped
            (`tfsky.progress`). Defaults to None.

    Raises:
        InputError: missing or invalid pairs file or model, no pair in ``split``, or no pair that could be
            evaluated. A single bad pair is skipped and reported in ``TranslatorReport.skipped``.
    """
    pairs = read_pairs(pairs_path, split)
    if not pairs:
        raise InputError(pairs_path, f"no {split!r} pairs (the split is by camera: a single camera is all 'train')")
    translator = TiledTranslator.load(model_path, tiling)
    sky_colour = mean_sky_colour(read_pairs(pairs_path, "train"))
    if sky_colour is None:  # no usable training sky: the evaluated pairs' own (a best case for the baseline)
        sky_colour = mean_sky_colour(pairs)
    per_pair: list[dict[str, Any]] = []
    skipped: list[dict[str, str]] = []
    sheet_rows: list[np.ndarray] = []
    translated: dict[str, np.ndarray] = {}  # one translation per distinct source frame
    with tracked(progress, len(pairs), "evaluate") as progress:
        for pair in pairs:
            try:
                source_u8, target_u8, mask = _load_and_translate(pair, translator, translated)
            except InputError as err:
                skipped.append({"source": pair.source, "target": pair.target, "reason": str(err)})
                progress.advanced(Path(pair.source).name)
                continue
            source, target = source_u8 / np.float32(255), target_u8 / np.float32(255)
            outputs = _method_outputs(
                source_u8, source, translated[pair.source], mask if pair.mask else None, sky_colour, feather
            )
            sky = mask[..., 0] > 0 if pair.mask else None
            per_pair.append(
                {
                    "camera": pair.camera,
                    "source": pair.source,
                    "target": pair.target,
                    "metrics": {name: image_metrics(output, source, target, sky) for name, output in outputs.items()},
                }
            )
            if len(sheet_rows) < contact_rows:
                sheet_rows.append(_sheet_row(source_u8, outputs["model"], target_u8))
            progress.advanced(Path(pair.source).name)
    if not per_pair:
        raise InputError(
            pairs_path, f"no {split!r} pair could be evaluated ({len(skipped)} skipped: {skipped[0]['reason']})"
        )
    report = TranslatorReport(split, translator.tiling, per_pair, skipped, _means(per_pair), [])
    report.files = _write(report, model_path, pairs_path, Path(out_dir), sheet_rows)
    return report


def _load_and_translate(pair: Pair, translator: TiledTranslator, translated: dict[str, np.ndarray]):
    """The pair's uint8 source, target and mask; translates the source into ``translated`` once.

    Raises:
        InputError: a frame or the mask cannot be read, the sizes differ, or the source does not fit the model.
    """
    source_u8, target_u8, mask = load_pair_arrays(pair.source, pair.target, pair.mask)
    if pair.source not in translated:
        translator.check(source_u8, pair.source)
        translated[pair.source] = translator.translate(source_u8)
    return source_u8, target_u8, mask


def _write(report: TranslatorReport, model_path, pairs_path, out_dir: Path, sheet_rows: list) -> list[Path]:
    """Write the JSON and Markdown reports and the contact sheet; return their paths."""
    summary = {"model": str(model_path), "pairs_file": str(pairs_path), **report.to_json()}
    json_path, md_path = write_report(out_dir, REPORT_STEM, summary, _markdown(report, model_path))
    sheet = out_dir / "contact_sheet.png"
    write_png(sheet, np.concatenate(sheet_rows, axis=0))
    return [json_path, md_path, sheet]


def _method_outputs(source_u8, source, model_out, mask, sky_colour, feather) -> dict[str, np.ndarray]:
    """Float [0, 1] outputs of every method that applies to this pair (``source`` is ``source_u8`` in [0, 1])."""
    outputs = {"model": model_out, "identity": source}
    if mask is not None:
        weight = feathered_sky_weight(mask[..., 0].astype(np.float32), feather)
        outputs["model (sky composite)"] = composite(source_u8, model_out, weight) / np.float32(255)
        if sky_colour is not None:
            outputs["mean target sky"] = np.where(mask > 0, sky_colour.astype(np.float32), source)
    return outputs


def _means(per_pair: list[dict]) -> dict[str, dict[str, Optional[float]]]:
    means = {}
    for method in METHODS:
        rows = [p["metrics"][method] for p in per_pair if method in p["metrics"]]
        if rows:
            means[method] = {m: _mean([r[m] for r in rows if r[m] is not None]) for m in METRICS}
    return means


def _mean(values: list[float]) -> Optional[float]:
    return float(np.mean(values)) if values else None


def summary_table(report: TranslatorReport) -> Table:
    """Mean metrics per method (the table printed and written to Markdown)."""
    rows = [[method, *(report.means[method][m] for m in METRICS)] for method in report.means]
    note = (
        f"Mean over {len(report.per_pair)} '{report.split}' pairs. psnr/ssim/l1 and sky_psnr against the target; "
        f"nonsky_psnr against the SOURCE (unchanged ground = high; identical = {PSNR_CAP:.0f} dB)."
    )
    return Table("Weather translation", ["method", *METRICS], rows, note)


def _markdown(report: TranslatorReport, model_path) -> str:
    paragraphs = [
        f"Model: `{model_path}`: {len(report.per_pair)} '{report.split}' pairs evaluated, "
        f"{len(report.skipped)} skipped.",
        "Contact sheet: `contact_sheet.png` (rows: source | output | target).",
    ]
    tables = [summary_table(report)]
    if report.skipped:
        rows = [[s["source"], s["target"], s["reason"]] for s in report.skipped]
        tables.append(Table("Skipped", ["source", "target", "reason"], rows))
    return markdown_document("Translator evaluation", paragraphs, tables)


def _sheet_row(source_u8: np.ndarray, output: np.ndarray, target_u8: np.ndarray) -> np.ndarray:
    """One contact-sheet row: three thumbnails side by side with 4 px white gaps."""
    height = max(1, round(source_u8.shape[0] * THUMB_WIDTH / source_u8.shape[1]))

    def thumb(image: np.ndarray) -> np.ndarray:
        return cv2.resize(image, (THUMB_WIDTH, height), interpolation=cv2.INTER_AREA)

    gap = np.full((height, 4, 3), 255, np.uint8)
    row = np.concatenate([thumb(source_u8), gap, thumb(to_uint8(output)), gap, thumb(target_u8)], axis=1)
    return np.concatenate([row, np.full((4, row.shape[1], 3), 255, np.uint8)], axis=0)
