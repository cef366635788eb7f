"""The CloudNet per-pixel patch classifier, kept as a measured baseline for the cloud segmenter.

One of the projects tfsky grew from classified each pixel of an all-sky frame
from the 32x32x3 patch centred on it: three blocks of a 5x5 convolution with
64 filters and a 2x2 max-pool, then dense 384 -> 192 -> 2 (softmax). It needs
one network evaluation per pixel, which is why the fully convolutional
segmenter replaces it (`scripts/bench_cloud.py` measures both per frame).

Patches are sampled from training frames at valid (non-ignored) pixels and
cut from the frame reflect-padded by half a patch, so border pixels have a
patch too.
"""

from __future__ import annotations

from typing import Callable, Iterable, Optional

import numpy as np
import tensorflow as tf

from tfsky import tiling

PATCH = 32
HALF = PATCH // 2


def build_cloudnet(classes: int = 2) -> tf.keras.Model:
    """The CloudNet classifier: ``[B, 32, 32, 3]`` float (0..1) patches -> ``[B, classes]`` softmax."""
    inputs = tf.keras.Input((PATCH, PATCH, 3), name="patch")
    x = inputs
    for block in range(3):
        x = tf.keras.layers.Conv2D(64, 5, padding="same", activation="relu", name=f"conv{block + 1}")(x)
        x = tf.keras.layers.MaxPooling2D(2, name=f"pool{block + 1}")(x)
    x = tf.keras.layers.Flatten(name="flatten")(x)
    x = tf.keras.layers.Dense(384, activation="relu", name="dense384")(x)
    x = tf.keras.layers.Dense(192, activation="relu", name="dense192")(x)
    outputs = tf.keras.layers.Dense(classes, activation="softmax", name="probabilities", dtype="float32")(x)
    return tf.keras.Model(inputs, outputs, name="cloudnet")


def padded(image: np.ndarray) -> np.ndarray:
    """Float32 0..1 copy of a uint8 ``H x W x 3`` frame, reflect-padded by half a patch on every side."""
    return np.pad(image.astype(np.float32) / 255.0, ((HALF, HALF), (HALF, HALF), (0, 0)), mode="reflect")


def patches_at(padded_image: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """``[N, 32, 32, 3]`` patches centred on pixels ``(rows, cols)`` of the unpadded frame."""
    view = np.lib.stride_tricks.sliding_window_view(padded_image, (PATCH, PATCH), axis=(0, 1))
    return np.ascontiguousarray(view[rows, cols].transpose(0, 2, 3, 1))


def sample_patches(
    frames: Iterable[tuple[np.ndarray, np.ndarray]], per_frame: int, ignore: int, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """``per_frame`` random labelled pixels of each ``(image, class mask)``: their patches and class ids."""
    rng = np.random.default_rng(seed)
    patches, labels = [], []
    for image, mask in frames:
        rows, cols = np.nonzero(mask != ignore)
        if rows.size == 0:
            continue
        pick = rng.choice(rows.size, size=min(per_frame, rows.size), replace=False)
        patches.append(patches_at(padded(image), rows[pick], cols[pick]))
        labels.append(mask[rows[pick], cols[pick]])
    return np.concatenate(patches), np.concatenate(labels).astype(np.int32)


def train_cloudnet(
    patches: np.ndarray,
    labels: np.ndarray,
    *,
    classes: int = 2,
    epochs: int = 3,
    batch_size: int = 256,
    seed: int = 0,
) -> tf.keras.Model:
    """Fit CloudNet on sampled patches (Adam 1e-3, sparse cross-entropy)."""
    tf.keras.utils.set_random_seed(seed)
    model = build_cloudnet(classes)
    model.compile(tf.keras.optimizers.Adam(1e-3), "sparse_categorical_crossentropy")
    model.fit(patches, labels, epochs=epochs, batch_size=batch_size, shuffle=True, verbose=0)
    return model


def compiled_forward(model: tf.keras.Model) -> Callable[[tf.Tensor], tf.Tensor]:
    """The model in one ``tf.function`` traced once for any batch of RGB patches."""
    return tiling.compiled_forward(model, 3, PATCH)


def classify_pixels(
    model: tf.keras.Model,
    image: np.ndarray,
    rows: np.ndarray,
    cols: np.ndarray,
    batch: int = 4096,
    forward: Optional[Callable[[tf.Tensor], tf.Tensor]] = None,
) -> np.ndarray:
    """P(class) ``[N, classes]`` of pixels ``(rows, cols)``: one CloudNet call per pixel, in batches."""
    forward = forward or compiled_forward(model)
    source = padded(image)
    out = []
    for start in range(0, rows.size, batch):
        tiles = patches_at(source, rows[start : start + batch], cols[start : start + batch])
        out.append(forward(tf.constant(tiles)).numpy())
    return np.concatenate(out) if out else np.zeros((0, model.output_shape[-1]), np.float32)
