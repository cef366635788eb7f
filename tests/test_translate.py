"""Full-resolution tiled translation, sky-only composites and the translator evaluation, on real cam 623 frames."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from tfsky.data.pairs import Pair, from_model_range, to_model_range, write_pairs, PairSet, PairsConfig
from tfsky.data.transforms import Preprocess
from tfsky.errors import ConfigError
from tfsky.evaluate.translator import PSNR_CAP, evaluate_translator, psnr
from tfsky.io.images import read_image, read_mask
from tfsky.models.bundle import ModelInfo, save_model
from tfsky.models.pix2pix import Pix2PixConfig, build_unet_generator
from tfsky.predict.translate import TiledTranslator, composite, feathered_sky_weight

DEPTH = 3
CLEAR = "20121024_124151.jpg"
OVERCAST = "20130228_211148.jpg"


@pytest.fixture(scope="module")
def translator_file(tmp_path_factory) -> Path:
    """A tiny untrained U-Net generator saved as a tfsky translator (tile 64, depth 3)."""
    tf.keras.utils.set_random_seed(0)
    generator = build_unet_generator(Pix2PixConfig(depth=DEPTH, base_filters=4, max_filters=8))
    path = tmp_path_factory.mktemp("model") / "best.keras"
    info = ModelInfo(task="pix2pix", preprocess=Preprocess(), tile_size=64, classes=3,
                     config={"model": {"kind": "pix2pix", "pix2pix": {"depth": DEPTH}}})
    save_model(generator, path, info)
    return path


@pytest.fixture(scope="module")
def segmenter_file(tmp_path_factory) -> Path:
    """Segmenter stand-in: sky = blue-ish pixels, sigmoid(40 * (B - R) - 2), saved as a tfsky segmenter."""
    inputs = tf.keras.Input((None, None, 3))
    conv = tf.keras.layers.Conv2D(1, 1)
    outputs = tf.keras.layers.Activation("sigmoid")(conv(inputs))
    model = tf.keras.Model(inputs, outputs)
    conv.set_weights([np.array([-40.0, 0.0, 40.0], np.float32).reshape(1, 1, 3, 1), np.array([-2.0], np.float32)])
    path = tmp_path_factory.mktemp("seg") / "seg.keras"
    save_model(model, path, ModelInfo(task="segmenter", preprocess=Preprocess(), tile_size=64))
    return path


@pytest.fixture(scope="module")
def cam623(shared_data) -> Path:
    return shared_data / "skyfinder_webcams" / "623"


def test_single_tile_translation_equals_the_model_on_the_normalised_image(translator_file):
    translator = TiledTranslator.load(translator_file)
    image = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    model = tf.keras.models.load_model(translator_file, compile=False)
    expected = from_model_range(model(to_model_range(image[None] / np.float32(255)))).numpy()[0]
    np.testing.assert_allclose(translator.translate(image), expected, atol=1e-5)


def test_full_resolution_frame_is_translated_through_tiles(translator_file, cam623):
    image = read_image(cam623 / CLEAR)  # 1280 x 720: 24 x 14 tiles of 64
    done = []
    out = TiledTranslator.load(translator_file).translate(image, progress=lambda d, t: done.append((d, t)))
    assert out.shape == (720, 1280, 3) and out.dtype == np.float32
    assert 0 <= out.min() and out.max() <= 1
    assert done[-1][0] == done[-1][1] > 100


def test_a_model_trained_downscaled_runs_at_its_training_scale(translator_file, tmp_path):
    import cv2

    from tfsky.models.bundle import load_model

    model, info = load_model(translator_file)
    info.config["data"] = {"load_size": 64}
    image = np.random.default_rng(1).integers(0, 256, (128, 256, 3), dtype=np.uint8)
    small = cv2.resize(image, (128, 64), interpolation=cv2.INTER_AREA)
    expected = cv2.resize(TiledTranslator(model, info, native_scale=True).translate(small), (256, 128),
                          interpolation=cv2.INTER_LINEAR)
    np.testing.assert_allclose(TiledTranslator(model, info).translate(image), np.clip(expected, 0, 1), atol=1e-6)
    native = TiledTranslator(model, info, native_scale=True).translate(image)
    assert native.shape == (128, 256, 3) and not np.allclose(native, expected, atol=1e-2)


def test_tile_must_fit_the_network(translator_file):
    from tfsky.tiling import TilingConfig

    with pytest.raises(ConfigError, match="config key 'tile': must be a multiple of 8 for this pix2pix model; got 60"):
        TiledTranslator.load(translator_file, TilingConfig(tile=60))


def test_feathered_weight_is_zero_outside_the_sky_and_one_deep_inside():
    sky = np.zeros((100, 100), np.float32)
    sky[:50] = 1.0
    weight = feathered_sky_weight(sky, feather=3.0)
    assert weight[50:].max() == 0.0
    assert np.all(weight[:30] == pytest.approx(1.0))
    assert np.all(np.diff(weight[:, 50]) <= 1e-6)  # falls monotonically towards the horizon
    assert 0 < weight[40, 50] < 1


def test_composite_keeps_non_sky_pixels_of_real_frames(translator_file, cam623, shared_data):
    source = read_image(cam623 / CLEAR)
    translated = TiledTranslator.load(translator_file).translate(source)
    mask = read_mask(shared_data / "skyfinder_webcams" / "623-mask.png")
    weight = feathered_sky_weight(mask.astype(np.float32), feather=5.0)
    out = composite(source, translated, weight)
    ground = mask == 0
    np.testing.assert_array_equal(out[ground], source[ground])  # exact passthrough where the mask is 0
    assert psnr(out / 255.0, source / 255.0, ground) >= 40
    deep_sky = weight == 1.0
    assert deep_sky.mean() > 0.4
    np.testing.assert_array_equal(out[deep_sky], np.round(translated[deep_sky] * 255).astype(np.uint8))


def test_translate_cli_with_segmenter_composite_skips_done_and_reports_bad_files(
    cli, translator_file, segmenter_file, cam623, tmp_path
):
    from tfsky.predict.segment import TiledSegmenter

    missing = tmp_path / "missing.jpg"
    result = cli("translate", "--model", translator_file, cam623 / CLEAR, missing, "--out", tmp_path / "out",
                 "--composite", "--segmenter", segmenter_file)
    assert result.exit_code == 1
    assert f"failed {missing}: file not found" in result.stderr
    stem = Path(CLEAR).stem
    translated = read_image(tmp_path / "out" / f"{stem}_translated.png")
    out = read_image(tmp_path / "out" / f"{stem}_composite.png")
    source = read_image(cam623 / CLEAR)
    assert translated.shape == out.shape == source.shape
    ground = TiledSegmenter.load(segmenter_file).probabilities(source)[..., 0] < 0.5
    assert 0.1 < ground.mean() < 0.9
    np.testing.assert_array_equal(out[ground], source[ground])
    again = cli("translate", "--model", translator_file, cam623 / CLEAR, "--out", tmp_path / "out",
                "--composite", "--segmenter", segmenter_file)
    assert again.exit_code == 0 and "done 0, skipped 1, failed 0" in again.stderr


def test_translate_refuses_a_segmenter_model(cli, segmenter_file, cam623, tmp_path):
    result = cli("translate", "--model", segmenter_file, cam623 / CLEAR, "--out", tmp_path)
    assert result.exit_code == 1
    assert result.stderr.strip() == f"Error: {segmenter_file}: is a segmenter model, not a weather translator (pix2pix or vae)"


def test_evaluate_translator_report_baselines_and_contact_sheet(cli, translator_file, cam623, shared_data, tmp_path):
    mask = str(shared_data / "skyfinder_webcams" / "623-mask.png")
    pairs = [Pair("623", "val", str(cam623 / CLEAR), str(cam623 / OVERCAST), mask, 1.0),
             Pair("623", "train", str(cam623 / "20121119_134153.jpg"), str(cam623 / OVERCAST), mask, 1.0)]
    write_pairs(PairSet(pairs, {}), PairsConfig(), tmp_path / "pairs.json")
    result = cli("evaluate", "translator", "--model", translator_file, "--pairs", tmp_path / "pairs.json",
                 "--out", tmp_path / "eval")
    assert result.exit_code == 0, result.stderr
    report = json.loads((tmp_path / "eval" / "translator_eval.json").read_text())
    assert report["split"] == "val" and report["pairs"] == 1
    means = report["means"]
    assert set(means) == {"model", "model (sky composite)", "identity", "mean target sky"}
    source, target = read_image(cam623 / CLEAR) / 255.0, read_image(cam623 / OVERCAST) / 255.0
    assert means["identity"]["psnr"] == pytest.approx(psnr(source, target), abs=1e-6)
    assert means["identity"]["nonsky_psnr"] == PSNR_CAP
    assert means["model (sky composite)"]["nonsky_psnr"] == PSNR_CAP
    assert means["mean target sky"]["nonsky_psnr"] == PSNR_CAP
    sheet = read_image(tmp_path / "eval" / "contact_sheet.png")
    assert sheet.shape == (180 + 4, 3 * 320 + 8, 3)
    assert "| identity |" in (tmp_path / "eval" / "translator_eval.md").read_text()
    empty = cli("evaluate", "translator", "--model", translator_file, "--pairs", tmp_path / "pairs.json",
                "--split", "test", "--out", tmp_path / "eval2")
    assert empty.exit_code == 1 and "no 'test' pairs" in empty.stderr


def test_mean_target_sky_baseline_is_the_mean_target_sky_colour(translator_file, cam623, shared_data, tmp_path):
    mask = str(shared_data / "skyfinder_webcams" / "623-mask.png")
    pairs = [Pair("623", "val", str(cam623 / CLEAR), str(cam623 / OVERCAST), mask, 1.0)]
    write_pairs(PairSet(pairs, {}), PairsConfig(), tmp_path / "pairs.json")
    report = evaluate_translator(translator_file, tmp_path / "pairs.json", tmp_path / "eval")
    target = read_image(cam623 / OVERCAST) / 255.0
    sky = read_mask(mask) > 0
    baseline = np.where(sky[..., None], target[sky].mean(axis=0), read_image(cam623 / CLEAR) / 255.0)
    assert report.means["mean target sky"]["psnr"] == pytest.approx(psnr(baseline, target), abs=1e-3)


def test_composite_from_a_softmax_segmenter_uses_its_sky_channel_and_stale_temps_are_removed(
    translator_file, tmp_path
):
    from tfsky.predict.translate import CompositeOptions, translate_images

    inputs = tf.keras.Input((None, None, 3))  # softmax over [not sky, sky]; sky = blue-ish pixels
    conv = tf.keras.layers.Conv2D(2, 1)
    model = tf.keras.Model(inputs, tf.keras.layers.Activation("softmax")(conv(inputs)))
    sky_logit = np.array([-40.0, 0.0, 40.0], np.float32)
    conv.set_weights([np.stack([-sky_logit, sky_logit], -1).reshape(1, 1, 3, 2), np.array([2.0, -2.0], np.float32)])
    segmenter = tmp_path / "softmax.keras"
    save_model(model, segmenter, ModelInfo(task="segmenter", preprocess=Preprocess(), tile_size=64, classes=2))
    source = np.zeros((64, 96, 3), np.uint8)
    source[:32] = (40, 90, 220)  # sky
    source[32:] = (200, 60, 30)  # ground
    frame = tmp_path / "frame.png"
    tf.io.write_file(str(frame), tf.io.encode_png(source))
    out = tmp_path / "out"
    out.mkdir()
    stale = out / ".frame_composite.killed.part.png"
    stale.write_bytes(b"half a png")
    options = CompositeOptions(segmenter=segmenter, feather=0)
    report = translate_images(translator_file, [frame], out, composite_with=options)
    assert report.done == [frame] and not stale.exists()
    translated = np.round(read_image(out / "frame_translated.png").astype(np.float32))
    shown = read_image(out / "frame_composite.png")
    np.testing.assert_array_equal(shown[32:], source[32:])  # the ground is kept bit for bit
    np.testing.assert_array_equal(shown[:32], translated[:32].astype(np.uint8))  # the sky is the translation
    assert not np.array_equal(shown[:32], source[:32])
