"""The exported form of a tfsky colorizer: what ``tfsky export`` writes for a ``colorize`` model.

Signatures (``serving_default`` is ``colorize_image``):

* ``colorize_image``: ``image_bytes`` [n], encoded PNG/JPEG/BMP/GIF (8 or 16 bits, grey or colour,
  any size) -> ``png_bytes`` [n]: the colour image as an 8-bit RGB PNG at the input's size.
  The graph is `tfsky.models.colorize_frames.FrameColorizer` in TensorFlow ops: L of the decoded image
  (`tfsky.export.decode.decode_normalised`), the generator on L squeezed to its input size,
  the hints upsampled to full size (`upsample_hints`), the refinement through the in-graph tiling
  (`tfsky.tiling.sliding_window_graph`) and the input's L with the predicted ab converted to sRGB (desaturated onto the gamut, `fit_gamut`).
  With a chroma gate in the sidecar (`ModelInfo.chroma_gate`), an image whose coarse output is below
  it (`coarse_chroma`) skips the refinement and comes out grey (L kept, ab = 0), as in ``tfsky colorize``
  (whose OpenCV area resize of L gives a statistic up to ~0.2 ab units away: a frame that close to the
  gate can be decided differently).
  The output name ends in ``_bytes`` so TF Serving's REST API answers it base64-encoded.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import tensorflow as tf

from tfsky.data.colour import AB_SCALE, fit_gamut, lab_to_rgb, rgb_to_lab
from tfsky.export.decode import decode_normalised, pixel_limit
from tfsky.export.warmup import WarmupInputs
from tfsky.models.bundle import ModelInfo, ModelKind, load_model
from tfsky.models.colorize import coarse_chroma, split_inference_model, upsample_hints
from tfsky.models.colorize_frames import DEFAULT_TILE
from tfsky.models.precision import InferencePrecision
from tfsky.tiling import AUTO, TilingConfig, model_tiling, sliding_window_graph
from tfsky.train.config import TranslatorConfig, trained_config


# Peak resident memory per input pixel of colorize_image (Lab, hints, refinement, sRGB of the whole image),
# measured on noise PNGs with the tiny colorizer: 118 at 1 megapixel, 108 at 4; `pixel_limit` divides the budget by it.
COLORIZER_BYTES_PER_PIXEL = 120


def load(model_path: str | Path, precision: InferencePrecision):
    """The exporter of `tfsky.export.savedmodel.EXPORTERS` for colorizers: the loaded model, its sidecar and a
    function of ``(tiling, cloud, max_pixels)`` building the `ColorizerModule` (``cloud`` is ignored)."""
    model, info = load_model(model_path, precision=precision, kind=ModelKind.COLORIZER)
    return model, info, lambda tiling, cloud, max_pixels: ColorizerModule(model, info, tiling, model_path, max_pixels)


class ColorizerModule(tf.Module):
    """The exported object: both networks plus the ``colorize_image`` function.

    Args:
        model: tf.keras.Model. A saved colorizer (layers ``generator`` and ``refiner``).
        info: ModelInfo. Its sidecar.
        tiling: TilingConfig. In-graph refinement tiles; ``None`` or ``auto`` use `DEFAULT_TILE`
            (a signature takes images of any size, so the tile is fixed at export).
        path: str | Path. The model file, for error messages.
        max_pixels: int. ``colorize_image`` refuses larger images before decoding. Defaults to None (`pixel_limit`).
    """

    def __init__(
        self,
        model: tf.keras.Model,
        info: ModelInfo,
        tiling: TilingConfig | None,
        path: str | Path,
        max_pixels: int | None = None,
    ):
        super().__init__(name="tfsky_colorizer")
        trained = trained_config(info, TranslatorConfig, path)
        self.generator, self.refiner = split_inference_model(model)
        self.preprocess = info.preprocess
        self.chroma_gate = info.chroma_gate
        self.generator_size = trained.model.colorize.generator_size
        tiling = tiling or TilingConfig()
        self.max_pixels = pixel_limit(max_pixels, tiling.memory_budget, COLORIZER_BYTES_PER_PIXEL)
        if tiling.tile == AUTO:
            tiling = dataclasses.replace(tiling, tile=DEFAULT_TILE)
        self.tiling = model_tiling(tiling, DEFAULT_TILE, trained.model.colorize.size_multiple, "colorizer")
        self.colorize_image = tf.function(self._colorize_image, input_signature=[tf.TensorSpec([None], tf.string)])

    def signatures(self) -> dict[str, tf.types.experimental.ConcreteFunction]:
        """Signature name -> concrete function, for `tf.saved_model.save`."""
        function = self.colorize_image.get_concrete_function()
        return {"serving_default": function, "colorize_image": function}

    def warmup_inputs(self) -> WarmupInputs:
        """One small grey PNG per signature."""
        image = np.random.default_rng(0).integers(
            0, 256, (self.generator_size + 8, 2 * self.generator_size, 1), np.uint8
        )
        request = [{"image_bytes": np.array([tf.io.encode_png(image).numpy()], dtype=object)}]
        return {"serving_default": request, "colorize_image": request}

    def metadata(self) -> dict:
        """What a client needs beside the signature: the in-graph tiling, the generator's input size and the gate."""
        return {
            "tiling": dataclasses.asdict(self.tiling),
            "generator_size": self.generator_size,
            "chroma_gate": self.chroma_gate,
        }

    def _colour_png(self, encoded: tf.Tensor) -> tf.Tensor:
        unit = decode_normalised(encoded, self.preprocess, 3, self.max_pixels)
        lightness = rgb_to_lab(unit)[..., :1]
        small = tf.image.resize(lightness[None], (self.generator_size, self.generator_size), method="area") / 50 - 1
        coarse = self.generator(small, training=False)
        if self.chroma_gate is None:
            ab = self._refined_ab(lightness, coarse)
        else:
            ab = tf.cond(
                coarse_chroma(coarse)[0] < self.chroma_gate,
                lambda: tf.zeros(tf.concat([tf.shape(lightness)[:2], [2]], axis=0)),
                lambda: self._refined_ab(lightness, coarse),
            )
        rgb = lab_to_rgb(fit_gamut(tf.concat([lightness, ab * AB_SCALE], axis=-1)))
        return tf.io.encode_png(tf.cast(tf.round(rgb * 255), tf.uint8))

    def _refined_ab(self, lightness: tf.Tensor, coarse: tf.Tensor) -> tf.Tensor:
        """The refinement's ab [H, W, 2] over the image's L [H, W, 1] and the coarse ab's hints."""
        hints = upsample_hints(coarse, tf.constant([[0.0, 0.0, 1.0, 1.0]]), tf.shape(lightness)[:2])[0]
        refine_in = tf.concat([lightness / 50 - 1, hints], axis=-1)
        return sliding_window_graph(refine_in, lambda tiles: self.refiner(tiles, training=False), self.tiling)

    def _colorize_image(self, image_bytes: tf.Tensor) -> dict[str, tf.Tensor]:
        pngs = tf.map_fn(
            self._colour_png, image_bytes, parallel_iterations=1, fn_output_signature=tf.TensorSpec([], tf.string)
        )
        return {"png_bytes": pngs}
