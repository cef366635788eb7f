"""The colorizer's chroma gate, fitted on the training split after training (`fit_chroma_gate`).

A frame whose coarse output's gate statistic (`tfsky.models.colorize.coarse_chroma`) is below the
gate comes out grey (L kept, ab = 0) from ``tfsky colorize``, the evaluation and the export
(`ModelInfo.chroma_gate`). The fit colorizes every TRAINING image at its native size with the gate
off, as the evaluation reads it, and keeps the gate below which grey beats the model on mean PSNR
(`best_gate_threshold`); the validation split the evaluation reports never sees it. Training fits it
when ``model.colorize.chroma_gate`` is on (`tfsky.train.colorize`); ``tfsky evaluate translator
--fit-gate`` fits it for an existing model.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path
from typing import Optional

import numpy as np

from tfsky.data.colour import colour_split, read_truth
from tfsky.errors import InputError
from tfsky.io.atomic import write_json
from tfsky.models.bundle import ModelKind, info_path, load_model
from tfsky.models.colorize_frames import FrameColorizer
from tfsky.models.image_quality import psnr
from tfsky.progress import Progress, tracked
from tfsky.tiling import TilingConfig
from tfsky.train.config import TranslatorConfig, trained_config

log = logging.getLogger("tfsky")


@dataclasses.dataclass
class GateFit:
    """The chroma gate fitted on the training split and what it did there (mean PSNR in dB)."""

    threshold: Optional[float]  # None: no gate beats the ungated model
    images: int
    gated: int
    gated_psnr: float
    model_psnr: float
    grey_psnr: float
    seconds: float

    def summary(self) -> str:
        gate = "none (no threshold beats the ungated model)" if self.threshold is None else f"{self.threshold:.2f}"
        return (
            f"chroma gate {gate}, fitted on {self.images} training images: {self.gated} grey; mean PSNR "
            f"{self.gated_psnr:.2f} dB gated, {self.model_psnr:.2f} ungated, {self.grey_psnr:.2f} grey "
            f"({self.seconds:.0f} s)"
        )


def best_gate_threshold(chroma, model_psnr, grey_psnr) -> Optional[float]:
    """The gate maximising the mean PSNR of grey where ``chroma < gate`` and the model elsewhere, or None.

    Candidates are the midpoints between consecutive observed statistics and one above the largest (all
    grey); None (no gate) wins ties, so a gate is stored only where it strictly helps.
    """
    chroma, model_psnr, grey_psnr = (np.asarray(v, np.float64) for v in (chroma, model_psnr, grey_psnr))
    values = np.unique(chroma)
    candidates = np.concatenate([(values[:-1] + values[1:]) / 2, [values[-1] + 1]])
    gated = chroma[None, :] < candidates[:, None]
    means = np.where(gated, grey_psnr[None, :], model_psnr[None, :]).mean(axis=1)
    best = int(np.argmax(means))
    return float(candidates[best]) if means[best] > model_psnr.mean() else None


def fit_chroma_gate(
    model_path: Path, tiling: TilingConfig | None = None, progress: Optional[Progress] = None
) -> GateFit:
    """Fit the chroma gate of the colorizer at ``model_path`` on its training split; store it in the sidecar.

    Every training image is colorized at its native size with the gate off, as the evaluation reads it;
    its gate statistic, model PSNR and grey PSNR (the gated output) go to `best_gate_threshold`. ``progress`` is
    advanced with each image's file name (`tfsky.progress`).

    Raises:
        InputError: the model is not a colorizer, or none of its training images can be read.
    """
    start = time.monotonic()
    model, info = load_model(model_path, kind=ModelKind.COLORIZER)
    trained = trained_config(info, TranslatorConfig, model_path)
    paths = colour_split(trained.colour)["train"]
    colorizer = FrameColorizer(model, info, trained.model.colorize, tiling)
    chroma, model_psnr, grey_psnr = [], [], []
    with tracked(progress, len(paths), "chroma gate") as progress:
        for path in paths:
            try:
                image, _, truth = read_truth(path)
            except InputError as err:
                log.warning("chroma gate: skipped %s", err)
                progress.advanced(path.name)
                continue
            colorized = colorizer.colorize_frame(image, path, gate=False)
            chroma.append(colorized.chroma)
            model_value = psnr(colorized.rgb / np.float32(255), truth)
            grey_value = psnr(colorizer.grey(image) / np.float32(255), truth)
            assert model_value is not None and grey_value is not None  # (None only for no pixels)
            model_psnr.append(model_value)
            grey_psnr.append(grey_value)
            progress.advanced(path.name)
    if not chroma:
        raise InputError(model_path, "none of its training images could be read to fit the chroma gate on")
    threshold = best_gate_threshold(chroma, model_psnr, grey_psnr)
    info.chroma_gate = threshold
    write_json(info_path(model_path), info.to_json())
    gated = np.asarray(chroma) < (-np.inf if threshold is None else threshold)
    return GateFit(
        threshold,
        len(chroma),
        int(gated.sum()),
        float(np.where(gated, grey_psnr, model_psnr).mean()),
        float(np.mean(model_psnr)),
        float(np.mean(grey_psnr)),
        time.monotonic() - start,
    )
