"""Read images and masks into numpy arrays, refusing bad files with one clear error.

Every reader returns ``H x W x C`` in RGB channel order:

- LDR (``.jpg .jpeg .png .bmp .webp`` and integer ``.tif``): ``uint8`` or
  ``uint16``, exactly as stored. JPEG is decoded by Pillow, which raises on a
  truncated file (OpenCV would only print a warning and pad the image with
  grey); the other LDR formats by OpenCV. EXIF orientation is NOT applied:
  pixels come back as stored, which is how label masks are aligned.
- HDR (``.exr``, ``.hdr``/``.pic``, float ``.tif``): ``float32`` linear values.
  ``.exr`` is read with OpenEXR 3 (scanline or tiled, level 0 of mip-maps; any
  compression; half, float or uint channels). Luminance/chroma files
  (``Y``, ``RY``, ``BY``; chroma usually subsampled 2x2) are converted like
  OpenEXR's ``RgbaInputFile``: chroma is upsampled (nearest: sample ``i`` sits
  on pixel ``i * sampling``), then ``R = (RY + 1) Y``, ``B = (BY + 1) Y``,
  ``G = (Y - R yw_r - B yw_b) / yw_g``, with the luminance weights ``yw``
  derived from the file's ``chromaticities`` attribute, or Rec.709
  ``(0.2126, 0.7152, 0.0722)`` when it has none. A ``Y``-only file is grey.
  The returned array covers the file's data window.

Non-finite HDR values (``nonfinite="replace"``, the default): NaN -> 0,
+Inf -> the largest finite value in the image (0 if there is none), -Inf -> 0,
and a warning with the counts is logged on the ``tfsky`` logger.
``nonfinite="keep"`` returns the raw values (used by ``tfsky data inspect``).

The image size is read from the file header before anything is decoded, so an
oversized image (``max_pixels``, default 2**28) is refused without allocating it.
That limit replaces Pillow's own decompression-bomb check (about 1.8e8 pixels),
which is switched off so that ``max_pixels`` is the one limit for every format.
Every problem with a file raises `InputError` naming the file and the reason.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
from pathlib import Path
from typing import Callable, Iterator, Literal, Optional

import cv2
import numpy as np
import OpenEXR
import tifffile
from PIL import Image, UnidentifiedImageError

from tfsky.errors import InputError

DEFAULT_MAX_PIXELS = 2**28
REC709_LUMA = np.array([0.2126, 0.7152, 0.0722], dtype=np.float32)

_PIL_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}
_TIFF_SUFFIXES = {".tif", ".tiff"}
_RADIANCE_SUFFIXES = {".hdr", ".pic"}
SUPPORTED_SUFFIXES = frozenset(_PIL_SUFFIXES | _TIFF_SUFFIXES | _RADIANCE_SUFFIXES | {".exr"})

log = logging.getLogger("tfsky")

Image.MAX_IMAGE_PIXELS = None  # `max_pixels`, checked on the header, is tfsky's one size limit

Channels = Optional[Literal[1, 3, 4]]
# A decoded image before channel selection: colour (H x W x 1 or 3) and alpha (H x W) or None.
Decoded = tuple[np.ndarray, Optional[np.ndarray]]


def is_image_file(path: str | Path) -> bool:
    """True when ``path`` has a suffix tfsky can read (the content is not checked)."""
    return Path(path).suffix.lower() in SUPPORTED_SUFFIXES


def image_size(path: str | Path) -> tuple[int, int]:
    """``(height, width)`` of an image, read from its header without decoding the pixels.

    Raises:
        InputError: missing, empty, unsupported or unreadable file.
    """
    path = _checked_path(path)
    suffix = path.suffix.lower()
    with _decoder_errors(path, "header"):
        if suffix in _PIL_SUFFIXES:
            with Image.open(path) as im:
                return im.height, im.width
        if suffix in _TIFF_SUFFIXES:
            with tifffile.TiffFile(path) as tif:
                page = tif.pages.first
                return int(page.imagelength), int(page.imagewidth)
        if suffix == ".exr":
            (x0, y0), (x1, y1) = OpenEXR.File(str(path), header_only=True).header()["dataWindow"]
            return int(y1 - y0 + 1), int(x1 - x0 + 1)
    return _radiance_size(path)


def read_image(
    path: str | Path,
    *,
    channels: Channels = 3,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    nonfinite: Literal["replace", "keep"] = "replace",
) -> np.ndarray:
    """Decode an LDR or HDR image to ``H x W x C`` RGB (see the module docstring for dtypes).

    Args:
        path: str | Path. The image file.
        channels: int | None. ``None`` = as stored (1 for grey, 3 for colour,
            alpha dropped); 3 = grey expanded to RGB; 1 = luminance (OpenCV
            grey conversion for LDR, Rec.709 weights for HDR); 4 = RGB + alpha
            (opaque alpha added when the file has none). Defaults to 3.
        max_pixels: int. Refuse images with more pixels than this, checked on
            the header before decoding. Defaults to 2**28.
        nonfinite: str. ``replace`` NaN/Inf in HDR images (logged), or ``keep``
            them. Defaults to ``replace``.

    Raises:
        InputError: missing, empty, unsupported, corrupt or oversized file.
    """
    path = Path(path)
    height, width = image_size(path)
    if height * width > max_pixels:
        raise InputError(path, f"image has {height * width} pixels, over the limit of {max_pixels} (max_pixels)")
    color, alpha = _decoder_for(path)(path)
    if nonfinite == "replace" and color.dtype.kind == "f":
        color = _replace_nonfinite(color, path)
    return _select_channels(color, alpha, channels)


def read_mask(path: str | Path, *, threshold: int = 128, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Read a mask image as ``uint8`` ``H x W`` with values 0/1 (1 where grey >= ``threshold``).

    Colour masks are converted to grey, 16-bit masks scaled to 8 bits, 1-bit
    PNGs read as 0/255 first. ``threshold`` is on the 0..255 scale.

    Raises:
        InputError: unreadable file, or a floating-point (HDR) image.
    """
    gray = read_image(path, channels=1, max_pixels=max_pixels)[..., 0]
    if gray.dtype == np.uint16:
        gray = (gray // 257).astype(np.uint8)
    elif gray.dtype != np.uint8:
        raise InputError(path, f"a mask must be an 8- or 16-bit image, got {gray.dtype}")
    return (gray >= threshold).astype(np.uint8)


def luminance(rgb: np.ndarray) -> np.ndarray:
    """Rec.709 luminance ``H x W x 1`` of a float ``H x W x 3`` linear RGB image."""
    return (rgb @ REC709_LUMA.astype(rgb.dtype))[..., None]


def luminance_weights(chromaticities: Optional[tuple[float, ...]]) -> np.ndarray:
    """Luminance weights ``yw`` of RGB primaries (OpenEXR's ``computeYw``); Rec.709 when ``None``.

    ``chromaticities`` is ``(red x, red y, green x, green y, blue x, blue y, white x, white y)``.
    The weights scale each primary's XYZ so that R = G = B = 1 gives the white point with Y = 1.
    """
    if chromaticities is None:
        return REC709_LUMA
    xy = np.asarray(chromaticities, dtype=np.float64).reshape(4, 2)
    xyz = np.stack([xy[:, 0] / xy[:, 1], np.ones(4), (1 - xy[:, 0] - xy[:, 1]) / xy[:, 1]])
    return np.linalg.solve(xyz[:, :3], xyz[:, 3]).astype(np.float32)


# --- file checks and error translation -------------------------------------------------------


def link_problem(path: Path) -> Optional[str]:
    """Why ``path`` is a broken symbolic link (a loop, or a missing target), or None."""
    try:
        path.stat()
    except OSError as err:
        if err.errno == errno.ELOOP:
            return "symbolic link loop"
        if path.is_symlink():
            return f"broken symbolic link (its target {os.readlink(path)} does not exist)"
    return None


def _checked_path(path: str | Path) -> Path:
    path = Path(path)
    problem = link_problem(path)
    if problem:
        raise InputError(path, problem)
    if not path.exists():
        raise InputError(path, "file not found")
    if not path.is_file():
        raise InputError(path, "not a file")
    if path.stat().st_size == 0:
        raise InputError(path, "file is empty (0 bytes)")
    if not is_image_file(path):
        supported = " ".join(sorted(SUPPORTED_SUFFIXES))
        raise InputError(path, f"unsupported image format '{path.suffix}' (supported: {supported})")
    return path


@contextlib.contextmanager
def _decoder_errors(path: Path, what: str) -> Iterator[None]:
    """Turn any exception a third-party decoder raises on a bad file into an `InputError`.

    The decoders (Pillow, OpenCV, tifffile, OpenEXR) raise many unrelated
    exception types for bad input; only their calls are wrapped.
    """
    try:
        yield
    except InputError:
        raise
    except UnidentifiedImageError:
        raise InputError(path, f"not a {path.suffix} image (unrecognised content)") from None
    except Exception as err:  # noqa: BLE001 - see docstring
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise InputError(path, f"truncated or corrupt image ({what}: {reason})") from None


# --- decoders: each returns (colour H x W x 1|3, alpha H x W | None) -----------------------------


def _decode_jpeg(path: Path) -> Decoded:
    """JPEG via Pillow: ``load()`` raises on truncated data instead of padding it."""
    with _decoder_errors(path, "decode"), Image.open(path) as im:
        im.load()
        pixels = np.asarray(im if im.mode in ("L", "RGB") else im.convert("RGB"))
    return _split_alpha(pixels, bgr=False)


def _decode_opencv(path: Path) -> Decoded:
    """PNG/BMP/WebP via OpenCV, which keeps 16-bit samples (Pillow reduces 16-bit RGB to 8)."""
    with _decoder_errors(path, "decode"):
        pixels = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if pixels is None:
        raise InputError(path, "truncated or corrupt image (decoder returned nothing)")
    if pixels.dtype not in (np.uint8, np.uint16):
        raise InputError(path, f"unsupported sample type {pixels.dtype}")
    return _split_alpha(pixels, bgr=True)


def _decode_radiance(path: Path) -> Decoded:
    with _decoder_errors(path, "decode"):
        pixels = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if pixels is None:
        raise InputError(path, "truncated or corrupt Radiance HDR image")
    return _split_alpha(pixels.astype(np.float32, copy=False), bgr=True)


def _decode_tiff(path: Path) -> Decoded:
    """TIFF via tifffile: float samples are HDR (float32), uint8/uint16 are LDR."""
    with _decoder_errors(path, "decode"), tifffile.TiffFile(path) as tif:
        page = tif.pages[0]
        pixels, axes = page.asarray(), page.axes
    if "S" in axes and axes.index("S") < axes.index("Y"):  # planar configuration: samples first
        pixels = np.moveaxis(pixels, axes.index("S"), -1)
    if pixels.dtype.kind == "f":
        pixels = pixels.astype(np.float32, copy=False)
    elif pixels.dtype not in (np.uint8, np.uint16):
        raise InputError(path, f"unsupported TIFF sample type {pixels.dtype} (use uint8, uint16 or float)")
    return _split_alpha(pixels, bgr=False)


def _decode_exr(path: Path) -> Decoded:
    with _decoder_errors(path, "decode"):
        exr = OpenEXR.File(str(path), separate_channels=True)
        header = exr.header()
        planes = {name: ch.pixels for name, ch in exr.channels().items()}
        sampling = {name: (ch.ySampling, ch.xSampling) for name, ch in exr.channels().items()}
    del exr
    alpha = planes["A"].astype(np.float32) if "A" in planes else None
    if {"R", "G", "B"} <= planes.keys():  # the 8K panorama path: no float32 copy of each half plane
        return _stack_float32([planes.pop("R"), planes.pop("G"), planes.pop("B")]), alpha
    planes = {name: plane.astype(np.float32, copy=False) for name, plane in planes.items()}
    if "Y" in planes and {"RY", "BY"} <= planes.keys():
        shape = planes["Y"].shape
        ry = _upsample(planes["RY"], sampling["RY"], shape)
        by = _upsample(planes["BY"], sampling["BY"], shape)
        weights = luminance_weights(header.get("chromaticities"))
        return _yca_to_rgb(planes["Y"], ry, by, weights), alpha
    if "Y" in planes:
        return planes["Y"][..., None], alpha
    raise InputError(path, f"no R/G/B or Y channels in the OpenEXR file (found: {', '.join(sorted(planes))})")


def _decoder_for(path: Path) -> Callable[[Path], Decoded]:
    suffix = path.suffix.lower()
    if suffix in (".jpg", ".jpeg"):
        return _decode_jpeg
    if suffix in _TIFF_SUFFIXES:
        return _decode_tiff
    if suffix in _RADIANCE_SUFFIXES:
        return _decode_radiance
    return _decode_exr if suffix == ".exr" else _decode_opencv


def _radiance_size(path: Path) -> tuple[int, int]:
    """Parse the Radiance header: text lines, a blank line, then e.g. ``-Y 512 +X 1024``."""
    with open(path, "rb") as f:
        if not f.readline().startswith(b"#?"):
            raise InputError(path, f"not a {path.suffix} image (no #? Radiance signature)")
        for _ in range(1000):  # header lines are few; bound the loop on garbage input
            if f.readline().strip() == b"":
                break
        tokens = f.readline().split()
    if len(tokens) != 4 or not tokens[1].isdigit() or not tokens[3].isdigit():
        raise InputError(path, "truncated or corrupt image (no Radiance resolution line)")
    first, second = int(tokens[1]), int(tokens[3])
    return (first, second) if tokens[0].endswith(b"Y") else (second, first)


# --- pixel helpers ---------------------------------------------------------------------------


def _split_alpha(pixels: np.ndarray, *, bgr: bool) -> Decoded:
    """Split a decoded ``H x W [x C]`` array into colour (RGB or grey) and alpha."""
    if pixels.ndim == 2:
        pixels = pixels[..., None]
    count = pixels.shape[-1]
    alpha = pixels[..., count - 1] if count in (2, 4) else None
    color = pixels[..., :1] if count <= 2 else pixels[..., :3]
    if bgr and count == 3 and pixels.flags.c_contiguous:  # in place: no second copy of an 8K frame
        return cv2.cvtColor(pixels, cv2.COLOR_BGR2RGB, dst=pixels), alpha
    if bgr and color.shape[-1] == 3:
        color = color[..., ::-1]
    return np.ascontiguousarray(color), alpha


def _select_channels(color: np.ndarray, alpha: Optional[np.ndarray], channels: Channels) -> np.ndarray:
    if channels is None:
        return color
    if channels == 1:
        if color.shape[-1] == 1:
            return color
        if color.dtype.kind == "f":
            return luminance(color)
        return cv2.cvtColor(color, cv2.COLOR_RGB2GRAY)[..., None]
    rgb = np.repeat(color, 3, axis=-1) if color.shape[-1] == 1 else color
    if channels == 3:
        return rgb
    if channels == 4:
        if alpha is None:
            opaque = 1 if rgb.dtype.kind == "f" else np.iinfo(rgb.dtype).max
            alpha = np.full(rgb.shape[:2], opaque, dtype=rgb.dtype)
        return np.concatenate([rgb, alpha.astype(rgb.dtype)[..., None]], axis=-1)
    raise ValueError(f"channels must be None, 1, 3 or 4, got {channels!r}")


def _replace_nonfinite(image: np.ndarray, path: Path) -> np.ndarray:
    """NaN -> 0, +Inf -> largest finite value, -Inf -> 0, in place (an 8K image has no room for copies); log the counts."""
    finite = np.isfinite(image)
    if finite.all():
        return image
    largest = float(image.max(where=finite, initial=-np.inf)) if finite.any() else 0.0
    del finite
    nan, posinf = int(np.isnan(image).sum()), int(np.isposinf(image).sum())
    neginf = int(np.isneginf(image).sum())
    log.warning("%s: replaced %d NaN, %d +Inf, %d -Inf values", path.name, nan, posinf, neginf)
    return np.nan_to_num(image, copy=False, nan=0.0, posinf=largest, neginf=0.0)


def _stack_float32(planes: list[np.ndarray]) -> np.ndarray:
    """Stack channel planes (any float type) into one float32 ``H x W x C`` array, converting in place."""
    stacked = np.empty((*planes[0].shape, len(planes)), dtype=np.float32)
    for index, plane in enumerate(planes):
        stacked[..., index] = plane
    return stacked


def _upsample(plane: np.ndarray, sampling: tuple[int, int], shape: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour upsampling of a subsampled EXR channel to the full data window."""
    (sy, sx), (height, width) = sampling, shape
    return np.repeat(np.repeat(plane, sy, axis=0), sx, axis=1)[:height, :width]


def _yca_to_rgb(y: np.ndarray, ry: np.ndarray, by: np.ndarray, weights: np.ndarray) -> np.ndarray:
    red = (ry + 1) * y
    blue = (by + 1) * y
    green = (y - red * weights[0] - blue * weights[2]) / weights[1]
    return np.stack([red, green, blue], axis=-1)
