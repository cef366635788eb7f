"""Pixel normalisation: LDR scaling and the HDR log transform with its exact inverse."""

from __future__ import annotations

import math

import numpy as np
import pytest
import tensorflow as tf

from tfsky.config import load_config
from tfsky.data.transforms import Preprocess
from tfsky.errors import ConfigError
from tfsky.io.images import read_image

SEED_LIKE = [
    Preprocess("log"),
    Preprocess("log", input_mul=0.5, log_epsilon=1e-3, output_bias=2.0, output_scale=0.25),
    Preprocess("log", log_split_around1=True, log_pow=0.5, output_bias=0.3, output_scale=0.2, input_mul=2.0),
]


def relative_error(restored: np.ndarray, original: np.ndarray) -> float:
    """Max of ``|restored - original| / |original|``; exact zeros count against 1e-6 (the smallest pixel here is 2.7e-4)."""
    return float(np.max(np.abs(restored - original) / np.maximum(np.abs(original), 1e-6)))


@pytest.mark.parametrize("preprocess", SEED_LIKE, ids=["default", "bias_scale", "split_pow"])
def test_log_round_trip_over_the_shared_hdr_range(shared_data, preprocess):
    for path in sorted((shared_data / "hdr_polyhaven_1k").glob("*.hdr")):
        radiance = read_image(path)
        exact = preprocess.invert(preprocess.apply(radiance, tf.float64)).numpy()
        assert relative_error(exact, radiance.astype(np.float64)) < 1e-9, path.name  # the whole range
        bright = radiance >= 100 * preprocess.log_epsilon  # float32: where the log value resolves it
        restored = preprocess.invert(preprocess.apply(radiance)).numpy()
        assert relative_error(restored[bright], radiance[bright]) < 1e-5, path.name


def test_log_transform_values_by_hand():
    plain = Preprocess("log", log_epsilon=1e-4, output_bias=1.0, output_scale=0.5)
    values = plain.apply(np.array([0.0, 1.0, math.e], np.float32), tf.float64).numpy()
    expected = [(math.log(1e-4) + 1) * 0.5, (math.log(1 + 1e-4) + 1) * 0.5, (math.log(math.e + 1e-4) + 1) * 0.5]
    np.testing.assert_allclose(values, expected, rtol=1e-6)
    split = Preprocess("log", log_split_around1=True, log_pow=2.0)
    below, one, above = split.apply(np.array([0.5, 1.0, math.e**0.5], np.float64), tf.float64).numpy()
    assert below == pytest.approx(-0.25)  # t - 1 = -0.5, sign-kept square
    assert one == 0.0 and above == pytest.approx(0.25)  # continuous at 1; ln(e^0.5) = 0.5, squared


def test_negative_radiance_is_clamped_to_zero():
    preprocess = Preprocess("log")
    assert preprocess.apply(np.array([-5.0], np.float32)).numpy()[0] == pytest.approx(math.log(1e-4))


@pytest.mark.parametrize("dtype, top", [(np.uint8, 255), (np.uint16, 65535)])
def test_ldr_scales_to_unit_range(dtype, top):
    image = np.array([0, top // 2, top], dtype=dtype)
    np.testing.assert_allclose(Preprocess().apply(image).numpy(), [0.0, (top // 2) / top, 1.0], rtol=1e-7)
    assert Preprocess().invert(tf.constant([0.25])).numpy()[0] == 0.25


@pytest.mark.parametrize(
    "override, key",
    [
        ("preprocess.input_mul=0", "preprocess.input_mul"),
        ("preprocess.log_epsilon=-1", "preprocess.log_epsilon"),
        ("preprocess.log_pow=0", "preprocess.log_pow"),
        ("preprocess.output_scale=0", "preprocess.output_scale"),
        ("preprocess.mode=linear", "preprocess.mode"),
    ],
)
def test_bad_values_name_the_key(override, key):
    with pytest.raises(ConfigError, match=f"^config key '{key}'"):
        load_config(Preprocess, None, [override], section="preprocess")
