"""The review page's model panels for one frame: segmenter overlay, translation, sky-only composite.

With a segmenter the page shows where it finds the sky (`overlay`); with a
translator the frame in the target weather; with both, the composite that
keeps every non-sky pixel of the frame and takes only the sky from the
translation (`tfsky.predict.translate.composite`, feathered edge). Panels are
made on first request, all of one frame at once (one decode, one segmentation),
and cached as JPEGs in ``<manifest folder>/demo/``. One lock runs one model
call at a time: the server's threads share the models.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Optional

import numpy as np

from tfsky.data.masks import sky_mask
from tfsky.io.images import read_image
from tfsky.io.writers import write_jpeg
from tfsky.predict.outputs import overlay
from tfsky.predict.segment import TiledSegmenter
from tfsky.predict.translate import TiledTranslator, composite, feathered_sky_weight, to_uint8

DEMO_FOLDER = "demo"


class FrameDemo:
    """The models behind the panels (either may be None) and the composite's feather in pixels."""

    def __init__(self, segmenter: Optional[Path] = None, translator: Optional[Path] = None, feather: float = 8.0):
        self.segmenter = TiledSegmenter.load(segmenter) if segmenter else None
        self.translator = TiledTranslator.load(translator) if translator else None
        self.feather = feather
        self._lock = threading.Lock()

    @property
    def panels(self) -> list[str]:
        """The panel names these models can make, in display order."""
        names = ["overlay"] if self.segmenter else []
        names += ["translated"] if self.translator else []
        return names + (["composite"] if self.segmenter and self.translator else [])

    def panel(self, manifest: Path, frame_path: Path, name: str) -> Path:
        """The cached JPEG of panel ``name`` for a frame, made (with its sibling panels) if missing or stale."""
        target = panel_path(manifest, frame_path.name, name)
        if target.is_file() and target.stat().st_mtime >= frame_path.stat().st_mtime:
            return target
        with self._lock:
            for made, pixels in self._make(frame_path).items():
                write_jpeg(panel_path(manifest, frame_path.name, made), pixels, quality=90)
        return target

    def _make(self, frame_path: Path) -> dict[str, np.ndarray]:
        image = read_image(frame_path)
        made = {}
        if self.segmenter:
            self.segmenter.check(image, frame_path)
            sky = self.segmenter.sky_probability(image)
            made["overlay"] = overlay(image, np.where(sky_mask(sky), np.uint8(255), np.uint8(0)))
        if self.translator:
            translated = self.translator.translate(image)
            made["translated"] = to_uint8(translated)
            if self.segmenter:
                made["composite"] = composite(image, translated, feathered_sky_weight(sky, self.feather))
        return made


def panel_path(manifest: Path, frame_file: str, name: str) -> Path:
    return manifest.parent / DEMO_FOLDER / f"{frame_file}.{name}.jpg"
