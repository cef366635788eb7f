"""Segment image files through a server: what ``tfsky client predict`` runs.

For each image, ``<out>/<stem>_mask.png`` (0/255) and then ``<out>/<stem>.json``
(sky fraction, size, server, model, version) are written atomically. Encoded
LDR files (PNG, JPEG, BMP, GIF) are sent as they are to ``predict_image``;
other files are read with `tfsky.io.images.read_image` and sent as raw float32
to ``predict_hdr`` when they are HDR, or re-encoded as PNG otherwise. With an
export's metadata (``tiles_from``) images are tiled on the client and
``serving_default`` predicts the tile batches.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import grpc
import numpy as np
import tensorflow as tf

from tfsky.data.transforms import is_hdr
from tfsky.errors import InputError, TfskyError
from tfsky.export.metadata import read_metadata
from tfsky.io.atomic import write_bytes, write_json
from tfsky.io.images import read_image
from tfsky.models.bundle import ModelInfo
from tfsky.serving.client import Client, ImagePrediction, ServingRequestError
from tfsky.tiling import TilingConfig

ENCODED_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif"}


@dataclasses.dataclass
class FilesReport:
    """Images written and images that failed (path, one-line reason)."""

    done: list[Path] = dataclasses.field(default_factory=list)
    failed: list[tuple[Path, str]] = dataclasses.field(default_factory=list)


def segment_files(
    client: Client,
    model: str,
    images: list[Path],
    out: Path,
    *,
    version: int | None = None,
    label: str | None = None,
    tiles_from: Path | None = None,
) -> FilesReport:
    """Segment ``images`` through ``client``; a bad file or a refused image is reported and skipped.

    Server-level failures (unreachable server, unknown model or version) stop
    the run with their `ServingRequestError`.

    Args:
        client: Client. Connected client.
        model: str. Model name.
        images: list[Path]. Image files.
        out: Path. Output folder.
        version: int. Model version. Defaults to None (newest).
        label: str. Version label instead of a version. Defaults to None.
        tiles_from: Path. An exported version folder whose metadata gives the preprocessing and
            tiling for client-side tiling. Defaults to None (server-side ``predict_image``).
    """
    tiled = _client_tiling(tiles_from) if tiles_from else None
    report = FilesReport()
    for path in images:
        try:
            prediction = _segment(client, model, path, version, label, tiled)
        except ServingRequestError as err:
            if err.code != grpc.StatusCode.INVALID_ARGUMENT:
                raise
            report.failed.append((path, str(err)))
            continue
        except TfskyError as err:
            report.failed.append((path, str(err)))
            continue
        _write(out, path, prediction, client.server, model, version, label)
        report.done.append(path)
    return report


def _client_tiling(version_dir: Path) -> tuple[ModelInfo, TilingConfig, float]:
    metadata = read_metadata(version_dir)
    return ModelInfo.from_json(metadata["model"]), TilingConfig(**metadata["tiling"]), metadata["mask_threshold"]


def _segment(client: Client, model: str, path: Path, version, label, tiled) -> ImagePrediction:
    if tiled is not None:
        info, tiling, threshold = tiled
        image = read_image(path, channels=info.in_channels)
        prob = client.predict_large(model, image, preprocess=info.preprocess, tiling=tiling,
                                    version=version, label=label)[..., 0]
        mask = prob >= threshold
        return ImagePrediction(tf.io.encode_png(mask[..., None].astype(np.uint8) * 255).numpy(), prob, float(mask.mean()))
    if path.suffix.lower() in ENCODED_SUFFIXES:
        if not path.is_file():
            raise InputError(path, "file not found")
        return client.predict_image(model, path.read_bytes(), version=version, label=label)
    image = read_image(path)
    if is_hdr(image):
        return client.predict_hdr(model, image, version=version, label=label)
    return client.predict_image(model, tf.io.encode_png(image).numpy(), version=version, label=label)


def _write(out: Path, source: Path, prediction: ImagePrediction, server: str, model: str, version, label) -> None:
    height, width = prediction.probability.shape
    write_bytes(out / f"{source.stem}_mask.png", prediction.mask_png)
    write_json(out / f"{source.stem}.json", {
        "source": str(source), "server": server, "model": model, "version": version, "label": label,
        "height": height, "width": width, "sky_fraction": prediction.sky_fraction,
    })
