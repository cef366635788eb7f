"""Thumbnails of stream frames, made once and kept beside the manifest.

The review page shows hundreds of frames at a time; sending full 1280x720
webcam frames would make the first paint seconds slower, so each frame is
decoded once, scaled to ``THUMB_WIDTH`` pixels and written (atomically) to
``<manifest folder>/thumbs/<frame>.jpg``. A thumbnail older than its frame is
made again.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Iterable, Optional

import cv2
import numpy as np

from tfsky.errors import InputError
from tfsky.io.images import read_image
from tfsky.io.writers import write_jpeg

THUMB_WIDTH = 192
THUMBS_FOLDER = "thumbs"


def thumbnail_path(manifest: Path, frame_file: str) -> Path:
    return manifest.parent / THUMBS_FOLDER / f"{frame_file}.jpg"


def ensure_thumbnail(manifest: Path, frame_path: Path) -> Optional[Path]:
    """The cached thumbnail of ``frame_path``, made if missing or stale; None when the frame is unreadable."""
    target = thumbnail_path(manifest, frame_path.name)
    try:
        if target.is_file() and target.stat().st_mtime >= frame_path.stat().st_mtime:
            return target
        image = read_image(frame_path)
    except (OSError, InputError):
        return None
    write_jpeg(target, small_rgb8(image, THUMB_WIDTH), quality=85)
    return target


def small_rgb8(image: np.ndarray, width: int) -> np.ndarray:
    """``image`` (8/16-bit RGB) area-scaled to ``width`` pixels wide, as uint8."""
    height = max(1, round(image.shape[0] * width / image.shape[1]))
    small = cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA)
    if small.dtype == np.uint16:
        small = (small // 257).astype(np.uint8)
    return small


def warm_thumbnails(jobs: Iterable[tuple[Path, Path]]) -> threading.Thread:
    """Make the missing thumbnails of ``(manifest, frame path)`` jobs in a background thread."""
    jobs = list(jobs)
    thread = threading.Thread(target=lambda: [ensure_thumbnail(m, f) for m, f in jobs], daemon=True,
                              name="tfsky-thumbnails")
    thread.start()
    return thread
