"""``model.encoder_weights: imagenet``: downloaded once into the Keras cache, checked, and one line offline.

The download runs for real against an HTTP server on 127.0.0.1 that serves a weights file made here
(the published file cannot be reached from the test machines), in the published file's name.
"""

from __future__ import annotations

import functools
import hashlib
import http.server
import socket
import threading

import numpy as np
import pytest
import tensorflow as tf

from tfsky.errors import ConfigError
from tfsky.models.segmenter import (
    SegmenterModelConfig,
    build_segmenter,
    imagenet_entry,
    save_encoder_weights,
)

TINY = dict(backbone="resnet18", decoder_filters=(32, 16, 8, 8, 4))


@pytest.fixture
def weights_server(tmp_path, monkeypatch):
    """Serve a generated resnet18 "notop" file under its published name; yields (server folder, request log)."""
    served = tmp_path / "served"
    served.mkdir()
    source = build_segmenter(SegmenterModelConfig(**TINY), 3)
    entry = imagenet_entry("resnet18")
    save_encoder_weights(source, served / entry["name"], "resnet18")
    md5 = hashlib.md5((served / entry["name"]).read_bytes()).hexdigest()
    monkeypatch.setitem(entry, "md5", md5)  # the generated file's checksum stands in for the published one
    requests: list[str] = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            requests.append(self.path)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(served)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setenv("TFSKY_WEIGHTS_MIRROR", f"http://127.0.0.1:{server.server_address[1]}/")
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras_home"))
    try:
        yield source, requests, tmp_path / "keras_home"
    finally:
        server.shutdown()
        server.server_close()


def _encoder_kernel(model: tf.keras.Model) -> np.ndarray:
    return model.get_layer("conv0").get_weights()[0]


def test_imagenet_weights_are_downloaded_once_into_the_keras_cache_and_loaded(weights_server):
    source, requests, keras_home = weights_server
    first = build_segmenter(SegmenterModelConfig(**TINY, encoder_weights="imagenet"), 3)
    np.testing.assert_array_equal(_encoder_kernel(first), _encoder_kernel(source))
    cached = keras_home / "models" / imagenet_entry("resnet18")["name"]
    assert cached.is_file()
    assert len(requests) == 1
    second = build_segmenter(SegmenterModelConfig(**TINY, encoder_weights="imagenet"), 3)
    np.testing.assert_array_equal(_encoder_kernel(second), _encoder_kernel(source))
    assert len(requests) == 1  # served from the cache the second time


def test_the_weather_classifier_takes_imagenet_weights_the_same_way(weights_server):
    from tfsky.models.classifier import ClassifierModelConfig, build_classifier

    source, requests, _ = weights_server
    cfg = ClassifierModelConfig(backbone="resnet18", encoder_weights="imagenet")
    cfg.validate()
    np.testing.assert_array_equal(_encoder_kernel(build_classifier(cfg, 4)), _encoder_kernel(source))
    assert len(requests) == 1
    with pytest.raises(ConfigError, match="no ImageNet weights are published for backbone 'densenet121'"):
        ClassifierModelConfig(backbone="densenet121", encoder_weights="imagenet").validate()


def test_a_corrupted_download_is_refused_by_its_checksum(weights_server, monkeypatch):
    monkeypatch.setitem(imagenet_entry("resnet18"), "md5", "0" * 32)
    with pytest.raises(ConfigError, match="cannot download the ImageNet resnet18 weights"):
        build_segmenter(SegmenterModelConfig(**TINY, encoder_weights="imagenet"), 3)


def test_offline_is_one_error_naming_the_local_file_alternative(tmp_path, monkeypatch):
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setenv("TFSKY_WEIGHTS_MIRROR", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    with pytest.raises(ConfigError) as caught:
        build_segmenter(SegmenterModelConfig(**TINY, encoder_weights="imagenet"), 3)
    message = str(caught.value)
    assert "\n" not in message
    assert "resnet18_imagenet_1000_no_top.h5" in message and "local .h5 file" in message
    assert caught.value.key == "model.encoder_weights"


def test_a_backbone_without_published_weights_is_a_config_error():
    with pytest.raises(ConfigError, match="no ImageNet weights are published for backbone 'densenet121'"):
        SegmenterModelConfig(backbone="densenet121", encoder_weights="imagenet").validate()


def test_a_missing_local_weights_file_is_still_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="weights file not found"):
        SegmenterModelConfig(**TINY, encoder_weights=str(tmp_path / "none.h5")).validate()


def test_mobilenetv2_imagenet_is_the_keras_file_and_a_copy_in_the_cache_is_used_offline(tmp_path, monkeypatch):
    entry = imagenet_entry("mobilenetv2")
    assert (
        entry["name"] == "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5"
    )  # ../shared/weights' name
    assert entry["url"].endswith("/keras-applications/mobilenet_v2/" + entry["name"])
    tiny = dict(backbone="mobilenetv2", decoder_filters=(32, 16, 8, 8, 4))
    source = build_segmenter(SegmenterModelConfig(**tiny), 3)
    save_encoder_weights(source, tmp_path / "keras_home" / "models" / entry["name"], "mobilenetv2")
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras_home"))
    monkeypatch.setenv("TFSKY_WEIGHTS_MIRROR", "http://127.0.0.1:9/")  # nothing listens: a download would fail
    model = build_segmenter(SegmenterModelConfig(**tiny, encoder_weights="imagenet"), 3)
    np.testing.assert_array_equal(model.get_layer("Conv1").get_weights()[0], source.get_layer("Conv1").get_weights()[0])
