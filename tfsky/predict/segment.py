"""Sky probabilities for images of any size from a trained segmenter, tile by tile.

`TiledSegmenter` wraps a saved model in one ``tf.function`` (input signature
``[None, None, None, C]`` float32, so it is traced once), normalises each tile
batch with the model's own `Preprocess`, and runs the shared tiling driver
(`tfsky.tiling.sliding_window_inference`) over the image. With ``tile: auto``
the tile is chosen for the memory budget (`tfsky.tiling.choose_tiling`) and
the grid fits it to each image.

Memory: an 8K float32 HDR panorama is 0.4 GB, and TensorFlow with a ResNet34
U-Net already takes ~1 GB. `ModelInputs.read` therefore keeps HDR images in
model space as float16 (`ModelInputs.prepare`): half the memory, and after the log
transform the rounding error is below 2e-3 in model units (what
mixed-precision inference does to its inputs anyway). A float16 image is taken
to be in model space everywhere in this module; `restore` maps it back to
linear radiance (for the overlay).
"""

from __future__ import annotations

import dataclasses

import hashlib
from pathlib import Path
from typing import Callable, cast

import numpy as np
import tensorflow as tf

from tfsky.data.config import SIZE_MULTIPLE
from tfsky.data.masks import sky_probability
from tfsky.data.scale import resize_image, working_size
from tfsky.data.transforms import is_hdr
from tfsky.errors import InputError
from tfsky.io.images import Channels, read_image
from tfsky.models.bundle import ModelInfo, ModelKind, read_model
from tfsky.models.precision import InferencePrecision, compute_dtype, for_inference
from tfsky.predict.refine import refine
from tfsky.progress import Once
from tfsky.tiling import (
    AUTO,
    TilingConfig,
    auto_tiling_message,
    available_memory,
    choose_tiling,
    compiled_forward,
    count_tiles,
    model_tiling,
    overlap_of,
    resolved_tile,
    sliding_window_inference,
)

_READ_CHANNELS = (1, 3, 4)  # channel counts read_image converts to; others are read as stored
_BAND = 256  # rows normalised at a time by `prepare`
MODEL_SPACE = np.float16  # dtype of images already normalised by `prepare`


def segmenter_tiling(tiling: TilingConfig | None, info: ModelInfo) -> TilingConfig:
    """The requested tiling of a segmenter (`model_tiling`), where ``tile: auto`` at the model's working
    scale means its training tile: the working-scale image is small, and whole-image tiles lose accuracy
    the model had on its training crops (100 unseen Cityscapes photos: IoU 0.604 with one whole-image
    tile vs 0.644 with the 192-px training tile; README, "Working scale"). Shared by `TiledSegmenter` and
    the exported signature, so both cut images alike."""
    requested = model_tiling(tiling, info.tile_size, SIZE_MULTIPLE, "segmenter")
    if requested.tile == AUTO and info.working_scale and requested.resolution == "working":
        return dataclasses.replace(requested, tile=info.tile_size)
    return requested


def predicted_scale(info: ModelInfo, tiling: TilingConfig) -> int | None:
    """The short side images are predicted at (None: full resolution), for predict and the export alike."""
    if tiling.resolution != "working" or not info.working_scale:
        return None
    return round(info.working_scale * tiling.working_factor)


class ModelInputs:
    """Reads images the way a model needs them: channel count, dynamic range, compact storage.

    Needs only the model's sidecar, so a batch job can decode its first image
    before the model itself is loaded.

    Args:
        info: ModelInfo. The model's sidecar.
    """

    def __init__(self, info: ModelInfo):
        self.info = info

    def read(self, path: str | Path) -> np.ndarray:
        """Read an image with the model's channel count, `check` it and `prepare` it."""
        channels = self.info.in_channels if self.info.in_channels in _READ_CHANNELS else None
        image = read_image(path, channels=cast(Channels, channels))
        self.check(image, path)
        return self.prepare(image)

    def check(self, image: np.ndarray, source: str | Path = "image") -> None:
        """Raise `InputError` when ``image`` has the wrong shape, channel count or dynamic range for the model."""
        if image.ndim != 3:
            raise InputError(source, f"expected an H x W x C image, got shape {image.shape}")
        if image.shape[-1] != self.info.in_channels:
            raise InputError(source, f"model expects {self.info.in_channels} channels, image has {image.shape[-1]}")
        mode = self.info.preprocess.mode
        if is_hdr(image) != (mode == "log"):
            trained = "HDR" if mode == "log" else "LDR"
            given = "HDR" if is_hdr(image) else "LDR"
            raise InputError(
                source,
                f"model was trained on {trained} images (preprocess mode {mode}) but the image is "
                f"{given} ({image.dtype})",
            )

    def prepare(self, image: np.ndarray) -> np.ndarray:
        """HDR images normalised into float16 model space, row band by row band; LDR images unchanged.

        LDR images (uint8 / uint16) are already compact and are normalised per tile batch.
        """
        if not is_hdr(image) or image.dtype == MODEL_SPACE:
            return image
        prepared = np.empty(image.shape, MODEL_SPACE)
        for row in range(0, image.shape[0], _BAND):
            prepared[row : row + _BAND] = self.info.preprocess.apply(image[row : row + _BAND]).numpy()
        return prepared

    def normalise(self, tiles: np.ndarray | tf.Tensor) -> np.ndarray | tf.Tensor:
        """Float32 model input of a batch of tiles: raw tiles are normalised, model-space (float16) ones cast."""
        if tiles.dtype == MODEL_SPACE:  # numpy, or an eager tensor from the flip-TTA wrapper
            return np.asarray(tiles, np.float32)
        return self.info.preprocess.apply(tiles)

    def restore(self, pixels: np.ndarray) -> np.ndarray:
        """Pixels of a prepared image as read: model space back to float32 radiance; LDR unchanged."""
        if pixels.dtype != MODEL_SPACE:
            return pixels
        return self.info.preprocess.invert(tf.cast(pixels, tf.float32)).numpy()


class TiledSegmenter:
    """A segmenter that predicts whole images of any size through overlapping tiles.

    Args:
        model: tf.keras.Model. Maps normalised [B, H, W, C] tiles to [B, H, W, K] probabilities.
        info: ModelInfo. The model's sidecar (preprocessing, tile size, channels).
        tiling: TilingConfig. Tile, overlap, window, batch and TTA; ``tile=None`` uses
            ``info.tile_size``, ``auto`` is chosen for the memory budget (`tiling_for`). Defaults to None
            (the `TilingConfig` defaults).
    """

    def __init__(self, model: tf.keras.Model, info: ModelInfo, tiling: TilingConfig | None = None):
        self.info = info
        self.inputs = ModelInputs(info)
        self.requested = segmenter_tiling(tiling, info)
        self.announce = Once()  # what ``tile: auto`` chose, once per image size
        self.tiling = choose_tiling(self.requested, SIZE_MULTIPLE, None, available_memory(self.requested.memory_budget))
        self._forward = compiled_forward(model, info.in_channels)
        self.precision = compute_dtype(model)  # what the tiles are computed in (sidecars record it)

    @classmethod
    def load(
        cls, path: str | Path, tiling: TilingConfig | None = None, precision: InferencePrecision = "auto"
    ) -> "TiledSegmenter":
        """Load a tfsky model file (``.keras`` + sidecar) for tiled prediction at the inference ``precision``.

        A bad model file, then a tile the model cannot take, are reported before the precision note.
        """
        model, info = read_model(path, ModelKind.SEGMENTER)
        segmenter_tiling(tiling, info)
        return cls(for_inference(model, precision, info.bfloat16), info, tiling)

    def read(self, path: str | Path) -> np.ndarray:
        """An image file ready for `probabilities` (`ModelInputs.read`)."""
        return self.inputs.read(path)

    def check(self, image: np.ndarray, source: str | Path = "image") -> None:
        """Raise `InputError` when the model cannot take ``image`` (`ModelInputs.check`)."""
        self.inputs.check(image, source)

    def predict_tiles(self, tiles: np.ndarray) -> tf.Tensor:
        """Probabilities of a batch of raw or model-space tiles through the compiled model."""
        return self._forward(self.inputs.normalise(tiles))

    def probabilities(self, image: np.ndarray, progress: Callable[[int, int], None] | None = None) -> np.ndarray:
        """Float32 [H, W, K] class probabilities of a whole [H, W, C] image, raw or prepared (checked first)."""
        self.check(image)
        size = self.model_size(*image.shape[:2])
        tiling = self.tiling_for(*image.shape[:2])

        def predict(pixels):
            return sliding_window_inference(
                pixels, self.predict_tiles, tiling, progress=progress, multiple=SIZE_MULTIPLE
            )

        if size == image.shape[:2]:
            return predict(image)
        small = resize_image(image, size)
        return refine(predict(small), small, image)

    def tiling_for(self, height: int, width: int) -> TilingConfig:
        """The tiling of a ``height x width`` image: `tiling` (``tile: auto`` resolved for the memory budget,
        as the exported signature's), capped at the image's size (the same grid, a fuller batch)."""
        size = self.model_size(height, width)
        chosen = choose_tiling(self.requested, SIZE_MULTIPLE, size, available_memory(self.requested.memory_budget))
        self.announce(auto_tiling_message(chosen, size, self.requested, SIZE_MULTIPLE))
        return chosen

    def mask_threshold(self, requested: float | None = None) -> float:
        """The sky threshold to draw masks at: ``requested``, else the one chosen on validation data after
        training and stored with the model (`ModelInfo.threshold`)."""
        return self.info.threshold if requested is None else requested

    def model_size(self, height: int, width: int) -> tuple[int, int]:
        """The size a ``height x width`` image is predicted at: the model's working scale (times
        ``tiling.working_factor``), or its own size."""
        return working_size(height, width, predicted_scale(self.info, self.tiling))

    def sky_probability(self, image: np.ndarray) -> np.ndarray:
        """P(sky) [H, W] of a whole image: the sigmoid output, or softmax channel `SKY_CLASS`."""
        return sky_probability(self.probabilities(image))

    def tile_count(self, height: int, width: int) -> int:
        """Tiles (model inputs before TTA) needed for a ``height x width`` image."""
        tiling = self.tiling_for(height, width)
        return count_tiles(*self.model_size(height, width), resolved_tile(tiling), overlap_of(tiling), SIZE_MULTIPLE)


def model_id(path: str | Path) -> str:
    """A cheap identity of a model file: sha256 of its first MiB plus its size in bytes."""
    path = Path(path)
    with open(path, "rb") as f:
        digest = hashlib.sha256(f.read(1 << 20)).hexdigest()
    return f"sha256-1MiB:{digest[:16]}:{path.stat().st_size}"
