"""`TilingConfig`: how an image is cut into tiles and blended back, and the tiling a model runs with."""

from __future__ import annotations

import dataclasses
from typing import Final, Literal, Optional, Union

from tfsky.errors import ConfigError
from tfsky.tiling.grid import tile_stride
from tfsky.tiling.windows import Window

Tta = Literal["none", "flip2", "flip4", "rot4", "rot8"]
Resolution = Literal["working", "full"]

AUTO: Final = "auto"
AUTO_OVERLAP_PX = 16  # the margin (px) a ResNet34 U-Net needs between tiles with the ``ramp`` window: the
#                       smallest overlap of 0..128 px with mask agreement >= 99.9 % and seam score <= 1.05 on
#                       the whole 8K image (bench_predict's ``overlaps`` part: 8 px scores 1.5), where a grid
#                       without overlap errs <= a tenth of its edge pixels' error from ~16 px in (README)


@dataclasses.dataclass
class TilingConfig:
    """How an image is cut into tiles and blended back.

    Args:
        tile: int | str | None. Tile side in pixels; ``auto``: chosen per image size within the memory
            budget (`choose_tiling`); None: the model's training tile. Defaults to ``auto``.
        overlap: Optional[float]. Fraction of the tile shared by neighbours, in [0, 1). Defaults to None:
            `AUTO_OVERLAP_PX` pixels (at most a quarter of the tile).
        window: str. Blend window: ``ramp`` (flat, with raised-cosine ramps across the overlap: neighbours
            cross-fade and sum to 1, so no step at tile borders), ``constant``, ``gaussian``, ``hann`` or
            ``spline``. Defaults to ``ramp``.
        tile_batch: int. Tiles per model call (``auto`` lowers it to fit the memory budget). Defaults to 8.
        tta: str. Test-time augmentation (`with_tta`): ``none``, ``flip2`` (+ horizontal flip), ``flip4``
            (+ vertical and both), ``rot4`` (the four 90-degree rotations) or ``rot8`` (those and their
            mirror images: every orientation of a fisheye frame). Defaults to ``none``.
        resolution: str. ``working``: a model trained at a working scale
            (`tfsky.data.scale`) tiles the image resized to that scale and its
            probabilities are refined back to full size (`tfsky.predict.refine`);
            ``full``: tiles of the full-resolution image. Models trained at native
            resolution always use ``full``. Defaults to ``working``.
        memory_budget: Optional[float]. GB the whole process may use, for ``tile: auto``. Defaults to None:
            1.5 GB on a CPU, the free memory of the GPU on a GPU.
        working_factor: float. ``resolution: working`` predicts at this multiple of the model's working
            scale: 1.5 recovers thin sky (10 unseen Cityscapes photos: IoU 0.721 vs 0.657 at 1.0, full
            resolution 0.707, README "Working scale") for ~2.2x the working-scale time. Defaults to 1.0.
    """

    tile: Union[int, Literal["auto"], None] = AUTO
    overlap: Optional[float] = None
    window: Window = "ramp"
    tile_batch: int = 8
    tta: Tta = "none"
    resolution: Resolution = "working"
    memory_budget: Optional[float] = None
    working_factor: float = 1.0

    def validate(self) -> None:
        if isinstance(self.tile, int) and self.tile < 1:
            raise ConfigError("tile", f"must be >= 1; got {self.tile}")
        if self.overlap is not None and not 0 <= self.overlap < 1:
            raise ConfigError("overlap", f"must be in [0, 1); got {self.overlap}")
        if isinstance(self.tile, int) and tile_stride(self.tile, overlap_of(self)) < 1:
            raise ConfigError("overlap", f"{self.overlap} leaves no stride with tile {self.tile}")
        if self.tile_batch < 1:
            raise ConfigError("tile_batch", f"must be >= 1; got {self.tile_batch}")
        if self.memory_budget is not None and self.memory_budget <= 0:
            raise ConfigError("memory_budget", f"must be > 0 (GB); got {self.memory_budget}")
        if not self.working_factor > 0:
            raise ConfigError("working_factor", f"must be > 0; got {self.working_factor}")


def overlap_of(tiling: TilingConfig) -> float:
    """The overlap fraction of a tiling with its tile set: as given, else `AUTO_OVERLAP_PX` (<= a quarter tile)."""
    if tiling.overlap is not None:
        return tiling.overlap
    return default_overlap(resolved_tile(tiling))


def default_overlap(tile: int) -> float:
    """`AUTO_OVERLAP_PX` pixels (at most a quarter of the tile) as a fraction of ``tile``."""
    return min(AUTO_OVERLAP_PX, tile // 4) / tile


def model_tiling(tiling: Optional[TilingConfig], model_tile: int, multiple: int, model: str) -> TilingConfig:
    """The tiling a model runs with: ``tile=None`` filled in with ``model_tile``, validated, and the
    tile checked against the model's size constraint (sides a multiple of ``multiple``).

    ``tile: auto`` stays ``auto`` (it depends on each image's size: `choose_tiling`). Every tiled model
    (segmenter, translator, the serving signature) starts here, so a bad tile is one `ConfigError`
    naming ``tiling.<key>`` before any image is read or any file is written.

    Args:
        tiling: Optional[TilingConfig]. The requested tiling. Defaults to the `TilingConfig` defaults.
        model_tile: int. The model's training tile, used when ``tiling.tile`` is None.
        multiple: int. Tile sides must be a multiple of this (2**downsamplings of the network).
        model: str. How the error names the model, e.g. ``segmenter``.
    """
    tiling = tiling or TilingConfig()
    resolved = dataclasses.replace(tiling, tile=model_tile if tiling.tile is None else tiling.tile)
    try:
        resolved.validate()
    except ConfigError as err:
        raise ConfigError(f"tiling.{err.key}", err.problem) from None
    if isinstance(resolved.tile, int) and resolved.tile % multiple:  # (None became the model's tile)
        raise ConfigError(
            "tiling.tile", f"must be a multiple of {multiple} for this {model} model; got {resolved.tile}"
        )
    return resolved


def resolved_tile(tiling: TilingConfig) -> int:
    """The tile of a resolved tiling (`model_tiling`, then `tfsky.tiling.auto.choose_tiling`); else a ValueError."""
    if not isinstance(tiling.tile, int):  # a caller bug: `model_tiling` + `choose_tiling` resolve it
        raise ValueError(f"tiling.tile is {tiling.tile!r}; resolve it with model_tiling() and choose_tiling() first")
    return tiling.tile
