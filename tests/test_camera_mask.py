"""Camera masks learnt from a stream (`tfsky streams skymask`) and the camera prior of `tfsky predict --camera-mask`.

A synthetic webcam: a fixed scene (blue sky above an irregular skyline, a
textured brown-green ground) under changing light, with night, fog, blank,
obstructed and shifted frames, and a pale wall the model calls sky in every
frame; a stand-in segmenter whose probabilities are a known function of the
pixels (sky where blue exceeds red, nothing in a dark frame or a dark pixel).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tfsky.data.streams import StreamsConfig, import_tree, read_manifest, validate_stream, write_manifest
from tfsky.errors import InputError
from tfsky.io.images import read_image, read_mask
from tfsky.io.writers import write_mask_png, write_png
from tfsky.predict.camera_mask import (
    CameraPrior,
    Consensus,
    SkymaskConfig,
    SkyModel,
    SkymaskPaths,
    skymask_streams,
)
from test_predict import tiny_segmenter

REPO = Path(__file__).resolve().parents[1]
FRAME = (72, 128)
CANVAS_MARGIN = 8  # the scene is drawn larger, so a shifted camera still sees real pixels
SKY_RGB = np.array([150, 200, 255], np.float32)
GROUND_RGB = np.array([110, 100, 40], np.float32)
WALL_RGB = np.array([200, 215, 240], np.float32)  # a pale facade: blue exceeds red, so the stand-in calls it sky
TEST_CFG = SkymaskConfig(analysis_width=128, checkpoint_every=2)


def canvas_sky() -> np.ndarray:
    """The true sky of the whole canvas: above a wavy skyline, with a tower on the right."""
    height, width = FRAME[0] + 2 * CANVAS_MARGIN, FRAME[1] + 2 * CANVAS_MARGIN
    rows, cols = np.mgrid[:height, :width]
    horizon = 38 + 6 * np.sin(cols / 9.0)
    sky = rows < horizon
    sky[:, 100:112] &= rows[:, 100:112] < 18
    return sky


def canvas(light: float = 1.0, sky: np.ndarray | None = None) -> np.ndarray:
    """The scene in ``light`` (1 = noon): ground texture equal in all channels, so blue - red stays the sky's cue."""
    sky = canvas_sky() if sky is None else sky
    texture = np.random.default_rng(7).uniform(-40, 40, sky.shape).astype(np.float32)
    texture = (texture + np.roll(texture, 1, 0) + np.roll(texture, 1, 1)) / 2  # some structure to align on
    image = np.where(sky[..., None], SKY_RGB, GROUND_RGB + texture[..., None])
    return np.clip(image * light, 0, 255)


def crop(image: np.ndarray, dx: int = 0, dy: int = 0) -> np.ndarray:
    """The camera's view; ``(dx, dy)`` moves the view right/down by that many pixels."""
    top, left = CANVAS_MARGIN + dy, CANVAS_MARGIN + dx
    return image[top : top + FRAME[0], left : left + FRAME[1]]


TRUE_SKY = crop(canvas_sky())


def fog(image: np.ndarray) -> np.ndarray:
    return 0.25 * image + 0.75 * 200


class StandInSegmenter:
    """P(sky) = sigmoid((blue - red) / 40) in daylight; 0 everywhere in a dark frame and on a dark pixel (a real
    model's night failure, also under a sky lit by the town).

    ``fail_after`` frames it raises, as a killed run would stop; ``calls`` counts the frames it saw.
    """

    def __init__(self, fail_after: int | None = None):
        self.fail_after, self.calls = fail_after, 0

    def sky_probability(self, image: np.ndarray) -> np.ndarray:
        if self.fail_after is not None and self.calls >= self.fail_after:
            raise InputError("stand-in", "interrupted")
        self.calls += 1
        pixels = image.astype(np.float32)
        if pixels.mean() < 50:
            return np.zeros(image.shape[:2], np.float32)
        lit = pixels.mean(axis=-1) >= 100
        return (lit / (1 + np.exp(-(pixels[..., 2] - pixels[..., 0]) / 40))).astype(np.float32)

    def model_size(self, height: int, width: int) -> tuple[int, int]:
        return height, width

    def mask_threshold(self, requested: float | None = None) -> float:
        return 0.5 if requested is None else requested


def stand_in(fail_after: int | None = None) -> SkyModel:
    return SkyModel(StandInSegmenter(fail_after), "stand-in/1", "stand-in")


def obstructed(light: float) -> np.ndarray:
    """A frame whose sky is mostly covered by something textured like the ground (a truck in front of the camera)."""
    sky = canvas_sky()
    sky[:, CANVAS_MARGIN + 10 : CANVAS_MARGIN + 90] = False
    return crop(canvas(light, sky))


WALL = (slice(50, 62), slice(20, 36))  # 192 pixels (2 % of the frame), inside the ground: enclosed by the scene
SPECK = (slice(55, 59), slice(123, 128))  # 20 pixels (0.2 %) at the right border


def with_wall_and_speck(image: np.ndarray, light: float) -> np.ndarray:
    """``image`` with a pale wall and a pale speck in its ground, lit by ``light`` (the stand-in says sky)."""
    image = image.copy()
    image[WALL] = image[SPECK] = np.clip(WALL_RGB * light, 0, 255)
    return image


def region(*where: tuple[slice, slice]) -> np.ndarray:
    mask = np.zeros(FRAME, bool)
    for rows_cols in where:
        mask[rows_cols] = True
    return mask


def write_stream(root: Path, camera: str, frames: dict[str, np.ndarray]) -> None:
    for hour, (name, image) in enumerate(frames.items()):
        write_png(root / camera / f"20200101_{8 + hour:02d}0000_{name}.png", image.astype(np.uint8))


def daylight_frames() -> dict[str, np.ndarray]:
    frames = {f"day{i}": crop(canvas(light)) for i, light in enumerate((0.85, 0.95, 1.0, 1.1, 0.9, 1.05))}
    frames |= {"crane": crop(canvas(1.0)).copy()}
    frames["crane"][5:30, 60:64] = GROUND_RGB  # a crane in the sky of one frame
    return frames


def validated(root: Path, out: Path) -> Path:
    """Import and validate every camera under ``root`` into manifests in ``out`` (tfsky streams validate)."""
    for stream in import_tree(StreamsConfig(root=root)).streams:
        write_manifest(validate_stream(stream, StreamsConfig()), out / stream.camera / "stream.json")
    return out


@pytest.fixture
def stream_root(tmp_path) -> Path:
    frames = daylight_frames() | {
        "night": crop(canvas(0.15)),
        "fog": crop(fog(canvas(1.0))),
        "blank": np.full(FRAME + (3,), 128.0),
        "truck": obstructed(1.0),
    }
    write_stream(tmp_path / "frames", "cam", frames)
    return validated(tmp_path / "frames", tmp_path / "streams")


def reasons(report: dict) -> dict[str, str]:
    return {r["file"].split("_", 2)[2].removesuffix(".png"): r["reason"] for r in report["rejected"]}


# --- the consensus -------------------------------------------------------------------------------


def test_weighted_median_ignores_a_light_minority_and_agreement_counts_the_sides():
    consensus = Consensus((1, 2))
    valid = np.ones((1, 2), bool)
    for probability, weight in ((0.9, 1.0), (0.8, 1.0), (0.1, 0.5)):
        consensus.add(np.array([[probability, 0.2]], np.float32), weight, valid)
    median = consensus.probability()
    assert 0.75 <= median[0, 0] <= 0.9 and 0.125 <= median[0, 1] <= 0.25
    np.testing.assert_allclose(consensus.agreement(0.5), [[2 / 2.5, 1.0]])


def test_pixels_no_frame_saw_are_not_sky():
    consensus = Consensus((1, 2))
    consensus.add(np.array([[0.9, 0.9]], np.float32), 1.0, np.array([[True, False]]))
    assert consensus.probability()[0, 1] == 0 and consensus.agreement(0.5)[0, 1] == 0


# --- tfsky streams skymask -----------------------------------------------------------------------


def test_fused_mask_is_the_true_sky_and_bad_frames_are_rejected_with_their_reason(stream_root):
    manifest = stream_root / "cam" / "stream.json"
    report = skymask_streams([stream_root], stand_in(), TEST_CFG)
    assert (len(report.done), len(report.failed)) == (1, 0)
    paths = SkymaskPaths.beside(manifest)
    np.testing.assert_array_equal(read_mask(paths.mask).astype(bool), TRUE_SKY)
    facts = json.loads(paths.report.read_text())
    assert reasons(facts) == {"night": "night", "blank": "blank", "fog": "uncertain"}
    assert facts["frames"] == {
        "total": 11,
        "used": 8,
        "rejected": 3,
        "rejected_by_reason": {"night": 1, "blank": 1, "uncertain": 1},
    }
    assert facts["sky_disagrees"] == ["20200101_180000_truck.png"]  # the crane is too small to disagree
    assert facts["sky_share"] == pytest.approx(TRUE_SKY.mean(), abs=1e-4)
    agreement = read_image(paths.agreement, channels=1)[..., 0]
    assert agreement[TRUE_SKY].min() < 255 and np.median(agreement) == 255  # crane/truck pixels: not unanimous
    record = read_manifest(manifest).skymask
    assert record["mask"] == str(paths.mask.resolve()) and record["frames_used"] == 8
    assert record["model"] == "stand-in/1" and record["sky_disagrees"] == facts["sky_disagrees"]
    assert read_manifest(manifest).mask is None  # the imported mask field is left alone
    assert read_image(paths.overlay).shape == FRAME + (3,)
    assert not paths.checkpoint.exists() and not list(stream_root.rglob(".*.part*"))


def test_a_wall_the_model_calls_sky_in_every_frame_is_dropped_by_the_region_rules(tmp_path):
    """The per-pixel consensus keeps the wall and the speck (every frame says sky); the region rules drop them."""
    lights = (1.0, 1.05, 1.1, 1.15, 1.2)  # a scene without sky is darker: dimmer frames would be night
    write_stream(
        tmp_path / "frames",
        "cam",
        {f"day{i}": with_wall_and_speck(crop(canvas(light)), light) for i, light in enumerate(lights)},
    )
    no_sky = np.zeros_like(canvas_sky())
    write_stream(
        tmp_path / "frames",
        "no_sky",
        {f"day{i}": with_wall_and_speck(crop(canvas(light, no_sky)), light) for i, light in enumerate(lights)},
    )
    streams = validated(tmp_path / "frames", tmp_path / "streams")
    skymask_streams([streams], stand_in(), TEST_CFG)
    facts = {
        camera: json.loads(SkymaskPaths.beside(streams / camera / "stream.json").report.read_text())
        for camera in ("cam", "no_sky")
    }
    mask = {camera: read_mask(streams / camera / "camera_mask.png").astype(bool) for camera in ("cam", "no_sky")}
    np.testing.assert_array_equal(mask["cam"], TRUE_SKY)
    assert not mask["no_sky"].any() and facts["no_sky"]["sky_share"] == 0
    wall_and_speck = {"small": {"regions": 1, "pixels": 20}, "enclosed": {"regions": 1, "pixels": 192}}
    assert facts["cam"]["regions_dropped"] == facts["no_sky"]["regions_dropped"] == wall_and_speck
    assert facts["cam"]["sky_disagrees"] == []  # a frame's own wall does not make it disagree with the sky
    assert len(facts["no_sky"]["sky_disagrees"]) == len(lights)  # each frame calls the wall sky: to review
    skymask_streams(
        [streams], stand_in(), SkymaskConfig(analysis_width=128, min_region=0, keep_enclosed=True), overwrite=True
    )
    np.testing.assert_array_equal(
        read_mask(streams / "cam" / "camera_mask.png").astype(bool), TRUE_SKY | region(WALL, SPECK)
    )
    np.testing.assert_array_equal(read_mask(streams / "no_sky" / "camera_mask.png").astype(bool), region(WALL, SPECK))


def test_a_moved_camera_is_aligned_by_its_offset_and_a_turned_one_rejected(tmp_path):
    frames = {f"day{i}": crop(canvas(light)) for i, light in enumerate((0.9, 1.0, 1.1, 0.95, 1.05))}
    frames |= {f"shifted{i}": crop(canvas(light), dx=6, dy=2) for i, light in enumerate((0.9, 1.0, 1.1))}
    frames["turned"] = np.ascontiguousarray(crop(canvas(1.0))[::-1, ::-1])  # upside down: no shift aligns it
    write_stream(tmp_path / "frames", "cam", frames)
    streams = validated(tmp_path / "frames", tmp_path / "streams")
    validation = {f.file.split("_", 2)[2]: f.reason for f in read_manifest(streams / "cam" / "stream.json").frames}
    assert {name for name, reason in validation.items() if reason == "moved"} == {
        "shifted0.png",
        "shifted1.png",
        "shifted2.png",
        "turned.png",
    }
    skymask_streams([streams], stand_in(), TEST_CFG)
    paths = SkymaskPaths.beside(streams / "cam" / "stream.json")
    facts = json.loads(paths.report.read_text())
    assert reasons(facts) == {"turned": "moved"}
    offsets = {u["file"].split("_", 2)[2]: u["offset_px"] for u in facts["used"]}
    for name in ("shifted0.png", "shifted1.png", "shifted2.png"):
        np.testing.assert_allclose(offsets[name], [-6, -2], atol=0.5)  # the scene moved left/up in the frame
    assert facts["sky_disagrees"] == []  # aligned, the shifted frames' own skies agree with the mask
    np.testing.assert_array_equal(read_mask(paths.mask).astype(bool), TRUE_SKY)


def test_an_interrupted_stream_resumes_from_its_checkpoint_and_a_finished_one_is_skipped(stream_root, tmp_path):
    manifest = stream_root / "cam" / "stream.json"
    paths = SkymaskPaths.beside(manifest)
    interrupted = skymask_streams([manifest], stand_in(fail_after=5), TEST_CFG)
    assert interrupted.failed == [(manifest, "stand-in: interrupted")]
    assert paths.checkpoint.is_file() and not paths.report.exists()
    resumed_model = stand_in()
    assert skymask_streams([manifest], resumed_model, TEST_CFG).done == [manifest]
    resumed_mask, resumed_facts = read_mask(paths.mask), json.loads(paths.report.read_text())
    assert resumed_model.segmenter.calls == 9 - 4  # 9 candidates (not night, not blank), 4 checkpointed
    assert skymask_streams([manifest], stand_in(), TEST_CFG).skipped == [manifest]
    whole_model = stand_in()
    assert skymask_streams([manifest], whole_model, TEST_CFG, overwrite=True).done == [manifest]
    assert whole_model.segmenter.calls == 9
    np.testing.assert_array_equal(read_mask(paths.mask), resumed_mask)
    whole_facts = json.loads(paths.report.read_text())
    assert (whole_facts["used"], whole_facts["rejected"]) == (resumed_facts["used"], resumed_facts["rejected"])


def test_a_failing_stream_is_reported_and_the_others_go_on(stream_root, tmp_path):
    write_stream(tmp_path / "dark", "night_cam", {f"n{i}": crop(canvas(0.15)) for i in range(3)})
    validated(tmp_path / "dark", stream_root)
    (stream_root / "broken").mkdir()
    (stream_root / "broken" / "stream.json").write_text("{not json")
    empty = tmp_path / "no_streams_here"
    empty.mkdir()
    report = skymask_streams([stream_root, empty], stand_in(), TEST_CFG)
    assert report.done == [stream_root / "cam" / "stream.json"]
    failures = dict(report.failed)
    assert failures[empty].startswith("no stream.json manifests found")
    assert failures[stream_root / "broken" / "stream.json"].startswith("not a valid stream manifest")
    assert failures[stream_root / "night_cam" / "stream.json"] == (
        "no usable frames to learn the camera mask from (night 3); run tfsky streams validate first"
    )


def test_skymask_cli_with_a_real_model_and_its_one_line_errors(cli, stream_root, tmp_path):
    model = tiny_segmenter(tmp_path / "tiny.keras")
    done = cli("streams", "skymask", stream_root, "--model", model, "--min-confidence", "0")
    assert done.exit_code == 0, done.stderr
    assert done.stdout.strip() == f"done 1, skipped 0, failed 0 -> {stream_root}"
    assert read_mask(stream_root / "cam" / "camera_mask.png").shape == FRAME
    missing = cli("streams", "skymask", stream_root, "--model", tmp_path / "nope.keras")
    assert (missing.exit_code, missing.stderr.strip()) == (1, f"Error: {tmp_path / 'nope.keras'}: model file not found")
    too_big = cli("streams", "skymask", stream_root, "--model", model, "--min-region", "2")
    assert (too_big.exit_code, too_big.stderr.strip()) == (
        1,
        "Error: config key 'min_region': must be in [0, 1]; got 2.0",
    )
    unsure = cli("streams", "skymask", stream_root, "--model", model, "--overwrite", "--quiet")
    assert unsure.exit_code == 1 and "Traceback" not in unsure.stderr
    assert unsure.stderr.startswith(
        f"failed {stream_root / 'cam' / 'stream.json'}: no frame survived the camera-mask checks (uncertain 9"
    )


# --- the camera prior (tfsky predict --camera-mask) ---------------------------------------------------


def fused_mask(prior: CameraPrior, image: np.ndarray) -> tuple[np.ndarray, dict]:
    probability = StandInSegmenter().sky_probability(image)
    fused, facts = prior.fuse(image, probability, 0.5)
    return fused >= 0.5, facts


def lit_night() -> np.ndarray:
    """A night under street lights: the sky glows at luminance 0.30 (night for `tfsky streams validate`, below
    0.35), the ground is lit brighter than by day, so the frame is neither dark nor flat."""
    return np.where(TRUE_SKY[..., None], crop(canvas(0.4)), crop(canvas(1.2)))


def test_night_and_fog_frames_take_the_camera_sky_and_a_clear_frame_keeps_its_own():
    prior = CameraPrior(TRUE_SKY, Path("cam-mask.png"))
    for image, weight in ((crop(canvas(0.15)), 0), (lit_night(), 0), (crop(fog(canvas(1.0))), 0.2)):
        mask, facts = fused_mask(prior, image.astype(np.uint8))
        assert facts["evidence"]["weight"] == pytest.approx(weight, abs=0.05) and not facts["sky_disagrees"]
        np.testing.assert_array_equal(mask, TRUE_SKY)
    _, lit = fused_mask(prior, lit_night().astype(np.uint8))
    assert lit["own_sky_iou"] == 0 and lit["evidence"]["brightness"] == 0  # the model saw no sky; nor should it count
    assert lit["evidence"]["contrast"] == lit["evidence"]["confidence"] == 1
    crane = daylight_frames()["crane"].astype(np.uint8)
    own = StandInSegmenter().sky_probability(crane) >= 0.5
    mask, facts = fused_mask(prior, crane)
    assert facts["evidence"]["weight"] == 1 and not facts["sky_disagrees"]
    np.testing.assert_array_equal(mask, own)
    assert not mask[5:30, 60:64].any()  # the crane stays out of the sky
    _, truck = fused_mask(prior, obstructed(1.0).astype(np.uint8))
    assert truck["sky_disagrees"] and truck["own_sky_iou"] < 0.7


def test_predict_camera_mask_flag_and_config_key(cli, tmp_path):
    model = tiny_segmenter(tmp_path / "tiny.keras")
    frame = tmp_path / "in" / "night.png"
    write_png(frame, crop(canvas(0.15)).astype(np.uint8))
    write_mask_png(tmp_path / "cam-mask.png", TRUE_SKY)
    result = cli(
        "predict",
        frame,
        "--model",
        model,
        "--out",
        tmp_path / "out",
        "--camera-mask",
        tmp_path / "cam-mask.png",
        "--quiet",
    )
    assert result.exit_code == 0, result.stderr
    sidecar = json.loads((tmp_path / "out" / "night.json").read_text())
    assert sidecar["camera_prior"]["evidence"]["brightness"] == 0
    np.testing.assert_array_equal(read_mask(tmp_path / "out" / "night_mask.png").astype(bool), TRUE_SKY)
    config = tmp_path / "predict.yaml"
    config.write_text(f"predict:\n  camera_mask: {tmp_path / 'absent.png'}\n")
    missing = cli("predict", frame, "--model", model, "--out", tmp_path / "out2", "--config", config, "--quiet")
    assert (missing.exit_code, missing.stderr) == (1, f"Error: {tmp_path / 'absent.png'}: camera mask not found\n")
    write_mask_png(tmp_path / "small-mask.png", TRUE_SKY[::2, ::2])
    wrong = cli(
        "predict",
        frame,
        "--model",
        model,
        "--out",
        tmp_path / "out3",
        "--camera-mask",
        tmp_path / "small-mask.png",
        "--quiet",
    )
    assert wrong.exit_code == 1
    assert wrong.stderr == (f"failed {frame}: is 128x72 but the camera mask {tmp_path / 'small-mask.png'} is 64x36\n")


class StandInClassifier:
    """Every frame 70 % clear (what `label_stream` needs of a `WeatherClassifier`)."""

    conditions, id = ["clear", "overcast"], "stand-in-classifier"

    def inputs(self, image: np.ndarray) -> np.ndarray:
        return np.zeros(1)

    def probabilities(self, inputs: np.ndarray) -> np.ndarray:
        return np.tile([0.7, 0.3], (len(inputs), 1))


def test_streams_label_measures_a_night_frame_over_the_camera_sky_and_flags_a_disagreeing_one(stream_root):
    from tfsky.predict.classify import SkyRegion, label_stream

    manifest = stream_root / "cam" / "stream.json"
    skymask_streams([manifest], stand_in(), TEST_CFG)
    labelled = label_stream(read_manifest(manifest), StandInClassifier(), SkyRegion(StandInSegmenter(), "s", width=128))
    skies = {f.file.split("_", 2)[2].removesuffix(".png"): f.prediction["sky"] for f in labelled.frames}
    assert skies["night"]["fraction"] == pytest.approx(TRUE_SKY.mean(), abs=1e-4)  # own: no sky at all
    assert (skies["night"]["camera_prior_weight"], skies["night"]["sky_disagrees"]) == (0, False)
    assert skies["day0"]["camera_prior_weight"] == 1 and not skies["day0"]["sky_disagrees"]
    assert skies["truck"]["sky_disagrees"]


# --- the evaluation script -------------------------------------------------------------------------


def test_eval_script_runs_end_to_end_on_skyfinder(shared_data, tmp_path):
    """With an untrained tiny model the numbers mean nothing; the script's path through real data is the test."""
    model = tiny_segmenter(tmp_path / "tiny.keras")
    out = tmp_path / "eval.json"
    run = subprocess.run(
        [
            sys.executable,
            str(REPO / "scripts" / "eval_skymask.py"),
            "--model",
            str(model),
            "--data",
            str(shared_data / "skyfinder_webcams"),
            "--out",
            str(out),
            "--min-confidence",
            "0",
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    results = json.loads(out.read_text())
    assert set(results["cameras"]) == {"623", "684", "9730", "10917"}
    assert "false_sky_pixels" in results["cameras"]["10917"]
