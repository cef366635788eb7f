"""``tfsky colorize``: colour frames of any size from a colorizer, as a resumable job.

`TiledColorizer` is the colorizer of a saved model file: `tfsky.models.colorize_frames.FrameColorizer`
(generator on the squeezed frame, refinement tiled at full size, chroma gate; see there) with the
model config its sidecar records.

`colorize_images` runs a `ColorizeTask` with the job runner (`tfsky.batch`): inputs, resuming,
failures and the report are those of ``tfsky predict``. Output: ``<stem>_colour.png``.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import tensorflow as tf

from tfsky.io.images import read_image
from tfsky.io.writers import write_png
from tfsky.batch import Decoded, Engine, Item, Listener, Report, Task, run_job
from tfsky.models.bundle import ModelInfo, ModelKind, load_info, load_model
from tfsky.models.colorize_frames import DEFAULT_TILE, Colorized, FrameColorizer
from tfsky.tiling import TilingConfig
from tfsky.train.config import TranslatorConfig, trained_config

__all__ = ["DEFAULT_TILE", "Colorized", "ColorizeOptions", "ColorizeTask", "TiledColorizer", "colorize_images"]


class TiledColorizer(FrameColorizer):
    """The `FrameColorizer` of a saved colorizer, configured from its sidecar's recorded training config.

    Args:
        model: tf.keras.Model. A saved colorizer (layers ``generator`` and ``refiner``).
        info: ModelInfo. Its sidecar.
        tiling: TilingConfig. Refinement tiles; ``tile=None`` uses `DEFAULT_TILE`, ``auto`` (the default)
            is chosen per image within the memory budget (`tfsky.tiling.choose_tiling`). Defaults to None.
        path: str | Path. The model file, for error messages.
    """

    def __init__(
        self, model: tf.keras.Model, info: ModelInfo, tiling: TilingConfig | None = None, path: str | Path = "model"
    ):
        super().__init__(model, info, trained_config(info, TranslatorConfig, path).model.colorize, tiling)

    @classmethod
    def load(cls, path: str | Path, tiling: TilingConfig | None = None) -> "TiledColorizer":
        """Load a colorizer model file; any other model is an `InputError` naming what it is."""
        model, info = load_model(path, kind=ModelKind.COLORIZER)
        return cls(model, info, tiling, path)


@dataclasses.dataclass
class ColorizeOptions:
    """The ``colorize:`` section of a config file (CLI flags override it).

    Args:
        tiling: TilingConfig. Refinement tiles (``tile: auto`` per image, ``null``: `DEFAULT_TILE`), overlap, window,
            tile batch, flip TTA. Defaults to ``TilingConfig()``.
    """

    tiling: TilingConfig = dataclasses.field(default_factory=TilingConfig)


def colorize_images(
    model_path: str | Path,
    inputs: Sequence[Path],
    out_dir: str | Path,
    config: ColorizeOptions | None = None,
    *,
    overwrite: bool = False,
    listener: Optional[Listener] = None,
    engine: Optional[Engine] = None,
) -> Report:
    """Colorize every image of ``inputs`` (files, folders, ``.txt`` manifests) into ``out_dir``.

    ``out_dir`` is a local folder or ``s3://bucket/prefix`` (`tfsky.io.stores`): each output is written
    through `tfsky.io.atomic.atomic_path` (`write_png`), whole or not at all in either.

    A bad image is recorded in the report's ``failed`` with its reason and the job goes on; images
    whose output exists are skipped unless ``overwrite``.

    Raises:
        ConfigError: a tile the refinement cannot take.
        InputError: the model (missing, or not a colorizer) or the output folder cannot be used.
    """
    return run_job(
        ColorizeTask(model_path, config or ColorizeOptions()),
        inputs,
        out_dir,
        overwrite=overwrite,
        listener=listener,
        engine=engine,
    )


class ColorizeTask(Task):
    """The colour frame of one image."""

    def __init__(self, model_path: str | Path, config: ColorizeOptions):
        self.model_path = Path(model_path)
        self.config = config
        self.colorizer: Optional[TiledColorizer] = None

    def check(self) -> None:
        load_info(self.model_path, kind=ModelKind.COLORIZER)

    def outputs(self, stem: Path) -> list[Path]:
        return [stem.parent / f"{stem.name}_colour.png"]

    def read(self, source: Path) -> np.ndarray:
        image = read_image(source, channels=None)  # a grey frame stays one channel (a third of the memory)
        return image if image.ndim == 3 else image[..., None]

    def load(self) -> None:
        self.colorizer = TiledColorizer.load(self.model_path, self.config.tiling)

    def process(self, item: Item, decoded: Decoded, outputs: list[Path], listener: Listener) -> None:
        assert self.colorizer is not None  # load() ran
        image = decoded.take()
        write_png(outputs[0], self.colorizer.colorize(image, item.source, progress=listener.steps_done))
