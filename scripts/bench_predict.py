"""Benchmark full-8K sky masks: tile size / overlap vs seams and agreement, the pixel limit, batch overhead.

Everything runs the real trained ResNet34 U-Net (``--model``, default the leave-SkyFinder-out fold of
``configs/sky_ldr_cpu_scratch.yaml``; nothing is trained here) on a real photo upscaled to 8192x4096 (a
Cityscapes frame, 2048x1024, cv2 linear x4, written as PNG). Each part runs in its own process, so
its peak RSS (``os.wait4``) is its own:

1. ``sweep``: seam score (`tfsky.tiling.seam_score`) and mask agreement with a reference (tile 1024,
   overlap 128 px, taken as ground truth) for blend windows (``ramp``, ``gaussian``) x tiles 256..1024 x
   overlaps 0..128 px; next to each seam score, the reference's own score on the same tile borders (what
   the image's content alone gives there: sky lines that happen to run along a border), full-resolution
   tiling (``resolution: full``) of a 2048x1024 crop of the 8K image (the whole 8K image per setting
   would take hours on this shared CPU); also the per-pixel forward cost of one 1024-px tile and of
   the old 256-px x 8 batches.
2. ``reference``: the 8K image with the reference tiling; its mask and probabilities are kept for the next part.
   ``overlaps``: the whole 8K image at auto's tile with each overlap of ``--overlaps`` (``ramp``):
   agreement, seam score (and the reference's own), pixels computed, and at overlap 0 the edge-error
   profile (`edge_error_profile`): where the default overlap (`tfsky.tiling.AUTO_OVERLAP_PX`) is chosen.
3. ``auto``: the 8K image in-process with the defaults (``tile: auto`` at the default budget,
   ``resolution: full``): wall of the process's first prediction (with the model's tracing), agreement
   with the reference, seam score, and the reference's own seam score on the same borders
   (``seam_score_over_reference`` <= 1: no step beyond the content's); then `STEADY_ROUNDS` warm
   predictions, each between two per-pixel probes of one 1024-px tile (calls repeated for
   `PROBE_SECONDS`): ``pixel_limit_ratio`` = the median over the rounds of wall / (image pixels x the
   mean of the probes just before and just after), so the machine's drift over minutes (10-30 % on
   this shared VM) cancels. The peak RSS is taken after the first prediction, before the probes'
   1024-px activations. Then the working-scale path (``resolution: working``, the default for this
   model) on the same image.
4. ``baselines``: the same 8K image in-process with the old default (256-px tiles, 25 % overlap,
   ``gaussian``, 8 per call) and with MONAI-style defaults (`monai.inferers.sliding_window_inference`:
   25 % overlap, ``constant`` blending, here on a 608-px tile (auto's when it was added), 1 per call): first-prediction wall,
   pixels computed, agreement with the reference, seam score.
5. ``tfsky predict`` as a user runs it (whole process: start-up, model load, decode, outputs) on
   ``--batch-full`` copies at full resolution and on ``--batch-working`` copies at the working scale.
   ``batch_overhead_ratio`` = wall per image / the in-process warm prediction, measured just before
   (part 3) and just after (``after_batch``: one warm round in a new process), averaged.
6. ``precision``: the model loaded at each inference precision of ``--precisions`` (`tfsky.models.bundle.load_model`;
   bfloat16 is what ``precision: auto`` picks on a CPU with a bfloat16 unit, issue 25), one process each (float32
   first): the 8K image at full resolution (first prediction, then ``--precision-rounds`` warm rounds with the
   ``pixel_limit_ratio`` of part 3 against 1024-px probes *of the same precision*), at the working scale (first,
   warm) and ``--precision-batch`` images at the working scale in a row (wall per image, decoding excluded); mask
   agreement with the float32 masks of the same run; the full-resolution seam score (`tfsky.tiling.seam_score`, as
   in part 3: bfloat16 must not add steps at tile borders); peak RSS. ``precision_speedup`` = float32 wall / bfloat16
   wall (``precision_speedup_auto``: / the wall of ``auto``, the build the model's verdict chose, e.g. bfloat16 with
   the encoder in float32) (the processes run one after the other: the machine's drift enters it, not the pixel-limit ratios);
   ``precision_auto`` what ``auto`` resolves to here. Without a bfloat16 unit (``cpu``) bfloat16 is
   emulated, slower than float32: the figures then measure the fallback's cost, not the unit's gain.

The load average is recorded before each part: the machine is shared. ``--parts`` runs some parts
only; their results are merged into ``--out``. Old figures (256-px tiles, 25 % overlap, the seed's
approach) are those of the committed run of the previous version of this script (random-init
ResNet34, HDR input), kept under ``previous`` for comparison.

Usage: python scripts/bench_predict.py [--batch-full 2] [--batch-working 6] [--out scripts/results/bench_predict.json]
       python scripts/bench_predict.py --parts precision [--precisions float32,bfloat16,auto] [--precision-batch 6]
           --out scripts/results/bench_predict_precision.json   (its own file: ``cpu`` is the CPU of the last run)
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import tfsky  # noqa: F401  (Keras 2 mode before TensorFlow is imported)

HERE = Path(__file__).resolve()
DATA = HERE.parents[2] / "shared" / "data"
PHOTO = DATA / "sky_cityscapes" / "images" / "aachen_000000_000019_leftImg8bit.jpg"
MODEL = sorted((HERE.parents[1] / "runs" / "sky_ldr_cpu-without-skyfinder").glob("*/best.keras"))[-1:]
SIZE = (4096, 8192)  # --size sets it (height, width)
REFERENCE = (1024, 128)  # tile, overlap px
TILES, OVERLAPS, WINDOWS = (256, 384, 512, 768, 1024), (0, 8, 16, 24, 32, 64, 128), ("ramp", "gaussian")
OVERLAP_TILE = None  # --overlap-tile: the overlaps part's tile (None: auto's)
EDGE_DISTANCES = (0, 1, 2, 4, 8, 12, 16, 24, 32, 48, 64, 96)  # px from a tile's edge, for `edge_error_profile`
STEADY_ROUNDS, PROBE_SECONDS = 5, 20.0  # --probe-seconds sets PROBE_SECONDS
PRECISIONS, PRECISION_BATCH, PRECISION_ROUNDS = ("float32", "bfloat16"), 6, 3  # the precision part's


def main() -> None:
    global SIZE, CROP, TILES, WINDOWS, OVERLAPS, OVERLAP_TILE, PRECISIONS, PRECISION_BATCH, PRECISION_ROUNDS
    global PROBE_SECONDS
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=MODEL[0] if MODEL else None)
    parser.add_argument("--batch-full", type=int, default=2)
    parser.add_argument("--batch-working", type=int, default=6)
    parser.add_argument("--out", type=Path, default=HERE.parent / "results" / "bench_predict.json")
    parser.add_argument("--size", default="8192x4096", help="WIDTHxHEIGHT of the upscaled image.")
    parser.add_argument("--crop", default="2048x1024", help="WIDTHxHEIGHT of the sweep's crop (around the sky line).")
    parser.add_argument("--tiles", default="256,384,512,768,1024", help="Tiles of the sweep.")
    parser.add_argument("--windows", default="ramp,gaussian", help="Blend windows of the sweep.")
    parser.add_argument(
        "--overlaps", default="0,8,16,24,32,64,128", help="Overlaps (px) of the sweep and of the overlaps part."
    )
    parser.add_argument("--overlap-tile", type=int, help="Tile of the overlaps part (default: auto's).")
    parser.add_argument(
        "--precisions", default=",".join(PRECISIONS), help="Inference precisions of the precision part (float32 first)."
    )
    parser.add_argument("--precision-batch", type=int, default=PRECISION_BATCH, help="Working-scale batch, images.")
    parser.add_argument("--precision-rounds", type=int, default=PRECISION_ROUNDS, help="Warm full-resolution rounds.")
    parser.add_argument(
        "--probe-seconds", type=float, default=PROBE_SECONDS, help="Length of each per-pixel probe (sustained)."
    )
    parser.add_argument("--parts", default=",".join(PARTS), help=f"Parts to run, of {','.join(PARTS)}.")
    parser.add_argument("--workdir", type=Path)
    parser.add_argument("--phase", help=argparse.SUPPRESS)
    args = parser.parse_args()
    SIZE = tuple(map(int, args.size.lower().split("x")))[::-1]
    CROP = tuple(map(int, args.crop.lower().split("x")))[::-1]
    TILES = tuple(map(int, args.tiles.split(",")))
    WINDOWS = tuple(args.windows.split(","))
    OVERLAPS = tuple(map(int, args.overlaps.split(",")))
    OVERLAP_TILE = args.overlap_tile
    PRECISIONS = tuple(sorted(args.precisions.split(","), key=lambda name: name != "float32"))
    if unknown := set(PRECISIONS) - {"float32", "bfloat16", "auto"}:
        parser.error(f"--precisions: unknown {', '.join(sorted(unknown))} (float32, bfloat16, auto)")
    PRECISION_BATCH, PRECISION_ROUNDS, PROBE_SECONDS = args.precision_batch, args.precision_rounds, args.probe_seconds
    if args.phase:
        PHASES[args.phase](args.workdir, args.model)
        return
    existing = json.loads(args.out.read_text()) if args.out.exists() else {}
    if existing and "parts" not in existing:  # a result of the previous version of this script: kept for comparison
        existing = {"previous": existing}
    with tempfile.TemporaryDirectory(prefix="bench_predict.") as temp:
        workdir = args.workdir or Path(temp)
        workdir.mkdir(parents=True, exist_ok=True)
        new = run_all(workdir, args.model, args.batch_full, args.batch_working, args.parts.split(","))
    results = {**existing, **new, "parts": sorted(set(existing.get("parts", [])) | set(new["parts"]))}
    from tfsky.io.atomic import write_json
    from tfsky.models.precision import cpu_record

    write_json(args.out, {**results, "cpu": cpu_record()})
    print(json.dumps({k: v for k, v in results.items() if k != "previous"}, indent=1))


def run_all(workdir: Path, model: Path, batch_full: int, batch_working: int, parts: list[str]) -> dict:
    setup(workdir)
    results = {
        "model": str(model),
        "image": f"{PHOTO.name} upscaled to {SIZE[1]}x{SIZE[0]} (PNG)",
        "cpu_count": os.cpu_count(),
        "parts": parts,
    }
    for phase in ("sweep", "reference", "overlaps", "auto", "working", "baselines"):
        if phase in parts:
            results[phase] = run_phase(phase, workdir, model)
    if "precision" in parts:
        results.update(run_precisions(workdir, model))
    if "auto" in results:
        results["pixel_limit_ratio"] = results["auto"]["full"]["steady"]["pixel_limit_ratio"]
        results["mask_agreement"] = results["auto"]["full"]["mask_agreement"]
    for mode, count in (("full", batch_full), ("working", batch_working)):
        if f"batch_{mode}" not in parts:
            continue
        inputs = workdir / f"batch_{mode}"
        inputs.mkdir(exist_ok=True)
        for index in range(count):
            link = inputs / f"pano{index}.png"
            if not link.exists():
                link.symlink_to(workdir / "image.png")
        load = os.getloadavg()
        wall, rss = measure(
            [
                sys.executable,
                "-m",
                "tfsky.cli.main",
                "predict",
                "-m",
                str(model),
                str(inputs),
                "-o",
                str(workdir / f"out_{mode}"),
                "--resolution",
                mode,
                "--overwrite",
                "-q",
            ]
        )
        sidecars = [json.loads(p.read_text()) for p in sorted((workdir / f"out_{mode}").glob("pano*.json"))]
        if mode == "full":  # the warm in-process prediction just before and just after the job
            results["after_batch"] = run_phase("after_batch", workdir, model)
            in_process = (
                results["auto"]["full"]["steady"]["warm_seconds_median"]
                + results["after_batch"]["steady"]["warm_seconds_median"]
            ) / 2
        else:
            in_process = results["working"]["seconds"]
        results[f"tfsky_predict_{mode}"] = {
            "images": count,
            "wall_seconds": round(wall, 2),
            "wall_per_image": round(wall / count, 2),
            "in_process_seconds": round(in_process, 2),
            "ratio_to_in_process": round(wall / count / in_process, 3),
            "peak_rss_gb": rss,
            "ratio_to_its_own_prediction_seconds": round(wall / sum(s["seconds"] for s in sidecars), 3)
            if sidecars
            else None,  # the same run's model time: free of the machine's drift between parts
            "prediction_seconds_in_sidecars": [s["seconds"] for s in sidecars],
            "tile": sidecars[0]["tile"] if sidecars else None,
            "images_per_hour": round(3600 * count / wall, 1),
            "load_average_before": load,
        }
        results[f"batch_overhead_ratio{'' if mode == 'full' else '_working_scale'}"] = results[f"tfsky_predict_{mode}"][
            "ratio_to_in_process"
        ]
    return results


def setup(workdir: Path) -> None:
    """The 8K image (a real photo upscaled) as PNG."""
    import cv2

    from tfsky.io.images import read_image
    from tfsky.io.writers import write_png

    if not (workdir / "image.png").exists():
        write_png(workdir / "image.png", cv2.resize(read_image(PHOTO), SIZE[::-1], interpolation=cv2.INTER_LINEAR))


def run_precisions(workdir: Path, model: Path) -> dict:
    """The precision part: one process per precision of `PRECISIONS` (float32 first, whose masks the others are
    compared with), ``precision_speedup`` and what ``precision: auto`` resolves to on this CPU for this model."""
    from tfsky.models.bundle import load_info
    from tfsky.models.precision import auto_for_inference, describe_verdict, resolve_precision

    for stale in workdir.glob("precision_float32_*_mask.npy"):  # only this run's float32 masks count
        stale.unlink()
    rows = {name: run_phase("precision", workdir, model, ["--precisions", name]) for name in PRECISIONS}
    verdict = load_info(model).bfloat16
    return {
        "precision": rows,
        "precision_speedup": precision_speedup(rows),
        "precision_speedup_auto": precision_speedup(rows, "auto"),
        "precision_auto": {
            "training": resolve_precision("auto"),
            "inference": auto_for_inference(verdict),  # what load_model(precision="auto") does with this model
            "verdict": describe_verdict(verdict),
        },
    }


def precision_speedup(rows: dict, fast: str = "bfloat16") -> dict | None:
    """float32 wall / ``fast`` wall (> 1: ``fast`` is faster) of the precision part's measurements, rounded to
    3 places; None without both precisions. ``full``: the warm full-resolution medians; ``full_first``: the
    first predictions (tracing included); ``working``: the warm working-scale prediction; ``working_batch``:
    the working-scale batch, per image."""
    if not {"float32", fast} <= set(rows):
        return None
    walls = {
        "full": lambda row: row["full"]["steady"]["warm_seconds_median"],
        "full_first": lambda row: row["full"]["first_prediction_seconds"],
        "working": lambda row: row["working"]["warm_seconds"],
        "working_batch": lambda row: row["working_batch"]["wall_per_image"],
    }
    return {
        name: round(wall(rows["float32"]) / wall(rows[fast]), 3) if wall(rows[fast]) else None
        for name, wall in walls.items()
    }


def run_phase(phase: str, workdir: Path, model: Path, extra: list[str] | tuple = ()) -> dict:
    """``phase`` in a child process (its own peak RSS), with this process's settings and ``extra`` arguments."""
    result = workdir / f"{phase}.json"
    result.unlink(missing_ok=True)
    load = os.getloadavg()
    _, rss = measure(
        [
            sys.executable,
            str(HERE),
            "--phase",
            phase,
            "--workdir",
            str(workdir),
            "--model",
            str(model),
            "--size",
            f"{SIZE[1]}x{SIZE[0]}",
            "--crop",
            f"{CROP[1]}x{CROP[0]}",
            "--tiles",
            ",".join(map(str, TILES)),
            "--windows",
            ",".join(WINDOWS),
            "--overlaps",
            ",".join(map(str, OVERLAPS)),
            "--precisions",
            ",".join(PRECISIONS),
            "--precision-batch",
            str(PRECISION_BATCH),
            "--precision-rounds",
            str(PRECISION_ROUNDS),
            "--probe-seconds",
            str(PROBE_SECONDS),
        ]
        + (["--overlap-tile", str(OVERLAP_TILE)] if OVERLAP_TILE else [])
        + list(extra)  # (argparse: a repeated option's last value wins)
    )
    return dict(json.loads(result.read_text()), peak_rss_gb=rss, load_average_before=load)


def measure(command: list[str]) -> tuple[float, float]:
    """Wall seconds and peak RSS (GB) of a child process; raises if it fails."""
    start = time.perf_counter()
    child = subprocess.Popen(command)
    _, status, usage = os.wait4(child.pid, 0)
    seconds = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{' '.join(command)} failed with exit code {os.waitstatus_to_exitcode(status)}")
    return seconds, round(usage.ru_maxrss * 1024 / 1e9, 3)  # ru_maxrss is in KiB on Linux


def _segmenter(model: Path, precision: str = "auto", **tiling):
    """A `TiledSegmenter` of ``model`` at the inference ``precision`` (loaded once per process and precision)
    with ``tiling`` (full resolution by default)."""
    from tfsky.models.bundle import load_model
    from tfsky.predict.segment import TiledSegmenter
    from tfsky.tiling import TilingConfig

    if (model, precision) not in _LOADED:
        _LOADED[model, precision] = load_model(model, precision, kind="segmenter")
    return TiledSegmenter(*_LOADED[model, precision], TilingConfig(**{"resolution": "full", **tiling}))


_LOADED: dict = {}


def _timed_probability(segmenter, image) -> tuple[float, "object"]:
    start = time.perf_counter()
    probability = segmenter.sky_probability(image)
    return time.perf_counter() - start, probability


def _peak_rss_gb() -> float:
    """This process's peak RSS so far: taken right after a prediction, before the benchmark's own analysis
    (seam score, agreement) allocates its full-size temporaries."""
    import resource

    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9, 3)


def _per_pixel_seconds(segmenter, tile: int, batch: int, calls: int = 2, sustained: float = 0.0) -> float:
    """Per input pixel, the best of ``calls`` calls of the compiled model on a [batch, tile, tile, 3] batch
    after a warm-up call; with ``sustained`` seconds, the mean of calls repeated for that long instead
    (this CPU runs short bursts faster than a half-minute prediction)."""
    import numpy as np

    tiles = np.random.default_rng(0).integers(0, 256, (batch, tile, tile, 3), dtype=np.uint8)
    segmenter.predict_tiles(tiles).numpy()
    seconds = []
    while len(seconds) < calls or sum(seconds) < sustained:
        start = time.perf_counter()
        segmenter.predict_tiles(tiles).numpy()
        seconds.append(time.perf_counter() - start)
    return (sum(seconds) / len(seconds) if sustained else min(seconds)) / (batch * tile * tile)


def _agreement(mask, reference) -> float:
    return float((mask == reference).mean())


def sweep(workdir: Path, model: Path) -> None:
    from tfsky.data.masks import sky_mask
    from tfsky.io.images import read_image
    from tfsky.tiling import computed_pixels, seam_score

    top, left = SIZE[0] // 4, (SIZE[1] - CROP[1]) // 2  # around the sky line
    image = read_image(workdir / "image.png")[top : top + CROP[0], left : left + CROP[1]]
    reference_seg = _segmenter(model, tile=REFERENCE[0], overlap=REFERENCE[1] / REFERENCE[0], tile_batch=1)
    threshold = reference_seg.mask_threshold()
    cost = {
        "tile_1024_batch_1": _per_pixel_seconds(reference_seg, 1024, 1),
        "tile_512_batch_2": _per_pixel_seconds(reference_seg, 512, 2),
        "tile_256_batch_8": _per_pixel_seconds(reference_seg, 256, 8),
    }
    _, reference = _timed_probability(reference_seg, image)
    reference_mask = sky_mask(reference, threshold)
    rows = []
    for window, tile, overlap_px in itertools.product(WINDOWS, TILES, OVERLAPS):
        overlap = overlap_px / tile
        segmenter = _segmenter(
            model, tile=tile, overlap=overlap, window=window, tile_batch=max(1, 8 * 256**2 // tile**2)
        )
        seconds, probability = _timed_probability(segmenter, image)
        rows.append(
            {
                "window": window,
                "tile": tile,
                "overlap_px": overlap_px,
                "seconds": round(seconds, 2),
                "pixel_ratio": round(
                    computed_pixels(*image.shape[:2], tile, overlap, 32) / image.shape[0] / image.shape[1], 3
                ),
                "seam_score": round(seam_score(probability, tile, overlap, 32), 3),
                "reference_seam_score": round(seam_score(reference, tile, overlap, 32), 3),
                "mask_agreement": round(_agreement(sky_mask(probability, threshold), reference_mask), 5),
                "max_probability_difference": round(float(abs(probability - reference).max()), 4),
            }
        )
        if overlap_px == 0 and window == WINDOWS[0]:  # (every window is `constant` without overlap)
            rows[-1]["edge_error"] = edge_error_profile(probability, reference, tile)
        print(rows[-1], flush=True)
    _write(
        workdir,
        "sweep",
        {
            "crop": f"{image.shape[1]}x{image.shape[0]}",
            "threshold": threshold,
            "reference": {"tile": REFERENCE[0], "overlap_px": REFERENCE[1]},
            "seconds_per_pixel": {k: round(v * 1e6, 4) for k, v in cost.items()},
            "seconds_per_pixel_unit": "microseconds",
            "settings": rows,
        },
    )


def edge_error_profile(probability, reference, tile: int) -> dict:
    """How far a tile's edge effect reaches: mean |probability - reference| of a grid without overlap, by
    distance (px) to the nearest tile edge inside the image (0: a tile's outermost pixel; the image's own
    borders do not count: the reference has them too), at `EDGE_DISTANCES`, and ``interior`` beyond 128 px.

    ``margin_px`` is the first distance from which every farther one errs at most a tenth of the outermost
    pixel's: how far the missing context past a tile's edge (the network's effective receptive field)
    still shows, i.e. about the overlap a cross-fade needs so that the pixels that err most carry no weight."""
    import numpy as np

    from tfsky.tiling import tile_axis

    distances = []
    for length in probability.shape[:2]:
        starts, last, _ = (np.asarray(value) for value in tile_axis(length, tile, 0.0, 32))
        ends = np.append(starts[:-1] + tile, starts[-1] + int(last))
        index = np.arange(length)
        tile_of = np.searchsorted(starts, index, side="right") - 1
        start, end = starts[tile_of], np.minimum(ends[tile_of], length)
        distances.append(
            np.minimum(np.where(start > 0, index - start, length), np.where(end < length, end - 1 - index, length))
        )
    distance = np.minimum.outer(*distances).clip(max=129).ravel()
    error = (
        np.abs(probability.astype(np.float32) - reference.astype(np.float32)).reshape(distance.size, -1).mean(axis=1)
    )
    mean = np.bincount(distance, error, minlength=130) / np.maximum(np.bincount(distance, minlength=130), 1)
    beyond = np.maximum.accumulate(mean[:129][::-1])[::-1]  # the worst error at this distance or farther
    margin = int(np.argmax(beyond <= mean[0] / 10))
    return {
        "by_distance_px": {str(d): round(float(mean[d]), 5) for d in EDGE_DISTANCES},
        "interior": round(float(mean[129]), 5),
        "margin_px": margin,
    }


def reference(workdir: Path, model: Path) -> None:
    import numpy as np

    from tfsky.io.images import read_image

    segmenter = _segmenter(model, tile=REFERENCE[0], overlap=REFERENCE[1] / REFERENCE[0], tile_batch=1)
    seconds, probability = _timed_probability(segmenter, read_image(workdir / "image.png"))
    np.save(workdir / "reference_mask.npy", probability >= segmenter.mask_threshold())
    np.save(workdir / "reference_probability.npy", probability.astype(np.float16))  # its seam score on auto's grid
    _write(
        workdir,
        "reference",
        {
            "seconds": round(seconds, 2),
            "tile": REFERENCE[0],
            "overlap_px": REFERENCE[1],
            "tiles": segmenter.tile_count(*SIZE),
        },
    )


def auto(workdir: Path, model: Path) -> None:
    import dataclasses

    import numpy as np

    from tfsky.io.images import read_image
    from tfsky.tiling import computed_pixels, seam_score

    image = read_image(workdir / "image.png")
    reference = workdir / "reference_mask.npy"
    segmenter = _segmenter(model)
    seconds, probability = _timed_probability(segmenter, image)  # the process's first: with the tracing
    prediction_rss = _peak_rss_gb()
    tiling = segmenter.tiling_for(*SIZE)
    full = {
        "first_prediction_seconds": round(seconds, 2),
        "peak_rss_gb_of_the_prediction": prediction_rss,
        "tiling": dataclasses.asdict(tiling),
        "tiles": segmenter.tile_count(*SIZE),
        "pixel_ratio": round(computed_pixels(*SIZE, tiling.tile, tiling.overlap, 32) / (SIZE[0] * SIZE[1]), 3),
        "mask_agreement": round(_agreement(probability >= segmenter.mask_threshold(), np.load(reference)), 5)
        if reference.exists()
        else None,
        "seam_score": round(seam_score(probability, tiling.tile, tiling.overlap, 32), 3),
    }
    if (workdir / "reference_probability.npy").exists():  # what the content alone scores on the same borders
        reference_seam = seam_score(np.load(workdir / "reference_probability.npy"), tiling.tile, tiling.overlap, 32)
        full["reference_seam_score"] = round(reference_seam, 3)
        full["seam_score_over_reference"] = round(full["seam_score"] / reference_seam, 3)
    del probability
    full["steady"] = _steady_state(segmenter, image, STEADY_ROUNDS)
    _write(workdir, "auto", {"full": full})


def overlaps(workdir: Path, model: Path) -> None:
    """The whole 8K image at auto's tile (or `OVERLAP_TILE`) with each of `OVERLAPS` (``ramp``): agreement with the reference,
    seam score next to the reference's own on those borders, pixels computed; at overlap 0 the edge-error
    profile (`edge_error_profile`). This is where the default overlap is chosen: the smallest meeting
    agreement >= 99.9 % and seam score <= 1.05 on the image the targets are measured on."""
    import numpy as np

    from tfsky.io.images import read_image
    from tfsky.tiling import computed_pixels, seam_score

    image = read_image(workdir / "image.png")
    reference_mask = np.load(workdir / "reference_mask.npy")
    reference = np.load(workdir / "reference_probability.npy")
    tile = OVERLAP_TILE or _segmenter(model).tiling_for(*SIZE).tile
    rows = []
    for overlap_px in OVERLAPS:
        overlap = overlap_px / tile
        segmenter = _segmenter(model, tile=tile, overlap=overlap, tile_batch=1)
        seconds, probability = _timed_probability(segmenter, image)
        row = {
            "tile": tile,
            "overlap_px": overlap_px,
            "seconds": round(seconds, 2),
            "pixel_ratio": round(computed_pixels(*SIZE, tile, overlap, 32) / (SIZE[0] * SIZE[1]), 3),
            "mask_agreement": round(_agreement(probability >= segmenter.mask_threshold(), reference_mask), 5),
            "seam_score": round(seam_score(probability, tile, overlap, 32), 3),
            "reference_seam_score": round(seam_score(reference, tile, overlap, 32), 3),
        }
        if overlap_px == 0:
            row["edge_error"] = edge_error_profile(probability, reference, tile)
        rows.append(row)
        print(row, flush=True)
        del probability
    _write(workdir, "overlaps", {"settings": rows})


BASELINES = {
    "old_default": dict(tile=256, overlap=0.25, window="gaussian", tile_batch=8),
    "monai_style": dict(tile=608, overlap=0.25, window="constant", tile_batch=1),
}


def baselines(workdir: Path, model: Path) -> None:
    """The 8K image with the old default tiling and with MONAI-style defaults, each in this one process."""
    import numpy as np

    from tfsky.io.images import read_image
    from tfsky.tiling import computed_pixels, seam_score

    image = read_image(workdir / "image.png")
    reference = np.load(workdir / "reference_mask.npy")
    rows = {}
    for name, tiling in BASELINES.items():
        segmenter = _segmenter(model, **tiling)
        seconds, probability = _timed_probability(segmenter, image)
        rows[name] = {
            "tiling": tiling,
            "seconds": round(seconds, 2),
            "tiles": segmenter.tile_count(*SIZE),
            "pixel_ratio": round(
                computed_pixels(*SIZE, tiling["tile"], tiling["overlap"], 32) / (SIZE[0] * SIZE[1]), 3
            ),
            "mask_agreement": round(_agreement(probability >= segmenter.mask_threshold(), reference), 5),
            "seam_score": round(seam_score(probability, tiling["tile"], tiling["overlap"], 32), 3),
        }
        print(name, rows[name], flush=True)
        del probability
    _write(workdir, "baselines", rows)


def after_batch(workdir: Path, model: Path) -> None:
    """The warm in-process prediction again, right after the batch job (one round after a first prediction)."""
    from tfsky.io.images import read_image

    image = read_image(workdir / "image.png")
    segmenter = _segmenter(model)
    first, _ = _timed_probability(segmenter, image)
    _write(
        workdir,
        "after_batch",
        {"first_prediction_seconds": round(first, 2), "steady": _steady_state(segmenter, image, 1)},
    )


def _steady_state(segmenter, image, rounds: int) -> dict:
    """``rounds`` warm predictions of ``image``, each between two per-pixel probes of one 1024-px tile
    (sustained `PROBE_SECONDS`); each round's ``pixel_limit_ratio`` uses the mean of its two probes."""
    import statistics

    probes = [_per_pixel_seconds(segmenter, 1024, 1, sustained=PROBE_SECONDS)]
    walls = []
    for _ in range(rounds):
        walls.append(_timed_probability(segmenter, image)[0])
        probes.append(_per_pixel_seconds(segmenter, 1024, 1, sustained=PROBE_SECONDS))
    pixels = image.shape[0] * image.shape[1]
    ratios = [wall / (pixels * (before + after) / 2) for wall, before, after in zip(walls, probes, probes[1:])]
    return {
        "warm_seconds": [round(wall, 2) for wall in walls],
        "seconds_per_pixel_1024_tile_us": [round(probe * 1e6, 4) for probe in probes],
        "pixel_limit_ratios": [round(ratio, 3) for ratio in ratios],
        "warm_seconds_median": round(statistics.median(walls), 2),
        "pixel_limit_ratio": round(statistics.median(ratios), 3),
    }


def working(workdir: Path, model: Path) -> None:
    """The working-scale path (the default for this model) on the 8K image, in-process."""
    import dataclasses

    import numpy as np

    from tfsky.io.images import read_image

    image = read_image(workdir / "image.png")
    segmenter = _segmenter(model, resolution="working")
    seconds, probability = _timed_probability(segmenter, image)
    prediction_rss = _peak_rss_gb()
    reference = workdir / "reference_mask.npy"
    _write(
        workdir,
        "working",
        {
            "seconds": round(seconds, 2),
            "peak_rss_gb_of_the_prediction": prediction_rss,
            "tiles": segmenter.tile_count(*SIZE),
            "tiling": dataclasses.asdict(segmenter.tiling_for(*SIZE)),
            "mask_agreement_with_full_reference": round(
                _agreement(probability >= segmenter.mask_threshold(), np.load(reference)), 5
            )
            if reference.exists()
            else None,
        },
    )


def precision(workdir: Path, model: Path) -> None:
    """The precision part for one precision (``--precisions`` holds one in this process): see the module docstring.
    float32 saves its masks for the others' agreement."""
    import dataclasses

    import numpy as np

    from tfsky.data.masks import sky_mask
    from tfsky.io.images import read_image
    from tfsky.tiling import seam_score

    (name,) = PRECISIONS
    image = read_image(workdir / "image.png")
    result: dict = {"precision": name}
    for mode in ("full", "working"):
        segmenter = _segmenter(model, name, resolution=mode)
        seconds, probability = _timed_probability(segmenter, image)  # the first of its mode: with the tracing
        row = {"first_prediction_seconds": round(seconds, 2)}
        if mode == "full":  # (the process's peak so far: the working scale's would repeat it)
            row["peak_rss_gb_of_the_prediction"] = _peak_rss_gb()
            tiling = segmenter.tiling_for(*SIZE)
            row["seam_score"] = round(seam_score(probability, tiling.tile, tiling.overlap, 32), 3)
        mask = sky_mask(probability, segmenter.mask_threshold())
        del probability
        float32_mask = workdir / f"precision_float32_{mode}_mask.npy"
        if name == "float32":
            np.save(float32_mask, mask)
        row["mask_agreement_with_float32"] = (
            round(_agreement(mask, np.load(float32_mask)), 6) if float32_mask.exists() else None
        )
        row["sky_fraction"] = round(float(mask.mean()), 5)
        row["tiling"] = dataclasses.asdict(segmenter.tiling_for(*SIZE))
        row["tiles"] = segmenter.tile_count(*SIZE)
        del mask
        if mode == "full":
            row["steady"] = _steady_state(segmenter, image, PRECISION_ROUNDS)
        else:
            row["warm_seconds"] = round(_timed_probability(segmenter, image)[0], 2)
        result[mode] = row
    working_scale = segmenter  # the last mode's: warm
    walls = [_timed_probability(working_scale, image)[0] for _ in range(PRECISION_BATCH)]
    result["working_batch"] = {
        "images": PRECISION_BATCH,
        "wall_seconds": round(sum(walls), 2),
        "wall_per_image": round(sum(walls) / max(len(walls), 1), 3),
        "walls": [round(wall, 2) for wall in walls],
    }
    _write(workdir, "precision", result)


def _write(workdir: Path, phase: str, data: dict) -> None:
    from tfsky.io.atomic import write_json

    write_json(workdir / f"{phase}.json", data)


PHASES = {
    "sweep": sweep,
    "reference": reference,
    "overlaps": overlaps,
    "auto": auto,
    "after_batch": after_batch,
    "working": working,
    "baselines": baselines,
    "precision": precision,
}
PARTS = (
    "sweep",
    "reference",
    "overlaps",
    "auto",
    "working",
    "baselines",
    "batch_full",
    "batch_working",
    "precision",
)

if __name__ == "__main__":
    main()
