"""``--engine ray`` on a real local Ray cluster (no mocks): the test starts a head on 127.0.0.1 with 2 CPUs
(2 worker processes) and a small object store, and always shuts it down. The cluster only listens on the
loopback (Ray treats 127.0.0.1 as "this machine's address" unless RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0) and
uses token authentication with a token made by the test (nothing is written to ~/.ray).

Checks: outputs equal the local engine's (mask and overlay bytes, float probabilities within 1e-6, sidecars
but for timing; translated frames byte for byte); a bad file is reported in one line and the others finish;
a driver killed part-way and re-run does only the missing images.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest

from test_jobs import kill_9_after_the_first_sidecar
from test_predict import tiny_segmenter, visible_files
from test_translate import translator_file  # noqa: F401  (the tiny pix2pix translator fixture)
from tfsky.io.images import read_image
from tfsky.predict.batch import PredictConfig, predict_many
from tfsky.predict.translate import translate_images

RAY = str(Path(sys.executable).parent / "ray")
WEBCAMS = ("684", "9730")  # 640x480 and 1280x960 frames


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def cluster() -> tuple[str, dict]:
    """``(HOST:PORT, environment)`` of a Ray head on 127.0.0.1 (2 CPUs, 80 MB object store) for this module."""
    env = dict(os.environ, RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0", RAY_AUTH_MODE="token",
               RAY_AUTH_TOKEN=secrets.token_hex(32))
    temp = Path(tempfile.mkdtemp(prefix="tfray", dir="/tmp"))  # short: Ray's socket paths have a length limit
    port = free_port()
    head = subprocess.Popen(
        [RAY, "start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={port}", "--num-cpus=2",
         "--num-gpus=0", "--object-store-memory=80000000", "--include-dashboard=false", "--disable-usage-stats",
         f"--temp-dir={temp}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True, env=env,
    )
    address = f"127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while subprocess.run([RAY, "status", f"--address={address}"], capture_output=True, env=env).returncode != 0:
            assert head.poll() is None, "ray start --head exited"
            assert time.monotonic() < deadline, "the Ray head did not come up in 120 s"
            time.sleep(1)
        yield address, env
    finally:
        _stop(head)
        shutil.rmtree(temp, ignore_errors=True)


def _stop(head: subprocess.Popen) -> None:
    """Stop the head and everything it started (its own process group), and wait until all of it is gone."""
    try:
        os.killpg(head.pid, signal.SIGTERM)
        head.wait(timeout=5)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        pass
    deadline = time.monotonic() + 30
    while _group_members(head.pid) and time.monotonic() < deadline:
        try:
            os.killpg(head.pid, signal.SIGKILL)
        except ProcessLookupError:
            break
        time.sleep(0.2)
    head.wait()
    assert not _group_members(head.pid), "Ray processes survived the cluster shutdown"


def _group_members(pgid: int) -> list[int]:
    """Live (not zombie) processes of process group ``pgid``."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            members.append(int(stat.parent.name))
    return members


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    return tiny_segmenter(tmp_path_factory.mktemp("model") / "m.keras")


def webcam_frames(shared_data: Path, folder: Path, per_camera: int) -> list[Path]:
    """Real webcam frames linked into ``folder`` (links: the data is never copied)."""
    folder.mkdir(parents=True)
    frames = []
    for camera in WEBCAMS:
        for frame in sorted((shared_data / "skyfinder_webcams" / camera).glob("*.jpg"))[:per_camera]:
            (folder / f"{camera}_{frame.name}").symlink_to(frame)
            frames.append(folder / f"{camera}_{frame.name}")
    return frames


def tfsky(*args) -> list[str]:
    return [sys.executable, "-m", "tfsky.cli.main", *map(str, args)]


def test_ray_outputs_equal_the_local_engine_and_a_bad_file_is_reported(shared_data, cluster, model, tmp_path):
    address, env = cluster
    frames = webcam_frames(shared_data, tmp_path / "in", per_camera=2)
    broken = tmp_path / "in" / "broken.jpg"
    broken.write_bytes(frames[0].read_bytes()[:700])
    local = predict_many(model, [tmp_path / "in"], tmp_path / "local", PredictConfig(prob_format="tif"))
    assert len(local.done) == 4 and [source for source, _ in local.failed] == [broken]
    out = tmp_path / "ray"
    result = subprocess.run(tfsky("predict", "-m", model, tmp_path / "in", "-o", out, "--prob-format", "tif",
                                  "--engine", "ray", "--address", address, "--workers", "2"),
                            capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 1, result.stderr
    assert result.stderr.strip().splitlines() == [f"failed {broken}: {local.failed[0][1]}"]  # no Ray logs
    assert result.stdout.strip() == f"done 4, skipped 0, failed 1 -> {out}"
    assert visible_files(out) == visible_files(tmp_path / "local")
    for frame in frames:
        stem = frame.stem
        for name in (f"{stem}_mask.png", f"{stem}_overlay.jpg"):
            assert (out / name).read_bytes() == (tmp_path / "local" / name).read_bytes(), name
        ray_prob, local_prob = (read_image(folder / f"{stem}_prob.tif", channels=None) for folder in
                                (out, tmp_path / "local"))
        np.testing.assert_allclose(ray_prob, local_prob, rtol=0, atol=1e-6)
        ray_facts, local_facts = (json.loads((folder / f"{stem}.json").read_text()) for folder in
                                  (out, tmp_path / "local"))
        assert ray_facts.pop("seconds") > 0 and local_facts.pop("seconds") > 0
        assert ray_facts == local_facts


def test_a_ray_run_killed_part_way_is_finished_by_a_rerun(shared_data, cluster, model, tmp_path):
    address, env = cluster
    frames = webcam_frames(shared_data, tmp_path / "in", per_camera=4)
    out = tmp_path / "out"
    command = tfsky("predict", "-m", model, tmp_path / "in", "-o", out, "--tta", "flip4", "--tile-batch", "2",
                    "--engine", "ray", "--address", address, "--workers", "2", "-q")
    kill_9_after_the_first_sidecar(command, out, env)
    time.sleep(5)  # the cluster ends the dead driver's workers; an image they were writing stays a hidden temp
    finished = sorted(p.stem for p in out.glob("*.json"))
    assert 1 <= len(finished) < len(frames)
    rerun = subprocess.run(command[:-1], capture_output=True, text=True, timeout=300, env=env)
    assert rerun.returncode == 0, rerun.stderr
    assert rerun.stdout.strip() == f"done {len(frames) - len(finished)}, skipped {len(finished)}, failed 0 -> {out}"
    assert visible_files(out) == {f"{frame.stem}{suffix}" for frame in frames
                                  for suffix in ("_mask.png", "_prob.png", "_overlay.jpg", ".json")}
    assert not [p for p in out.iterdir() if p.name.startswith(".")]


def test_ray_translation_equals_the_local_engine_and_a_model_error_stops_both_alike(shared_data, cluster,
                                                                                  translator_file, cli, tmp_path):
    address, env = cluster
    frames = webcam_frames(shared_data, tmp_path / "in", per_camera=1)
    out = tmp_path / "ray"
    result = subprocess.run(tfsky("translate", "-m", translator_file, tmp_path / "in", "-o", out, "--engine", "ray",
                                  "--address", address, "--workers", "2", "-q"),
                            capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == ""
    local = translate_images(translator_file, [tmp_path / "in"], tmp_path / "local")
    assert len(local.done) == len(frames)
    for frame in frames:
        name = f"{frame.stem}_translated.png"
        assert (out / name).read_bytes() == (tmp_path / "local" / name).read_bytes(), name

    bad_tile = ("translate", "-m", translator_file, tmp_path / "in", "-o", tmp_path / "bad", "--tile", "52")
    local_error = cli(*bad_tile)  # the tile is checked when the model loads: in each Ray worker
    assert local_error.exit_code == 1 and "got 52" in local_error.stderr
    on_ray = subprocess.run(tfsky(*bad_tile, "--engine", "ray", "--address", address), capture_output=True,
                            text=True, timeout=300, env=env)
    assert on_ray.returncode == 1 and on_ray.stderr.strip() == local_error.stderr.strip()


def test_an_address_where_no_cluster_answers_is_one_line_error(model, tmp_path):
    port = free_port()  # nobody listens there
    frame = tmp_path / "in.png"
    frame.write_bytes(b"never read")
    result = subprocess.run(tfsky("predict", "-m", model, frame, "-o", tmp_path / "out", "--engine", "ray",
                                  "--address", f"127.0.0.1:{port}"), capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert result.stderr.strip() == f"Error: --address 127.0.0.1:{port}: no Ray cluster answers there (Connection refused)"
