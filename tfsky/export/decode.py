"""Decoding of the images a served signature receives, in the graph, and the limit on their size.

Every exported kind (`tfsky.export.segmenter`, `tfsky.export.classifier`,
`tfsky.export.colorize`) decodes its encoded inputs with `decode_normalised`,
which returns exactly the pixels `tfsky.io.images.read_image` gives ``tfsky
predict`` for the same file, and refuses an image larger than `pixel_limit`
before decoding it.
"""

from __future__ import annotations

import tensorflow as tf

from tfsky.io.images import DEFAULT_MAX_PIXELS
from tfsky.tiling import CPU_MEMORY_BUDGET_GB

_JPEG_SIGNATURE = b"\xff\xd8\xff"
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_BIT_DEPTH_OFFSET = 24  # 8-byte signature, IHDR length + type (8), width + height (8)


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
    size_check = tf.debugging.Assert(
        pixels <= tf.constant(max_pixels, tf.uint64),
        [
            tf.strings.format(
                "image is {}x{} ({} pixels), over the limit of "
                f"{max_pixels} pixels set at export (export.max_pixels)",
                (size[1], size[0], pixels),
            )
        ],
    )

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

    return tf.case(
        [
            (is_png, lambda: tf.stack([unsigned(20, 4, True), unsigned(16, 4, True)])),
            (is_jpeg, lambda: tf.cast(tf.io.extract_jpeg_shape(image_bytes)[:2], tf.int64)),
            (_starts_with(header, b"GIF"), lambda: tf.stack([unsigned(8, 2, False), unsigned(6, 2, False)])),
            (_starts_with(header, b"BM"), lambda: tf.stack([bmp_side(22), bmp_side(18)])),
        ],
        default=lambda: tf.zeros([2], tf.int64),
        exclusive=False,
    )


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
