"""tfsky serve against hostile and broken input: versions, Content-Length, slow clients, broken version folders.

Every answer must be the right 4xx/5xx with TF Serving's ``{"error": ...}`` body,
valid requests must keep getting correct answers, and the server must be up
at the end. Loop counts and waits are bounded.
"""

from __future__ import annotations

import base64
import http.client
import json
import shutil
import socket
import threading
import time

import numpy as np
import pytest

from test_export import header_bombs, save_tiny
from test_serving import small_png, wait_for
from tfsky.errors import ServingError, TfskyError
from tfsky.export.savedmodel import export_model
from tfsky.predict.segment import TiledSegmenter
from tfsky.serving import Client, DevServer
from tfsky.serving import repository as repository_module
from tfsky.serving.repository import ModelRepository, Servable

READ_TIMEOUT = 1.0  # seconds a REST connection may stay silent


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """The tiny segmenter as sky_segmenter/1 on a server with a 1 MiB body limit and a 1 s read timeout."""
    root = tmp_path_factory.mktemp("abuse")
    model_path = save_tiny(root / "best.keras")
    export_model(model_path, root / "models", "sky_segmenter")
    image = small_png(root / "scene.png")
    segmenter = TiledSegmenter.load(model_path)
    expected = segmenter.probabilities(segmenter.read(image))[..., 0]
    server = DevServer(
        root / "models", grpc_port=0, rest_port=0, poll_seconds=0.3, max_message_mb=1, read_timeout=READ_TIMEOUT
    ).start()
    yield {
        "root": root,
        "model": model_path,
        "server": server,
        "image": image,
        "expected": expected,
        "grpc": f"127.0.0.1:{server.grpc_port}",
        "rest": f"127.0.0.1:{server.rest_port}",
        "port": server.rest_port,
    }
    server.stop()


def http_request(port: int, raw: bytes, timeout: float = 10.0) -> tuple[int, dict]:
    """Send ``raw`` bytes as they are (no client-side fixing of headers); ``(status, JSON body or {})``."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(raw)
        answer = http.client.HTTPResponse(sock)
        answer.begin()
        body = answer.read()
    try:
        return answer.status, json.loads(body)
    except ValueError:
        return answer.status, {}


def post(path: str, body: bytes, content_length: str | None = "auto", extra: str = "") -> bytes:
    length = str(len(body)) if content_length == "auto" else content_length
    header = "" if length is None else f"Content-Length: {length}\r\n"
    return f"POST {path} HTTP/1.1\r\nHost: x\r\n{header}{extra}\r\n".encode() + body


def get(path: str, extra: str = "") -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: x\r\n{extra}\r\n".encode()


TILES_BODY = json.dumps({"inputs": {"tiles": np.zeros((1, 32, 32, 3)).tolist()}}).encode()
PREDICT = "/v1/models/sky_segmenter:predict"


# ----------------------------------------------------------------- versions (REST used to answer from version 1)


def test_rest_unknown_version_is_404_on_predict_status_and_metadata(served):
    port = served["port"]
    assert http_request(port, post("/v1/models/sky_segmenter/versions/999:predict", TILES_BODY)) == (
        404,
        {"error": "model 'sky_segmenter' version 999 is not loaded"},
    )
    assert http_request(port, get("/v1/models/sky_segmenter/versions/999")) == (
        404,
        {"error": "model 'sky_segmenter' version 999 not found"},
    )
    assert http_request(port, get("/v1/models/sky_segmenter/versions/999/metadata"))[0] == 404
    assert http_request(port, get("/v1/models/sky_segmenter/versions/1")) == (
        200,
        {"model_version_status": [{"version": "1", "state": "AVAILABLE"}]},
    )
    status, answer = http_request(port, post("/v1/models/sky_segmenter/versions/1:predict", TILES_BODY))
    assert status == 200 and np.asarray(answer["outputs"]).shape == (1, 32, 32, 1)


def test_cli_client_predict_rest_unknown_version_fails_and_sidecars_record_the_answering_version(served, cli, tmp_path):
    common = ["client", "predict", served["image"], "--model", "sky_segmenter"]
    refused = cli(*common, "--server", served["rest"], "--rest", "--version", "999", "--out", tmp_path / "no")
    assert refused.exit_code == 1
    assert refused.stderr.strip() == (
        f"Error: server {served['rest']}: NOT_FOUND: model 'sky_segmenter' version 999 is not loaded"
    )
    assert not (tmp_path / "no").exists() or not list((tmp_path / "no").iterdir())
    tiles = ["--tiles", served["root"] / "models" / "sky_segmenter" / "1"]
    for transport, extra in (("rest", ["--rest"]), ("grpc", []), ("tiles", tiles), ("rest tiles", ["--rest", *tiles])):
        out = tmp_path / transport.replace(" ", "_")
        server = served["rest"] if transport.startswith("rest") else served["grpc"]
        result = cli(*common, "--server", server, *extra, "--out", out)
        assert result.exit_code == 0, result.stderr
        assert json.loads((out / "scene.json").read_text())["version"] == 1  # asked for none; version 1 answered


# ----------------------------------------------------------------- Content-Length, body limit, timeouts


@pytest.mark.parametrize(
    "length, extra, status, message",
    [
        (None, "", 400, "invalid Content-Length (missing)"),
        ("-1", "", 400, "invalid Content-Length -1"),
        ("abc", "", 400, "invalid Content-Length abc"),
        ("\u00b2", "", 400, "invalid Content-Length"),  # str.isdigit() says yes, int() says no
        ("auto", "Content-Length: 5\r\n", 400, "invalid Content-Length"),  # two of them
        ("99999999999", "", 413, "request body of 99999999999 bytes is over the limit of 1048576 bytes"),
    ],
)
def test_bad_content_length_is_refused_at_once(served, length, extra, status, message):
    start = time.monotonic()
    raw = post(PREDICT, b"", length, extra).replace("\u00b2".encode(), "\u00b2".encode("latin-1"))
    got, answer = http_request(served["port"], raw)
    assert (got, answer["error"][: len(message)]) == (status, message)
    assert time.monotonic() - start < READ_TIMEOUT  # refused from the header, not after a read that hangs


def test_body_over_the_limit_is_413_and_one_under_it_is_served(served):
    big = json.dumps({"inputs": {"tiles": np.zeros((1, 300, 300, 3)).tolist()}}).encode()
    assert len(big) > 1 << 20
    status, answer = http_request(served["port"], post(PREDICT, big))
    assert status == 413 and "over the limit of 1048576 bytes" in answer["error"]
    assert http_request(served["port"], post(PREDICT, TILES_BODY))[0] == 200


def test_a_refused_request_does_not_leave_its_body_for_the_next_one_on_the_connection(served):
    connection = http.client.HTTPConnection("127.0.0.1", served["port"], timeout=10)
    try:
        for path, status in (("/v1/models/nope:predict", 404), ("/v1/models/../x:predict", 404), (PREDICT, 200)):
            connection.request("POST", path, body=TILES_BODY)  # one keep-alive connection for all three
            answer = connection.getresponse()
            assert (answer.status, answer.getheader("Connection")) == (status, None), answer.read()
            answer.read()
        connection.request("GET", "/v1/models/sky_segmenter", body=TILES_BODY)  # a body GET does not read
        answer = connection.getresponse()
        assert (answer.status, answer.getheader("Connection")) == (200, "close")
        answer.read()
        connection.request("GET", "/v1/models/sky_segmenter")  # on a new connection
        assert connection.getresponse().status == 200
    finally:
        connection.close()


@pytest.mark.parametrize(
    "body, message",
    [
        (b"{not json", "JSON Parse error"),
        (b"[" * 100_000, "JSON Parse error"),  # nesting deeper than the parser's recursion limit
        (b"\xff\xfe{}", "JSON Parse error"),
        (b'{"instances": [[1, 2], [3]]}', "inhomogeneous"),
        (b'{"inputs": {"tiles": "text"}}', "expected float32 numbers"),
    ],
)
def test_malformed_bodies_are_400(served, body, message):
    status, answer = http_request(served["port"], post(PREDICT, body))
    assert status == 400 and message in answer["error"]


def test_slow_and_silent_clients_do_not_hold_the_server(served):
    silent = [socket.create_connection(("127.0.0.1", served["port"])) for _ in range(20)]
    slow = socket.create_connection(("127.0.0.1", served["port"]), timeout=10)
    try:
        slow.sendall(post(PREDICT, b"", "1000") + b'{"inputs":')  # promises 1000 bytes, sends 10, then nothing
        start = time.monotonic()
        with (
            Client(served["rest"], rest=True, timeout=5, retries=0) as rest,
            Client(served["grpc"], timeout=5, retries=0) as grpc_client,
        ):
            for client in (rest, grpc_client):
                prediction = client.predict_image("sky_segmenter", served["image"].read_bytes())
                np.testing.assert_allclose(prediction.probability, served["expected"], atol=1e-4)
        assert time.monotonic() - start < 5
        answer = http.client.HTTPResponse(slow)
        answer.begin()
        assert answer.status == 408 and "not received within 1 s" in json.loads(answer.read())["error"]
        assert time.monotonic() - start < READ_TIMEOUT + 3
        for sock in silent:  # idle connections are closed by the server after the read timeout
            sock.settimeout(READ_TIMEOUT + 3)
            assert sock.recv(1) == b""
    finally:
        for sock in silent + [slow]:
            sock.close()


# ----------------------------------------------------------------- a broken version folder (took the model down)


def test_broken_version_keeps_the_last_good_one_serving_and_is_retried_when_fixed(served, tmp_path, monkeypatch):
    repo = tmp_path / "repo"
    model_path = served["model"]
    export_model(model_path, repo, "flaky")
    attempts = []
    monkeypatch.setattr(repository_module, "Servable", lambda *args: attempts.append(args[1]) or Servable(*args))
    repository = ModelRepository(repo)
    repository.refresh()
    (repo / "flaky" / "7").mkdir()
    (repo / "flaky" / "7" / "saved_model.pb").write_bytes(np.random.default_rng(0).bytes(5000))
    repository.refresh()
    assert repository.resolve("flaky").version == 1
    states = repository.status("flaky")
    assert [(s.version, s.state) for s in states] == [(1, "AVAILABLE"), (7, "END")]
    assert states[1].error  # the load error, for the status API
    repository.refresh()
    assert attempts == [1, 7]  # same broken files: not reloaded on every scan

    export_model(model_path, repo, "flaky", version=7, overwrite=True)  # fixed: renamed into place
    repository.refresh()
    assert attempts == [1, 7, 7]
    assert repository.resolve("flaky").version == 7
    assert [(s.version, s.state, s.error) for s in repository.status("flaky")] == [(1, "END", ""), (7, "AVAILABLE", "")]


def test_a_corrupt_newest_version_at_server_start_serves_the_newest_that_loads(served, tmp_path):
    """The issue's reproduction: ``cp -r R/m/1 R/m/3; head -c 100 R/m/1/saved_model.pb > R/m/3/saved_model.pb``."""
    repo = tmp_path / "repo"
    good = export_model(served["model"], repo, "m")
    shutil.copytree(good, repo / "m" / "2")
    shutil.copytree(good, repo / "m" / "3")
    for broken in (2, 3):
        (repo / "m" / str(broken) / "saved_model.pb").write_bytes((good / "saved_model.pb").read_bytes()[:100])
    with (
        DevServer(repo, grpc_port=0, rest_port=0, poll_seconds=0.3) as server,
        Client(f"127.0.0.1:{server.rest_port}", rest=True) as client,
    ):
        states = client.status("m")
        assert [(s.version, s.state) for s in states] == [(1, "AVAILABLE"), (2, "END"), (3, "END")]
        assert all("saved_model.pb" in s.error for s in states[1:])  # each broken one says why
        answer = client.predict_image("m", served["image"].read_bytes())
        assert answer.version == 1
        np.testing.assert_allclose(answer.probability, served["expected"], atol=1e-4)


def test_failed_version_is_retried_after_the_retry_delay(served, tmp_path, monkeypatch):
    repo = tmp_path / "repo"
    (repo / "m" / "1").mkdir(parents=True)
    (repo / "m" / "1" / "saved_model.pb").write_bytes(b"junk")
    attempts = []
    monkeypatch.setattr(repository_module, "Servable", lambda *args: attempts.append(args[1]) or Servable(*args))
    repository = ModelRepository(repo, retry_seconds=0)
    repository.refresh()
    repository.refresh()
    assert attempts == [1, 1]
    with pytest.raises(ServingError, match="model 'm' not found"):
        repository.resolve("m")


# ----------------------------------------------------------------- the bounded abuse run


def abusive_requests(model: str) -> list[tuple[bytes, int]]:
    """(raw HTTP request, the status it must get)."""
    predict = f"/v1/models/{model}:predict"
    return [
        (post(predict, b"{not json"), 400),
        (post(predict, b'{"instances": [1, 2]}'), 400),
        (post(predict, b'{"inputs": {"tiles": [[[[0, 0]]]]}}'), 400),
        (post(predict, b"", "-1"), 400),
        (post(predict, b"", "99999999999"), 413),
        (post(predict, b"x" * 100, "12x"), 400),
        (get(f"/v1/models/{model}/versions/999"), 404),
        (post(f"/v1/models/{model}/versions/999:predict", TILES_BODY), 404),
        (post(f"/v1/models/{model}/labels/nope:predict", TILES_BODY), 404),
        (get("/v1/models/../../etc/passwd"), 404),
        (get("/v1/models/..%2F..%2Fetc%2Fpasswd"), 404),
        (post("/v1/models/../sky_segmenter:predict", TILES_BODY), 404),
        (get("/nothing/here"), 404),
        (b"DELETE /v1/models/x HTTP/1.1\r\nHost: x\r\n\r\n", 501),
        *(
            (
                post(
                    predict,
                    json.dumps(
                        {"signature_name": "predict_image", "instances": [{"b64": base64.b64encode(bomb).decode()}]}
                    ).encode(),
                ),
                400,
            )
            for bomb in header_bombs().values()
        ),
    ]


def test_bounded_abuse_while_valid_requests_keep_getting_correct_answers(served, tmp_path):
    repo = tmp_path / "repo"
    export_model(served["model"], repo, "sky_segmenter")
    image = served["image"].read_bytes()
    failures, answered = [], []  # answered: (REST?, after the corrupt folder appeared?)
    stop, corrupted = threading.Event(), threading.Event()
    with DevServer(
        repo, grpc_port=0, rest_port=0, poll_seconds=0.2, max_message_mb=1, read_timeout=READ_TIMEOUT
    ) as server:
        rest_address, grpc_address = f"127.0.0.1:{server.rest_port}", f"127.0.0.1:{server.grpc_port}"

        def valid_requests(rest: bool) -> None:
            with Client(rest_address if rest else grpc_address, rest=rest, timeout=10, retries=0) as client:
                for _ in range(200):  # bounded; stops earlier when the abuse is over
                    if stop.is_set():
                        return
                    try:
                        prediction = client.predict_image("sky_segmenter", image)
                        np.testing.assert_allclose(prediction.probability, served["expected"], atol=1e-4)
                        assert prediction.version == 1
                        answered.append((rest, corrupted.is_set()))
                    except (TfskyError, AssertionError) as err:
                        failures.append(f"{'REST' if rest else 'gRPC'}: {err}")

        workers = [threading.Thread(target=valid_requests, args=(rest,)) for rest in (True, True, False, False)]
        for worker in workers:
            worker.start()
        deadline = time.monotonic() + 90
        try:
            for round_number in range(30):  # at least 3 rounds; on until both APIs answered 5 times after round 1
                if round_number == 1:  # a corrupt version folder appears mid-run
                    (repo / "sky_segmenter" / "9").mkdir()
                    (repo / "sky_segmenter" / "9" / "saved_model.pb").write_bytes(b"\x08" + bytes(range(256)) * 20)
                    corrupted.set()
                if round_number >= 3 and min(answered.count((True, True)), answered.count((False, True))) >= 5:
                    break
                for raw, want in abusive_requests("sky_segmenter"):
                    got, answer = http_request(server.rest_port, raw)
                    assert got == want, (raw[:60], got, answer)
                    if got != 501:  # the stdlib's own HTML error page
                        assert set(answer) == {"error"}, (raw[:60], answer)
                with Client(grpc_address, retries=0) as client:
                    for bad_model, version in (("sky_segmenter", 999), ("../../etc/passwd", None), ("", None)):
                        with pytest.raises(TfskyError, match="NOT_FOUND"):
                            client.predict_tiles(bad_model, np.zeros((1, 32, 32, 3), np.float32), version=version)
                assert time.monotonic() < deadline
            else:
                raise AssertionError(f"valid requests starved: {answered}")
            wait_for(lambda: 9 in {s.version for s in server.repository.status("sky_segmenter")}, timeout=10)
        finally:
            stop.set()
            for worker in workers:
                worker.join(timeout=60)
        assert failures == []
        print(
            f"\nabuse: {round_number} rounds of {len(abusive_requests('sky_segmenter'))} bad REST + 3 bad gRPC "
            f"requests; valid answers: {answered.count((True, False)) + answered.count((True, True))} REST, "
            f"{answered.count((False, False)) + answered.count((False, True))} gRPC, 0 wrong"
        )
        with Client(grpc_address) as client:  # still up, still on the version that loaded
            states = {s.version: (s.state, bool(s.error)) for s in client.status("sky_segmenter")}
            assert states == {1: ("AVAILABLE", False), 9: ("END", True)}
            assert client.predict_image("sky_segmenter", image).version == 1
