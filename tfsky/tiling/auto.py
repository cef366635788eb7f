"""``tile: auto``: the tile and tile batch that fit the memory budget (a CPU budget, or a GPU's free memory
read with ``nvidia-smi``)."""

from __future__ import annotations

import dataclasses
import math
from typing import Optional

import tensorflow as tf

from tfsky.tiling.config import AUTO, TilingConfig, default_overlap, overlap_of

MAX_AUTO_TILE = 1024  # largest tile ``auto`` considers (per-pixel cost rises beyond it on CPU: README)
MIN_AUTO_TILE = 256  # smallest (unless the image is smaller), even past the budget
CPU_MEMORY_BUDGET_GB = 1.5  # default budget of a whole process on a CPU
FORWARD_BYTES_PER_PIXEL = 400  # activation memory per input pixel of one model call (ResNet34 U-Net, float32:
#                                343-368 B measured on CPU at 256 x 8 and 1024 x 1 tiles)
RUNTIME_BYTES = 0.94e9  # TensorFlow with a ResNet34 U-Net loaded, and a job's per-tile-shape kernel caches:
#                        calibrated on bench_predict's 6-image 8K job, which peaked at 1.52 GB with 608-px tiles
#                        (the choice at 0.9e9) and at 1.47 GB with the 544-px tiles this gives
IMAGE_BYTES = 8192 * 4096 * 13  # an 8K RGB image job in flight in `tfsky predict`, per pixel: this image (3 B) and
#                                 its float32 accumulator (4 B), and either the previous one in the writer (its
#                                 image, overlay drawn in place, 3 B, and stored maps, 3 B) or the next one
#                                 decoding (3 B): `tfsky.batch.LocalEngine` reads the next after that writing


def choose_tiling(
    tiling: TilingConfig,
    multiple: int,
    size: Optional[tuple[int, int]],
    available_bytes: float,
    bytes_per_pixel: float = FORWARD_BYTES_PER_PIXEL,
) -> TilingConfig:
    """The tiling an image is predicted with: ``tile: auto`` resolved; a set tile is kept, its overlap filled in.

    ``auto`` is the largest multiple of ``multiple`` (at most `MAX_AUTO_TILE`, at least `MIN_AUTO_TILE`
    even when that does not fit) whose model call fits ``available_bytes`` (``bytes_per_pixel`` per input
    pixel), capped at the image's longer side rounded up to ``multiple``; the overlap is `AUTO_OVERLAP_PX`
    pixels unless ``tiling.overlap`` is set; ``tile_batch`` is lowered until a batch fits. The grid of
    `tile_axis` fits that tile to each image (a smaller last row/column, one tile for a smaller image),
    so the choice depends only on the budget: ``tfsky predict``, ``translate``, ``evaluate`` and the
    exported signature (``size`` None: images of any size) cut every image alike for the same budget.

    Args:
        tiling: TilingConfig. Validated by `model_tiling`.
        multiple: int. Tile sides must be a multiple of this.
        size: tuple of int or None. ``(height, width)`` of the image as predicted, when known.
        available_bytes: float. Memory the model's calls may take (`available_memory`).
        bytes_per_pixel: float. Activation memory of one input pixel. Defaults to `FORWARD_BYTES_PER_PIXEL`.
    """
    if tiling.tile != AUTO:
        return dataclasses.replace(tiling, overlap=overlap_of(tiling))
    fitting = int(math.sqrt(max(available_bytes, 0) / bytes_per_pixel)) // multiple * multiple
    tile = max(-(-MIN_AUTO_TILE // multiple) * multiple, min(fitting, MAX_AUTO_TILE))
    if size is not None:  # the same grid as the full tile (`tile_axis`), with the batch of the real call size
        tile = min(tile, -(-max(size) // multiple) * multiple)
    overlap = tiling.overlap if tiling.overlap is not None else default_overlap(tile)
    batch = max(1, min(tiling.tile_batch, int(available_bytes // (bytes_per_pixel * tile * tile))))
    return dataclasses.replace(tiling, tile=tile, overlap=overlap, tile_batch=batch)


def available_memory(budget_gb: Optional[float], held_bytes: float = IMAGE_BYTES) -> float:
    """Bytes the model's calls may take: the budget (`TilingConfig.memory_budget`; default 1.5 GB on a CPU)
    less `RUNTIME_BYTES` and ``held_bytes`` (the images in flight); on a GPU by default, its free memory.

    Fixed figures rather than this process's resident memory, so every process (``tfsky predict``,
    ``tfsky export``, a test run) makes the same choice for the same budget.
    """
    gpu_free = _gpu_free_bytes() if budget_gb is None else None
    if gpu_free is not None:
        return gpu_free
    return (budget_gb or CPU_MEMORY_BUDGET_GB) * 1e9 - RUNTIME_BYTES - held_bytes


def _gpu_free_bytes() -> Optional[float]:
    """Free memory of the first GPU TensorFlow sees, from ``nvidia-smi``; None without a GPU."""
    if not tf.config.list_physical_devices("GPU"):
        return None
    import subprocess

    try:
        answer = subprocess.run(
            ["nvidia-smi", "--query-gpu=memory.free", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
        return float(answer.stdout.split()[0]) * 2**20
    except (OSError, subprocess.SubprocessError, ValueError, IndexError):
        return None
