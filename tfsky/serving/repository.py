"""The development server's view of a TF Serving model repository.

A repository is ``<root>/<model>/<version>/saved_model.pb`` (what ``tfsky
export`` writes). Like TF Serving's default ``latest`` policy, the newest
version of each model is loaded; versions named by a version label in an
optional ``models.config`` (TF Serving's own ``ModelServerConfig`` text
format) are loaded too. Without a label config, ``stable`` means the newest
version. `ModelRepository.refresh` rescans the folder (the server calls it
every few seconds), so a version folder renamed into place is picked up and
an older one is retired once the new one is AVAILABLE. A version that fails
to load does not take the model down: the newest version that loads serves
instead (the one already serving, else older ones tried newest first, so a
broken newest version at server start still leaves the model up), the failed
one is END with its load error in the status, and it is tried again on a
later scan when its files change (or after ``retry_seconds``).

Errors a client caused are `ServingError` carrying the gRPC status code TF
Serving would answer with.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from pathlib import Path

import grpc
import numpy as np
import tensorflow as tf
from google.protobuf import text_format
from tensorflow_serving.config import model_server_config_pb2

from tfsky.errors import ServingError, TfskyError
from tfsky.export.metadata import SAVED_MODEL_FILE, read_signature_defs
from tfsky.serving.status import AVAILABLE, END, LOADING, VersionStatus

log = logging.getLogger("tfsky")

DEFAULT_SIGNATURE = "serving_default"


class Servable:
    """One loaded model version: its SavedModel signatures and their declared inputs.

    Args:
        name: str. Model name.
        version: int. Version number.
        path: Path. The version folder.
    """

    def __init__(self, name: str, version: int, path: Path):
        self.name = name
        self.version = version
        self.signature_defs = read_signature_defs(path)
        self._functions = tf.saved_model.load(str(path)).signatures

    def signature_def(self, signature: str):
        """The ``SignatureDef`` of ``signature`` (empty = ``serving_default``); unknown is INVALID_ARGUMENT."""
        signature = signature or DEFAULT_SIGNATURE
        if signature not in self.signature_defs:
            raise ServingError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"model '{self.name}' version {self.version} has no signature '{signature}' "
                f"(it has {', '.join(sorted(self.signature_defs))})",
            )
        return self.signature_defs[signature]

    def predict(self, signature: str, inputs: dict[str, np.ndarray], output_filter=()) -> dict[str, np.ndarray]:
        """Run ``signature`` on ``inputs`` (checked against the SignatureDef first); numpy in, numpy out."""
        signature = signature or DEFAULT_SIGNATURE
        signature_def = self.signature_def(signature)
        check_inputs(signature_def, inputs)
        unknown = set(output_filter) - set(signature_def.outputs)
        if unknown:
            raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, f"unknown output_filter {sorted(unknown)}")
        try:
            outputs = self._functions[signature](**{key: tf.constant(value) for key, value in inputs.items()})
        except tf.errors.InvalidArgumentError as err:
            raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, op_error_text(err)) from None
        except (ValueError, TypeError) as err:
            raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, _first_line(err)) from None
        return {key: value.numpy() for key, value in outputs.items() if not output_filter or key in output_filter}


def check_inputs(signature_def, inputs: dict[str, np.ndarray]) -> None:
    """Refuse missing or unknown inputs, wrong dtypes, wrong ranks and wrong fixed dimensions."""
    expected = signature_def.inputs
    missing, unknown = set(expected) - set(inputs), set(inputs) - set(expected)
    if missing or unknown:
        raise ServingError(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"inputs must be {sorted(expected)}; missing {sorted(missing)}, unknown {sorted(unknown)}",
        )
    for alias, value in inputs.items():
        info = expected[alias]
        want = tf.dtypes.as_dtype(info.dtype)
        got = tf.string if value.dtype.kind in "OSU" else tf.dtypes.as_dtype(value.dtype)
        if got != want:
            raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, f"input '{alias}' must be {want.name}, got {got.name}")
        if info.tensor_shape.unknown_rank:
            continue
        dims = [dim.size for dim in info.tensor_shape.dim]
        if value.ndim != len(dims) or any(d >= 0 and d != s for d, s in zip(dims, value.shape)):
            shape = "[" + ", ".join("?" if d < 0 else str(d) for d in dims) + "]"
            raise ServingError(
                grpc.StatusCode.INVALID_ARGUMENT, f"input '{alias}' must have shape {shape}, got {list(value.shape)}"
            )


class ModelRepository:
    """The models of a repository folder, loaded and kept up to date by `refresh`.

    Args:
        root: Path. Repository root (``<root>/<model>/<version>/``).
        model_config: Path. Optional ``ModelServerConfig`` text file with ``version_labels``.
            Defaults to None (``<root>/models.config`` when it exists).
        retry_seconds: float. A version that failed to load is tried again after this long even if
            its files did not change (the failure may have been passing, e.g. memory). Defaults to 60.
    """

    def __init__(self, root: str | Path, model_config: str | Path | None = None, retry_seconds: float = 60.0):
        self.root = Path(root)
        if not self.root.is_dir():
            raise TfskyError(f"{self.root}: model repository folder not found")
        default_config = self.root / "models.config"
        self.model_config = Path(model_config) if model_config else default_config if default_config.is_file() else None
        self._lock = threading.Lock()  # guards the three dicts below
        self._refresh_lock = threading.Lock()  # one rescan at a time
        self._servables: dict[str, dict[int, Servable]] = {}
        self._status: dict[str, dict[int, VersionStatus]] = {}
        self._labels: dict[str, dict[str, int]] = {}
        self.retry_seconds = retry_seconds
        self._failures: dict[tuple[str, int], tuple[tuple, float]] = {}  # (files fingerprint, time) of failed loads

    def refresh(self) -> None:
        """Rescan the folder: load wanted versions that are new, retire loaded ones no longer wanted.

        A loaded version is retired only when something newer serves in its place: if the newest
        version fails to load, the newest one below it that loads serves (`_load_newest_below`).
        """
        with self._refresh_lock:
            configured = read_version_labels(self.model_config) if self.model_config else {}
            for name, on_disk in scan_repository(self.root).items():
                labels = configured.get(name) or {"stable": max(on_disk)}
                newest = max(on_disk)
                wanted = {newest} | {v for v in labels.values() if v in on_disk}
                with self._lock:
                    self._labels[name] = labels
                    loaded = set(self._servables.get(name, {}))
                for version in sorted(wanted - loaded):
                    self._load(name, version, on_disk[version])
                with self._lock:
                    loaded = set(self._servables.get(name, {}))
                keep = wanted & loaded
                if newest not in loaded:  # the newest failed (or is retried later): serve the newest that loads
                    fallback = self._load_newest_below(name, newest, on_disk, loaded)
                    keep |= {fallback} if fallback is not None else set()
                for version in loaded - keep:
                    self._set(name, version, None, VersionStatus(version, END))

    def _load_newest_below(self, name: str, newest: int, on_disk: dict[int, Path], loaded: set[int]) -> int | None:
        """The newest version below ``newest`` that is loaded or loads now (None: none does).

        Versions newer than the loaded one are tried first, newest first: at server start (nothing
        loaded yet) a broken newest version must not leave the model without any version.
        """
        for version in sorted((v for v in on_disk if v < newest), reverse=True):
            if version in loaded or self._load(name, version, on_disk[version]):
                return version
        return None

    def _load(self, name: str, version: int, path: Path) -> bool:
        """Load one version (AVAILABLE) or record why it failed (END, with the error); whether it loaded."""
        fingerprint = _fingerprint(path)
        failed = self._failures.get((name, version))
        if failed is not None and failed[0] == fingerprint and time.monotonic() - failed[1] < self.retry_seconds:
            return False  # same files as the failed attempt: retry when they change or the retry delay has passed
        self._set(name, version, None, VersionStatus(version, LOADING))
        try:
            servable = Servable(name, version, path)
        except Exception as err:  # any load failure is reported through the status API
            log.warning("model %s version %s failed to load: %s", name, version, _first_line(err))
            self._failures[(name, version)] = (fingerprint, time.monotonic())
            self._set(name, version, None, VersionStatus(version, END, _first_line(err)))
            return False
        self._failures.pop((name, version), None)
        self._set(name, version, servable, VersionStatus(version, AVAILABLE))
        return True

    def _set(self, name: str, version: int, servable: Servable | None, status: VersionStatus) -> None:
        with self._lock:
            servables = self._servables.setdefault(name, {})
            if servable is None:
                servables.pop(version, None)
            else:
                servables[version] = servable
            self._status.setdefault(name, {})[version] = status

    def resolve(self, name: str, version: int | None = None, label: str | None = None) -> Servable:
        """The servable a request names: a version, a label, or (neither) the newest loaded version."""
        with self._lock:
            servables = self._servables.get(name)
            if not servables:
                raise ServingError(grpc.StatusCode.NOT_FOUND, f"model '{name}' not found (no loaded version)")
            if label:
                if label not in self._labels.get(name, {}):
                    raise ServingError(grpc.StatusCode.NOT_FOUND, f"model '{name}' has no version label '{label}'")
                version = self._labels[name][label]
            if version is None:
                version = max(servables)
            if version not in servables:
                raise ServingError(grpc.StatusCode.NOT_FOUND, f"model '{name}' version {version} is not loaded")
            return servables[version]

    def status(self, name: str, version: int | None = None) -> list[VersionStatus]:
        """States of the versions of ``name`` the server has handled (one version if given)."""
        with self._lock:
            states = self._status.get(name)
        if not states:
            raise ServingError(grpc.StatusCode.NOT_FOUND, f"model '{name}' not found")
        if version is not None:
            if version not in states:
                raise ServingError(grpc.StatusCode.NOT_FOUND, f"model '{name}' version {version} not found")
            return [states[version]]
        return [states[v] for v in sorted(states)]

    def labels(self, name: str) -> dict[str, int]:
        """Version labels of ``name`` (``stable`` = newest when none are configured)."""
        with self._lock:
            return dict(self._labels.get(name, {}))


def scan_repository(root: Path) -> dict[str, dict[int, Path]]:
    """``{model: {version: folder}}`` for complete version folders (numeric name, ``saved_model.pb`` present)."""
    models = {}
    for model_dir in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        versions = {
            int(v.name): v for v in model_dir.iterdir() if v.name.isdigit() and (v / SAVED_MODEL_FILE).is_file()
        }
        if versions:
            models[model_dir.name] = versions
    return models


def _fingerprint(folder: Path) -> tuple:
    """Names, sizes and modification times of the files of a version folder: changes when it is fixed."""
    entries = []
    for path in sorted(folder.rglob("*")):
        try:
            stat = path.stat()
        except OSError:  # removed while scanning, or a dangling link: part of what changed
            continue
        entries.append((str(path.relative_to(folder)), stat.st_size, stat.st_mtime_ns))
    return tuple(entries)


def read_version_labels(path: Path) -> dict[str, dict[str, int]]:
    """``{model: {label: version}}`` from a TF Serving ``models.config`` (``ModelServerConfig`` text format)."""
    config = model_server_config_pb2.ModelServerConfig()
    try:
        text_format.Parse(path.read_text(), config)
    except (OSError, text_format.ParseError) as err:
        raise TfskyError(f"{path}: not a valid TF Serving model config ({_first_line(err)})") from None
    return {model.name: dict(model.version_labels) for model in config.model_config_list.config}


def op_error_text(err: tf.errors.OpError) -> str:
    """The line of a TensorFlow op error that says what was wrong (not the graph-location boilerplate)."""
    boilerplate = ("Graph execution error", "Detected at node", "<stack traces unavailable>", "[[{{node", "File ")
    lines = [line.strip() for line in err.message.splitlines()]
    line = next((line for line in lines if line and not line.startswith(boilerplate)), lines[0])
    assertion = re.fullmatch(r"assertion failed: \[(.*)\]", line)  # a graph's tf.debugging.Assert message
    return assertion[1] if assertion else line


def _first_line(err: BaseException) -> str:
    text = str(err).strip() or type(err).__name__
    return text.splitlines()[0]
