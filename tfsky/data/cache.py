"""``tfsky data prepare``: read the label sources once into a sharded TFRecord cache.

The cache holds FULL images and masks (patches are cut by the `tf.data`
pipeline at read time, so overlapping patches are never stored twice):

    <cache>/train-00000.tfrecord, train-00001.tfrecord, ...   (see `tfsky.data.records`)
    <cache>/val-00000.tfrecord, ...
    <cache>/manifest.json    config snapshot, one entry per item (written or skipped + reason), totals

Memory: one image is decoded at a time and its record is written before the
next is read; the record is built with a single copy of the pixels
(`encode_example`), so the peak is about twice one image plus TensorFlow.

The split is by *group* (a photo, or a webcam's camera), never by patch:
within each source, groups are ranked by a hash of ``(split_seed, group)``
and the first ``round(val_fraction * n)`` go to validation (at least one, and
at least one left for training, when the source has two or more groups;
sources with a single group are pooled for this). Items marked ``test`` (all-sky
``test_frames``) go to a third split, ``test``, before that, which training never reads.

Atomicity and re-runs: the whole cache is built in a temporary sibling folder
(``.<name>.*.part``) that replaces ``<cache>`` only once the manifest is
written, so a cache folder is always complete. A re-run rebuilds the cache
from the sources; temporary folders left by a killed run are deleted first
(so run one prepare per cache folder at a time).
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import time
from collections import defaultdict
from pathlib import Path
from typing import Iterator, Optional, cast

import numpy as np
import tensorflow as tf

from tfsky import __version__
from tfsky.config import to_dict
from tfsky.data.config import DataConfig
from tfsky.data.records import encode_example, parse_example
from tfsky.data.scale import resize_image, resize_mask, working_size
from tfsky.data.sources import LabelledImage, iter_source
from tfsky.errors import ConfigError, InputError, TfskyError
from tfsky.io.atomic import atomic_dir, remove_stale_temps, write_json
from tfsky.io.images import Channels, read_image
from tfsky.progress import Progress, tracked

MANIFEST = "manifest.json"
FORMAT = "tfsky-cache/1"
SPLITS = ("train", "val")
TEST = "test"  # held-out split (all-sky ``test_frames``): written only when some item is marked test


@dataclasses.dataclass
class PrepareReport:
    """What `prepare_cache` did.

    Args:
        cache: Path. The cache folder.
        written: dict[str, int]. Images written per split.
        skipped: list[tuple[str, str]]. ``(item id, reason)`` of every item left out.
        bytes: int. Size of the cache on disk.
        seconds: float. Wall time of the run.
    """

    cache: Path
    written: dict[str, int]
    skipped: list[tuple[str, str]]
    bytes: int
    seconds: float


@dataclasses.dataclass(frozen=True)
class CachedImage:
    """One full image read back from the cache (``image`` in its stored dtype, ``mask`` ``uint8 H x W``)."""

    id: str
    split: str
    source: str
    group: str
    condition: Optional[str]
    image: np.ndarray
    mask: np.ndarray


def prepare_cache(cfg: DataConfig, *, strict: bool = False, progress: Optional[Progress] = None) -> PrepareReport:
    """Read every source once and write the cache folder ``cfg.cache`` (replacing an existing one).

    Bad items (unreadable or missing image or mask, mask size != image size,
    over the pixel limit, HDR image in an LDR cache...) are skipped and listed
    in the report and the manifest.

    Args:
        cfg: DataConfig. The ``data:`` section.
        strict: bool. Stop at the first bad item instead of skipping it. Defaults to False.
        progress: Progress. Advanced with each item's id once it is written or skipped (`tfsky.progress`).
            Defaults to None (no progress).

    Raises:
        ConfigError: a source path does not exist (key ``data.sources[i].<field>``).
        TfskyError: with ``strict``, the first bad item; without, when no image
            at all is usable. Either way an existing cache is left untouched.
    """
    start = time.monotonic()
    items, skipped_sources = list_items(cfg)
    usable = [item for item in items if item.problem is None]
    splits = assign_splits([item for item in usable if not item.test], cfg.val_fraction, cfg.split_seed)
    splits.update({item.group: TEST for item in usable if item.test})
    entries = [{"id": name, "status": "skipped", "reason": reason} for name, reason in skipped_sources]
    _stop_if_strict(entries, strict)
    remove_stale_temps(Path(cfg.cache))
    with atomic_dir(cfg.cache) as folder:
        names = SPLITS + ((TEST,) if TEST in splits.values() else ())
        writers = {split: ShardWriter(folder, split, cfg.shard_size_mb * 2**20, cfg.compression) for split in names}
        with tracked(progress, len(items), "prepare") as progress:
            for item in items:
                entries.append(_write_item(item, splits.get(item.group), cfg, writers))
                _stop_if_strict(entries, strict)
                progress.advanced(item.id)
        for writer in writers.values():
            writer.close()
        if not any(entry["status"] == "written" for entry in entries):
            first = next((f" (first: {e['id']}: {e['reason']})" for e in entries), "")
            raise TfskyError(f"no usable image in data.sources: {len(entries)} item(s) skipped{first}")
        manifest = _manifest(cfg, entries, writers, time.monotonic() - start, folder)
        write_json(folder / MANIFEST, manifest)
    return _report(cfg, manifest)


def list_items(cfg: DataConfig) -> tuple[list[LabelledImage], list[tuple[str, str]]]:
    """All items of all sources, plus ``(source, reason)`` for sources whose label file is unusable as a whole.

    Raises:
        ConfigError: with the full key, e.g. ``data.sources[0].images``.
    """
    items: list[LabelledImage] = []
    skipped: list[tuple[str, str]] = []
    for index, source in enumerate(cfg.sources):
        assert source.name is not None  # SourceConfig.__post_init__ sets it
        try:
            items.extend(iter_source(source))
        except ConfigError as err:
            raise ConfigError(f"data.sources[{index}].{err.key}", err.problem) from None
        except InputError as err:
            skipped.append((source.name, str(err)))
    return items, skipped


def assign_splits(items: list[LabelledImage], val_fraction: float, seed: int) -> dict[str, str]:
    """``{group: "train" | "val"}``, stratified by source, or by an item's ``stratum`` when it has one (module docstring).

    Deterministic: depends only on the set of groups and ``seed``, not on listing order.
    """
    by_source: dict[str, set[str]] = defaultdict(set)
    for item in items:
        by_source[item.stratum or item.source].add(item.group)
    pooled = {group for groups in by_source.values() if len(groups) == 1 for group in groups}
    strata = [groups for groups in by_source.values() if len(groups) > 1] + ([pooled] if pooled else [])
    splits = {}
    for groups in strata:
        ranked = sorted(groups, key=lambda group: hashlib.sha256(f"{seed}:{group}".encode()).hexdigest())
        n_val = min(max(round(val_fraction * len(ranked)), 1), len(ranked) - 1)
        splits.update({group: "val" if rank < n_val else "train" for rank, group in enumerate(ranked)})
    return splits


class ShardWriter:
    """Writes records of one split into ``<split>-00000.tfrecord, ...``, starting a new shard at ``max_bytes``.

    Args:
        folder: Path. Where the shards go.
        split: str. ``train`` or ``val``; the shard name prefix.
        max_bytes: int. A shard that reached this size on disk is closed before the next record.
        compression: str. ``ZLIB``, ``GZIP`` or ``NONE``.
    """

    def __init__(self, folder: Path, split: str, max_bytes: int, compression: str):
        self.folder, self.split, self.max_bytes = folder, split, max_bytes
        self.options = tf.io.TFRecordOptions(compression_type="" if compression == "NONE" else compression)
        self.shards: list[str] = []
        self.count = 0
        self._writer: Optional[tf.io.TFRecordWriter] = None

    def write(self, record: bytes) -> str:
        """Append ``record``; returns the name of the shard it went to."""
        if self._writer is not None and (self.folder / self.shards[-1]).stat().st_size >= self.max_bytes:
            self.close()
        if self._writer is None:
            self.shards.append(f"{self.split}-{len(self.shards):05d}.tfrecord")
            self._writer = tf.io.TFRecordWriter(str(self.folder / self.shards[-1]), self.options)
        self._writer.write(record)
        self._writer.flush()
        self.count += 1
        return self.shards[-1]

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


def _write_item(item: LabelledImage, split: Optional[str], cfg: DataConfig, writers: dict[str, ShardWriter]) -> dict:
    """Decode, check and write one item; returns its manifest entry (``written`` or ``skipped`` with the reason)."""
    entry = {"id": item.id, "source": item.source, "group": item.group, "split": split, "condition": item.condition}
    if item.problem is not None:
        return {**entry, "status": "skipped", "reason": item.problem}
    assert split is not None  # every usable item has one
    try:
        image, mask = _load_pair(item, cfg)
    except InputError as err:
        reason = err.problem if err.path == str(item.image_path) else str(err)
        return {**entry, "status": "skipped", "reason": reason}
    source_size = image.shape[:2]
    size = working_size(source_size[0], source_size[1], cfg.working_scale)
    image, mask = np.ascontiguousarray(resize_image(image, size)), resize_mask(mask, size)
    height, width, channels = image.shape
    sky_fraction = float(np.count_nonzero(mask)) / mask.size
    sha256 = hashlib.sha256(image.data.cast("B")).hexdigest()
    record = encode_example({
        "id": item.id, "source": item.source, "group": item.group, "condition": item.condition or "",
        "dtype": image.dtype.name, "height": height, "width": width, "channels": channels,
        "image": image, "mask": mask,
    })  # fmt: skip
    del image, mask  # keep one copy of the pixels (the record) while writing
    shard = writers[split].write(record)
    return {
        **entry, "height": height, "width": width, "channels": channels, "dtype": cfg.cache_dtype,
        "source_height": source_size[0], "source_width": source_size[1], "sky_fraction": round(sky_fraction, 6),
        "shard": shard, "sha256": sha256, "status": "written",
    }  # fmt: skip


def _load_pair(item: LabelledImage, cfg: DataConfig) -> tuple[np.ndarray, np.ndarray]:
    """The item's image in the cache dtype (C-contiguous) and its mask; `InputError` on any problem."""
    image = read_image(item.image_path, channels=cast(Channels, cfg.channels), max_pixels=cfg.max_pixels)
    image = np.ascontiguousarray(to_cache_dtype(image, cfg, item.image_path))
    try:
        mask = item.load_mask(cfg.max_pixels)
    except InputError as err:
        raise InputError(err.path, f"mask: {err.problem}") from None
    if mask.shape != image.shape[:2]:
        where = item.mask_path or (item.coco.annotations if item.coco else item.image_path)
        raise InputError(
            where,
            f"mask is {mask.shape[1]}x{mask.shape[0]} but image {item.image_path.name} is "
            f"{image.shape[1]}x{image.shape[0]}",
        )
    return image, np.ascontiguousarray(mask, dtype=np.uint8)


def to_cache_dtype(image: np.ndarray, cfg: DataConfig, path: Path) -> np.ndarray:
    """``uint8`` for an LDR cache (16-bit images reduced like masks, ``x // 257``), ``float32`` for an HDR one.

    Raises:
        InputError: an HDR image in an LDR cache, or an LDR image in an HDR (log) cache.
    """
    hdr = image.dtype.kind == "f"
    if cfg.cache_dtype == "float32":
        if not hdr:
            raise InputError(path, f"LDR image ({image.dtype}) but data.preprocess.mode is log (HDR)")
        return image.astype(np.float32, copy=False)
    if hdr:
        raise InputError(path, f"HDR image ({image.dtype}) but data.preprocess.mode is ldr")
    return (image // 257).astype(np.uint8) if image.dtype == np.uint16 else image


def _stop_if_strict(entries: list[dict], strict: bool) -> None:
    if strict and entries and entries[-1]["status"] == "skipped":
        raise TfskyError(f"{entries[-1]['id']}: {entries[-1]['reason']} (stopped by --strict)")


def _manifest(cfg: DataConfig, entries: list[dict], writers: dict[str, ShardWriter], seconds: float, folder: Path):
    written = [entry for entry in entries if entry["status"] == "written"]
    return {
        "format": FORMAT,
        "tfsky_version": __version__,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "config": to_dict(cfg),
        "dtype": cfg.cache_dtype,
        "channels": cfg.channels,
        "compression": cfg.compression,
        "splits": {split: {"images": writer.count, "shards": writer.shards} for split, writer in writers.items()},
        "totals": {
            "written": len(written),
            "skipped": len(entries) - len(written),
            "bytes": sum(path.stat().st_size for path in folder.glob("*.tfrecord")),
            "seconds": round(seconds, 3),
        },
        "items": entries,
    }


def _report(cfg: DataConfig, manifest: dict) -> PrepareReport:
    return PrepareReport(
        cache=Path(cfg.cache),
        written={split: info["images"] for split, info in manifest["splits"].items()},
        skipped=[(entry["id"], entry["reason"]) for entry in manifest["items"] if entry["status"] == "skipped"],
        bytes=manifest["totals"]["bytes"],
        seconds=manifest["totals"]["seconds"],
    )


def read_manifest(cache_dir: str | Path) -> dict:
    """The cache's ``manifest.json`` as a dict.

    Raises:
        InputError: no cache there, or an unreadable / foreign manifest (names the folder).
    """
    cache_dir = Path(cache_dir)
    path = cache_dir / MANIFEST
    if not path.is_file():
        raise InputError(cache_dir, f"no prepared cache here ({MANIFEST} missing); run `tfsky data prepare`")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise InputError(cache_dir, f"{MANIFEST} is not valid JSON ({err}); re-run `tfsky data prepare`") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise InputError(cache_dir, f"{MANIFEST} is not a {FORMAT} manifest; re-run `tfsky data prepare`")
    return manifest


def shard_paths(cache_dir: str | Path, manifest: dict, split: str) -> list[str]:
    """Full paths of the shards of ``split`` (checked to exist)."""
    paths = [Path(cache_dir) / name for name in manifest["splits"][split]["shards"]]
    missing = [path.name for path in paths if not path.is_file()]
    if missing:
        raise InputError(cache_dir, f"shard {missing[0]} listed in {MANIFEST} is missing; re-run `tfsky data prepare`")
    return [str(path) for path in paths]


def compression_type(manifest: dict) -> str:
    """The ``TFRecordDataset`` compression argument of a cache."""
    return "" if manifest["compression"] == "NONE" else manifest["compression"]


def iter_cached(cache_dir: str | Path, split: Optional[str] = None) -> Iterator[CachedImage]:
    """Read full images back from the cache, one at a time (``split=None``: train then val).

    Raises:
        InputError: missing or invalid cache folder.
    """
    manifest = read_manifest(cache_dir)
    dtype = tf.as_dtype(manifest["dtype"])
    for name in (split,) if split else SPLITS:
        records = tf.data.TFRecordDataset(shard_paths(cache_dir, manifest, name), compression_type(manifest))
        for record in records:
            example = parse_example(record, dtype)
            yield CachedImage(
                id=example["id"].numpy().decode(),
                split=name,
                source=example["source"].numpy().decode(),
                group=example["group"].numpy().decode(),
                condition=example["condition"].numpy().decode() or None,
                image=example["image"].numpy(),
                mask=example["mask"].numpy()[..., 0],
            )
