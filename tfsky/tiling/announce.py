"""What ``tile: auto`` chose, in one line for the user (logged once by the object that chose it)."""

from __future__ import annotations

from typing import Optional

from tfsky.tiling.auto import CPU_MEMORY_BUDGET_GB, FORWARD_BYTES_PER_PIXEL
from tfsky.tiling.config import AUTO, TilingConfig, overlap_of, resolved_tile
from tfsky.tiling.grid import count_tiles, tile_stride


def auto_tiling_message(
    tiling: TilingConfig, size: tuple[int, int], requested: TilingConfig, multiple: int
) -> Optional[str]:
    """The line that tells what ``tile: auto`` chose for a ``size`` image cut into several tiles; None for
    explicit tiles, or for an image that is one tile. The object that chose the tiling logs it once
    (`tfsky.progress.Once`)."""
    if requested.tile != AUTO:
        return None
    tile, overlap = resolved_tile(tiling), overlap_of(tiling)
    if count_tiles(*size, tile, overlap, multiple) < 2:
        return None
    where = f"{size[1]}x{size[0]} images"
    pixels = tile * tile * tiling.tile_batch
    return (
        f"tiling auto: tile {tile}, overlap {tile - tile_stride(tile, overlap)} px, "
        f"tile batch {tiling.tile_batch} for {where} ({pixels * FORWARD_BYTES_PER_PIXEL / 1e9:.2f} GB per call; "
        f"memory budget {requested.memory_budget or CPU_MEMORY_BUDGET_GB} GB)"
    )
