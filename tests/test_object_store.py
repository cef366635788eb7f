"""``--out s3://bucket/prefix`` against a real S3 server (moto's, on 127.0.0.1, started by the test).

Checks: the objects equal the files of a local run byte for byte (sidecars but for timing); a re-run
skips what exists and redoes an item whose object is gone; a failed write leaves no object; a bucket
that cannot be written and an unsupported scheme are one-line errors; nothing lands in a local ``s3:``
folder; ``tfsky translate`` writes there alike. The Ray engine writing to the store is in `test_ray_engine`.
"""

from __future__ import annotations

import json
import os
import secrets
import tempfile
from pathlib import Path

import pytest

from test_predict import tiny_segmenter, visible_files
from test_translate import translator_file  # noqa: F401  (the tiny pix2pix translator fixture)
from tfsky.io.atomic import atomic_path, prepare_out_dir
from tfsky.io.stores import StorePath, as_path
from tfsky.predict.batch import predict_many
from tfsky.predict.translate import translate_images

S3_REGION = "us-east-1"
WEBCAMS = ("684", "9730")


@pytest.fixture(scope="module")
def s3_server() -> dict[str, str]:
    """The environment (endpoint, region, made-up keys) of an S3 server on 127.0.0.1 for this module."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield {"AWS_ENDPOINT_URL": f"http://{host}:{port}", "AWS_DEFAULT_REGION": S3_REGION,
               "AWS_ACCESS_KEY_ID": "tfsky-test", "AWS_SECRET_ACCESS_KEY": secrets.token_hex(16)}
    finally:
        server.stop()


@pytest.fixture
def s3(s3_server, monkeypatch) -> dict[str, str]:
    """`s3_server`'s settings in this process's environment (where pyarrow reads them)."""
    for name, value in s3_server.items():
        monkeypatch.setenv(name, value)
    return s3_server


def s3_client(env: dict[str, str]):
    import boto3

    return boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"], region_name=S3_REGION,
                        aws_access_key_id=env["AWS_ACCESS_KEY_ID"], aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"])


def new_bucket(env: dict[str, str]) -> str:
    name = f"tfsky-{secrets.token_hex(4)}"
    s3_client(env).create_bucket(Bucket=name)
    return name


def objects(env: dict[str, str], bucket: str, prefix: str) -> dict[str, bytes]:
    """``{name under prefix: bytes}`` of every object under ``prefix/`` but empty folder markers (``name/``).

    (Arrow leaves ``prefix/`` as a folder marker when it deletes the write-check probe.)
    """
    client = s3_client(env)
    listing = client.list_objects_v2(Bucket=bucket, Prefix=f"{prefix}/").get("Contents", [])
    assert all(entry["Size"] == 0 for entry in listing if entry["Key"].endswith("/"))
    return {entry["Key"][len(prefix) + 1:]: client.get_object(Bucket=bucket, Key=entry["Key"])["Body"].read()
            for entry in listing if not entry["Key"].endswith("/")}


def same_outputs(stored: dict[str, bytes], folder: Path) -> None:
    """The objects are the files of ``folder``: bytes equal, sidecars equal but for the timing."""
    assert set(stored) == visible_files(folder)
    for name, data in stored.items():
        local = (folder / name).read_bytes()
        if name.endswith(".json"):
            ours, theirs = json.loads(data), json.loads(local)
            assert ours.pop("seconds") > 0 and theirs.pop("seconds") > 0
            assert ours == theirs, name
        else:
            assert data == local, name


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    return tiny_segmenter(tmp_path_factory.mktemp("model") / "m.keras")


def webcam_frames(shared_data: Path, folder: Path, per_camera: int) -> list[Path]:
    """Real webcam frames (640x480 and 1280x960) linked into ``folder`` (links: the data is never copied)."""
    folder.mkdir(parents=True)
    frames = []
    for camera in WEBCAMS:
        for frame in sorted((shared_data / "skyfinder_webcams" / camera).glob("*.jpg"))[:per_camera]:
            (folder / f"{camera}_{frame.name}").symlink_to(frame)
            frames.append(folder / f"{camera}_{frame.name}")
    return frames


def test_predict_into_an_object_store_equals_a_local_folder_and_a_rerun_finishes_it(
        shared_data, s3, model, cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a store URI taken for a local path would show up here as ./s3:
    frames = webcam_frames(shared_data, tmp_path / "in", per_camera=1)
    local = predict_many(model, [tmp_path / "in"], tmp_path / "local")
    assert len(local.done) == 2
    bucket = new_bucket(s3)
    out = f"s3://{bucket}/runs/one"
    result = cli("predict", "-m", model, tmp_path / "in", "-o", out, "-q")
    assert result.exit_code == 0, result.stderr
    stored = objects(s3, bucket, "runs/one")
    same_outputs(stored, tmp_path / "local")  # also: the write-check probe is gone
    assert not (tmp_path / "s3:").exists()

    gone = f"runs/one/{frames[1].stem}.json"  # as if the run had been killed before this sidecar
    s3_client(s3).delete_object(Bucket=bucket, Key=gone)
    rerun = cli("predict", "-m", model, tmp_path / "in", "-o", out)
    assert rerun.exit_code == 0, rerun.stderr
    assert rerun.stdout.strip().splitlines()[-1] == f"done 1, skipped 1, failed 0 -> {out}"
    same_outputs(objects(s3, bucket, "runs/one"), tmp_path / "local")


def test_translate_into_an_object_store_equals_a_local_folder(shared_data, s3, translator_file, cli, tmp_path):
    webcam_frames(shared_data, tmp_path / "in", per_camera=1)
    assert len(translate_images(translator_file, [tmp_path / "in"], tmp_path / "local").done) == 2
    bucket = new_bucket(s3)
    result = cli("translate", "-m", translator_file, tmp_path / "in", "-o", f"s3://{bucket}/frames", "-q")
    assert result.exit_code == 0, result.stderr
    stored = objects(s3, bucket, "frames")
    assert set(stored) == visible_files(tmp_path / "local")
    assert all(data == (tmp_path / "local" / name).read_bytes() for name, data in stored.items())


def test_a_failed_write_leaves_no_object_and_no_local_temporary(s3, tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # where the local temporaries go
    bucket = new_bucket(s3)
    target = as_path(f"s3://{bucket}/a/b_mask.png")
    assert isinstance(target, StorePath) and str(target) == f"s3://{bucket}/a/b_mask.png"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            assert tmp.parent == tmp_path and tmp.suffix == ".png"
            tmp.write_bytes(b"half an image")
            raise RuntimeError("killed while encoding")
    assert objects(s3, bucket, "a") == {}
    with atomic_path(target) as tmp:
        tmp.write_bytes(b"a whole image")
    assert objects(s3, bucket, "a") == {"b_mask.png": b"a whole image"}
    assert target.is_file() and not (target.parent / "b.json").is_file()
    assert list(tmp_path.iterdir()) == []


def test_an_object_store_that_cannot_be_written_is_one_line_error(s3, model, cli, tmp_path):
    frame = tmp_path / "in.png"
    frame.write_bytes(b"never read")
    missing = cli("predict", "-m", model, frame, "-o", "s3://no-such-bucket/run")
    assert missing.exit_code == 1
    lines = missing.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: s3://no-such-bucket/run: cannot write to the output folder (")
    assert "bucket does not exist" in lines[0]

    bucket = new_bucket(s3)
    s3_client(s3).put_object(Bucket=bucket, Key="taken", Body=b"x")
    with pytest.raises(Exception, match="is an object, not an output folder"):
        prepare_out_dir(as_path(f"s3://{bucket}/taken"))

    other = cli("predict", "-m", model, frame, "-o", "gs://bucket/run")
    assert other.exit_code == 1
    assert other.stderr.strip() == "Error: gs://bucket/run: unsupported object store gs:// (supported: s3://)"
    assert not os.path.exists("gs:") and not os.path.exists("s3:")
