"""The exported form of a tfsky weather classifier: what ``tfsky export`` writes for a ``classifier`` model.

Signatures (float32 probabilities; every input and output has a leading batch
dimension, for TF Serving's request batching, as for the segmenter in
`tfsky.export.segmenter`):

* ``serving_default``: ``images`` float32 [batch, S, S, 3], already normalised
  (the model's `Preprocess`) -> ``probabilities`` float32 [batch, K].
* ``classify_image``: ``image_bytes`` [n], encoded PNG/JPEG/BMP/GIF of any size
  -> ``probabilities`` [n, K], ``class_names`` [n, K] (the conditions, in the
  model's order) and ``condition`` [n] (the most probable one). Each image is
  decoded as `tfsky.export.decode.decode_normalised` does, squeezed to the
  load size by area averaging, rounded to 8 bits and centre-cropped: what
  `tfsky.data.labelled.classifier_input` gives ``tfsky predict`` (TF's area
  resize is cv2's INTER_AREA to float rounding: probabilities agree to 1e-4,
  3.5e-5 on real JPEG photos).

The string outputs carry no ``_bytes`` suffix, so TF Serving's REST API answers
them as text.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tensorflow as tf

from tfsky.export.decode import decode_normalised, pixel_limit
from tfsky.export.warmup import WarmupInputs
from tfsky.models.precision import InferencePrecision
from tfsky.predict.classify import WeatherClassifier


# Peak resident memory per input pixel of classify_image (decode + area resize), measured on noise PNGs with a
# tiny classifier: 18 at 4 megapixels, 12.5 at 16; `pixel_limit` divides the memory budget by it.
CLASSIFIER_BYTES_PER_PIXEL = 20


def load(model_path: str | Path, precision: InferencePrecision):
    """The exporter of `tfsky.export.savedmodel.EXPORTERS` for weather classifiers: the loaded model, its sidecar
    and a function of ``(tiling, cloud, max_pixels)`` building the `ClassifierModule` (``tiling`` gives only its
    memory budget; ``cloud`` is ignored)."""
    classifier = WeatherClassifier.load(model_path, precision)
    return (
        classifier.model,
        classifier.info,
        lambda tiling, cloud, max_pixels: ClassifierModule(
            classifier, tiling.memory_budget if tiling else None, max_pixels
        ),
    )


class ClassifierModule(tf.Module):
    """The exported object: the Keras classifier plus one ``tf.function`` per signature.

    Args:
        classifier: WeatherClassifier. The loaded classifier.
        memory_budget: float. GB, for the default ``max_pixels`` (`pixel_limit`). Defaults to None.
        max_pixels: int. ``classify_image`` refuses larger images before decoding. Defaults to None.
    """

    def __init__(
        self, classifier: WeatherClassifier, memory_budget: float | None = None, max_pixels: int | None = None
    ):
        super().__init__(name="tfsky_classifier")
        self.max_pixels = pixel_limit(max_pixels, memory_budget, CLASSIFIER_BYTES_PER_PIXEL)
        self.model = classifier.model
        self.preprocess = classifier.info.preprocess
        self.class_names = list(classifier.conditions)
        self.load_size, self.image_size = classifier.load_size, classifier.image_size
        size = self.image_size
        self.predict_images = tf.function(
            self._predict_images, input_signature=[tf.TensorSpec([None, size, size, 3], tf.float32)]
        )
        self.classify_image = tf.function(self._classify_image, input_signature=[tf.TensorSpec([None], tf.string)])

    def signatures(self) -> dict[str, tf.types.experimental.ConcreteFunction]:
        """Signature name -> concrete function, for `tf.saved_model.save`."""
        return {
            "serving_default": self.predict_images.get_concrete_function(),
            "classify_image": self.classify_image.get_concrete_function(),
        }

    def warmup_inputs(self) -> WarmupInputs:
        """One normalised input for ``serving_default``, one PNG larger than the load size for ``classify_image``."""
        image = np.random.default_rng(0).integers(0, 256, (self.load_size + 16, 2 * self.load_size, 3), np.uint8)
        return {
            "serving_default": [{"images": np.zeros((1, self.image_size, self.image_size, 3), np.float32)}],
            "classify_image": [{"image_bytes": np.array([tf.io.encode_png(image).numpy()], dtype=object)}],
        }

    def metadata(self) -> dict:
        """What a client needs beside the signatures: class names and input sizes."""
        return {"class_names": self.class_names, "image_size": self.image_size, "load_size": self.load_size}

    def _probabilities(self, images: tf.Tensor) -> tf.Tensor:
        return tf.cast(self.model(images, training=False), tf.float32)

    def _predict_images(self, images: tf.Tensor) -> dict[str, tf.Tensor]:
        return {"probabilities": self._probabilities(images)}

    def _model_input(self, encoded: tf.Tensor) -> tf.Tensor:
        """One encoded image -> the normalised [S, S, 3] model input (see the module docstring)."""
        unit = decode_normalised(encoded, self.preprocess, 3, self.max_pixels)
        square = tf.image.resize(unit, (self.load_size, self.load_size), method="area")
        pixels = tf.cast(tf.round(tf.clip_by_value(square, 0.0, 1.0) * 255.0), tf.uint8)
        start = (self.load_size - self.image_size) // 2
        return self.preprocess.apply(pixels[start : start + self.image_size, start : start + self.image_size])

    def _classify_image(self, image_bytes: tf.Tensor) -> dict[str, tf.Tensor]:
        size = self.image_size
        inputs = tf.map_fn(
            self._model_input,
            image_bytes,
            parallel_iterations=1,
            fn_output_signature=tf.TensorSpec([size, size, 3], tf.float32),
        )
        probabilities = self._probabilities(inputs)
        names = tf.constant(self.class_names)
        count = tf.shape(image_bytes)[0]
        return {
            "probabilities": probabilities,
            "class_names": tf.tile(names[None], tf.stack([count, 1])),
            "condition": tf.gather(names, tf.argmax(probabilities, axis=-1)),
        }
