"""`tfsky data inspect` facts: format details, size, dtype, finite range and NaN/Inf counts, per file."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tfsky.errors import InputError
from tfsky.io.inspect import inspect_file
from tfsky.io.writers import write_exr, write_jpeg, write_png, write_tif


def test_ldr_png_and_jpeg(tmp_path):
    image = np.zeros((20, 30, 3), np.uint8)
    image[..., 0] = 7
    image[5, 5] = [250, 0, 3]
    write_png(tmp_path / "a.png", image)
    info = inspect_file(tmp_path / "a.png")
    assert (info.format, info.height, info.width, info.channels, info.dtype) == ("PNG", 20, 30, 3, "uint8")
    assert (info.min, info.max, info.nan_count, info.inf_count) == (0, 250, 0, 0)
    write_png(tmp_path / "grey16.png", np.full((4, 5, 1), 40000, np.uint16))
    grey = inspect_file(tmp_path / "grey16.png")
    assert (grey.channels, grey.dtype, grey.max) == (1, "uint16", 40000)
    write_jpeg(tmp_path / "b.jpg", image)
    assert inspect_file(tmp_path / "b.jpg").format == "JPEG"


def test_hdr_counts_nan_and_inf_and_ranges_over_finite_values(tmp_path):
    image = np.full((8, 9, 3), 0.5, np.float32)
    image[0, 0, 0] = np.nan
    image[1, 1, 1] = np.inf
    image[2, 2, 2] = -np.inf
    image[3, 3] = [0.01, 12.0, 3.0]
    write_tif(tmp_path / "a.tif", image)
    info = inspect_file(tmp_path / "a.tif")
    assert info.format.startswith("TIFF (") and info.dtype == "float32"
    assert (info.nan_count, info.inf_count) == (1, 2)
    assert info.min == pytest.approx(0.01) and info.max == 12.0


def test_exr_format_names_compression_pixel_type_channels_and_storage(tmp_path):
    write_exr(tmp_path / "a.exr", np.full((6, 7, 3), 2.0, np.float32), pixel_type="float")
    info = inspect_file(tmp_path / "a.exr")
    assert info.format.startswith("OpenEXR (") and ", float, R/G/B, scanline)" in info.format
    assert (info.height, info.width, info.min, info.max) == (6, 7, 2.0, 2.0)


def test_all_nan_image_has_nan_range(tmp_path):
    write_tif(tmp_path / "nan.tif", np.full((3, 3, 1), np.nan, np.float32))
    info = inspect_file(tmp_path / "nan.tif")
    assert info.nan_count == 9 and math.isnan(info.min) and math.isnan(info.max)


def test_unreadable_files_are_input_errors(tmp_path):
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(InputError, match="empty.png: file is empty"):
        inspect_file(tmp_path / "empty.png")
    with pytest.raises(InputError, match="missing.exr"):
        inspect_file(tmp_path / "missing.exr")


def test_real_exr_samples_are_described(shared_data):
    sample = sorted((shared_data / "exr_openexr_images").rglob("*.exr"))[0]
    info = inspect_file(sample)
    assert info.format.startswith("OpenEXR (") and info.height > 0 and info.width > 0
    assert info.dtype == "float32"
