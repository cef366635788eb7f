"""Segment image files through a server, resumably: what ``tfsky client predict`` runs.

`segment_files` runs a `ServerSegmentTask` with the job runner (`tfsky.batch`), so
inputs and output stems are those of ``tfsky predict``: files, folders
(recursive) and ``.txt`` manifests; two inputs that would write the same
outputs are a failure of the second, found before any request.

For each image, ``<out>/<stem>_mask.png`` (0/255), ``<stem>_prob.png`` (16-bit,
probability x 65535, as ``tfsky predict``) and then ``<out>/<stem>.json`` (sky
fraction, size, server, model, version) are written atomically. The
sidecar is written last, so an image with all three files is complete: a re-run
skips it without a request (``overwrite`` redoes it) after removing the
temporaries a killed run left, and so finishes the job.

Encoded LDR files (PNG, JPEG, BMP, GIF) are sent as they are to
``predict_image``; other files are read with `tfsky.io.images.read_image` and
sent as raw float32 to ``predict_hdr`` when they are HDR, or re-encoded as PNG
otherwise. With an export's metadata (``tiles_from``) images are tiled on the
client and ``serving_default`` predicts the tile batches.

A served cloud model (``cloud=True``, `Client.served_kind`) writes what ``tfsky predict`` writes for
one: ``<stem>_classes.png`` (from ``predict_cloud``), the cloud mask and the cloud probability (from
``predict_image``, zero outside the valid sky), the sidecar's ``cloud_cover`` facts (computed here
from the class mask with the `CloudCoverConfig` defaults; which camera mask the server chose is not
in its answer, so ``camera_mask`` is left out) and, at the end, ``cloud_cover.csv`` and
``cloud_cover.png`` of the job (`tfsky.predict.outputs.write_cloud_series`). A frame without valid
sky fails as it does locally. HDR frames are refused (a cloud model is trained on 8/16-bit frames).
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import grpc
import numpy as np
import tensorflow as tf

from tfsky.data.masks import sky_mask
from tfsky.data.transforms import is_hdr
from tfsky.errors import InputError
from tfsky.export.metadata import read_metadata
from tfsky.io.atomic import write_bytes, write_json
from tfsky.io.images import read_image
from tfsky.io.stores import as_path
from tfsky.batch import Decoded, Item, Listener, Report, Task, run_job
from tfsky.models.bundle import ModelInfo, ModelKind, require_kind
from tfsky.predict.cloud import CloudCoverConfig, cloud_cover, timestamp_from_name
from tfsky.predict.outputs import CLASS_PNG_VALUES, write_cloud_series, write_probability_png
from tfsky.serving.client import Client, ImagePrediction, ServingRequestError
from tfsky.tiling import TilingConfig

ENCODED_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif"}


def segment_files(
    client: Client,
    model: str,
    inputs: Sequence[Path],
    out: str | Path,
    *,
    version: int | None = None,
    label: str | None = None,
    tiles_from: Path | None = None,
    cloud: bool = False,
    overwrite: bool = False,
    listener: Optional[Listener] = None,
) -> Report:
    """Segment every image of ``inputs`` through ``client`` into ``out``; see the module docstring.

    A bad file or an image the server refuses (INVALID_ARGUMENT) is recorded in
    the report's ``failed`` with its reason and the job goes on. Server-level
    failures (unreachable server, unknown model or version) would fail every
    image alike, so they stop the run with their `ServingRequestError`.

    Args:
        client: Client. Connected client.
        model: str. Model name.
        inputs: sequence of Path. Image files, folders (searched recursively) and ``.txt`` manifests.
        out: str | Path. Output folder, or ``s3://bucket/prefix`` (`tfsky.io.stores`).
        version: int. Model version. Defaults to None (newest).
        label: str. Version label instead of a version. Defaults to None.
        tiles_from: Path. An exported version folder whose metadata gives the preprocessing and
            tiling for client-side tiling. Defaults to None (server-side ``predict_image``).
        cloud: bool. The served model is a cloud model: write its cloud outputs too (module docstring).
            Defaults to False.
        overwrite: bool. Redo images whose outputs are complete. Defaults to False.
        listener: Listener. Progress hooks. Defaults to None.
    """
    task = ServerSegmentTask(client, model, version, label, _client_tiling(tiles_from) if tiles_from else None, cloud)
    report = run_job(task, inputs, out, overwrite=overwrite, listener=listener)
    if cloud:
        write_cloud_series(as_path(out), {str(source) for source in (*report.done, *report.skipped)})
    return report


class ServerSegmentTask(Task):
    """Mask, probability map and sidecar of one image (and a cloud model's class mask), predicted by a server
    (runs on the local engine only)."""

    def __init__(self, client: Client, model: str, version: int | None, label: str | None, tiled, cloud: bool = False):
        self.client, self.model, self.version, self.label, self.tiled = client, model, version, label, tiled
        self.cloud = cloud

    def outputs(self, stem: Path) -> tuple[Path, ...]:
        classes = (stem.parent / f"{stem.name}_classes.png",) if self.cloud else ()
        return (*classes, *output_paths(stem))

    def process(self, item: Item, decoded: Decoded, outputs: tuple[Path, ...], listener: Listener) -> None:
        if not self.cloud:
            prediction = _segment(self.client, self.model, item.source, self.version, self.label, self.tiled)
            _write(outputs, item.source, prediction, self.client.server, self.model, self.label)
            return
        encoded = encoded_ldr(item.source, "cloud model")
        prediction = self.client.predict_image(self.model, encoded, version=self.version, label=self.label)
        classes_png = self.client.predict_cloud(self.model, encoded, version=prediction.version)  # the same version
        prediction, cover = _cloud_prediction(prediction, classes_png, item.source)
        write_bytes(outputs[0], classes_png)
        _write(outputs[1:], item.source, prediction, self.client.server, self.model, self.label, cloud_cover=cover)

    def stops_the_job(self, err: Exception) -> bool:
        """Server errors other than a refused image (INVALID_ARGUMENT) would fail every image alike."""
        return isinstance(err, ServingRequestError) and err.code != grpc.StatusCode.INVALID_ARGUMENT


def output_paths(stem: Path) -> tuple[Path, ...]:
    """Mask, probability map and sidecar of output stem ``out/sub/name``, in the order they are written."""
    return tuple(stem.parent / f"{stem.name}{suffix}" for suffix in ("_mask.png", "_prob.png", ".json"))


def encoded_ldr(path: Path, kind: str) -> bytes:
    """What is sent for one 8/16-bit image: an encoded file as it is, another one re-encoded as PNG.

    Raises:
        InputError: the file is missing, unreadable or HDR (the served ``kind`` takes 8/16-bit images).
    """
    if path.suffix.lower() in ENCODED_SUFFIXES:
        if not path.is_file():
            raise InputError(path, "file not found")
        return path.read_bytes()
    image = read_image(path)
    if is_hdr(image):
        raise InputError(path, f"HDR image: a served {kind} takes 8/16-bit images")
    return tf.io.encode_png(image).numpy()


def _cloud_prediction(prediction: ImagePrediction, classes_png: bytes, source: Path) -> tuple[ImagePrediction, dict]:
    """The cloud mask and probability restricted to the valid sky of the class mask, as ``tfsky predict`` writes
    them, and the frame's cloud-cover facts (an `InputError` when no pixel is valid sky)."""
    classes = tf.io.decode_png(classes_png).numpy()[..., 0]
    valid = classes != CLASS_PNG_VALUES["outside"]
    cover = cloud_cover(classes == CLASS_PNG_VALUES["cloud"], valid, CloudCoverConfig(), source)
    cover["timestamp"] = timestamp_from_name(source.name)
    mask = np.where(valid, tf.io.decode_png(prediction.mask_png).numpy()[..., 0], 0).astype(np.uint8)
    probability = np.where(valid, prediction.probability, np.float32(0))
    return prediction._replace(
        mask_png=tf.io.encode_png(mask[..., None]).numpy(),
        probability=probability,
        sky_fraction=np.count_nonzero(mask) / mask.size,
    ), cover


def _client_tiling(version_dir: Path) -> tuple[ModelInfo, TilingConfig, float]:
    metadata = read_metadata(version_dir)
    info = ModelInfo.from_json(metadata["model"])
    require_kind(info, version_dir, ModelKind.SEGMENTER)
    if info.kind is ModelKind.CLOUD:
        raise InputError(
            version_dir, "is a cloud model: client-side tiling (--tiles) draws a 1-class sky mask; omit --tiles"
        )
    return info, TilingConfig(**metadata["tiling"]), metadata["mask_threshold"]


def _segment(client: Client, model: str, path: Path, version, label, tiled) -> ImagePrediction:
    if tiled is not None:
        info, tiling, threshold = tiled
        image = read_image(path, channels=info.in_channels)
        prob = client.predict_large(
            model, image, preprocess=info.preprocess, tiling=tiling, version=version, label=label
        )[..., 0]
        mask = sky_mask(prob, threshold)
        answered = version if version is not None else client.serving_version(model, label=label)
        return ImagePrediction(
            tf.io.encode_png(mask[..., None].astype(np.uint8) * 255).numpy(), prob, float(mask.mean()), answered
        )
    if path.suffix.lower() in ENCODED_SUFFIXES:
        return client.predict_image(model, encoded_ldr(path, "segmenter"), version=version, label=label)
    image = read_image(path)
    if is_hdr(image):
        return client.predict_hdr(model, image, version=version, label=label)
    return client.predict_image(model, tf.io.encode_png(image).numpy(), version=version, label=label)


def _write(
    outputs: tuple[Path, ...], source: Path, prediction: ImagePrediction, server: str, model: str, label, **facts
) -> None:
    """Write the mask and the probability map, then the sidecar (with ``facts``) that marks the image complete."""
    mask_path, prob_path, sidecar_path = outputs
    height, width = prediction.probability.shape
    write_bytes(mask_path, prediction.mask_png)
    write_probability_png(prob_path, prediction.probability)
    write_json(
        sidecar_path,
        {
            "source": str(source),
            "server": server,
            "model": model,
            "version": prediction.version,
            "label": label,
            "height": height,
            "width": width,
            "sky_fraction": prediction.sky_fraction,
            **facts,
        },
    )
