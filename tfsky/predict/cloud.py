"""Cloud cover of an all-sky frame from a two-class (clear sky / cloud) segmenter's output.

Only *valid* sky pixels count: those inside the camera mask (white = seen by
the lens), or, without a mask, those brighter than ``dark_level`` in some
channel (the black outside of a fisheye frame). On them:

* cloud fraction = cloud pixels / valid pixels, in percent (a cloud pixel has
  P(cloud) >= the job's threshold: softmax channel 1,
  `tfsky.predict.segment.SKY_CLASS`, is the cloud class of a cloud model);
* solid-angle cloud fraction: each pixel weighted by the solid angle it
  covers under a fisheye projection whose optical centre and horizon radius
  are fitted from the valid region (`FisheyeModel`); equidistant
  (``r = R * theta / 90 deg``) by default, or equisolid (equal areas, equal
  weights);
* okta 0-8 as the WMO defines it: 0 only for a completely clear sky and 8 only
  for a completely overcast one (within ``okta_tolerance_pp``), otherwise
  ``round(8 * fraction)`` clipped to 1..7;
* sky condition ``clear`` / ``partial`` / ``overcast`` from the okta
  (``clear_max_okta``, ``overcast_min_okta``).

A frame without any valid pixel has no cloud fraction: `cloud_cover` raises
an `InputError` saying so instead of dividing by zero.
"""

from __future__ import annotations

import dataclasses
import math
import re
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Optional

import numpy as np

from tfsky.errors import ConfigError, InputError

if TYPE_CHECKING:
    from tfsky.models.bundle import ModelInfo

Projection = Literal["equidistant", "equisolid"]
CONDITIONS = ("clear", "partial", "overcast")
OKTAS = 8


@dataclasses.dataclass
class CloudCoverConfig:
    """How cloud cover is read from a cloud model's output (the ``cloud:`` settings of `tfsky predict`).

    Args:
        camera_mask: Optional[Path]. Camera mask PNG (white = sky seen by the lens,
            the frames' size). Defaults to None (valid = brighter than ``dark_level``).
        dark_level: int. Without a mask, pixels whose every channel is <= this
            (on the 0..255 scale) are outside the lens. Defaults to 8.
        projection: str. Fisheye projection of the solid-angle weights:
            ``equidistant`` or ``equisolid``. Defaults to ``equidistant``.
        okta_tolerance_pp: float. A cloud fraction within this many percentage
            points of 0 % (100 %) is completely clear, 0 okta (overcast, 8 okta). Defaults to 0.5.
        clear_max_okta: int. Condition ``clear`` up to this okta. Defaults to 1.
        overcast_min_okta: int. Condition ``overcast`` from this okta. Defaults to 7.
    """

    camera_mask: Optional[Path] = None
    dark_level: int = 8
    projection: Projection = "equidistant"
    okta_tolerance_pp: float = 0.5
    clear_max_okta: int = 1
    overcast_min_okta: int = 7

    def validate(self) -> None:
        if self.camera_mask is not None and not Path(self.camera_mask).is_file():
            raise ConfigError("camera_mask", f"camera mask not found: {self.camera_mask}")
        if not 0 <= self.dark_level < 255:
            raise ConfigError("dark_level", f"must be in 0..254; got {self.dark_level}")
        if not 0 <= self.okta_tolerance_pp < 100 / OKTAS / 2:
            raise ConfigError("okta_tolerance_pp", f"must be in 0..{100 / OKTAS / 2} (half an okta); "
                              f"got {self.okta_tolerance_pp}")
        if not 0 <= self.clear_max_okta < self.overcast_min_okta <= OKTAS:
            raise ConfigError("overcast_min_okta", f"must satisfy 0 <= clear_max_okta ({self.clear_max_okta}) < "
                              f"overcast_min_okta ({self.overcast_min_okta}) <= {OKTAS}")


@dataclasses.dataclass(frozen=True)
class FisheyeModel:
    """An upward fisheye: optical centre ``(row, col)`` and horizon radius in pixels, fitted from a valid mask.

    The centre is the centroid of the valid region and the radius that of a
    disc of the same area (an ellipse of a cropped camera gets the radius of
    the equal-area circle).
    """

    centre: tuple[float, float]
    radius: float
    projection: Projection = "equidistant"

    @classmethod
    def fit(cls, valid: np.ndarray, projection: Projection = "equidistant") -> "FisheyeModel":
        rows, cols = np.nonzero(valid)
        if rows.size == 0:
            raise ValueError("no valid pixel to fit a fisheye model to")
        return cls((float(rows.mean()), float(cols.mean())), math.sqrt(rows.size / math.pi), projection)

    def solid_angle_weights(self, shape: tuple[int, int]) -> np.ndarray:
        """Float32 ``H x W`` solid angle per pixel relative to the zenith pixel's.

        Equidistant: ``r = R theta / (pi / 2)``, so ``dOmega / dA = sin(theta) / (theta f^2)``
        -> relative weight ``sin(theta) / theta``; pixels beyond the fitted horizon
        radius (the edge of a non-circular view) get the horizon's weight.
        Equisolid: equal weights.
        """
        if self.projection == "equisolid":
            return np.ones(shape, np.float32)
        rows, cols = np.ogrid[: shape[0], : shape[1]]
        distance = np.hypot(rows - self.centre[0], cols - self.centre[1]).astype(np.float32)
        theta = np.minimum(distance / self.radius, 1.0) * np.float32(math.pi / 2)
        return np.sinc(theta / np.pi).astype(np.float32)  # np.sinc(x) = sin(pi x) / (pi x)


def okta(fraction_pct: float, tolerance_pp: float = 0.5) -> int:
    """WMO okta of a cloud fraction in percent: 0 and 8 only for (within ``tolerance_pp``) clear / overcast."""
    if fraction_pct <= tolerance_pp:
        return 0
    if fraction_pct >= 100 - tolerance_pp:
        return OKTAS
    return int(min(max(round(fraction_pct / 100 * OKTAS), 1), OKTAS - 1))


def sky_condition(okta_value: int, cfg: CloudCoverConfig) -> str:
    """``clear`` / ``partial`` / ``overcast`` from an okta and the config's thresholds."""
    if okta_value <= cfg.clear_max_okta:
        return "clear"
    if okta_value >= cfg.overcast_min_okta:
        return "overcast"
    return "partial"


def valid_sky(image: np.ndarray, camera_mask: Optional[np.ndarray], dark_level: int = 8) -> np.ndarray:
    """Boolean ``H x W`` valid sky pixels: the camera mask, or pixels brighter than ``dark_level`` (0..255)."""
    if camera_mask is not None:
        return camera_mask
    scale = 257 if image.dtype == np.uint16 else 1
    return image.max(axis=-1) > dark_level * scale


def cloud_cover(
    cloud: np.ndarray, valid: np.ndarray, cfg: CloudCoverConfig, source: str | Path = "image"
) -> dict[str, object]:
    """The cloud-cover facts of one frame from its boolean cloud mask and valid-pixel mask.

    Returns:
        dict with ``cloud_fraction_pct``, ``cloud_fraction_solid_angle_pct``,
        ``okta``, ``sky_condition``, ``valid_pixels``, ``fisheye`` (fitted centre,
        radius, projection).

    Raises:
        InputError: the frame has no valid sky pixel (the cloud fraction is undefined).
    """
    count = int(np.count_nonzero(valid))
    if count == 0:
        raise InputError(source, "no valid sky pixel (outside the camera mask or dark): cloud fraction undefined")
    fraction = 100.0 * np.count_nonzero(cloud & valid) / count
    fisheye = FisheyeModel.fit(valid, cfg.projection)
    weights = fisheye.solid_angle_weights(valid.shape) * valid
    total = float(weights.sum())
    weighted = 100.0 * float(weights[cloud].sum()) / total if total > 0 else fraction
    value = okta(fraction, cfg.okta_tolerance_pp)
    return {
        "cloud_fraction_pct": round(fraction, 4),
        "cloud_fraction_solid_angle_pct": round(weighted, 4),
        "okta": value,
        "sky_condition": sky_condition(value, cfg),
        "valid_pixels": count,
        "fisheye": {"centre_row": round(fisheye.centre[0], 2), "centre_col": round(fisheye.centre[1], 2),
                    "horizon_radius": round(fisheye.radius, 2), "projection": fisheye.projection},
    }


_TIMESTAMP = re.compile(r"(\d{4})-?(\d{2})-?(\d{2})[T_ -]?(\d{2})[:-]?(\d{2})[:-]?(\d{2})")


def timestamp_from_name(name: str) -> Optional[str]:
    """ISO ``YYYY-MM-DDTHH:MM:SS`` parsed from a file name such as ``20121024_124151.jpg``; None if absent."""
    match = _TIMESTAMP.search(Path(name).stem)
    if not match:
        return None
    year, month, day, hour, minute, second = (int(part) for part in match.groups())
    if not (1 <= month <= 12 and 1 <= day <= 31 and hour < 24 and minute < 60 and second < 62):
        return None
    return f"{year:04d}-{month:02d}-{day:02d}T{hour:02d}:{minute:02d}:{second:02d}"


def is_cloud_model(info: "ModelInfo") -> bool:
    """A two-class segmenter trained on all-sky sources (softmax: 0 clear sky, 1 cloud)."""
    sources = (info.config or {}).get("data", {}).get("sources", [])
    return info.classes == 2 and any(source.get("kind") == "allsky_folder" for source in sources)


class FrameCover:
    """Cloud cover of the frames of one job: the camera mask read once, checked against each frame's size.

    Args:
        cfg: CloudCoverConfig. The settings.
        threshold: float. A pixel is cloud when P(cloud) >= this.
    """

    def __init__(self, cfg: CloudCoverConfig, threshold: float):
        from tfsky.data.allsky import read_camera_mask

        self.cfg, self.threshold = cfg, threshold
        self.camera_mask = read_camera_mask(Path(cfg.camera_mask)) if cfg.camera_mask else None

    def __call__(
        self, image: np.ndarray, cloud_prob: np.ndarray, source: str | Path
    ) -> tuple[np.ndarray, np.ndarray, dict[str, object]]:
        """``(cloud mask, valid mask, facts)`` of one frame; the facts carry the timestamp of its name.

        Raises:
            InputError: the camera mask has another size, or no pixel is valid sky.
        """
        if self.camera_mask is not None and self.camera_mask.shape != image.shape[:2]:
            height, width = self.camera_mask.shape
            raise InputError(source, f"frame is {image.shape[1]}x{image.shape[0]} but the camera mask "
                             f"{self.cfg.camera_mask} is {width}x{height}")
        valid = valid_sky(image, self.camera_mask, self.cfg.dark_level)
        cloud = (cloud_prob >= self.threshold) & valid
        facts = cloud_cover(cloud, valid, self.cfg, source)
        return cloud, valid, {**facts, "timestamp": timestamp_from_name(Path(source).name)}
