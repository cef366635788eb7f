"""Describe image files: format, size, sample type, value range and non-finite counts.

Backs ``tfsky data inspect``; reads pixels with ``nonfinite="keep"`` so NaN and
Inf values in HDR files are counted rather than silently replaced.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import OpenEXR
import tifffile
from PIL import Image

from tfsky.io.images import read_image


@dataclasses.dataclass(frozen=True)
class FileInfo:
    """What `inspect_file` found; ``min``/``max`` are over the finite values (NaN if there are none)."""

    path: Path
    format: str
    height: int
    width: int
    channels: int
    dtype: str
    min: float
    max: float
    nan_count: int
    inf_count: int


def inspect_file(path: str | Path) -> FileInfo:
    """Decode ``path`` and summarise it.

    Raises:
        InputError: the file cannot be read (same reasons as `read_image`).
    """
    path = Path(path)
    pixels = read_image(path, channels=None, nonfinite="keep")
    finite = pixels[np.isfinite(pixels)] if pixels.dtype.kind == "f" else pixels
    nan_count = int(np.isnan(pixels).sum()) if pixels.dtype.kind == "f" else 0
    return FileInfo(
        path=path,
        format=describe_format(path),
        height=pixels.shape[0],
        width=pixels.shape[1],
        channels=pixels.shape[2],
        dtype=str(pixels.dtype),
        min=float(finite.min()) if finite.size else float("nan"),
        max=float(finite.max()) if finite.size else float("nan"),
        nan_count=nan_count,
        inf_count=int(pixels.size - finite.size - nan_count),
    )


def describe_format(path: Path) -> str:
    """A short format name with the details that matter, e.g. ``OpenEXR (PIZ, half, Y/RY/BY, scanline)``.

    Call it on a file `read_image` has accepted; it re-reads only headers (and
    the EXR channels, whose pixel type OpenEXR exposes with the pixels only).
    """
    suffix = path.suffix.lower()
    if suffix == ".exr":
        return _describe_exr(path)
    if suffix in (".hdr", ".pic"):
        return "Radiance HDR"
    if suffix in (".tif", ".tiff"):
        with tifffile.TiffFile(path) as tif:
            return f"TIFF ({tif.pages.first.compression.name.lower()})"  # type: ignore[attr-defined]  # an enum
    with Image.open(path) as im:
        return str(im.format)


def _describe_exr(path: Path) -> str:
    exr = OpenEXR.File(str(path), separate_channels=True)
    header, channels = exr.header(), exr.channels()
    compression = header["compression"].name.removesuffix("_COMPRESSION")
    pixel_types = sorted({_EXR_PIXEL_TYPES.get(str(ch.pixels.dtype), str(ch.pixels.dtype)) for ch in channels.values()})
    names = "/".join(_exr_channel_order(channels))
    storage = "tiled" if header["type"] == OpenEXR.tiledimage else "scanline"
    return f"OpenEXR ({compression}, {'+'.join(pixel_types)}, {names}, {storage})"


_EXR_PIXEL_TYPES = {"float16": "half", "float32": "float", "uint32": "uint"}
_EXR_DISPLAY_ORDER = ("R", "G", "B", "A", "Y", "RY", "BY")


def _exr_channel_order(channels) -> list[str]:
    """Channel names in the conventional R/G/B/A, Y/RY/BY order (the file stores them sorted)."""
    known = [name for name in _EXR_DISPLAY_ORDER if name in channels]
    return known + sorted(name for name in channels if name not in _EXR_DISPLAY_ORDER)
