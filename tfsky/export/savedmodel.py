"""Export a tfsky segmenter as one version of a TF Serving model repository.

``export_model`` writes ``<repo>/<name>/<version>/``, a SavedModel whose
signatures all return float32 (a mixed-precision model is cast at the output):

* ``serving_default``: ``tiles`` float32 [batch, H, W, C], already normalised
  -> ``probabilities`` float32 [batch, H, W, K] (the model itself).
* ``predict_image``: ``image_bytes`` [n], encoded PNG/JPEG images of any size
  -> per image ``mask_png_bytes`` (0/255 PNG), ``probability_png_bytes``
  (16-bit PNG of probability x 65535, the format of ``tfsky predict``'s
  ``_prob.png``) and ``sky_fraction`` (share of pixels with probability
  >= 0.5). Decoding, normalisation with the model's own `Preprocess`,
  overlapped tiling and blending run in the graph through
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

A weather classifier (``task: classifier``) is exported with ``serving_default``
on normalised images and ``classify_image`` on encoded ones instead
(`tfsky.export.classifier`), into the same repository layout.

Every input and output has a leading batch dimension and per-image results of
any size are encoded strings, because TF Serving's ``--enable_batching``
concatenates concurrent requests along dimension 0 (scalar inputs are refused
and outputs must split back along it). The ``_bytes`` suffix makes TF
Serving's REST API answer those strings as ``{"b64": ...}``. The folder is
written under a temporary name and renamed into place when complete
(`tfsky.io.atomic.atomic_dir`), because TF Serving loads any numeric folder as
soon as it appears.
"""

from __future__ import annotations

import dataclasses
import datetime
import re
import shutil
from pathlib import Path
from typing import Literal

import tensorflow as tf

from tfsky.data.config import SIZE_MULTIPLE
from tfsky.data.scale import working_size_graph
from tfsky.errors import InputError
from tfsky.export import metadata, warmup
from tfsky.export.config import ExportConfig
from tfsky.io.atomic import atomic_dir, prepare_out_dir, write_json
from tfsky.io.images import DEFAULT_MAX_PIXELS
from tfsky.models.bundle import ModelInfo, ModelKind, load_info, load_model
from tfsky.predict.cloud import CameraMasks, CloudCoverConfig
from tfsky.predict.classify import WeatherClassifier
from tfsky.predict.outputs import CLASS_PNG_VALUES
from tfsky.predict.refine import refine_graph
from tfsky.predict.segment import SKY_CLASS, predicted_scale, segmenter_tiling
from tfsky.tiling import CPU_MEMORY_BUDGET_GB, TilingConfig, available_memory, choose_tiling, sliding_window_graph

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_VERSION_TEMP = re.compile(r"^\.\d+\..+\.part$")  # `atomic_dir`'s temporary of a version folder: .N.<random>.part
_JPEG_SIGNATURE = b"\xff\xd8\xff"
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_BIT_DEPTH_OFFSET = 24  # 8-byte signature, IHDR length + type (8), width + height (8)
# Peak resident memory per input pixel of the image signatures (the whole image is held, not streamed),
# measured on noise PNGs of 4 and 16 megapixels with tiny models, rounded up; `pixel_limit` divides the budget by it.
SEGMENTER_BYTES_PER_PIXEL = 32  # predict_image: 35 at 4 MP, 28 at 16 MP
CLOUD_BYTES_PER_PIXEL = 48  # predict_cloud 45 / 37, predict_image 49 at 4 MP


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

    def __init__(self, model: tf.keras.Model, info: ModelInfo, tiling: TilingConfig | None,
                 cloud: CloudCoverConfig | None = None, max_pixels: int | None = None):
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
        cost = CLOUD_BYTES_PER_PIXEL if info.kind is ModelKind.CLOUD else SEGMENTER_BYTES_PER_PIXEL
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
        if info.kind is ModelKind.CLOUD:
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
        return warmup.warmup_inputs(tile=self.tiling.tile, channels=self.channels, tile_batch=self.tiling.tile_batch,
                                    hdr=self.predict_hdr is not None)

    def metadata(self) -> dict:
        """This export's entries of ``assets/tfsky_model.json``: the mask threshold, the in-graph tiling and,
        for a cloud model, the camera masks embedded in ``predict_cloud``."""
        entries = {"mask_threshold": self.threshold, "tiling": dataclasses.asdict(self.tiling)}
        if self.predict_cloud is not None:
            entries["cloud_camera_masks"] = {"files": [str(mask.path) for mask in self.camera_masks.masks],
                                             "forced": self.camera_masks.forced}
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
        def segment(raw_and_shape):
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
            return refine_graph(sliding_window_graph(small, self._model_probabilities, self.tiling, SIZE_MULTIPLE),
                                small, image)

        return tf.cond(
            tf.reduce_all(size == tf.stack([height, width])),
            lambda: sliding_window_graph(image, self._model_probabilities, self.tiling, SIZE_MULTIPLE),
            at_working_scale,
        )

    def _segment(self, image: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
        """Normalised [H, W, C] -> (mask PNG, 16-bit probability PNG, sky fraction)."""
        probability = self._probabilities(image)
        probability = probability[..., self.positive : self.positive + 1]
        sky = probability >= self.threshold
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
            cloud = tf.logical_and(cloud_probability >= self.threshold, valid)
            classes = tf.where(valid, tf.where(cloud, CLASS_PNG_VALUES["cloud"], CLASS_PNG_VALUES["clear"]),
                               CLASS_PNG_VALUES["outside"])
            count = tf.reduce_sum(tf.cast(valid, tf.int32))
            fraction = tf.where(count > 0, 100.0 * tf.reduce_sum(tf.cast(cloud, tf.float32))
                                / tf.cast(tf.maximum(count, 1), tf.float32), float("nan"))
            return tf.io.encode_png(tf.cast(classes, tf.uint8)[..., None]), fraction, count

        per_image = (tf.TensorSpec([], tf.string), tf.TensorSpec([], tf.float32), tf.TensorSpec([], tf.int32))
        outputs = tf.map_fn(cover, image_bytes, parallel_iterations=1, fn_output_signature=per_image)
        return dict(zip(("class_mask_png_bytes", "cloud_fraction_pct", "valid_pixels"), outputs))


def pixel_limit(max_pixels: int | None, memory_budget: float | None, bytes_per_pixel: int) -> int:
    """The most pixels an exported image signature decodes: ``export.max_pixels`` when set, else what the
    memory budget (``tiling.memory_budget``, GB; default `CPU_MEMORY_BUDGET_GB`) holds at the signature's
    measured peak ``bytes_per_pixel``, never over `DEFAULT_MAX_PIXELS` (the limit of ``read_image``).

    A served graph holds the whole decoded image and its intermediates at once (it does not stream), so
    without this bound a 140 KB all-zero 12000x12000 PNG drove ``colorize_image`` past 18 GB.
    """
    if max_pixels is not None:
        return max_pixels
    return min(DEFAULT_MAX_PIXELS, int((memory_budget or CPU_MEMORY_BUDGET_GB) * 1e9 / bytes_per_pixel))


def decode_normalised(image_bytes: tf.Tensor, preprocess, channels: int, max_pixels: int) -> tf.Tensor:
    """Decode PNG/JPEG/BMP/GIF bytes to [H, W, channels] and normalise them with ``preprocess``.

    16-bit PNGs are decoded to uint16 (``/ 65535``), everything else to uint8
    (``/ 255``), matching what `tfsky.io.images.read_image` returns for the file.
    RGB JPEGs are decoded with the accurate integer DCT, which gives exactly
    Pillow's pixels (what ``read_image`` uses): TensorFlow's default fast DCT
    differs by up to 23 levels, and served probabilities then by up to 0.016.
    An image whose header declares more than ``max_pixels`` pixels (`pixel_limit`) is refused with
    INVALID_ARGUMENT before it is decoded, in one line naming its size and the limit: a small compressed
    file can otherwise make the server allocate gigabytes.
    """
    header = tf.io.decode_raw(tf.strings.substr(image_bytes + b"\0" * 32, 0, 32), tf.uint8)
    is_png = _starts_with(header, _PNG_SIGNATURE)
    is_png16 = tf.logical_and(is_png, tf.equal(header[_PNG_BIT_DEPTH_OFFSET], 16))
    is_jpeg = _starts_with(header, _JPEG_SIGNATURE)
    size = _declared_size(image_bytes, header, is_png, is_jpeg)
    pixels = tf.cast(size[0], tf.uint64) * tf.cast(size[1], tf.uint64)  # exact: each side is below 2**32
    size_check = tf.debugging.Assert(pixels <= tf.constant(max_pixels, tf.uint64), [tf.strings.format(
        "image is {}x{} ({} pixels), over the limit of " f"{max_pixels} pixels set at export (export.max_pixels)",
        (size[1], size[0], pixels))])

    def normalised(image):  # per branch: uint16 and uint8 normalise differently
        return preprocess.apply(tf.ensure_shape(image, [None, None, channels]))

    def decode_16bit():
        return normalised(tf.io.decode_png(image_bytes, channels=channels, dtype=tf.uint16))

    def decode_jpeg():
        return normalised(tf.io.decode_jpeg(image_bytes, channels=channels, dct_method="INTEGER_ACCURATE"))

    def decode_8bit():
        return normalised(tf.io.decode_image(image_bytes, channels=channels, expand_animations=False))

    branches = [(is_png16, decode_16bit)]
    if channels == 3:  # other channel counts keep decode_image's conversions
        branches.append((is_jpeg, decode_jpeg))
    with tf.control_dependencies([size_check]):
        return tf.case(branches, default=decode_8bit, exclusive=False)


def _starts_with(header: tf.Tensor, signature: bytes) -> tf.Tensor:
    return tf.reduce_all(tf.equal(header[: len(signature)], tf.constant(list(signature), tf.uint8)))


def _declared_size(image_bytes: tf.Tensor, header: tf.Tensor, is_png: tf.Tensor, is_jpeg: tf.Tensor) -> tf.Tensor:
    """[height, width] (int64) an encoded image declares: PNG IHDR, JPEG frame header, GIF screen, BMP info header.

    Unknown formats give [0, 0]; the decoder refuses them.
    """
    byte = tf.cast(header, tf.int64)

    def unsigned(offset: int, size: int, big_endian: bool) -> tf.Tensor:
        order = range(size) if big_endian else reversed(range(size))
        value = tf.constant(0, tf.int64)
        for index in order:
            value = value * 256 + byte[offset + index]
        return value

    def bmp_side(offset: int) -> tf.Tensor:  # signed little-endian int32 (negative height = top-down rows)
        value = unsigned(offset, 4, big_endian=False)
        return tf.abs(tf.where(value >= 2**31, value - 2**32, value))

    return tf.case([
        (is_png, lambda: tf.stack([unsigned(20, 4, True), unsigned(16, 4, True)])),
        (is_jpeg, lambda: tf.cast(tf.io.extract_jpeg_shape(image_bytes)[:2], tf.int64)),
        (_starts_with(header, b"GIF"), lambda: tf.stack([unsigned(8, 2, False), unsigned(6, 2, False)])),
        (_starts_with(header, b"BM"), lambda: tf.stack([bmp_side(22), bmp_side(18)])),
    ], default=lambda: tf.zeros([2], tf.int64), exclusive=False)


def decode_raw_image(image_raw: tf.Tensor, shape: tf.Tensor, channels: int) -> tf.Tensor:
    """float32 little-endian bytes + [H, W, C] shape -> [H, W, C] tensor, checking sizes and channels."""
    values = tf.io.decode_raw(image_raw, tf.float32)
    checks = [
        tf.debugging.assert_equal(
            tf.size(values), tf.reduce_prod(shape), message="image_raw does not hold shape[0]*shape[1]*shape[2] floats"
        ),
        tf.debugging.assert_equal(shape[2], channels, message=f"shape[2] must be {channels} channels"),
        tf.debugging.assert_positive(shape[:2], message="shape[0] and shape[1] (height, width) must be > 0"),
    ]
    with tf.control_dependencies(checks):
        return tf.reshape(values, tf.concat([shape[:2], [channels]], 0))


def next_version(model_dir: str | Path) -> int:
    """1 + the largest numeric version folder in ``model_dir`` (1 for a new model)."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        return 1
    return max((int(p.name) for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit()), default=0) + 1


def export_model(
    model_path: str | Path,
    repo: str | Path,
    name: str,
    *,
    version: int | None = None,
    overwrite: bool = False,
    tiling: TilingConfig | None = None,
    precision: Literal["float32", "as_trained"] = ExportConfig.precision,
    cloud: CloudCoverConfig | None = None,
    max_pixels: int | None = None,
) -> Path:
    """Export a saved tfsky segmenter, weather classifier or colorizer to ``<repo>/<name>/<version>/``; returns that folder.

    Args:
        model_path: str | Path. A ``.keras`` file with its tfsky sidecar.
        repo: str | Path. The model repository root (what TF Serving mounts as /models).
        name: str. Model name under which it is served.
        version: int. Version number. Defaults to None (next free integer).
        overwrite: bool. Replace an existing version folder. Defaults to False.
        tiling: TilingConfig. In-graph tiling of ``predict_image``. Defaults to None
            (`TilingConfig` defaults with the model's tile size, as ``tfsky predict``).
        precision: str. ``float32`` rebuilds a mixed-precision model in float32
            (the shipped TF Serving image runs on CPU, where float16 is ~13x
            slower); ``as_trained`` keeps float16 layers, for a GPU server.
            Defaults to ``float32``.
        cloud: CloudCoverConfig. Cloud models: the camera masks embedded in ``predict_cloud``.
            Defaults to None (the masks of the model's training cameras).
        max_pixels: int. The image signatures refuse larger images before decoding them (stored in the
            metadata). Defaults to None: what ``tiling.memory_budget`` holds (`pixel_limit`).

    Raises:
        InputError: bad name or version, existing version without ``overwrite``,
            unreadable model, or a model that is neither a 1-class segmenter, a cloud model nor a classifier.
    """
    if not _NAME.match(name):
        raise InputError(name, "model name must be letters, digits, '_', '.' or '-' (it is a folder name)")
    classifier = None
    kind = load_info(model_path).kind
    if kind is ModelKind.CLASSIFIER:
        classifier = WeatherClassifier.load(model_path, precision)
        model, info = classifier.model, classifier.info
    elif kind is ModelKind.COLORIZER:
        model, info = load_model(model_path, precision=precision, kind=ModelKind.COLORIZER)
    else:
        model, info = load_model(model_path, precision=precision, kind=ModelKind.SEGMENTER)
        if info.classes != 1 and info.kind is not ModelKind.CLOUD:
            raise InputError(model_path, f"only 1-class segmenters and cloud models can be exported; this one has "
                             f"{info.classes} classes")
    model_dir = Path(repo) / name
    version = next_version(model_dir) if version is None else version
    if version < 1:
        raise InputError(model_dir, f"version must be >= 1; got {version}")
    target = model_dir / str(version)
    if target.exists() and not overwrite:
        raise InputError(target, "version already exists (omit --version for the next one, or pass --overwrite)")
    if classifier is not None:
        from tfsky.export.classifier import ClassifierModule  # it builds on this module's decoder

        module = ClassifierModule(classifier, tiling.memory_budget if tiling else None, max_pixels)
    elif kind is ModelKind.COLORIZER:
        from tfsky.export.colorize import ColorizerModule  # it builds on this module's decoder

        module = ColorizerModule(model, info, tiling, model_path, max_pixels)
    else:
        module = SegmenterModule(model, info, tiling, cloud, max_pixels)  # validates the tiling before anything is written
    prepare_out_dir(model_dir)
    remove_stale_exports(model_dir)
    with atomic_dir(target) as tmp:
        tf.saved_model.save(module, str(tmp), signatures=module.signatures())
        warmup.write_warmup(tmp, warmup.prediction_logs(name, module.warmup_inputs()))
        write_json(tmp / metadata.METADATA_FILE, _metadata(model_path, name, version, info, module, model))
        _make_readable(tmp)
    return target


def remove_stale_exports(model_dir: Path) -> None:
    """Delete the hidden ``.N.<random>.part`` folders killed exports of this model left (one was 47 MB).

    Two exports of one model must not run at once anyway: both would pick the same next version.
    """
    for stale in model_dir.iterdir():
        if _VERSION_TEMP.match(stale.name) and stale.is_dir() and not stale.is_symlink():
            shutil.rmtree(stale, ignore_errors=True)


def _make_readable(folder: Path) -> None:
    """Temporary files and folders are created private; TF Serving runs as another user and must read them."""
    folder.chmod(0o755)
    for path in folder.rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)


def _metadata(model_path, name: str, version: int, info: ModelInfo, module, model) -> dict:
    return {
        "name": name,
        "version": version,
        "source_model": str(Path(model_path).resolve()),
        "exported_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "max_pixels": module.max_pixels,
        **module.metadata(),
        "compute_dtypes": sorted({layer.compute_dtype for layer in model.layers}),
        "model": info.to_json(),
    }
