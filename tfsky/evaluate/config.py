"""The ``evaluate:`` section of a config file: what ``tfsky evaluate segmenter`` / ``translator`` measure on."""

from __future__ import annotations

import dataclasses
from typing import Optional

from tfsky.errors import ConfigError
from tfsky.evaluate.metrics import BOUNDARY_BAND
from tfsky.predict.cloud import CloudCoverConfig
from tfsky.tiling import TilingConfig


@dataclasses.dataclass
class EvaluateConfig:
    """How a trained model is evaluated (CLI flags override it).

    Args:
        split: str. Split to evaluate: a cache split for segmenters, ``val`` or ``train`` pairs for
            translators (folders have no split). Defaults to ``val``.
        threshold: Optional[float]. Segmenters: sky probability at or above which a pixel is sky.
            Defaults to None: the model's own threshold, chosen on validation data after training.
        band: float. Segmenters: boundary F1 tolerance in pixels. Defaults to 3.
        tiling: TilingConfig. Tiles, blending and flip TTA, as ``tfsky predict`` takes them
            (``tile: null`` = the model's training tile).
        cloud: CloudCoverConfig. Cloud models: the cloud-cover settings of ``tfsky predict`` (the sun search).
        drop_enclosed: bool. Sky segmenters: score the masks without the sky regions that touch no border of
            the frame, as ``tfsky predict --drop-enclosed`` draws them. Defaults to False.
    """

    split: str = "val"
    threshold: Optional[float] = None
    band: float = BOUNDARY_BAND
    tiling: TilingConfig = dataclasses.field(default_factory=TilingConfig)
    cloud: CloudCoverConfig = dataclasses.field(default_factory=CloudCoverConfig)
    drop_enclosed: bool = False

    def validate(self) -> None:
        if self.threshold is not None and not 0 <= self.threshold <= 1:
            raise ConfigError("threshold", f"must be in [0, 1]; got {self.threshold}")
        if self.band < 0:
            raise ConfigError("band", f"must be >= 0 pixels; got {self.band}")
