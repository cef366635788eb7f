"""Reading and writing images and masks (LDR, HDR .exr/.hdr/.tif), always atomically."""

from tfsky.io.images import (
    DEFAULT_MAX_PIXELS,
    REC709_LUMA,
    SUPPORTED_SUFFIXES,
    image_size,
    is_image_file,
    luminance,
    luminance_weights,
    read_image,
    read_mask,
)
from tfsky.io.inspect import FileInfo, inspect_file
from tfsky.io.writers import write_exr, write_jpeg, write_mask_png, write_png, write_tif

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "REC709_LUMA",
    "SUPPORTED_SUFFIXES",
    "FileInfo",
    "image_size",
    "inspect_file",
    "is_image_file",
    "luminance",
    "luminance_weights",
    "read_image",
    "read_mask",
    "write_exr",
    "write_jpeg",
    "write_mask_png",
    "write_png",
    "write_tif",
]
