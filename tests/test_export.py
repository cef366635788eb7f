"""tfsky export: SavedModel signatures, in-graph tiling equal to tfsky predict, atomic versions, warmup, metadata."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tensorflow as tf

from tfsky.data.transforms import Preprocess
from tfsky.errors import InputError
from tfsky.export import warmup
from tfsky.export.metadata import export_info
from tfsky.export.savedmodel import export_model, next_version
from tfsky.io.writers import write_png
from tfsky.models.bundle import ModelInfo, save_model
from tfsky.models.precision import bfloat16_verdict
from tfsky.predict.segment import TiledSegmenter
from tfsky.tiling import AUTO_OVERLAP_PX, MAX_AUTO_TILE
from tests.test_bfloat16_verdict import batch, scene, tiny_unet

TILE = 32
BF16_OK = {"agreement": 1.0, "iou_float32": 0.9, "iou_bfloat16": 0.9, "ok": True, "float32_part": None}


def tiny_segmenter(seed: int = 0, output_dtype: str = "float32") -> tf.keras.Model:
    """Two 3x3 convolutions and a sigmoid: tiny, but its zero padding makes every tile border matter."""
    tf.keras.utils.set_random_seed(seed)
    inputs = tf.keras.Input((None, None, 3))
    x = tf.keras.layers.Conv2D(4, 3, padding="same", activation="relu")(inputs)
    x = tf.keras.layers.Conv2D(1, 3, padding="same", bias_initializer=tf.keras.initializers.Constant(-0.2))(x)
    return tf.keras.Model(inputs, tf.keras.layers.Activation("sigmoid", dtype=output_dtype)(x))


def save_tiny(path, preprocess: Preprocess = Preprocess(), bfloat16=None, **kwargs):
    info = ModelInfo(task="segmenter", preprocess=preprocess, tile_size=TILE, bfloat16=bfloat16)
    save_model(tiny_segmenter(**kwargs), path, info)
    return path


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """(model file, version folder, loaded SavedModel) of the tiny LDR segmenter, exported once."""
    root = tmp_path_factory.mktemp("export")
    model_path = save_tiny(root / "best.keras")
    version_dir = export_model(model_path, root / "models", "sky_segmenter")
    return model_path, version_dir, tf.saved_model.load(str(version_dir))


@pytest.fixture(scope="module")
def sky_png(tmp_path_factory):
    """A 1000 x 777 RGB PNG: bright smooth 'sky' on top, textured ground below."""
    rng = np.random.default_rng(1)
    rows = np.linspace(0, 1, 1000)[:, None, None]
    image = np.clip(255 * (1 - rows) + rng.normal(0, 40, (1000, 777, 3)) * rows, 0, 255).astype(np.uint8)
    path = tmp_path_factory.mktemp("images") / "scene.png"
    write_png(path, image)
    return path


def decode_probability(png: bytes) -> np.ndarray:
    return tf.io.decode_png(png, dtype=tf.uint16).numpy()[..., 0].astype(np.float32) / 65535


def test_serving_default_equals_keras_model(exported):
    model_path, _, loaded = exported
    tiles = np.random.default_rng(2).random((3, TILE, TILE, 3), dtype=np.float32)
    out = loaded.signatures["serving_default"](tiles=tf.constant(tiles))["probabilities"]
    expected = tf.keras.models.load_model(model_path, compile=False)(tiles)
    assert out.dtype == tf.float32 and out.shape == (3, TILE, TILE, 1)
    np.testing.assert_allclose(out.numpy(), expected.numpy(), atol=1e-5)


def test_serving_default_is_float32_for_a_mixed_precision_model(tmp_path):
    tf.keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        model = tiny_segmenter(output_dtype="float16")  # a head that forgot the float32 activation
    finally:
        tf.keras.mixed_precision.set_global_policy("float32")
    save_model(model, tmp_path / "fp16.keras", ModelInfo(task="segmenter", preprocess=Preprocess(), tile_size=TILE))
    tiles = np.random.default_rng(3).random((2, TILE, TILE, 3), dtype=np.float32)
    assert model(tiles).dtype == tf.float16
    expected = model(tiles).numpy()
    for precision, dtypes in (("as_trained", ["float16", "float32"]), ("float32", ["float32"])):
        version_dir = export_model(tmp_path / "fp16.keras", tmp_path / "models", "fp16", precision=precision)
        out = tf.saved_model.load(str(version_dir)).signatures["serving_default"](tiles=tf.constant(tiles))
        assert out["probabilities"].dtype == tf.float32
        if precision == "as_trained":  # float16 maths in graph and eager: kernels may round differently
            assert_within_float16_steps(out["probabilities"].numpy(), expected, steps=2)
        else:  # float32 maths against the float16 model: its rounding of every layer, a few steps at most
            assert_within_float16_steps(out["probabilities"].numpy(), expected, steps=4)
        assert export_info(version_dir)[0]["compute_dtypes"] == dtypes  # float32 (the default) for CPU serving


def test_bfloat16_export_computes_in_bfloat16_and_answers_float32_within_its_precision(tmp_path):
    save_tiny(tmp_path / "m.keras", seed=4, bfloat16=BF16_OK)
    tiles = np.random.default_rng(4).random((2, TILE, TILE, 3), dtype=np.float32)
    outputs = {}
    for precision in ("float32", "bfloat16"):
        version_dir = export_model(tmp_path / "m.keras", tmp_path / "models", precision, precision=precision)
        out = tf.saved_model.load(str(version_dir)).signatures["serving_default"](tiles=tf.constant(tiles))
        assert out["probabilities"].dtype == tf.float32
        outputs[precision] = out["probabilities"].numpy()
        expected_dtypes = ["float32"] if precision == "float32" else ["bfloat16", "float32"]
        assert export_info(version_dir)[0]["compute_dtypes"] == expected_dtypes  # the head stays float32
    difference = np.abs(outputs["bfloat16"] - outputs["float32"])
    # bfloat16 keeps 8 mantissa bits: a step of 2**-8 = 0.0039 relative; two layers and a sigmoid (slope <= 1/4)
    assert difference.max() < 0.02
    assert difference.max() > 1e-6  # it really computed in bfloat16, not float32


def test_bfloat16_export_is_the_build_the_verdict_passed_and_keeps_its_masks(tmp_path):
    """The whole network in bfloat16 flips pixels of this U-Net-shaped model; its verdict kept the encoder in
    float32, and that is what the SavedModel serves: the float32 masks, flips included."""
    unet = tiny_unet()
    image, truth = batch(scene(flips=20))
    verdict = bfloat16_verdict(unet, [(image, truth)])
    assert verdict["ok"] and verdict["float32_part"] == "encoder"  # the whole network failed
    path = tmp_path / "unet.keras"
    save_model(unet, path, ModelInfo(task="segmenter", preprocess=Preprocess(), tile_size=TILE, bfloat16=verdict))
    version_dir = export_model(path, tmp_path / "models", "unet", precision="bfloat16")
    out = tf.saved_model.load(str(version_dir)).signatures["serving_default"](tiles=tf.constant(image))
    assert np.array_equal(out["probabilities"].numpy() >= 0.5, truth >= 0.5)
    assert export_info(version_dir)[0]["compute_dtypes"] == ["bfloat16", "float32"]


@pytest.mark.parametrize(
    ("verdict", "problem"),
    [
        ({**BF16_OK, "agreement": 0.99, "ok": False}, "its bfloat16 verdict failed: mask agreement 0.99000"),
        (None, "the model has no bfloat16 verdict"),
    ],
)
def test_bfloat16_export_of_a_model_without_a_passing_verdict_is_one_clear_line(tmp_path, cli, verdict, problem):
    model = save_tiny(tmp_path / "m.keras", bfloat16=verdict)
    result = cli("export", "-m", model, "--repo", tmp_path / "models", "--precision", "bfloat16")
    assert result.exit_code != 0 and "Traceback" not in result.stdout + result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert str(model) in line and "cannot export in bfloat16" in line and problem in line
    assert "tfsky evaluate precision" in line
    assert not (tmp_path / "models").exists()


def assert_within_float16_steps(actual: np.ndarray, expected_float16: np.ndarray, steps: int) -> None:
    """``actual`` is at most ``steps`` float16 rounding steps (ulps at the expected value) from a float16 result.

    A float16 step is 4.9e-4 at 0.5: graph and eager runs of one float16 model may pick different kernels
    (AVX512-FP16/AMX CPUs do), so a fixed tolerance like 1e-6 fails on some CPUs and not others.
    """
    ulp = np.spacing(np.abs(expected_float16.astype(np.float16))).astype(np.float32)
    error = np.abs(actual.astype(np.float32) - expected_float16.astype(np.float32))
    assert np.all(error <= steps * ulp), f"max error {error.max():.3g} over {steps} float16 steps"


def test_predict_image_equals_tiled_segmenter_and_tfsky_predict(exported, sky_png, cli, tmp_path):
    model_path, _, loaded = exported
    out = loaded.signatures["predict_image"](image_bytes=tf.constant([sky_png.read_bytes()]))
    probability = decode_probability(out["probability_png_bytes"][0].numpy())

    segmenter = TiledSegmenter.load(model_path)
    expected = segmenter.probabilities(segmenter.read(sky_png))[..., 0]
    assert probability.shape == (1000, 777)
    assert 0.05 < expected.mean() < 0.95 and expected.std() > 0.01  # not a constant map
    np.testing.assert_allclose(probability, expected, atol=1e-4)

    mask = tf.io.decode_png(out["mask_png_bytes"][0]).numpy()[..., 0]
    np.testing.assert_array_equal(mask, np.where(expected >= 0.5, 255, 0))
    assert out["sky_fraction"].numpy()[0] == pytest.approx((expected >= 0.5).mean(), abs=1e-6)

    result = cli("predict", sky_png, "--model", model_path, "--out", tmp_path, "--quiet")
    assert result.exit_code == 0, result.stderr
    predicted = decode_probability((tmp_path / "scene_prob.png").read_bytes())
    np.testing.assert_allclose(probability, predicted, atol=1e-4)


def test_predict_image_handles_a_batch_of_different_sizes(exported):
    _, _, loaded = exported
    rng = np.random.default_rng(4)
    small = tf.io.encode_png(rng.integers(0, 256, (20, 50, 3), dtype=np.uint8)).numpy()
    large = tf.io.encode_png(rng.integers(0, 256, (70, 45, 3), dtype=np.uint8)).numpy()
    out = loaded.signatures["predict_image"](image_bytes=tf.constant([small, large]))
    shapes = [decode_probability(png).shape for png in out["probability_png_bytes"].numpy()]
    assert shapes == [(20, 50), (70, 45)]


def test_predict_hdr_equals_tiled_segmenter(tmp_path):
    log = Preprocess(mode="log", log_epsilon=1e-3, output_scale=0.2)
    model_path = save_tiny(tmp_path / "hdr.keras", preprocess=log, seed=5)
    loaded = tf.saved_model.load(str(export_model(model_path, tmp_path / "models", "hdr")))
    radiance = (np.random.default_rng(6).random((70, 90, 3)) ** 3 * 5e4).astype(np.float32)
    out = loaded.signatures["predict_hdr"](
        image_raw=tf.constant([radiance.tobytes()]), shape=tf.constant([radiance.shape], tf.int32)
    )
    expected = TiledSegmenter.load(model_path).probabilities(radiance)[..., 0]
    np.testing.assert_allclose(decode_probability(out["probability_png_bytes"][0].numpy()), expected, atol=1e-4)
    for raw, shape, problem in (
        (radiance.tobytes()[:-4], radiance.shape, "image_raw does not hold"),
        (b"", (0, 0, 3), r"shape\[0\] and shape\[1\] \(height, width\) must be > 0"),
        (b"", (-1, 0, 3), r"must be > 0"),
        (b"", (65536, 65536, 3), "requested shape has 12884901888"),  # int32 product wraps to 0 bytes
        (radiance[..., :1].tobytes(), (70, 90, 1), "shape\\[2\\] must be 3 channels"),
    ):
        with pytest.raises(tf.errors.InvalidArgumentError, match=problem):
            loaded.signatures["predict_hdr"](image_raw=tf.constant([raw]), shape=tf.constant([shape], tf.int32))


def test_versions_auto_increment_and_existing_version_is_refused(exported, tmp_path):
    model_path, version_dir, _ = exported
    repo = version_dir.parent.parent
    assert version_dir.name == "1"
    assert next_version(repo / "sky_segmenter") == 2
    assert next_version(tmp_path / "new_model") == 1
    for folder in ("1", "7", ".8.part", "latest"):  # temporaries and non-numeric folders do not count
        (tmp_path / "model" / folder).mkdir(parents=True)
    assert next_version(tmp_path / "model") == 8
    with pytest.raises(InputError, match="version already exists"):
        export_model(model_path, repo, "sky_segmenter", version=1)
    with pytest.raises(InputError, match="model name"):
        export_model(model_path, repo, "../escape")


def test_failed_export_leaves_no_version_folder(exported, tmp_path, monkeypatch):
    model_path, _, _ = exported

    def fail_midway(*args, **kwargs):
        assert list((tmp_path / "sky_segmenter").glob(".1.*.part"))  # the SavedModel is being written beside it
        raise OSError("disk full")

    monkeypatch.setattr(warmup, "write_warmup", fail_midway)
    with pytest.raises(OSError, match="disk full"):
        export_model(model_path, tmp_path, "sky_segmenter")
    assert list((tmp_path / "sky_segmenter").iterdir()) == []


def test_export_is_complete_and_readable_by_another_user(exported):
    _, version_dir, _ = exported
    for name in ("saved_model.pb", "variables/variables.index", warmup.WARMUP_FILE, "assets/tfsky_model.json"):
        assert (version_dir / name).is_file(), name
    assert all((path.stat().st_mode & 0o004) for path in version_dir.rglob("*"))
    assert not list(version_dir.parent.glob(".*"))


def test_warmup_records_name_every_signature_and_run(exported):
    _, version_dir, loaded = exported
    logs = warmup.read_warmup(version_dir)
    assert {log.predict_log.request.model_spec.signature_name for log in logs} == {"serving_default", "predict_image"}
    assert {log.predict_log.request.model_spec.name for log in logs} == {"sky_segmenter"}
    for log in logs:
        request = log.predict_log.request
        inputs = {key: tf.constant(tf.make_ndarray(proto)) for key, proto in request.inputs.items()}
        loaded.signatures[request.model_spec.signature_name](**inputs)  # a bad warmup record fails TF Serving's load


def test_metadata_and_signatures_read_back(exported):
    model_path, version_dir, _ = exported
    metadata, signatures = export_info(version_dir)
    assert metadata["name"] == "sky_segmenter" and metadata["version"] == 1
    assert metadata["model"]["preprocess"]["mode"] == "ldr"
    tiling = metadata["tiling"]  # tile auto: the largest tile the memory budget fits, for images of any size
    assert tiling["tile"] % 32 == 0 and 256 <= tiling["tile"] <= MAX_AUTO_TILE and 1 <= tiling["tile_batch"] <= 8
    assert tiling == {
        "tile": tiling["tile"],
        "overlap": AUTO_OVERLAP_PX / tiling["tile"],
        "window": "ramp",
        "tile_batch": tiling["tile_batch"],
        "tta": "none",
        "resolution": "working",
        "memory_budget": None,
        "working_factor": 1.0,
    }
    assert metadata["source_model"] == str(model_path.resolve())
    by_name = {s.name: s for s in signatures}
    assert list(by_name) == ["serving_default", "predict_image"]
    tiles = by_name["serving_default"].inputs[0]
    assert (tiles.name, tiles.dtype, tiles.shape) == ("tiles", "float32", (None, None, None, 3))
    assert [o.name for o in by_name["predict_image"].outputs] == [
        "mask_png_bytes",
        "probability_png_bytes",
        "sky_fraction",
    ]


def test_cli_export_and_info(exported, cli, tmp_path):
    model_path, _, _ = exported
    result = cli("export", "--model", model_path, "--name", "sky", "--repo", tmp_path, "--version", 3)
    assert result.exit_code == 0, result.stderr
    assert f"-> {tmp_path / 'sky' / '3'}" in result.stdout

    again = cli("export", "--model", model_path, "--name", "sky", "--repo", tmp_path, "--version", 3)
    assert again.exit_code == 1
    assert (
        again.stderr.strip()
        == f"Error: {tmp_path / 'sky' / '3'}: version already exists (omit --version for the next one, or pass --overwrite)"
    )

    info = cli("export", "--info", tmp_path / "sky" / "3")
    assert info.exit_code == 0, info.stderr
    assert '"tfsky_version"' in info.stdout and '"mode": "ldr"' in info.stdout
    assert "input  tiles: float32 [?, ?, ?, 3]" in info.stdout
    assert "output probability_png_bytes: string [?]" in info.stdout
    assert json.loads((tmp_path / "sky" / "3" / "assets" / "tfsky_model.json").read_text())["version"] == 3


def test_cli_info_on_a_folder_that_is_not_an_export(cli, tmp_path):
    result = cli("export", "--info", tmp_path)
    assert result.exit_code == 1
    assert "tfsky_model.json not found" in result.stderr


def test_predict_image_decodes_jpeg_exactly_as_tfsky_predict(exported, sky_png, tmp_path):
    """TensorFlow's default JPEG decoder differs from Pillow's by up to 23 levels; the export must not."""
    from PIL import Image

    model_path, _, loaded = exported
    jpeg = tmp_path / "scene.jpg"
    Image.open(sky_png).save(jpeg, quality=80)
    out = loaded.signatures["predict_image"](image_bytes=tf.constant([jpeg.read_bytes()]))
    segmenter = TiledSegmenter.load(model_path)
    expected = segmenter.probabilities(segmenter.read(jpeg))[..., 0]
    np.testing.assert_allclose(decode_probability(out["probability_png_bytes"][0].numpy()), expected, atol=1e-4)


def test_export_removes_the_temporaries_of_killed_exports_of_its_model(exported, tmp_path):
    model_path, _, _ = exported
    model_dir = tmp_path / "sky_segmenter"
    killed = [model_dir / ".1.k3x9_q2a.part", model_dir / ".12.abcdefgh.part"]
    for folder in killed:
        (folder / "variables").mkdir(parents=True)
        (folder / "variables" / "variables.data-00000-of-00001").write_bytes(bytes(1 << 20))
    kept = [model_dir / ".notes", model_dir / "latest", tmp_path / "other" / ".1.k3x9_q2a.part"]
    for folder in kept:
        folder.mkdir(parents=True)
    (model_dir / ".1.file.part").write_text("a file, not an export folder")

    assert export_model(model_path, tmp_path, "sky_segmenter") == model_dir / "1"
    assert not any(folder.exists() for folder in killed)
    assert all(folder.is_dir() for folder in kept) and (model_dir / ".1.file.part").is_file()


def test_export_refuses_a_translator_saying_what_it_is(exported, cli, tmp_path):
    model_path, _, _ = exported
    translator = tmp_path / "t.keras"
    save_model(tiny_segmenter(), translator, ModelInfo(task="pix2pix", preprocess=Preprocess(), tile_size=TILE))
    result = cli("export", "--model", translator, "--name", "sky", "--repo", tmp_path / "repo")
    assert result.exit_code == 1
    assert result.stderr.strip() == f"Error: {translator}: is a pix2pix model, not a sky segmenter"
    assert not (tmp_path / "repo").exists()


def header_bombs() -> dict[str, bytes]:
    """Headers declaring 100000 x 100000 pixels (30 GB decoded) in every format predict_image takes."""
    import struct
    import zlib

    side = 100_000
    ihdr = b"IHDR" + struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    png = b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + ihdr + struct.pack(">I", zlib.crc32(ihdr))
    jpeg = bytearray(tf.io.encode_jpeg(np.zeros((16, 16, 3), np.uint8)).numpy())
    frame = jpeg.index(b"\xff\xc0")  # baseline frame header: length, precision, height, width
    jpeg[frame + 5 : frame + 9] = struct.pack(">HH", side // 2, side // 2)  # a JPEG side is at most 65535
    return {
        "png": png + b"\x00" * 16,
        "jpeg": bytes(jpeg),
        "gif": b"GIF89a" + struct.pack("<HH", 65535, 65535) + b"\x00" * 24,
        "bmp": b"BM" + b"\x00" * 16 + struct.pack("<ii", side, -side) + b"\x00" * 16,  # top-down rows
    }


@pytest.mark.parametrize("kind", ["png", "jpeg", "gif", "bmp"])
def test_predict_image_refuses_a_header_bomb_before_decoding_it(exported, kind):
    _, _, loaded = exported
    with pytest.raises(
        tf.errors.InvalidArgumentError,
        match=r"image is \d+x\d+ \(\d+ pixels\), over the limit of "
        r"\d+ pixels set at export \(export.max_pixels\)",
    ):
        loaded.signatures["predict_image"](image_bytes=tf.constant([header_bombs()[kind]]))


@pytest.mark.parametrize("suffix", [".bmp", ".gif"])
def test_predict_image_still_takes_small_bmp_and_gif(exported, tmp_path, suffix):
    from PIL import Image

    _, _, loaded = exported
    path = tmp_path / f"small{suffix}"
    Image.fromarray(np.random.default_rng(5).integers(0, 256, (30, 40, 3), dtype=np.uint8)).save(path)
    out = loaded.signatures["predict_image"](image_bytes=tf.constant([path.read_bytes()]))
    assert tf.io.decode_png(out["mask_png_bytes"][0]).shape == (30, 40, 1)
