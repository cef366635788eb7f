"""The files `tfsky predict` writes for one image, and how a finished image is recognised.

For an image with output stem ``out/sub/name``:

* ``name_mask.png``: binary sky mask, 0 / 255 (probability >= threshold).
* ``name_prob.png`` (16-bit, probability x 65535) or ``name_prob.tif`` (float32).
* ``name_overlay.jpg``: the image with the mask tinted magenta at 50 % opacity.
* ``name.json``: the sidecar (sky fraction, size, tiles, timing, model id),
  written LAST: an image is complete when its sidecar and all other outputs exist.

Every file goes through a temporary hidden sibling and a rename
(`tfsky.io.atomic`); temporaries a killed run left behind are removed by
`remove_stale_temps` before the image is looked at again.

HDR images are tone-mapped for the overlay only, with Reinhard's global
operator: luminance ``L`` (Rec.709) is scaled so its log-average becomes 0.18,
compressed with ``Ld = Ls / (1 + Ls)``, colours are scaled by ``Ld / L``,
clipped to [0, 1] and gamma-encoded with exponent 1 / 2.2.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Literal

import numpy as np

from tfsky.data.transforms import is_hdr
from tfsky.io.atomic import write_json
from tfsky.io.images import luminance
from tfsky.io.writers import write_jpeg, write_mask_png, write_png, write_tif

ProbFormat = Literal["png16", "tif"]
OVERLAY_COLOUR = np.array([1.0, 0.0, 1.0], np.float32)  # magenta: stands out against blue sky and green ground
OVERLAY_OPACITY = 0.5
REINHARD_KEY = 0.18
GAMMA = 2.2
_BAND = 512  # rows converted at a time, so no full-size float temporary is made


@dataclasses.dataclass(frozen=True)
class OutputPaths:
    """Where the outputs of one image go."""

    mask: Path
    prob: Path
    overlay: Path
    sidecar: Path

    @classmethod
    def for_stem(cls, stem: Path, prob_format: ProbFormat) -> "OutputPaths":
        """Paths for output stem ``out/sub/name`` (no suffix)."""
        prob_suffix = ".png" if prob_format == "png16" else ".tif"
        return cls(
            mask=stem.parent / f"{stem.name}_mask.png",
            prob=stem.parent / f"{stem.name}_prob{prob_suffix}",
            overlay=stem.parent / f"{stem.name}_overlay.jpg",
            sidecar=stem.parent / f"{stem.name}.json",
        )

    def all(self) -> tuple[Path, ...]:
        return self.mask, self.prob, self.overlay, self.sidecar

    def complete(self) -> bool:
        """True when a previous run finished this image (the sidecar is written last)."""
        return all(path.is_file() for path in self.all())


def remove_stale_temps(paths: OutputPaths) -> None:
    """Delete temporaries of these outputs left by a killed run (hidden ``.name.*.part.ext`` siblings)."""
    for path in paths.all():
        for stale in path.parent.glob(f".{path.stem}.*.part{path.suffix}"):
            stale.unlink(missing_ok=True)


def write_outputs(
    paths: OutputPaths, image: np.ndarray, prob: np.ndarray, threshold: float, sidecar: dict[str, Any]
) -> dict[str, Any]:
    """Write mask, probability map, overlay and finally the sidecar (completed with sky_fraction).

    Args:
        paths: OutputPaths. Destinations.
        image: np.ndarray. The input image [H, W, C] as read (LDR integers or HDR float32).
        prob: np.ndarray. Sky probability [H, W], float32 in [0, 1].
        threshold: float. Probability at or above which a pixel is sky.
        sidecar: dict. Facts to record; ``sky_fraction`` and ``outputs`` are added.

    Returns:
        The sidecar as written.
    """
    mask = prob >= threshold
    write_mask_png(paths.mask, mask)
    if paths.prob.suffix == ".tif":
        write_tif(paths.prob, prob)
    else:
        write_png(paths.prob, _by_bands(prob, _to_uint16, np.uint16))
    write_jpeg(paths.overlay, overlay(image, mask))
    sidecar = dict(sidecar, sky_fraction=float(mask.mean()), threshold=threshold,
                   outputs={name: p.name for name, p in zip(("mask", "prob", "overlay"), paths.all())})
    write_json(paths.sidecar, sidecar)
    return sidecar


def overlay(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """uint8 RGB view of ``image`` with ``mask`` tinted in `OVERLAY_COLOUR` at `OVERLAY_OPACITY`."""
    exposure = hdr_exposure(image) if is_hdr(image) else None
    out = np.empty(image.shape[:2] + (3,), np.uint8)
    for row in range(0, image.shape[0], _BAND):
        rgb = display_rgb(image[row : row + _BAND], exposure)
        alpha = mask[row : row + _BAND, :, None].astype(np.float32) * OVERLAY_OPACITY
        out[row : row + _BAND] = np.rint(255 * (rgb * (1 - alpha) + OVERLAY_COLOUR * alpha))
    return out


def display_rgb(pixels: np.ndarray, exposure: float | None = None) -> np.ndarray:
    """Float32 RGB in [0, 1] for display: integers scaled, grey repeated, alpha dropped, HDR tone-mapped.

    ``exposure`` (from `hdr_exposure` of the whole image) is required for HDR pixels.
    """
    rgb = _as_rgb(pixels)
    if not is_hdr(rgb):
        return rgb.astype(np.float32) / np.iinfo(rgb.dtype).max
    lum = luminance(rgb)
    scaled = exposure * lum
    gain = np.divide(scaled / (1 + scaled), lum, out=np.zeros_like(lum), where=lum > 0)
    return np.clip(rgb * gain, 0, 1) ** (1 / GAMMA)


def hdr_exposure(image: np.ndarray, step: int = 4) -> float:
    """Reinhard's exposure: key 0.18 over the log-average luminance (estimated on every ``step``-th pixel)."""
    lum = luminance(_as_rgb(image[::step, ::step]))
    return float(REINHARD_KEY / np.exp(np.mean(np.log(1e-6 + np.maximum(lum, 0)))))


def _as_rgb(pixels: np.ndarray) -> np.ndarray:
    """The colour channels of ``pixels``: RGB kept (alpha dropped), grey repeated three times."""
    return pixels[..., :3] if pixels.shape[-1] >= 3 else np.repeat(pixels[..., :1], 3, axis=-1)


def _to_uint16(prob: np.ndarray) -> np.ndarray:
    return np.rint(np.clip(prob, 0, 1) * 65535)


def _by_bands(array: np.ndarray, convert, dtype) -> np.ndarray:
    """Apply ``convert`` to row bands of ``array`` into a new array of ``dtype`` (bounded temporaries)."""
    out = np.empty(array.shape, dtype)
    for row in range(0, array.shape[0], _BAND):
        out[row : row + _BAND] = convert(array[row : row + _BAND])
    return out
