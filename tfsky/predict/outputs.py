"""The files `tfsky predict` writes for one image, and how a finished image is recognised.

For an image with output stem ``out/sub/name``:

* ``name_mask.png``: binary sky mask, 0 / 255 (probability >= threshold).
* ``name_prob.png`` (16-bit, probability x 65535) or ``name_prob.tif`` (float32).
* ``name_overlay.jpg``: the image with the mask tinted magenta at 50 % opacity.
* ``name.json``: the sidecar (sky fraction, size, tiles, timing, model id),
  written LAST: an image is complete when its sidecar and all other outputs exist.

A cloud model (`tfsky.models.bundle.ModelKind.CLOUD`) draws its cloud mask in
``name_mask.png`` and its cloud probability in ``name_prob.png``, adds
``name_classes.png`` (WSISEG's values: 255 cloud, 100 clear sky, 0 outside
the valid sky) and the ``cloud_cover`` facts to the sidecar; a folder of
frames also gets ``cloud_cover.csv`` (one row per frame) and
``cloud_cover.png`` (cloud fraction over the frames), see `write_cloud_series`;
in an object store (``s3://...``) these are objects under the prefix, built
from the sidecars there like the local files.

Every file goes through a temporary hidden sibling and a rename
(`tfsky.io.atomic`); temporaries a killed run left behind are removed by
`tfsky.io.atomic.remove_stale_temps` before the image is looked at again.

HDR images are tone-mapped for the overlay only, with Reinhard's global
operator: luminance ``L`` (Rec.709) is scaled so its log-average becomes 0.18,
compressed with ``Ld = Ls / (1 + Ls)``, colours are scaled by ``Ld / L``,
clipped to [0, 1] and gamma-encoded with exponent 1 / 2.2.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
from pathlib import Path
from typing import Any, Callable, Collection, Iterator, Literal, Optional

import cv2
import numpy as np

from tfsky.data.masks import sky_mask, sky_regions
from tfsky.data.transforms import is_hdr
from tfsky.io.atomic import atomic_path, write_json, write_text
from tfsky.io.images import luminance
from tfsky.io.stores import StorePath
from tfsky.io.writers import write_jpeg, write_png, write_tif

ProbFormat = Literal["png16", "tif"]
Restore = Optional[Callable[[np.ndarray], np.ndarray]]
OVERLAY_COLOUR = np.array([1.0, 0.0, 1.0], np.float32)  # magenta: stands out against blue sky and green ground
OVERLAY_OPACITY = 0.5
REINHARD_KEY = 0.18
GAMMA = 2.2
_BAND = 64  # rows converted at a time: temporaries of a few MB even for 8K images


def _tint_table() -> np.ndarray:
    """What `overlay`'s float blend makes of each 8-bit value of each channel under a 255 mask pixel: a
    ``cv2.LUT`` table (256 x 1 x 3), so an 8-bit photo is tinted by lookup, bit for bit (3x faster on 8K)."""
    alpha = np.float32(255) * np.float32(OVERLAY_OPACITY / 255)
    rgb = np.arange(256, dtype=np.float32)[:, None] / np.float32(255)
    return np.rint(255 * (rgb * (1 - alpha) + OVERLAY_COLOUR * alpha)).astype(np.uint8).reshape(256, 1, 3)


_TINT = _tint_table()


@dataclasses.dataclass(frozen=True)
class OutputPaths:
    """Where the outputs of one image go."""

    mask: Path
    prob: Path
    overlay: Path
    sidecar: Path
    classes: Optional[Path] = None

    @classmethod
    def for_stem(cls, stem: Path, prob_format: ProbFormat, cloud: bool = False) -> "OutputPaths":
        """Paths for output stem ``out/sub/name`` (no suffix); ``cloud`` adds the class mask."""
        prob_suffix = ".png" if prob_format == "png16" else ".tif"
        return cls(
            mask=stem.parent / f"{stem.name}_mask.png",
            prob=stem.parent / f"{stem.name}_prob{prob_suffix}",
            overlay=stem.parent / f"{stem.name}_overlay.jpg",
            sidecar=stem.parent / f"{stem.name}.json",
            classes=stem.parent / f"{stem.name}_classes.png" if cloud else None,
        )

    def named(self) -> dict[str, Path]:
        """``{output name: path}`` of every file but the sidecar."""
        names = {"mask": self.mask, "prob": self.prob, "overlay": self.overlay, "classes": self.classes}
        return {name: path for name, path in names.items() if path is not None}

    def __iter__(self) -> Iterator[Path]:
        """The files, the sidecar (written last: it marks the image complete) last."""
        return iter((*self.named().values(), self.sidecar))


@dataclasses.dataclass
class Maps:
    """The probability map as stored (uint16 x 65535 for ``_prob.png``, float32 for ``_prob.tif``) and the
    uint8 0/255 mask of one image: cheap to compute, slow to encode (`write_maps`)."""

    prob: np.ndarray
    mask: np.ndarray
    dropped: Optional[dict] = None  # with drop_enclosed: the enclosed sky regions taken out (`sky_regions`)

    @classmethod
    def of(cls, paths: OutputPaths, prob: np.ndarray, threshold: float, drop_enclosed: bool = False) -> "Maps":
        """The maps of sky probability ``prob`` [H, W] (pixels >= ``threshold`` are 255 in the mask; with
        ``drop_enclosed`` not those of sky regions that touch no border of the frame, `sky_mask`)."""
        stored = prob if paths.prob.suffix == ".tif" else _by_bands(prob, _to_uint16, np.uint16)
        mask = _by_bands(prob, lambda band: np.where(sky_mask(band, threshold), 255, 0), np.uint8)
        if not drop_enclosed:
            return cls(stored, mask)
        kept, dropped = sky_regions(mask > 0, 0.0)
        mask[~kept] = 0
        return cls(stored, mask, dropped.get("enclosed", {"regions": 0, "pixels": 0}))


def write_maps(paths: OutputPaths, maps: Maps) -> None:
    """Encode and write the probability map and the mask (already in their stored dtypes: no temporaries)."""
    if paths.prob.suffix == ".tif":
        write_tif(paths.prob, maps.prob)
    else:
        write_png(paths.prob, maps.prob)
    write_png(paths.mask, maps.mask)


def write_probability_png(path: Path, prob: np.ndarray) -> None:
    """The 16-bit PNG of probability ``prob`` [H, W] x 65535 (the ``_prob.png`` of ``tfsky predict``)."""
    write_png(path, _by_bands(prob, _to_uint16, np.uint16))


def write_overlay(paths: OutputPaths, shown: np.ndarray) -> None:
    """Write the uint8 RGB overlay drawn by `overlay`; ``shown`` is used up (encoded in place)."""
    write_jpeg(paths.overlay, shown, consume=True)


def write_sidecar(paths: OutputPaths, facts: dict[str, Any], mask: np.ndarray, threshold: float) -> dict[str, Any]:
    """Write the JSON sidecar LAST (it marks the image complete): ``facts`` plus sky fraction and output names."""
    sidecar = dict(
        facts,
        sky_fraction=np.count_nonzero(mask) / mask.size,
        threshold=threshold,
        outputs={name: p.name for name, p in paths.named().items()},
    )
    write_json(paths.sidecar, sidecar)
    return sidecar


def overlay(image: np.ndarray, mask: np.ndarray, restore: Restore = None, in_place: bool = False) -> np.ndarray:
    """uint8 RGB view of ``image`` with the 0/255 ``mask`` tinted in `OVERLAY_COLOUR` at `OVERLAY_OPACITY`.

    ``restore`` maps stored pixels back to the values read from the file (e.g.
    `ModelInputs.restore` for HDR kept in float16 model space); it is applied per row band.
    ``in_place`` draws into a uint8 RGB ``image`` itself (a batch job's writer owns it): no second
    image-sized buffer (3 bytes per pixel less for an 8K photo); other images get a new array.
    """
    restore = restore or (lambda pixels: pixels)
    sample = restore(image[::4, ::4])
    exposure = hdr_exposure(sample) if is_hdr(sample) else None
    drawable = in_place and image.dtype == np.uint8 and image.shape[2:] == (3,) and image.flags.writeable
    out = image if drawable else np.empty(image.shape[:2] + (3,), np.uint8)
    by_lookup = image.dtype == np.uint8 and image.shape[2:] == (3,)  # 8-bit RGB: stored as read, shown as is
    for row in range(0, image.shape[0], _BAND):
        band, band_mask = image[row : row + _BAND], mask[row : row + _BAND]
        tinted = band_mask == 255 if by_lookup else None
        if tinted is not None and np.count_nonzero(band_mask) == np.count_nonzero(
            tinted
        ):  # (by_lookup)  # a 0/255 band of a photo
            if out is not image:
                out[row : row + _BAND] = band
            np.copyto(out[row : row + _BAND], cv2.LUT(band, _TINT), where=tinted[..., None])
            continue
        rgb = display_rgb(restore(band), exposure)
        alpha = band_mask[..., None] * np.float32(OVERLAY_OPACITY / 255)
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


def hdr_exposure(pixels: np.ndarray) -> float:
    """Reinhard's exposure: key 0.18 over the log-average luminance of ``pixels`` (e.g. a subsample)."""
    lum = luminance(_as_rgb(pixels))
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


CLASS_PNG_VALUES = {"outside": 0, "clear": 100, "cloud": 255}  # WSISEG's annotation values
SERIES_CSV, SERIES_PLOT = "cloud_cover.csv", "cloud_cover.png"
SERIES_COLUMNS = (
    "file",
    "timestamp",
    "cloud_fraction_pct",
    "cloud_fraction_solid_angle_pct",
    "okta",
    "sky_condition",
    "valid_pixels",
)


def write_class_mask(paths: OutputPaths, cloud: np.ndarray, valid: np.ndarray) -> None:
    """``name_classes.png``: 255 cloud, 100 clear sky, 0 outside the valid sky (as WSISEG annotations)."""
    classes = np.where(
        valid, np.where(cloud, CLASS_PNG_VALUES["cloud"], CLASS_PNG_VALUES["clear"]), CLASS_PNG_VALUES["outside"]
    ).astype(np.uint8)
    assert paths.classes is not None  # a cloud model's outputs
    write_png(paths.classes, classes)


def job_sidecars(out_dir: Path | StorePath, sources: Collection[str]) -> Iterator[dict]:
    """The JSON sidecars in ``out_dir`` (searched recursively, in path order) of the images ``sources``.

    What a job's summary files (`write_cloud_series`, the classifier's table) are built from, so that
    a re-run's skipped images and the images of Ray workers are listed too. Other JSON files there
    are passed over. ``out_dir`` may be an object-store prefix (read back from the store).
    """
    paths: Iterator[Path | StorePath] = out_dir.rglob("*.json")
    for path in sorted(paths):
        if path.name.startswith("."):
            continue
        try:
            facts = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            continue  # not a sidecar of this job
        if isinstance(facts, dict) and facts.get("source") in sources:
            yield facts


def write_cloud_series(
    out_dir: Path | StorePath, sources: Collection[str]
) -> Optional[tuple[Path | StorePath, Path | StorePath]]:
    """``cloud_cover.csv`` and ``cloud_cover.png`` in ``out_dir`` from the sidecars there of the frames ``sources``.

    Rows are in time order when every name carries a timestamp, else in file-name order.
    Returns the two paths, or None when no such sidecar holds cloud cover.
    """
    rows = []
    for facts in job_sidecars(out_dir, sources):
        cover = facts.get("cloud_cover")
        if cover:
            rows.append(
                {
                    "file": facts["source"],
                    "timestamp": cover.get("timestamp") or "",
                    **{key: cover[key] for key in SERIES_COLUMNS[2:]},
                }
            )
    if not rows:
        return None
    rows.sort(key=lambda row: (row["timestamp"] or "", row["file"]))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, SERIES_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    csv_path, plot_path = out_dir / SERIES_CSV, out_dir / SERIES_PLOT
    write_text(csv_path, buffer.getvalue())
    _plot_series(rows, plot_path)
    return csv_path, plot_path


def _plot_series(rows: list[dict], path: Path | StorePath) -> None:
    """Cloud fraction (pixels and solid angle) per frame, in time order when the names carry timestamps."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(6.0, min(16.0, 0.08 * len(rows) + 4)), 3.2))
    positions = range(len(rows))
    ax.plot(positions, [r["cloud_fraction_pct"] for r in rows], "-o", markersize=3, label="cloud fraction (pixels)")
    ax.plot(positions, [r["cloud_fraction_solid_angle_pct"] for r in rows], "--", label="cloud fraction (solid angle)")
    timed = all(r["timestamp"] for r in rows)
    ax.set_xlabel("frame (time order)" if timed else "frame (file-name order)")
    ax.set_ylabel("cloud fraction (%)")
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
