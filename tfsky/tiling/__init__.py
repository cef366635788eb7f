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

One module per concern; this package exports every public name, so ``from tfsky.tiling import ...`` is
the way in:

* `tfsky.tiling.config`: `TilingConfig` and `model_tiling` (the tiling a model runs with);
* `tfsky.tiling.grid`: where tiles start, how many, the reflection that pads a side;
* `tfsky.tiling.windows`: the blend windows and their separable weight sum;
* `tfsky.tiling.auto`: ``tile: auto`` within the memory budget (a GPU's free memory from ``nvidia-smi``);
* `tfsky.tiling.announce`: the line that tells the user what ``auto`` chose;
* `tfsky.tiling.inference`: the one algorithm and its two drivers, and test-time augmentation;
* `tfsky.tiling.seams`: the seam metric.
"""

from __future__ import annotations

from tfsky.tiling.announce import auto_tiling_message
from tfsky.tiling.auto import (
    CPU_MEMORY_BUDGET_GB,
    FORWARD_BYTES_PER_PIXEL,
    IMAGE_BYTES,
    MAX_AUTO_TILE,
    MIN_AUTO_TILE,
    RUNTIME_BYTES,
    available_memory,
    choose_tiling,
)
from tfsky.tiling.config import (
    AUTO,
    AUTO_OVERLAP_PX,
    Resolution,
    TilingConfig,
    Tta,
    model_tiling,
    overlap_of,
    resolved_tile,
)
from tfsky.tiling.grid import (
    computed_pixels,
    count_tiles,
    overlap_pixels,
    reflect_indices,
    tile_axis,
    tile_starts,
    tile_stride,
)
from tfsky.tiling.inference import (
    PredictBatch,
    compiled_forward,
    sliding_window_graph,
    sliding_window_inference,
    with_tta,
)
from tfsky.tiling.seams import seam_score
from tfsky.tiling.windows import WINDOWS, Window, blend_window, weight_profile, window_tensor

__all__ = [
    "AUTO",
    "AUTO_OVERLAP_PX",
    "CPU_MEMORY_BUDGET_GB",
    "FORWARD_BYTES_PER_PIXEL",
    "IMAGE_BYTES",
    "MAX_AUTO_TILE",
    "MIN_AUTO_TILE",
    "RUNTIME_BYTES",
    "WINDOWS",
    "PredictBatch",
    "Resolution",
    "TilingConfig",
    "Tta",
    "Window",
    "auto_tiling_message",
    "available_memory",
    "blend_window",
    "choose_tiling",
    "compiled_forward",
    "computed_pixels",
    "count_tiles",
    "model_tiling",
    "overlap_of",
    "overlap_pixels",
    "reflect_indices",
    "resolved_tile",
    "seam_score",
    "sliding_window_graph",
    "sliding_window_inference",
    "tile_axis",
    "tile_starts",
    "tile_stride",
    "weight_profile",
    "window_tensor",
    "with_tta",
]
