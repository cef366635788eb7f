"""``precision: auto`` on a CPU: mixed_bfloat16 only where the CPU has a bfloat16 unit, float32 otherwise;
``bfloat16`` inference rebuilds a model in bfloat16 maths with a float32 head."""

from __future__ import annotations

import os

import numpy as np
import pytest
import tensorflow as tf

from tfsky.models import precision
from tfsky.models.precision import cpu_flags_of, cpu_has_bf16, for_inference, resolve_precision
from tfsky.models.segmenter import SegmenterModelConfig, build_segmenter
from tests.test_segmenter_model import with_trained_input_statistics

AMX_CPUINFO = "processor\t: 0\nflags\t\t: fpu avx512f amx_bf16 amx_tile avx512_bf16\n\nprocessor\t: 1\nflags\t: fpu\n"
AVX512_CPUINFO = "processor\t: 0\nflags\t\t: fpu avx512f avx512_vnni\n"


def test_cpu_flags_are_read_from_the_first_processor():
    assert {"amx_bf16", "avx512_bf16"} <= cpu_flags_of(AMX_CPUINFO)
    assert cpu_flags_of("no flags here") == frozenset()


@pytest.mark.parametrize(("cpuinfo", "expected"), [(AMX_CPUINFO, "mixed_bfloat16"), (AVX512_CPUINFO, "float32")])
def test_auto_follows_the_cpu_flags(tmp_path, monkeypatch, cpuinfo, expected):
    monkeypatch.delenv(precision.BF16_OVERRIDE, raising=False)
    (tmp_path / "cpuinfo").write_text(cpuinfo)
    monkeypatch.setattr(precision, "_cpu_flags", lambda: precision.cpu_flags_of((tmp_path / "cpuinfo").read_text()))
    assert resolve_precision("auto") == expected
    assert resolve_precision("float32") == "float32"  # an explicit choice is kept


@pytest.mark.parametrize(("forced", "expected"), [("1", "mixed_bfloat16"), ("0", "float32")])
def test_detection_can_be_forced(monkeypatch, forced, expected):
    monkeypatch.setenv(precision.BF16_OVERRIDE, forced)
    assert cpu_has_bf16() is (forced == "1")
    assert resolve_precision("auto") == expected


def test_bfloat16_inference_keeps_a_float32_head_and_the_probabilities():
    tf.keras.utils.set_random_seed(0)  # fixed weights: a random deep net amplifies rounding unevenly from draw to draw
    model = build_segmenter(SegmenterModelConfig(backbone="resnet18", decoder_filters=(16, 8, 8, 4, 4)), 3)
    with_trained_input_statistics(model)
    fast = for_inference(model, "bfloat16")
    assert fast.get_layer("decoder_stage0a_conv").compute_dtype == "bfloat16"
    assert fast.get_layer("probabilities").compute_dtype == "float32"
    image = tf.random.stateless_uniform((1, 64, 64, 3), seed=(1, 2))
    reference, result = model(image).numpy(), fast(image).numpy()
    assert result.dtype == np.float32
    # bfloat16 keeps 8 mantissa bits (a step of 3.9e-3 at 1.0); through a random network the sigmoid moves a few steps
    np.testing.assert_allclose(result, reference, atol=0.05)
    assert not np.array_equal(result, reference)  # it did compute in bfloat16
    assert for_inference(fast, "float32").get_layer("decoder_stage0a_conv").compute_dtype == "float32"


def test_benchmarks_record_the_cpu_model_and_its_bf16_unit(monkeypatch):
    text = "processor\t: 0\nmodel name\t: Intel(R) Xeon(R) Platinum 8480+\nflags\t\t: fpu avx512f amx_bf16 sse2\n"
    monkeypatch.setattr(precision, "_cpuinfo", lambda: text)
    assert precision.cpu_record() == {
        "model": "Intel(R) Xeon(R) Platinum 8480+",
        "cores": os.cpu_count(),
        "bf16_unit": True,
        "simd_flags": ["amx_bf16", "avx512f"],
    }
