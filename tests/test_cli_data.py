"""``tfsky data inspect`` and ``tfsky data masks``: output lines, exit codes, no tracebacks."""

from __future__ import annotations

import json

import numpy as np
import tifffile

from tfsky.io.images import read_mask


def test_inspect_prints_one_line_per_file(cli, shared_data):
    exr = shared_data / "exr_openexr_images" / "MtTamNorth.exr"
    hdr = shared_data / "hdr_polyhaven_1k" / "quarry_01_1k.hdr"
    mask = shared_data / "skyfinder_webcams" / "623-mask.png"
    result = cli("data", "inspect", exr, hdr, mask)
    assert result.exit_code == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 3
    assert lines[0].startswith(f"{exr}  OpenEXR (PIZ, half, Y/RY/BY, scanline)  1198x796x3  float32  min=")
    assert lines[1].startswith(f"{hdr}  Radiance HDR  1024x512x3  float32  min=")
    assert "max=86528" in lines[1]
    assert lines[2] == f"{mask}  PNG  1280x720x1  uint8  min=0 max=255  nan=0 inf=0"


def test_inspect_counts_nonfinite_values(cli, tmp_path):
    path = tmp_path / "nan.tif"
    tifffile.imwrite(path, np.array([[1.0, np.nan], [np.inf, -2.0]], np.float32))
    result = cli("data", "inspect", path)
    assert result.exit_code == 0
    assert result.stdout.strip() == f"{path}  TIFF (none)  2x2x1  float32  min=-2 max=1  nan=1 inf=1"


def test_inspect_reports_bad_files_and_continues(cli, shared_data, tmp_path):
    good = shared_data / "skyfinder_webcams" / "623-mask.png"
    (tmp_path / "fake.png").write_text("not an image")
    (tmp_path / "empty.exr").write_bytes(b"")
    result = cli("data", "inspect", tmp_path / "fake.png", good, tmp_path / "missing.jpg", tmp_path / "empty.exr")
    assert result.exit_code == 1
    assert result.stdout.count("\n") == 1 and result.stdout.startswith(str(good))
    assert result.stderr.splitlines() == [
        f"{tmp_path / 'fake.png'}: not a .png image (unrecognised content)",
        f"{tmp_path / 'missing.jpg'}: file not found",
        f"{tmp_path / 'empty.exr'}: file is empty (0 bytes)",
        "3 of 4 files could not be read",
    ]
    assert "Traceback" not in result.stdout + result.stderr


def test_masks_writes_pngs_and_reports_the_missing_image(cli, shared_data, tmp_path):
    root = shared_data / "coco" / "sahi_terrain"
    result = cli(
        "data", "masks", root / "terrain_all_coco.json", "--images", root, "--out", tmp_path,
        "--positive", "human", "--negative", "car",
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    assert result.stdout.strip() == f"wrote 2 masks to {tmp_path}, skipped 1"
    assert result.stderr.strip() == f"skipped terrain3.png: image file not found: {root.resolve() / 'terrain3.png'}"
    assert read_mask(tmp_path / "terrain2.png").shape == (682, 1024)


def test_masks_exit_1_when_nothing_was_written(cli, tmp_path):
    ann = tmp_path / "ann.json"
    images = [{"id": 1, "file_name": "gone.jpg", "height": 4, "width": 4}]
    ann.write_text(json.dumps({"images": images, "annotations": [], "categories": [{"id": 1, "name": "sky"}]}))
    result = cli("data", "masks", ann, "--images", tmp_path, "--out", tmp_path / "out")
    assert result.exit_code == 1
    assert result.stdout.strip() == f"wrote 0 masks to {tmp_path / 'out'}, skipped 1"


def test_masks_unknown_category_is_one_error_line(cli, shared_data, tmp_path):
    root = shared_data / "coco" / "sahi_terrain"
    result = cli("data", "masks", root / "terrain1_coco.json", "--images", root, "--out", tmp_path)
    assert result.exit_code == 1
    assert result.stderr == (
        f"Error: {root / 'terrain1_coco.json'}: unknown category 'sky' (categories in the file: 'human')\n"
    )
    assert list(tmp_path.iterdir()) == []
