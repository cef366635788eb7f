"""Weather-condition probabilities of whole frames from a trained tfsky classifier: files and stream labelling.

``tfsky predict`` with a classifier (`classify_many`) runs a `ClassifyTask` on
the job runner (`tfsky.batch`, same inputs, stems, skip-complete and failure
reports as for a segmenter): per image ``<out>/<stem>.json`` with the most
probable condition, its probability and every class probability; at the end
``<out>/classification.csv`` with one row per finished image (a re-run's
skipped images included). ``tfsky client predict`` writes the same files from
a served classifier (`tfsky.serving.classify_jobs`).
"""

from __future__ import annotations

import csv
import dataclasses
import io
from pathlib import Path
from typing import Any, Collection, Optional, Sequence

import numpy as np
import tensorflow as tf

from tfsky.data.labelled import COLOUR_STATISTICS, classifier_input, colour_statistics, condition_names, resized_rgb8
from tfsky.data.masks import sky_mask
from tfsky.data.streams import Stream, manifest_files, read_manifest, update_manifest
from tfsky.data.transforms import is_hdr
from tfsky import __version__
from tfsky.errors import InputError, TfskyError
from tfsky.io.atomic import write_json, write_text
from tfsky.io.images import read_image
from tfsky.io.stores import StorePath, as_path
from tfsky.batch import Decoded, Engine, Item, Listener, Report, Task, run_job
from tfsky.models.bundle import ModelInfo, ModelKind, load_info, load_model
from tfsky.models.precision import InferencePrecision, compute_dtype
from tfsky.predict.camera_mask import CameraPrior
from tfsky.predict.outputs import job_sidecars
from tfsky.predict.segment import TiledSegmenter, model_id
from tfsky.train.config import ClassifierConfig, trained_config

_BATCH = 32
TABLE = "classification.csv"
SKY_ANALYSIS_WIDTH = 320  # frames are measured for `SkyRegion` at this width
MIN_SKY_FRACTION = 0.02  # a frame with less segmented sky takes no model label


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
    def load(cls, path: str | Path, precision: InferencePrecision = "auto") -> "WeatherClassifier":
        """Load a ``best.keras`` written by ``tfsky train classifier``; another kind of model is an `InputError`.

        ``precision`` as for `tfsky.models.bundle.load_model` (export passes its own).
        """
        model, info = load_model(path, precision=precision, kind=ModelKind.CLASSIFIER)
        trained = trained_config(info, ClassifierConfig, path)
        data = trained.data
        return cls(model, info, trained, condition_names(data.classes), data.load_size, data.image_size, model_id(path))

    def inputs(self, image: np.ndarray) -> np.ndarray:
        """The model's uint8 input for one decoded RGB frame (`classifier_input`)."""
        return classifier_input(image, self.load_size, self.image_size)

    def probabilities(self, inputs: np.ndarray) -> np.ndarray:
        """``[N, classes]`` probabilities of ``[N, S, S, 3]`` uint8 model inputs, in batches."""
        batches = [
            self.model(self.info.preprocess.apply(tf.constant(inputs[start : start + _BATCH])), training=False)
            for start in range(0, len(inputs), _BATCH)
        ]
        if not batches:
            return np.zeros((0, len(self.conditions)))
        return np.concatenate([np.asarray(batch, np.float64) for batch in batches])


@dataclasses.dataclass
class SkyRegion:
    """A sky segmenter measuring the sky of frames for `label_stream` (``tfsky streams label --segmenter``)."""

    segmenter: TiledSegmenter
    id: str
    width: int = SKY_ANALYSIS_WIDTH

    @classmethod
    def load(cls, path: str | Path) -> "SkyRegion":
        return cls(TiledSegmenter.load(path), model_id(path))

    def __call__(self, image: np.ndarray, prior: Optional[CameraPrior] = None) -> dict:
        """The sky's share of the frame and the `COLOUR_STATISTICS` of the sky pixels (none without sky).

        The frame is area-resized to ``width`` first: a sky's colours need no full resolution, and the
        segmenter then costs a fraction of a full-size prediction. With the camera's ``prior`` (``tfsky
        streams skymask``) the sky is the frame's own fused with the camera's by the frame's evidence (a
        night frame is measured over the camera's sky), and the facts say the evidence weight and
        whether the frame's own sky disagrees with the camera's (``sky_disagrees``: one to review).
        """
        height = max(1, round(image.shape[0] * self.width / image.shape[1]))
        small = resized_rgb8(image, self.width, height)
        threshold = self.segmenter.mask_threshold()
        probability = self.segmenter.sky_probability(small)
        facts = {}
        if prior is not None:
            probability, fused = prior.at_size(probability.shape).fuse(small, probability, threshold)
            facts = {"camera_prior_weight": fused["evidence"]["weight"], "sky_disagrees": fused["sky_disagrees"]}
        sky = sky_mask(probability, threshold)
        facts = {"fraction": round(float(sky.mean()), 4), "segmenter": self.id, **facts}
        if sky.any():
            facts |= {
                name: round(float(value), 4) for name, value in zip(COLOUR_STATISTICS, colour_statistics(small, sky))
            }
        return facts


def label_stream(stream: Stream, classifier: WeatherClassifier, sky_region: Optional[SkyRegion] = None) -> Stream:
    """A copy of ``stream`` with the classifier's prediction on every readable frame.

    Each frame gets ``prediction`` (condition, probability, model id); frames
    without a human label (CSV or reviewer) also take it as their label, with
    the probability as its confidence and ``label_source: model``. Unreadable
    frames are left as they are (validation flags them ``corrupt``).

    With ``sky_region`` the prediction also holds ``sky``: the segmented sky's
    share of the frame and its colour statistics. A frame with less sky than
    `MIN_SKY_FRACTION` keeps its prediction but takes no model label (the
    classifier learnt weather from skies; without one its answer is a guess). A stream with a
    learnt camera mask (``skymask``) has its frames' sky fused with it (`SkyRegion`).
    """
    prior = CameraPrior.load(stream.skymask["mask"]) if sky_region is not None and stream.skymask else None
    readable, inputs, skies = [], [], []
    for index, frame in enumerate(stream.frames):
        try:
            image = read_image(stream.path(frame))
        except InputError:
            continue
        if is_hdr(image):
            continue
        readable.append(index)
        inputs.append(classifier.inputs(image))
        skies.append(sky_region(image, prior) if sky_region is not None else None)
    frames = list(stream.frames)
    if not inputs:
        return stream
    for index, probabilities, sky in zip(readable, classifier.probabilities(np.stack(inputs)), skies):
        best = int(probabilities.argmax())
        prediction = {
            "condition": classifier.conditions[best],
            "probability": round(float(probabilities[best]), 4),
            "model": classifier.id,
        }
        if sky is not None:
            prediction["sky"] = sky
        changes: dict[str, Any] = {"prediction": prediction}
        if not frames[index].human_labelled:
            if sky is not None and sky["fraction"] < MIN_SKY_FRACTION:
                changes |= {"condition": None, "confidence": None, "label_source": None}
            else:
                changes |= {
                    "condition": prediction["condition"],
                    "confidence": prediction["probability"],
                    "label_source": "model",
                }
        frames[index] = dataclasses.replace(frames[index], **changes)
    return dataclasses.replace(stream, frames=frames)


def label_streams(
    manifests: Path, classifier_path: Path, segmenter_path: Optional[Path] = None
) -> tuple[list[tuple[Path, Stream]], list[str]]:
    """`label_stream` on every manifest of ``manifests``, each written back atomically (its version bumped).

    ``segmenter_path``: a sky segmenter whose sky mask each frame's ``sky`` statistics are measured on.
    Returns the labelled streams and one line per manifest that could not be labelled (truncated,
    not a manifest, changed meanwhile): skipped, as every batch command skips a bad input and goes on.
    """
    classifier = WeatherClassifier.load(classifier_path)
    sky_region = SkyRegion.load(segmenter_path) if segmenter_path is not None else None
    labelled, skipped = [], []
    for path in manifest_files(manifests):
        try:
            stream = read_manifest(path)
            labelled.append(
                (path, update_manifest(path, stream.version, lambda s: label_stream(s, classifier, sky_region)))
            )
        except TfskyError as err:
            skipped.append(str(err))
    return labelled, skipped


def classify_many(
    model_path: str | Path,
    inputs: Sequence[Path],
    out_dir: str | Path,
    *,
    overwrite: bool = False,
    listener: Optional[Listener] = None,
    engine: Optional[Engine] = None,
    precision: InferencePrecision = "auto",
) -> Report:
    """Classify every image of ``inputs`` into ``out_dir`` (see the module docstring); returns the job's report.

    ``precision``: the inference precision (`tfsky.models.bundle.load_model`).
    """
    report = run_job(
        ClassifyTask(Path(model_path), precision),
        inputs,
        out_dir,
        overwrite=overwrite,
        listener=listener,
        engine=engine,
    )
    write_classification_table(as_path(out_dir), {str(source) for source in (*report.done, *report.skipped)})
    return report


class ClassifyTask(Task):
    """The sidecar of one image: its condition and class probabilities from a local classifier."""

    def __init__(self, model_path: Path, precision: InferencePrecision = "auto"):
        self.model_path = model_path
        self.precision = precision
        self.sizes: tuple[int, int] = (0, 0)
        self.classifier: Optional[WeatherClassifier] = None

    def check(self) -> None:
        info = load_info(self.model_path, kind=ModelKind.CLASSIFIER)
        data = trained_config(info, ClassifierConfig, self.model_path).data
        self.sizes = (data.load_size, data.image_size)

    def outputs(self, stem: Path) -> tuple[Path]:
        return (sidecar_path(stem),)

    def read(self, source: Path) -> tuple[np.ndarray, tuple[int, int]]:
        """The model input of ``source`` and the image's height and width."""
        image = read_ldr(source)
        return classifier_input(image, *self.sizes), image.shape[:2]

    def load(self) -> None:
        self.classifier = WeatherClassifier.load(self.model_path, self.precision)

    def process(self, item: Item, decoded: Decoded, outputs: tuple[Path], listener: Listener) -> None:
        assert self.classifier is not None  # load() ran
        inputs, (height, width) = decoded.take()
        probabilities = self.classifier.probabilities(inputs[None])[0]
        write_json(
            outputs[0],
            {
                "source": str(item.source),
                "height": height,
                "width": width,
                **classification(dict(zip(self.classifier.conditions, probabilities.tolist()))),
                "model": {"path": str(self.model_path), "id": self.classifier.id},
                "precision": compute_dtype(self.classifier.model),
                "tfsky_version": __version__,
            },
        )


def read_ldr(path: Path) -> np.ndarray:
    """An 8/16-bit image for the classifier; an HDR file is an `InputError` (it was trained on LDR photos)."""
    image = read_image(path)
    if is_hdr(image):
        raise InputError(path, "HDR image: the weather classifier takes 8/16-bit images")
    return image


def sidecar_path(stem: Path) -> Path:
    """The classification sidecar of output stem ``out/sub/name``: ``out/sub/name.json``."""
    return stem.parent / f"{stem.name}.json"


def classification(probabilities: dict[str, float]) -> dict:
    """The sidecar entries of one image's class probabilities: the most probable condition first."""
    condition = max(probabilities, key=probabilities.__getitem__)
    return {
        "condition": condition,
        "probability": round(probabilities[condition], 6),
        "probabilities": {name: round(value, 6) for name, value in probabilities.items()},
    }


def write_classification_table(out_dir: Path | StorePath, sources: Collection[str]) -> Optional[Path | StorePath]:
    """``classification.csv`` in ``out_dir`` from the sidecars there of the images ``sources``, by file name.

    Columns: ``file``, ``condition``, ``probability`` and ``p_<class>`` per class. Returns the path,
    or None (and writes nothing) when no such sidecar holds class probabilities.
    """
    rows = []
    for facts in job_sidecars(out_dir, sources):
        if isinstance(facts.get("probabilities"), dict):
            rows.append(
                {
                    "file": facts["source"],
                    "condition": facts["condition"],
                    "probability": facts["probability"],
                    **{f"p_{name}": value for name, value in facts["probabilities"].items()},
                }
            )
    if not rows:
        return None
    rows.sort(key=lambda row: row["file"])
    columns = list(dict.fromkeys(key for row in rows for key in row))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_text(out_dir / TABLE, buffer.getvalue())
    return out_dir / TABLE
