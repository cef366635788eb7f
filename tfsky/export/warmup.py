"""TF Serving warmup records, so the first real request does not pay for graph optimisation.

TF Serving replays ``assets.extra/tf_serving_warmup_requests`` (a TFRecord file
of ``PredictionLog`` protos) against each new version before marking it
AVAILABLE. tfsky writes a few small requests per signature, shaped like real
traffic: one tile and a full tile batch for ``serving_default``, one encoded
PNG a little larger than a tile (so the tiling loop runs more than once) for
``predict_image``, and the same image as raw float32 for ``predict_hdr``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tensorflow as tf
from tensorflow_serving.apis import model_pb2, predict_pb2, prediction_log_pb2

WARMUP_FILE = "assets.extra/tf_serving_warmup_requests"

# signature name -> list of requests, each a dict of input alias -> numpy value
WarmupInputs = dict[str, list[dict[str, np.ndarray]]]


def warmup_inputs(*, tile: int, channels: int, tile_batch: int, hdr: bool) -> WarmupInputs:
    """Deterministic small inputs for each signature an export has.

    Args:
        tile: int. Tile side of the model.
        channels: int. Input channels.
        tile_batch: int. Tiles per model call in the tiling loop (the batch size traffic uses).
        hdr: bool. Whether the export has ``predict_hdr``.
    """
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (tile + tile // 2, 2 * tile, channels), dtype=np.uint8)
    inputs: WarmupInputs = {
        "serving_default": [
            {"tiles": np.zeros((size, tile, tile, channels), np.float32)} for size in sorted({1, tile_batch})
        ],
        "predict_image": [{"image_bytes": np.array([tf.io.encode_png(image).numpy()], dtype=object)}],
    }
    if hdr:
        radiance = (image.astype(np.float32) / 255.0) ** 2.2 * 1000.0
        inputs["predict_hdr"] = [
            {"image_raw": np.array([radiance.tobytes()], dtype=object), "shape": np.array([radiance.shape], np.int32)}
        ]
    return inputs


def prediction_logs(model_name: str, inputs: WarmupInputs) -> list[prediction_log_pb2.PredictionLog]:
    """One ``PredictionLog`` per request, naming the model and the signature."""
    logs = []
    for signature, requests in inputs.items():
        for tensors in requests:
            request = predict_pb2.PredictRequest(
                model_spec=model_pb2.ModelSpec(name=model_name, signature_name=signature)
            )
            for alias, value in tensors.items():
                request.inputs[alias].CopyFrom(tf.make_tensor_proto(value))
            logs.append(prediction_log_pb2.PredictionLog(predict_log=prediction_log_pb2.PredictLog(request=request)))
    return logs


def write_warmup(version_dir: str | Path, logs: list[prediction_log_pb2.PredictionLog]) -> Path:
    """Write the warmup TFRecord into a version folder (the folder itself is renamed into place later)."""
    path = Path(version_dir) / WARMUP_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    with tf.io.TFRecordWriter(str(path)) as writer:
        for log in logs:
            writer.write(log.SerializeToString())
    return path


def read_warmup(version_dir: str | Path) -> list[prediction_log_pb2.PredictionLog]:
    """Parse the warmup records of a version folder."""
    path = Path(version_dir) / WARMUP_FILE
    return [
        prediction_log_pb2.PredictionLog.FromString(record.numpy()) for record in tf.data.TFRecordDataset(str(path))
    ]
