"""The ``data:`` section of a config: label sources, the cache, patches, augmentation.

`tfsky data prepare` reads it alone (``load_config(DataConfig, path, overrides,
section="data")``); training configs nest it as their ``data:`` section, so a
model is always trained from the cache its config describes.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Literal, Optional

from tfsky.data.allsky import AllSkyConfig
from tfsky.data.transforms import Preprocess
from tfsky.errors import ConfigError
from tfsky.io.images import DEFAULT_MAX_PIXELS

SIZE_MULTIPLE = 32  # the segmenter's U-Net downsamples 5 times: patch and tile sides are multiples of 2**5
SKY_CATEGORIES = ("sky",)  # the label categories that are sky unless a source or command names others

SourceKind = Literal["mask_folder", "camera_folder", "coco", "allsky_folder"]
Compression = Literal["ZLIB", "GZIP", "NONE"]

# The fields each source kind needs besides ``images``.
_REQUIRED_BY_KIND = {
    "mask_folder": ("masks",),
    "camera_folder": (),
    "coco": ("annotations",),
    "allsky_folder": ("masks",),
}


@dataclasses.dataclass
class SourceConfig:
    """One labelled image collection.

    Args:
        kind: str. ``mask_folder`` (images + same-named PNG masks in ``masks``),
            ``camera_folder`` (SkyFinder layout: ``images/<camera>/<frame>.jpg``
            and one ``<camera>-mask.png`` per camera beside the camera folders)
            ``coco`` (COCO JSON ``annotations``, file names relative to ``images``)
            or ``allsky_folder`` (fisheye frames + same-named class annotation PNGs
            in ``masks``, see `tfsky.data.allsky`).
        images: Path. Image folder (for ``camera_folder``: the folder holding the camera folders).
        name: Optional[str]. Prefix of item ids in the cache. Defaults to the
            folder name of ``images`` (its parent's when the folder is called ``images``).
        masks: Optional[Path]. ``mask_folder``: folder of masks named like the
            images with ``.png``. ``camera_folder``: folder of ``<camera>-mask.png``
            files. Defaults to None (for ``camera_folder``: ``images``).
        annotations: Optional[Path]. ``coco``: the COCO JSON file. Defaults to None.
        labels_csv: Optional[Path]. ``camera_folder``: per-frame condition labels,
            a CSV with an ``image`` column (path relative to ``images``, e.g.
            ``623/20121024_124151.jpg``) and a ``condition`` or ``sky_condition``
            column. Defaults to None.
        positive: list[str]. ``coco``: categories that are sky (mask 1). Defaults to ``["sky"]``.
        negative: list[str]. ``coco``: categories cut out of the sky (objects in
            the sky, the seed's class 2 -> 0). Defaults to ``[]``.
        cameras: Optional[list[str]]. ``camera_folder``: only these camera
            folders. Defaults to None (all).
        mask_threshold: int. Mask pixels >= this (0..255) are sky. Defaults to 128.
        weight: float. This source's share of the training patches, relative to the
            other sources' weights (0.5 = half the patches of a weight-1 source,
            however many images each has). Defaults to 1.
        allsky: AllSkyConfig. ``allsky_folder``: class map, cameras and their
            masks, ``labels_csv`` columns. Defaults to WSISEG's class map, one camera.
        group_pattern: Optional[str]. ``mask_folder``: a regular expression whose
            first match in an image's path (relative to ``images``) is its split
            group, so consecutive video frames stay on one side of the split
            (CamVid: ``^[^_]+``, the sequence prefix). Images it does not match are
            their own group. Defaults to None (every image is its own group).
        exclude: list[str]. Images left out of the source: glob patterns (``fnmatch``) on the image's
            path relative to ``images``, e.g. pairs whose mask is known to be wrong. Defaults to ``[]``.
    """

    kind: SourceKind
    images: Path
    name: Optional[str] = None
    masks: Optional[Path] = None
    annotations: Optional[Path] = None
    labels_csv: Optional[Path] = None
    positive: list[str] = dataclasses.field(default_factory=lambda: list(SKY_CATEGORIES))
    negative: list[str] = dataclasses.field(default_factory=list)
    cameras: Optional[list[str]] = None
    mask_threshold: int = 128
    weight: float = 1.0
    allsky: AllSkyConfig = dataclasses.field(default_factory=AllSkyConfig)
    group_pattern: Optional[str] = None
    exclude: list[str] = dataclasses.field(default_factory=list)

    def __post_init__(self) -> None:
        if self.name is None:
            folder = Path(self.images)
            self.name = folder.parent.name if folder.name == "images" and folder.parent.name else folder.name

    def validate(self) -> None:
        for key in _REQUIRED_BY_KIND[self.kind]:
            if getattr(self, key) is None:
                raise ConfigError(key, f"is required for a {self.kind} source")
        if not self.name or "/" in self.name:
            raise ConfigError("name", f"must be a non-empty name without '/'; got {self.name!r}")
        if self.kind == "coco" and not self.positive:
            raise ConfigError("positive", "needs at least one category (e.g. sky)")
        if not 0 < self.mask_threshold <= 255:
            raise ConfigError("mask_threshold", f"must be in 1..255; got {self.mask_threshold}")
        if not self.weight > 0:
            raise ConfigError("weight", f"must be > 0; got {self.weight}")
        if self.group_pattern is not None:
            if self.kind != "mask_folder":
                raise ConfigError("group_pattern", f"applies to mask_folder sources only, not {self.kind}")
            try:
                re.compile(self.group_pattern)
            except re.error as err:
                raise ConfigError("group_pattern", f"not a regular expression ({err})") from None


@dataclasses.dataclass
class AugmentConfig:
    """Training augmentation: geometric (image and mask alike) and HDR photometric.

    The geometric defaults are the seed's Keras ``ImageDataGenerator`` settings
    with the same meaning (shear in degrees, independent x/y zoom).

    Args:
        enabled: bool. Augment training patches at all. Defaults to True.
        rotation: float. Rotation range in degrees (uniform in ±rotation). Defaults to 15.
        shift: float. Shift range as a fraction of the patch side (±shift, x and y). Defaults to 0.3.
        shear: float. Shear angle range in degrees (±shear), as Keras' ``shear_range``. Defaults to 0.1.
        zoom: float. Zoom range: x and y scale factors uniform in [1 - zoom, 1 + zoom]. Defaults to 0.3.
        horizontal_flip: bool. Mirror half of the patches left-right. Defaults to True.
        fill: float. Image value where the transform leaves the patch, in model
            space (after preprocessing). Defaults to 0.
        mask_fill: int. Class id the mask gets there: 0 (not sky) or 255
            (ignore, for all-sky frames whose corners are outside the lens). Defaults to 0.
        brightness: float. LDR only: pixels are multiplied by ``2 ** U(-brightness,
            brightness)`` in model space (clipped to [0, 1]); 0 switches it off. Defaults to 0.
        white_balance: float. LDR only: each colour channel is multiplied by
            ``exp(U(-white_balance, white_balance))``; 0 switches it off. Defaults to 0.
        saturation: float. LDR RGB only: colours are pulled towards their Rec.709 luminance by
            ``U(0, saturation)`` (1 can make a patch grey: a grey sky over grey ground, where a
            blue-sky rule fails); 0 switches it off. Defaults to 0.
        haze: float. LDR only: a uniform grey veil ``(1 - t) x + t a`` with ``t ~ U(0, haze)`` and
            airlight ``a ~ U(0.6, 1)`` (haze, fog, flat overcast light); 0 switches it off. Defaults to 0.
        exposure_ev: float. HDR only (``preprocess.mode: log``): radiance is
            multiplied by ``2 ** U(-exposure_ev, exposure_ev)``. Defaults to 1.
        gamma: float. HDR only: radiance is raised to ``exp(U(-gamma, gamma))``;
            0 switches it off. Defaults to 0.
    """

    enabled: bool = True
    rotation: float = 15.0
    shift: float = 0.3
    shear: float = 0.1
    zoom: float = 0.3
    horizontal_flip: bool = True
    fill: float = 0.0
    mask_fill: int = 0
    brightness: float = 0.0
    white_balance: float = 0.0
    saturation: float = 0.0
    haze: float = 0.0
    exposure_ev: float = 1.0
    gamma: float = 0.0

    def validate(self) -> None:
        for key in ("rotation", "shift", "shear", "zoom", "exposure_ev", "gamma", "brightness", "white_balance"):
            if getattr(self, key) < 0:
                raise ConfigError(key, f"must be >= 0; got {getattr(self, key)}")
        for key in ("saturation", "haze"):
            if not 0 <= getattr(self, key) <= 1:
                raise ConfigError(key, f"must be in [0, 1] (a share of the way to grey); got {getattr(self, key)}")
        if not 0 <= self.mask_fill <= 255:
            raise ConfigError("mask_fill", f"must be a class id in 0..255; got {self.mask_fill}")
        if self.zoom >= 1:
            raise ConfigError("zoom", f"must be < 1 (scale factors stay positive); got {self.zoom}")


@dataclasses.dataclass
class DataConfig:
    """Where labelled images come from, where the cache goes, and how patches are cut.

    Args:
        sources: list[SourceConfig]. The labelled image collections.
        cache: Path. Folder of the prepared cache (TFRecord shards + ``manifest.json``).
            Defaults to ``cache/data``.
        channels: int. Image channels fed to the model: 1, 3 or 4. Defaults to 3.
        working_scale: Optional[int]. Images (and masks) are stored in the cache
            resized so their short side is this many pixels (never enlarged), so
            a patch sees a whole scene's context rather than a patch of wall or
            grey sky; the trained model then predicts at that scale too
            (`tfsky.predict.segment`). Defaults to None (native resolution).
        patch_size: int. Side of the square training/validation patches; a
            multiple of 32. Defaults to 512.
        stride: Optional[int]. Grid step of validation patches, at most
            ``patch_size``. Defaults to None (= ``patch_size``).
        patches_per_image: int. Random crops per training image per epoch, on
            average: sources share them by ``weight``, and images whose mask has
            no sky pixel get ``no_sky_weight`` times an image's share. Defaults to 8.
        no_sky_weight: float. Relative share of crops of an image without sky
            (e.g. indoor photos). Defaults to 1.
        val_fraction: float. Share of each source's groups (photos, or cameras
            for webcam sources) held out for validation. Defaults to 0.2.
        split_seed: int. Seed of the train/val split. Defaults to 0.
        preprocess: Preprocess. Pixel normalisation (``ldr`` or HDR ``log``);
            also decides the cache dtype (uint8 for ``ldr``, float32 for ``log``).
        augment: AugmentConfig. Training augmentation.
        max_pixels: int. Images with more pixels are skipped without decoding. Defaults to 2**28.
        shard_size_mb: int. A new TFRecord shard starts when one reaches this size on disk. Defaults to 256.
        compression: str. TFRecord compression: ``ZLIB``, ``GZIP`` or ``NONE``. Defaults to ``ZLIB``.
        shuffle_buffer: int. Training patches shuffled together when the train split is streamed from
            disk (a split that fits in memory is shuffled completely). Defaults to 256.
    """

    sources: list[SourceConfig] = dataclasses.field(default_factory=list)
    cache: Path = Path("cache/data")
    channels: int = 3
    working_scale: Optional[int] = None
    patch_size: int = 512
    stride: Optional[int] = None
    patches_per_image: int = 8
    no_sky_weight: float = 1.0
    val_fraction: float = 0.2
    split_seed: int = 0
    preprocess: Preprocess = dataclasses.field(default_factory=Preprocess)
    augment: AugmentConfig = dataclasses.field(default_factory=AugmentConfig)
    max_pixels: int = DEFAULT_MAX_PIXELS
    shard_size_mb: int = 256
    compression: Compression = "ZLIB"
    shuffle_buffer: int = 256

    def validate(self) -> None:
        if not self.sources:
            raise ConfigError("sources", "at least one source is required")
        names = [source.name for source in self.sources]
        for index, name in enumerate(names):
            if name in names[:index]:
                raise ConfigError(f"sources[{index}].name", f"duplicate source name {name!r}; give each source a name")
        if self.patch_size <= 0 or self.patch_size % SIZE_MULTIPLE:
            raise ConfigError(
                "patch_size",
                f"must be divisible by {SIZE_MULTIPLE} (the U-Net downsamples 5 times); got {self.patch_size}",
            )
        if self.working_scale is not None and self.working_scale < 32:
            raise ConfigError("working_scale", f"must be >= 32 pixels (the short side); got {self.working_scale}")
        if not self.no_sky_weight > 0:
            raise ConfigError("no_sky_weight", f"must be > 0; got {self.no_sky_weight}")
        if self.stride is not None and not 0 < self.stride <= self.patch_size:
            raise ConfigError("stride", f"must be in 1..patch_size ({self.patch_size}); got {self.stride}")
        if self.channels not in (1, 3, 4):
            raise ConfigError("channels", f"must be 1, 3 or 4; got {self.channels}")
        if self.augment.saturation and self.channels != 3:
            raise ConfigError("augment.saturation", f"needs RGB images (channels: 3); got channels: {self.channels}")
        if not 0 < self.val_fraction < 1:
            raise ConfigError("val_fraction", f"must be between 0 and 1 (exclusive); got {self.val_fraction}")
        for key in ("patches_per_image", "max_pixels", "shard_size_mb", "shuffle_buffer"):
            if getattr(self, key) < 1:
                raise ConfigError(key, f"must be >= 1; got {getattr(self, key)}")

    @property
    def grid_stride(self) -> int:
        """Validation grid step in pixels (``stride``, or ``patch_size`` when unset)."""
        return self.stride or self.patch_size

    @property
    def cache_dtype(self) -> str:
        """Pixel dtype stored in the cache: ``uint8`` for LDR, ``float32`` radiance for the HDR log mode."""
        return "uint8" if self.preprocess.mode == "ldr" else "float32"
