"""Benchmark the data layer: tf.data patches/s vs a seed-style Sequence, and prepare on one 8K HDR image.

Measured in one run on this machine:

1. Throughput: patches/s of `segmentation_dataset` (train split, 256-pixel
   patches, batches of 8, log preprocessing) on a cache of the 7 Poly Haven
   1K panoramas, against a seed-style baseline built here: a
   ``tf.keras.utils.Sequence`` that reads ONE float32 .tif patch file per
   sample with tifffile (RGB + mask as 4 channels: the stride-100 patches of
   the same images, pre-written to a temp folder), applies the same log
   transform in numpy and, like the seed, Keras' ``ImageDataGenerator``
   augmentation (same settings) to image and mask; iterated in order as Keras
   ``fit`` does with one worker. Both sides yield the same number of patches
   per epoch. Our pipeline is read as training reads it: ``dataset.repeat()``
   through one iterator, ``steps_per_epoch`` batches an epoch (also reported:
   ``warm_augment_iterator_per_epoch``, a new iterator every epoch, which costs
   ~40 ms of function instantiation per epoch). Pairs measured: both with
   augmentation (the headline ``ratio``), both without, each in two states:
   * ``warm``: the steady state of training: one untimed epoch first (tracing,
     our in-memory image cache, the page cache of the .tif files), then five
     timed epochs.
   * ``cold``: data that does not fit in RAM (the patches of a real 8K set are
     2.5 GB of .tif per image): our in-memory image cache is switched off
     (``MEMORY_CACHE_BYTES = 0``: records are read and decompressed every
     epoch) and every file an epoch reads is evicted from the page cache
     before it (``posix_fadvise DONTNEED``); one untimed epoch, five timed.
   The masks are synthetic (bright pixels = "sky"): only speed is measured.
   The load average before and after is recorded (other engineers share the
   machine).
2. `tfsky data prepare` of ONE synthetic 8192x4096 float32 HDR image
   (quarry_01_1k.hdr upscaled with cv2.resize, written as float32 .tif) in a
   child process: wall time and peak RSS (``VmHWM`` of the child itself, so
   the parent's memory before ``exec`` is not counted).
3. Disk: that cache's size vs writing every stride-100 256-pixel patch of the
   image as its own float32 .tif (patch count x the size of one such file,
   measured by writing one).

Usage: python scripts/bench_pipeline.py [--out scripts/results/bench_pipeline.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import tfsky  # noqa: F401  (Keras 2 mode before TensorFlow is imported)

HERE = Path(__file__).resolve()
HDR_DIR = HERE.parents[2] / "shared" / "data" / "hdr_polyhaven_1k"
PATCH, STRIDE, BATCH = 256, 100, 8
BIG_WIDTH, BIG_HEIGHT = 8192, 4096
SKY_THRESHOLD = 1.0  # synthetic mask: radiance luminance above this is "sky"
PREPROCESS = {"mode": "log", "output_scale": 0.25}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=HERE.parent / "results" / "bench_pipeline.json")
    parser.add_argument("--prepare-only", type=Path, help=argparse.SUPPRESS)  # internal: child process of part 2
    args = parser.parse_args()
    if args.prepare_only:
        prepare(args.prepare_only)
        return
    with tempfile.TemporaryDirectory(prefix="bench_pipeline.") as temp:
        results = {
            "machine": machine(),
            "throughput": throughput(Path(temp) / "throughput"),
            "prepare_8k": prepare_8k(Path(temp) / "big"),
        }
    from tfsky.io.atomic import write_json
    from tfsky.models.precision import cpu_record

    write_json(args.out, {**results, "cpu": cpu_record()})
    print(json.dumps(results, indent=2))


def machine() -> dict:
    import tensorflow as tf

    return {
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "tensorflow": tf.__version__,
        "note": "2 CPU cores shared with other engineers: absolute numbers are noisy; both sides of each "
        "comparison ran back to back in this process; see throughput.load_average.",
    }


# --- 1. throughput ------------------------------------------------------------------------------


def throughput(workdir: Path) -> dict:
    from tfsky.data.cache import prepare_cache

    cfg = write_sources(workdir, patches_per_image=36)
    prepare_cache(cfg, progress=False)
    patch_files = write_seed_patches(workdir / "seed_patches", cfg)
    shards = sorted(Path(cfg.cache).glob("*.tfrecord"))
    load_before = os.getloadavg()
    runs = {}
    for cache_state in ("warm", "cold"):
        for augment in (True, False):
            name = f"{cache_state}_{'augment' if augment else 'no_augment'}"
            cold = cache_state == "cold"
            runs[f"tfdata_{name}"] = time_epochs(pipeline_epoch(cfg, augment, cold), shards if cold else [])
            runs[f"seed_{name}"] = time_epochs(sequence_epoch(patch_files, augment), patch_files if cold else [])
    runs["tfdata_warm_augment_iterator_per_epoch"] = time_epochs(pipeline_epoch(cfg, True, False, True), [])
    ratios = {
        name: round(runs[f"tfdata_{name}"]["patches_per_s"] / runs[f"seed_{name}"]["patches_per_s"], 2)
        for name in ("warm_augment", "warm_no_augment", "cold_augment", "cold_no_augment")
    }
    ratios["warm_augment_iterator_per_epoch"] = round(
        runs["tfdata_warm_augment_iterator_per_epoch"]["patches_per_s"] / runs["seed_warm_augment"]["patches_per_s"], 2
    )
    return {
        "images": "7 Poly Haven 1K panoramas (1024x512 float32), train split",
        "patch": PATCH,
        "batch": BATCH,
        "tfdata_patches_per_s": runs["tfdata_warm_augment"]["patches_per_s"],
        "seed_sequence_patches_per_s": runs["seed_warm_augment"]["patches_per_s"],
        "ratio": ratios["warm_augment"],
        "ratios": ratios,
        "target_ratio": 10,
        "load_average": {"before": [round(x, 2) for x in load_before], "after": [round(x, 2) for x in os.getloadavg()]},
        "runs": runs,
    }


def write_sources(workdir: Path, patches_per_image: int):
    """Masks for the HDR panoramas, and the data config of a log-mode cache of them."""
    from tfsky.config import load_config
    from tfsky.data.config import DataConfig
    from tfsky.io.images import luminance, read_image
    from tfsky.io.writers import write_mask_png

    for path in sorted(HDR_DIR.glob("*.hdr")):
        write_mask_png(workdir / "masks" / f"{path.stem}.png", luminance(read_image(path))[..., 0] > SKY_THRESHOLD)
    data = {
        "sources": [{"kind": "mask_folder", "name": "hdr", "images": str(HDR_DIR), "masks": str(workdir / "masks")}],
        "cache": str(workdir / "cache"),
        "patch_size": PATCH,
        "stride": STRIDE,
        "patches_per_image": patches_per_image,
        "val_fraction": 0.1,
        "preprocess": PREPROCESS,
    }
    return load_config(DataConfig, None, [f"data={json.dumps(data)}"], section="data")


def write_seed_patches(folder: Path, cfg) -> list[Path]:
    """The seed's layout: every stride-100 patch of the train images as one float32 .tif (RGB + mask)."""
    import numpy as np
    import tifffile

    from tfsky.data.cache import iter_cached
    from tfsky.tiling import tile_starts

    folder.mkdir(parents=True)
    overlap = 1 - STRIDE / PATCH
    for item in iter_cached(cfg.cache, "train"):
        stacked = np.concatenate([item.image, item.mask[..., None].astype(np.float32)], axis=-1)
        for row in tile_starts(stacked.shape[0], PATCH, overlap).numpy():
            for col in tile_starts(stacked.shape[1], PATCH, overlap).numpy():
                patch = stacked[row : row + PATCH, col : col + PATCH]
                tifffile.imwrite(folder / f"{item.id.replace('/', '_')}_{row}_{col}.tif", patch)
    return sorted(folder.glob("*.tif"))


def evict(paths: list[Path]) -> None:
    """Drop these files from the page cache, so the next read comes from disk."""
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def pipeline_epoch(cfg, augment: bool, streaming: bool, iterator_per_epoch: bool = False):
    """A callable running one epoch of our pipeline, yielding batch sizes (``streaming``: no in-memory cache).

    As training reads it (`tfsky.train.runner.fit_run`): ``dataset.repeat()``
    through one iterator, ``steps_per_epoch`` batches per epoch; with
    ``iterator_per_epoch``, a new iterator over the finite dataset every epoch.
    """
    from unittest import mock

    from tfsky.data import pipeline

    with mock.patch.object(pipeline, "MEMORY_CACHE_BYTES", 0 if streaming else pipeline.MEMORY_CACHE_BYTES):
        dataset = pipeline.segmentation_dataset(cfg, "train", BATCH, seed=0, augment=augment)
    if iterator_per_epoch:
        return lambda: (len(image) for image, _mask in dataset)
    steps, batches = pipeline.steps_per_epoch(cfg, "train", BATCH), iter(dataset.repeat())
    return lambda: (len(next(batches)[0]) for _ in range(steps))


def sequence_epoch(files: list[Path], augment: bool):
    """A callable running one epoch of the seed-style Sequence, yielding batch sizes."""
    import numpy as np
    import tensorflow as tf
    import tifffile

    from tfsky.data.transforms import Preprocess

    preprocess = Preprocess(**PREPROCESS)
    generator = tf.keras.preprocessing.image.ImageDataGenerator(
        rotation_range=15, width_shift_range=0.3, height_shift_range=0.3, shear_range=0.1, zoom_range=0.3,
        horizontal_flip=True, fill_mode="constant", cval=0.0,
    )  # fmt: skip

    def log_transform(x: np.ndarray) -> np.ndarray:  # the seed's transform, in numpy
        y = np.log(np.maximum(x, 0) * preprocess.input_mul + preprocess.log_epsilon)
        return (y + preprocess.output_bias) * preprocess.output_scale

    def sample(path: Path) -> np.ndarray:
        patch = tifffile.imread(path)
        patch[..., :3] = log_transform(patch[..., :3])
        if augment:  # one random transform for image and mask, as the seed's paired generators
            patch = generator.apply_transform(patch, generator.get_random_transform(patch.shape))
        return patch

    class SeedPatches(tf.keras.utils.Sequence):
        def __len__(self) -> int:
            return len(files) // BATCH

        def __getitem__(self, index: int):
            patches = np.stack([sample(path) for path in files[index * BATCH : (index + 1) * BATCH]])
            return patches[..., :3], patches[..., 3:]

    sequence = SeedPatches()
    return lambda: (len(sequence[index][0]) for index in range(len(sequence)))


def time_epochs(epoch, evict_first: list[Path], timed: int = 5) -> dict:
    """Patches/s over ``timed`` epochs after one untimed epoch (tracing, caches), evicting files before each."""
    for _ in epoch():
        pass
    seconds, patches = 0.0, 0
    for _ in range(timed):
        evict(evict_first)
        start = time.perf_counter()
        patches += sum(epoch())
        seconds += time.perf_counter() - start
    return {"patches": patches, "seconds": round(seconds, 3), "patches_per_s": round(patches / seconds, 1)}


# --- 2 and 3. one 8K HDR image ------------------------------------------------------------------


def prepare_8k(workdir: Path) -> dict:
    import numpy as np
    import tifffile

    from tfsky.data.pipeline import grid_count

    config = write_big_image(workdir)
    start = time.perf_counter()
    child = subprocess.run(
        [sys.executable, str(HERE), "--prepare-only", str(config)], check=True, capture_output=True, text=True
    )
    seconds = time.perf_counter() - start
    peak_rss_kb = json.loads(child.stdout.strip().splitlines()[-1])["peak_rss_kb"]
    manifest = json.loads((workdir / "cache" / "manifest.json").read_text())
    one_patch = workdir / "one_patch.tif"
    tifffile.imwrite(one_patch, np.zeros((PATCH, PATCH, 3), np.float32))
    patches = grid_count(BIG_HEIGHT, BIG_WIDTH, PATCH, STRIDE)
    patch_files_bytes = patches * one_patch.stat().st_size
    cache_bytes = sum(p.stat().st_size for p in (workdir / "cache").iterdir())
    return {
        "image": f"{BIG_WIDTH}x{BIG_HEIGHT} float32 RGB (quarry_01_1k.hdr upscaled), .tif",
        "image_raw_bytes": BIG_WIDTH * BIG_HEIGHT * 3 * 4,
        "prepare_process_seconds": round(seconds, 2),
        "prepare_seconds_in_manifest": manifest["totals"]["seconds"],
        "prepare_peak_rss_mb": round(peak_rss_kb / 1024, 1),
        "target_peak_rss_mb": 1536,
        "cache_bytes": cache_bytes,
        "seed_patch_files": patches,
        "seed_patch_file_bytes": one_patch.stat().st_size,
        "seed_patch_files_total_bytes": patch_files_bytes,
        "disk_ratio": round(cache_bytes / patch_files_bytes, 4),
        "target_disk_ratio": 0.2,
    }


def write_big_image(workdir: Path) -> Path:
    """The synthetic 8K image, its mask and a prepare config; returns the config path."""
    import cv2
    import yaml

    from tfsky.io.images import luminance, read_image
    from tfsky.io.writers import write_mask_png, write_tif

    big = cv2.resize(read_image(HDR_DIR / "quarry_01_1k.hdr"), (BIG_WIDTH, BIG_HEIGHT), interpolation=cv2.INTER_LINEAR)
    write_tif(workdir / "images" / "quarry_8k.tif", big)
    write_mask_png(workdir / "masks" / "quarry_8k.png", luminance(big)[..., 0] > SKY_THRESHOLD)
    del big
    source = {"kind": "mask_folder", "name": "big", "images": str(workdir / "images"), "masks": str(workdir / "masks")}
    data = {
        "sources": [source],
        "cache": str(workdir / "cache"),
        "patch_size": PATCH,
        "stride": STRIDE,
        "preprocess": PREPROCESS,
    }
    config = workdir / "prepare.yaml"
    config.write_text(yaml.safe_dump({"data": data}))
    return config


def prepare(config: Path) -> None:
    """Child process of part 2: exactly what `tfsky data prepare -c config -q` runs."""
    from tfsky.config import load_config
    from tfsky.data.cache import prepare_cache
    from tfsky.data.config import DataConfig

    prepare_cache(load_config(DataConfig, config, section="data"), progress=False)
    status = Path("/proc/self/status").read_text()
    peak_kb = int(next(line for line in status.splitlines() if line.startswith("VmHWM:")).split()[1])
    print(json.dumps({"peak_rss_kb": peak_kb}))


if __name__ == "__main__":
    main()
