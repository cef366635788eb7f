"""Streams: import, validation (night, corrupt, size, blank, saturated, moved, low confidence), pairs, paired pipeline."""

from __future__ import annotations

import datetime as dt
import json
import os
import re
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from tfsky.config import load_config
from tfsky.data.pairs import (
    PairDataConfig,
    PairsConfig,
    build_pairs,
    make_pair_dataset,
    read_pairs,
    split_cameras,
    write_pairs,
)
from tfsky.data.streams import (
    Frame,
    Stream,
    StreamsConfig,
    frame_timestamp,
    import_tree,
    load_streams,
    read_manifest,
    validate_stream,
    validate_streams,
    write_manifest,
)
from tfsky.errors import ConfigError, InputError
from tfsky.io.writers import write_tif

CAM623_NIGHT = {"20120902_031152.jpg", "20120908_054154.jpg", "20140223_004148.jpg"}


def skyfinder_config(shared_data: Path, **changes) -> StreamsConfig:
    root = shared_data / "skyfinder_webcams"
    return StreamsConfig(root=root, labels_csv=root / "weather_labels_cam623.csv", **changes)


@pytest.fixture(scope="module")
def cam623(shared_data) -> Stream:
    """Camera 623 imported with its labels and validated with the default thresholds."""
    stream = next(s for s in import_tree(skyfinder_config(shared_data)).streams if s.camera == "623")
    return validate_stream(stream, StreamsConfig())


def scene(seed: int, shape=(96, 128)) -> np.ndarray:
    """A bright, smooth, textured RGB frame (daylight: mean luminance well above the night threshold)."""
    rng = np.random.default_rng(seed)
    coarse = rng.uniform(110, 240, (12, 16, 3)).astype(np.float32)
    return cv2.resize(coarse, shape[::-1], interpolation=cv2.INTER_CUBIC).clip(0, 255).astype(np.uint8)


def write_jpeg(path: Path, image: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path, quality=95)
    return path


# --- real camera 623 ---------------------------------------------------------------------------


def test_cam623_night_frames_are_flagged_night(cam623):
    night = {f.file for f in cam623.frames if f.reason == "night"}
    assert night == CAM623_NIGHT
    usable = [f for f in cam623.frames if f.usable]
    assert len(usable) == 7
    assert sorted(f.condition for f in usable) == ["clear"] * 4 + ["overcast"] * 3
    assert next(f for f in cam623.frames if f.file == "20140223_004148.jpg").detail.startswith("mean sky luminance")


def test_cam623_import_reads_labels_timestamps_and_mask(cam623, shared_data):
    assert cam623.mask == shared_data / "skyfinder_webcams" / "623-mask.png"
    frame = next(f for f in cam623.frames if f.file == "20121024_124151.jpg")
    assert (frame.timestamp, frame.condition, frame.confidence) == ("2012-10-24T12:41:51", "clear", None)


def test_manifest_round_trip(cam623, tmp_path):
    path = tmp_path / "623" / "stream.json"
    write_manifest(cam623, path)
    again = read_manifest(path)
    assert again.frames == cam623.frames
    assert again.image_dir == cam623.image_dir.resolve() and again.camera == "623"
    assert json.loads(path.read_text())["format"] == "tfsky-stream/1"


def test_hand_written_manifest_resolves_relative_to_its_folder(tmp_path):
    write_jpeg(tmp_path / "cam" / "a.jpg", scene(0))
    (tmp_path / "cam" / "stream.json").write_text(
        json.dumps(
            {"camera": "cam", "frames": [{"file": "a.jpg", "timestamp": "2020-01-01T10:00:00", "condition": "clear"}]}
        )
    )
    stream = load_streams(tmp_path / "cam")[0]
    assert stream.path(stream.frames[0]) == tmp_path / "cam" / "a.jpg"
    assert stream.frames[0].usable and stream.mask is None


@pytest.mark.parametrize("content", ["[]", '{"camera": "cam", "frames": ["a.jpg"]}', '{"frames": []}'])
def test_malformed_manifest_is_one_input_error(tmp_path, content):
    path = tmp_path / "stream.json"
    path.write_text(content)
    with pytest.raises(InputError, match=f"^{re.escape(str(path))}: not a valid stream manifest"):
        read_manifest(path)


def test_validate_cli_writes_manifests_and_prints_counts(cli, shared_data, tmp_path):
    root = shared_data / "skyfinder_webcams"
    result = cli(
        "streams", "validate", "--root", root, "--labels", root / "weather_labels_cam623.csv", "--out", tmp_path / "m"
    )
    assert result.exit_code == 0, result.stderr
    row = next(line for line in result.stdout.splitlines() if "│ 623 " in line)
    assert [cell.strip() for cell in row.strip("│ ").split("│")][:8] == ["623", "10", "7", "0", "0", "0", "0", "3"]
    assert {s.camera for s in load_streams(tmp_path / "m")} == {"623", "684", "9730", "10917"}
    assert sorted(p.name for p in root.glob("623/*")) == sorted(
        f.file for f in read_manifest(tmp_path / "m" / "623" / "stream.json").frames
    )  # images untouched, none added


# --- synthetic defects --------------------------------------------------------------------------


def test_each_defect_gets_its_reason(tmp_path):
    base = scene(1)
    frames = {
        "20200101_100000.jpg": base,
        "20200101_110000.jpg": np.clip(base.astype(int) + 8, 0, 255).astype(np.uint8),
        "20200101_120000.jpg": np.clip(base.astype(int) - 8, 0, 255).astype(np.uint8),
        "20200101_130000.jpg": np.roll(base, 12, axis=1),  # the camera turned
        "20200101_140000.jpg": np.full_like(base, 128),  # blank
        "20200101_150000.jpg": np.full_like(base, 255),  # saturated (std 0 would be blank first: add a bar)
        "20200101_160000.jpg": (base * 0.5 - 40).astype(np.uint8),  # night
        "20200101_170000.jpg": scene(1, (48, 64)),  # other size
    }
    frames["20200101_150000.jpg"][:, :20] = 0
    for name, image in frames.items():
        write_jpeg(tmp_path / "cam" / name, image)
    (tmp_path / "cam" / "20200101_180000.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    write_tif(tmp_path / "cam" / "20200101_190000.tif", base.astype(np.float32))  # an HDR frame
    stream = import_tree(StreamsConfig(root=tmp_path)).streams[0]
    checked = {f.file: f for f in validate_stream(stream, StreamsConfig()).frames}
    assert {name: frame.reason for name, frame in checked.items()} == {
        "20200101_100000.jpg": "",
        "20200101_110000.jpg": "",
        "20200101_120000.jpg": "",
        "20200101_130000.jpg": "moved",
        "20200101_140000.jpg": "blank",
        "20200101_150000.jpg": "saturated",
        "20200101_160000.jpg": "night",
        "20200101_170000.jpg": "size",
        "20200101_180000.jpg": "corrupt",
        "20200101_190000.tif": "corrupt",
    }
    assert "HDR" in checked["20200101_190000.tif"].detail


class MaskSegmenter:
    """Segmenter stand-in: the sky is the top ``fraction`` of the frame."""

    def __init__(self, fraction: float):
        self.fraction = fraction

    def sky_probability(self, image):
        prob = np.zeros(image.shape[:2], np.float32)
        prob[: round(image.shape[0] * self.fraction)] = 1
        return prob


def test_segmenter_mask_iou_flags_a_moved_camera(tmp_path):
    write_jpeg(tmp_path / "cam" / "20200101_100000.jpg", scene(2))
    mask = np.zeros((96, 128), np.uint8)
    mask[:48] = 255
    cv2.imwrite(str(tmp_path / "cam-mask.png"), mask)
    stream = import_tree(StreamsConfig(root=tmp_path)).streams[0]
    assert validate_stream(stream, StreamsConfig(), MaskSegmenter(0.5)).frames[0].usable
    moved = validate_stream(stream, StreamsConfig(), MaskSegmenter(0.2)).frames[0]
    assert (moved.reason, moved.detail) == ("moved", "sky IoU 0.40 with the camera mask")


def test_low_confidence_labels_and_labels_naming_missing_frames(tmp_path):
    for hour in (10, 11):
        write_jpeg(tmp_path / "cam" / f"20200101_{hour}0000.jpg", scene(hour))
    labels = tmp_path / "labels.csv"
    labels.write_text(
        "image,sky_condition,confidence\ncam/20200101_100000.jpg,clear,0.3\n"
        "cam/20200101_110000.jpg,overcast,0.9\ncam/20200101_120000.jpg,clear,1\n"
    )
    cfg = StreamsConfig(root=tmp_path, labels_csv=labels, confidence_column="confidence", manifests=tmp_path / "m")
    report = validate_streams(cfg)
    assert report.skipped == [f"{labels}:4: frame cam/20200101_120000.jpg not found under {tmp_path}"]
    frames = {f.file: f for f in load_streams(tmp_path / "m")[0].frames}
    assert (frames["20200101_100000.jpg"].reason, frames["20200101_100000.jpg"].confidence) == ("low_confidence", 0.3)
    assert frames["20200101_110000.jpg"].usable


def test_missing_labels_column_is_one_line_error(tmp_path):
    write_jpeg(tmp_path / "cam" / "a.jpg", scene(0))
    labels = tmp_path / "labels.csv"
    labels.write_text("file,weather\ncam/a.jpg,clear\n")
    with pytest.raises(InputError, match=r"labels.csv: no column 'image' \(columns: file, weather\)"):
        import_tree(StreamsConfig(root=tmp_path, labels_csv=labels))


def test_timestamp_from_name_then_exif_then_mtime(tmp_path):
    named = write_jpeg(tmp_path / "cam_20130101_120000.jpg", scene(0))
    assert frame_timestamp(named) == dt.datetime(2013, 1, 1, 12, 0, 0)
    exif = Image.Exif()
    exif.get_ifd(0x8769)[36867] = "2015:06:07 08:09:10"
    with_exif = tmp_path / "photo.jpg"
    Image.fromarray(scene(0)).save(with_exif, exif=exif)
    assert frame_timestamp(with_exif) == dt.datetime(2015, 6, 7, 8, 9, 10)
    plain = write_jpeg(tmp_path / "plain.jpg", scene(0))
    os.utime(plain, (1_600_000_000, 1_600_000_000))
    assert frame_timestamp(plain) == dt.datetime.fromtimestamp(1_600_000_000)


# --- pairs -----------------------------------------------------------------------------------------


def test_cam623_pairs_every_clear_with_every_overcast(cam623, tmp_path):
    pair_set = build_pairs([cam623], PairsConfig())
    assert len(pair_set.pairs) == 12 and {p.split for p in pair_set.pairs} == {"train"}
    assert pair_set.streams == {"623": {"split": "train", "pairs": 12, "size": [720, 1280]}}
    write_pairs(pair_set, PairsConfig(), tmp_path / "pairs.json")
    assert read_pairs(tmp_path / "pairs.json", "train") == pair_set.pairs
    assert read_pairs(tmp_path / "pairs.json", "val") == []
    close = build_pairs([cam623], PairsConfig(max_hours=24 * 120))
    assert 0 < len(close.pairs) < 12 and all(p.hours <= 24 * 120 for p in close.pairs)


def test_unknown_condition_names_key_and_known_conditions(cli, shared_data, tmp_path):
    root = shared_data / "skyfinder_webcams"
    cli("streams", "validate", "--root", root, "--labels", root / "weather_labels_cam623.csv", "--out", tmp_path / "m")
    result = cli("streams", "pairs", tmp_path / "m", "--out", tmp_path / "p.json", "--set", "pairs.source=sunny")
    assert result.exit_code == 1
    assert result.stderr.strip() == (
        "Error: config key 'pairs.source': unknown condition 'sunny' "
        "(known conditions: clear, overcast, unlabelled(night))"
    )
    ok = cli("streams", "pairs", tmp_path / "m", "--out", tmp_path / "p.json")
    assert ok.exit_code == 0 and "12 pairs written" in ok.stdout
    assert len(read_pairs(tmp_path / "p.json")) == 12


def test_zero_pairs_is_a_config_error(cam623):
    with pytest.raises(
        ConfigError,
        match=r"no pairs after filtering: 4 usable 'clear' and 3 usable 'overcast'.*"
        r"but no stream has both within 1 h of each other",
    ):
        build_pairs([cam623], PairsConfig(max_hours=1))


def test_frames_of_different_sizes_in_one_stream_are_an_error(tmp_path):
    write_jpeg(tmp_path / "cam" / "a.jpg", scene(0))
    write_jpeg(tmp_path / "cam" / "b.jpg", scene(1, (48, 64)))
    frames = [Frame("a.jpg", "2020-01-01T10:00:00", "clear"), Frame("b.jpg", "2020-01-01T11:00:00", "overcast")]
    with pytest.raises(InputError, match=r"b.jpg: 64x48 differs from a.jpg \(128x96\) in stream cam"):
        build_pairs([Stream("cam", tmp_path / "cam", frames)], PairsConfig())


def test_split_is_by_camera():
    cameras = [f"cam{i}" for i in range(10)]
    split = split_cameras(cameras, 0.2, seed=3)
    assert sum(s == "val" for s in split.values()) == 2
    assert split == split_cameras(list(reversed(cameras)), 0.2, seed=3)
    assert split_cameras(["only"], 0.5, 0) == {"only": "train"}
    assert list(split_cameras(["a", "b"], 0.01, 0).values()).count("val") == 1


def test_pairs_config_validation():
    with pytest.raises(ConfigError, match="config key 'pairs.target': must differ from source"):
        load_config(PairsConfig, None, ["pairs.target=clear"], section="pairs")


# --- the paired pipeline ----------------------------------------------------------------------------


def test_pipeline_applies_the_same_crop_and_flip_to_source_target_and_mask(tmp_path):
    image = scene(5, (60, 90))
    image[..., 0] = np.where(np.arange(90)[None, :] % 7 < 3, 255, 0)  # red stripes mark the mask
    path = write_jpeg(tmp_path / "a.png", image)
    Image.fromarray(image).save(path)  # lossless
    cv2.imwrite(str(tmp_path / "mask.png"), np.where(image[..., 0] > 0, 255, 0).astype(np.uint8))
    from tfsky.data.pairs import Pair

    pairs = [Pair("cam", "train", str(path), str(path), str(tmp_path / "mask.png"), 0.0)] * 4
    ds = make_pair_dataset(pairs, PairDataConfig(load_size=None, crop_size=32), batch_size=4, training=True)
    for _ in range(3):
        (source, mask), target = next(iter(ds))
        np.testing.assert_array_equal(source.numpy(), target.numpy())
        np.testing.assert_array_equal(mask.numpy()[..., 0], (source.numpy()[..., 0] > 0).astype(np.float32))
        assert source.shape == (4, 32, 32, 3) and mask.shape == (4, 32, 32, 1)
        assert source.numpy().min() >= -1 and source.numpy().max() <= 1
    resized = make_pair_dataset(pairs, PairDataConfig(load_size=40, crop_size=32), batch_size=2, training=False)
    (source, mask), target = next(iter(resized))
    np.testing.assert_array_equal(source.numpy(), target.numpy())
    assert source.shape == (2, 32, 32, 3)


def test_a_shifted_frame_is_moved_with_the_offset_found_against_the_median(shared_data, tmp_path):
    """Camera 623's daytime frames, one of them shifted 64 px right and 16 px down: no segmenter needed."""
    daytime = [
        "20121024_124151.jpg",
        "20121119_134153.jpg",
        "20121202_161153.jpg",
        "20130401_164153.jpg",
        "20140318_164143.jpg",
        "20140624_164149.jpg",
    ]
    (tmp_path / "623").mkdir()
    for name in daytime:
        image = cv2.imread(str(shared_data / "skyfinder_webcams" / "623" / name))
        if name == daytime[2]:
            shift = np.float32([[1, 0, 64], [0, 1, 16]])
            image = cv2.warpAffine(image, shift, image.shape[1::-1], borderMode=cv2.BORDER_REFLECT)
        cv2.imwrite(str(tmp_path / "623" / name), image)
    stream = validate_stream(import_tree(StreamsConfig(root=tmp_path)).streams[0], StreamsConfig())
    moved = {f.file: f.detail for f in stream.frames if f.reason == "moved"}
    assert list(moved) == [daytime[2]]
    dx, dy = map(int, re.search(r"offset \(([+-]\d+), ([+-]\d+)\) px", moved[daytime[2]]).groups())
    assert abs(dx - 64) <= 4 and abs(dy - 16) <= 4, moved


# --- a hostile or careless labels CSV, and a bad manifest among good ones ----------------------------------------


def test_labels_csv_with_a_bom_duplicates_short_rows_and_markup_skips_each_bad_row_with_its_line(tmp_path):
    for hour in (10, 11, 12, 13):
        write_jpeg(tmp_path / "cam" / f"20200101_{hour}0000.jpg", scene(hour))
    labels = tmp_path / "labels.csv"
    labels.write_text(
        "\ufeffimage,sky_condition\n"  # Excel writes UTF-8 with a byte-order mark
        "cam/20200101_100000.jpg,clear\n"
        'cam/20200101_110000.jpg,"<img src=x onerror=alert(1)>"\n'
        "cam/20200101_100000.jpg,overcast\n"
        "cam/20200101_120000.jpg,\n"
        "cam/20200101_130000.jpg\n"
        ",clear\n",
        encoding="utf-8",
    )
    result = import_tree(StreamsConfig(root=tmp_path, labels_csv=labels))
    assert result.skipped == [
        f"{labels}:3: condition '<img src=x onerror=alert(1)>' of frame cam/20200101_110000.jpg is not a condition "
        "name (lower-case letters, digits, _ and ())",
        f"{labels}:4: frame cam/20200101_100000.jpg is already labelled on line 2",
        f"{labels}:5: frame cam/20200101_120000.jpg has no condition (a short row)",
        f"{labels}:6: frame cam/20200101_130000.jpg has no condition (a short row)",
        f"{labels}:7: no frame name (a short row)",
    ]
    assert [frame.condition for frame in result.streams[0].frames] == ["clear", None, None, None]


def test_a_labels_csv_that_is_not_utf8_text_is_one_line(tmp_path):
    write_jpeg(tmp_path / "cam" / "20200101_100000.jpg", scene(0))
    labels = tmp_path / "labels.csv"
    labels.write_bytes(b"image,sky_condition\ncam/20200101_100000.jpg,\xff\xfe clear\n")
    with pytest.raises(InputError, match=r"labels.csv: not a readable UTF-8 CSV \('utf-8' codec can't decode"):
        import_tree(StreamsConfig(root=tmp_path, labels_csv=labels))


from test_classifier import photo_folders, untrained_classifier  # noqa: E402,F401  (a saved tiny classifier)


def test_streams_label_skips_a_truncated_manifest_and_labels_the_ones_after_it(cli, tmp_path, untrained_classifier):
    for camera in ("a", "b", "c"):
        for hour in (10, 11):
            write_jpeg(tmp_path / "frames" / camera / f"20200101_{hour}0000.jpg", scene(hour))
    validate_streams(StreamsConfig(root=tmp_path / "frames"), out=tmp_path / "m")
    broken = tmp_path / "m" / "b" / "stream.json"
    broken.write_bytes(broken.read_bytes()[:100])
    result = cli("streams", "label", tmp_path / "m", "--classifier", untrained_classifier, "-q")
    assert result.exit_code == 1 and "Traceback" not in result.output + result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"skipped {broken}: not a valid stream manifest"), result.stderr
    for camera in ("a", "c"):
        assert all(frame.prediction for frame in read_manifest(tmp_path / "m" / camera / "stream.json").frames)
