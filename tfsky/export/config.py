"""The ``export:`` section of a config file: where ``tfsky export`` writes a model and how it tiles."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Literal, Optional

from tfsky.errors import ConfigError
from tfsky.predict.cloud import CloudCoverConfig
from tfsky.tiling import TilingConfig


ExportPrecision = Literal["float32", "as_trained", "bfloat16"]


@dataclasses.dataclass
class ExportConfig:
    """One exported version of a model in a TF Serving repository (CLI flags override it).

    Args:
        name: str. Model name in the repository (a folder name). Defaults to ``sky_segmenter``.
        repo: Path. Repository root (what TF Serving mounts as /models). Defaults to ``models``.
        version: Optional[int]. Version number. Defaults to None (the next free one).
        precision: str. ``float32`` (CPU serving, the shipped image), ``as_trained`` (keep a
            mixed-precision model's float16 layers, for a GPU server) or ``bfloat16`` (bfloat16 maths
            with float32 weights and outputs, for a CPU server with AMX-BF16 / AVX512-BF16; a segmenter
            exports the build its stored bfloat16 verdict passed and is refused without one,
            `tfsky.export.segmenter.load`). Defaults to ``float32``.
        tiling: TilingConfig. In-graph tiling of the ``predict_image`` signature
            (``tile: null`` = the model's training tile).
        cloud: CloudCoverConfig. Cloud models: the camera masks embedded in the ``predict_cloud``
            signature (``camera_masks: null`` = the model's training cameras' masks).
        max_pixels: Optional[int]. The image signatures refuse an image declaring more pixels, before
            decoding it (INVALID_ARGUMENT). Defaults to None: what ``tiling.memory_budget`` holds at the
            signature's measured bytes per pixel (`tfsky.export.decode.pixel_limit`).
    """

    name: str = "sky_segmenter"
    repo: Path = Path("models")
    version: Optional[int] = None
    precision: ExportPrecision = "float32"
    tiling: TilingConfig = dataclasses.field(default_factory=TilingConfig)
    cloud: CloudCoverConfig = dataclasses.field(default_factory=CloudCoverConfig)
    max_pixels: Optional[int] = None

    def validate(self) -> None:
        if self.version is not None and self.version < 1:
            raise ConfigError("version", f"must be >= 1; got {self.version}")
        if self.max_pixels is not None and self.max_pixels < 1:
            raise ConfigError("max_pixels", f"must be >= 1; got {self.max_pixels}")
