"""Image comparison shared by the evaluations and the colorizer's chroma-gate fit: `psnr`."""

from __future__ import annotations

from typing import Optional

import numpy as np

PSNR_CAP = 100.0  # dB of identical pixels (JSON has no infinity)


def psnr(a: np.ndarray, b: np.ndarray, where: Optional[np.ndarray] = None) -> Optional[float]:
    """PSNR in dB of [0, 1] images over the pixels ``where`` (all by default); None if there are none."""
    diff = (a - b) if where is None else (a - b)[where]
    if diff.size == 0:
        return None
    mse = float(np.mean(np.square(diff, dtype=np.float64)))
    return PSNR_CAP if mse == 0 else min(PSNR_CAP, 10 * np.log10(1.0 / mse))
