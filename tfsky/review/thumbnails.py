"""Thumbnails of stream frames, made once and kept beside the manifest.

The review page shows hundreds of frames at a time; sending full 1280x720
webcam frames would make the first paint seconds slower, so each frame is
decoded once, scaled to ``THUMB_WIDTH`` pixels and written (atomically) to
``<manifest folder>/thumbs/<frame>.jpg``. A thumbnail older than its frame is
made again. With a camera sky mask (`camera_mask_of`) a second thumbnail
shows the mask tinted over the frame (``thumbs/skymask/<frame>.jpg``), made
again when the frame or the mask is newer.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Iterable, Optional

import cv2

from tfsky.data.labelled import resized_rgb8
from tfsky.data.streams import Stream
from tfsky.errors import InputError
from tfsky.io.images import read_image, read_mask
from tfsky.io.writers import write_jpeg
from tfsky.predict.outputs import overlay

THUMB_WIDTH = 192
THUMBS_FOLDER = "thumbs"
SKYMASK_FOLDER = "skymask"


def thumbnail_path(manifest: Path, frame_file: str) -> Path:
    return manifest.parent / THUMBS_FOLDER / f"{frame_file}.jpg"


def skymask_thumbnail_path(manifest: Path, frame_file: str) -> Path:
    return manifest.parent / THUMBS_FOLDER / SKYMASK_FOLDER / f"{frame_file}.jpg"


def camera_mask_of(stream: Stream) -> Optional[tuple[Path, str]]:
    """The stream's camera sky mask and where it came from: learnt (`tfsky streams skymask`) first, else imported."""
    if stream.skymask:
        return Path(stream.skymask["mask"]), f"learnt from {stream.skymask['frames_used']} frames"
    return (stream.mask, "imported with the stream") if stream.mask else None


def ensure_thumbnail(manifest: Path, frame_path: Path, camera_mask: Optional[Path] = None) -> Optional[Path]:
    """The cached thumbnail of ``frame_path``, made if missing or stale; None when the frame or mask is unreadable.

    With ``camera_mask`` the thumbnail shows that mask tinted over the frame (`overlay`'s colours).
    """
    target = (skymask_thumbnail_path if camera_mask else thumbnail_path)(manifest, frame_path.name)
    try:
        newest_input = max(path.stat().st_mtime for path in (frame_path, camera_mask) if path)
        if target.is_file() and target.stat().st_mtime >= newest_input:
            return target
        image = read_image(frame_path)
        mask = read_mask(camera_mask) if camera_mask else None
    except (OSError, InputError):
        return None
    height = max(1, round(image.shape[0] * THUMB_WIDTH / image.shape[1]))
    small = resized_rgb8(image, THUMB_WIDTH, height)
    if mask is not None:
        small = overlay(small, 255 * cv2.resize(mask, (THUMB_WIDTH, height), interpolation=cv2.INTER_NEAREST))
    write_jpeg(target, small, quality=85)
    return target


def warm_thumbnails(jobs: Iterable[tuple[Path, Path]]) -> threading.Thread:
    """Make the missing thumbnails of ``(manifest, frame path)`` jobs in a background thread."""
    jobs = list(jobs)
    thread = threading.Thread(
        target=lambda: [ensure_thumbnail(m, f) for m, f in jobs], daemon=True, name="tfsky-thumbnails"
    )
    thread.start()
    return thread
