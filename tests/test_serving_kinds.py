"""``tfsky client predict`` with a served cloud model and a served colorizer writes what the local commands write.

The kind of a served model comes from its signatures; the client's outputs are compared with those of
``tfsky predict`` (cloud) and ``tfsky colorize`` (colorizer) on the same frames.
"""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from served_kinds import save_cloud, save_colorizer
from tfsky.export.savedmodel import export_model
from tfsky.io.images import read_image
from tfsky.io.writers import write_png
from tfsky.serving import Client, DevServer


def all_sky_frame(seed: int) -> np.ndarray:
    """A 60 x 80 fisheye-like frame: a noisy bright disc (the sky) on black (outside the lens)."""
    rng = np.random.default_rng(seed)
    frame = rng.integers(20, 256, (60, 80, 3), dtype=np.uint8)
    rows, cols = np.ogrid[:60, :80]
    frame[(rows - 30) ** 2 + (cols - 40) ** 2 > 28**2] = 0
    return frame


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A cloud model and a colorizer exported and served on loopback, and three frames (the last one black)."""
    root = tmp_path_factory.mktemp("kinds")
    models = {"cloud": save_cloud(root / "cloud.keras"), "colorizer": save_colorizer(root / "colorizer.keras")}
    for name, model in models.items():
        export_model(model, root / "repo", name)
    frames = root / "frames"
    frames.mkdir()
    for index, name in enumerate(["20240101_120000.png", "20240101_121000.png"]):
        write_png(frames / name, all_sky_frame(index))
    write_png(frames / "20240101_122000.png", np.zeros((60, 80, 3), np.uint8))  # no valid sky: fails in both
    with DevServer(root / "repo", grpc_port=0, rest_port=0, poll_seconds=0.3) as server:
        yield {
            "root": root,
            "models": models,
            "frames": frames,
            "grpc": f"127.0.0.1:{server.grpc_port}",
            "rest": f"127.0.0.1:{server.rest_port}",
        }


def client_predict(cli, served, inputs, model: str, out, *extra, rest: bool = False):
    server = ["--server", served["rest"], "--rest"] if rest else ["--server", served["grpc"]]
    return cli("client", "predict", inputs, "--out", out, "--model", model, "--quiet", *server, *extra)


def test_the_served_kind_comes_from_the_signatures(served):
    with Client(served["grpc"]) as client:
        assert client.served_kind("cloud") == "cloud"
        assert client.served_kind("colorizer") == "colorizer"


@pytest.mark.parametrize("rest", [False, True])
def test_client_predict_with_a_cloud_model_writes_what_tfsky_predict_writes(served, cli, tmp_path, rest):
    local, remote = tmp_path / "local", tmp_path / "remote"
    result = cli("predict", served["frames"], "--model", served["models"]["cloud"], "--out", local, "--quiet")
    assert result.exit_code == 1 and "no valid sky pixel" in result.stderr  # the black frame
    result = client_predict(cli, served, served["frames"], "cloud", remote, rest=rest)
    assert result.exit_code == 1 and "no valid sky pixel" in result.stderr

    assert (remote / "cloud_cover.csv").read_text() == (local / "cloud_cover.csv").read_text()
    assert (remote / "cloud_cover.png").is_file()
    for stem in ("20240101_120000", "20240101_121000"):
        for suffix in ("_classes.png", "_mask.png"):
            np.testing.assert_array_equal(
                read_image(remote / f"{stem}{suffix}", channels=None),
                read_image(local / f"{stem}{suffix}", channels=None),
            )
        probability = [read_image(folder / f"{stem}_prob.png", channels=None) / 65535 for folder in (remote, local)]
        np.testing.assert_allclose(*probability, atol=1e-4)
        facts = [json.loads((folder / f"{stem}.json").read_text()) for folder in (remote, local)]
        assert facts[0]["sky_fraction"] == facts[1]["sky_fraction"]
        assert facts[1]["cloud_cover"]["sun"] == {"found": False}  # so the served cover (no sun search) is the same
        local_cover = {
            key: value for key, value in facts[1]["cloud_cover"].items() if key not in ("camera_mask", "sun")
        }
        assert facts[0]["cloud_cover"] == local_cover
        assert 0 < local_cover["cloud_fraction_pct"] < 100
    assert not (remote / "20240101_122000.json").exists()


def test_client_predict_with_a_colorizer_writes_what_tfsky_colorize_writes(served, cli, tmp_path):
    local, remote = tmp_path / "local", tmp_path / "remote"
    grey = served["root"] / "grey"
    grey.mkdir()
    for index in range(2):
        write_png(grey / f"frame{index}.png", cv2.cvtColor(all_sky_frame(index), cv2.COLOR_RGB2GRAY)[..., None])
    result = cli("colorize", grey, "--model", served["models"]["colorizer"], "--out", local, "--quiet")
    assert result.exit_code == 0, result.stderr
    result = client_predict(cli, served, grey, "colorizer", remote)
    assert result.exit_code == 0, result.stderr
    assert (
        sorted(p.name for p in remote.iterdir())
        == sorted(p.name for p in local.iterdir())
        == ["frame0_colour.png", "frame1_colour.png"]
    )
    for name in ("frame0_colour.png", "frame1_colour.png"):
        served_rgb, local_rgb = (read_image(folder / name).astype(int) for folder in (remote, local))
        assert served_rgb.shape == local_rgb.shape == (60, 80, 3)
        assert np.abs(served_rgb - local_rgb).mean() < 1.0  # OpenCV's and TensorFlow's area resize of L differ
        assert np.abs(served_rgb - local_rgb).max() <= 8


def test_client_tiles_of_a_cloud_export_is_refused_in_one_line(served, cli, tmp_path):
    version = served["root"] / "repo" / "cloud" / "1"
    result = client_predict(cli, served, served["frames"], "cloud", tmp_path / "out", "--tiles", version)
    assert result.exit_code == 1
    assert result.stderr.strip() == (
        f"Error: {version}: is a cloud model: client-side tiling (--tiles) draws a 1-class sky mask; omit --tiles"
    )
