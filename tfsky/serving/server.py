"""A development server speaking TF Serving's gRPC and REST APIs (``tfsky serve``).

Production runs the ``tensorflow/serving`` container (see ``serving/``); this
server lets the client, the demo and the tests run end to end without Docker,
with the same client code. It implements, with TF Serving's own protos and
stubs (``tensorflow-serving-api``):

* gRPC ``PredictionService.Predict`` and ``GetModelMetadata`` and
  ``ModelService.GetModelStatus``, with TF Serving's status codes: unknown
  model, version or label -> NOT_FOUND; unknown signature, missing or unknown
  input, wrong dtype or rank -> INVALID_ARGUMENT; a message over the size
  limit -> RESOURCE_EXHAUSTED (gRPC's own check);
* REST ``POST /v1/models/<name>[...]:predict``, ``GET /v1/models/<name>[...]``
  (status) and ``.../metadata`` on a second port (`tfsky.serving.rest`), with
  the same status codes as HTTP statuses and TF Serving's ``{"error": ...}``
  body. The REST port does not trust its clients: a body over the message size
  limit is 413 (refused from its ``Content-Length``, before it is read), a
  missing or invalid ``Content-Length`` 400, and every connection has a read
  timeout (408), so a slow or silent client holds only its own thread.

It binds 127.0.0.1 by default and rescans the repository every
``poll_seconds`` (`tfsky.serving.repository.ModelRepository`).
"""

from __future__ import annotations

import contextlib
import http.server
import json
import logging
import re
import socket
import threading
import time
from concurrent import futures
from pathlib import Path

import grpc
import tensorflow as tf
from google.protobuf import json_format
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from tfsky.errors import ServingError, TfskyError
from tfsky.serving import rest
from tfsky.serving.config import ServeConfig
from tfsky.serving.repository import ModelRepository
from tfsky.serving.status import VersionStatus

log = logging.getLogger("tfsky")

_STATES = get_model_status_pb2.ModelVersionStatus.State
_DIGITS = re.compile(r"[0-9]+")  # str.isdigit also accepts '²', which int() refuses


@contextlib.contextmanager
def _grpc_errors(context: grpc.ServicerContext):
    """Turn `ServingError` into the matching gRPC status; anything else is INTERNAL (and logged)."""
    try:
        yield
    except ServingError as err:
        context.abort(err.code, str(err))
    except Exception as err:  # the server must keep serving whatever one request does
        log.exception("request failed")
        context.abort(grpc.StatusCode.INTERNAL, f"{type(err).__name__}: {err}")


def _version_of(model_spec) -> int | None:
    return model_spec.version.value if model_spec.HasField("version") else None


class PredictionService(prediction_service_pb2_grpc.PredictionServiceServicer):
    """``Predict`` and ``GetModelMetadata`` over a `ModelRepository`."""

    def __init__(self, repository: ModelRepository):
        self.repository = repository

    def Predict(self, request, context):  # noqa: N802 (gRPC method name)
        with _grpc_errors(context):
            spec = request.model_spec
            servable = self.repository.resolve(spec.name, _version_of(spec), spec.version_label)
            try:
                inputs = {alias: tf.make_ndarray(proto) for alias, proto in request.inputs.items()}
            except (TypeError, ValueError) as err:
                raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, f"malformed input tensor: {err}") from None
            outputs = servable.predict(spec.signature_name, inputs, list(request.output_filter))
            response = predict_pb2.PredictResponse()
            response.model_spec.name = servable.name
            response.model_spec.version.value = servable.version
            response.model_spec.signature_name = spec.signature_name or "serving_default"
            for alias, value in outputs.items():
                response.outputs[alias].CopyFrom(tf.make_tensor_proto(value))
            return response

    def GetModelMetadata(self, request, context):  # noqa: N802
        with _grpc_errors(context):
            return model_metadata(self.repository, request)


def model_metadata(repository: ModelRepository, request) -> get_model_metadata_pb2.GetModelMetadataResponse:
    """The ``signature_def`` metadata TF Serving returns for a `GetModelMetadataRequest`."""
    if list(request.metadata_field) != ["signature_def"]:
        raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, "metadata_field must be ['signature_def']")
    spec = request.model_spec
    servable = repository.resolve(spec.name, _version_of(spec), spec.version_label)
    response = get_model_metadata_pb2.GetModelMetadataResponse()
    response.model_spec.name = servable.name
    response.model_spec.version.value = servable.version
    signatures = get_model_metadata_pb2.SignatureDefMap()
    for name, signature_def in servable.signature_defs.items():
        signatures.signature_def[name].CopyFrom(signature_def)
    response.metadata["signature_def"].Pack(signatures)
    return response


class ModelService(model_service_pb2_grpc.ModelServiceServicer):
    """``GetModelStatus`` over a `ModelRepository`."""

    def __init__(self, repository: ModelRepository):
        self.repository = repository

    def GetModelStatus(self, request, context):  # noqa: N802
        with _grpc_errors(context):
            return model_status(self.repository, request.model_spec)


def model_status(repository: ModelRepository, spec) -> get_model_status_pb2.GetModelStatusResponse:
    """The `GetModelStatusResponse` for a model spec (a label resolves to its version)."""
    version = _version_of(spec)
    if spec.version_label:
        version = repository.resolve(spec.name, label=spec.version_label).version
    response = get_model_status_pb2.GetModelStatusResponse()
    for status in repository.status(spec.name, version):
        response.model_version_status.append(_status_proto(status))
    return response


def _status_proto(status: VersionStatus) -> get_model_status_pb2.ModelVersionStatus:
    proto = get_model_status_pb2.ModelVersionStatus(version=status.version, state=_STATES.Value(status.state))
    if status.error:
        proto.status.error_code = 13  # tensorflow.error.Code.INTERNAL
        proto.status.error_message = status.error
    return proto


class _HttpError(Exception):
    """A REST request refused before it reaches the model API (body size, Content-Length, timeout)."""

    def __init__(self, status: int, message: str):
        self.status = status
        super().__init__(message)


class _RestHandler(http.server.BaseHTTPRequestHandler):
    """TF Serving's REST endpoints; ``server`` carries ``repository``, ``max_body_bytes`` and ``read_timeout``."""

    protocol_version = "HTTP/1.1"
    body_unread = False  # a refused body was left unread: drain it before closing
    server: _RestServer

    def setup(self):
        # socket timeout of every read and write on this connection (`StreamRequestHandler.setup` applies it)
        self.timeout = self.server.read_timeout  # type: ignore[misc]  # typeshed: a ClassVar
        super().setup()

    def do_GET(self):  # noqa: N802
        if self.headers.get("Content-Length", "0").strip() != "0" or "Transfer-Encoding" in self.headers:
            self.close_connection = self.body_unread = True  # a GET body is not read: never parse it as a request
        self._answer(self._get)

    def do_POST(self):  # noqa: N802
        self._answer(self._post)

    def _route(self, want_verb: str):
        match = rest.MODEL_URL.match(self.path)
        if not match or (match["verb"] or "") != want_verb:
            raise ServingError(grpc.StatusCode.NOT_FOUND, f"malformed request: {self.command} {self.path}")
        spec = predict_pb2.PredictRequest().model_spec
        spec.name = match["name"]
        if match["version"]:
            spec.version.value = int(match["version"])
        if match["label"]:  # version and version_label are a oneof: setting either clears the other
            spec.version_label = match["label"]
        return spec

    def _get(self):
        repository = self.server.repository
        if self.path.endswith("/metadata"):
            request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
            request.model_spec.CopyFrom(self._route("/metadata"))
            response = model_metadata(repository, request)
            signatures = get_model_metadata_pb2.SignatureDefMap()
            response.metadata["signature_def"].Unpack(signatures)
            return {
                "model_spec": json_format.MessageToDict(response.model_spec, preserving_proto_field_name=True),
                "metadata": {"signature_def": json_format.MessageToDict(signatures, preserving_proto_field_name=True)},
            }
        status = model_status(repository, self._route(""))
        return json_format.MessageToDict(
            status, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
        )

    def _read_body(self) -> bytes:
        """The request body, read only when its ``Content-Length`` is valid and within the limit."""
        lengths = self.headers.get_all("Content-Length") or []
        if len(lengths) != 1 or not _DIGITS.fullmatch(lengths[0].strip()):
            self.close_connection = self.body_unread = True  # where the next request starts is unknown
            raise _HttpError(
                400, f"invalid Content-Length {', '.join(lengths) or '(missing)'}: one non-negative integer is required"
            )
        length, limit = int(lengths[0]), self.server.max_body_bytes
        if length > limit:
            self.close_connection = self.body_unread = True
            raise _HttpError(413, f"request body of {length} bytes is over the limit of {limit} bytes")
        try:
            body = self.rfile.read(length)
        except TimeoutError:
            self.close_connection = True
            raise _HttpError(408, f"request body not received within {self.server.read_timeout:g} s") from None
        if len(body) != length:
            self.close_connection = True
            raise _HttpError(400, f"request body ended after {len(body)} of {length} bytes")
        return body

    def _post(self):
        body = self._read_body()  # first: a refused URL must not leave its body to be read as the next request
        spec = self._route(":predict")
        try:
            body = json.loads(body)
        except (ValueError, RecursionError) as err:
            raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, f"JSON Parse error: {err}") from None
        servable = self.server.repository.resolve(spec.name, _version_of(spec), spec.version_label)
        signature = body.get("signature_name", "") if isinstance(body, dict) else ""
        signature_def = servable.signature_def(signature)
        dtypes = {alias: tf.dtypes.as_dtype(info.dtype) for alias, info in signature_def.inputs.items()}
        try:
            inputs, row_format = rest.parse_predict_body(body, dtypes)
            return rest.predict_response(servable.predict(signature, inputs), row_format)
        except ValueError as err:
            raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, str(err)) from None

    def _answer(self, handler) -> None:
        try:
            status, answer = 200, handler()
        except ServingError as err:
            status, answer = rest.HTTP_STATUS.get(err.code, 500), {"error": str(err)}
        except _HttpError as err:
            status, answer = err.status, {"error": str(err)}
        except Exception as err:  # keep serving
            log.exception("REST request failed")
            status, answer = 500, {"error": f"{type(err).__name__}: {err}"}
        data = json.dumps(answer).encode("utf-8")
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            if self.close_connection:
                self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(data)
        except OSError:  # the client went away or stopped reading (timeout): nothing left to tell it
            self.close_connection = True
        else:
            if self.body_unread:
                self._discard_unread_body()

    def _discard_unread_body(self) -> None:
        """Read and drop what the client is still sending (for at most the read timeout), then close.

        Closing a socket with unread data makes the kernel send a reset, and a
        client still busy sending its body would see that instead of our answer.
        """
        try:
            self.connection.shutdown(socket.SHUT_WR)
            self.connection.settimeout(0.2)
            deadline = time.monotonic() + self.server.read_timeout
            while time.monotonic() < deadline and self.connection.recv(1 << 16):
                pass
        except OSError:
            pass

    def log_message(self, format, *args):  # noqa: A002 (stdlib signature)
        log.debug("rest: " + format, *args)


class _RestServer(http.server.ThreadingHTTPServer):
    """One daemon thread per connection, so a slow client holds only its own (until its read timeout)."""

    daemon_threads = True

    def __init__(self, address, repository: ModelRepository, max_body_bytes: int, read_timeout: float):
        self.repository, self.max_body_bytes, self.read_timeout = repository, max_body_bytes, read_timeout
        super().__init__(address, _RestHandler)

    def handle_error(self, request, client_address):
        """A client that resets or drops its connection is its own problem: no traceback in the server log."""
        log.debug("rest: connection from %s failed", client_address, exc_info=True)


class DevServer:
    """gRPC + REST server over a model repository folder.

    Args:
        repo: Path. Model repository root.
        host: str. Interface to bind. Defaults to ``127.0.0.1``.
        grpc_port: int. gRPC port; 0 picks a free one. Defaults to 8500.
        rest_port: int. REST port; 0 picks a free one. Defaults to 8501.
        poll_seconds: float. Interval between repository rescans. Defaults to 2.
        max_message_mb: int. Largest gRPC message accepted or sent, and largest REST body accepted.
            Defaults to 256.
        workers: int. gRPC request threads (REST runs one thread per connection). Defaults to 8.
        read_timeout: float. Seconds a REST connection may stay silent (mid-request or idle between
            requests) before it is closed. Defaults to 30.
        model_config: Path. ``models.config`` with version labels. Defaults to None (``<repo>/models.config``).
    """

    def __init__(
        self,
        repo: str | Path,
        *,
        host: str = ServeConfig.host,
        grpc_port: int = ServeConfig.grpc_port,
        rest_port: int = ServeConfig.rest_port,
        poll_seconds: float = ServeConfig.poll_seconds,
        max_message_mb: int = ServeConfig.max_message_mb,
        workers: int = ServeConfig.workers,
        model_config: str | Path | None = None,
        read_timeout: float = ServeConfig.read_timeout,
    ):
        self.repository = ModelRepository(repo, model_config)
        self.host, self.grpc_port, self.rest_port = host, grpc_port, rest_port
        self.poll_seconds = poll_seconds
        self.max_message_bytes = max_message_mb * 1024 * 1024
        self.workers = workers
        self.read_timeout = read_timeout
        self._stopped = threading.Event()
        self._grpc: grpc.Server | None = None
        self._http: _RestServer | None = None
        self._threads: list[threading.Thread] = []

    def start(self) -> "DevServer":
        """Load the repository, bind both ports and serve in background threads; returns self."""
        self.repository.refresh()
        size = self.max_message_bytes
        self._grpc = grpc.server(
            futures.ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="tfsky-grpc"),
            options=[("grpc.max_receive_message_length", size), ("grpc.max_send_message_length", size)],
        )
        prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(
            PredictionService(self.repository), self._grpc
        )
        model_service_pb2_grpc.add_ModelServiceServicer_to_server(ModelService(self.repository), self._grpc)
        port = self._grpc.add_insecure_port(f"{self.host}:{self.grpc_port}")
        if port == 0:
            raise TfskyError(f"cannot bind gRPC port {self.host}:{self.grpc_port} (in use?)")
        self.grpc_port = port
        try:
            self._http = _RestServer(
                (self.host, self.rest_port), self.repository, self.max_message_bytes, self.read_timeout
            )
        except OSError as err:
            raise TfskyError(f"cannot bind REST port {self.host}:{self.rest_port} ({err.strerror})") from None
        self.rest_port = self._http.server_address[1]
        self._grpc.start()
        self._threads = [
            threading.Thread(target=self._http.serve_forever, name="tfsky-rest", daemon=True),
            threading.Thread(target=self._poll, name="tfsky-poll", daemon=True),
        ]
        for thread in self._threads:
            thread.start()
        return self

    def _poll(self) -> None:
        while not self._stopped.wait(self.poll_seconds):
            try:
                self.repository.refresh()
            except (TfskyError, OSError) as err:  # e.g. a models.config being edited: keep the last good state
                log.warning("repository rescan failed: %s", err)

    def stop(self, grace: float = 1.0) -> None:
        """Stop accepting requests, let running ones finish for up to ``grace`` seconds, stop the threads.

        Safe to call more than once (e.g. from a signal handler and a ``finally``).
        """
        if self._stopped.is_set():
            return
        self._stopped.set()
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
        if self._grpc is not None:
            self._grpc.stop(grace).wait()
        for thread in self._threads:
            thread.join(timeout=grace + self.poll_seconds)

    def wait(self) -> None:
        """Block until `stop` is called (from a signal handler or another thread)."""
        while not self._stopped.wait(0.5):
            pass

    def serve_forever(self) -> None:
        """`start`, then block until `stop`."""
        self.start()
        self.wait()

    def __enter__(self) -> "DevServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
