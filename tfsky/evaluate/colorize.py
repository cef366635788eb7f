"""Evaluate a colorizer on the held-out split of its own sources against three naive baselines.

The split by source is rebuilt from the model's recorded config (`tfsky.data.colour.colour_split`),
so the evaluated images are exactly those the run validated on. Each image is colorized at its
full resolution exactly as ``tfsky colorize`` does (its L, from the colour truth). Methods, all
keeping the truth's L:

- ``model``: the colorizer as ``tfsky colorize`` runs it, chroma gate included (a frame whose coarse
  output is nearly colourless comes out grey; `tfsky.predict.colorize`);
- ``model (no gate)``: the colorizer with its gate ignored (the same as ``model`` when it has none);
- ``grey``: ab = 0;
- ``mean ab``: the training split's mean ab everywhere;
- ``nearest colour``: per pixel, the mean ab of the training pixels of the same lightness
  (1-unit L histogram bins; ab by L-histogram matching).

Every method's colours are brought into sRGB the same way (`tfsky.data.colour.fit_gamut`).

Metrics (per image, then averaged): ``psnr`` and ``ssim`` on sRGB in [0, 1] (`tf.image.ssim`),
``ab_l1`` (mean |ab| error in Lab units of the output as displayed, i.e. after the sRGB gamut clip),
``colourfulness`` (Hasler and Suesstrunk 2003, on 0..255 RGB) and ``colourfulness_error``
(|prediction - truth|). ``beats_baselines`` says whether the model (gated) is better than every
baseline on mean PSNR and mean colourfulness error (the issue's target). The report also gives the
gate, each image's gate statistic and decision, and how many images of each folder were gated.

Outputs in ``out_dir`` (atomic): ``colorize_eval.json``, ``colorize_eval.md``, ``contact_sheet.png``
(rows grey | prediction | truth), ``psnr_distribution.png`` and, when the run's ``history.csv``
sits beside the model, ``learning_curves.png``. An image that cannot be read is skipped and listed.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any, Optional

import numpy as np
import tensorflow as tf

from tfsky.data.colour import colour_split, fit_gamut, lab_of, lab_to_rgb, load_frames, read_truth
from tfsky.errors import InputError
from tfsky.evaluate.report import Table, markdown_document, write_report
from tfsky.io.atomic import atomic_path
from tfsky.io.writers import write_png
from tfsky.models.bundle import ModelKind, load_info
from tfsky.models.image_quality import psnr
from tfsky.progress import Progress, tracked
from tfsky.predict.colorize import TiledColorizer
from tfsky.tiling import TilingConfig
from tfsky.train.config import TranslatorConfig, trained_config
from tfsky.train.runner import draw_learning_curves, read_history

REPORT_STEM = "colorize_eval"
log = logging.getLogger("tfsky")
METHODS = ("model", "model (no gate)", "grey", "mean ab", "nearest colour")
BASELINES = METHODS[2:]
METRICS = ("psnr", "ssim", "ab_l1", "colourfulness", "colourfulness_error")
THUMB_WIDTH = 256
_L_BINS = 101  # 1-unit lightness bins, 0..100


def colourfulness(rgb: np.ndarray) -> float:
    """Hasler and Suesstrunk's colourfulness of sRGB in [0, 1] (computed on the 0..255 scale)."""
    pixels = rgb.reshape(-1, 3).astype(np.float64) * 255
    rg = pixels[:, 0] - pixels[:, 1]
    yb = 0.5 * (pixels[:, 0] + pixels[:, 1]) - pixels[:, 2]
    return float(np.hypot(rg.std(), yb.std()) + 0.3 * np.hypot(rg.mean(), yb.mean()))


@dataclasses.dataclass
class TrainingColour:
    """The baselines' knowledge of the training split: mean ab and mean ab per lightness bin."""

    mean_ab: np.ndarray  # [2]
    ab_by_lightness: np.ndarray  # [_L_BINS, 2]

    @classmethod
    def fit(cls, frames_lab: list[np.ndarray]) -> "TrainingColour":
        sums, counts = np.zeros((_L_BINS, 2)), np.zeros(_L_BINS)
        for lab in frames_lab:
            bins = _lightness_bins(lab[..., 0]).ravel()
            np.add.at(sums, bins, lab[..., 1:].reshape(-1, 2))
            np.add.at(counts, bins, 1)
        mean_ab = sums.sum(axis=0) / counts.sum()
        filled = np.nonzero(counts)[0]
        table = np.empty((_L_BINS, 2))
        for index in range(_L_BINS):  # empty bins take the nearest filled bin's colour
            nearest = filled[np.argmin(np.abs(filled - index))]
            table[index] = sums[nearest] / counts[nearest]
        return cls(mean_ab.astype(np.float32), table.astype(np.float32))

    def baselines(self, lightness: np.ndarray) -> dict[str, np.ndarray]:
        """The baselines' ab [H, W, 2] for an image of ``lightness`` [H, W]."""
        shape = lightness.shape + (2,)
        return {
            "grey": np.zeros(shape, np.float32),
            "mean ab": np.broadcast_to(self.mean_ab, shape),
            "nearest colour": self.ab_by_lightness[_lightness_bins(lightness)],
        }


def _lightness_bins(lightness: np.ndarray) -> np.ndarray:
    return np.clip(np.round(lightness), 0, _L_BINS - 1).astype(np.intp)


@dataclasses.dataclass
class ColorizeReport:
    """Per-image metrics of every method, their means, the verdict, the skipped images and the files."""

    split: str
    per_image: list[dict]
    skipped: list[dict[str, str]]
    means: dict[str, dict[str, float]]
    files: list[Path]
    chroma_gate: Optional[float] = None

    @property
    def gated_by_folder(self) -> dict[str, dict[str, int]]:
        """Folder (a weather class, a camera) -> images evaluated and gated."""
        folders: dict[str, dict[str, int]] = {}
        for entry in self.per_image:
            counts = folders.setdefault(Path(entry["image"]).parent.name, {"images": 0, "gated": 0})
            counts["images"] += 1
            counts["gated"] += entry["gated"]
        return dict(sorted(folders.items()))

    @property
    def beats_baselines(self) -> bool:
        model = self.means["model"]
        return all(
            model["psnr"] > self.means[b]["psnr"]
            and model["colourfulness_error"] < self.means[b]["colourfulness_error"]
            for b in BASELINES
        )

    def to_json(self) -> dict:
        gated = sum(entry["gated"] for entry in self.per_image)
        return {
            "split": self.split,
            "counts": {"evaluated": len(self.per_image), "skipped": len(self.skipped), "gated": gated},
            "chroma_gate": {"threshold": self.chroma_gate, "by_folder": self.gated_by_folder},
            "means": self.means,
            "beats_baselines": self.beats_baselines,
            "per_image": self.per_image,
            "skipped": self.skipped,
        }


def evaluate_colorizer(
    model_path: str | Path,
    out_dir: str | Path,
    *,
    split: str = "val",
    tiling: TilingConfig | None = None,
    contact_rows: int = 6,
    progress: Optional[Progress] = None,
) -> ColorizeReport:
    """Evaluate the colorizer ``model_path`` on the ``split`` images of its sources; write the report.

    The contact sheet shows ``contact_rows`` images spread evenly over the split. ``progress`` is advanced with
    each image's file name once it is evaluated or skipped (`tfsky.progress`).

    Raises:
        InputError: the model is not a colorizer, the split is empty, or no image could be evaluated.
        ConfigError: ``split`` is not train or val.
    """
    from tfsky.errors import ConfigError

    if split not in ("train", "val"):
        raise ConfigError("evaluate.split", f"must be train or val for a colorizer; got {split!r}")
    info = load_info(model_path, kind=ModelKind.COLORIZER)
    cfg = trained_config(info, TranslatorConfig, model_path)
    paths = colour_split(cfg.colour)
    if not paths[split]:
        raise InputError(model_path, f"its sources have no {split!r} images (the split is by source)")
    training = TrainingColour.fit(
        [
            frame.lab
            for frame in load_frames(
                paths["train"], cfg.data.load_size, cfg.data.crop_size, cfg.model.colorize.generator_size
            )
        ]
    )
    colorizer = TiledColorizer.load(model_path, tiling)
    per_image: list[dict[str, Any]] = []
    skipped: list[dict[str, str]] = []
    sheet: list[np.ndarray] = []
    shown = set(np.linspace(0, len(paths[split]) - 1, contact_rows).round().astype(int).tolist())  # spread out
    with tracked(progress, len(paths[split]), "evaluate") as progress:
        for index, path in enumerate(paths[split]):
            try:
                image, truth_lab, truth = read_truth(path)
            except InputError as err:
                skipped.append({"image": str(path), "reason": str(err)})
                progress.advanced(path.name)
                continue
            colorized = colorizer.colorize_frame(image, path)
            ungated = colorizer.colorize_frame(image, path, gate=False).rgb if colorized.gated else colorized.rgb
            outputs = {"model": colorized.rgb / np.float32(255), "model (no gate)": ungated / np.float32(255)}
            for name, ab in training.baselines(truth_lab[..., 0]).items():
                outputs[name] = lab_to_rgb(fit_gamut(np.concatenate([truth_lab[..., :1], ab], axis=-1))).numpy()
            per_image.append(
                {
                    "image": str(path),
                    "chroma": colorized.chroma,
                    "gated": colorized.gated,
                    "metrics": {name: _metrics(out, truth, truth_lab) for name, out in outputs.items()},
                }
            )
            if index in shown:
                sheet.append(_sheet_row([outputs["grey"], outputs["model"], truth]))
            progress.advanced(path.name)
    if not per_image:
        raise InputError(model_path, f"no {split!r} image could be evaluated ({skipped[0]['reason']})")
    means = {
        method: {m: float(np.mean([p["metrics"][method][m] for p in per_image])) for m in METRICS} for method in METHODS
    }
    report = ColorizeReport(split, per_image, skipped, means, [], info.chroma_gate)
    report.files = _write(report, Path(model_path), Path(out_dir), sheet)
    return report


def _metrics(output: np.ndarray, truth: np.ndarray, truth_lab: np.ndarray) -> dict[str, Optional[float]]:
    ssim = tf.image.ssim(tf.constant(output[None]), tf.constant(truth[None]), max_val=1.0)
    shown_ab = lab_of(np.round(output * 255).astype(np.uint8))[..., 1:]
    colour = colourfulness(output)
    return {
        "psnr": psnr(output, truth),
        "ssim": float(ssim[0]),
        "ab_l1": float(np.mean(np.abs(shown_ab - truth_lab[..., 1:]))),
        "colourfulness": colour,
        "colourfulness_error": abs(colour - colourfulness(truth)),
    }


def _sheet_row(images: list[np.ndarray]) -> np.ndarray:
    """One contact-sheet row: thumbnails side by side with 4 px white gaps (uint8)."""
    import cv2

    height = max(1, round(images[0].shape[0] * THUMB_WIDTH / images[0].shape[1]))
    thumbs = [
        cv2.resize(np.round(image * 255).astype(np.uint8), (THUMB_WIDTH, height), interpolation=cv2.INTER_AREA)
        for image in images
    ]
    gap = np.full((height, 4, 3), 255, np.uint8)
    row = np.concatenate([thumbs[0], gap, thumbs[1], gap, thumbs[2]], axis=1)
    return np.concatenate([row, np.full((4, row.shape[1], 3), 255, np.uint8)], axis=0)


def summary_table(report: ColorizeReport) -> Table:
    """Mean metrics per method (printed and written to Markdown)."""
    rows = [[method, *(report.means[method][m] for m in METRICS)] for method in METHODS]
    verdict = "beats" if report.beats_baselines else "does NOT beat"
    note = (
        f"Mean over {len(report.per_image)} '{report.split}' images (split by source). The model {verdict} "
        f"all three baselines on PSNR and colourfulness error. ab_l1 in Lab units. {gate_sentence(report)}"
    )
    return Table("Colorization", ["method", *METRICS], rows, note)


def gate_sentence(report: ColorizeReport) -> str:
    """What the chroma gate did on the evaluated images."""
    if report.chroma_gate is None:
        return "No chroma gate stored: 'model' and 'model (no gate)' are the same."
    gated = sum(entry["gated"] for entry in report.per_image)
    return (
        f"Chroma gate {report.chroma_gate:.2f} (fitted on the training split): {gated} of "
        f"{len(report.per_image)} images came out grey."
    )


def gate_table(report: ColorizeReport) -> Table:
    """Images gated per folder (weather class, camera)."""
    rows = [[folder, counts["images"], counts["gated"]] for folder, counts in report.gated_by_folder.items()]
    return Table("Chroma gate", ["folder", "images", "gated (grey)"], rows, gate_sentence(report))


def _write(report: ColorizeReport, model_path: Path, out_dir: Path, sheet: list[np.ndarray]) -> list[Path]:
    summary = {"model": str(model_path), **report.to_json()}
    paragraphs = [
        f"Model: `{model_path}`: {len(report.per_image)} '{report.split}' images evaluated, "
        f"{len(report.skipped)} skipped.",
        "Contact sheet: `contact_sheet.png` (rows: grey | prediction | truth); "
        "`psnr_distribution.png`: per-image PSNR of every method.",
    ]
    tables = [summary_table(report), gate_table(report)]
    if report.skipped:
        tables.append(Table("Skipped", ["image", "reason"], [[s["image"], s["reason"]] for s in report.skipped]))
    json_path, md_path = write_report(
        out_dir, REPORT_STEM, summary, markdown_document("Colorizer evaluation", paragraphs, tables)
    )
    files = [json_path, md_path, out_dir / "contact_sheet.png", out_dir / "psnr_distribution.png"]
    write_png(files[2], np.concatenate(sheet, axis=0))
    _draw_psnr_distribution(report, files[3])
    history = read_history(model_path.parent / "history.csv")
    if history:
        files.append(out_dir / "learning_curves.png")
        draw_learning_curves(history, files[-1])
    return files


def _draw_psnr_distribution(report: ColorizeReport, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    values = {m: [p["metrics"][m]["psnr"] for p in report.per_image] for m in METHODS}
    bins = np.linspace(min(min(v) for v in values.values()), max(max(v) for v in values.values()), 30)
    for method in METHODS:
        ax.hist(
            values[method],
            bins=bins.tolist(),
            histtype="step",
            linewidth=1.5,
            label=f"{method} (mean {np.mean(values[method]):.2f} dB)",
        )
    ax.set_xlabel("PSNR (dB, sRGB)")
    ax.set_ylabel("images")
    ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100)
    plt.close(fig)
