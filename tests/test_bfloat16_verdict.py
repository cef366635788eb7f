"""The bfloat16 verdict of a model (issue 25): measured against float32, stored in the sidecar, used by ``auto``.

The tiny models here compute ``P(sky) = sigmoid(100 x - 50)`` of the first channel ``x``: 100, 50 and pixel
values 0.25 / 0.75 are exact in bfloat16, so such pixels give the same mask in both precisions, while
``x = 0.4995`` (P = 0.4875 in float32) is rounded to 0.5 by bfloat16 (P = 0.5: sky) - a real rounding flip.
"""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import tensorflow as tf

from tfsky.data.transforms import Preprocess
from tfsky.models import precision
from tfsky.models.bundle import ModelInfo, load_info, load_model, save_model
from tfsky.models.precision import BF16_MIN_AGREEMENT, bfloat16_verdict
from tfsky.train.bfloat16 import store_bfloat16_verdict
from tests.test_train import write_config

SKY, GROUND = 0.75, 0.25  # exact in bfloat16, far from the cut
FLIPS_TO_SKY = 0.4995  # ground in float32, sky in bfloat16 (sigmoid head)
FLIPS_TO_GROUND = 0.5005  # class 1 in float32, a tie (class 0) in bfloat16 (softmax head)


def tiny_segmenter(classes: int = 1) -> tf.keras.Model:
    """Logit ``100 x - 50`` of the first channel (class 1 against a zero logit with a softmax head)."""
    kernel = np.zeros((1, 1, 3, classes), np.float32)
    kernel[0, 0, 0, -1] = 100.0
    bias = np.zeros(classes, np.float32)
    bias[-1] = -50.0
    inputs = tf.keras.Input((None, None, 3))
    logits = tf.keras.layers.Conv2D(classes, 1, name="features")(inputs)
    head = "sigmoid" if classes == 1 else "softmax"
    model = tf.keras.Model(inputs, tf.keras.layers.Activation(head, dtype="float32", name="probabilities")(logits))
    model.get_layer("features").set_weights([kernel, bias])
    return model


def batch(first_channel: np.ndarray, classes: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """One batch of (image, float32 model's mask as truth) with ``first_channel`` ``[H, W]``."""
    image = np.repeat(first_channel[None, ..., None], 3, axis=-1).astype(np.float32)
    sky = (first_channel >= 0.5).astype(np.float32)[None, ..., None]
    return image, (sky if classes == 1 else np.concatenate([1 - sky, sky], axis=-1))


def scene(flips: int = 0, value: float = FLIPS_TO_SKY, size: int = 32) -> np.ndarray:
    """Sky above ground, with ``flips`` ground pixels at ``value``."""
    pixels = np.full((size, size), GROUND, np.float32)
    pixels[: size // 2] = SKY
    pixels[-1, :flips] = value
    return pixels


def test_a_model_whose_masks_survive_bfloat16_is_ok():
    verdict = bfloat16_verdict(tiny_segmenter(), [batch(scene())])
    assert verdict["agreement"] == 1.0 and verdict["iou_float32"] == verdict["iou_bfloat16"] == 1.0
    assert verdict["ok"] is True
    assert verdict["pixels"] == 32 * 32 and verdict["cpu"]


def test_pixels_bfloat16_flips_fail_the_verdict_on_agreement():
    verdict = bfloat16_verdict(tiny_segmenter(), [batch(scene()), batch(scene(flips=20))])
    assert verdict["agreement"] == pytest.approx(1 - 20 / 2048)
    assert verdict["iou_bfloat16"] == pytest.approx(1024 / 1044, abs=1e-5)  # 20 ground pixels called sky
    assert verdict["ok"] is False


def test_an_iou_change_alone_fails_the_verdict():
    """Two flips in 4096 pixels keep the agreement above 0.999, but with 8 sky pixels the IoU drops to 0.8."""
    pixels = np.full((64, 64), GROUND, np.float32)
    pixels[0, :8] = SKY
    pixels[-1, :2] = FLIPS_TO_SKY
    verdict = bfloat16_verdict(tiny_segmenter(), [batch(pixels)])
    assert verdict["agreement"] >= BF16_MIN_AGREEMENT
    assert verdict["iou_float32"] == 1.0 and verdict["iou_bfloat16"] == pytest.approx(0.8)
    assert verdict["ok"] is False


def test_a_softmax_model_is_judged_on_its_arg_max_classes():
    model = tiny_segmenter(classes=2)
    assert bfloat16_verdict(model, [batch(scene(), classes=2)])["ok"] is True
    verdict = bfloat16_verdict(model, [batch(scene(flips=20, value=FLIPS_TO_GROUND), classes=2)])
    assert verdict["agreement"] == pytest.approx(1 - 20 / 1024)
    assert verdict["ok"] is False


def test_the_verdict_is_cut_at_the_given_threshold():
    """At 0.48 the pixels bfloat16 moves from P 0.4875 to 0.5 are sky in both precisions."""
    verdict = bfloat16_verdict(tiny_segmenter(), [batch(scene(flips=20))], threshold=0.48)
    assert verdict["agreement"] == 1.0


def tiny_unet() -> tf.keras.Model:
    """`tiny_segmenter` laid out like a segmentation-models U-Net: the flipping logit in the encoder, then an
    identity ``decoder_stage0_conv``. Kept in float32, the encoder gives the float32 logit (-0.05 at
    `FLIPS_TO_SKY`), which bfloat16 rounds but keeps negative: the masks stay the float32 masks."""
    inputs = tf.keras.Input((None, None, 3))
    logit = tf.keras.layers.Conv2D(1, 1, name="encoder_logit")(inputs)
    decoded = tf.keras.layers.Conv2D(1, 1, name="decoder_stage0_conv")(logit)
    model = tf.keras.Model(inputs, tf.keras.layers.Activation("sigmoid", dtype="float32", name="head")(decoded))
    model.get_layer("encoder_logit").set_weights(
        [np.array([100.0, 0, 0], np.float32).reshape(1, 1, 3, 1), np.array([-50.0], np.float32)]
    )
    model.get_layer("decoder_stage0_conv").set_weights([np.ones((1, 1, 1, 1), np.float32), np.zeros(1, np.float32)])
    return model


def test_the_parts_of_a_unet_a_bfloat16_build_may_keep_in_float32():
    model = tiny_unet()
    assert precision.float32_part_layers(model, "encoder") == ["encoder_logit"]
    assert precision.float32_part_layers(model, "decoder") == ["decoder_stage0_conv", "head"]
    assert precision.float32_part_layers(model, "last-stage") == ["decoder_stage0_conv", "head"]
    assert precision.float32_part_layers(model, None) == []
    assert precision.float32_part_layers(tiny_segmenter(), "encoder") == []  # no decoder_* layers: no parts


def test_a_part_kept_in_float32_shows_where_the_disagreement_comes_from():
    flipping = [batch(scene(flips=20))]
    no_fallback = {"fallback": None}
    assert bfloat16_verdict(tiny_unet(), flipping, float32_part="encoder", **no_fallback)["agreement"] == 1.0
    assert bfloat16_verdict(tiny_unet(), flipping, float32_part="decoder", **no_fallback)["agreement"] < 1.0


def test_when_the_whole_network_fails_the_verdict_keeps_the_encoder_in_float32():
    verdict = bfloat16_verdict(tiny_unet(), [batch(scene(flips=20))])
    assert verdict["ok"] is True and verdict["float32_part"] == "encoder" and verdict["agreement"] == 1.0
    assert verdict["whole_network"]["agreement"] == pytest.approx(1 - 20 / 1024)
    whole_only = bfloat16_verdict(tiny_unet(), [batch(scene(flips=20))], fallback=None)
    assert whole_only["ok"] is False and whole_only["float32_part"] is None and "whole_network" not in whole_only


def test_a_model_that_passes_whole_is_not_split_and_one_without_parts_just_fails():
    passing = bfloat16_verdict(tiny_unet(), [batch(scene())])
    assert passing["ok"] is True and passing["float32_part"] is None and "whole_network" not in passing
    failing = bfloat16_verdict(tiny_segmenter(), [batch(scene(flips=20))])
    assert failing["ok"] is False and failing["float32_part"] is None


def test_auto_builds_what_the_verdict_passed_and_an_explicit_bfloat16_builds_the_whole_network(
    tmp_path, monkeypatch, caplog
):
    with_bf16_unit(monkeypatch, True)
    caplog.set_level(logging.INFO, logger="tfsky")
    verdict = bfloat16_verdict(tiny_unet(), [batch(scene(flips=20))])
    path = tmp_path / "unet.keras"
    save_model(tiny_unet(), path, ModelInfo("segmenter", Preprocess(), tile_size=32, bfloat16=verdict))
    auto, _ = load_model(path)
    assert auto.get_layer("encoder_logit").compute_dtype == "float32"
    assert auto.get_layer("decoder_stage0_conv").compute_dtype == "bfloat16"
    image, truth = batch(scene(flips=20))
    assert np.array_equal(auto(image).numpy() >= 0.5, truth >= 0.5)  # the float32 masks, flips included
    notes = [record.getMessage() for record in caplog.records if record.name.startswith("tfsky")]
    assert "its bfloat16 verdict is ok with the encoder in float32" in notes[0]
    assert "the whole network in bfloat16: agreement 0.98047" in notes[0]
    whole, _ = load_model(path, precision="bfloat16")
    assert whole.get_layer("encoder_logit").compute_dtype == "bfloat16"
    assert not np.array_equal(whole(image).numpy() >= 0.5, truth >= 0.5)


def saved(tmp_path, verdict, name="best") -> str:
    path = tmp_path / f"{name}.keras"
    save_model(tiny_segmenter(), path, ModelInfo("segmenter", Preprocess(), tile_size=32, bfloat16=verdict))
    return path


def with_bf16_unit(monkeypatch, present: bool) -> None:
    """Force the CPU flags `precision: auto` reads (the override variable unset)."""
    monkeypatch.delenv(precision.BF16_OVERRIDE, raising=False)
    monkeypatch.setattr(precision, "_cpu_flags", lambda: frozenset({"avx512f", *(["amx_bf16"] if present else [])}))


OK = {"agreement": 0.9995, "iou_float32": 0.9, "iou_bfloat16": 0.9001, "ok": True, "pixels": 10, "cpu": "x"}
FAILED = {**OK, "agreement": 0.99, "ok": False}


@pytest.mark.parametrize(
    ("verdict", "dtype", "note"),
    [
        (
            OK,
            "bfloat16",
            "precision auto: bfloat16 (this CPU has a bfloat16 unit; its bfloat16 verdict is ok: mask "
            "agreement 0.99950",
        ),
        (
            FAILED,
            "float32",
            "precision auto: float32 (this CPU has a bfloat16 unit; its bfloat16 verdict failed: mask "
            "agreement 0.99000",
        ),
        (None, "float32", "precision auto: float32 (this CPU has a bfloat16 unit; the model has no bfloat16 verdict"),
    ],
)
def test_auto_uses_bfloat16_on_a_bf16_cpu_only_for_a_model_whose_verdict_is_ok(
    tmp_path, monkeypatch, caplog, verdict, dtype, note
):
    with_bf16_unit(monkeypatch, True)
    caplog.set_level(logging.INFO, logger="tfsky")
    model, info = load_model(saved(tmp_path, verdict))
    assert model.get_layer("features").compute_dtype == dtype
    assert model.get_layer("probabilities").compute_dtype == "float32"
    notes = [record.getMessage() for record in caplog.records if record.name.startswith("tfsky")]
    assert len(notes) == 1 and notes[0].startswith(note)
    assert "\n" not in notes[0]


@pytest.mark.parametrize("verdict", [OK, FAILED, None])
def test_without_a_bf16_unit_auto_stays_float32_and_says_nothing(tmp_path, monkeypatch, caplog, verdict):
    with_bf16_unit(monkeypatch, False)
    caplog.set_level(logging.INFO, logger="tfsky")
    model, _ = load_model(saved(tmp_path, verdict))
    assert model.get_layer("features").compute_dtype == "float32"
    assert not [record for record in caplog.records if record.name.startswith("tfsky")]


def test_with_a_gpu_auto_keeps_the_model_as_trained_whatever_the_verdict(tmp_path, monkeypatch):
    with_bf16_unit(monkeypatch, True)
    gpu = [tf.config.PhysicalDevice("/physical_device:GPU:0", "GPU")]
    monkeypatch.setattr(tf.config, "list_physical_devices", lambda kind=None: gpu if kind == "GPU" else [])
    with precision.precision_policy("mixed_float16"):
        trained = tiny_segmenter()
    path = tmp_path / "half.keras"
    save_model(trained, path, ModelInfo("segmenter", Preprocess(), tile_size=32, bfloat16=OK))
    assert load_model(path)[0].get_layer("features").compute_dtype == "float16"  # as trained, not bfloat16


def test_an_explicit_precision_ignores_the_verdict(tmp_path, monkeypatch):
    with_bf16_unit(monkeypatch, True)
    assert load_model(saved(tmp_path, OK), precision="float32")[0].get_layer("features").compute_dtype == "float32"
    assert (
        load_model(saved(tmp_path, FAILED), precision="bfloat16")[0].get_layer("features").compute_dtype == "bfloat16"
    )


def test_the_verdict_is_stored_in_the_sidecar_and_survives_a_reload(tmp_path):
    path = saved(tmp_path, None)
    val_ds = tf.data.Dataset.from_tensors(batch(scene(flips=20)))
    stored = store_bfloat16_verdict(path, val_ds)
    assert stored["ok"] is False
    assert load_info(path).bfloat16 == stored
    assert json.loads(path.with_suffix(".json").read_text())["bfloat16"]["agreement"] == stored["agreement"]
    assert not [p for p in tmp_path.iterdir() if ".part" in p.name or p.name.startswith(".")]  # written atomically


def test_an_old_sidecar_without_the_field_reads_as_no_verdict(tmp_path):
    path = saved(tmp_path, None)
    sidecar = path.with_suffix(".json")
    data = json.loads(sidecar.read_text())
    del data["bfloat16"]
    sidecar.write_text(json.dumps(data))
    assert load_info(path).bfloat16 is None


@pytest.fixture
def prepared(tmp_path, cli):
    """A tiny training config with its cache prepared, and a model saved beside a copy of it."""
    config = write_config(tmp_path)
    assert cli("data", "prepare", "-c", config, "--quiet").exit_code == 0
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(config.read_text())
    return config, saved(run, None)


def test_evaluate_precision_measures_and_stores_the_verdict(prepared, cli):
    _, model = prepared
    result = cli("evaluate", "precision", "-m", model, "--quiet")  # the config.yaml beside the model
    assert result.exit_code == 0, result.stderr
    verdict = load_info(model).bfloat16
    assert verdict["pixels"] == 2 * 2 * 64 * 64  # validation_steps 2 x batch 2 x 64 x 64 patches
    assert "agreement" in result.stdout and "stored in" in result.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("-m", "{tmp}/missing.keras"), "missing.keras: model file not found"),
        (("-m", "{tmp}/loose.keras"), "config key '--config': not given, and there is no config.yaml beside"),
        (("-m", "{model}", "--set", "model.classes=2"), "config key 'model.classes': is 2 but"),
        (("-m", "{model}", "--set", "data.cache={tmp}/nothing"), "nothing"),
        (("-m", "{run}/translator.keras"), "is a pix2pix model, not a sky segmenter"),
        (("-m", "{run}/truncated.keras"), "truncated.keras: cannot load model"),
    ],
)
def test_evaluate_precision_bad_input_is_one_line(prepared, cli, tmp_path, args, message):
    _, model = prepared
    saved(tmp_path, None, "loose")
    save_model(tiny_segmenter(), model.parent / "translator.keras", ModelInfo("pix2pix", Preprocess(), tile_size=32))
    truncated = saved(model.parent, None, "truncated")
    truncated.write_bytes(truncated.read_bytes()[:1000])
    args = [arg.replace("{run}", str(model.parent)) for arg in args]
    args = [arg.format(tmp=tmp_path, model=model) for arg in args]
    result = cli("evaluate", "precision", *args, "--quiet")
    assert result.exit_code == 1
    assert result.stderr.startswith("Error: ") and message in result.stderr
    assert result.stderr.count("\n") == 1
