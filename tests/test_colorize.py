"""Colorization (``model.kind: colorize``): Lab conversion vs OpenCV on real photos, the split by source, a
tiny real training run with resume, ``tfsky colorize`` on bad inputs, the chroma gate (fit, grey output in
every path, old sidecars), the evaluation and the serving export."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import tensorflow as tf

from tfsky.config import load_config
from tfsky.data.colour import ColourSourcesConfig, colour_split, lab_to_rgb, rgb_to_lab
from tfsky.data.config import SourceConfig
from tfsky.errors import ConfigError
from tfsky.evaluate.colorize import colourfulness
from tfsky.io.images import read_image
from tfsky.models.bundle import load_info, load_model
from tfsky.models.colorize import rebalance_weights, upsample_hints
from tfsky.train.chroma_gate import best_gate_threshold
from tfsky.train.config import TranslatorConfig
from tfsky.train.runner import read_history
from tfsky.train.translator import train_translator

REPO = Path(__file__).resolve().parents[1]


def real_photos(shared_data: Path) -> list[Path]:
    """Three real photos from three collections (weather, street, webcam)."""
    return [
        sorted((shared_data / "weather_mwd" / "sunrise").iterdir())[0],
        sorted((shared_data / "sky_cityscapes" / "images").iterdir())[0],
        sorted((shared_data / "skyfinder_webcams" / "623").glob("*.jpg"))[0],
    ]


def test_lab_matches_scikit_image_and_opencv_and_round_trips_on_real_photos(shared_data):
    from skimage import color as skimage_color  # a dev dependency: this test must run, never skip

    for path in real_photos(shared_data):
        rgb = read_image(path).astype(np.float32) / 255
        ours = rgb_to_lab(rgb).numpy()
        exact = skimage_color.rgb2lab(rgb.astype(np.float64))  # float64 CIE formulas (white 0.95047, 1, 1.08883)
        assert np.abs(ours - exact).max() < 0.01, path
        opencv = np.abs(ours - cv2.cvtColor(rgb, cv2.COLOR_RGB2Lab))  # OpenCV's float path tabulates the curves
        assert opencv.max() < 0.5 and opencv.mean() < 0.1, path
        assert np.abs(lab_to_rgb(ours).numpy() - rgb).max() < 1e-4, path
        assert np.abs(lab_to_rgb(exact).numpy() - skimage_color.lab2rgb(exact)).max() < 1e-3, path


def test_upsampled_hints_are_the_full_resize_cropped():
    coarse = np.random.default_rng(0).random((1, 8, 8, 2), np.float32)
    full = cv2.resize(coarse[0], (40, 32), interpolation=cv2.INTER_LINEAR)
    whole = upsample_hints(coarse, tf.constant([[0, 0, 1, 1.0]]), (32, 40)).numpy()[0]
    crop = upsample_hints(coarse, tf.constant([[8 / 32, 10 / 40, 24 / 32, 30 / 40]]), (16, 20)).numpy()[0]
    np.testing.assert_allclose(whole, full, atol=1e-5)
    np.testing.assert_allclose(crop, full[8:24, 10:30], atol=1e-5)


def test_rebalance_weights_favour_rare_bins_with_mean_one():
    prior = np.array([0.7, 0.2, 0.1, 0.0], np.float32)
    weights = rebalance_weights(prior, 0.5)
    assert np.isclose(np.sum(prior * weights), 1.0)
    assert weights[0] < weights[1] < weights[2] < weights[3]


def test_log_l2_loss_weighs_every_image_as_its_psnr_does():
    from tfsky.data.colour import AB_SCALE
    from tfsky.models.colorize import pixel_loss

    truth = np.zeros((2, 8, 8, 2), np.float32)

    def output(ab_errors):  # image i off by ab_errors[i] ab units everywhere
        return truth + np.array(ab_errors, np.float32)[:, None, None, None] / AB_SCALE

    floor = (1 / AB_SCALE) ** 2
    expected = np.mean([np.log((2 / AB_SCALE) ** 2 + floor), np.log(floor)])
    assert float(pixel_loss(truth, output([2, 0]), "log_l2")) == pytest.approx(expected, rel=1e-5)

    def gains(loss):  # what halving the error of a nearly grey image / of a badly wrong one gains
        base = float(pixel_loss(truth, output([4, 40]), loss))
        return base - float(pixel_loss(truth, output([2, 40]), loss)), base - float(
            pixel_loss(truth, output([4, 20]), loss)
        )

    near, far = gains("log_l2")
    assert near > 0.5 and far == pytest.approx(near, rel=0.2)  # about equal, as the mean PSNR sees them
    near, far = gains("l2")
    assert far > 50 * near  # plain L2 hardly sees the nearly grey image


def test_gate_fit_picks_the_threshold_of_the_best_mean_psnr():
    chroma = np.array([5.0, 1.0, 9.0, 3.0, 7.0])
    model = np.array([24.0, 20.0, 30.0, 21.0, 26.0])
    grey = np.array([25.0, 33.0, 22.0, 31.0, 25.5])  # grey wins below 4 (+13, +10), and on 5 by only +1
    gated = lambda gate: np.where(chroma < gate, grey, model).mean()  # noqa: E731
    # gating the three lowest (gate 6) gains 1 dB more on image 5 than gating two (gate 4)
    assert best_gate_threshold(chroma, model, grey) == 6.0
    assert gated(6.0) == max(gated(t) for t in (0, 2, 4, 6, 8, 10))
    model[0] = 26.0  # now image 5 loses 1 dB when gated: the midpoint below it wins
    assert best_gate_threshold(chroma, model, grey) == 4.0
    assert best_gate_threshold(chroma, model, model - 1) is None  # grey never better: no gate
    assert best_gate_threshold(chroma, model, model) is None  # a tie is no reason to gate
    assert best_gate_threshold(chroma, model, model + 1) == 10.0  # grey always better: above the largest


def test_colourfulness_of_grey_is_zero_and_grows_with_saturation():
    grey = np.full((8, 8, 3), 0.5, np.float32)
    red = grey.copy()
    red[..., 0] = 0.9
    assert colourfulness(grey) == 0
    assert colourfulness(red) > 30


def test_split_keeps_each_webcam_whole_and_holds_named_sources_out(shared_data):
    cameras = SourceConfig(kind="camera_folder", images=shared_data / "skyfinder_webcams", name="skyfinder")
    split = colour_split(ColourSourcesConfig(sources=[cameras], val_fraction=0.25))
    camera_of = lambda paths: {p.parent.name for p in paths}  # noqa: E731
    assert split["val"] and split["train"] and not camera_of(split["val"]) & camera_of(split["train"])
    held = colour_split(ColourSourcesConfig(sources=[cameras], val_sources=["skyfinder"]))
    assert not held["train"] and len(held["val"]) == 40
    with pytest.raises(ConfigError, match="no source named 'nope'"):
        colour_split(ColourSourcesConfig(sources=[cameras], val_sources=["nope"]))


def tiny_config(shared_data: Path, tmp_path: Path, *extra: str) -> TranslatorConfig:
    return load_config(
        TranslatorConfig,
        REPO / "configs" / "colorize_tiny.yaml",
        [
            f"colour.sources=[{{kind: camera_folder, images: {shared_data / 'skyfinder_webcams'}, name: skyfinder}}]",
            f"train.runs_root={tmp_path / 'runs'}",
            *extra,
        ],
    )


@pytest.fixture(scope="module")
def colorizer_file(shared_data, tmp_path_factory) -> Path:
    """A tiny colorizer trained for 2 epochs on the real SkyFinder frames, its chroma gate fitted (about 40 s)."""
    tmp_path = tmp_path_factory.mktemp("colorizer")
    result = train_translator(tiny_config(shared_data, tmp_path), verbose=0)
    return result.run_dir / "best.keras"


def model_copy(model: Path, folder: Path, **sidecar) -> Path:
    """``model`` and its sidecar copied into ``folder``, sidecar keys set (a value of ... deletes the key)."""
    folder.mkdir(parents=True, exist_ok=True)
    copy = Path(shutil.copy(model, folder / model.name))
    info = json.loads(model.with_suffix(".json").read_text())
    for key, value in sidecar.items():
        if value is ...:
            del info[key]
        else:
            info[key] = value
    copy.with_suffix(".json").write_text(json.dumps(info))
    return copy


def webcam_frame(shared_data: Path) -> np.ndarray:
    return read_image(sorted((shared_data / "skyfinder_webcams" / "623").glob("*.jpg"))[0])


def lab_of_uint8(image: np.ndarray) -> np.ndarray:
    return rgb_to_lab(image / np.float32(255)).numpy()


def assert_grey_with_the_same_lightness(out: np.ndarray, source: np.ndarray) -> None:
    out_lab = lab_of_uint8(out)
    assert np.abs(out_lab[..., 1:]).max() < 0.5  # a = b = 0 up to the 8-bit rounding of R = G = B
    assert np.abs(out_lab[..., 0] - lab_of_uint8(source)[..., 0]).max() < 0.5  # L kept, to 8-bit rounding


def test_below_the_gate_a_frame_comes_out_grey_and_skips_the_refinement(colorizer_file, shared_data, tmp_path):
    from tfsky.predict.colorize import TiledColorizer

    source = webcam_frame(shared_data)[:120, :200]
    gated = TiledColorizer.load(model_copy(colorizer_file, tmp_path / "gated", chroma_gate=1e6))
    gated.predict_tiles = None  # the refinement must not run at all
    frame = gated.colorize_frame(source)
    assert frame.gated and frame.chroma < 1e6
    assert_grey_with_the_same_lightness(frame.rgb, source)
    ungated = TiledColorizer.load(colorizer_file).colorize_frame(source, gate=False)
    assert not ungated.gated and ungated.chroma == pytest.approx(frame.chroma, abs=1e-4)
    assert np.abs(lab_of_uint8(ungated.rgb)[..., 1:]).max() > 2  # the model does colour it


def test_an_old_sidecar_without_the_gate_loads_and_is_not_gated(colorizer_file, shared_data, tmp_path):
    from tfsky.predict.colorize import TiledColorizer

    old = model_copy(colorizer_file, tmp_path / "old", chroma_gate=...)
    assert "chroma_gate" not in json.loads(old.with_suffix(".json").read_text())
    assert load_info(old).chroma_gate is None
    source = webcam_frame(shared_data)[:120, :200]
    colorizer = TiledColorizer.load(old)
    frame = colorizer.colorize_frame(source)
    assert not frame.gated
    np.testing.assert_array_equal(frame.rgb, colorizer.colorize_frame(source, gate=False).rgb)
    assert np.abs(lab_of_uint8(frame.rgb)[..., 1:]).max() > 2


def test_training_fits_the_gate_unless_the_config_switch_is_off(colorizer_file, shared_data, tmp_path):
    gate = load_info(colorizer_file).chroma_gate
    assert isinstance(gate, float) and gate > 0  # fitted at the end of training
    cfg = tiny_config(shared_data, tmp_path, "train.epochs=1", "model.colorize.chroma_gate=false")
    result = train_translator(cfg, verbose=0)
    sidecar = json.loads((result.run_dir / "best.json").read_text())
    assert sidecar["chroma_gate"] is None and sidecar["config"]["model"]["colorize"]["chroma_gate"] is False


def test_training_writes_the_run_folder_and_resumes(colorizer_file, shared_data):
    run_dir = colorizer_file.parent
    info = load_info(colorizer_file, kind="colorizer")
    assert (info.task, info.in_channels, info.classes) == ("colorize", 1, 2)
    assert [row["epoch"] for row in read_history(run_dir / "history.csv")] == [1, 2]
    assert {"val_ab_l1", "val_coarse", "val_refined"} <= set(read_history(run_dir / "history.csv")[0])
    assert (run_dir / "learning_curves.png").is_file() and any((run_dir / "tensorboard" / "images").iterdir())
    cfg = tiny_config(
        shared_data,
        run_dir.parents[1].parent,
        "train.epochs=3",
        "model.colorize.schedule=staged",
        "model.colorize.coarse_epochs=2",
    )
    resumed = train_translator(cfg, resume=True, verbose=0)
    assert resumed.resumed and resumed.run_dir == run_dir
    assert [row["epoch"] for row in read_history(run_dir / "history.csv")] == [1, 2, 3]


def test_colorize_keeps_lightness_and_size_and_resumes(cli, colorizer_file, shared_data, tmp_path):
    frame = sorted((shared_data / "skyfinder_webcams" / "623").glob("*.jpg"))[0]
    result = cli("colorize", "--model", colorizer_file, frame, "--out", tmp_path / "out", "--quiet")
    assert result.exit_code == 0, result.output
    out = read_image(tmp_path / "out" / f"{frame.stem}_colour.png")
    source = read_image(frame)
    assert out.shape == source.shape
    lightness = lambda image: rgb_to_lab(image / np.float32(255)).numpy()[..., 0]  # noqa: E731
    in_gamut = np.all((out > 0) & (out < 255), axis=-1)  # an out-of-gamut colour is clipped, which moves L
    assert in_gamut.mean() > 0.1
    assert np.abs(lightness(out) - lightness(source))[in_gamut].max() < 1.0  # L kept, to 8-bit rounding
    again = cli("colorize", "--model", colorizer_file, frame, "--out", tmp_path / "out")
    assert "done 0, skipped 1, failed 0" in again.output


def test_colorize_bad_inputs_one_line_each_and_the_batch_goes_on(cli, colorizer_file, shared_data, tmp_path):
    inputs = tmp_path / "in"
    inputs.mkdir()
    (inputs / "notes.png").write_text("not an image")
    cv2.imwrite(str(inputs / "one_pixel.png"), np.full((1, 1), 90, np.uint8))
    cv2.imwrite(str(inputs / "sixteen_bit.png"), (np.random.default_rng(0).random((20, 30)) * 65535).astype(np.uint16))
    cv2.imwrite(str(inputs / "grey_rgb.png"), np.full((10, 70, 3), 120, np.uint8))
    hdr = sorted((shared_data / "hdr_polyhaven_1k").glob("*.hdr"))[0]
    (inputs / hdr.name).symlink_to(hdr)
    result = cli("colorize", "--model", colorizer_file, inputs, "--out", tmp_path / "out")
    assert result.exit_code == 1
    failed = [line for line in result.output.splitlines() if line.startswith("failed ")]
    assert len(failed) == 2
    assert any("notes.png" in line and "not a .png image" in line for line in failed)
    assert any(hdr.name in line and "tone-map" in line for line in failed)
    assert "done 3, skipped 0, failed 2" in result.output
    assert read_image(tmp_path / "out" / "one_pixel_colour.png").shape == (1, 1, 3)
    assert read_image(tmp_path / "out" / "sixteen_bit_colour.png").shape == (20, 30, 3)


def test_a_segmenter_command_refuses_a_colorizer_in_one_line(cli, colorizer_file, tmp_path):
    result = cli("translate", "--model", colorizer_file, colorizer_file, "--out", tmp_path / "out")
    assert result.exit_code == 1
    assert result.output.strip().splitlines()[-1].startswith("Error: ")
    assert "is a colorize model, not a weather translator" in result.output


def test_evaluate_translator_on_a_colorizer_fits_the_gate_and_reports_both_rows(cli, colorizer_file, tmp_path):
    model = model_copy(colorizer_file, tmp_path / "model", chroma_gate=...)
    shutil.copy(colorizer_file.parent / "history.csv", model.parent)
    result = cli("evaluate", "translator", "--model", model, "--fit-gate", "--out", tmp_path / "eval", "--quiet")
    assert result.exit_code == 0, result.output
    gate = load_info(model).chroma_gate
    assert gate == load_info(colorizer_file).chroma_gate  # the same fit as at the end of training
    assert f"chroma gate {gate:.2f}, fitted on 30 training images" in result.output
    report = json.loads((tmp_path / "eval" / "colorize_eval.json").read_text())
    assert set(report["means"]) == {"model", "model (no gate)", "grey", "mean ab", "nearest colour"}
    assert report["means"]["grey"]["colourfulness"] < 1  # ab = 0 is grey (up to the 8-bit round trip)
    assert report["means"]["nearest colour"]["colourfulness"] > report["means"]["grey"]["colourfulness"]
    assert report["counts"]["evaluated"] == len(report["per_image"]) > 0
    assert report["chroma_gate"]["threshold"] == gate
    assert report["counts"]["gated"] == sum(entry["gated"] for entry in report["per_image"])
    assert sum(folder["gated"] for folder in report["chroma_gate"]["by_folder"].values()) == report["counts"]["gated"]
    for entry in report["per_image"]:
        metrics = entry["metrics"]
        assert entry["gated"] == (entry["chroma"] < gate)
        if entry["gated"]:
            assert metrics["model"]["psnr"] == pytest.approx(metrics["grey"]["psnr"], abs=0.1)
            assert metrics["model"]["colourfulness"] < 1
        else:
            assert metrics["model"] == metrics["model (no gate)"]
    for name in ("contact_sheet.png", "psnr_distribution.png", "learning_curves.png", "colorize_eval.md"):
        assert (tmp_path / "eval" / name).is_file(), name
    assert "Chroma gate" in (tmp_path / "eval" / "colorize_eval.md").read_text()
    rows = read_image(tmp_path / "eval" / "contact_sheet.png")
    assert rows.shape[1] == 3 * 256 + 2 * 4


def test_evaluate_translator_without_pairs_for_a_pix2pix_is_one_line(cli, tmp_path):
    fake = tmp_path / "m.keras"
    fake.write_bytes(b"x")
    (tmp_path / "m.json").write_text(json.dumps({"task": "pix2pix", "preprocess": {}, "tile_size": 64}))
    result = cli("evaluate", "translator", "--model", fake)
    assert result.exit_code == 1
    assert "Error: config key '--pairs': is required for a pix2pix or vae translator" in result.output
    result = cli("evaluate", "translator", "--model", fake, "--fit-gate")
    assert result.exit_code == 1
    assert "Error: config key '--fit-gate': is for a colorizer (model.kind colorize) only" in result.output


def test_export_returns_png_bytes_at_the_input_size(colorizer_file, shared_data, tmp_path):
    from tfsky.export.savedmodel import export_model
    from tfsky.predict.colorize import TiledColorizer

    version = export_model(colorizer_file, tmp_path / "repo", "colorizer")
    module = tf.saved_model.load(str(version))
    frame = sorted((shared_data / "skyfinder_webcams" / "623").glob("*.jpg"))[0]
    grey = cv2.cvtColor(read_image(frame), cv2.COLOR_RGB2GRAY)[:100, :150]
    encoded = tf.io.encode_png(grey[..., None]).numpy()
    png = module.signatures["colorize_image"](image_bytes=tf.constant([encoded]))["png_bytes"][0]
    served = tf.io.decode_png(png).numpy()
    assert served.shape == (100, 150, 3)
    local = TiledColorizer.load(colorizer_file).colorize(np.repeat(grey[..., None], 3, axis=2))
    assert np.abs(served.astype(int) - local).mean() < 1.0


def test_export_outputs_grey_below_the_gate(colorizer_file, shared_data, tmp_path):
    from tfsky.export.savedmodel import export_model

    gated = model_copy(colorizer_file, tmp_path / "gated", chroma_gate=1e6)
    module = tf.saved_model.load(str(export_model(gated, tmp_path / "repo", "colorizer")))
    source = webcam_frame(shared_data)[:100, :150]
    png = module.signatures["colorize_image"](image_bytes=tf.constant([tf.io.encode_png(source).numpy()]))
    assert_grey_with_the_same_lightness(tf.io.decode_png(png["png_bytes"][0]).numpy(), source)


def test_colorize_config_errors_are_one_line(cli, tmp_path):
    result = cli(
        "train",
        "translator",
        "--config",
        REPO / "configs" / "colorize_tiny.yaml",
        "--set",
        "model.colorize.generator_size=30",
        "--set",
        f"train.runs_root={tmp_path}",
    )
    assert result.exit_code == 1
    assert result.output.strip() == (
        "Error: config key 'model.colorize.generator_size': must be a multiple of 16, >= 16; got 30"
    )


def test_patchgan_term_trains_with_its_own_discriminator(shared_data, tmp_path):
    cfg = tiny_config(
        shared_data,
        tmp_path,
        "train.epochs=1",
        "model.colorize.gan_weight=0.5",
        "model.colorize.loss=huber",
        "model.colorize.chroma_gate=false",
    )
    result = train_translator(cfg, verbose=0)
    row = read_history(result.run_dir / "history.csv")[0]
    assert row["gan"] > 0 and row["d_loss"] > 0 and row["val_gan"] > 0
    model, _ = load_model(result.run_dir / "best.keras", kind="colorizer")
    assert [layer.name for layer in model.layers if isinstance(layer, tf.keras.Model)] == ["generator", "refiner"]


def test_perceptual_term_needs_local_vgg_weights(cli, tmp_path):
    result = cli(
        "train",
        "translator",
        "--config",
        REPO / "configs" / "colorize_tiny.yaml",
        "--set",
        "model.colorize.perceptual_weight=1",
        "--set",
        f"train.runs_root={tmp_path}",
    )
    assert result.exit_code == 1
    assert "model.colorize.vgg_weights" in result.output and "local VGG19 weights file" in result.output
