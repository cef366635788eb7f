"""Weather-condition probabilities of whole frames from a trained tfsky classifier, and stream labelling."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import tensorflow as tf

from tfsky.data.labelled import classifier_input, condition_names
from tfsky.data.streams import Stream, manifest_files, read_manifest, update_manifest
from tfsky.data.transforms import is_hdr
from tfsky.errors import InputError
from tfsky.io.images import read_image
from tfsky.models.bundle import ModelInfo, load_model
from tfsky.predict.segment import model_id
from tfsky.train.config import ClassifierConfig, trained_config

_BATCH = 32


@dataclasses.dataclass
class WeatherClassifier:
    """A loaded classifier: model, sidecar, typed training config, class names (conditions), input sizes, identity."""

    model: tf.keras.Model
    info: ModelInfo
    trained: ClassifierConfig
    conditions: list[str]
    load_size: int
    image_size: int
    id: str

    @classmethod
    def load(cls, path: str | Path) -> "WeatherClassifier":
        """Load a ``best.keras`` written by ``tfsky train classifier``; another kind of model is an `InputError`."""
        model, info = load_model(path, kind="classifier")
        trained = trained_config(info, ClassifierConfig, path)
        data = trained.data
        load_size = round(data.image_size * data.load_scale)
        return cls(model, info, trained, condition_names(data.classes), load_size, data.image_size, model_id(path))

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


def label_stream(stream: Stream, classifier: WeatherClassifier) -> Stream:
    """A copy of ``stream`` with the classifier's prediction on every readable frame.

    Each frame gets ``prediction`` (condition, probability, model id); frames
    without a human label (CSV or reviewer) also take it as their label, with
    the probability as its confidence and ``label_source: model``. Unreadable
    frames are left as they are (validation flags them ``corrupt``).
    """
    readable, inputs = [], []
    for index, frame in enumerate(stream.frames):
        try:
            image = read_image(stream.path(frame))
        except InputError:
            continue
        if is_hdr(image):
            continue
        readable.append(index)
        inputs.append(classifier.inputs(image))
    frames = list(stream.frames)
    if not inputs:
        return stream
    for index, probabilities in zip(readable, classifier.probabilities(np.stack(inputs))):
        best = int(probabilities.argmax())
        prediction = {"condition": classifier.conditions[best], "probability": round(float(probabilities[best]), 4),
                      "model": classifier.id}
        changes = {"prediction": prediction}
        if not frames[index].human_labelled:
            changes |= {"condition": prediction["condition"], "confidence": prediction["probability"],
                        "label_source": "model"}
        frames[index] = dataclasses.replace(frames[index], **changes)
    return dataclasses.replace(stream, frames=frames)


def label_streams(manifests: Path, classifier_path: Path) -> list[tuple[Path, Stream]]:
    """`label_stream` on every manifest of ``manifests``, each written back atomically (its version bumped)."""
    classifier = WeatherClassifier.load(classifier_path)
    labelled = []
    for path in manifest_files(manifests):
        stream = read_manifest(path)
        labelled.append((path, update_manifest(path, stream.version, lambda s: label_stream(s, classifier))))
    return labelled
