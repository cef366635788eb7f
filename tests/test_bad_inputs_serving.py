"""Hostile input to the served graphs (issue 26): decompression bombs through every image-bytes signature.

The SavedModels are what production TF Serving runs, so the bound is checked inside the graphs: a 140 KB
all-zero 12000x12000 grey PNG must be refused from its header, in one line naming its size and the limit,
by every image signature of every kind, through ``tfsky serve``'s REST port, with the server's peak
resident memory staying under 2 GB (it passed 18 GB before), and a normal image must still be answered.
"""

from __future__ import annotations

import base64
import json
import re
import struct
import subprocess
import sys
import urllib.error
import urllib.request
import zlib
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from served_kinds import save_every_kind
from test_export import save_tiny
from test_serving import free_port, wait_for
from tfsky.export.metadata import read_metadata
from tfsky.export.savedmodel import export_model
from tfsky.serving import Client

BOMB_SIDE = 12_000
IMAGE_SIGNATURES = [
    ("segmenter", "predict_image"),
    ("cloud", "predict_image"),
    ("cloud", "predict_cloud"),
    ("classifier", "classify_image"),
    ("colorizer", "colorize_image"),
]
PEAK_RSS_LIMIT = 2 * 1024**3


def zero_png(width: int, height: int) -> bytes:
    """An all-zero 8-bit grey PNG, compressed row block by row block (the pixels are never held whole)."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    compressor = zlib.compressobj(9)
    block = 1000  # rows per compress call: 12 MB of zeros at 12000 px
    rows = b"\0" * ((width + 1) * block)  # each row: filter byte 0, then the pixels
    data = (
        b"".join(compressor.compress(rows[: (width + 1) * min(block, height - top)]) for top in range(0, height, block))
        + compressor.flush()
    )
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8 bits, grey
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data) + chunk(b"IEND", b"")


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """Every kind exported with the default pixel limit and served by ``tfsky serve`` in its own process."""
    root = tmp_path_factory.mktemp("served_kinds")
    for kind, model in save_every_kind(root / "models").items():
        export_model(model, root / "repo", kind)
    rest_port = free_port()
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tfsky.cli.main",
            "serve",
            "--repo",
            str(root / "repo"),
            "--host",
            "127.0.0.1",
            "--grpc-port",
            "0",
            "--rest-port",
            str(rest_port),
            "--max-message-mb",
            "4",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        with Client(f"127.0.0.1:{rest_port}", rest=True, retries=0) as client:

            def all_available() -> bool:
                try:
                    return all(client.status(kind)[-1].state == "AVAILABLE" for kind, _ in IMAGE_SIGNATURES)
                except Exception:  # not listening yet
                    return False

            wait_for(all_available, timeout=120)
        yield {"root": root, "port": rest_port, "pid": process.pid}
    finally:
        process.terminate()
        process.wait(timeout=30)


def rest_predict(port: int, model: str, signature: str, image: bytes) -> tuple[int, dict]:
    """``(HTTP status, JSON answer)`` of one encoded image sent to ``signature``."""
    body = json.dumps(
        {"signature_name": signature, "inputs": {"image_bytes": [{"b64": base64.b64encode(image).decode()}]}}
    ).encode()
    request = urllib.request.Request(f"http://127.0.0.1:{port}/v1/models/{model}:predict", data=body, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=120) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def peak_rss(pid: int) -> int:
    """Peak resident memory of a process (``VmHWM``), in bytes."""
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"^VmHWM:\s+(\d+) kB", status, re.M)[1]) * 1024


def test_the_bomb_is_a_valid_small_png():
    small = zero_png(30, 20)
    assert tf.io.decode_png(small).shape == (20, 30, 1)
    assert len(zero_png(BOMB_SIDE, BOMB_SIDE)) < 200_000


@pytest.mark.parametrize("model, signature", IMAGE_SIGNATURES)
def test_a_png_bomb_is_refused_from_its_header_by_every_image_signature(served, model, signature):
    limit = read_metadata(served["root"] / "repo" / model / "1")["max_pixels"]
    assert limit < BOMB_SIDE**2  # the default, from the memory budget
    status, answer = rest_predict(served["port"], model, signature, zero_png(BOMB_SIDE, BOMB_SIDE))
    assert status == 400
    assert answer["error"] == (
        f"image is {BOMB_SIDE}x{BOMB_SIDE} ({BOMB_SIDE**2} pixels), over the limit of "
        f"{limit} pixels set at export (export.max_pixels)"
    )
    assert peak_rss(served["pid"]) < PEAK_RSS_LIMIT

    normal = tf.io.encode_png(np.random.default_rng(0).integers(0, 256, (48, 64, 3), np.uint8)).numpy()
    status, answer = rest_predict(served["port"], model, signature, normal)
    assert status == 200, answer
    assert peak_rss(served["pid"]) < PEAK_RSS_LIMIT


def test_a_header_of_the_largest_png_sides_is_refused_without_overflow(tmp_path):
    """4294967295 x 4294967295 pixels overflow int64: the product must not wrap to a small number."""
    side = 2**32 - 1
    ihdr = b"IHDR" + struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    header = b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + ihdr + struct.pack(">I", zlib.crc32(ihdr))
    model = save_tiny(tmp_path / "segmenter.keras")
    signature = tf.saved_model.load(str(export_model(model, tmp_path / "repo", "m"))).signatures["predict_image"]
    message = re.escape(f"image is {side}x{side} ({side * side} pixels)")
    with pytest.raises(tf.errors.InvalidArgumentError, match=message):
        signature(image_bytes=tf.constant([header + b"\0" * 16]))


def test_max_pixels_is_set_at_export_and_recorded(tmp_path, cli):
    model = save_tiny(tmp_path / "segmenter.keras")
    result = cli(
        "export", "--model", model, "--repo", tmp_path / "repo", "--name", "m", "--set", "export.max_pixels=2000"
    )
    assert result.exit_code == 0, result.stderr
    version = tmp_path / "repo" / "m" / "1"
    assert read_metadata(version)["max_pixels"] == 2000
    signature = tf.saved_model.load(str(version)).signatures["predict_image"]
    assert signature(image_bytes=tf.constant([zero_png(50, 40)]))["sky_fraction"].shape == (1,)  # 2000 pixels: taken
    with pytest.raises(
        tf.errors.InvalidArgumentError,
        match=re.escape(
            "image is 51x40 (2040 pixels), over the limit of 2000 pixels set at export (export.max_pixels)"
        ),
    ):
        signature(image_bytes=tf.constant([zero_png(51, 40)]))

    result = cli("export", "--model", model, "--repo", tmp_path / "repo", "--name", "m", "--max-pixels", "0")
    assert result.exit_code == 1
    assert result.stderr.strip() == "Error: config key 'export.max_pixels': must be >= 1; got 0"


@pytest.mark.parametrize("server", ["127.0.0.1:99999", "127.0.0.1:-1", "127.0.0.1:http", "127.0.0.1", ":8500"])
def test_a_bad_client_server_address_is_one_line_and_no_retry(server):
    from tfsky.errors import ConfigError
    from tfsky.serving.config import ClientConfig

    with pytest.raises(ConfigError, match=r"config key 'server': must be host:port with a port number in \[1, 65535\]"):
        ClientConfig(server=server).validate()
    ClientConfig(server="[::1]:8500").validate()  # IPv6 literal: the port is after the last colon
