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

from tfsky.data.labelled import resized_rgb8
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
    height = max(1, round(image.shape[0] * THUMB_WIDTH / image.shape[1]))
    write_jpeg(target, resized_rgb8(image, THUMB_WIDTH, height), quality=85)
    return target


def warm_thumbnails(jobs: Iterable[tuple[Path, Path]]) -> threading.Thread:
    """Make the missing thumbnails of ``(manifest, frame path)`` jobs in a background thread."""
    jobs = list(jobs)
    thread = threading.Thread(target=lambda: [ensure_thumbnail(m, f) for m, f in jobs], daemon=True,
                              name="tfsky-thumbnails")
    thread.start()
    return thread
