"""VGG19 perceptual loss from a LOCAL weights file (nothing is ever downloaded).

The network is built with ``VGG19(weights=None, include_top=False)`` and the
weights are loaded from the file the user gives (e.g. Keras'
``vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5``, copied by hand). The
loss is the mean over `FEATURE_LAYERS` of the mean absolute difference of the
two images' activations (Johnson et al. 2016 style), on frozen weights.
"""

from __future__ import annotations

from pathlib import Path

import tensorflow as tf

from tfsky.errors import ConfigError

FEATURE_LAYERS = ("block1_conv2", "block2_conv2", "block3_conv4", "block4_conv4")


def build_vgg19_features(weights: str | Path, layers: tuple[str, ...] = FEATURE_LAYERS) -> tf.keras.Model:
    """A frozen VGG19 returning the activations of ``layers``, with weights from a local file.

    Raises:
        ConfigError: the file does not exist or does not hold VGG19 (no top) weights.
    """
    path = Path(weights)
    if not path.is_file():
        raise ConfigError("model.vgg_weights", f"file not found: {path} (VGG19 weights are never downloaded)")
    vgg = tf.keras.applications.VGG19(weights=None, include_top=False, input_shape=(None, None, 3))
    try:
        vgg.load_weights(str(path))
    except (OSError, ValueError) as err:
        raise ConfigError("model.vgg_weights", f"{path} is not a VGG19 no-top weights file ({err})") from None
    vgg.trainable = False
    outputs = [vgg.get_layer(name).output for name in layers]
    return tf.keras.Model(vgg.input, outputs, name="vgg19_features")


class VGGPerceptualLoss:
    """``loss(a, b)`` for images in [-1, 1]: mean L1 distance of their VGG19 features.

    Args:
        weights: str | Path. Local VGG19 no-top weights file.
        layers: tuple[str, ...]. Feature layers. Defaults to `FEATURE_LAYERS`.
    """

    def __init__(self, weights: str | Path, layers: tuple[str, ...] = FEATURE_LAYERS):
        self.features = build_vgg19_features(weights, layers)

    def __call__(self, a: tf.Tensor, b: tf.Tensor) -> tf.Tensor:
        feats_a = self.features(_vgg_input(a), training=False)
        feats_b = self.features(_vgg_input(b), training=False)
        distances = [
            tf.reduce_mean(tf.abs(tf.cast(fa, tf.float32) - tf.cast(fb, tf.float32)))
            for fa, fb in zip(feats_a, feats_b)
        ]
        return tf.add_n(distances) / len(distances)


def _vgg_input(image: tf.Tensor) -> tf.Tensor:
    """[-1, 1] RGB -> VGG's caffe input (0..255 BGR minus the ImageNet mean)."""
    pixels = (tf.cast(image, tf.float32) + 1.0) * 127.5
    return tf.keras.applications.vgg19.preprocess_input(pixels)
