"""Weather-condition probabilities of whole frames from a trained tfsky classifier."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import tensorflow as tf

from tfsky.data.labelled import classifier_input, condition_names
from tfsky.errors import InputError
from tfsky.models.bundle import ModelInfo, load_model
from tfsky.predict.segment import model_id

_BATCH = 32


@dataclasses.dataclass
class WeatherClassifier:
    """A loaded classifier: its model, sidecar, class names (conditions), input sizes and identity."""

    model: tf.keras.Model
    info: ModelInfo
    conditions: list[str]
    load_size: int
    image_size: int
    id: str

    @classmethod
    def load(cls, path: str | Path) -> "WeatherClassifier":
        """Load a ``best.keras`` written by ``tfsky train classifier``; another model is an `InputError`."""
        model, info = load_model(path)
        if info.task != "classifier":
            raise InputError(path, f"not a weather classifier (a {info.task} model)")
        data = info.config["data"]
        image_size = int(data["image_size"])
        load_size = round(image_size * data["load_scale"])
        return cls(model, info, condition_names(data["classes"]), load_size, image_size, model_id(path))

    def inputs(self, image: np.ndarray) -> np.ndarray:
        """The model's uint8 input for one decoded RGB frame (`classifier_input`)."""
        return classifier_input(image, self.load_size, self.image_size)

    def probabilities(self, inputs: np.ndarray) -> np.ndarray:
        """``[N, classes]`` probabilities of ``[N, S, S, 3]`` uint8 model inputs, in batches."""
        batches = [self.model(self.info.preprocess.apply(tf.constant(inputs[start:start + _BATCH])), training=False)
                   for start in range(0, len(inputs), _BATCH)]
        if not batches:
            return np.zeros((0, len(self.conditions)))
        return np.concatenate([np.asarray(batch, np.float64) for batch in batches])
