"""`tfsky predict`: outputs and their sizes, folders and manifests, bad files (resume after kill -9: test_jobs)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from tfsky.data.masks import sky_mask
from tfsky.data.transforms import Preprocess
from tfsky.errors import InputError
from tfsky.io.images import read_image
from tfsky.io.writers import write_jpeg, write_png, write_tif
from tfsky.batch import collect_items
from tfsky.models.bundle import ModelInfo, save_model
from tfsky.predict.batch import PredictConfig, predict_many
from tfsky.predict.outputs import display_rgb, hdr_exposure
from tfsky.predict.segment import TiledSegmenter
from tfsky.tiling import AUTO_OVERLAP_PX, TilingConfig

SIZE = (101, 77)  # odd, and not a multiple of the 32-pixel tile


def tiny_segmenter(path: Path, mode: str = "ldr", channels: int = 3) -> Path:
    """A 2-layer sigmoid segmenter saved as a tfsky model with 32-pixel tiles."""
    tf.keras.utils.set_random_seed(0)
    inputs = tf.keras.Input((None, None, channels))
    hidden = tf.keras.layers.Conv2D(4, 3, padding="same", activation="relu")(inputs)
    logits = tf.keras.layers.Conv2D(1, 1, bias_initializer=tf.keras.initializers.Constant(-0.3))(hidden)
    outputs = tf.keras.layers.Activation("sigmoid", dtype="float32")(logits)
    info = ModelInfo(task="segmenter", preprocess=Preprocess(mode=mode), tile_size=32, in_channels=channels)
    save_model(tf.keras.Model(inputs, outputs), path, info)
    return path


@pytest.fixture(scope="module")
def ldr_model(tmp_path_factory) -> Path:
    return tiny_segmenter(tmp_path_factory.mktemp("models") / "ldr.keras")


@pytest.fixture(scope="module")
def hdr_model(tmp_path_factory) -> Path:
    return tiny_segmenter(tmp_path_factory.mktemp("models") / "hdr.keras", mode="log")


def ldr_image(seed: int = 0, size=SIZE) -> np.ndarray:
    rng = np.random.default_rng(seed)
    gradient = np.linspace(0, 255, size[0])[:, None, None] * np.ones(size + (3,))
    return np.clip(gradient + rng.normal(0, 20, size + (3,)), 0, 255).astype(np.uint8)


def hdr_image(seed: int = 0) -> np.ndarray:
    return (np.random.default_rng(seed).lognormal(0, 2, SIZE + (3,))).astype(np.float32)


def outputs_of(out: Path, stem: str, prob_suffix: str = ".png") -> list[Path]:
    return [
        out / f"{stem}_mask.png",
        out / f"{stem}_prob{prob_suffix}",
        out / f"{stem}_overlay.jpg",
        out / f"{stem}.json",
    ]


def visible_files(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file() and not p.name.startswith(".")}


def test_ldr_outputs_have_the_input_size_and_match_the_tiled_prediction(cli, ldr_model, tmp_path):
    png, jpg = tmp_path / "in" / "a.png", tmp_path / "in" / "b.jpg"
    write_png(png, ldr_image(0))
    write_jpeg(jpg, ldr_image(1))
    result = cli("predict", "--model", ldr_model, png, jpg, "--out", tmp_path / "out", "--quiet")
    assert result.exit_code == 0, result.stderr
    expected = TiledSegmenter.load(ldr_model).probabilities(read_image(png))[..., 0]
    mask, prob, overlay, sidecar = outputs_of(tmp_path / "out", "a")
    prob16 = read_image(prob, channels=None)[..., 0]
    assert prob16.dtype == np.uint16 and prob16.shape == SIZE
    np.testing.assert_allclose(prob16 / 65535, expected, atol=0.5 / 65535 + 1e-6)
    mask01 = read_image(mask, channels=None)[..., 0]
    assert mask01.dtype == np.uint8 and set(np.unique(mask01)) <= {0, 255}
    np.testing.assert_array_equal(mask01 == 255, expected >= 0.5)
    assert read_image(overlay).shape == SIZE + (3,)
    facts = json.loads(sidecar.read_text())
    # tile auto: one 128-px tile (the image's longer side rounded up to 32) and the overlap it would have
    assert (facts["height"], facts["width"], facts["tile"], facts["overlap"], facts["window"]) == (
        101,
        77,
        128,
        AUTO_OVERLAP_PX / 128,
        "ramp",
    )
    assert facts["tiles"] == 1 and facts["sky_fraction"] == pytest.approx((expected >= 0.5).mean())
    assert 0 < facts["sky_fraction"] < 1 and facts["model"]["id"].startswith("sha256-1MiB:")
    assert all(p.is_file() for p in outputs_of(tmp_path / "out", "b"))


def test_hdr_inputs_write_float_probabilities_and_a_tone_mapped_overlay(cli, hdr_model, tmp_path):
    import cv2

    tif, hdr = tmp_path / "sky.tif", tmp_path / "pano.hdr"
    write_tif(tif, hdr_image(0))
    assert cv2.imwrite(str(hdr), hdr_image(1)[..., ::-1])
    result = cli("predict", "-m", hdr_model, tif, hdr, "-o", tmp_path / "out", "--prob-format", "tif", "-q")
    assert result.exit_code == 0, result.stderr
    segmenter = TiledSegmenter.load(hdr_model)
    expected = segmenter.probabilities(segmenter.read(tif))[..., 0]  # HDR is kept in float16 model space
    np.testing.assert_allclose(expected, segmenter.probabilities(read_image(tif))[..., 0], atol=2e-3)
    mask, prob, overlay, _ = outputs_of(tmp_path / "out", "sky", ".tif")
    prob32 = read_image(prob, channels=None)[..., 0]
    assert prob32.dtype == np.float32 and prob32.shape == SIZE
    np.testing.assert_allclose(prob32, expected, atol=1e-6)
    shown = read_image(overlay)
    assert shown.shape == SIZE + (3,) and 20 < shown.mean() < 235  # tone-mapped, neither black nor blown out
    assert all(p.is_file() for p in outputs_of(tmp_path / "out", "pano", ".tif"))


def test_hdr_is_kept_in_float16_model_space_and_restored_for_display(hdr_model, tmp_path):
    write_tif(tmp_path / "sky.tif", hdr_image(0))
    segmenter = TiledSegmenter.load(hdr_model)
    prepared = segmenter.inputs.read(tmp_path / "sky.tif")
    assert prepared.dtype == np.float16
    np.testing.assert_allclose(segmenter.inputs.restore(prepared), hdr_image(0), rtol=2e-3, atol=1e-6)
    np.testing.assert_array_equal(segmenter.inputs.prepare(ldr_image()), ldr_image())  # LDR stays as read
    with_tta = TiledSegmenter.load(hdr_model, TilingConfig(tta="flip4"))  # tiles reach the model as tensors
    np.testing.assert_allclose(with_tta.probabilities(prepared), with_tta.probabilities(hdr_image(0)), atol=2e-3)


def test_reinhard_tone_mapping_of_a_uniform_image():
    grey = np.full((8, 8, 3), 37.0, np.float32)
    expected = (0.18 / 1.18) ** (1 / 2.2)  # exposure maps the log-average luminance to the key 0.18
    np.testing.assert_allclose(display_rgb(grey, hdr_exposure(grey)), expected, rtol=1e-4)


def test_folders_and_manifests_keep_sub_folders_and_skip_the_output_folder(cli, ldr_model, tmp_path):
    images = tmp_path / "images"
    for name in ("x.png", "cam1/x.png", "cam2/deep/y.jpg", ".hidden/z.png"):
        (images / name).parent.mkdir(parents=True, exist_ok=True)
        (write_png if name.endswith(".png") else write_jpeg)(images / name, ldr_image(size=(40, 50)))
    (images / "notes.md").write_text("not an image")
    listed = tmp_path / "lists" / "frames"
    listed.mkdir(parents=True)
    write_png(listed / "m.png", ldr_image(size=(40, 50)))
    manifest = tmp_path / "lists" / "todo.txt"
    manifest.write_text("# frames to do\nframes/m.png  # first\n\n../images/cam2/deep/y.jpg\n")
    out = images / "predictions"  # inside the input folder: its files must not become inputs on a re-run
    result = cli("predict", "-m", ldr_model, images, manifest, "-o", out, "-q")
    assert result.exit_code == 0, result.stderr  # a line leaving the manifest's folder writes by file name only
    stems = {"x", "cam1/x", "cam2/deep/y", "frames/m", "y"}
    assert visible_files(out) == {str(p.relative_to(out)) for s in stems for p in outputs_of(out, s)}
    rerun = cli("predict", "-m", ldr_model, images, "-o", out)
    assert rerun.exit_code == 0 and "done 0, skipped 3, failed 0" in rerun.stdout


def test_same_output_stem_from_two_inputs_fails_the_second(ldr_model, tmp_path):
    for folder in ("a", "b"):
        write_png(tmp_path / folder / "same.png", ldr_image(size=(40, 50)))
    jobs, failures = collect_items([tmp_path / "a" / "same.png", tmp_path / "b" / "same.png"], tmp_path / "out")
    assert [job.stem for job in jobs] == [Path("same")]
    assert failures == [(tmp_path / "b" / "same.png", f"writes the same outputs (same_*) as {tmp_path}/a/same.png")]


def test_a_corrupt_file_is_reported_in_one_line_and_the_job_goes_on(cli, ldr_model, tmp_path):
    write_png(tmp_path / "good.png", ldr_image())
    write_jpeg(tmp_path / "full.jpg", ldr_image())
    (tmp_path / "broken.jpg").write_bytes((tmp_path / "full.jpg").read_bytes()[:600])
    result = cli(
        "predict",
        "-m",
        ldr_model,
        tmp_path / "broken.jpg",
        tmp_path / "missing.png",
        tmp_path / "good.png",
        "-o",
        tmp_path / "out",
    )
    assert result.exit_code == 1
    failures = [line for line in result.stderr.splitlines() if line.startswith("failed")]
    assert failures == [
        f"failed {tmp_path}/broken.jpg: truncated or corrupt image (header: Truncated File Read)",
        f"failed {tmp_path}/missing.png: file not found",
    ]
    assert "done 1, skipped 0, failed 2" in result.stdout
    assert all(p.is_file() for p in outputs_of(tmp_path / "out", "good"))


def test_rerun_skips_complete_images_and_overwrite_redoes_them(cli, ldr_model, tmp_path):
    write_png(tmp_path / "a.png", ldr_image(0))
    write_png(tmp_path / "b.png", ldr_image(1))
    out = tmp_path / "out"
    assert cli("predict", "-m", ldr_model, tmp_path / "a.png", "-o", out, "-q").exit_code == 0
    sidecar = out / "a.json"
    first = sidecar.stat().st_mtime_ns
    (out / "a_mask.png").unlink()  # an incomplete image is redone
    rerun = cli("predict", "-m", ldr_model, tmp_path / "a.png", tmp_path / "b.png", "-o", out)
    assert "done 2, skipped 0, failed 0" in rerun.stdout
    rerun = cli("predict", "-m", ldr_model, tmp_path / "a.png", tmp_path / "b.png", "-o", out)
    assert "done 0, skipped 2, failed 0" in rerun.stdout
    again = sidecar.stat().st_mtime_ns
    forced = cli("predict", "-m", ldr_model, tmp_path / "a.png", tmp_path / "b.png", "-o", out, "--overwrite")
    assert "done 2, skipped 0, failed 0" in forced.stdout and sidecar.stat().st_mtime_ns > again > first


def test_config_section_is_read_and_flags_override_it(cli, ldr_model, tmp_path):
    write_png(tmp_path / "a.png", ldr_image())
    config = tmp_path / "predict.yaml"
    config.write_text("predict:\n  tiling: {tile: 96, window: hann, tta: flip2}\n  threshold: 0.9\n")
    result = cli("predict", "-m", ldr_model, tmp_path / "a.png", "-o", tmp_path / "out", "-c", config, "--tile", "64")
    assert result.exit_code == 0, result.stderr
    facts = json.loads((tmp_path / "out" / "a.json").read_text())
    assert (facts["tile"], facts["window"], facts["tta"], facts["threshold"]) == (64, "hann", "flip2", 0.9)
    bad = cli("predict", "-m", ldr_model, tmp_path / "a.png", "-o", tmp_path / "out", "--window", "box")
    assert bad.exit_code == 1
    assert bad.stderr.strip() == (
        "Error: config key 'predict.tiling.window': must be one of ramp, constant, gaussian, hann, spline; got 'box'"
    )


def test_drop_enclosed_leaves_the_sky_regions_inside_the_scene_out_of_mask_and_sidecar(cli, ldr_model, tmp_path):
    write_png(tmp_path / "a.png", ldr_image())
    result = cli("predict", "-m", ldr_model, tmp_path / "a.png", "-o", tmp_path / "out", "--drop-enclosed", "--quiet")
    assert result.exit_code == 0, result.stderr
    expected = TiledSegmenter.load(ldr_model).probabilities(read_image(tmp_path / "a.png"))[..., 0]
    whole, kept = sky_mask(expected, 0.5), sky_mask(expected, 0.5, drop_enclosed=True)
    assert (whole & ~kept).sum() > 0  # the random net calls enclosed specks sky: there is something to drop
    mask, _, _, sidecar = outputs_of(tmp_path / "out", "a")
    np.testing.assert_array_equal(read_image(mask, channels=None)[..., 0] == 255, kept)
    facts = json.loads(sidecar.read_text())
    assert facts["enclosed_sky_dropped"]["pixels"] == (whole & ~kept).sum()
    assert facts["sky_fraction"] == pytest.approx(kept.mean())
    config = tmp_path / "keep.yaml"  # the flag overrides the config; without either, nothing is dropped
    config.write_text("predict:\n  drop_enclosed: true\n")
    args = ("predict", "-m", ldr_model, tmp_path / "a.png", "-o", tmp_path / "kept", "-c", config, "--keep-enclosed")
    assert cli(*args).exit_code == 0
    np.testing.assert_array_equal(read_image(tmp_path / "kept" / "a_mask.png", channels=None)[..., 0] == 255, whole)
    assert "enclosed_sky_dropped" not in json.loads((tmp_path / "kept" / "a.json").read_text())


def test_the_inference_precision_is_chosen_said_and_recorded(cli, ldr_model, tmp_path, monkeypatch):
    monkeypatch.setenv("TFSKY_CPU_BF16", "0")  # a CPU without a bfloat16 unit: auto computes in float32
    write_png(tmp_path / "a.png", ldr_image())
    auto = cli("predict", "-m", ldr_model, tmp_path / "a.png", "-o", tmp_path / "auto", "-q")
    assert auto.exit_code == 0, auto.stderr
    fast = cli("predict", "-m", ldr_model, tmp_path / "a.png", "-o", tmp_path / "fast", "--precision", "bfloat16", "-q")
    assert fast.exit_code == 0, fast.stderr
    facts = {run: json.loads((tmp_path / run / "a.json").read_text()) for run in ("auto", "fast")}
    assert (facts["auto"]["precision"], facts["fast"]["precision"]) == ("float32", "bfloat16")
    probability = {run: read_image(tmp_path / run / "a_prob.png", channels=None)[..., 0] / 65535 for run in facts}
    # bfloat16 keeps 8 mantissa bits (steps of 2-4e-3 near these values) through two small layers
    np.testing.assert_allclose(probability["fast"], probability["auto"], atol=0.02)
    assert not np.array_equal(probability["fast"], probability["auto"])  # it did compute in bfloat16
    bad = cli("predict", "-m", ldr_model, tmp_path / "a.png", "-o", tmp_path / "bad", "--precision", "half")
    assert bad.exit_code == 1
    assert bad.stderr.strip() == (
        "Error: config key 'predict.precision': must be one of auto, float32, bfloat16, as_trained; got 'half'"
    )


def test_channel_and_dynamic_range_mismatches_are_one_line_errors(cli, ldr_model, hdr_model, tmp_path):
    two_channel = tiny_segmenter(tmp_path / "two.keras", channels=2)
    write_png(tmp_path / "rgb.png", ldr_image())
    result = cli("predict", "-m", two_channel, tmp_path / "rgb.png", "-o", tmp_path / "out", "-q")
    assert result.exit_code == 1
    assert result.stderr.strip() == f"failed {tmp_path}/rgb.png: model expects 2 channels, image has 3"
    result = cli("predict", "-m", hdr_model, tmp_path / "rgb.png", "-o", tmp_path / "out", "-q")
    assert result.stderr.strip() == (
        f"failed {tmp_path}/rgb.png: model was trained on HDR images (preprocess mode log) but the image is LDR (uint8)"
    )
    with pytest.raises(InputError, match="^image: model expects 3 channels, image has 1$"):
        TiledSegmenter.load(ldr_model).probabilities(np.zeros((40, 40, 1), np.uint8))


def test_missing_model_is_a_one_line_error(cli, tmp_path):
    result = cli("predict", "-m", tmp_path / "none.keras", tmp_path, "-o", tmp_path / "out")
    assert result.exit_code == 1 and result.stderr.strip() == f"Error: {tmp_path}/none.keras: model file not found"


def test_stale_temporaries_of_a_killed_run_are_removed(ldr_model, tmp_path):
    write_png(tmp_path / "a.png", ldr_image())
    out = tmp_path / "out"
    out.mkdir()
    stale = out / ".a_mask.k3j2x.part.png"
    stale.write_bytes(b"half a png")
    report = predict_many(ldr_model, [tmp_path / "a.png"], out, PredictConfig(TilingConfig(tile_batch=3)))
    assert report.done == [tmp_path / "a.png"] and not stale.exists()
    assert visible_files(out) == {"a_mask.png", "a_prob.png", "a_overlay.jpg", "a.json"}
