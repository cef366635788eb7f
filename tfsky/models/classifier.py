"""The weather classifier: a segmentation-models backbone, global pooling and a float32 softmax head.

The backbone is the bare encoder the segmenter uses (same builder, same layer
names, the same in-graph ``encoder_input`` layer mapping [0, 1] pixels to the
range its weights expect), so its weights can start from random, from a
backbone ``.h5`` file such as the ImageNet ones
(`tfsky.models.segmenter.load_encoder_weights`) or from the encoder of a
trained tfsky sky segmenter (``encoder_from``: a sky-aware backbone).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Literal, Optional

import tensorflow as tf

from tfsky.errors import ConfigError, InputError
from tfsky.models.precision import Precision
from tfsky.models.segmenter import (
    _bare_backbone,
    check_encoder_weights,
    freeze_encoder_batchnorm,
    load_start_weights,
    segmentation_models,
    with_encoder_input,
)


@dataclasses.dataclass
class ClassifierModelConfig:
    """The ``model:`` section of a classifier config.

    Args:
        backbone: str. Any segmentation-models backbone (``resnet18``, ``mobilenetv2``,
            ``efficientnetb0``...). Defaults to ``resnet18``.
        dropout: float. Dropout before the head. Defaults to 0.3.
        encoder_weights: Optional[str]. ``imagenet`` (downloaded once, as for the segmenter) or a local
            backbone ``.h5`` weights file. Defaults to None.
        encoder_from: Optional[Path]. A trained tfsky segmenter (``.keras``) with the same backbone,
            whose encoder initialises this one. Defaults to None.
        encoder_batchnorm: str. ``train`` or ``frozen`` (keep the loaded encoder's batch-norm statistics),
            as for the segmenter. Defaults to ``train``.
        precision: str. As for the segmenter. Defaults to ``auto``.
    """

    backbone: str = "resnet18"
    dropout: float = 0.3
    encoder_weights: Optional[str] = None
    encoder_from: Optional[Path] = None
    encoder_batchnorm: Literal["train", "frozen"] = "train"
    precision: Precision = "auto"

    def validate(self) -> None:
        names = segmentation_models().Backbones.models_names()
        if self.backbone not in names:
            raise ConfigError("backbone", f"unknown backbone {self.backbone!r} (known: {', '.join(names)})")
        if not 0 <= self.dropout < 1:
            raise ConfigError("dropout", f"must be in [0, 1); got {self.dropout}")
        if self.encoder_weights is not None and self.encoder_from is not None:
            raise ConfigError("encoder_from", "set encoder_weights or encoder_from, not both")
        check_encoder_weights(self.encoder_weights, self.backbone)
        if self.encoder_from is not None and not Path(self.encoder_from).is_file():
            raise ConfigError("encoder_from", f"file not found: {self.encoder_from}")


def build_classifier(cfg: ClassifierModelConfig, classes: int) -> tf.keras.Model:
    """``[B, H, W, 3]`` images (preprocessed to [0, 1]) -> float32 class probabilities ``[B, classes]``."""
    backbone = _bare_backbone(cfg.backbone, 3)
    features = tf.keras.layers.GlobalAveragePooling2D(name="pool")(backbone.output)
    features = tf.keras.layers.Dropout(cfg.dropout, name="dropout")(features)
    logits = tf.keras.layers.Dense(classes, name="logits")(features)
    probabilities = tf.keras.layers.Activation("softmax", dtype="float32", name="probabilities")(logits)
    model = tf.keras.Model(backbone.input, probabilities, name=f"classifier_{cfg.backbone}")
    model = with_encoder_input(model, cfg.backbone, 3)
    if cfg.encoder_weights is not None:
        load_start_weights(model, cfg.encoder_weights, cfg.backbone)
    if cfg.encoder_from is not None:
        copy_segmenter_encoder(model, backbone, cfg.encoder_from)
    if cfg.encoder_batchnorm == "frozen":
        freeze_encoder_batchnorm(model, cfg.backbone)
    return model


def copy_segmenter_encoder(model: tf.keras.Model, backbone: tf.keras.Model, segmenter_path: Path) -> int:
    """Copy every backbone layer's weights from a tfsky segmenter file into ``model``; returns the layer count.

    Raises:
        InputError: the segmenter lacks a backbone layer or its shapes differ (another backbone).
    """
    from tfsky.models.bundle import ModelKind, load_model

    segmenter, _ = load_model(segmenter_path, precision="float32", kind=ModelKind.SEGMENTER)
    copied = 0
    for layer in backbone.layers:
        if not layer.weights:
            continue
        try:
            source = segmenter.get_layer(layer.name)
        except ValueError:
            raise InputError(
                segmenter_path, f"segmenter has no encoder layer '{layer.name}' (built with another backbone?)"
            ) from None
        weights = source.get_weights()
        if [w.shape for w in weights] != [tuple(w.shape) for w in layer.weights]:
            raise InputError(segmenter_path, f"encoder layer '{layer.name}' has other shapes (another backbone?)")
        model.get_layer(layer.name).set_weights(weights)
        copied += 1
    return copied
