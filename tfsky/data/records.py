"""The cache's record format: one ``tf.train.Example`` per full image + mask.

Features: ``id``, ``source``, ``group``, ``condition`` (bytes, empty when
unknown), ``dtype`` (``uint8`` or ``float32``), ``height``, ``width``,
``channels`` (int64), ``image`` (the raw ``H x W x C`` pixel bytes, C order)
and ``mask`` (raw ``uint8`` ``H x W`` class ids).

`encode_example` writes the protobuf wire format directly instead of building
a ``tf.train.Example``: the proto API copies the pixel bytes twice more, and
an 8K float32 RGB image is 400 MB. The single copy left is the one that joins
headers and pixels into the record; `parse_example` reads it back with
``tf.io.parse_single_example``.
"""

from __future__ import annotations

from typing import Mapping, Union

import numpy as np
import tensorflow as tf

Value = Union[str, int, bytes, np.ndarray]

FEATURES = {
    "id": tf.io.FixedLenFeature([], tf.string),
    "source": tf.io.FixedLenFeature([], tf.string),
    "group": tf.io.FixedLenFeature([], tf.string),
    "condition": tf.io.FixedLenFeature([], tf.string, default_value=""),
    "dtype": tf.io.FixedLenFeature([], tf.string),
    "height": tf.io.FixedLenFeature([], tf.int64),
    "width": tf.io.FixedLenFeature([], tf.int64),
    "channels": tf.io.FixedLenFeature([], tf.int64),
    "image": tf.io.FixedLenFeature([], tf.string),
    "mask": tf.io.FixedLenFeature([], tf.string),
}

# Protobuf field numbers: Example.features = 1, Features.feature (map entry) = 1,
# entry key = 1 / value = 2, Feature.bytes_list = 1 / int64_list = 3, *List.value = 1.
_BYTES_LIST, _INT64_LIST = 1, 3


def encode_example(values: Mapping[str, Value]) -> bytes:
    """Serialise a ``tf.train.Example`` whose features are ``values`` (str/bytes/array -> bytes, int -> int64).

    Arrays are taken by buffer (``C``-contiguous), not copied until the final join.
    """
    parts: list = []
    for key, value in values.items():
        parts.extend(_map_entry(key, value))
    return b"".join([_field_header(1, _size(parts)), *parts])  # Example.features holding the entries


def parse_example(record: tf.Tensor, dtype: tf.DType) -> dict[str, tf.Tensor]:
    """Decode one record (TF ops): ``image`` ``[H, W, C]`` of ``dtype``, ``mask`` ``uint8 [H, W, 1]``, metadata."""
    example = tf.io.parse_single_example(record, FEATURES)
    height, width = tf.cast(example["height"], tf.int32), tf.cast(example["width"], tf.int32)
    channels = tf.cast(example["channels"], tf.int32)
    example["image"] = tf.reshape(tf.io.decode_raw(example["image"], dtype), [height, width, channels])
    example["mask"] = tf.reshape(tf.io.decode_raw(example["mask"], tf.uint8), [height, width, 1])
    return example


def _map_entry(key: str, value: Value) -> list:
    """One ``Features.feature`` map entry: header parts followed by the payload."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer, str, bytes, np.ndarray)):
        raise TypeError(f"feature {key!r}: unsupported value type {type(value).__name__}")
    payload: bytes | memoryview
    if isinstance(value, (int, np.integer)):
        number, payload = _INT64_LIST, _varint(int(value) & 0xFFFFFFFFFFFFFFFF)  # int64: two's-complement varint
    else:
        data = value.encode("utf-8") if isinstance(value, str) else value
        payload = np.ascontiguousarray(data).data.cast("B") if isinstance(data, np.ndarray) else data
        number = _BYTES_LIST
    inner = [_field_header(1, len(payload)), payload]  # the list's single (packed) value
    inner.insert(0, _field_header(number, _size(inner)))
    name = key.encode("utf-8")
    entry = [_field_header(1, len(name)), name, _field_header(2, _size(inner)), *inner]
    return [_field_header(1, _size(entry)), *entry]


def _field_header(number: int, length: int) -> bytes:
    """Tag of a length-delimited field (wire type 2) followed by the payload length."""
    return _varint(number << 3 | 2) + _varint(length)


def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _size(parts: list) -> int:
    return sum(len(part) for part in parts)
