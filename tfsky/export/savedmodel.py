"""Export a trained tfsky model as one version of a TF Serving model repository.

``export_model`` writes ``<repo>/<name>/<version>/``: a SavedModel whose
signatures depend on the model's kind (`tfsky.models.bundle.ModelKind`), each
built by the exporter of `EXPORTERS`:

* a sky segmenter or a cloud model: `tfsky.export.segmenter` (``serving_default``
  on normalised tiles, ``predict_image`` on encoded images, ``predict_cloud``
  for a cloud model, ``predict_hdr`` for an HDR model);
* a weather classifier: `tfsky.export.classifier` (``serving_default`` on
  normalised images, ``classify_image`` on encoded ones);
* a colorizer: `tfsky.export.colorize` (``colorize_image``).

A translator (pix2pix, vae) is not exported. Encoded images are decoded in the
graph by `tfsky.export.decode`. Beside the SavedModel: warmup requests
(`tfsky.export.warmup`) and ``assets/tfsky_model.json`` (`tfsky.export.metadata`).

Every input and output has a leading batch dimension and per-image results of
any size are encoded strings, because TF Serving's ``--enable_batching``
concatenates concurrent requests along dimension 0 (scalar inputs are refused
and outputs must split back along it). The ``_bytes`` suffix makes TF
Serving's REST API answer those strings as ``{"b64": ...}``. The folder is
written under a temporary name and renamed into place when complete
(`tfsky.io.atomic.atomic_dir`), because TF Serving loads any numeric folder as
soon as it appears.
"""

from __future__ import annotations

import datetime
import re
import shutil
from pathlib import Path
from typing import Callable

import tensorflow as tf

from tfsky.errors import InputError
from tfsky.export import classifier, colorize, metadata, segmenter, warmup
from tfsky.export.config import ExportConfig, ExportPrecision
from tfsky.io.atomic import atomic_dir, prepare_out_dir, write_json
from tfsky.models.bundle import ModelInfo, ModelKind, load_info
from tfsky.predict.cloud import CloudCoverConfig
from tfsky.tiling import TilingConfig

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_VERSION_TEMP = re.compile(r"^\.\d+\..+\.part$")  # `atomic_dir`'s temporary of a version folder: .N.<random>.part
# The exporter of each kind: ``load(model_path, precision)`` -> the Keras model, its sidecar and a function of
# ``(tiling, cloud, max_pixels)`` that builds the exported `tf.Module` (which checks the tiling). Any other
# kind (or none: an old sidecar) goes to the segmenter's, which says what the model is.
EXPORTERS: dict[ModelKind | None, Callable[[Path | str, ExportPrecision], tuple]] = {
    ModelKind.SEGMENTER: segmenter.load,
    ModelKind.CLOUD: segmenter.load,
    ModelKind.CLASSIFIER: classifier.load,
    ModelKind.COLORIZER: colorize.load,
}


def next_version(model_dir: str | Path) -> int:
    """1 + the largest numeric version folder in ``model_dir`` (1 for a new model)."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        return 1
    return max((int(p.name) for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit()), default=0) + 1


def export_model(
    model_path: str | Path,
    repo: str | Path,
    name: str,
    *,
    version: int | None = None,
    overwrite: bool = False,
    tiling: TilingConfig | None = None,
    precision: ExportPrecision = ExportConfig.precision,
    cloud: CloudCoverConfig | None = None,
    max_pixels: int | None = None,
) -> Path:
    """Export a saved tfsky segmenter, cloud model, weather classifier or colorizer to ``<repo>/<name>/<version>/``
    (the exporter of its kind, `EXPORTERS`); returns that folder.

    Args:
        model_path: str | Path. A ``.keras`` file with its tfsky sidecar.
        repo: str | Path. The model repository root (what TF Serving mounts as /models).
        name: str. Model name under which it is served.
        version: int. Version number. Defaults to None (next free integer).
        overwrite: bool. Replace an existing version folder. Defaults to False.
        tiling: TilingConfig. In-graph tiling of ``predict_image``. Defaults to None
            (`TilingConfig` defaults with the model's tile size, as ``tfsky predict``).
        precision: str. ``float32`` rebuilds a mixed-precision model in float32
            (the shipped TF Serving image runs on CPU, where float16 is ~13x
            slower); ``as_trained`` keeps float16 layers, for a GPU server;
            ``bfloat16`` computes in bfloat16 (a CPU server with a bfloat16 unit; a segmenter as its
            stored bfloat16 verdict passed, refused without a passing one).
            Defaults to ``float32``.
        cloud: CloudCoverConfig. Cloud models: the camera masks embedded in ``predict_cloud``.
            Defaults to None (the masks of the model's training cameras).
        max_pixels: int. The image signatures refuse larger images before decoding them (stored in the
            metadata). Defaults to None: what ``tiling.memory_budget`` holds (`tfsky.export.decode.pixel_limit`).

    Raises:
        InputError: bad name or version, existing version without ``overwrite``,
            unreadable model, or a model that is neither a 1-class segmenter, a cloud model, a classifier
            nor a colorizer.
    """
    if not _NAME.match(name):
        raise InputError(name, "model name must be letters, digits, '_', '.' or '-' (it is a folder name)")
    load = EXPORTERS.get(load_info(model_path).kind, segmenter.load)
    model, info, build_module = load(model_path, precision)
    model_dir = Path(repo) / name
    version = next_version(model_dir) if version is None else version
    if version < 1:
        raise InputError(model_dir, f"version must be >= 1; got {version}")
    target = model_dir / str(version)
    if target.exists() and not overwrite:
        raise InputError(target, "version already exists (omit --version for the next one, or pass --overwrite)")
    module = build_module(tiling, cloud, max_pixels)  # validates the tiling before anything is written
    prepare_out_dir(model_dir)
    remove_stale_exports(model_dir)
    with atomic_dir(target) as tmp:
        tf.saved_model.save(module, str(tmp), signatures=module.signatures())
        warmup.write_warmup(tmp, warmup.prediction_logs(name, module.warmup_inputs()))
        write_json(tmp / metadata.METADATA_FILE, _metadata(model_path, name, version, info, module, model))
        _make_readable(tmp)
    return target


def remove_stale_exports(model_dir: Path) -> None:
    """Delete the hidden ``.N.<random>.part`` folders killed exports of this model left (one was 47 MB).

    Two exports of one model must not run at once anyway: both would pick the same next version.
    """
    for stale in model_dir.iterdir():
        if _VERSION_TEMP.match(stale.name) and stale.is_dir() and not stale.is_symlink():
            shutil.rmtree(stale, ignore_errors=True)


def _make_readable(folder: Path) -> None:
    """Temporary files and folders are created private; TF Serving runs as another user and must read them."""
    folder.chmod(0o755)
    for path in folder.rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)


def _metadata(model_path, name: str, version: int, info: ModelInfo, module, model) -> dict:
    return {
        "name": name,
        "version": version,
        "source_model": str(Path(model_path).resolve()),
        "exported_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "max_pixels": module.max_pixels,
        **module.metadata(),
        "compute_dtypes": sorted({layer.compute_dtype for layer in model.layers}),
        "model": info.to_json(),
    }
