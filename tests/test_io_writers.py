"""Writers: exact round trips through the readers, and atomicity when encoding fails."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import tifffile

from tfsky.errors import InputError
from tfsky.io import writers
from tfsky.io.images import read_image, read_mask
from tfsky.io.writers import write_exr, write_jpeg, write_mask_png, write_png, write_tif

RNG = np.random.default_rng(7)


def test_mask_png_round_trip_and_file_values(tmp_path):
    mask = RNG.integers(0, 2, (9, 11)).astype(np.uint8)
    write_mask_png(tmp_path / "m.png", mask)
    assert np.array_equal(read_mask(tmp_path / "m.png"), mask)
    stored = cv2.imread(str(tmp_path / "m.png"), cv2.IMREAD_UNCHANGED)
    assert stored.dtype == np.uint8 and set(np.unique(stored)) == {0, 255}
    write_mask_png(tmp_path / "b.png", mask.astype(bool))
    assert np.array_equal(read_mask(tmp_path / "b.png"), mask)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
@pytest.mark.parametrize("channels", [1, 3, 4])
def test_png_round_trip(tmp_path, dtype, channels):
    array = RNG.integers(0, np.iinfo(dtype).max + 1, (6, 5, channels)).astype(dtype)
    write_png(tmp_path / "a.png", array)
    back = read_image(tmp_path / "a.png", channels=None if channels < 4 else 4)
    assert back.dtype == dtype and np.array_equal(back, array)


def test_jpeg_round_trip_is_close_and_rgb(tmp_path):
    array = np.zeros((32, 32, 3), np.uint8)
    array[..., 0] = 200  # pure red must stay red (no BGR swap)
    write_jpeg(tmp_path / "a.jpg", array, quality=100)
    back = read_image(tmp_path / "a.jpg")
    assert np.abs(back.astype(int) - array).max() <= 2


def test_tif_round_trip_is_exact(tmp_path):
    array = (RNG.random((7, 8, 3), dtype=np.float32) * 1e4).astype(np.float32)
    write_tif(tmp_path / "a.tif", array)
    assert np.array_equal(read_image(tmp_path / "a.tif"), array)
    with tifffile.TiffFile(tmp_path / "a.tif") as tif:
        assert tif.pages[0].compression.name == "ADOBE_DEFLATE"  # zlib


def test_exr_float_round_trip_is_exact(tmp_path):
    array = (RNG.random((7, 8, 3), dtype=np.float32) * 1e5).astype(np.float32)
    write_exr(tmp_path / "a.exr", array, pixel_type="float")
    assert np.array_equal(read_image(tmp_path / "a.exr"), array)


def test_exr_half_round_trip_within_float16_precision(tmp_path):
    array = (RNG.random((7, 8, 4), dtype=np.float32) * 100).astype(np.float32)
    write_exr(tmp_path / "a.exr", array)
    back = read_image(tmp_path / "a.exr", channels=4)
    assert np.array_equal(back, array.astype(np.float16).astype(np.float32))
    np.testing.assert_allclose(back, array, rtol=2**-11)


def test_exr_gray_is_written_as_luminance(tmp_path):
    array = RNG.random((3, 4), dtype=np.float32)
    write_exr(tmp_path / "y.exr", array, pixel_type="float")
    assert np.array_equal(read_image(tmp_path / "y.exr", channels=None)[..., 0], array)


def _leftovers(folder):
    return sorted(p.name for p in folder.iterdir())


def test_failed_png_encoding_leaves_nothing(tmp_path, monkeypatch):
    def crash(*_args, **_kwargs):
        raise RuntimeError("encoder crashed")

    monkeypatch.setattr(writers.cv2, "imencode", crash)  # every PNG: OpenCV
    for array in (np.zeros((4, 4), np.uint8), np.zeros((4, 4, 3), np.uint16), np.zeros((4, 4, 3), np.uint8)):
        with pytest.raises(RuntimeError, match="encoder crashed"):
            write_png(tmp_path / "a.png", array)
        assert _leftovers(tmp_path) == []


def test_failed_tif_and_exr_writes_leave_nothing(tmp_path, monkeypatch):
    def crash(path, *_args, **_kwargs):
        open(path, "wb").write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(writers.tifffile, "imwrite", crash)
    with pytest.raises(OSError, match="disk full"):
        write_tif(tmp_path / "a.tif", np.zeros((4, 4), np.float32))

    class CrashingExrFile:
        def __init__(self, header, channels):
            pass

        def write(self, path):
            crash(path)

    monkeypatch.setattr(writers.OpenEXR, "File", CrashingExrFile)
    with pytest.raises(OSError, match="disk full"):
        write_exr(tmp_path / "b.exr", np.zeros((4, 4, 3), np.float32))
    assert _leftovers(tmp_path) == []


def test_encoder_refusal_is_an_input_error_and_leaves_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(writers.cv2, "imencode", lambda *args: (False, None))
    with pytest.raises(InputError, match=r"a\.png: could not write the image"):
        write_png(tmp_path / "a.png", np.zeros((4, 4, 3), np.uint16))  # 16-bit colour: OpenCV's encoder
    assert _leftovers(tmp_path) == []


def test_existing_file_survives_a_failed_rewrite(tmp_path, monkeypatch):
    write_mask_png(tmp_path / "m.png", np.ones((3, 3), np.uint8))
    monkeypatch.setattr(writers.cv2, "imencode", lambda *args, **kwargs: 1 / 0)  # PNGs go through OpenCV
    with pytest.raises(ZeroDivisionError):
        write_mask_png(tmp_path / "m.png", np.zeros((3, 3), np.uint8))
    monkeypatch.undo()
    assert read_mask(tmp_path / "m.png").all()
    assert _leftovers(tmp_path) == ["m.png"]


def test_half_exr_clamps_the_sun_instead_of_writing_inf(tmp_path):
    radiance = np.full((4, 5, 3), 2.0, dtype=np.float32)
    radiance[1, 2] = 8.7e4  # the sun in a Poly Haven panorama, beyond float16's 65504
    write_exr(tmp_path / "sun.exr", radiance, pixel_type="half")
    back = read_image(tmp_path / "sun.exr", nonfinite="keep")
    assert np.isfinite(back).all()
    assert back[1, 2].tolist() == [65504.0] * 3 and back[0, 0].tolist() == [2.0] * 3


def test_a_consumed_jpeg_is_the_same_file_without_a_copy_of_the_image(tmp_path):
    rgb = np.random.default_rng(3).integers(0, 256, (60, 80, 3), dtype=np.uint8)
    write_jpeg(tmp_path / "kept.jpg", rgb)
    scratch = rgb.copy()
    write_jpeg(tmp_path / "consumed.jpg", scratch, consume=True)
    assert (tmp_path / "kept.jpg").read_bytes() == (tmp_path / "consumed.jpg").read_bytes()
    assert np.array_equal(scratch, rgb[..., ::-1])  # swapped in place: the buffer OpenCV encoded


def test_png_decoding_swaps_opencv_bgr_in_place_and_keeps_colours(tmp_path):
    rgb = np.random.default_rng(4).integers(0, 65536, (40, 50, 3), dtype=np.uint16)
    cv2.imwrite(str(tmp_path / "a.png"), np.ascontiguousarray(rgb[..., ::-1]))
    decoded = read_image(tmp_path / "a.png")
    assert decoded.dtype == np.uint16 and np.array_equal(decoded, rgb) and decoded.flags.c_contiguous
