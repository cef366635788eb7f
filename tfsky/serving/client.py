"""The production client of a tfsky model on TF Serving (or ``tfsky serve``): `Client`.

gRPC (port 8500) uses ``tensorflow-serving-api``'s ``PredictionService`` and
``ModelService`` stubs with the message size limits set explicitly on the
channel (gRPC's 4 MiB default is too small for a probability map); REST (port
8501, ``rest=True``) uses TF Serving's JSON API. Every call has a deadline;
UNAVAILABLE (server down, restarting, connection refused) is retried with
exponential backoff; everything else fails at once as a `ServingRequestError`
whose message is one line naming the server and the problem.

A large image is segmented either in one ``predict_image`` request (encoded
bytes in, mask PNG + probability + sky fraction out: decoding, tiling and
blending happen on the server) or, with `Client.predict_large`, tiled on the
client by `tfsky.tiling.sliding_window_inference` with ``serving_default``
predicting each tile batch. A weather classifier answers `Client.classify_image`
(encoded bytes in, class probabilities by name out), a cloud model also
`Client.predict_cloud` (its class mask) and a colorizer `Client.colorize_image`
(the colour PNG); `Client.served_kind` tells them apart by their signatures.
"""

from __future__ import annotations

import http.client
import json
import time
import urllib.error
import urllib.request
from typing import Any, Callable, NamedTuple

import grpc
import numpy as np
import tensorflow as tf
from google.protobuf import json_format
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from tfsky.data.config import SIZE_MULTIPLE
from tfsky.data.transforms import Preprocess
from tfsky.errors import TfskyError
from tfsky.models.bundle import ModelKind
from tfsky.serving.config import ClientConfig
from tfsky.export.metadata import SignatureSummary, summarize_signatures
from tfsky.serving import rest
from tfsky.serving.status import VersionStatus
from tfsky.tiling import TilingConfig, sliding_window_inference

_IMAGE_OUTPUTS = {"mask_png_bytes": tf.string, "probability_png_bytes": tf.string, "sky_fraction": tf.float32}
_CLASSIFY_OUTPUTS = {"probabilities": tf.float32, "class_names": tf.string}
_CLOUD_OUTPUTS = {"class_mask_png_bytes": tf.string}
_COLORIZE_OUTPUTS = {"png_bytes": tf.string}
CLASSIFY_SIGNATURE = "classify_image"  # what a served weather classifier has (`tfsky.export.classifier`)
CLOUD_SIGNATURE = "predict_cloud"  # what a served cloud model has besides predict_image
COLORIZE_SIGNATURE = "colorize_image"  # what a served colorizer has (`tfsky.export.colorize`)
# The signature that tells each kind of export apart, most specific first (a cloud model has predict_image too).
_KIND_SIGNATURES = (
    (ModelKind.CLASSIFIER, CLASSIFY_SIGNATURE),
    (ModelKind.COLORIZER, COLORIZE_SIGNATURE),
    (ModelKind.CLOUD, CLOUD_SIGNATURE),
    (ModelKind.SEGMENTER, "predict_image"),
)
_STATES = get_model_status_pb2.ModelVersionStatus.State


class ServingRequestError(TfskyError):
    """A request the server refused or could not answer; ``code`` is the gRPC status code."""

    def __init__(self, server: str, code: grpc.StatusCode, details: str):
        self.code = code
        details = " ".join(str(details).split())  # one line
        super().__init__(f"server {server}: {code.name}: {details}")


class ImagePrediction(NamedTuple):
    """What ``predict_image`` / ``predict_hdr`` return for one image.

    ``probability`` is float32 [H, W], decoded from the 16-bit PNG the server sends (step 1 / 65535).
    ``version`` is the model version that answered: gRPC answers carry it; TF Serving's REST
    answers do not, so over REST it is the version asked for, or else the one the model's
    metadata names right after the prediction.
    """

    mask_png: bytes
    probability: np.ndarray
    sky_fraction: float
    version: int | None = None


class ImageClassification(NamedTuple):
    """What ``classify_image`` returns for one image: class name -> probability, and the version that answered."""

    probabilities: dict[str, float]
    version: int | None = None


class _Failed(Exception):
    def __init__(self, code: grpc.StatusCode, details: str):
        self.code, self.details = code, details


class Client:
    """Talk to TF Serving (or ``tfsky serve``) over gRPC or REST.

    Args:
        server: str. ``host:port``: the gRPC port (8500), or the REST port (8501) with ``rest=True``.
        rest: bool. Use the REST API instead of gRPC. Defaults to False.
        timeout: float. Deadline of each attempt, in seconds. Defaults to 60 (`ClientConfig`).
        retries: int. Extra attempts after UNAVAILABLE, waiting ``backoff * 2**n`` seconds. Defaults to 3.
        max_message_mb: int. gRPC send/receive message size limit. Defaults to 256.
        backoff: float. First retry delay in seconds. Defaults to 0.25.
        retry_deadline_exceeded: bool. Also retry DEADLINE_EXCEEDED. Defaults to False.
    """

    def __init__(
        self,
        server: str = ClientConfig.server,
        *,
        rest: bool = ClientConfig.rest,
        timeout: float = ClientConfig.timeout,
        retries: int = ClientConfig.retries,
        max_message_mb: int = 256,
        backoff: float = 0.25,
        retry_deadline_exceeded: bool = False,
    ):
        self.server, self.rest, self.timeout = server, rest, timeout
        self.retries, self.backoff = retries, backoff
        self._retry_codes = {grpc.StatusCode.UNAVAILABLE}
        if retry_deadline_exceeded:
            self._retry_codes.add(grpc.StatusCode.DEADLINE_EXCEEDED)
        self._channel = None
        if not rest:
            size = max_message_mb * 1024 * 1024
            self._channel = grpc.insecure_channel(
                server, options=[("grpc.max_send_message_length", size), ("grpc.max_receive_message_length", size)]
            )
            self._predictions = prediction_service_pb2_grpc.PredictionServiceStub(self._channel)
            self._models = model_service_pb2_grpc.ModelServiceStub(self._channel)

    def close(self) -> None:
        if self._channel is not None:
            self._channel.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ----------------------------------------------------------------- predictions

    def predict_image(
        self, model: str, image_bytes: bytes, *, version: int | None = None, label: str | None = None
    ) -> ImagePrediction:
        """Segment one encoded PNG/JPEG of any size on the server (``predict_image`` signature)."""
        inputs = {"image_bytes": np.array([image_bytes], dtype=object)}
        return self._image_prediction(
            *self._predict(model, "predict_image", inputs, _IMAGE_OUTPUTS, version, label, rest_version=True)
        )

    def predict_hdr(
        self, model: str, image: np.ndarray, *, version: int | None = None, label: str | None = None
    ) -> ImagePrediction:
        """Segment one float32 [H, W, C] HDR radiance image on the server (``predict_hdr`` signature)."""
        image = np.ascontiguousarray(image, dtype="<f4")
        inputs = {"image_raw": np.array([image.tobytes()], dtype=object), "shape": np.array([image.shape], np.int32)}
        return self._image_prediction(
            *self._predict(model, "predict_hdr", inputs, _IMAGE_OUTPUTS, version, label, rest_version=True)
        )

    def classify_image(
        self, model: str, image_bytes: bytes, *, version: int | None = None, label: str | None = None
    ) -> ImageClassification:
        """Class probabilities of one encoded PNG/JPEG of any size from a served weather classifier."""
        inputs = {"image_bytes": np.array([image_bytes], dtype=object)}
        outputs, answered = self._predict(
            model, CLASSIFY_SIGNATURE, inputs, _CLASSIFY_OUTPUTS, version, label, rest_version=True
        )
        names = [name.decode("utf-8") for name in outputs["class_names"][0]]
        return ImageClassification(dict(zip(names, outputs["probabilities"][0].astype(float).tolist())), answered)

    def predict_cloud(
        self, model: str, image_bytes: bytes, *, version: int | None = None, label: str | None = None
    ) -> bytes:
        """The class mask PNG (255 cloud, 100 clear sky, 0 outside the valid sky) of one encoded frame from a
        served cloud model (``predict_cloud``)."""
        inputs = {"image_bytes": np.array([image_bytes], dtype=object)}
        outputs, _ = self._predict(model, CLOUD_SIGNATURE, inputs, _CLOUD_OUTPUTS, version, label)
        return outputs["class_mask_png_bytes"][0]

    def colorize_image(
        self, model: str, image_bytes: bytes, *, version: int | None = None, label: str | None = None
    ) -> bytes:
        """The colour PNG (8-bit RGB, the input's size) of one encoded image from a served colorizer."""
        inputs = {"image_bytes": np.array([image_bytes], dtype=object)}
        outputs, _ = self._predict(model, COLORIZE_SIGNATURE, inputs, _COLORIZE_OUTPUTS, version, label)
        return outputs["png_bytes"][0]

    def predict_tiles(
        self, model: str, tiles: np.ndarray, *, version: int | None = None, label: str | None = None
    ) -> np.ndarray:
        """Probabilities [B, h, w, K] of normalised float32 tiles [B, h, w, C] (``serving_default``)."""
        inputs = {"tiles": np.asarray(tiles, np.float32)}
        outputs, _ = self._predict(model, "serving_default", inputs, {"probabilities": tf.float32}, version, label)
        return outputs["probabilities"]

    def predict_large(
        self,
        model: str,
        image: np.ndarray,
        *,
        preprocess: Preprocess,
        tiling: TilingConfig,
        version: int | None = None,
        label: str | None = None,
    ) -> np.ndarray:
        """Probabilities [H, W, K] of a large [H, W, C] image tiled on the client, one request per tile batch.

        Args:
            model: str. Model name.
            image: np.ndarray. Pixels as read (uint8/uint16, or float32 HDR).
            preprocess: Preprocess. The model's normalisation (exported in ``assets/tfsky_model.json``).
            tiling: TilingConfig. ``tile`` must be set (the model's tile size).
            version: int. Version to use. Defaults to None (newest).
            label: str. Version label to use instead. Defaults to None.
        """

        def predict_batch(tiles: np.ndarray) -> np.ndarray:
            normalised = preprocess.apply(tiles).numpy()
            return self.predict_tiles(model, normalised, version=version, label=label)

        return sliding_window_inference(image, predict_batch, tiling, multiple=SIZE_MULTIPLE)  # tfsky predict's grid

    # ----------------------------------------------------------------- model status

    def status(self, model: str, *, version: int | None = None, label: str | None = None) -> list[VersionStatus]:
        """State of each version of ``model``: AVAILABLE, LOADING, END... (parsed: REST answers 200 for all)."""
        if self.rest:
            answer = self._call(lambda: self._http("GET", rest.model_url(self._base, model, version, label)))
            response = json_format.ParseDict(answer, get_model_status_pb2.GetModelStatusResponse())
        else:
            request = get_model_status_pb2.GetModelStatusRequest()
            _fill_spec(request.model_spec, model, version, label)
            response = self._call(lambda: self._models.GetModelStatus(request, timeout=self.timeout))
        return [
            VersionStatus(s.version, _STATES.Name(s.state), s.status.error_message)
            for s in response.model_version_status
        ]

    def metadata(self, model: str, *, version: int | None = None, label: str | None = None) -> list[SignatureSummary]:
        """The signatures the server serves for ``model`` (GetModelMetadata)."""
        return summarize_signatures(dict(self._metadata(model, version, label)[1].signature_def))

    def served_kind(self, model: str, *, version: int | None = None, label: str | None = None) -> ModelKind:
        """`ModelKind` ``segmenter``, ``cloud``, ``classifier`` or ``colorizer``: what the served ``model`` is,
        from its signatures (one GetModelMetadata); translators are not exported.

        Raises:
            ServingRequestError: the model has none of the signatures tfsky exports (INVALID_ARGUMENT).
        """
        names = {signature.name for signature in self.metadata(model, version=version, label=label)}
        for kind, signature in _KIND_SIGNATURES:
            if signature in names:
                return kind
        raise ServingRequestError(
            self.server,
            grpc.StatusCode.INVALID_ARGUMENT,
            f"model '{model}' is not a tfsky export (signatures: {', '.join(sorted(names))})",
        )

    def serving_version(self, model: str, *, label: str | None = None) -> int:
        """The version that answers requests for ``model`` (its newest, or ``label``'s) right now (GetModelMetadata)."""
        return self._metadata(model, None, label)[0]

    def _metadata(self, model, version, label) -> tuple[int, get_model_metadata_pb2.SignatureDefMap]:
        """``(version that answered, signatures)`` of GetModelMetadata."""
        signatures = get_model_metadata_pb2.SignatureDefMap()
        if self.rest:
            url = rest.model_url(self._base, model, version, label, "/metadata")
            answer = self._call(lambda: self._http("GET", url))
            json_format.ParseDict(answer["metadata"]["signature_def"], signatures)
            return int(answer["model_spec"]["version"]), signatures
        request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
        _fill_spec(request.model_spec, model, version, label)
        response = self._call(lambda: self._predictions.GetModelMetadata(request, timeout=self.timeout))
        response.metadata["signature_def"].Unpack(signatures)
        return response.model_spec.version.value, signatures

    # ----------------------------------------------------------------- transport

    @property
    def _base(self) -> str:
        return f"http://{self.server}"

    def _predict(
        self, model, signature, inputs, outputs, version, label, rest_version: bool = False
    ) -> tuple[dict[str, np.ndarray], int | None]:
        """``(outputs, version that answered)``; over REST the version asked for, or (``rest_version``) looked up."""
        if self.rest:
            body = {
                "signature_name": signature,
                "inputs": {name: rest.encode_value(name, value) for name, value in inputs.items()},
            }
            url = rest.model_url(self._base, model, version, label, ":predict")
            arrays = rest.parse_outputs(self._call(lambda: self._http("POST", url, body)), outputs)
            if version is None and rest_version:  # one GET per image; tile batches do without
                version = self.serving_version(model, label=label)
            return arrays, version
        request = predict_pb2.PredictRequest()
        _fill_spec(request.model_spec, model, version, label, signature)
        for name, value in inputs.items():
            request.inputs[name].CopyFrom(tf.make_tensor_proto(value))
        response = self._call(lambda: self._predictions.Predict(request, timeout=self.timeout))
        return {name: tf.make_ndarray(response.outputs[name]) for name in outputs}, response.model_spec.version.value

    def _call(self, attempt: Callable[[], Any]) -> Any:
        """Run ``attempt``, retrying UNAVAILABLE with exponential backoff; failures become `ServingRequestError`."""
        for number in range(self.retries + 1):
            try:
                return attempt()
            except grpc.RpcError as err:
                failure = _Failed(err.code(), err.details())
            except _Failed as err:
                failure = err
            if failure.code not in self._retry_codes or number == self.retries:
                break
            time.sleep(self.backoff * 2**number)
        if failure.code in self._retry_codes:
            failure.details = f"no answer after {self.retries + 1} attempts ({failure.details})"
        raise ServingRequestError(self.server, failure.code, failure.details)

    def _http(self, method: str, url: str, body: dict | None = None) -> dict:
        data = None if body is None else json.dumps(body).encode("utf-8")
        request = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as answer:
                return json.loads(answer.read())
        except urllib.error.HTTPError as err:
            raise _Failed(rest.GRPC_CODE.get(err.code, grpc.StatusCode.UNKNOWN), _error_text(err)) from None
        except TimeoutError as err:
            raise _Failed(grpc.StatusCode.DEADLINE_EXCEEDED, str(err) or "timed out") from None
        except (urllib.error.URLError, ConnectionError) as err:
            raise _Failed(grpc.StatusCode.UNAVAILABLE, str(getattr(err, "reason", err))) from None
        except (http.client.HTTPException, ValueError) as err:  # e.g. the gRPC port, or not TF Serving at all
            raise _Failed(
                grpc.StatusCode.UNKNOWN, f"not a TF Serving REST answer ({type(err).__name__}); is this the REST port?"
            ) from None

    @staticmethod
    def _image_prediction(outputs: dict[str, np.ndarray], version: int | None) -> ImagePrediction:
        """The first (only) image of a ``predict_image``/``predict_hdr`` answer, probability decoded to float32."""
        probability_png = outputs["probability_png_bytes"][0]
        probability = tf.io.decode_png(probability_png, dtype=tf.uint16).numpy()[..., 0].astype(np.float32) / 65535.0
        return ImagePrediction(
            mask_png=outputs["mask_png_bytes"][0],
            probability=probability,
            sky_fraction=float(outputs["sky_fraction"][0]),
            version=version,
        )


def _fill_spec(spec, model: str, version: int | None, label: str | None, signature: str = "") -> None:
    if version is not None and label:
        raise TfskyError("give a version or a version label, not both")
    spec.name = model
    if version is not None:
        spec.version.value = version
    if label:
        spec.version_label = label
    if signature:
        spec.signature_name = signature


def _error_text(err: urllib.error.HTTPError) -> str:
    """The ``{"error": ...}`` message of a REST error answer (or the HTTP reason)."""
    try:
        return json.loads(err.read())["error"]
    except (ValueError, KeyError, TypeError):
        return f"HTTP {err.code} {err.reason}"
