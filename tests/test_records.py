"""The cache's record format: `encode_example` writes what TensorFlow's own Example proto writes, and
`parse_example` gives back exactly the pixels, mask and metadata that went in."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from tfsky.data.records import encode_example, parse_example


def reference_example(values: dict) -> tf.train.Example:
    """The same features built with the proto API (the slow path `encode_example` replaces)."""
    feature = {}
    for key, value in values.items():
        if isinstance(value, int):
            feature[key] = tf.train.Feature(int64_list=tf.train.Int64List(value=[value]))
        else:
            data = value.encode() if isinstance(value, str) else value if isinstance(value, bytes) else value.tobytes()
            feature[key] = tf.train.Feature(bytes_list=tf.train.BytesList(value=[data]))
    return tf.train.Example(features=tf.train.Features(feature=feature))


def record(image: np.ndarray, mask: np.ndarray, **extra) -> dict:
    return {
        "id": "cams/1/a.jpg",
        "source": "cams",
        "group": "cams/1",
        "dtype": str(image.dtype),
        "height": image.shape[0],
        "width": image.shape[1],
        "channels": image.shape[2],
        "image": image,
        "mask": mask,
        **extra,
    }


@pytest.mark.parametrize("dtype", [np.uint8, np.float32])
def test_records_round_trip_exactly(dtype):
    rng = np.random.default_rng(0)
    image = (rng.random((37, 53, 3)) * 300).astype(dtype)  # odd sizes: no accidental square reshape
    if dtype == np.float32:
        image[0, 0] = [1e-30, 65504.0, 1e9]
    mask = rng.integers(0, 3, (37, 53), dtype=np.uint8)
    parsed = parse_example(tf.constant(encode_example(record(image, mask, condition="overcast"))), tf.as_dtype(dtype))
    np.testing.assert_array_equal(parsed["image"].numpy(), image)
    np.testing.assert_array_equal(parsed["mask"].numpy()[..., 0], mask)
    assert parsed["id"].numpy() == b"cams/1/a.jpg" and parsed["condition"].numpy() == b"overcast"
    assert (int(parsed["height"]), int(parsed["width"]), int(parsed["channels"])) == (37, 53, 3)


def test_encoding_parses_like_tensorflows_own_example():
    image = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    values = record(image, np.ones((2, 3), np.uint8), condition="clear", big=2**40, negative=-5)
    ours = tf.train.Example.FromString(encode_example(values))
    assert ours == reference_example(values)
    assert ours.features.feature["negative"].int64_list.value == [-5]  # two's-complement varint


def test_condition_defaults_to_empty_and_non_contiguous_arrays_are_encoded_as_c_order():
    image = np.arange(4 * 6 * 3, dtype=np.uint8).reshape(4, 6, 3)[:, ::2]  # a strided view
    parsed = parse_example(tf.constant(encode_example(record(image, np.zeros((4, 3), np.uint8)))), tf.uint8)
    assert parsed["condition"].numpy() == b""
    np.testing.assert_array_equal(parsed["image"].numpy(), image)


@pytest.mark.parametrize("value", [1.5, True, None, [1, 2]])
def test_unsupported_values_are_refused_by_name(value):
    with pytest.raises(TypeError, match="feature 'weight': unsupported value type"):
        encode_example({"weight": value})
