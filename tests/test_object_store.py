"""``--out s3://bucket/prefix`` against a real S3 server (moto's, on 127.0.0.1, started by the test).

Checks: the objects equal the files of a local run byte for byte (sidecars but for timing); a re-run
skips what exists and redoes an item whose object is gone; a failed write leaves no object; a bucket
that cannot be written and an unsupported scheme are one-line errors; nothing lands in a local ``s3:``
folder; ``tfsky translate``, ``tfsky colorize`` and ``tfsky client predict`` (a served segmenter and a
served classifier with its table) write there alike; a cloud model's ``cloud_cover.csv``/``.png`` are
objects too, rebuilt on a re-run from the sidecars in the store. The Ray engine writing to the store is
in `test_ray_engine`.
"""

from __future__ import annotations

import csv
import io
import json
import os
import secrets
import tempfile
from pathlib import Path

import cv2
import numpy as np
import pytest

from test_classifier_serving import served as served_classifier  # noqa: F401  (a classifier on loopback)
from test_cloud_e2e import FRAMES as WSISEG_FRAMES, trained as cloud_model  # noqa: F401  (a tiny cloud model)
from test_colorize import colorizer_file  # noqa: F401  (the tiny colorizer fixture)
from test_predict import tiny_segmenter, visible_files
from test_serving import setup as served_segmenter, small_png  # noqa: F401  (a segmenter on loopback)
from test_translate import translator_file  # noqa: F401  (the tiny pix2pix translator fixture)
from tfsky.io.atomic import atomic_path, prepare_out_dir
from tfsky.io.stores import StorePath, as_path
from tfsky.predict.batch import predict_many
from tfsky.predict.classify import TABLE
from tfsky.predict.colorize import colorize_images
from tfsky.predict.outputs import SERIES_CSV, SERIES_PLOT
from tfsky.predict.translate import translate_images
from tfsky.serving import Client
from tfsky.serving.segment_jobs import segment_files

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
        yield {
            "AWS_ENDPOINT_URL": f"http://{host}:{port}",
            "AWS_DEFAULT_REGION": S3_REGION,
            "AWS_ACCESS_KEY_ID": "tfsky-test",
            "AWS_SECRET_ACCESS_KEY": secrets.token_hex(16),
        }
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

    return boto3.client(
        "s3",
        endpoint_url=env["AWS_ENDPOINT_URL"],
        region_name=S3_REGION,
        aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
    )


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
    return {
        entry["Key"][len(prefix) + 1 :]: client.get_object(Bucket=bucket, Key=entry["Key"])["Body"].read()
        for entry in listing
        if not entry["Key"].endswith("/")
    }


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
    shared_data, s3, model, cli, tmp_path, monkeypatch
):
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
    assert len(lines) == 1 and lines[0].startswith(
        "Error: s3://no-such-bucket/run: cannot write to the output folder ("
    )
    assert "bucket does not exist" in lines[0]

    bucket = new_bucket(s3)
    s3_client(s3).put_object(Bucket=bucket, Key="taken", Body=b"x")
    with pytest.raises(Exception, match="is an object, not an output folder"):
        prepare_out_dir(as_path(f"s3://{bucket}/taken"))

    other = cli("predict", "-m", model, frame, "-o", "gs://bucket/run")
    assert other.exit_code == 1
    assert other.stderr.strip() == "Error: gs://bucket/run: unsupported object store gs:// (supported: s3://)"
    assert not os.path.exists("gs:") and not os.path.exists("s3:")


def csv_rows(data: bytes) -> list[dict]:
    return list(csv.DictReader(io.StringIO(data.decode("utf-8"))))


def decoded_png(data: bytes) -> np.ndarray:
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    assert image is not None, "not a PNG"
    return image


def test_colorize_into_an_object_store_equals_a_local_folder_and_a_rerun_finishes_it(
    shared_data, s3, colorizer_file, cli, tmp_path, monkeypatch
):
    monkeypatch.chdir(tmp_path)  # a store URI taken for a local path would show up here as ./s3:
    frames = webcam_frames(shared_data, tmp_path / "in", per_camera=1)
    assert len(colorize_images(colorizer_file, [tmp_path / "in"], tmp_path / "local").done) == 2
    bucket = new_bucket(s3)
    out = f"s3://{bucket}/colour"
    result = cli("colorize", "-m", colorizer_file, tmp_path / "in", "-o", out, "-q")
    assert result.exit_code == 0, result.stderr
    stored = objects(s3, bucket, "colour")
    assert set(stored) == {f"{frame.stem}_colour.png" for frame in frames} == visible_files(tmp_path / "local")
    assert all(data == (tmp_path / "local" / name).read_bytes() for name, data in stored.items())
    for frame in frames:
        colour = decoded_png(stored[f"{frame.stem}_colour.png"])
        assert colour.shape == cv2.imread(str(frame)).shape
    assert not (tmp_path / "s3:").exists()

    s3_client(s3).delete_object(Bucket=bucket, Key=f"colour/{frames[0].stem}_colour.png")
    rerun = cli("colorize", "-m", colorizer_file, tmp_path / "in", "-o", out)
    assert rerun.exit_code == 0, rerun.stderr
    assert rerun.stdout.strip().splitlines()[-1] == f"done 1, skipped 1, failed 0 -> {out}"
    assert objects(s3, bucket, "colour") == stored


def test_a_cloud_models_series_is_stored_and_a_rerun_rebuilds_it_from_the_stored_sidecars(
    shared_data, s3, cloud_model, cli, tmp_path, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    _, model, data = cloud_model
    frames = [data / "images" / name for name in WSISEG_FRAMES[:3]]
    mask = f"predict.cloud.camera_mask={shared_data / 'allsky_wsiseg' / 'mask_cam.png'}"
    bucket = new_bucket(s3)
    out = f"s3://{bucket}/sky"
    first = cli("predict", "-m", model, *frames[:2], "-o", out, "-q", "--set", mask)
    assert first.exit_code == 0, first.stderr
    stored = objects(s3, bucket, "sky")
    assert {SERIES_CSV, SERIES_PLOT} <= set(stored)
    rows = csv_rows(stored[SERIES_CSV])
    assert [row["file"] for row in rows] == [str(frame) for frame in frames[:2]]
    for row, frame in zip(rows, frames):
        cover = json.loads(stored[f"{frame.stem}.json"])["cloud_cover"]
        assert float(row["cloud_fraction_pct"]) == pytest.approx(cover["cloud_fraction_pct"])
        assert int(row["okta"]) == cover["okta"] and row["sky_condition"] == cover["sky_condition"]
    assert decoded_png(stored[SERIES_PLOT]).shape[2] in (3, 4)
    assert not (tmp_path / "s3:").exists()

    for name in (SERIES_CSV, SERIES_PLOT):  # the series of the re-run must come from the store's sidecars
        s3_client(s3).delete_object(Bucket=bucket, Key=f"sky/{name}")
    rerun = cli("predict", "-m", model, *frames, "-o", out, "--set", mask)
    assert rerun.exit_code == 0, rerun.stderr
    assert rerun.stdout.strip().splitlines()[-1] == f"done 1, skipped 2, failed 0 -> {out}"
    again = objects(s3, bucket, "sky")
    assert [row["file"] for row in csv_rows(again[SERIES_CSV])] == [str(frame) for frame in frames]
    assert csv_rows(again[SERIES_CSV])[:2] == rows
    decoded_png(again[SERIES_PLOT])
    assert not (tmp_path / "s3:").exists()


def test_client_predict_into_an_object_store_equals_a_local_folder_and_a_rerun_skips_it(
    served_segmenter, s3, cli, tmp_path, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    images = [small_png(tmp_path / "in" / "a.png", 0), small_png(tmp_path / "in" / "sub" / "b.png", 1)]
    with Client(served_segmenter["grpc"]) as client:
        assert len(segment_files(client, "sky_segmenter", [tmp_path / "in"], tmp_path / "local").done) == 2
    bucket = new_bucket(s3)
    out = f"s3://{bucket}/served"
    args = (
        "client",
        "predict",
        "--server",
        served_segmenter["grpc"],
        "--model",
        "sky_segmenter",
        tmp_path / "in",
        "-o",
        out,
    )
    result = cli(*args, "-q")
    assert result.exit_code == 0, result.stderr
    stored = objects(s3, bucket, "served")
    assert (
        set(stored)
        == visible_files(tmp_path / "local")
        == {f"{stem}{suffix}" for stem in ("a", "sub/b") for suffix in ("_mask.png", "_prob.png", ".json")}
    )
    assert all(data == (tmp_path / "local" / name).read_bytes() for name, data in stored.items())
    assert decoded_png(stored["sub/b_prob.png"]).dtype == np.uint16
    assert json.loads(stored["a.json"])["source"] == str(images[0])
    assert not (tmp_path / "s3:").exists()

    rerun = cli(*args)
    assert rerun.exit_code == 0, rerun.stderr
    assert rerun.stdout.strip().splitlines()[-1] == f"done 0, skipped 2, failed 0 -> {out}"
    assert objects(s3, bucket, "served") == stored


def test_client_predict_with_a_classifier_stores_sidecars_and_the_table_built_from_them(
    served_classifier, s3, cli, tmp_path, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    photos = served_classifier["photos"]
    bucket = new_bucket(s3)
    out = f"s3://{bucket}/weather"
    args = ("client", "predict", photos, "-o", out, "--server", served_classifier["grpc"], "--model", "weather")
    result = cli(*args, "-q")
    assert result.exit_code == 0, result.stderr
    stored = objects(s3, bucket, "weather")
    assert set(stored) == {"blue.json", "sub/grey.json", TABLE}
    rows = csv_rows(stored[TABLE])
    assert [row["file"] for row in rows] == [str(photos / "blue.png"), str(photos / "sub" / "grey.jpg")]
    for row, name in zip(rows, ("blue.json", "sub/grey.json")):
        facts = json.loads(stored[name])
        assert row["condition"] == facts["condition"]
        assert float(row["p_overcast"]) == pytest.approx(facts["probabilities"]["overcast"])
    assert not (tmp_path / "s3:").exists()

    s3_client(s3).delete_object(Bucket=bucket, Key=f"weather/{TABLE}")  # the re-run's table: from the store
    rerun = cli(*args)
    assert rerun.exit_code == 0, rerun.stderr
    assert rerun.stdout.strip().splitlines()[-1] == f"done 0, skipped 2, failed 0 -> {out}"
    assert objects(s3, bucket, "weather") == stored
