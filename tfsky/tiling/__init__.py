"""Sliding-window inference on images of any size: THE tiling implementation.

Prediction, translation, data preparation and the serving signature all cut
images the same way:

* Grid (`tile_starts`, `tile_axis`): tiles of ``tile`` pixels every ``stride
  = tile - round(overlap * tile)`` pixels; the last tile ends exactly at the
  border, so nothing is dropped and the output has exactly the input's size.
  For a model that takes any multiple of ``multiple`` pixels, the last row and
  column of tiles are only as large as they must be (what the others leave
  uncovered plus the overlap, rounded up to ``multiple``), and a side shorter
  than the tile gets one tile of that side rounded up to ``multiple``: no pixel
  is computed for padding or for area the other tiles already hold. Without
  ``multiple`` every tile is ``tile x tile`` and the last one is shifted inward.
  A side shorter than its tile is reflect-padded and the padding cropped.
* Automatic tiles (`choose_tiling`, ``tile: auto``): the tile that computes the
  fewest pixels for the image, among the multiples of the model's size that fit
  the memory budget, with the margin the network needs as overlap.
* Blending (`blend_window`): each tile's prediction is weighted by a window
  and the weighted sum is divided once by the sum of weights. The 2-D window is
  the outer product of a 1-D window with itself, so the weight sum is separable
  too: ``wsum[y, x] = wy[y] * wx[x]`` (`weight_profile`), and only one float32
  accumulator of the output's size is kept.
* Two drivers over the same helpers: `sliding_window_inference` (numpy,
  memory-bounded: tiles are cut in raster order straight from the image into
  batches of ``tile_batch``; nothing else of image size is allocated) and
  `sliding_window_graph` (TensorFlow ops only, for a ``tf.function`` with
  unknown height and width, e.g. a SavedModel signature). Tiles of one shape
  are batched together (the regular ones, then the last column, the last row
  and the corner).
* Optional test-time augmentation (`with_tta`): flips, or the 90-degree
  rotations (with flips: the dihedral group) of a fisheye frame that has no
  "up", each undone and averaged per tile before blending.

The grid and reflection helpers are written in TensorFlow ops so the same code
runs eagerly (the numpy driver takes ``.numpy()``) and in a graph.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable, Iterator, Literal, Optional, Union

import numpy as np
import tensorflow as tf

from tfsky.errors import ConfigError

Window = Literal["ramp", "constant", "gaussian", "hann", "spline"]
Tta = Literal["none", "flip2", "flip4", "rot4", "rot8"]
Resolution = Literal["working", "full"]
WINDOWS: tuple[str, ...] = ("ramp", "constant", "gaussian", "hann", "spline")
PredictBatch = Callable[[object], object]  # [B, t, t, C] tiles -> [B, t, t, K] predictions

# Each TTA variant's transforms of a [B, H, W, C] batch, identity first: (axes flipped, then quarter turns).
_TRANSFORMS: dict[str, tuple[tuple[tuple[int, ...], int], ...]] = {
    "none": (((), 0),),
    "flip2": (((), 0), ((2,), 0)),
    "flip4": (((), 0), ((2,), 0), ((1,), 0), ((1, 2), 0)),
    "rot4": tuple(((), turns) for turns in range(4)),
    "rot8": tuple((axes, turns) for axes in ((), (2,)) for turns in range(4)),
}


AUTO = "auto"
AUTO_OVERLAP_PX = 16  # the margin (px) a ResNet34 U-Net needs between tiles with the ``ramp`` window: the
#                       smallest overlap of 0..128 px with mask agreement >= 99.9 % and seam score <= 1.05 on
#                       the whole 8K image (bench_predict's ``overlaps`` part: 8 px scores 1.5), where a grid
#                       without overlap errs <= a tenth of its edge pixels' error from ~16 px in (README)
MAX_AUTO_TILE = 1024  # largest tile ``auto`` considers (per-pixel cost rises beyond it on CPU: README)
MIN_AUTO_TILE = 256  # smallest (unless the image is smaller), even past the budget
CPU_MEMORY_BUDGET_GB = 1.5  # default budget of a whole process on a CPU
FORWARD_BYTES_PER_PIXEL = 400  # activation memory per input pixel of one model call (ResNet34 U-Net, float32:
#                                343-368 B measured on CPU at 256 x 8 and 1024 x 1 tiles)
RUNTIME_BYTES = 0.94e9  # TensorFlow with a ResNet34 U-Net loaded, and a job's per-tile-shape kernel caches:
#                        calibrated on bench_predict's 6-image 8K job, which peaked at 1.52 GB with 608-px tiles
#                        (the choice at 0.9e9) and at 1.47 GB with the 544-px tiles this gives
IMAGE_BYTES = 8192 * 4096 * 13  # an 8K RGB image job in flight in `tfsky predict`, per pixel: this image (3 B) and
#                                 its float32 accumulator (4 B), and either the previous one in the writer (its
#                                 image, overlay drawn in place, 3 B, and stored maps, 3 B) or the next one
#                                 decoding (3 B): `tfsky.jobs.LocalEngine` reads the next after that writing


@dataclasses.dataclass
class TilingConfig:
    """How an image is cut into tiles and blended back.

    Args:
        tile: int | str | None. Tile side in pixels; ``auto``: chosen per image size within the memory
            budget (`choose_tiling`); None: the model's training tile. Defaults to ``auto``.
        overlap: Optional[float]. Fraction of the tile shared by neighbours, in [0, 1). Defaults to None:
            `AUTO_OVERLAP_PX` pixels (at most a quarter of the tile).
        window: str. Blend window: ``ramp`` (flat, with raised-cosine ramps across the overlap: neighbours
            cross-fade and sum to 1, so no step at tile borders), ``constant``, ``gaussian``, ``hann`` or
            ``spline``. Defaults to ``ramp``.
        tile_batch: int. Tiles per model call (``auto`` lowers it to fit the memory budget). Defaults to 8.
        tta: str. Test-time augmentation (`with_tta`): ``none``, ``flip2`` (+ horizontal flip), ``flip4``
            (+ vertical and both), ``rot4`` (the four 90-degree rotations) or ``rot8`` (those and their
            mirror images: every orientation of a fisheye frame). Defaults to ``none``.
        resolution: str. ``working``: a model trained at a working scale
            (`tfsky.data.scale`) tiles the image resized to that scale and its
            probabilities are refined back to full size (`tfsky.predict.refine`);
            ``full``: tiles of the full-resolution image. Models trained at native
            resolution always use ``full``. Defaults to ``working``.
        memory_budget: Optional[float]. GB the whole process may use, for ``tile: auto``. Defaults to None:
            1.5 GB on a CPU, the free memory of the GPU on a GPU.
        working_factor: float. ``resolution: working`` predicts at this multiple of the model's working
            scale: 1.5 recovers thin sky (10 unseen Cityscapes photos: IoU 0.721 vs 0.657 at 1.0, full
            resolution 0.707, README "Working scale") for ~2.2x the working-scale time. Defaults to 1.0.
    """

    tile: Union[int, Literal["auto"], None] = AUTO
    overlap: Optional[float] = None
    window: Window = "ramp"
    tile_batch: int = 8
    tta: Tta = "none"
    resolution: Resolution = "working"
    memory_budget: Optional[float] = None
    working_factor: float = 1.0

    def validate(self) -> None:
        if isinstance(self.tile, int) and self.tile < 1:
            raise ConfigError("tile", f"must be >= 1; got {self.tile}")
        if self.overlap is not None and not 0 <= self.overlap < 1:
            raise ConfigError("overlap", f"must be in [0, 1); got {self.overlap}")
        if isinstance(self.tile, int) and tile_stride(self.tile, overlap_of(self)) < 1:
            raise ConfigError("overlap", f"{self.overlap} leaves no stride with tile {self.tile}")
        if self.tile_batch < 1:
            raise ConfigError("tile_batch", f"must be >= 1; got {self.tile_batch}")
        if self.memory_budget is not None and self.memory_budget <= 0:
            raise ConfigError("memory_budget", f"must be > 0 (GB); got {self.memory_budget}")
        if not self.working_factor > 0:
            raise ConfigError("working_factor", f"must be > 0; got {self.working_factor}")


def overlap_of(tiling: TilingConfig) -> float:
    """The overlap fraction of a tiling with its tile set: as given, else `AUTO_OVERLAP_PX` (<= a quarter tile)."""
    if tiling.overlap is not None:
        return tiling.overlap
    return _default_overlap(_tile_of(tiling))


def _default_overlap(tile: int) -> float:
    return min(AUTO_OVERLAP_PX, tile // 4) / tile


def model_tiling(tiling: Optional[TilingConfig], model_tile: int, multiple: int, model: str) -> TilingConfig:
    """The tiling a model runs with: ``tile=None`` filled in with ``model_tile``, validated, and the
    tile checked against the model's size constraint (sides a multiple of ``multiple``).

    ``tile: auto`` stays ``auto`` (it depends on each image's size: `choose_tiling`). Every tiled model
    (segmenter, translator, the serving signature) starts here, so a bad tile is one `ConfigError`
    naming ``tiling.<key>`` before any image is read or any file is written.

    Args:
        tiling: Optional[TilingConfig]. The requested tiling. Defaults to the `TilingConfig` defaults.
        model_tile: int. The model's training tile, used when ``tiling.tile`` is None.
        multiple: int. Tile sides must be a multiple of this (2**downsamplings of the network).
        model: str. How the error names the model, e.g. ``segmenter``.
    """
    tiling = tiling or TilingConfig()
    resolved = dataclasses.replace(tiling, tile=model_tile if tiling.tile is None else tiling.tile)
    try:
        resolved.validate()
    except ConfigError as err:
        raise ConfigError(f"tiling.{err.key}", err.problem) from None
    if resolved.tile != AUTO and resolved.tile % multiple:
        raise ConfigError("tiling.tile",
                          f"must be a multiple of {multiple} for this {model} model; got {resolved.tile}")
    return resolved


def choose_tiling(
    tiling: TilingConfig,
    multiple: int,
    size: Optional[tuple[int, int]],
    available_bytes: float,
    bytes_per_pixel: float = FORWARD_BYTES_PER_PIXEL,
) -> TilingConfig:
    """The tiling an image is predicted with: ``tile: auto`` resolved; a set tile is kept, its overlap filled in.

    ``auto`` is the largest multiple of ``multiple`` (at most `MAX_AUTO_TILE`, at least `MIN_AUTO_TILE`
    even when that does not fit) whose model call fits ``available_bytes`` (``bytes_per_pixel`` per input
    pixel), capped at the image's longer side rounded up to ``multiple``; the overlap is `AUTO_OVERLAP_PX`
    pixels unless ``tiling.overlap`` is set; ``tile_batch`` is lowered until a batch fits. The grid of
    `tile_axis` fits that tile to each image (a smaller last row/column, one tile for a smaller image),
    so the choice depends only on the budget: ``tfsky predict``, ``translate``, ``evaluate`` and the
    exported signature (``size`` None: images of any size) cut every image alike for the same budget.

    Args:
        tiling: TilingConfig. Validated by `model_tiling`.
        multiple: int. Tile sides must be a multiple of this.
        size: tuple of int or None. ``(height, width)`` of the image as predicted, when known.
        available_bytes: float. Memory the model's calls may take (`available_memory`).
        bytes_per_pixel: float. Activation memory of one input pixel. Defaults to `FORWARD_BYTES_PER_PIXEL`.
    """
    if tiling.tile != AUTO:
        return dataclasses.replace(tiling, overlap=overlap_of(tiling))
    fitting = int(math.sqrt(max(available_bytes, 0) / bytes_per_pixel)) // multiple * multiple
    tile = max(-(-MIN_AUTO_TILE // multiple) * multiple, min(fitting, MAX_AUTO_TILE))
    if size is not None:  # the same grid as the full tile (`tile_axis`), with the batch of the real call size
        tile = min(tile, -(-max(size) // multiple) * multiple)
    overlap = tiling.overlap if tiling.overlap is not None else _default_overlap(tile)
    batch = max(1, min(tiling.tile_batch, int(available_bytes // (bytes_per_pixel * tile * tile))))
    return dataclasses.replace(tiling, tile=tile, overlap=overlap, tile_batch=batch)


def available_memory(budget_gb: Optional[float], held_bytes: float = IMAGE_BYTES) -> float:
    """Bytes the model's calls may take: the budget (`TilingConfig.memory_budget`; default 1.5 GB on a CPU)
    less `RUNTIME_BYTES` and ``held_bytes`` (the images in flight); on a GPU by default, its free memory.

    Fixed figures rather than this process's resident memory, so every process (``tfsky predict``,
    ``tfsky export``, a test run) makes the same choice for the same budget.
    """
    gpu_free = _gpu_free_bytes() if budget_gb is None else None
    if gpu_free is not None:
        return gpu_free
    return (budget_gb or CPU_MEMORY_BUDGET_GB) * 1e9 - RUNTIME_BYTES - held_bytes


def _gpu_free_bytes() -> Optional[float]:
    """Free memory of the first GPU TensorFlow sees, from ``nvidia-smi``; None without a GPU."""
    if not tf.config.list_physical_devices("GPU"):
        return None
    import subprocess

    try:
        answer = subprocess.run(["nvidia-smi", "--query-gpu=memory.free", "--format=csv,noheader,nounits"],
                                capture_output=True, text=True, timeout=10, check=True)
        return float(answer.stdout.split()[0]) * 2**20
    except (OSError, subprocess.SubprocessError, ValueError, IndexError):
        return None


def auto_tiling_message(tiling: TilingConfig, size: tuple[int, int], requested: TilingConfig,
                        multiple: int) -> Optional[str]:
    """The line that tells what ``tile: auto`` chose for a ``size`` image cut into several tiles; None for
    explicit tiles, or for an image that is one tile. The object that chose the tiling logs it once
    (`tfsky.progress.Once`)."""
    if requested.tile != AUTO or count_tiles(*size, tiling.tile, tiling.overlap, multiple) < 2:
        return None
    where = f"{size[1]}x{size[0]} images"
    pixels = tiling.tile * tiling.tile * tiling.tile_batch
    return (f"tiling auto: tile {tiling.tile}, overlap {tiling.tile - tile_stride(tiling.tile, tiling.overlap)} px, "
            f"tile batch {tiling.tile_batch} for {where} ({pixels * FORWARD_BYTES_PER_PIXEL / 1e9:.2f} GB per call; "
            f"memory budget {requested.memory_budget or CPU_MEMORY_BUDGET_GB} GB)")


def compiled_forward(model, channels: int, size: Optional[int] = None) -> PredictBatch:
    """``model`` in inference mode as one ``tf.function`` over float32 [B, H, W, channels] tiles, traced once.

    ``size`` fixes H = W (a model that only takes one input size); None takes any.
    """
    spec = tf.TensorSpec([None, size, size, channels], tf.float32)
    return tf.function(lambda tiles: model(tiles, training=False), input_signature=[spec])


def overlap_pixels(tile: int, overlap: float) -> int:
    """Pixels neighbouring tiles share: ``round(overlap * tile)`` (the ``ramp`` window's ramp)."""
    return int(round(overlap * tile))


def tile_stride(tile: int, overlap: float) -> int:
    """Distance between tile origins: ``tile - overlap_pixels``."""
    return tile - overlap_pixels(tile, overlap)


def tile_starts(length, tile: int, overlap: float) -> tf.Tensor:
    """Tile origins along one side of ``length`` pixels (Python int or scalar tensor).

    Origins are ``0, stride, 2 * stride, ...`` with the last one moved inward to
    ``max(length, tile) - tile`` so the tiles end exactly at the border. A side
    shorter than the tile has the single origin 0 (it is reflect-padded).
    """
    stride = tile_stride(tile, overlap)
    if stride < 1:
        raise ConfigError("overlap", f"{overlap} leaves no stride with tile {tile}")
    span = tf.maximum(tf.cast(length, tf.int32), tile) - tile
    count = (span + stride - 1) // stride + 1
    return tf.minimum(tf.range(count) * stride, span)


def tile_axis(length, tile: int, overlap: float, multiple: Optional[int] = None):
    """The tiles along one side of ``length`` pixels: ``(origins, last_size, padded_length)`` as tensors.

    Every tile but the last is ``tile`` long, at ``0, stride, 2 * stride, ...``; the last one ends at the
    border. With ``multiple`` (a model that takes any multiple of it) the last tile is only what the
    others leave uncovered plus the overlap, rounded up to ``multiple`` (at most ``tile``), and a side
    shorter than the tile has one tile of its length rounded up; without it the last tile is ``tile``
    long, moved inward (`tile_starts`). ``padded_length`` >= ``length`` is what the image is
    reflect-padded to.
    """
    length = tf.cast(length, tf.int32)
    if multiple is None:
        return tile_starts(length, tile, overlap), tf.constant(tile), tf.maximum(length, tile)
    stride = tile_stride(tile, overlap)
    regular = (tf.maximum(length, tile) - tile + stride - 1) // stride  # tiles before the last one
    covered = regular * stride  # where the last regular tile ends, less the overlap
    last = tf.minimum(tile, (length - covered + multiple - 1) // multiple * multiple)
    origins = tf.concat([tf.range(regular) * stride, tf.reshape(tf.maximum(length - last, 0), [1])], 0)
    return origins, last, tf.maximum(length, last)


def count_tiles(height: int, width: int, tile: int, overlap: float, multiple: Optional[int] = None) -> int:
    """Number of tiles `sliding_window_inference` cuts from a ``height x width`` image."""
    return int(tf.size(tile_axis(height, tile, overlap, multiple)[0])
               * tf.size(tile_axis(width, tile, overlap, multiple)[0]))


def computed_pixels(height: int, width: int, tile: int, overlap: float, multiple: Optional[int] = None) -> int:
    """Pixels the model computes for a ``height x width`` image (before TTA): the sum of its tiles' areas."""
    sides = []
    for length in (height, width):
        origins, last, _ = tile_axis(length, tile, overlap, multiple)
        sides.append((int(tf.size(origins)) - 1) * tile + int(last))
    return sides[0] * sides[1]


def reflect_indices(length, size) -> tf.Tensor:
    """Indices ``0 .. size-1`` folded into ``[0, length)`` by mirror reflection (edge not repeated).

    Works for any ``size`` (pads larger than the image reflect back and forth)
    and for ``length == 1``.
    """
    length = tf.cast(length, tf.int32)
    period = tf.maximum(2 * (length - 1), 1)
    index = tf.range(size) % period
    return tf.where(index >= length, period - index, index)


def blend_window(tile: int, mode: str = "ramp", floor: float = 1e-3, ramp: int = 0) -> np.ndarray:
    """1-D blend weights of a tile, peak 1, floored at ``floor`` (float32, length ``tile``).

    ``ramp``: 1 inside, rising over the first and last ``ramp`` pixels (the
    overlap) as ``0.5 - 0.5 cos(pi (i + 0.5) / ramp)``; where two tiles overlap
    by exactly ``ramp`` pixels their weights sum to 1, so the blend cross-fades
    from one tile to the next and nothing steps at a tile's border (at most half
    the tile on each side; ``ramp`` 0 is ``constant``). ``constant``: all ones
    (plain average). ``gaussian``: sigma = 0.125 * tile
    around the centre, as MONAI. ``hann``: raised cosine sampled at pixel
    centres. ``spline``: the squared spline of Vooban's smoothly-blend-image-
    patches in 1-D, ``2 t**2`` for ``t < 1/2`` and ``1 - 2 (1 - t)**2`` above,
    where ``t`` is a triangle rising from the tile border to its centre. The
    floor keeps weights at the image border (covered by one tile) away from 0.
    """
    return window_tensor(tile, mode, floor, ramp).numpy()


def window_tensor(size, mode: str = "ramp", floor: float = 1e-3, ramp=0) -> tf.Tensor:
    """`blend_window` in TensorFlow ops, for a length known only in the graph (a last, smaller tile)."""
    size = tf.cast(size, tf.float64)
    centre = (size - 1) / 2
    position = tf.range(size, dtype=tf.float64)
    if mode == "ramp":
        ramp = tf.minimum(tf.cast(ramp, tf.float64), tf.floor(size / 2))
        inward = tf.minimum(position, size - 1 - position)  # pixels to the nearer end
        rising = 0.5 - 0.5 * tf.cos(np.pi * (inward + 0.5) / tf.maximum(ramp, 1))
        weights = tf.where(inward < ramp, rising, tf.ones_like(position))  # peak 1 unless all ramp: kept
        return tf.cast(tf.maximum(weights, floor), tf.float32)  # (the cross-fade sums to exactly 1)
    elif mode == "constant":
        weights = tf.ones_like(position)
    elif mode == "gaussian":
        weights = tf.exp(-0.5 * ((position - centre) / (0.125 * size)) ** 2)
    elif mode == "hann":
        weights = 0.5 - 0.5 * tf.cos(2 * np.pi * (position + 0.5) / size)
    elif mode == "spline":
        triangle = 1 - tf.abs(position - centre) / (centre + 1)
        weights = tf.where(triangle < 0.5, 2 * triangle**2, 1 - 2 * (1 - triangle) ** 2)
    else:
        raise ConfigError("window", f"must be one of {', '.join(WINDOWS)}; got {mode!r}")
    return tf.cast(tf.maximum(weights / tf.reduce_max(weights), floor), tf.float32)


def weight_profile(starts: tf.Tensor, length, window, last_window=None) -> tf.Tensor:
    """Sum of the 1-D ``window`` placed at each of ``starts`` (the last at ``last_window`` when given, for a
    smaller last tile): one factor of the separable weight sum."""
    window = tf.convert_to_tensor(window, tf.float32)
    shape = tf.reshape(tf.cast(length, tf.int32), [1])
    if last_window is None:
        regular, last_window = starts, window[:0]
    else:
        regular = starts[:-1]
    last_window = tf.convert_to_tensor(last_window, tf.float32)
    positions = tf.reshape(regular[:, None] + tf.range(tf.shape(window)[0])[None, :], [-1, 1])
    weights = tf.tile(window, tf.shape(regular)[:1])
    last_positions = tf.reshape(starts[-1] + tf.range(tf.shape(last_window)[0]), [-1, 1])
    return tf.scatter_nd(tf.concat([positions, last_positions], 0), tf.concat([weights, last_window], 0), shape)


def with_tta(predict_batch: PredictBatch, tta: str | None) -> PredictBatch:
    """Wrap ``predict_batch`` so each batch is also predicted transformed (`_TRANSFORMS`); each prediction is
    transformed back (rotated back, then flipped back) and the predictions are averaged.

    One model call per transform keeps the batch size unchanged. A quarter turn swaps a tile's sides: every
    tile of a fixed-size model is square, and a model taking any multiple of its size takes the swapped
    sides too, so no tile needs padding. Works on numpy arrays and tensors, eagerly and in graphs.
    """
    transforms = _TRANSFORMS[tta or "none"]
    if len(transforms) == 1:
        return predict_batch

    def predict(tiles):
        tiles = tf.convert_to_tensor(tiles)
        total = 0.0
        for axes, turns in transforms:
            moved = tf.reverse(tiles, axes) if axes else tiles
            moved = tf.image.rot90(moved, turns) if turns else moved
            pred = tf.cast(predict_batch(moved), tf.float32)
            pred = tf.image.rot90(pred, 4 - turns) if turns else pred
            total += tf.reverse(pred, axes) if axes else pred
        return total / len(transforms)

    return predict


def sliding_window_inference(
    image: np.ndarray,
    predict_batch: PredictBatch,
    tiling: TilingConfig,
    *,
    progress: Callable[[int, int], None] | None = None,
    multiple: Optional[int] = None,
) -> np.ndarray:
    """Predict a large [H, W, C] image tile by tile; returns float32 [H, W, K].

    Tiles are cut in raster order in the image's own dtype (``predict_batch``
    normalises them) and sent in full batches of ``tiling.tile_batch``, one tile
    shape at a time (only the last batch of each shape may be smaller). Memory
    beyond the input is one float32 accumulator of the output's size plus one batch.

    Args:
        image: np.ndarray. [H, W, C] pixels, any dtype.
        predict_batch: callable. [B, h, w, C] tiles -> [B, h, w, K] predictions.
        tiling: TilingConfig. Tile (set, see `model_tiling`), overlap, window, tile batch and TTA.
        progress: callable. Called as ``progress(done_tiles, total_tiles)`` after each batch. Defaults to None.
        multiple: Optional[int]. The model takes sides that are any multiple of this: the last row and
            column of tiles shrink to what they must cover (`tile_axis`). Defaults to None (all tiles square).
    """
    tile, overlap = _tile_of(tiling), overlap_of(tiling)
    height, width = image.shape[:2]
    (starts_y, last_y, padded_h), (starts_x, last_x, padded_w) = (
        [np.asarray(value) for value in tile_axis(length, tile, overlap, multiple)] for length in (height, width))
    padded = _reflect_pad(image, int(padded_h), int(padded_w))
    rows = [(y, tile) for y in starts_y[:-1]] + [(starts_y[-1], int(last_y))]
    cols = [(x, tile) for x in starts_x[:-1]] + [(starts_x[-1], int(last_x))]
    shapes: dict[tuple[int, int], list[tuple[int, int]]] = {}
    for y, h in rows:
        for x, w in cols:
            shapes.setdefault((h, w), []).append((y, x))
    ramp = overlap_pixels(tile, overlap)
    windows = {length: blend_window(length, tiling.window, ramp=ramp) for length in {tile, int(last_y), int(last_x)}}
    predict = with_tta(predict_batch, tiling.tta)
    total = None
    done, count = 0, len(rows) * len(cols)
    for (h, w), origins in shapes.items():
        window_2d = np.outer(windows[h], windows[w])[..., None]
        for batch_origins, tiles in _tile_batches(padded, origins, h, w, tiling.tile_batch):
            preds = np.asarray(predict(tiles), dtype=np.float32)
            if total is None:
                total = np.zeros(padded.shape[:2] + preds.shape[-1:], np.float32)
            for (y, x), pred in zip(batch_origins, preds):
                total[y : y + h, x : x + w] += pred * window_2d
            done += len(batch_origins)
            if progress is not None:
                progress(done, count)
    profiles = [weight_profile(starts, length, windows[tile], windows[last]).numpy()
                for starts, length, last in ((starts_y, padded_h, int(last_y)), (starts_x, padded_w, int(last_x)))]
    _divide_by_weights(total, *profiles)
    if total.shape[:2] != (height, width):
        total = np.ascontiguousarray(total[:height, :width])
    return total


def _tile_of(tiling: TilingConfig) -> int:
    if not isinstance(tiling.tile, int):  # a caller bug: `model_tiling` + `choose_tiling` resolve it
        raise ValueError(f"tiling.tile is {tiling.tile!r}; resolve it with model_tiling() and choose_tiling() first")
    return tiling.tile


def _reflect_pad(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Reflect-pad ``image`` (bottom/right) to ``height x width``; an image of that size is returned as is."""
    if image.shape[:2] == (height, width):
        return image
    rows = reflect_indices(image.shape[0], height).numpy()
    cols = reflect_indices(image.shape[1], width).numpy()
    return image[rows][:, cols]


def _tile_batches(image: np.ndarray, origins, height: int, width: int,
                  tile_batch: int) -> Iterator[tuple[list, np.ndarray]]:
    """Yield ``(origins, tiles)`` batches of ``tile_batch`` tiles of ``height x width``, cut lazily in raster order."""
    for first in range(0, len(origins), tile_batch):
        batch = origins[first : first + tile_batch]
        yield batch, np.stack([image[y : y + height, x : x + width] for y, x in batch])


def _divide_by_weights(total: np.ndarray, weights_y: np.ndarray, weights_x: np.ndarray, band: int = 256) -> None:
    """``total /= wy[:, None] * wx[None, :]`` in place, band by band (no full-size temporary)."""
    for row in range(0, total.shape[0], band):
        total[row : row + band] /= (weights_y[row : row + band, None] * weights_x[None, :])[..., None]


def sliding_window_graph(image: tf.Tensor, predict_batch: PredictBatch, tiling: TilingConfig,
                         multiple: Optional[int] = None) -> tf.Tensor:
    """The same tiled prediction in TensorFlow ops only: [H, W, C] -> float32 [H, W, K].

    Usable inside a ``tf.function`` whose input has unknown height and width
    (the serving signature). Tiles are gathered straight from the image with
    reflected indices (no padded copy), predicted ``tiling.tile_batch`` at a
    time in a ``tf.while_loop`` per tile shape (the corner tile, the regular
    tiles, the last column, the last row) and scattered into one accumulator.
    Matches `sliding_window_inference` (same ``multiple``) to float32 rounding.
    """
    tile, overlap, tile_batch = _tile_of(tiling), overlap_of(tiling), tiling.tile_batch
    image = tf.convert_to_tensor(image)
    height, width = tf.shape(image)[0], tf.shape(image)[1]
    starts_y, last_y, padded_h = tile_axis(height, tile, overlap, multiple)
    starts_x, last_x, padded_w = tile_axis(width, tile, overlap, multiple)
    rows, cols = reflect_indices(height, padded_h), reflect_indices(width, padded_w)
    ramp = overlap_pixels(tile, overlap)
    window, window_y, window_x = (window_tensor(size, tiling.window, ramp=ramp) for size in (tile, last_y, last_x))
    predict = with_tta(predict_batch, tiling.tta)

    def group(ys, xs, h, w, window_h, window_w):
        grid_y, grid_x = tf.meshgrid(ys, xs, indexing="ij")
        origins = tf.stack([tf.reshape(grid_y, [-1]), tf.reshape(grid_x, [-1])], axis=1)
        offsets = tf.stack(tf.meshgrid(tf.range(h), tf.range(w), indexing="ij"), axis=-1)
        return origins, offsets, (window_h[:, None] * window_w[None, :])[None, ..., None]

    def weighted_batch(origins, offsets, window_2d, first):
        positions = origins[first : first + tile_batch, None, None, :] + offsets[None]
        source = tf.stack([tf.gather(rows, positions[..., 0]), tf.gather(cols, positions[..., 1])], axis=-1)
        preds = tf.cast(predict(tf.gather_nd(image, source)), tf.float32)
        return positions, preds * window_2d

    corner = group(starts_y[-1:], starts_x[-1:], last_y, last_x, window_y, window_x)
    positions, weighted = weighted_batch(*corner, 0)
    total = tf.scatter_nd(positions, weighted, tf.concat([tf.stack([padded_h, padded_w]), tf.shape(weighted)[-1:]], 0))
    for ys, xs, h, w, window_h, window_w in (
        (starts_y[:-1], starts_x[:-1], tile, tile, window, window),
        (starts_y[:-1], starts_x[-1:], tile, last_x, window, window_x),
        (starts_y[-1:], starts_x[:-1], last_y, tile, window_y, window),
    ):
        origins, offsets, window_2d = group(ys, xs, h, w, window_h, window_w)

        def body(first, total, origins=origins, offsets=offsets, window_2d=window_2d):
            positions, weighted = weighted_batch(origins, offsets, window_2d, first)
            return first + tile_batch, tf.tensor_scatter_nd_add(total, positions, weighted)

        _, total = tf.while_loop(lambda first, _, origins=origins: first < tf.shape(origins)[0], body,
                                 (tf.constant(0), total), parallel_iterations=1)
    weights = weight_profile(starts_y, padded_h, window, window_y)[:, None] * weight_profile(
        starts_x, padded_w, window, window_x)[None, :]
    return (total / weights[..., None])[:height, :width]


def seam_score(prob: np.ndarray, tile: int, overlap: float, multiple: Optional[int] = None) -> float:
    """How visible tile borders are: mean |step| between neighbours across borders / inside tiles.

    Borders are the first and last pixel columns/rows of every tile of the grid
    ``(tile, overlap, multiple)`` (`tile_axis`) that lie inside the image. 1 means
    seams are invisible; a hard seam gives values well above 1. ``prob`` is [H, W] or [H, W, K].
    """
    prob = np.asarray(prob, np.float32)
    prob = prob.reshape(prob.shape[:2] + (-1,))
    border_steps, inner_steps = [], []
    for axis in (0, 1):
        steps = np.abs(np.diff(prob, axis=axis))  # steps[i] is between pixels i and i + 1
        length = prob.shape[axis]
        starts, last, _ = (np.asarray(value) for value in tile_axis(length, tile, overlap, multiple))
        ends = [s + tile for s in starts[:-1]] + [starts[-1] + int(last)]
        edges = {s - 1 for s in starts if s > 0} | {e - 1 for e in ends if e < length}
        is_border = np.zeros(length - 1, bool)
        is_border[np.array(sorted(edges), dtype=np.intp)] = True
        border_steps.append(np.compress(is_border, steps, axis=axis).ravel())
        inner_steps.append(np.compress(~is_border, steps, axis=axis).ravel())
    border = np.concatenate(border_steps)
    inner = np.concatenate(inner_steps)
    if border.size == 0 or inner.size == 0 or inner.mean() == 0:
        return float("nan")
    return float(border.mean() / inner.mean())
