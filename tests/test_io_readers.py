"""Image readers: real HDR/EXR files, synthetic LDR variants, and every refusal message."""

from __future__ import annotations

import logging

import cv2
import numpy as np
import pytest
import tifffile

from tfsky.errors import InputError
from tfsky.io.images import (
    REC709_LUMA,
    SUPPORTED_SUFFIXES,
    image_size,
    is_image_file,
    luminance_weights,
    read_image,
    read_mask,
)

# (width, height) from the data README
EXR_SIZES = {
    "MtTamWest": (1214, 732),
    "MtTamNorth": (1198, 796),
    "CrissyField": (1218, 810),
    "Tree": (928, 906),
    "KernerEnvLatLong": (1024, 512),
}


def _tonemap_small(image: np.ndarray) -> np.ndarray:
    """Display-referred, quarter-size version of a linear (or 8-bit) image for comparing with previews."""
    if image.dtype == np.uint8:
        image = image.astype(np.float32)
    else:
        image = np.clip(image, 0, 1) ** (1 / 2.2)
    return cv2.resize(image, (image.shape[1] // 4, image.shape[0] // 4), interpolation=cv2.INTER_AREA)


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a.ravel(), b.ravel())[0, 1])


# --- real HDR files ---------------------------------------------------------------------------


def test_radiance_hdr_files_decode_to_finite_float_rgb(shared_data):
    files = sorted((shared_data / "hdr_polyhaven_1k").glob("*.hdr"))
    assert len(files) == 7
    peaks = []
    for path in files:
        image = read_image(path)
        assert image.shape == (512, 1024, 3) and image.dtype == np.float32
        assert image_size(path) == (512, 1024)
        assert np.isfinite(image).all() and image.min() >= 0
        peaks.append(float(image.max()))
    assert 8e4 < max(peaks) < 9e4  # the sun in quarry_01


@pytest.mark.parametrize("name", sorted(EXR_SIZES))
def test_exr_decodes_to_the_readme_size_and_matches_its_preview(shared_data, name):
    path = shared_data / "exr_openexr_images" / f"{name}.exr"
    width, height = EXR_SIZES[name]
    image = read_image(path)
    assert image.shape == (height, width, 3) and image.dtype == np.float32
    assert image_size(path) == (height, width)
    assert np.isfinite(image).all()

    mine = _tonemap_small(image)
    preview = _tonemap_small(read_image(path.with_suffix(".preview.jpg")))
    assert mine.shape == preview.shape
    for channel in range(3):  # orientation and per-channel brightness
        assert _corr(mine[..., channel], preview[..., channel]) > 0.95
    # chroma (R - B) proves the Y/RY/BY conversion; swapping R and B gives about -0.99
    assert _corr(mine[..., 0] - mine[..., 2], preview[..., 0] - preview[..., 2]) > 0.9


def test_luminance_weights_from_rec709_chromaticities_match_the_default():
    rec709 = (0.64, 0.33, 0.30, 0.60, 0.15, 0.06, 0.3127, 0.3290)
    np.testing.assert_allclose(luminance_weights(rec709), REC709_LUMA, atol=2e-4)
    np.testing.assert_allclose(luminance_weights(rec709).sum(), 1.0, rtol=1e-6)
    assert luminance_weights(None) is REC709_LUMA


def test_yca_exr_decoding_inverts_the_stored_planes(shared_data):
    """RGB decoded from a Y/RY/BY file re-encodes to the file's own Y, RY and BY planes."""
    import OpenEXR

    path = shared_data / "exr_openexr_images" / "MtTamNorth.exr"
    planes = {name: ch.pixels.astype(np.float32) for name, ch in OpenEXR.File(str(path), True).channels().items()}
    rgb = read_image(path)
    np.testing.assert_allclose(rgb @ REC709_LUMA, planes["Y"], rtol=1e-5, atol=1e-7)
    on_chroma_samples = rgb[::2, ::2]  # chroma is 2x2 subsampled; sample i sits on pixel 2i
    y = planes["Y"][::2, ::2]
    np.testing.assert_allclose(on_chroma_samples[..., 0] / y - 1, planes["RY"], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(on_chroma_samples[..., 2] / y - 1, planes["BY"], rtol=1e-4, atol=1e-4)


def test_luminance_only_exr_is_gray(tmp_path):
    import OpenEXR

    y = np.arange(12, dtype=np.float32).reshape(3, 4)
    path = tmp_path / "y.exr"
    OpenEXR.File({"compression": OpenEXR.ZIP_COMPRESSION, "type": OpenEXR.scanlineimage}, {"Y": y}).write(str(path))
    assert np.array_equal(read_image(path, channels=None)[..., 0], y)
    assert np.array_equal(read_image(path), np.repeat(y[..., None], 3, axis=-1))


# --- synthetic LDR ----------------------------------------------------------------------------


@pytest.fixture
def rgba8():
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (5, 7, 4), dtype=np.uint8)


def test_png_8_and_16_bit_keep_dtype_and_rgb_order(tmp_path, rgba8):
    rgb16 = rgba8[..., :3].astype(np.uint16) * 257
    cv2.imwrite(str(tmp_path / "a.png"), rgba8[..., 2::-1])  # OpenCV writes BGR
    cv2.imwrite(str(tmp_path / "b.png"), rgb16[..., ::-1])
    assert np.array_equal(read_image(tmp_path / "a.png"), rgba8[..., :3])
    image16 = read_image(tmp_path / "b.png")
    assert image16.dtype == np.uint16 and np.array_equal(image16, rgb16)


def test_rgba_png_channel_variants(tmp_path, rgba8):
    path = tmp_path / "rgba.png"
    cv2.imwrite(str(path), rgba8[..., [2, 1, 0, 3]])
    assert np.array_equal(read_image(path), rgba8[..., :3])  # alpha dropped
    assert np.array_equal(read_image(path, channels=None), rgba8[..., :3])
    assert np.array_equal(read_image(path, channels=4), rgba8)
    gray = read_image(path, channels=1)
    assert gray.shape == (5, 7, 1)
    assert np.array_equal(gray[..., 0], cv2.cvtColor(rgba8[..., :3], cv2.COLOR_RGB2GRAY))


def test_gray_png_channel_variants(tmp_path, rgba8):
    gray = rgba8[..., 0]
    path = tmp_path / "gray.png"
    cv2.imwrite(str(path), gray)
    assert np.array_equal(read_image(path, channels=None), gray[..., None])
    assert np.array_equal(read_image(path), np.stack([gray] * 3, axis=-1))
    assert np.array_equal(read_image(path, channels=1), gray[..., None])
    with_alpha = read_image(path, channels=4)
    assert np.array_equal(with_alpha[..., :3], np.stack([gray] * 3, axis=-1))
    assert (with_alpha[..., 3] == 255).all()


def test_jpeg_is_rgb_uint8(shared_data):
    path = next((shared_data / "sky_ade20k" / "images").glob("*.jpg"))
    image = read_image(path)
    assert image.dtype == np.uint8 and image.shape[2] == 3
    np.testing.assert_array_equal(image.shape[:2], image_size(path))
    # OpenCV decodes the same file (BGR); pixels agree up to IDCT rounding
    assert np.abs(image.astype(int) - cv2.imread(str(path))[..., ::-1]).max() <= 2


def test_float_tif_round_trip_and_hdr_channel_variants(tmp_path):
    rgb = np.random.default_rng(1).random((4, 5, 3), dtype=np.float32) * 1000
    path = tmp_path / "hdr.tif"
    tifffile.imwrite(path, rgb, photometric="rgb")
    assert np.array_equal(read_image(path), rgb)
    np.testing.assert_allclose(read_image(path, channels=1)[..., 0], rgb @ REC709_LUMA, rtol=1e-6)
    with_alpha = read_image(path, channels=4)
    assert with_alpha.dtype == np.float32 and (with_alpha[..., 3] == 1.0).all()


def test_integer_tif_is_ldr(tmp_path):
    gray = np.arange(20, dtype=np.uint16).reshape(4, 5) * 3000
    tifffile.imwrite(tmp_path / "g.tif", gray)
    image = read_image(tmp_path / "g.tif", channels=None)
    assert image.dtype == np.uint16 and np.array_equal(image[..., 0], gray)


def test_nonfinite_values_are_replaced_and_counted(tmp_path, caplog):
    image = np.array([[1.0, np.nan, np.inf], [-np.inf, 5.0, np.nan]], dtype=np.float32)
    path = tmp_path / "bad.tif"
    tifffile.imwrite(path, image)
    with caplog.at_level(logging.WARNING, logger="tfsky"):
        fixed = read_image(path, channels=None)[..., 0]
    assert np.array_equal(fixed, [[1.0, 0.0, 5.0], [0.0, 5.0, 0.0]])
    assert "bad.tif: replaced 2 NaN, 1 +Inf, 1 -Inf values" in caplog.text
    kept = read_image(path, channels=None, nonfinite="keep")[..., 0]
    assert np.isnan(kept).sum() == 2 and np.isposinf(kept).sum() == 1 and np.isneginf(kept).sum() == 1


# --- masks ------------------------------------------------------------------------------------


def test_one_bit_webcam_masks(shared_data):
    mask = read_mask(shared_data / "skyfinder_webcams" / "623-mask.png")
    assert mask.shape == (720, 1280) and mask.dtype == np.uint8
    assert set(np.unique(mask)) == {0, 1}
    assert not read_mask(shared_data / "skyfinder_webcams" / "10917-mask.png").any()  # sees no sky


def test_mask_threshold_colour_and_16_bit(tmp_path):
    values = np.array([[0, 127, 128, 255]], dtype=np.uint8)
    cv2.imwrite(str(tmp_path / "m8.png"), values)
    cv2.imwrite(str(tmp_path / "m16.png"), values.astype(np.uint16) * 257)
    cv2.imwrite(str(tmp_path / "mc.png"), np.stack([values] * 3, axis=-1))
    for name in ("m8.png", "m16.png", "mc.png"):
        assert read_mask(tmp_path / name).tolist() == [[0, 0, 1, 1]]
    assert read_mask(tmp_path / "m8.png", threshold=1).tolist() == [[0, 1, 1, 1]]


def test_float_mask_is_refused(tmp_path):
    tifffile.imwrite(tmp_path / "m.tif", np.ones((2, 2), np.float32))
    with pytest.raises(InputError, match=r"m\.tif: a mask must be an 8- or 16-bit image, got float32"):
        read_mask(tmp_path / "m.tif")


# --- refusals ---------------------------------------------------------------------------------


def test_pixel_limit_is_checked_on_the_header(tmp_path):
    cv2.imwrite(str(tmp_path / "big.png"), np.zeros((20, 15), np.uint8))
    with pytest.raises(InputError, match=r"big\.png: image has 300 pixels, over the limit of 299 \(max_pixels\)"):
        read_image(tmp_path / "big.png", max_pixels=299)
    assert read_image(tmp_path / "big.png", max_pixels=300).shape == (20, 15, 3)


def test_radiance_header_gives_the_size_without_decoding(tmp_path):
    path = tmp_path / "huge.hdr"
    path.write_bytes(b"#?RADIANCE\nFORMAT=32-bit_rle_rgbe\n\n-Y 10000 +X 30000\n")
    assert image_size(path) == (10000, 30000)
    with pytest.raises(InputError, match="has 300000000 pixels, over the limit of 268435456"):
        read_image(path)


def test_missing_file(tmp_path):
    with pytest.raises(InputError, match=r"nope\.png: file not found"):
        read_image(tmp_path / "nope.png")


def test_empty_file(tmp_path):
    (tmp_path / "empty.jpg").write_bytes(b"")
    with pytest.raises(InputError, match=r"empty\.jpg: file is empty \(0 bytes\)"):
        read_image(tmp_path / "empty.jpg")


def test_unknown_suffix(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(InputError, match=r"notes\.txt: unsupported image format '\.txt' \(supported: \.bmp"):
        read_image(tmp_path / "notes.txt")
    assert not is_image_file("notes.txt") and is_image_file("A.EXR") and ".hdr" in SUPPORTED_SUFFIXES


def test_text_file_named_png(tmp_path):
    (tmp_path / "fake.png").write_text("this is not an image\n")
    with pytest.raises(InputError, match=r"fake\.png: not a \.png image \(unrecognised content\)"):
        read_image(tmp_path / "fake.png")


def test_truncated_jpeg(shared_data, tmp_path):
    data = next((shared_data / "sky_ade20k" / "images").glob("*.jpg")).read_bytes()
    (tmp_path / "half.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match=r"half\.jpg: truncated or corrupt image \(decode: image file is truncated"):
        read_image(tmp_path / "half.jpg")


def test_truncated_png(tmp_path, rgba8):
    cv2.imwrite(str(tmp_path / "full.png"), np.tile(rgba8, (40, 40, 1)))
    data = (tmp_path / "full.png").read_bytes()
    (tmp_path / "half.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match=r"half\.png: truncated or corrupt image"):
        read_image(tmp_path / "half.png")


@pytest.mark.parametrize(
    ("name", "content", "reason"),
    [
        ("bad.exr", b"v/1\x01" + b"\x00" * 64, "truncated or corrupt image"),
        ("bad.tif", b"II*\x00" + b"\xff" * 64, "truncated or corrupt image"),
        ("bad.hdr", b"not radiance\n", r"not a \.hdr image \(no #\? Radiance signature\)"),
    ],
)
def test_corrupt_hdr_formats(tmp_path, name, content, reason):
    (tmp_path / name).write_bytes(content)
    with pytest.raises(InputError, match=rf"{name}: {reason}"):
        read_image(tmp_path / name)


def test_truncated_exr(shared_data, tmp_path):
    data = (shared_data / "exr_openexr_images" / "MtTamNorth.exr").read_bytes()
    (tmp_path / "cut.exr").write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match=r"cut\.exr: truncated or corrupt image \(decode: "):
        read_image(tmp_path / "cut.exr")
