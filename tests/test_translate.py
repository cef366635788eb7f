"""Full-resolution tiled translation, sky-only composites and the translator evaluation, on real cam 623 frames."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from tfsky.data.pairs import Pair, PairDataConfig, write_pairs, PairSet, PairsConfig
from tfsky.data.transforms import Preprocess, from_model_range, to_model_range
from tfsky.config import to_dict
from tfsky.errors import ConfigError
from tfsky.evaluate.translator import PSNR_CAP, evaluate_translator, psnr
from tfsky.io.images import read_image, read_mask
from tfsky.io.writers import write_png
from tfsky.models.bundle import ModelInfo, save_model
from tfsky.models.pix2pix import Pix2PixConfig, build_unet_generator
from tfsky.predict.translate import TiledTranslator, composite, feathered_sky_weight, to_uint8
from tfsky.tiling import TilingConfig
from tfsky.train.config import TranslatorConfig, TranslatorModelConfig

DEPTH = 3
CLEAR = "20121024_124151.jpg"
OVERCAST = "20130228_211148.jpg"


@pytest.fixture(scope="module")
def translator_file(tmp_path_factory) -> Path:
    """A tiny untrained U-Net generator saved as a tfsky translator (tile 64, depth 3)."""
    tf.keras.utils.set_random_seed(0)
    generator = build_unet_generator(Pix2PixConfig(depth=DEPTH, base_filters=4, max_filters=8))
    path = tmp_path_factory.mktemp("model") / "best.keras"
    trained = TranslatorConfig(
        "tiny",
        data=PairDataConfig(load_size=None, crop_size=64),  # native scale
        model=TranslatorModelConfig(pix2pix=Pix2PixConfig(depth=DEPTH)),
    )
    info = ModelInfo(task="pix2pix", preprocess=Preprocess(), tile_size=64, classes=3, config=to_dict(trained))
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
    image = read_image(cam623 / CLEAR)  # 1280 x 720: 27 x 15 tiles of the training tile (64)
    done = []
    out = TiledTranslator.load(translator_file, TilingConfig(tile=None)).translate(
        image, progress=lambda d, t: done.append((d, t))
    )
    assert out.shape == (720, 1280, 3) and out.dtype == np.float32
    assert 0 <= out.min() and out.max() <= 1
    assert done[-1][0] == done[-1][1] > 100
    auto = []  # tile auto at the default budget: 632 px (this model takes multiples of 8): 3 x 2 tiles, not hundreds
    TiledTranslator.load(translator_file).translate(image, progress=lambda d, t: auto.append((d, t)))
    assert auto[-1] == (6, 6)


def test_a_model_trained_downscaled_runs_at_its_training_scale(translator_file, tmp_path):
    import cv2

    from tfsky.models.bundle import load_model

    model, info = load_model(translator_file)
    info.config["data"] = {"load_size": 64, "crop_size": 64}
    image = np.random.default_rng(1).integers(0, 256, (128, 256, 3), dtype=np.uint8)
    small = cv2.resize(image, (128, 64), interpolation=cv2.INTER_AREA)
    expected = cv2.resize(
        TiledTranslator(model, info, native_scale=True).translate(small), (256, 128), interpolation=cv2.INTER_LINEAR
    )
    np.testing.assert_allclose(TiledTranslator(model, info).translate(image), np.clip(expected, 0, 1), atol=1e-6)
    native = TiledTranslator(model, info, native_scale=True).translate(image)
    assert native.shape == (128, 256, 3) and not np.allclose(native, expected, atol=1e-2)


def test_tile_must_fit_the_network(translator_file):
    expected = "config key 'tiling.tile': must be a multiple of 8 for this pix2pix model; got 60"
    with pytest.raises(ConfigError, match=expected):
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
    result = cli(
        "translate",
        "--model",
        translator_file,
        cam623 / CLEAR,
        missing,
        "--out",
        tmp_path / "out",
        "--composite",
        "--segmenter",
        segmenter_file,
    )
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
    again = cli(
        "translate",
        "--model",
        translator_file,
        cam623 / CLEAR,
        "--out",
        tmp_path / "out",
        "--composite",
        "--segmenter",
        segmenter_file,
    )
    assert again.exit_code == 0 and "done 0, skipped 1, failed 0" in again.stdout


def test_translate_refuses_a_segmenter_model(cli, segmenter_file, cam623, tmp_path):
    result = cli("translate", "--model", segmenter_file, cam623 / CLEAR, "--out", tmp_path)
    assert result.exit_code == 1
    assert result.stderr.strip() == (
        f"Error: {segmenter_file}: is a segmenter model, not a weather translator (pix2pix or vae)"
    )


def test_evaluate_translator_report_baselines_and_contact_sheet(cli, translator_file, cam623, shared_data, tmp_path):
    mask = str(shared_data / "skyfinder_webcams" / "623-mask.png")
    pairs = [
        Pair("623", "val", str(cam623 / CLEAR), str(cam623 / OVERCAST), mask, 1.0),
        Pair("623", "train", str(cam623 / "20121119_134153.jpg"), str(cam623 / OVERCAST), mask, 1.0),
    ]
    write_pairs(PairSet(pairs, {}), PairsConfig(), tmp_path / "pairs.json")
    result = cli(
        "evaluate",
        "translator",
        "--model",
        translator_file,
        "--pairs",
        tmp_path / "pairs.json",
        "--out",
        tmp_path / "eval",
        "--tta",
        "flip2",
    )
    assert result.exit_code == 0, result.stderr
    report = json.loads((tmp_path / "eval" / "translator_eval.json").read_text())
    assert report["split"] == "val" and report["counts"] == {"evaluated": 1, "skipped": 0} and report["skipped"] == []
    assert report["tiling"]["tta"] == "flip2"
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
    empty = cli(
        "evaluate",
        "translator",
        "--model",
        translator_file,
        "--pairs",
        tmp_path / "pairs.json",
        "--split",
        "test",
        "--out",
        tmp_path / "eval2",
    )
    assert empty.exit_code == 1 and "no 'test' pairs" in empty.stderr


def test_mean_target_sky_baseline_is_the_mean_target_sky_colour(translator_file, cam623, shared_data, tmp_path):
    mask = str(shared_data / "skyfinder_webcams" / "623-mask.png")
    pairs = [Pair("623", "val", str(cam623 / CLEAR), str(cam623 / OVERCAST), mask, 1.0)]
    write_pairs(PairSet(pairs, {}), PairsConfig(), tmp_path / "pairs.json")
    report = evaluate_translator(translator_file, tmp_path / "pairs.json", tmp_path / "eval")
    assert report.means["mean target sky"]["psnr"] == pytest.approx(mean_sky_psnr(cam623, mask), abs=1e-3)


def mean_sky_psnr(cam623: Path, mask: str) -> float:
    """PSNR against OVERCAST of CLEAR with its sky painted in OVERCAST's mean sky colour."""
    target = read_image(cam623 / OVERCAST) / 255.0
    sky = read_mask(mask) > 0
    baseline = np.where(sky[..., None], target[sky].mean(axis=0), read_image(cam623 / CLEAR) / 255.0)
    return psnr(baseline, target)


def test_composite_from_a_softmax_segmenter_uses_its_sky_channel_and_stale_temps_are_removed(translator_file, tmp_path):
    from tfsky.predict.translate import CompositeConfig, TranslateConfig, translate_images

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
    config = TranslateConfig(composite=CompositeConfig(enabled=True, segmenter=segmenter, feather=0))
    report = translate_images(translator_file, [frame], out, config)
    assert report.done == [frame] and not stale.exists()
    translated = np.round(read_image(out / "frame_translated.png").astype(np.float32))
    shown = read_image(out / "frame_composite.png")
    np.testing.assert_array_equal(shown[32:], source[32:])  # the ground is kept bit for bit
    np.testing.assert_array_equal(shown[:32], translated[:32].astype(np.uint8))  # the sky is the translation
    assert not np.array_equal(shown[:32], source[:32])


def small_frame(path: Path) -> np.ndarray:
    """A random 112 x 112 RGB frame written to ``path``: with tile 64 and overlap 0.25 the tiles start at 0 and
    48 on both axes, a grid that is its own mirror image."""
    image = np.random.default_rng(2).integers(0, 256, (112, 112, 3), dtype=np.uint8)
    write_png(path, image)
    return image


@pytest.mark.parametrize("tta, flipped_axes", [("flip2", [(), (1,)]), ("flip4", [(), (1,), (0,), (0, 1)])])
def test_flip_tta_is_the_mean_of_the_translated_flips_flipped_back(translator_file, tmp_path, tta, flipped_axes):
    image = small_frame(tmp_path / "frame.png")
    plain = TiledTranslator.load(translator_file, TilingConfig(tile=64))
    expected = np.mean([np.flip(plain.translate(np.flip(image, axes)), axes) for axes in flipped_axes], axis=0)
    out = TiledTranslator.load(translator_file, TilingConfig(tile=64, tta=tta)).translate(image)
    np.testing.assert_allclose(out, expected, atol=1e-5)
    assert np.abs(out - plain.translate(image)).max() > 1e-3  # the untrained network is not mirror-symmetric


def test_translate_reads_its_config_section_then_set_then_flags(cli, translator_file, tmp_path):
    image = small_frame(tmp_path / "frame.png")
    sky = np.zeros((112, 112), np.uint8)
    sky[:56] = 255
    write_png(tmp_path / "mask.png", sky)
    config = tmp_path / "translate.yaml"
    config.write_text(
        "translate:\n  tiling: {tile: 60, overlap: 0.5, tta: flip4}\n"
        f"  composite: {{enabled: true, mask: {tmp_path / 'mask.png'}, feather: 0}}\n"
    )
    run = ("translate", "-m", translator_file, tmp_path / "frame.png", "-o", tmp_path / "out", "-c", config, "-q")
    from_file = cli(*run)
    assert from_file.exit_code == 1
    assert from_file.stderr.strip() == (
        "Error: config key 'tiling.tile': must be a multiple of 8 for this pix2pix model; got 60"
    )
    assert "got 52" in cli(*run, "--set", "translate.tiling.tile=52").stderr  # --set beats the file
    result = cli(*run, "--set", "translate.tiling.tile=52", "--set", "translate.tiling.tta=flip2", "--tile", "64")
    assert result.exit_code == 0, result.stderr  # the flag beats --set
    translated = read_image(tmp_path / "out" / "frame_translated.png")
    chosen = TilingConfig(tile=64, overlap=0.5, tta="flip2")
    np.testing.assert_array_equal(translated, to_uint8(TiledTranslator.load(translator_file, chosen).translate(image)))
    for other in (dataclasses.replace(chosen, tta="flip4"), dataclasses.replace(chosen, overlap=0.25)):
        assert not np.array_equal(translated, to_uint8(TiledTranslator.load(translator_file, other).translate(image)))
    shown = read_image(tmp_path / "out" / "frame_composite.png")  # composite settings from the file
    np.testing.assert_array_equal(shown[56:], image[56:])
    np.testing.assert_array_equal(shown[:56], translated[:56])
    plain = cli(*run[:-4], tmp_path / "plain", "-c", config, "--tile", "64", "--no-composite")
    assert plain.exit_code == 0, plain.stderr
    assert sorted(p.name for p in (tmp_path / "plain").iterdir()) == ["frame_translated.png"]


def test_translate_config_errors_name_the_dotted_key(cli, translator_file, tmp_path):
    write_png(tmp_path / "frame.png", np.zeros((64, 64, 3), np.uint8))
    config = tmp_path / "translate.yaml"
    config.write_text("translate:\n  tiling: {tile_size: 64}\n")
    run = ("translate", "-m", translator_file, tmp_path / "frame.png", "-o", tmp_path / "out")
    unknown = cli(*run, "-c", config)
    assert unknown.exit_code == 1
    assert unknown.stderr.strip() == (
        "Error: config key 'translate.tiling.tile_size': unknown key "
        "(known keys here: memory_budget, overlap, resolution, tile, tile_batch, tta, window, working_factor)"
    )
    bad_tta = cli(*run, "--tta", "flip3")
    assert bad_tta.stderr.strip() == (
        "Error: config key 'translate.tiling.tta': must be one of none, flip2, flip4, rot4, rot8; got 'flip3'"
    )
    no_sky = cli(*run, "--composite")
    assert no_sky.exit_code == 1
    assert no_sky.stderr.strip() == (
        "Error: config key 'translate.composite': needs a sky source: composite.mask or "
        "composite.segmenter (--mask CAMERA_MASK or --segmenter MODEL)"
    )
    assert not (tmp_path / "out").exists()


def test_evaluate_translator_skips_and_reports_bad_frames(cli, translator_file, cam623, shared_data, tmp_path):
    mask = str(shared_data / "skyfinder_webcams" / "623-mask.png")
    empty, truncated = tmp_path / "empty.jpg", tmp_path / "truncated.jpg"
    empty.touch()
    whole = (cam623 / CLEAR).read_bytes()
    truncated.write_bytes(whole[: len(whole) // 2])
    good = Pair("623", "val", str(cam623 / CLEAR), str(cam623 / OVERCAST), mask, 1.0)
    pairs = [
        good,
        dataclasses.replace(good, target=str(empty)),
        dataclasses.replace(good, source=str(truncated)),
        dataclasses.replace(good, split="train", target=str(empty)),
    ]  # a bad train pair: no baseline colour
    write_pairs(PairSet(pairs, {}), PairsConfig(), tmp_path / "pairs.json")
    result = cli(
        "evaluate",
        "translator",
        "--model",
        translator_file,
        "--pairs",
        tmp_path / "pairs.json",
        "--out",
        tmp_path / "eval",
        "-q",
    )
    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    assert lines[0] == f"skipped {cam623 / CLEAR} -> {empty}: {empty}: file is empty (0 bytes)"
    assert lines[1].startswith(f"skipped {truncated} -> {cam623 / OVERCAST}: {truncated}: truncated or corrupt image")
    assert len(lines) == 2
    assert result.stdout.strip().startswith("evaluated 1 pairs, skipped 2; wrote ")
    report = json.loads((tmp_path / "eval" / "translator_eval.json").read_text())
    assert report["counts"] == {"evaluated": 1, "skipped": 2}
    assert [(s["source"], s["target"]) for s in report["skipped"]] == [
        (good.source, str(empty)),
        (str(truncated), good.target),
    ]
    assert report["skipped"][0]["reason"] == f"{empty}: file is empty (0 bytes)"
    assert [p["target"] for p in report["per_pair"]] == [good.target]
    source, target = read_image(cam623 / CLEAR) / 255.0, read_image(cam623 / OVERCAST) / 255.0
    assert report["means"]["identity"]["psnr"] == pytest.approx(psnr(source, target), abs=1e-6)
    # the only train pair is unreadable: the colour comes from the readable pair of the evaluated split
    assert report["means"]["mean target sky"]["psnr"] == pytest.approx(mean_sky_psnr(cam623, mask), abs=1e-3)
    markdown = (tmp_path / "eval" / "translator_eval.md").read_text()
    assert "1 'val' pairs evaluated, 2 skipped" in markdown
    assert f"| {good.source} | {empty} | {empty}: file is empty (0 bytes) |" in markdown


def test_evaluate_translator_with_no_readable_pair_is_one_line_error(cli, translator_file, cam623, tmp_path):
    empty = tmp_path / "empty.jpg"
    empty.touch()
    write_pairs(
        PairSet([Pair("623", "val", str(cam623 / CLEAR), str(empty), None, 1.0)], {}),
        PairsConfig(),
        tmp_path / "pairs.json",
    )
    result = cli(
        "evaluate",
        "translator",
        "--model",
        translator_file,
        "--pairs",
        tmp_path / "pairs.json",
        "--out",
        tmp_path / "eval",
        "-q",
    )
    assert result.exit_code == 1
    assert result.stderr.strip() == (
        f"Error: {tmp_path / 'pairs.json'}: no 'val' pair could be evaluated "
        f"(1 skipped: {empty}: file is empty (0 bytes))"
    )
    assert not (tmp_path / "eval").exists()
