"""Cloud cover of an all-sky frame from a two-class (clear sky / cloud) segmenter's output.

Only *valid* sky pixels count: those inside the frame's camera mask (white =
seen by the lens), or, when no mask fits the frame, those brighter than
``dark_level`` in some channel (the black outside of a fisheye frame whose
camera blacks out what the lens does not see, like WSISEG's cropped second
camera). A folder may mix cameras and a served frame comes without a name, so
each frame gets the first candidate mask *that fits it* (`CameraMasks`): one
of its size in which at most ``mask_fit_dark_pct`` % of the pixels are dark
in the frame. The candidates are, by default, the masks of the cameras the
model was trained on (its all-sky sources' ``allsky.cameras``); on WSISEG a
camera-1 frame is dark on at most 0.54 % of ``mask_cam.png`` and a camera-2
frame on 20.4 %. ``camera_mask`` instead forces one mask on every frame. The sun
disc (`tfsky.predict.sun`) is taken out of the valid pixels unless ``sun`` is
off, as WSISEG leaves it undefined. On the valid pixels:

* cloud fraction = cloud pixels / valid pixels, in percent (a cloud pixel has
  P(cloud) >= the job's threshold: softmax channel 1,
  `tfsky.data.masks.SKY_CLASS`, is the cloud class of a cloud model);
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

from tfsky.data.masks import sky_mask
from tfsky.errors import ConfigError, InputError
from tfsky.predict.sun import find_sun, sun_facts

if TYPE_CHECKING:
    import tensorflow as tf

    from tfsky.models.bundle import ModelInfo

Projection = Literal["equidistant", "equisolid"]
CONDITIONS = ("clear", "partial", "overcast")
OKTAS = 8


@dataclasses.dataclass
class CloudCoverConfig:
    """How cloud cover is read from a cloud model's output (the ``cloud:`` settings of `tfsky predict`).

    Args:
        camera_mask: Optional[Path]. One camera mask PNG (white = sky seen by the
            lens, the frames' size) forced on every frame. Defaults to None
            (each frame gets the fitting mask of ``camera_masks``).
        camera_masks: Optional[list[Path]]. Candidate camera masks; each frame
            gets the first that fits it (module docstring). Defaults to None (the
            masks of the model's training cameras); ``[]``: every frame's valid
            sky is its pixels brighter than ``dark_level``.
        mask_fit_dark_pct: float. A mask fits a frame of its size when at most
            this share (%) of its sky pixels is dark in the frame. Defaults to 2.
        dark_level: int. Pixels whose every channel is <= this (on the 0..255
            scale) are dark: outside the lens when no mask fits. Defaults to 8.
        projection: str. Fisheye projection of the solid-angle weights:
            ``equidistant`` or ``equisolid``. Defaults to ``equidistant``.
        okta_tolerance_pp: float. A cloud fraction within this many percentage
            points of 0 % (100 %) is completely clear, 0 okta (overcast, 8 okta). Defaults to 0.5.
        clear_max_okta: int. Condition ``clear`` up to this okta. Defaults to 1.
        overcast_min_okta: int. Condition ``overcast`` from this okta. Defaults to 7.
        sun: bool. Find the sun disc and leave it out of the cloud fraction (`tfsky.predict.sun`;
            `tfsky predict` and `tfsky evaluate`, not the served ``predict_cloud`` signature). Defaults to True.
        sun_level: int. A sun pixel is >= this in every channel (0..255 scale). Defaults to 250.
        sun_margin_px: float. Pixels excluded beyond the saturated disc's radius (WSISEG camera 1: 3,
            camera 2's wider halo: 33). Defaults to 3.
    """

    camera_mask: Optional[Path] = None
    camera_masks: Optional[list[Path]] = None
    mask_fit_dark_pct: float = 2.0
    dark_level: int = 8
    projection: Projection = "equidistant"
    okta_tolerance_pp: float = 0.5
    clear_max_okta: int = 1
    overcast_min_okta: int = 7
    sun: bool = True
    sun_level: int = 250
    sun_margin_px: float = 3.0

    def validate(self) -> None:
        if self.camera_mask is not None and not Path(self.camera_mask).is_file():
            raise ConfigError("camera_mask", f"camera mask not found: {self.camera_mask}")
        for index, path in enumerate(self.camera_masks or []):
            if not Path(path).is_file():
                raise ConfigError(f"camera_masks[{index}]", f"camera mask not found: {path}")
        if not 0 <= self.mask_fit_dark_pct < 100:
            raise ConfigError("mask_fit_dark_pct", f"must be in [0, 100); got {self.mask_fit_dark_pct}")
        if not 0 <= self.dark_level < 255:
            raise ConfigError("dark_level", f"must be in 0..254; got {self.dark_level}")
        if not 0 <= self.okta_tolerance_pp < 100 / OKTAS / 2:
            raise ConfigError(
                "okta_tolerance_pp", f"must be in 0..{100 / OKTAS / 2} (half an okta); got {self.okta_tolerance_pp}"
            )
        if not 0 < self.sun_level <= 255:
            raise ConfigError("sun_level", f"must be in 1..255; got {self.sun_level}")
        if self.sun_margin_px < 0:
            raise ConfigError("sun_margin_px", f"must be >= 0; got {self.sun_margin_px}")
        if not 0 <= self.clear_max_okta < self.overcast_min_okta <= OKTAS:
            raise ConfigError(
                "overcast_min_okta",
                f"must satisfy 0 <= clear_max_okta ({self.clear_max_okta}) < "
                f"overcast_min_okta ({self.overcast_min_okta}) <= {OKTAS}",
            )


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


def bright_pixels(image: np.ndarray, dark_level: int) -> np.ndarray:
    """Boolean ``H x W``: pixels brighter than ``dark_level`` (0..255 scale) in some channel of a raw frame."""
    scale = 257 if image.dtype == np.uint16 else 1
    return image.max(axis=-1) > dark_level * scale


def cloud_cover(
    cloud: np.ndarray,
    valid: np.ndarray,
    cfg: CloudCoverConfig,
    source: str | Path = "image",
    lens: Optional[np.ndarray] = None,
) -> dict[str, object]:
    """The cloud-cover facts of one frame from its boolean cloud mask and valid-pixel mask.

    ``lens`` (defaults to ``valid``) is what the fisheye model is fitted to: the whole view, sun included.

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
    fisheye = FisheyeModel.fit(valid if lens is None else lens, cfg.projection)
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
        "fisheye": {
            "centre_row": round(fisheye.centre[0], 2),
            "centre_col": round(fisheye.centre[1], 2),
            "horizon_radius": round(fisheye.radius, 2),
            "projection": fisheye.projection,
        },
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


def training_camera_masks(info: Optional["ModelInfo"]) -> list[Path]:
    """The mask files of the all-sky cameras a model was trained on, in config order (the default candidates).

    Raises:
        InputError: one of them is not found here (a path of the training machine).
    """
    from tfsky.models.bundle import allsky_sources  # TensorFlow: not at import (configs import this module)

    paths: list[Path] = []
    for source in allsky_sources(info):
        for camera in (source.get("allsky") or {}).get("cameras", []):
            path = Path(camera["mask"]) if camera.get("mask") else None
            if path is None or path in paths:
                continue
            if not path.is_file():
                raise InputError(
                    path,
                    f"camera mask of the model's training camera {camera.get('name')} not found "
                    "(set predict.cloud.camera_masks or export.cloud.camera_masks to the masks on this "
                    "machine, or [] to use each frame's pixels brighter than dark_level)",
                )
            paths.append(path)
    return paths


@dataclasses.dataclass(frozen=True)
class CameraMask:
    """One camera mask: its file and its sky pixels (boolean ``H x W``, white = seen by the lens)."""

    path: Path
    sky: np.ndarray

    @classmethod
    def read(cls, path: str | Path) -> "CameraMask":
        from tfsky.data.allsky import read_camera_mask

        return cls(Path(path), read_camera_mask(Path(path)))

    def dark_share_pct(self, bright: np.ndarray) -> float:
        """Share (%) of this mask's sky pixels that are dark in a frame whose bright pixels are ``bright``;
        100 for a mask without sky (it fits no frame)."""
        sky = np.count_nonzero(self.sky)
        return 100.0 * np.count_nonzero(self.sky & ~bright) / sky if sky else 100.0


class CameraMasks:
    """The camera masks of one job and the valid sky they give each frame (module docstring).

    Args:
        cfg: CloudCoverConfig. ``camera_mask`` / ``camera_masks``, ``mask_fit_dark_pct``, ``dark_level``.
        info: Optional[ModelInfo]. The cloud model; its training cameras' masks are the default candidates.

    Raises:
        InputError: a mask is unreadable, or a training camera's mask (the default) is not found.
    """

    def __init__(self, cfg: CloudCoverConfig, info: Optional["ModelInfo"] = None):
        self.cfg = cfg
        self.forced = cfg.camera_mask is not None
        if cfg.camera_mask is not None:  # (forced)
            paths = [cfg.camera_mask]
        else:
            paths = cfg.camera_masks if cfg.camera_masks is not None else training_camera_masks(info)
        self.masks = [CameraMask.read(path) for path in paths]

    def valid_sky(self, image: np.ndarray, source: str | Path = "image") -> tuple[np.ndarray, Optional[CameraMask]]:
        """``(valid sky H x W, the mask it came from or None)`` of a raw frame.

        Raises:
            InputError: the forced ``camera_mask`` has another size than the frame.
        """
        if self.forced:
            mask = self.masks[0]
            if mask.sky.shape != image.shape[:2]:
                height, width = mask.sky.shape
                raise InputError(
                    source,
                    f"frame is {image.shape[1]}x{image.shape[0]} but the camera mask {mask.path} is {width}x{height}",
                )
            return mask.sky, mask
        bright = bright_pixels(image, self.cfg.dark_level)
        for mask in self.masks:
            if mask.sky.shape == bright.shape and mask.dark_share_pct(bright) <= self.cfg.mask_fit_dark_pct:
                return mask.sky, mask
        return bright, None

    def valid_sky_graph(self, image: "tf.Tensor") -> "tf.Tensor":
        """`valid_sky` in TensorFlow ops for the serving signature: ``image`` ``[H, W, C]`` float in 0..1.

        A raw value ``v`` is bright when ``v > dark_level`` (8-bit) or ``v > 257 dark_level`` (16-bit):
        the 0..1 threshold sits half a 16-bit step above, so both decodings give the integer comparison.
        """
        import tensorflow as tf

        bright = tf.reduce_max(image, axis=-1) > (self.cfg.dark_level + 0.5 / 257) / 255.0
        if self.forced:
            sky = tf.constant(self.masks[0].sky)
            tf.debugging.assert_equal(
                tf.shape(bright),
                tf.shape(sky),
                message=f"the frame's size differs from the camera mask {self.masks[0].path}",
            )
            return sky
        valid = bright
        for mask in reversed(self.masks):  # the first fitting mask wins
            if bright.shape.is_fully_defined() and tuple(bright.shape) != mask.sky.shape:
                continue  # traced for one frame size (not a serving signature): this mask cannot fit
            sky = tf.constant(mask.sky)
            sky_pixels = float(max(int(np.count_nonzero(mask.sky)), 1))

            def fits(sky=sky, sky_pixels=sky_pixels) -> tf.Tensor:
                dark = tf.reduce_sum(tf.cast(tf.logical_and(sky, tf.logical_not(bright)), tf.float32))
                return 100.0 * dark / sky_pixels <= self.cfg.mask_fit_dark_pct

            same_size = tf.reduce_all(tf.shape(bright) == tf.constant(mask.sky.shape, tf.int32))
            chosen = tf.cond(same_size, fits, lambda: tf.constant(False)) if mask.sky.any() else tf.constant(False)
            valid = tf.cond(chosen, lambda sky=sky: sky, lambda valid=valid: valid)
        return valid


class FrameCover:
    """Cloud cover of the frames of one job: the camera masks read once, each frame given its valid sky.

    Args:
        cfg: CloudCoverConfig. The settings.
        threshold: float. A pixel is cloud when P(cloud) >= this.
        info: Optional[ModelInfo]. The cloud model (its training cameras' masks are the default candidates).
    """

    def __init__(self, cfg: CloudCoverConfig, threshold: float, info: Optional["ModelInfo"] = None):
        self.cfg, self.threshold = cfg, threshold
        self.masks = CameraMasks(cfg, info)

    def sun(self, image: np.ndarray, lens: np.ndarray) -> tuple[np.ndarray, dict[str, object] | None]:
        """``(excluded sun pixels, the facts' sun entry)`` of a frame within its ``lens``; None when ``sun`` is off."""
        if not self.cfg.sun:
            return np.zeros(lens.shape, bool), None
        disc = find_sun(image, lens, self.cfg.sun_level, self.cfg.sun_margin_px)
        excluded = disc.mask(lens.shape) & lens if disc else np.zeros(lens.shape, bool)
        return excluded, sun_facts(disc, int(np.count_nonzero(excluded)))

    def __call__(
        self, image: np.ndarray, cloud_prob: np.ndarray, source: str | Path
    ) -> tuple[np.ndarray, np.ndarray, dict[str, object]]:
        """``(cloud mask, valid mask, facts)`` of one frame; the facts name the camera mask used (None: the
        frame's bright pixels), the sun left out of the valid mask and the timestamp of the frame's name.

        Raises:
            InputError: the forced camera mask has another size, or no pixel is valid sky.
        """
        lens, mask = self.masks.valid_sky(image, source)
        excluded, sun = self.sun(image, lens)
        valid = lens & ~excluded
        cloud = sky_mask(cloud_prob, self.threshold) & valid
        facts = cloud_cover(cloud, valid, self.cfg, source, lens=lens)
        return (
            cloud,
            valid,
            {
                **facts,
                "camera_mask": str(mask.path) if mask else None,
                "sun": sun,
                "timestamp": timestamp_from_name(Path(source).name),
            },
        )
