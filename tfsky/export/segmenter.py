"""The exported form of a tfsky sky segmenter or cloud model: what ``tfsky export`` writes for them.

Signatures (all return float32; a mixed-precision model is cast at the output):

* ``serving_default``: ``tiles`` float32 [batch, H, W, C], already normalised
  -> ``probabilities`` float32 [batch, H, W, K] (the model itself).
* ``predict_image``: ``image_bytes`` [n], encoded PNG/JPEG images of any size
  -> per image ``mask_png_bytes`` (0/255 PNG), ``probability_png_bytes``
  (16-bit PNG of probability x 65535, the format of ``tfsky predict``'s
  ``_prob.png``) and ``sky_fraction`` (share of pixels in the mask: probability
  at or above the model's tuned threshold, `ModelInfo.threshold`, recorded as
  ``mask_threshold`` in the export's metadata). Decoding
  (`tfsky.export.decode.decode_normalised`), normalisation with the model's own
  `Preprocess`, overlapped tiling and blending run in the graph through
  `tfsky.tiling.sliding_window_graph`, with the same defaults as ``tfsky
  predict``. 8-bit images decode to uint8, 16-bit PNGs to uint16, exactly as
  `tfsky.io.images.read_image` returns them.
* ``predict_cloud`` (cloud models, `tfsky.models.bundle.ModelKind.CLOUD`):
  ``image_bytes`` [n] -> ``class_mask_png_bytes`` (255 cloud, 100 clear sky,
  0 outside the valid sky: the camera mask that fits the frame, else its
  pixels brighter than ``dark_level``, as ``tfsky predict`` chooses them,
  `tfsky.predict.cloud.CameraMasks`; the masks are embedded in the graph),
  ``cloud_fraction_pct`` (cloud
  pixels / valid pixels x 100; NaN when no pixel is valid) and
  ``valid_pixels``. The other image signatures of a cloud model draw the cloud
  class (softmax channel 1), as ``tfsky predict`` does.
* ``predict_hdr`` (models trained on HDR, ``preprocess.mode == "log"``):
  ``image_raw`` [n] (float32 little-endian bytes of [H, W, C] radiance) and
  ``shape`` int32 [n, 3] -> the same outputs.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import tensorflow as tf

from tfsky.data.config import SIZE_MULTIPLE
from tfsky.data.scale import working_size_graph
from tfsky.data.masks import SKY_CLASS, sky_mask_graph
from tfsky.errors import InputError
from tfsky.export import warmup
from tfsky.export.decode import decode_normalised, decode_raw_image, pixel_limit
from tfsky.models.bundle import ModelInfo, ModelKind, read_model
from tfsky.models.precision import InferencePrecision, bfloat16_ok, describe_verdict, for_inference, verified_bfloat16
from tfsky.predict.cloud import CameraMasks, CloudCoverConfig
from tfsky.predict.outputs import CLASS_PNG_VALUES
from tfsky.predict.refine import refine_graph
from tfsky.predict.segment import predicted_scale, segmenter_tiling
from tfsky.tiling import TilingConfig, available_memory, choose_tiling, resolved_tile, sliding_window_graph

# Peak resident memory per input pixel of the image signatures (the whole image is held, not streamed),
# measured on noise PNGs of 4 and 16 megapixels with tiny models, rounded up; `pixel_limit` divides the budget by it.
SEGMENTER_BYTES_PER_PIXEL = 32  # predict_image: 35 at 4 MP, 28 at 16 MP
CLOUD_BYTES_PER_PIXEL = 48  # predict_cloud 45 / 37, predict_image 49 at 4 MP


def load(model_path: str | Path, precision: InferencePrecision):
    """The exporter of `tfsky.export.savedmodel.EXPORTERS` for segmenters and cloud models: the loaded model,
    its sidecar and a function of ``(tiling, cloud, max_pixels)`` building the `SegmenterModule`.

    ``bfloat16`` exports the build the model's bfloat16 verdict passed (`tfsky.models.precision.bfloat16_verdict`:
    the whole network, or with the part it kept in float32), so a served mask agrees with float32's as measured:
    a served model is not checked again, and a whole-network bfloat16 build lost half the sky of an 8K
    panorama that the verdict's build kept (issue 25).

    Raises:
        InputError: not a segmenter, a segmenter of more than one class that is not a cloud model, or
            ``bfloat16`` for a model without a bfloat16 verdict that passed.
    """
    model, info = read_model(model_path, kind=ModelKind.SEGMENTER)
    if info.classes != 1 and info.kind is not ModelKind.CLOUD:
        raise InputError(
            model_path, f"only 1-class segmenters and cloud models can be exported; this one has {info.classes} classes"
        )
    if precision == "bfloat16":
        if not bfloat16_ok(info.bfloat16):
            raise InputError(
                model_path,
                f"cannot export in bfloat16: {describe_verdict(info.bfloat16)}; export it in float32, or measure it "
                "with `tfsky evaluate precision`",
            )
        model = verified_bfloat16(model, info.bfloat16)
    else:
        model = for_inference(model, precision, info.bfloat16)
    return model, info, lambda tiling, cloud, max_pixels: SegmenterModule(model, info, tiling, cloud, max_pixels)


class SegmenterModule(tf.Module):
    """The exported object: the Keras model plus one ``tf.function`` per signature.

    Args:
        model: tf.keras.Model. Tiles [B, h, w, C] (normalised) -> probabilities [B, h, w, K].
        info: ModelInfo. Preprocessing, tile size and channels of the model.
        tiling: TilingConfig. In-graph tiling; ``tile=None`` means ``info.tile_size``.
        cloud: CloudCoverConfig. Cloud models: the camera masks of ``predict_cloud``. Defaults to None
            (the masks of the model's training cameras).
        max_pixels: int. Larger images are refused before decoding. Defaults to None (`pixel_limit`).
    """

    def __init__(
        self,
        model: tf.keras.Model,
        info: ModelInfo,
        tiling: TilingConfig | None,
        cloud: CloudCoverConfig | None = None,
        max_pixels: int | None = None,
    ):
        super().__init__(name="tfsky_segmenter")
        self.model = model
        self.preprocess = info.preprocess
        requested = segmenter_tiling(tiling, info)
        # `tile: auto`: the tile tfsky predict takes for the same budget (recorded in the metadata)
        self.tiling = choose_tiling(requested, SIZE_MULTIPLE, None, available_memory(requested.memory_budget))
        self.channels = channels = info.in_channels
        self.positive = 0 if info.classes == 1 else SKY_CLASS  # the channel drawn as the mask
        self.threshold = info.threshold
        self.working_scale = predicted_scale(info, self.tiling)
        cloud_model = info.kind is ModelKind.CLOUD
        cost = CLOUD_BYTES_PER_PIXEL if cloud_model else SEGMENTER_BYTES_PER_PIXEL
        self.max_pixels = pixel_limit(max_pixels, requested.memory_budget, cost)
        self.predict_tiles = tf.function(
            self._predict_tiles, input_signature=[tf.TensorSpec([None, None, None, channels], tf.float32)]
        )
        self.predict_image = tf.function(self._predict_image, input_signature=[tf.TensorSpec([None], tf.string)])
        self.predict_hdr = None
        if info.preprocess.mode == "log":
            hdr_inputs = [tf.TensorSpec([None], tf.string), tf.TensorSpec([None, 3], tf.int32)]
            self.predict_hdr = tf.function(self._predict_hdr, input_signature=hdr_inputs)
        self.predict_cloud = None
        if cloud_model:
            self.camera_masks = CameraMasks(cloud or CloudCoverConfig(), info)
            self.predict_cloud = tf.function(self._predict_cloud, input_signature=[tf.TensorSpec([None], tf.string)])

    def signatures(self) -> dict[str, tf.types.experimental.ConcreteFunction]:
        """Signature name -> concrete function, for `tf.saved_model.save`."""
        signatures = {
            "serving_default": self.predict_tiles.get_concrete_function(),
            "predict_image": self.predict_image.get_concrete_function(),
        }
        if self.predict_hdr is not None:
            signatures["predict_hdr"] = self.predict_hdr.get_concrete_function()
        if self.predict_cloud is not None:
            signatures["predict_cloud"] = self.predict_cloud.get_concrete_function()
        return signatures

    def warmup_inputs(self) -> warmup.WarmupInputs:
        """The warmup requests of this export's signatures (`tfsky.export.warmup`)."""
        return warmup.warmup_inputs(
            tile=resolved_tile(self.tiling),
            channels=self.channels,
            tile_batch=self.tiling.tile_batch,
            hdr=self.predict_hdr is not None,
        )

    def metadata(self) -> dict:
        """This export's entries of ``assets/tfsky_model.json``: the mask threshold, the in-graph tiling and,
        for a cloud model, the camera masks embedded in ``predict_cloud``."""
        entries = {"mask_threshold": self.threshold, "tiling": dataclasses.asdict(self.tiling)}
        if self.predict_cloud is not None:
            entries["cloud_camera_masks"] = {
                "files": [str(mask.path) for mask in self.camera_masks.masks],
                "forced": self.camera_masks.forced,
            }
        return entries

    def _model_probabilities(self, tiles: tf.Tensor) -> tf.Tensor:
        return tf.cast(self.model(tiles, training=False), tf.float32)

    def _predict_tiles(self, tiles: tf.Tensor) -> dict[str, tf.Tensor]:
        return {"probabilities": self._model_probabilities(tiles)}

    def _predict_image(self, image_bytes: tf.Tensor) -> dict[str, tf.Tensor]:
        def segment(encoded):
            return self._segment(decode_normalised(encoded, self.preprocess, self.channels, self.max_pixels))

        return self._per_image(segment, image_bytes)

    def _predict_hdr(self, image_raw: tf.Tensor, shape: tf.Tensor) -> dict[str, tf.Tensor]:
        def segment(raw_and_shape: tuple[tf.Tensor, tf.Tensor]):
            return self._segment(self.preprocess.apply(decode_raw_image(*raw_and_shape, self.channels)))

        return self._per_image(segment, (image_raw, shape))

    @staticmethod
    def _per_image(segment, images) -> dict[str, tf.Tensor]:
        """Segment a batch of images of different sizes one after the other (bounded memory)."""
        per_image = (tf.TensorSpec([], tf.string), tf.TensorSpec([], tf.string), tf.TensorSpec([], tf.float32))
        outputs = tf.map_fn(segment, images, parallel_iterations=1, fn_output_signature=per_image)
        return dict(zip(("mask_png_bytes", "probability_png_bytes", "sky_fraction"), outputs))

    def _probabilities(self, image: tf.Tensor) -> tf.Tensor:
        """[H, W, K] probabilities of a normalised image, at the model's working scale (refined back to
        full size) as `tfsky.predict.segment.TiledSegmenter.probabilities` computes them."""
        if self.working_scale is None:
            return sliding_window_graph(image, self._model_probabilities, self.tiling, SIZE_MULTIPLE)
        height, width = tf.shape(image)[0], tf.shape(image)[1]
        size = tf.stack(working_size_graph(height, width, self.working_scale))

        def at_working_scale() -> tf.Tensor:
            small = tf.image.resize(image, size, method="area")
            return refine_graph(
                sliding_window_graph(small, self._model_probabilities, self.tiling, SIZE_MULTIPLE), small, image
            )

        return tf.cond(
            tf.reduce_all(size == tf.stack([height, width])),
            lambda: sliding_window_graph(image, self._model_probabilities, self.tiling, SIZE_MULTIPLE),
            at_working_scale,
        )

    def _segment(self, image: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
        """Normalised [H, W, C] -> (mask PNG, 16-bit probability PNG, sky fraction)."""
        probability = self._probabilities(image)
        probability = probability[..., self.positive : self.positive + 1]
        sky = sky_mask_graph(probability, self.threshold)
        probability_16bit = tf.cast(tf.round(tf.clip_by_value(probability, 0.0, 1.0) * 65535.0), tf.uint16)
        return (
            tf.io.encode_png(tf.cast(sky, tf.uint8) * 255),
            tf.io.encode_png(probability_16bit),
            tf.reduce_mean(tf.cast(sky, tf.float32)),
        )

    def _predict_cloud(self, image_bytes: tf.Tensor) -> dict[str, tf.Tensor]:
        def cover(encoded):
            image = decode_normalised(encoded, self.preprocess, self.channels, self.max_pixels)
            cloud_probability = self._probabilities(image)[..., SKY_CLASS]
            valid = self.camera_masks.valid_sky_graph(image)
            cloud = tf.logical_and(sky_mask_graph(cloud_probability, self.threshold), valid)
            classes = tf.where(
                valid,
                tf.where(cloud, CLASS_PNG_VALUES["cloud"], CLASS_PNG_VALUES["clear"]),
                CLASS_PNG_VALUES["outside"],
            )
            count = tf.reduce_sum(tf.cast(valid, tf.int32))
            fraction = tf.where(
                count > 0,
                100.0 * tf.reduce_sum(tf.cast(cloud, tf.float32)) / tf.cast(tf.maximum(count, 1), tf.float32),
                float("nan"),
            )
            return tf.io.encode_png(tf.cast(classes, tf.uint8)[..., None]), fraction, count

        per_image = (tf.TensorSpec([], tf.string), tf.TensorSpec([], tf.float32), tf.TensorSpec([], tf.int32))
        outputs = tf.map_fn(cover, image_bytes, parallel_iterations=1, fn_output_signature=per_image)
        return dict(zip(("class_mask_png_bytes", "cloud_fraction_pct", "valid_pixels"), outputs))
