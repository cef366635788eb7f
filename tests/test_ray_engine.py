"""``--engine ray`` on a real local Ray cluster (no mocks): the test starts a head on 127.0.0.1 with 2 CPUs
(2 worker processes) and a small object store, and always shuts it down. The cluster only listens on the
loopback (Ray treats 127.0.0.1 as "this machine's address" unless RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0) and
uses token authentication with a token made by the test (nothing is written to ~/.ray).

Checks: outputs equal the local engine's (mask and overlay bytes, float probabilities within 1e-6, sidecars
but for timing; translated frames byte for byte), also written straight into an object store (a real S3
server on 127.0.0.1, `test_object_store.s3_server`); a bad file is reported in one line and the others
finish; a driver killed part-way and re-run does only the missing images; a worker killed mid-image does
not stop the job (every output is written); an item whose worker dies every time fails alone.
"""

from __future__ import annotations

import contextlib
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

from test_jobs import complete_sidecars, kill_9_after_the_first_sidecar
from test_object_store import model, s3_server  # noqa: F401  (fixtures)
from test_object_store import new_bucket, objects, s3_client, same_outputs, webcam_frames
from test_predict import visible_files
from test_translate import translator_file  # noqa: F401  (the tiny pix2pix translator fixture)
from tfsky.io.images import read_image
from tfsky.predict.batch import PredictConfig, predict_many
from tfsky.predict.translate import translate_images
from tfsky.batch.ray_engine import ITEM_ATTEMPTS, WORKER_DIED

RAY = str(Path(sys.executable).parent / "ray")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def cluster(s3_server) -> tuple[str, dict, int]:
    """``(HOST:PORT, environment, session id)`` of a Ray head on 127.0.0.1 (2 CPUs, 80 MB object store).

    The environment also points at `s3_server` (the workers inherit it from the head), so jobs can write there.
    """
    env = dict(
        os.environ,
        RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0",
        RAY_AUTH_MODE="token",
        RAY_AUTH_TOKEN=secrets.token_hex(32),
        **s3_server,
    )
    temp = Path(tempfile.mkdtemp(prefix="tfray", dir="/tmp"))  # short: Ray's socket paths have a length limit
    port = free_port()
    head = subprocess.Popen(
        [
            RAY,
            "start",
            "--head",
            "--block",
            "--node-ip-address=127.0.0.1",
            f"--port={port}",
            "--num-cpus=2",
            "--num-gpus=0",
            "--object-store-memory=80000000",
            "--include-dashboard=false",
            "--disable-usage-stats",
            f"--temp-dir={temp}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        env=env,
    )
    address = f"127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while subprocess.run([RAY, "status", f"--address={address}"], capture_output=True, env=env).returncode != 0:
            assert head.poll() is None, "ray start --head exited"
            assert time.monotonic() < deadline, "the Ray head did not come up in 120 s"
            time.sleep(1)
        yield address, env, head.pid
    finally:
        _stop(head)
        shutil.rmtree(temp, ignore_errors=True)


def _stop(head: subprocess.Popen) -> None:
    """Stop the head and everything it started, and wait until all of it is gone.

    The head runs in a session of its own; Ray gives each worker its own process group in that session.
    """
    try:
        os.killpg(head.pid, signal.SIGTERM)
        head.wait(timeout=5)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        pass
    deadline = time.monotonic() + 30
    while _session_members(head.pid) and time.monotonic() < deadline:
        for pid in _session_members(head.pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.2)
    head.wait()
    assert not _session_members(head.pid), "Ray processes survived the cluster shutdown"


def _session_members(session: int) -> dict[int, bytes]:
    """``{pid: command line}`` of the live (not zombie) processes of session ``session``."""
    members = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            command = (stat.parent / "cmdline").read_bytes()
        except OSError:
            continue
        if int(fields[3]) == session and fields[0] != "Z":
            members[int(stat.parent.name)] = command
    return members


def tfsky(*args) -> list[str]:
    return [sys.executable, "-m", "tfsky.cli.main", *map(str, args)]


def test_ray_outputs_equal_the_local_engine_and_a_bad_file_is_reported(shared_data, cluster, model, tmp_path):
    address, env, _ = cluster
    frames = webcam_frames(shared_data, tmp_path / "in", per_camera=2)
    broken = tmp_path / "in" / "broken.jpg"
    broken.write_bytes(frames[0].read_bytes()[:700])
    local = predict_many(model, [tmp_path / "in"], tmp_path / "local", PredictConfig(prob_format="tif"))
    assert len(local.done) == 4 and [source for source, _ in local.failed] == [broken]
    out = tmp_path / "ray"
    result = subprocess.run(
        tfsky(
            "predict",
            "-m",
            model,
            tmp_path / "in",
            "-o",
            out,
            "--prob-format",
            "tif",
            "--engine",
            "ray",
            "--address",
            address,
            "--workers",
            "2",
        ),
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert result.returncode == 1, result.stderr
    assert result.stderr.strip().splitlines() == [f"failed {broken}: {local.failed[0][1]}"]  # no Ray logs
    assert result.stdout.strip() == f"done 4, skipped 0, failed 1 -> {out}"
    assert visible_files(out) == visible_files(tmp_path / "local")
    for frame in frames:
        stem = frame.stem
        for name in (f"{stem}_mask.png", f"{stem}_overlay.jpg"):
            assert (out / name).read_bytes() == (tmp_path / "local" / name).read_bytes(), name
        ray_prob, local_prob = (
            read_image(folder / f"{stem}_prob.tif", channels=None) for folder in (out, tmp_path / "local")
        )
        np.testing.assert_allclose(ray_prob, local_prob, rtol=0, atol=1e-6)
        ray_facts, local_facts = (
            json.loads((folder / f"{stem}.json").read_text()) for folder in (out, tmp_path / "local")
        )
        assert ray_facts.pop("seconds") > 0 and local_facts.pop("seconds") > 0
        assert ray_facts == local_facts


def test_a_ray_run_killed_part_way_is_finished_by_a_rerun(shared_data, cluster, model, tmp_path):
    address, env, _ = cluster
    frames = webcam_frames(shared_data, tmp_path / "in", per_camera=4)
    out = tmp_path / "out"
    command = tfsky(
        "predict",
        "-m",
        model,
        tmp_path / "in",
        "-o",
        out,
        "--tta",
        "flip4",
        "--tile-batch",
        "2",
        "--engine",
        "ray",
        "--address",
        address,
        "--workers",
        "2",
        "-q",
    )
    kill_9_after_the_first_sidecar(command, out, env)
    time.sleep(5)  # the cluster ends the dead driver's workers; an image they were writing stays a hidden temp
    finished = complete_sidecars(out)
    assert 1 <= len(finished) < len(frames)
    rerun = subprocess.run(command[:-1], capture_output=True, text=True, timeout=300, env=env)
    assert rerun.returncode == 0, rerun.stderr
    assert rerun.stdout.strip() == f"done {len(frames) - len(finished)}, skipped {len(finished)}, failed 0 -> {out}"
    assert visible_files(out) == {
        f"{frame.stem}{suffix}" for frame in frames for suffix in ("_mask.png", "_prob.png", "_overlay.jpg", ".json")
    }
    assert not [p for p in out.iterdir() if p.name.startswith(".")]


def test_ray_translation_equals_the_local_engine_and_a_model_error_stops_both_alike(
    shared_data, cluster, translator_file, cli, tmp_path
):
    address, env, _ = cluster
    frames = webcam_frames(shared_data, tmp_path / "in", per_camera=1)
    out = tmp_path / "ray"
    result = subprocess.run(
        tfsky(
            "translate",
            "-m",
            translator_file,
            tmp_path / "in",
            "-o",
            out,
            "--engine",
            "ray",
            "--address",
            address,
            "--workers",
            "2",
            "-q",
        ),
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
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
    on_ray = subprocess.run(
        tfsky(*bad_tile, "--engine", "ray", "--address", address), capture_output=True, text=True, timeout=300, env=env
    )
    assert on_ray.returncode == 1 and on_ray.stderr.strip() == local_error.stderr.strip()


def test_an_address_where_no_cluster_answers_is_one_line_error(model, tmp_path):
    port = free_port()  # nobody listens there
    frame = tmp_path / "in.png"
    frame.write_bytes(b"never read")
    result = subprocess.run(
        tfsky(
            "predict", "-m", model, frame, "-o", tmp_path / "out", "--engine", "ray", "--address", f"127.0.0.1:{port}"
        ),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1
    assert (
        result.stderr.strip() == f"Error: --address 127.0.0.1:{port}: no Ray cluster answers there (Connection refused)"
    )


def test_ray_workers_write_straight_into_an_object_store_and_a_rerun_skips_what_is_there(
    shared_data, cluster, model, tmp_path
):
    address, env, _ = cluster
    frames = webcam_frames(shared_data, tmp_path / "in", per_camera=1)
    local = predict_many(model, [tmp_path / "in"], tmp_path / "local")
    assert len(local.done) == len(frames)
    bucket = new_bucket(env)
    out = f"s3://{bucket}/ray"
    command = tfsky(
        "predict", "-m", model, tmp_path / "in", "-o", out, "--engine", "ray", "--address", address, "--workers", "2"
    )
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"done {len(frames)}, skipped 0, failed 0 -> {out}"
    same_outputs(objects(env, bucket, "ray"), tmp_path / "local")
    assert not (tmp_path / "s3:").exists()

    s3_client(env).delete_object(Bucket=bucket, Key=f"ray/{frames[0].stem}_mask.png")  # one image unfinished
    rerun = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert rerun.returncode == 0, rerun.stderr
    assert rerun.stdout.strip() == f"done 1, skipped {len(frames) - 1}, failed 0 -> {out}"
    same_outputs(objects(env, bucket, "ray"), tmp_path / "local")


def _map_workers(session: int) -> set[int]:
    """Process ids of the Ray Data actors (``ray::MapWorker...``) of the cluster."""
    return {pid for pid, command in _session_members(session).items() if command.startswith(b"ray::MapWorker")}


def test_a_worker_killed_mid_image_does_not_stop_the_job(shared_data, cluster, model, tmp_path):
    address, env, session = cluster
    frames = webcam_frames(shared_data, tmp_path / "in", per_camera=6)
    out = tmp_path / "out"
    driver = subprocess.Popen(
        tfsky(
            "predict",
            "-m",
            model,
            tmp_path / "in",
            "-o",
            out,
            "--tta",
            "flip4",
            "--tile-batch",
            "2",
            "--engine",
            "ray",
            "--address",
            address,
            "--workers",
            "2",
            "-q",
        ),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        deadline = time.monotonic() + 240
        while True:  # kill as soon as both workers run and one image is finished (the job is well under way)
            assert driver.poll() is None and time.monotonic() < deadline, driver.stderr.read()
            before = _map_workers(session)
            if len(before) == 2 and complete_sidecars(out):
                break
            time.sleep(0.1)
        victim = min(before)
        os.kill(victim, signal.SIGKILL)
        stdout, stderr = driver.communicate(timeout=300)
    finally:
        driver.kill()
    assert victim not in _map_workers(session)
    assert driver.returncode == 0, stderr
    assert stderr.strip() == ""
    assert visible_files(out) == {
        f"{frame.stem}{suffix}" for frame in frames for suffix in ("_mask.png", "_prob.png", "_overlay.jpg", ".json")
    }
    assert len(list(out.glob("*.json"))) == len(frames)
    assert not [p for p in out.iterdir() if p.name.startswith(".")]


POISON_JOB = """
import json, os, sys
from pathlib import Path
from tfsky.io.atomic import write_bytes
from tfsky.batch import Task, run_job
from tfsky.batch.ray_engine import RayEngine

class DiesOnPoison(Task):  # defined in __main__, so Ray ships the class itself to the workers
    def outputs(self, stem):
        return [stem.with_suffix(".out")]

    def read(self, source):
        return source.read_bytes()

    def process(self, item, decoded, outputs, listener):
        data = decoded.take()
        if data == b"poison":
            with open(Path(item.source).with_suffix(".attempts"), "a") as attempts:
                attempts.write("x")
            os._exit(1)  # as the kernel's out-of-memory killer would end the worker
        write_bytes(outputs[0], data)

folder, out, address = sys.argv[1:]
report = run_job(DiesOnPoison(), [Path(folder)], out, engine=RayEngine(address=address, workers=2))
print(json.dumps({"done": sorted(map(str, report.done)), "failed": [[str(s), r] for s, r in report.failed]}))
"""


def test_an_item_whose_worker_dies_every_time_fails_alone(cluster, tmp_path):
    address, env, _ = cluster
    folder = tmp_path / "in"
    folder.mkdir()
    for name, data in (("a", b"1"), ("b", b"poison"), ("c", b"3"), ("d", b"4")):
        (folder / f"{name}.png").write_bytes(data)
    result = subprocess.run(
        [sys.executable, "-c", POISON_JOB, str(folder), str(tmp_path / "out"), address],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["failed"] == [[str(folder / "b.png"), WORKER_DIED]]
    assert report["done"] == [str(folder / f"{name}.png") for name in "acd"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a.out", "c.out", "d.out"]
    assert (folder / "b.attempts").read_text() == "x" * ITEM_ATTEMPTS  # tried that often, then given up
