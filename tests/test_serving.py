"""tfsky serve + tfsky client end to end on loopback: predictions, status, hot-add, load, bad requests, retries."""

from __future__ import annotations

import base64
import json
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from test_export import TILE, save_tiny  # the same tiny model the export tests use
from tfsky.errors import TfskyError
from tfsky.export.savedmodel import export_model
from tfsky.io.atomic import temp_name
from tfsky.io.writers import write_png
from tfsky.predict.segment import TiledSegmenter
from tfsky.serving import Client, DevServer
from tfsky.serving.segment_jobs import segment_files
from tfsky.serving.repository import ModelRepository, ServingError


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A repository with the tiny segmenter as sky_segmenter/1, served on free loopback ports."""
    root = tmp_path_factory.mktemp("serving")
    model_path = save_tiny(root / "best.keras")
    export_model(model_path, root / "models", "sky_segmenter")
    image = np.random.default_rng(7).integers(0, 256, (90, 130, 3), dtype=np.uint8)
    image[:40] = 230  # a bright band so the mask is not uniform
    write_png(root / "scene.png", image)
    server = DevServer(root / "models", grpc_port=0, rest_port=0, poll_seconds=0.3).start()
    segmenter = TiledSegmenter.load(model_path)
    expected = segmenter.probabilities(segmenter.read(root / "scene.png"))[..., 0]
    yield {
        "root": root,
        "model": model_path,
        "server": server,
        "expected": expected,
        "grpc": f"127.0.0.1:{server.grpc_port}",
        "rest": f"127.0.0.1:{server.rest_port}",
    }
    server.stop()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(condition, timeout: float = 30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.1)
    raise AssertionError("condition not met in time")


@pytest.mark.parametrize("transport", ["grpc", "rest", "tiles"])
def test_cli_client_predict_matches_in_process_prediction(setup, cli, tmp_path, transport):
    server = setup["rest"] if transport == "rest" else setup["grpc"]
    extra = {"grpc": [], "rest": ["--rest"], "tiles": ["--tiles", setup["root"] / "models" / "sky_segmenter" / "1"]}
    result = cli(
        "client",
        "predict",
        "--server",
        server,
        "--model",
        "sky_segmenter",
        setup["root"] / "scene.png",
        "--out",
        tmp_path,
        *extra[transport],
    )
    assert result.exit_code == 0, result.stderr
    assert "done 1, skipped 0, failed 0" in result.stdout

    expected = setup["expected"]
    mask = tf.io.decode_png((tmp_path / "scene_mask.png").read_bytes()).numpy()[..., 0]
    sidecar = json.loads((tmp_path / "scene.json").read_text())
    near_threshold = np.abs(expected - 0.5) < 1e-4  # pixels whose class float rounding may flip
    np.testing.assert_array_equal(mask[~near_threshold], np.where(expected >= 0.5, 255, 0)[~near_threshold])
    assert 0 < (mask > 0).mean() < 1
    assert sidecar["sky_fraction"] == pytest.approx((expected >= 0.5).mean(), abs=1e-3)
    assert (sidecar["height"], sidecar["width"], sidecar["model"]) == (90, 130, "sky_segmenter")
    prob = tf.io.decode_png((tmp_path / "scene_prob.png").read_bytes(), dtype=tf.uint16).numpy()[..., 0] / 65535
    np.testing.assert_allclose(prob, expected, atol=1e-4)  # the 16-bit map of tfsky predict


@pytest.mark.parametrize("rest", [False, True])
def test_client_probability_matches_in_process_prediction(setup, rest):
    with Client(setup["rest"] if rest else setup["grpc"], rest=rest) as client:
        prediction = client.predict_image("sky_segmenter", (setup["root"] / "scene.png").read_bytes())
        np.testing.assert_allclose(prediction.probability, setup["expected"], atol=1e-4)
        tiles = np.random.default_rng(8).random((2, TILE, TILE, 3), dtype=np.float32)
        keras_model = tf.keras.models.load_model(setup["model"], compile=False)
        np.testing.assert_allclose(client.predict_tiles("sky_segmenter", tiles), keras_model(tiles), atol=1e-5)
        assert [s.name for s in client.metadata("sky_segmenter")] == ["serving_default", "predict_image"]


def test_rest_row_format_with_b64_instances(setup):
    body = {
        "signature_name": "predict_image",
        "instances": [{"b64": base64.b64encode((setup["root"] / "scene.png").read_bytes()).decode()}],
    }
    request = urllib.request.Request(
        f"http://{setup['rest']}/v1/models/sky_segmenter:predict", data=json.dumps(body).encode(), method="POST"
    )
    with urllib.request.urlopen(request, timeout=30) as answer:
        (prediction,) = json.loads(answer.read())["predictions"]
    assert set(prediction) == {"mask_png_bytes", "probability_png_bytes", "sky_fraction"}
    mask = tf.io.decode_png(base64.b64decode(prediction["mask_png_bytes"]["b64"])).numpy()
    assert mask.shape == (90, 130, 1)


@pytest.mark.parametrize("rest", [False, True])
def test_cli_client_status(setup, cli, rest):
    result = cli(
        "client",
        "status",
        "--server",
        setup["rest"] if rest else setup["grpc"],
        "--model",
        "sky_segmenter",
        *(["--rest"] if rest else []),
    )
    assert result.exit_code == 0, result.stderr
    assert result.stdout.strip() == "sky_segmenter version 1: AVAILABLE"


def test_hot_added_versions_are_served(setup):
    repo = setup["root"] / "models"
    with Client(setup["grpc"]) as client:
        export_model(save_tiny(setup["root"] / "hot1.keras", seed=11), repo, "hot")
        wait_for(lambda: _states(client, "hot") == {1: "AVAILABLE"})
        tiles = np.random.default_rng(9).random((1, TILE, TILE, 3), dtype=np.float32)
        first = client.predict_tiles("hot", tiles)

        export_model(save_tiny(setup["root"] / "hot2.keras", seed=12), repo, "hot")
        wait_for(lambda: _states(client, "hot") == {1: "END", 2: "AVAILABLE"})
        second = client.predict_tiles("hot", tiles)
        assert np.abs(first - second).max() > 1e-3
        np.testing.assert_array_equal(client.predict_tiles("hot", tiles, version=2), second)
        np.testing.assert_array_equal(client.predict_tiles("hot", tiles, label="stable"), second)
        with pytest.raises(TfskyError, match="NOT_FOUND: model 'hot' version 1 is not loaded"):
            client.predict_tiles("hot", tiles, version=1)


def _states(client: Client, model: str) -> dict[int, str]:
    try:
        return {s.version: s.state for s in client.status(model)}
    except TfskyError:
        return {}


def test_version_labels_from_models_config(setup, tmp_path):
    for seed in (21, 22):
        export_model(save_tiny(tmp_path / f"m{seed}.keras", seed=seed), tmp_path / "repo", "seg")
    (tmp_path / "repo" / "models.config").write_text(
        'model_config_list { config { name: "seg" base_path: "/models/seg" model_platform: "tensorflow" '
        'version_labels { key: "stable" value: 1 } version_labels { key: "canary" value: 2 } } }'
    )
    repository = ModelRepository(tmp_path / "repo")
    repository.refresh()
    assert repository.resolve("seg", label="stable").version == 1
    assert repository.resolve("seg", label="canary").version == 2
    assert repository.resolve("seg").version == 2
    with pytest.raises(ServingError, match="no version label 'beta'") as err:
        repository.resolve("seg", label="beta")
    assert err.value.code == grpc.StatusCode.NOT_FOUND


def test_200_concurrent_requests_without_errors(setup):
    tiles = np.random.default_rng(10).random((4, TILE, TILE, 3), dtype=np.float32)

    def one(_) -> float:
        start = time.perf_counter()
        client.predict_tiles("sky_segmenter", tiles)
        return time.perf_counter() - start

    with Client(setup["grpc"]) as client, ThreadPoolExecutor(max_workers=16) as pool:
        latencies = sorted(pool.map(one, range(200)))  # any failed request raises here
    p50, p99 = statistics.median(latencies), latencies[int(0.99 * len(latencies)) - 1]
    print(
        f"\n200 concurrent 4-tile requests (16 threads, loopback gRPC): 0 errors, "
        f"p50 {p50 * 1e3:.1f} ms, p99 {p99 * 1e3:.1f} ms"
    )
    assert len(latencies) == 200


def test_serve_cli_stops_cleanly_on_sigterm(setup):
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tfsky.cli.main",
            "serve",
            "--repo",
            str(setup["root"] / "models"),
            "--grpc-port",
            "0",
            "--rest-port",
            "0",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        banner = process.stdout.readline()
        assert banner.startswith(f"serving {setup['root'] / 'models'} on gRPC 127.0.0.1:"), banner
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
        assert process.stdout.read().strip() == "stopped"
    finally:
        process.kill()


def _raw_predict(server: str, model: str, signature: str, inputs: dict, max_mb: int = 64):
    options = [("grpc.max_send_message_length", max_mb << 20), ("grpc.max_receive_message_length", max_mb << 20)]
    with grpc.insecure_channel(server, options=options) as channel:
        request = predict_pb2.PredictRequest()
        request.model_spec.name, request.model_spec.signature_name = model, signature
        for alias, value in inputs.items():
            request.inputs[alias].CopyFrom(tf.make_tensor_proto(value))
        return prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request, timeout=30)


GOOD_TILES = np.zeros((1, TILE, TILE, 3), np.float32)


@pytest.mark.parametrize(
    "model, signature, inputs, code, message",
    [
        (
            "sky_segmenter",
            "",
            {"tiles": GOOD_TILES.astype(np.float64)},
            "INVALID_ARGUMENT",
            "must be float32, got float64",
        ),
        (
            "sky_segmenter",
            "",
            {"tiles": GOOD_TILES[0]},
            "INVALID_ARGUMENT",
            "must have shape [?, ?, ?, 3], got [32, 32, 3]",
        ),
        ("sky_segmenter", "", {"images": GOOD_TILES}, "INVALID_ARGUMENT", "missing ['tiles'], unknown ['images']"),
        ("sky_segmenter", "nope", {"tiles": GOOD_TILES}, "INVALID_ARGUMENT", "has no signature 'nope'"),
        (
            "sky_segmenter",
            "predict_image",
            {"image_bytes": np.array([b"not an image"], object)},
            "INVALID_ARGUMENT",
            "Unknown image file format",
        ),
        ("unknown", "", {"tiles": GOOD_TILES}, "NOT_FOUND", "model 'unknown' not found"),
    ],
)
def test_bad_requests_get_tf_serving_status_codes(setup, model, signature, inputs, code, message):
    with pytest.raises(grpc.RpcError) as err:
        _raw_predict(setup["grpc"], model, signature, inputs)
    assert err.value.code() == getattr(grpc.StatusCode, code)
    assert message in err.value.details()
    assert _raw_predict(setup["grpc"], "sky_segmenter", "", {"tiles": GOOD_TILES}).outputs["probabilities"]


def test_oversized_message_is_resource_exhausted_and_server_keeps_serving(setup):
    with DevServer(setup["root"] / "models", grpc_port=0, rest_port=0, max_message_mb=1, poll_seconds=60) as small:
        address = f"127.0.0.1:{small.grpc_port}"
        with pytest.raises(grpc.RpcError) as err:
            _raw_predict(address, "sky_segmenter", "", {"tiles": np.zeros((100, TILE, TILE, 3), np.float32)})
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        with Client(address, max_message_mb=64) as client, pytest.raises(TfskyError, match="RESOURCE_EXHAUSTED"):
            client.predict_tiles("sky_segmenter", np.zeros((100, TILE, TILE, 3), np.float32))
        assert _raw_predict(address, "sky_segmenter", "", {"tiles": GOOD_TILES}).outputs["probabilities"]


def test_unavailable_server_is_retried_then_one_line_error(cli):
    port = free_port()
    start = time.monotonic()
    with Client(f"127.0.0.1:{port}", retries=2, timeout=2, backoff=0.1) as client:
        with pytest.raises(TfskyError, match=rf"^server 127.0.0.1:{port}: UNAVAILABLE: no answer after 3 attempts"):
            client.status("sky_segmenter")
    assert time.monotonic() - start >= 0.3  # backoff 0.1 + 0.2 s between the three attempts

    result = cli("client", "status", "--server", f"127.0.0.1:{port}", "--retries", "0", "--rest")
    assert result.exit_code == 1
    assert result.stderr.startswith(f"Error: server 127.0.0.1:{port}: UNAVAILABLE: no answer after 1 attempts")
    assert len(result.stderr.strip().splitlines()) == 1


def test_cli_client_predict_unknown_model_is_one_line_error(setup, cli, tmp_path):
    result = cli(
        "client",
        "predict",
        "--server",
        setup["grpc"],
        "--model",
        "nope",
        setup["root"] / "scene.png",
        "--out",
        tmp_path,
    )
    assert result.exit_code == 1
    assert (
        result.stderr.strip() == f"Error: server {setup['grpc']}: NOT_FOUND: model 'nope' not found (no loaded version)"
    )
    assert not list(tmp_path.iterdir())


# ----------------------------------------------------------------- client predict as a resumable batch job


@pytest.fixture
def requests(monkeypatch) -> list[int]:
    """Counts the ``predict_image`` requests every `Client` sends (one entry per request)."""
    sent = []
    original = Client.predict_image

    def counting(self, *args, **kwargs):
        sent.append(1)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Client, "predict_image", counting)
    return sent


def small_png(path, seed: int = 0):
    write_png(path, np.random.default_rng(seed).integers(0, 256, (24, 36, 3), dtype=np.uint8))
    return path


def client_predict(cli, setup, *args):
    return cli("client", "predict", "--server", setup["grpc"], "--model", "sky_segmenter", *args)


def visible_files(folder) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file() and not p.name.startswith(".")}


def test_client_rerun_sends_no_request_and_overwrite_redoes(setup, cli, tmp_path, requests):
    images = [small_png(tmp_path / "a.png", 0), small_png(tmp_path / "b.png", 1)]
    out = tmp_path / "out"
    with Client(setup["grpc"]) as client:
        report = segment_files(client, "sky_segmenter", images, out)
    assert (report.done, report.skipped, report.failed) == (images, [], [])
    assert len(requests) == 2
    inodes = {name: (out / name).stat().st_ino for name in visible_files(out)}
    assert set(inodes) == {f"{stem}{suffix}" for stem in "ab" for suffix in ("_mask.png", "_prob.png", ".json")}

    rerun = client_predict(cli, setup, *images, "--out", out)
    assert rerun.exit_code == 0, rerun.stderr
    assert rerun.stdout.strip() == f"done 0, skipped 2, failed 0 -> {out}"
    assert len(requests) == 2
    assert {name: (out / name).stat().st_ino for name in inodes} == inodes  # nothing rewritten

    redo = client_predict(cli, setup, *images, "--out", out, "--overwrite")
    assert redo.exit_code == 0, redo.stderr
    assert "done 2, skipped 0, failed 0" in redo.stdout
    assert len(requests) == 4
    assert all((out / name).stat().st_ino != inode for name, inode in inodes.items())  # atomically replaced


def test_client_folder_and_manifest_inputs_keep_sub_folders(setup, cli, tmp_path, requests):
    folder = tmp_path / "images"
    small_png(folder / "x.png")
    small_png(folder / "sub" / "y.png", 1)
    small_png(folder / ".hidden.png", 2)
    (folder / "notes.md").write_text("not an image")
    small_png(tmp_path / "lists" / "frames" / "m.png", 3)
    manifest = tmp_path / "lists" / "todo.txt"
    manifest.write_text("# frames to do\nframes/m.png  # first\n\n")
    out = tmp_path / "out"
    result = client_predict(cli, setup, folder, manifest, "--out", out)
    assert result.exit_code == 0, result.stderr
    assert "done 3, skipped 0, failed 0" in result.stdout
    assert visible_files(out) == {
        f"{stem}{suffix}" for stem in ("x", "sub/y", "frames/m") for suffix in ("_mask.png", "_prob.png", ".json")
    }
    assert json.loads((out / "sub" / "y.json").read_text())["source"] == str(folder / "sub" / "y.png")
    assert len(requests) == 3


def test_client_same_output_stem_from_two_folders_fails_the_second_without_a_request(setup, cli, tmp_path, requests):
    first, second = small_png(tmp_path / "a" / "same.png"), small_png(tmp_path / "b" / "same.png", 1)
    other = small_png(tmp_path / "other.png", 2)
    out = tmp_path / "out"
    result = client_predict(cli, setup, first, second, other, "--out", out)
    assert result.exit_code == 1
    assert result.stderr.strip() == f"failed {second}: writes the same outputs (same_*) as {first}"
    assert "done 2, skipped 0, failed 1" in result.stdout
    assert len(requests) == 2  # same.png from a/ and other.png: b/same.png is never sent
    assert json.loads((out / "same.json").read_text())["source"] == str(first)


def test_client_rerun_after_a_kill_removes_stale_temps_and_finishes(setup, cli, tmp_path, requests):
    image = small_png(tmp_path / "scene.png")
    out = tmp_path / "out"
    out.mkdir()
    (out / "scene_mask.png").write_bytes(b"mask written, killed before the sidecar")
    stale = [temp_name(out / "scene_mask.png"), temp_name(out / "scene.json")]
    assert all(path.is_file() for path in stale)
    result = client_predict(cli, setup, image, "--out", out)
    assert result.exit_code == 0, result.stderr
    assert "done 1, skipped 0, failed 0" in result.stdout
    assert sorted(p.name for p in out.iterdir()) == ["scene.json", "scene_mask.png", "scene_prob.png"]
    assert tf.io.decode_png((out / "scene_mask.png").read_bytes()).shape == (24, 36, 1)
    assert len(requests) == 1


def test_client_bad_files_are_reported_and_the_others_complete(setup, cli, tmp_path):
    good = small_png(tmp_path / "good.png")
    broken = tmp_path / "broken.png"
    broken.write_bytes(good.read_bytes()[:40])
    unreadable = tmp_path / "unreadable.tif"
    unreadable.write_bytes(b"not a tiff")
    out = tmp_path / "out"
    result = client_predict(cli, setup, broken, tmp_path / "missing.png", unreadable, good, "--out", out)
    assert result.exit_code == 1
    assert result.stderr.strip().splitlines() == [  # refused by the server, missing, unreadable here
        f"failed {broken}: server {setup['grpc']}: INVALID_ARGUMENT: Invalid PNG. Failed to initialize decoder.",
        f"failed {tmp_path}/missing.png: file not found",
        f"failed {unreadable}: truncated or corrupt image (header: not a TIFF file: header=b'not ')",
    ]
    assert "done 1, skipped 0, failed 3" in result.stdout
    assert visible_files(out) == {"good_mask.png", "good_prob.png", "good.json"}
