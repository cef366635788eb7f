"""Colorization of whole frames of any size: generator on the squeezed frame, refinement tiled at full size.

`FrameColorizer` follows the model's two paths (`tfsky.models.colorize`): the generator sees the
frame's L squeezed to its input size (it never sees the full frame), the coarse ab is upsampled
to full resolution row band by row band (`upsample_hints`, as in training), and the refinement
network runs over [L, hints] through the shared tiling module (`tfsky.tiling`). The output keeps
the input's exact L (recomputed band by band); only ab is predicted, and a colour outside sRGB is
desaturated onto the gamut (`fit_gamut`) rather than clipped, which would change its lightness.

Chroma gate: when the model's sidecar holds one (`ModelInfo.chroma_gate`, fitted on the training
split, `tfsky.train.chroma_gate`), a frame whose coarse ab is nearly colourless (`coarse_chroma`
below the gate) comes out as the grey image (L kept, ab = 0) without running the refinement: on
such photos any tint costs more PSNR than grey does.

Inputs: 8- or 16-bit grey or colour images (a colour input is converted to L first, which is
how a colorizer is evaluated). HDR (float) images are refused with one line: tone-map them to
8 or 16 bits first. Images smaller than the generator's input are squeezed up to it; 1-pixel
images work. Memory on an 8192x4096 grey frame, beyond the process: the decoded frame (34 MB),
the uint8 refinement input (100 MB), the float32 [H, W, 2] tiling accumulator (268 MB) and the uint8
output (100 MB), never all at once.

``tfsky colorize`` runs it through `tfsky.predict.colorize.TiledColorizer` (which reads the model
config from the sidecar); the chroma gate's fit runs it after training.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Callable, Optional

import cv2
import numpy as np
import tensorflow as tf

from tfsky.data.colour import AB_SCALE, fit_gamut, lab_to_rgb, rgb_to_lab, unit_rgb
from tfsky.models.bundle import ModelInfo
from tfsky.models.colorize import ColorizeConfig, coarse_chroma, split_inference_model, upsample_hints
from tfsky.tiling import (
    TilingConfig,
    available_memory,
    choose_tiling,
    compiled_forward,
    model_tiling,
    sliding_window_inference,
)

DEFAULT_TILE = 256  # the refinement is fully convolutional: bigger tiles than its training crops, fewer calls
_BAND = 32  # rows converted at a time: TF temporaries of a band stay small (8K: 3 MB each)
_L_STEPS = 2.55  # uint8 steps per L unit in the refinement's input


@dataclasses.dataclass
class Colorized:
    """One colorized frame and the chroma gate's decision on it.

    Args:
        rgb: np.ndarray. uint8 sRGB [H, W, 3].
        chroma: float. The gate statistic of the generator's coarse output (`coarse_chroma`).
        gated: bool. True when ``chroma`` was below the model's gate: ``rgb`` is the grey image.
    """

    rgb: np.ndarray
    chroma: float
    gated: bool


class FrameColorizer:
    """A colorizer that maps whole 8/16-bit frames of any size to uint8 sRGB.

    Args:
        model: tf.keras.Model. A saved colorizer (layers ``generator`` and ``refiner``).
        info: ModelInfo. Its sidecar.
        colorize: ColorizeConfig. The colorizer's recorded model config (``model.colorize`` of its training config).
        tiling: TilingConfig. Refinement tiles; ``tile=None`` uses `DEFAULT_TILE`, ``auto`` (the default)
            is chosen per image within the memory budget (`tfsky.tiling.choose_tiling`). Defaults to None.
    """

    def __init__(
        self, model: tf.keras.Model, info: ModelInfo, colorize: ColorizeConfig, tiling: TilingConfig | None = None
    ):
        self.info = info
        self.chroma_gate = info.chroma_gate
        self.generator_size = colorize.generator_size
        self.multiple = colorize.size_multiple
        self.tiling = model_tiling(tiling, DEFAULT_TILE, self.multiple, "colorizer")
        generator, refiner = split_inference_model(model)
        self._generate = compiled_forward(generator, 1, self.generator_size)
        self._refine = compiled_forward(refiner, 3)

    def predict_tiles(self, tiles) -> tf.Tensor:
        """[B, t, t, 3] uint8 [L, hints] tiles (`_L_STEPS`, ab + 128) -> refined ab [B, t, t, 2], model units."""
        tiles = tf.cast(tiles, tf.float32)
        lightness, hints = tiles[..., :1] / _L_STEPS, tiles[..., 1:] - 128
        return self._refine(tf.concat([lightness / 50 - 1, hints / AB_SCALE], axis=-1))

    def colorize(
        self, image: np.ndarray, source: str | Path = "image", progress: Optional[Callable[[int, int], None]] = None
    ) -> np.ndarray:
        """uint8 sRGB [H, W, 3] of an 8/16-bit grey [H, W, 1] or colour [H, W, 3] image (its L kept, ab predicted,
        or ab = 0 when the chroma gate says so).

        Raises:
            InputError: an HDR (float) image.
        """
        return self.colorize_frame(image, source, progress).rgb

    def colorize_frame(
        self,
        image: np.ndarray,
        source: str | Path = "image",
        progress: Optional[Callable[[int, int], None]] = None,
        gate: bool = True,
    ) -> Colorized:
        """`colorize` with the gate statistic and decision; ``gate=False`` ignores the model's gate.

        The refinement's input is held as uint8 (L in steps of 1/2.55, hints in whole ab units: far below
        what the network resolves), the memory of one 8-bit colour frame.

        Raises:
            InputError: an HDR (float) image.
        """
        unit_rgb(image[:1, :1], source)  # HDR refused before any work
        height, width = image.shape[:2]
        refine_in = np.empty((height, width, 3), np.uint8)
        for rows in _bands(height):
            refine_in[rows, :, 0] = np.round(_lightness(image[rows]) * _L_STEPS)
        small = (
            cv2.resize(
                np.ascontiguousarray(refine_in[..., 0]),
                (self.generator_size, self.generator_size),
                interpolation=cv2.INTER_AREA,
            )
            / _L_STEPS
        )
        coarse = self._generate(tf.constant((small / 50 - 1)[None, ..., None], tf.float32))
        chroma = float(coarse_chroma(coarse)[0])
        if gate and self.chroma_gate is not None and chroma < self.chroma_gate:
            return Colorized(self.grey(image), chroma, True)
        for rows in _bands(height):
            stop = min(rows.stop, height)
            box = tf.constant([[rows.start / height, 0, stop / height, 1]], tf.float32)
            hints = upsample_hints(coarse, box, (stop - rows.start, width)).numpy()[0] * AB_SCALE
            refine_in[rows, :, 1:] = np.clip(np.round(hints) + 128, 0, 255)
        # still to come: the float32 ab accumulator and the uint8 output (TF keeps the memory the tiles
        # took, so the output adds to that peak)
        held = height * width * (2 * 4 + 3)
        tiling = choose_tiling(
            self.tiling, self.multiple, (height, width), available_memory(self.tiling.memory_budget, held_bytes=held)
        )
        ab = sliding_window_inference(refine_in, self.predict_tiles, tiling, progress=progress)
        del refine_in
        return Colorized(_with_lightness(image, ab), chroma, False)

    def grey(self, image: np.ndarray) -> np.ndarray:
        """uint8 sRGB of ``image``'s L with ab = 0: what a gated frame comes out as."""
        return _with_lightness(image, None)


def _with_lightness(image: np.ndarray, ab: Optional[np.ndarray]) -> np.ndarray:
    """uint8 sRGB of ``image``'s exact L with ``ab`` [H, W, 2] (model units; None: 0), band by band."""
    height, width = image.shape[:2]
    out = np.empty((height, width, 3), np.uint8)
    for rows in _bands(height):
        lightness = _lightness(image[rows])[..., None]
        if ab is None:  # grey is inside the sRGB gamut: nothing to fit
            lab = tf.concat([lightness, np.zeros(lightness.shape[:2] + (2,), np.float32)], axis=-1)
        else:
            lab = fit_gamut(tf.concat([lightness, ab[rows] * AB_SCALE], axis=-1))
        out[rows] = np.round(lab_to_rgb(lab).numpy() * 255).astype(np.uint8)
    return out


def _lightness(band: np.ndarray) -> np.ndarray:
    """Exact L [h, W] of a band of an 8/16-bit grey or colour image."""
    rgb = np.repeat(band, 3, axis=-1) if band.shape[-1] == 1 else band
    return rgb_to_lab(unit_rgb(rgb)).numpy()[..., 0]


def _bands(height: int):
    return [slice(row, row + _BAND) for row in range(0, height, _BAND)]
