"""Weather translation of whole frames through the shared tiling module, and sky-only composites.

`TiledTranslator` runs a saved pix2pix generator or VAE translator over an
image of any size with `tfsky.tiling.sliding_window_inference` (overlapping
tiles, blended, memory-bounded); the network is one ``tf.function`` with a
fixed input signature, traced once. Pixels are normalised with the model's
`Preprocess` and mapped to [-1, 1] (`tfsky.data.transforms.to_model_range`).

Scale: a model trained on frames resized to a shorter side of
``data.load_size`` (the pix2pix jitter) has learnt weather at THAT scale; run
tile by tile on a full-resolution frame, every tile would paint a whole
downscaled sky (visible tile repeats). So by default the frame is resized
to the training scale, translated through the tiles there and resized back
to full resolution (the sky is smooth; composites keep the full-resolution
ground). Models trained with ``load_size: null`` (native scale), or any
model with ``native_scale=True``, run on the full-resolution pixels directly.

Composites keep what is not weather: ``out = (1 - w) * source + w * translated``
with a feathered sky weight ``w`` (`feathered_sky_weight`) from the sky
probability of a segmenter or from the camera mask. The sky is eroded by the
blur's radius before the Gaussian blur, so ``w`` is exactly 0 outside the
sky: every non-sky pixel of the composite is the source pixel, bit for bit.

Outputs per image (stem as in ``tfsky predict``): ``<stem>_translated.png``
and, with a composite, ``<stem>_composite.png``; each written atomically.
`translate_images` runs a `TranslateTask` with the job runner
(`tfsky.batch`), so inputs, resuming, failures and the report are those of
``tfsky predict``.

Settings: `TranslateConfig`, the ``translate:`` section of a config file
(tiling with flip TTA, composites, VAE sampling, scale), built by
`tfsky.config.load_config` like ``tfsky predict``'s ``predict:`` section.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Callable, Optional, Sequence

import cv2
import numpy as np
import tensorflow as tf

from tfsky.data.masks import sky_mask
from tfsky.data.transforms import from_model_range, to_model_range
from tfsky.errors import ConfigError, InputError
from tfsky.io.images import read_image, read_mask
from tfsky.io.writers import write_png
from tfsky.batch import Decoded, Engine, Item, Listener, Report, Task, run_job
from tfsky.models.bundle import ModelInfo, ModelKind, load_info, read_model
from tfsky.models.precision import for_inference
from tfsky.models.vae import set_sampling
from tfsky.predict.segment import TiledSegmenter
from tfsky.progress import Once
from tfsky.tiling import (
    TilingConfig,
    auto_tiling_message,
    available_memory,
    choose_tiling,
    compiled_forward,
    model_tiling,
    sliding_window_inference,
)
from tfsky.train.config import TranslatorConfig, trained_config

_BAND = 512  # rows blended at a time: no full-size float temporary for the composite


def translator_tiling(tiling: TilingConfig | None, info: ModelInfo, path: str | Path) -> TilingConfig:
    """The requested tiling of the translator ``info`` describes (`model_tiling`: its tile and size multiple)."""
    multiple = trained_config(info, TranslatorConfig, path).model.size_multiple
    return model_tiling(tiling, info.tile_size, multiple, info.task)


class TiledTranslator:
    """A translator that maps whole uint8 RGB frames of any size to the target weather.

    Args:
        model: tf.keras.Model. [B, t, t, 3] in [-1, 1] -> [B, t, t, 3] in [-1, 1].
        info: ModelInfo. Its sidecar (task, preprocess, tile size, training config).
        tiling: TilingConfig. Tiles, blending and flip TTA (each flipped tile is translated, flipped
            back and averaged); ``tile=None`` uses ``info.tile_size``. Defaults to None (the `TilingConfig` defaults).
        sample: bool. VAE only: draw z instead of using mu. Defaults to False.
        native_scale: bool. Translate at full resolution even if the model was trained on
            downscaled frames. Defaults to False.
    """

    def __init__(
        self,
        model: tf.keras.Model,
        info: ModelInfo,
        tiling: TilingConfig | None = None,
        sample: bool = False,
        native_scale: bool = False,
        path: str | Path = "model",
    ):
        self.info = info
        trained = trained_config(info, TranslatorConfig, path)
        self.working_side = None if native_scale else trained.data.load_size
        self.multiple = trained.model.size_multiple
        self.requested = translator_tiling(tiling, info, path)
        self.announce = Once()  # what ``tile: auto`` chose, once per image size
        self.tiling = choose_tiling(self.requested, self.multiple, None, available_memory(self.requested.memory_budget))
        if info.task == "vae":
            set_sampling(model, sample)
        self._forward = compiled_forward(model, info.in_channels)

    @classmethod
    def load(
        cls, path: str | Path, tiling: TilingConfig | None = None, sample: bool = False, native_scale: bool = False
    ) -> "TiledTranslator":
        """Load a translator model file (``.keras`` + sidecar); a segmenter file is an `InputError`, a tile the
        model cannot take a `ConfigError`, both reported before the precision note."""
        model, info = read_model(path, ModelKind.TRANSLATOR)
        translator_tiling(tiling, info, path)
        return cls(for_inference(model, "auto", info.bfloat16), info, tiling, sample, native_scale, path)

    def predict_tiles(self, tiles) -> tf.Tensor:
        """Raw tiles (uint8) -> translated tiles in [0, 1]."""
        unit = self.info.preprocess.apply(tiles)
        return from_model_range(tf.cast(self._forward(to_model_range(unit)), tf.float32))

    def check(self, image: np.ndarray, source: str | Path = "image") -> None:
        """Raise `InputError` unless ``image`` is what the model was trained on: uint8 H x W x C."""
        if image.ndim != 3 or image.shape[-1] != self.info.in_channels or image.dtype != np.uint8:
            raise InputError(
                source,
                f"the translator takes 8-bit {self.info.in_channels}-channel images, got {image.dtype} {image.shape}",
            )

    def translate(self, image: np.ndarray, progress: Optional[Callable[[int, int], None]] = None) -> np.ndarray:
        """Float32 [H, W, 3] in [0, 1]: the whole ``image`` (uint8 [H, W, 3]) in the target weather.

        Runs at the training scale (see the module docstring) and returns the input's size.
        """
        self.check(image)
        height, width = image.shape[:2]
        working = resize_shorter_side(image, self.working_side) if self.working_side else image
        tiling = choose_tiling(
            self.requested,
            self.multiple,
            working.shape[:2],  # `tile: auto`, as tfsky predict
            available_memory(self.requested.memory_budget),
        )
        self.announce(auto_tiling_message(tiling, working.shape[:2], self.requested, self.multiple))
        out = sliding_window_inference(working, self.predict_tiles, tiling, progress=progress, multiple=self.multiple)
        if out.shape[:2] != (height, width):
            out = np.clip(cv2.resize(out, (width, height), interpolation=cv2.INTER_LINEAR), 0, 1)
        return out


def resize_shorter_side(image: np.ndarray, side: int) -> np.ndarray:
    """``image`` resized (area interpolation down, linear up) so its shorter side is ``side`` pixels."""
    height, width = image.shape[:2]
    scale = side / min(height, width)
    if scale == 1:
        return image
    size = (max(side, round(width * scale)), max(side, round(height * scale)))
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)


def feathered_sky_weight(sky_probability: np.ndarray, feather: float) -> np.ndarray:
    """Float32 [H, W] blend weight in [0, 1]: the sky probability, feathered inside the sky.

    The sky (probability >= 0.5) is eroded by the Gaussian's radius
    ``ceil(3 * feather)`` and the probability on the eroded sky is blurred
    with sigma ``feather`` pixels, so the weight rises smoothly from the sky
    border inward and is exactly 0 on every non-sky pixel. ``feather = 0``
    returns the binary sky.
    """
    sky = sky_mask(sky_probability).astype(np.uint8)
    if feather <= 0:
        return sky.astype(np.float32)
    radius = math.ceil(3 * feather)
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
    inner = cv2.erode(sky, kernel, borderType=cv2.BORDER_REPLICATE)
    weight = np.where(inner > 0, sky_probability, 0).astype(np.float32)
    blurred = cv2.GaussianBlur(weight, (2 * radius + 1, 2 * radius + 1), feather, borderType=cv2.BORDER_REPLICATE)
    return np.where(sky > 0, np.clip(blurred, 0, 1), 0).astype(np.float32)


def composite(source: np.ndarray, translated: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """uint8 ``(1 - w) * source + w * translated`` (source uint8, translated float in [0, 1]); w = 0 keeps source."""
    out = source.copy()
    for row in range(0, source.shape[0], _BAND):
        rows = slice(row, row + _BAND)
        w = weight[rows, :, None]
        blend = (1 - w) * (source[rows] / np.float32(255)) + w * translated[rows]
        out[rows] = np.where(w > 0, np.round(np.clip(blend, 0, 1) * 255), source[rows]).astype(np.uint8)
    return out


def to_uint8(image: np.ndarray) -> np.ndarray:
    """[0, 1] float -> uint8 (rounded)."""
    return np.round(np.clip(image, 0, 1) * 255).astype(np.uint8)


@dataclasses.dataclass
class CompositeConfig:
    """Sky-only composites: whether they are written and where their sky comes from.

    Args:
        enabled: bool. Also write ``<stem>_composite.png``. Defaults to False.
        segmenter: Optional[Path]. Sky segmenter model; its tiled sky probability is the sky. Defaults to None.
        mask: Optional[Path]. Camera sky mask (white = sky), the same size as the frames; wins over
            ``segmenter``. Defaults to None.
        feather: float. Gaussian sigma of the sky edge in pixels (0 = hard edge). Defaults to 5.
    """

    enabled: bool = False
    segmenter: Optional[Path] = None
    mask: Optional[Path] = None
    feather: float = 5.0


@dataclasses.dataclass
class TranslateConfig:
    """The ``translate:`` section of a config file (CLI flags override it).

    Args:
        tiling: TilingConfig. Tile, overlap, window, tile batch and flip TTA; ``tile: null`` uses the
            model's training tile. Defaults to ``TilingConfig()``.
        composite: CompositeConfig. Sky-only composites. Defaults to ``CompositeConfig()`` (none).
        sample: bool. VAE: sample the latent instead of using its mean. Defaults to False.
        native_scale: bool. Translate the full-resolution pixels even for a model trained on downscaled
            frames (see the module docstring). Defaults to False.
    """

    tiling: TilingConfig = dataclasses.field(default_factory=TilingConfig)
    composite: CompositeConfig = dataclasses.field(default_factory=CompositeConfig)
    sample: bool = False
    native_scale: bool = False

    def validate(self) -> None:
        options = self.composite
        if options.enabled and options.mask is None and options.segmenter is None:
            raise ConfigError(
                "composite",
                "needs a sky source: composite.mask or composite.segmenter (--mask CAMERA_MASK or --segmenter MODEL)",
            )


def translate_images(
    model_path: str | Path,
    inputs: Sequence[Path],
    out_dir: str | Path,
    config: TranslateConfig | None = None,
    *,
    overwrite: bool = False,
    listener: Optional[Listener] = None,
    engine: Optional[Engine] = None,
) -> Report:
    """Translate every image of ``inputs`` (files, folders, ``.txt`` manifests) into ``out_dir``.

    A bad image is recorded in the report's ``failed`` with its reason and the
    job goes on; images whose outputs all exist are skipped unless ``overwrite``.

    Args:
        model_path: str | Path. A translator (``.keras`` with its sidecar).
        inputs: sequence of Path. Images, folders or manifests (as ``tfsky predict``).
        out_dir: str | Path. Output folder.
        config: TranslateConfig. Tiling (with TTA), composites, sampling and scale. Defaults to None
            (the `TranslateConfig` defaults).
        overwrite: bool. Redo complete images. Defaults to False.
        listener: Listener. Progress hooks. Defaults to None.
        engine: Engine. Where the images run. Defaults to the local engine.

    Raises:
        ConfigError: an invalid ``config`` (e.g. composites without a sky source) or a tile the model
            cannot take.
        InputError: the model, the output folder or the composite's mask or segmenter cannot be used.
            Problems with single images are reported, not raised.
    """
    return run_job(
        TranslateTask(model_path, config or TranslateConfig()),
        inputs,
        out_dir,
        overwrite=overwrite,
        listener=listener,
        engine=engine,
    )


class TranslateTask(Task):
    """The translated frame (and composite) of one image.

    Args:
        model_path: str | Path. A translator.
        config: TranslateConfig. Tiling, composites, sampling and scale.
    """

    def __init__(self, model_path: str | Path, config: TranslateConfig):
        self.model_path = Path(model_path)
        self.config = config
        self.translator: Optional[TiledTranslator] = None
        self.sky = None

    def check(self) -> None:
        self.config.validate()
        load_info(self.model_path, kind=ModelKind.TRANSLATOR)

    def outputs(self, stem: Path) -> list[Path]:
        return output_paths(stem, self.config.composite.enabled)

    def read(self, source: Path) -> np.ndarray:
        return read_image(source)

    def load(self) -> None:
        config = self.config
        self.translator = TiledTranslator.load(self.model_path, config.tiling, config.sample, config.native_scale)
        self.sky = _sky_source(config.composite)

    def process(self, item: Item, decoded: Decoded, outputs: list[Path], listener: Listener) -> None:
        assert self.translator is not None  # load() ran
        image = decoded.take()
        self.translator.check(image, item.source)
        sky = self.sky(image) if self.sky is not None else None  # a mask that does not fit fails before any write
        translated = self.translator.translate(image, progress=listener.steps_done)
        write_png(outputs[0], to_uint8(translated))
        if sky is not None:
            write_png(outputs[1], composite(image, translated, sky))


def output_paths(stem: Path, with_composite: bool) -> list[Path]:
    """``<stem>_translated.png`` and, for composites, ``<stem>_composite.png``."""
    paths = [stem.parent / f"{stem.name}_translated.png"]
    return paths + [stem.parent / f"{stem.name}_composite.png"] if with_composite else paths


def _sky_source(options: CompositeConfig):
    """A function ``image -> feathered sky weight [H, W]`` for composites, or None without composites."""
    if not options.enabled:
        return None
    if options.mask is not None:
        mask_path = options.mask
        camera = read_mask(mask_path).astype(np.float32)

        def from_mask(image: np.ndarray) -> np.ndarray:
            if camera.shape != image.shape[:2]:
                raise InputError(mask_path, f"mask size {camera.shape} differs from the image's {image.shape[:2]}")
            return camera

        return lambda image: feathered_sky_weight(from_mask(image), options.feather)
    assert options.segmenter is not None  # TranslateConfig.validate: a mask or a segmenter
    segmenter = TiledSegmenter.load(options.segmenter)
    return lambda image: feathered_sky_weight(segmenter.sky_probability(image), options.feather)
