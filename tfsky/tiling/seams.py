"""The seam metric: how visible tile borders are in a tiled prediction."""

from __future__ import annotations

from typing import Optional

import numpy as np

from tfsky.tiling.grid import tile_axis


def seam_score(prob: np.ndarray, tile: int, overlap: float, multiple: Optional[int] = None) -> float:
    """How visible tile borders are: mean |step| between neighbours across borders / inside tiles.

    Borders are the first and last pixel columns/rows of every tile of the grid
    ``(tile, overlap, multiple)`` (`tile_axis`) that lie inside the image. 1 means
    seams are invisible; a hard seam gives values well above 1. ``prob`` is [H, W] or [H, W, K].
    """
    prob = np.asarray(prob, np.float32)
    prob = prob.reshape(prob.shape[:2] + (-1,))
    border_steps, inner_steps = [], []
    for axis in (0, 1):
        steps = np.abs(np.diff(prob, axis=axis))  # steps[i] is between pixels i and i + 1
        length: int = prob.shape[axis]
        starts, last, _ = (np.asarray(value) for value in tile_axis(length, tile, overlap, multiple))
        ends = [s + tile for s in starts[:-1]] + [starts[-1] + int(last)]
        edges = {s - 1 for s in starts if s > 0} | {e - 1 for e in ends if e < length}
        is_border = np.zeros(length - 1, bool)
        is_border[np.array(sorted(edges), dtype=np.intp)] = True
        border_steps.append(np.compress(is_border, steps, axis=axis).ravel())
        inner_steps.append(np.compress(~is_border, steps, axis=axis).ravel())
    border = np.concatenate(border_steps)
    inner = np.concatenate(inner_steps)
    if border.size == 0 or inner.size == 0 or inner.mean() == 0:
        return float("nan")
    return float(border.mean() / inner.mean())
