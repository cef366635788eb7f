"""All-sky (WSISEG) source: class map, camera masks -> ignore, stratified split, fisheye augmentation."""

from __future__ import annotations

import collections
import dataclasses
from pathlib import Path

import cv2
import numpy as np
import pytest
import tensorflow as tf
import yaml

from tfsky.config import load_config
from tfsky.data import pipeline
from tfsky.data.allsky import IGNORE, AllSkyCamera, AllSkyConfig, frame_number, load_class_mask
from tfsky.data.augment import apply_affine, color_jitter, random_affine
from tfsky.data.cache import assign_splits, iter_cached, list_items, prepare_cache
from tfsky.data.config import AugmentConfig, DataConfig, SourceConfig
from tfsky.data.transforms import Preprocess
from tfsky.errors import ConfigError, InputError
from tfsky.train.config import SegmenterConfig

REPO = Path(__file__).resolve().parents[1]
WSISEG = "allsky_wsiseg"


def wsiseg_source(root: Path, **changes) -> SourceConfig:
    data = root / WSISEG
    cameras = [AllSkyCamera("camera1", 1, 400, data / "mask_cam.png"), AllSkyCamera("camera2", 401, 600)]
    allsky = AllSkyConfig(cameras=cameras)
    fields = dict(
        kind="allsky_folder",
        name="wsiseg",
        images=data / "images",
        masks=data / "annotation",
        labels_csv=data / "sky_type.csv",
        allsky=allsky,
    )
    return SourceConfig(**{**fields, **changes})


def small_wsiseg(shared_data: Path, tmp_path: Path, frames: list[str]) -> Path:
    """A WSISEG-layout folder of a few frames, linked (not copied) from the shared data."""
    root = tmp_path / WSISEG
    for folder in ("images", "annotation"):
        (root / folder).mkdir(parents=True)
        for name in frames:
            (root / folder / name).symlink_to(shared_data / WSISEG / folder / name)
    for name in ("mask_cam.png", "sky_type.csv"):
        (root / name).symlink_to(shared_data / WSISEG / name)
    return tmp_path


def test_wsiseg_frames_get_class_ids_and_ignore_outside_the_lens(shared_data):
    cfg = DataConfig(sources=[wsiseg_source(shared_data)])
    items, skipped = list_items(cfg)
    assert len(items) == 358 and not skipped and all(item.problem is None for item in items)
    first = next(item for item in items if item.id.endswith("_001.png"))
    mask = first.load_mask()
    annotation = cv2.imread(str(first.mask_path), cv2.IMREAD_UNCHANGED)
    lens = cv2.imread(str(shared_data / WSISEG / "mask_cam.png"), cv2.IMREAD_GRAYSCALE) >= 128
    assert set(np.unique(mask)) == {0, 1, IGNORE}
    np.testing.assert_array_equal(mask[lens & (annotation == 255)], 1)  # cloud
    np.testing.assert_array_equal(mask[lens & (annotation == 100)], 0)  # clear sky
    assert np.all(mask[~lens] == IGNORE) and np.all(mask[annotation == 0] == IGNORE)
    assert first.condition == "Partial cloud"


def test_split_is_per_frame_and_stratified_by_camera_and_sky_type(shared_data):
    items, _ = list_items(DataConfig(sources=[wsiseg_source(shared_data)]))
    splits = assign_splits(items, 0.2, seed=0)
    assert splits == assign_splits(list(reversed(items)), 0.2, seed=0)  # fixed seed, order-free
    per_stratum = collections.defaultdict(collections.Counter)
    for item in items:
        per_stratum[item.stratum][splits[item.group]] += 1
    cam2 = {s for s in per_stratum if "/camera2/" in s}
    assert cam2 and any("/camera1/" in s for s in per_stratum)
    for stratum, counts in per_stratum.items():
        total = sum(counts.values())
        if total >= 5:  # every sizeable stratum (camera x sky type) is in both splits at ~20 %
            assert counts["val"] == round(0.2 * total), stratum
    assert len({item.group for item in items}) == 358  # one frame, one group


def test_bad_annotations_are_one_line_input_errors(tmp_path):
    frame = np.full((6, 8), 100, np.uint8)
    frame[0, 0] = 42
    cv2.imwrite(str(tmp_path / "a.png"), frame)
    with pytest.raises(InputError, match=r"a\.png: annotation values 42 are not in the class map"):
        load_class_mask(tmp_path / "a.png", None, AllSkyConfig())
    cv2.imwrite(str(tmp_path / "b.png"), np.full((6, 8), 255, np.uint8))
    cv2.imwrite(str(tmp_path / "cam.png"), np.full((5, 8), 255, np.uint8))
    with pytest.raises(InputError, match=r"cam\.png: camera mask is 8x5 but annotation b\.png is 8x6"):
        load_class_mask(tmp_path / "b.png", tmp_path / "cam.png", AllSkyConfig())
    with pytest.raises(ConfigError, match="camera mask not found"):
        AllSkyCamera("c", 1, 2, tmp_path / "missing.png").validate()


def test_config_class_map_and_cameras_are_checked(tmp_path):
    base = {
        "name": "x",
        "data": {"sources": [{"kind": "allsky_folder", "images": str(tmp_path), "masks": str(tmp_path)}]},
    }
    path = tmp_path / "c.yaml"

    def error(allsky: dict) -> str:
        raw = {**base}
        raw["data"]["sources"][0]["allsky"] = allsky
        path.write_text(yaml.safe_dump(raw))
        with pytest.raises(ConfigError) as err:
            load_config(SegmenterConfig, path)
        return str(err.value)

    assert "data.sources[0].allsky.class_map.300" in error({"class_map": {"300": 1}})
    assert "data.sources[0].allsky.class_map.5" in error({"class_map": {"5": 256}})
    assert "last_frame" in error({"cameras": [{"name": "a", "first_frame": 5, "last_frame": 1}]})


def test_frame_numbers_pick_the_camera():
    cfg = AllSkyConfig(cameras=[AllSkyCamera("one", 1, 400), AllSkyCamera("two", 401, 600)])
    assert frame_number(Path("ASC100-1006_451.png")) == 451
    assert cfg.camera_of(Path("ASC100-1006_007.png")).name == "one"
    assert cfg.camera_of(Path("ASC100-1006_451.png")).name == "two"
    assert cfg.camera_of(Path("ASC100-1006_700.png")) is None and cfg.camera_of(Path("frame.png")) is None


def test_fisheye_augmentation_keeps_frame_annotation_and_ignore_aligned(shared_data):
    """Any rotation about the centre + flips on a real frame: where the warped copy of the class ids is an
    exact class id, the warped mask equals it; pixels rotated in from outside are ignore (255), never clear sky."""
    name = "ASC100-1006_001.png"
    mask = load_class_mask(
        shared_data / WSISEG / "annotation" / name, shared_data / WSISEG / "mask_cam.png", AllSkyConfig()
    )[:448, 16:464]
    labels = mask.astype(np.float32)  # 0, 1, 255 as image values: bilinear mixes give other values
    rgb = cv2.imread(str(shared_data / WSISEG / "images" / name))[:448, 16:464].astype(np.float32) / 255
    image = np.concatenate([labels[..., None], rgb], axis=-1)[None].repeat(8, 0)
    cfg = AugmentConfig(rotation=180, shift=0, shear=0, zoom=0, horizontal_flip=True, mask_fill=IGNORE)
    matrices = random_affine(tf.constant([3, 1]), 8, 448, 448, cfg)
    fill = -7.0  # no bilinear mix of the non-negative class ids gives it
    warped, warped_mask = apply_affine(
        tf.constant(image),
        tf.constant(mask[None, ..., None].repeat(8, 0)),
        matrices,
        fill=fill,
        mask_fill=cfg.mask_fill,
    )
    warped, warped_mask = warped.numpy()[..., 0], warped_mask.numpy()[..., 0]
    exact = np.isin(warped, (0.0, 1.0, 255.0))
    assert exact.mean() > 0.8
    np.testing.assert_array_equal(warped_mask[exact], warped[exact])
    assert np.all(warped_mask[warped == fill] == IGNORE) and np.any(warped == fill)  # corners came from outside
    angles = np.degrees(np.arctan2(matrices.numpy()[:, 3], matrices.numpy()[:, 4]))
    assert np.ptp(angles) > 90  # the angles really span a wide range


def test_colour_jitter_scales_brightness_and_channels_within_range():
    image = tf.fill([64, 2, 2, 3], 0.25)
    cfg = AugmentConfig(brightness=0.5, white_balance=0.1)
    out = color_jitter(image, tf.constant([1, 2]), cfg).numpy()
    gains = out[:, 0, 0, :] / 0.25
    low, high = 2**-0.5 * np.exp(-0.1), 2**0.5 * np.exp(0.1)
    assert np.all(gains >= low - 1e-5) and np.all(gains <= high + 1e-5)
    assert np.ptp(gains[:, 0] / gains[:, 2]) > 0.05  # channels move independently (white balance)
    assert np.all(color_jitter(tf.ones([4, 2, 2, 3]), tf.constant([1, 2]), cfg).numpy() <= 1)


def test_saturation_and_haze_pull_colours_to_grey_within_their_ranges():
    blue = tf.tile(tf.constant([[[[0.2, 0.4, 0.9]]]]), [256, 2, 2, 1])
    luminance = float(np.dot([0.2, 0.4, 0.9], [0.2126, 0.7152, 0.0722]))
    out = color_jitter(blue, tf.constant([3, 4]), AugmentConfig(saturation=1.0)).numpy()[:, 0, 0]
    share = (out - blue.numpy()[:, 0, 0]) / (luminance - blue.numpy()[:, 0, 0])  # the way to grey, per channel
    assert np.allclose(share, share[:, :1], atol=1e-5)  # every channel moves the same share: a hue-free pull
    assert share.min() >= -1e-6 and share.max() <= 1 + 1e-6 and np.ptp(share) > 0.8  # U(0, 1), per sample
    assert np.allclose(out @ [0.2126, 0.7152, 0.0722], luminance, atol=1e-5)  # the Rec.709 weights sum to 1
    hazy = color_jitter(blue, tf.constant([3, 4]), AugmentConfig(haze=0.5)).numpy()[:, 0, 0]
    veil = hazy - blue.numpy()[:, 0, 0]  # = t (a - x): red rises towards a grey a in [0.6, 1], blue barely
    assert np.all(veil[:, 0] >= -1e-6) and np.all(veil[:, 2] <= 0.1 * 0.5 + 1e-6)
    assert np.all(np.ptp(hazy, axis=-1) >= 0.5 * np.ptp([0.2, 0.4, 0.9]) - 1e-5)  # t <= 0.5 keeps half the colour
    assert np.ptp(np.ptp(hazy, axis=-1)) > 0.2  # t differs per sample
    assert np.array_equal(color_jitter(blue, tf.constant([3, 4]), AugmentConfig()).numpy(), blue.numpy())


def test_saturation_needs_rgb_and_both_are_shares():
    recipe = REPO / "configs" / "sky_ldr_cpu.yaml"
    with pytest.raises(
        ConfigError, match=r"'data.augment.saturation': needs RGB images \(channels: 3\); got channels: 1"
    ):
        load_config(SegmenterConfig, recipe, ["data.channels=1", "data.augment.saturation=0.5"])
    with pytest.raises(ConfigError, match=r"'data.augment.haze': must be in \[0, 1\]"):
        load_config(SegmenterConfig, recipe, ["data.augment.haze=1.5"])


def test_prepared_cache_and_pipeline_carry_ignore_as_empty_one_hot_rows(shared_data, tmp_path):
    frames = [
        "ASC100-1006_001.png",
        "ASC100-1006_002.png",
        "ASC100-1006_004.png",
        "ASC100-1006_451.png",
        "ASC100-1006_480.png",
        "ASC100-1006_509.png",
    ]
    root = small_wsiseg(shared_data, tmp_path, frames)
    aug = AugmentConfig(rotation=180, shift=0, shear=0, zoom=0, mask_fill=IGNORE, brightness=0.3, white_balance=0.1)
    cfg = DataConfig(
        sources=[wsiseg_source(root)],
        cache=tmp_path / "cache",
        patch_size=128,
        patches_per_image=2,
        preprocess=Preprocess(mode="ldr"),
        augment=aug,
    )
    report = prepare_cache(cfg)
    assert sum(report.written.values()) == 6 and not report.skipped
    cached = {c.id: c for c in iter_cached(cfg.cache)}
    assert set(np.unique(cached["wsiseg/ASC100-1006_001.png"].mask)) == {0, 1, IGNORE}
    images, targets = next(iter(pipeline.segmentation_dataset(cfg, "train", 4, classes=2, seed=0)))
    assert images.shape == (4, 128, 128, 3) and targets.shape == (4, 128, 128, 2)
    rows = targets.numpy().sum(-1)
    assert set(np.unique(rows)) <= {0.0, 1.0}
    val_images, val_targets = next(iter(pipeline.segmentation_dataset(cfg, "val", 64, classes=2)))
    val_mask = next(c for c in cached.values() if c.split == "val").mask
    first = val_targets.numpy()[0]  # the top-left grid patch of the first val frame, unaugmented
    expected = val_mask[:128, :128]
    np.testing.assert_array_equal(first.sum(-1) == 0, expected == IGNORE)
    np.testing.assert_array_equal(first[..., 1] == 1, expected == 1)


def test_shipped_cloud_configs_load(shared_data):
    for name in ("cloud_tiny", "cloud_wsiseg"):
        cfg = load_config(SegmenterConfig, REPO / "configs" / f"{name}.yaml")
        assert cfg.model.classes == 2 and cfg.data.sources[0].kind == "allsky_folder"
        assert cfg.data.augment.mask_fill == IGNORE and cfg.data.augment.rotation == 180


def test_prepare_skips_and_reports_unusable_frames(tmp_path):
    images, annotations = tmp_path / "images", tmp_path / "annotation"
    images.mkdir()
    annotations.mkdir()
    for number in (1, 2, 3, 4, 5):
        cv2.imwrite(str(images / f"f_{number:03d}.png"), np.full((32, 40, 3), 120, np.uint8))
    for number in (1, 2, 3):
        cv2.imwrite(str(annotations / f"f_{number:03d}.png"), np.full((32, 40), 100, np.uint8))
    cv2.imwrite(str(annotations / "f_004.png"), np.full((30, 40), 255, np.uint8))  # wrong size
    allsky = AllSkyConfig(cameras=[AllSkyCamera("cam", 1, 4)])  # frame 5 belongs to no camera
    source = SourceConfig(kind="allsky_folder", name="sky", images=images, masks=annotations, allsky=allsky)
    report = prepare_cache(DataConfig(sources=[source], cache=tmp_path / "cache", patch_size=32))
    reasons = dict(report.skipped)
    assert sum(report.written.values()) == 3
    assert "mask is 40x30 but image f_004.png is 40x32" in reasons["sky/f_004.png"]
    assert reasons["sky/f_005.png"] == "frame number of f_005.png is in no camera's frame range"


def test_an_allsky_source_needs_a_softmax_head(tmp_path):
    path = tmp_path / "c.yaml"
    source = {"kind": "allsky_folder", "images": str(tmp_path), "masks": str(tmp_path)}
    path.write_text(yaml.safe_dump({"name": "x", "data": {"sources": [source]}, "model": {"classes": 1}}))
    with pytest.raises(ConfigError, match="config key 'model.classes': all-sky sources have ignored pixels"):
        load_config(SegmenterConfig, path)


def test_test_frames_are_held_out_of_train_and_val_into_a_test_split(tmp_path):
    images, annotations = tmp_path / "images", tmp_path / "annotation"
    images.mkdir()
    annotations.mkdir()
    for number in range(1, 13):
        cv2.imwrite(str(images / f"f_{number:03d}.png"), np.full((32, 40, 3), 120, np.uint8))
        cv2.imwrite(str(annotations / f"f_{number:03d}.png"), np.full((32, 40), 100, np.uint8))
    allsky = AllSkyConfig(cameras=[AllSkyCamera("cam", 1, 12)], test_frames=[[3, 5], [11, 11]])
    source = SourceConfig(kind="allsky_folder", name="sky", images=images, masks=annotations, allsky=allsky)
    report = prepare_cache(DataConfig(sources=[source], cache=tmp_path / "cache", patch_size=32))
    assert report.written["test"] == 4 and report.written["train"] + report.written["val"] == 8
    split_of = {cached.id: cached.split for cached in iter_cached(tmp_path / "cache")}
    assert set(split_of) == {f"sky/f_{n:03d}.png" for n in (1, 2, 6, 7, 8, 9, 10, 12)}  # train and val only
    assert {c.id for c in iter_cached(tmp_path / "cache", "test")} == {f"sky/f_{n:03d}.png" for n in (3, 4, 5, 11)}
    plain = prepare_cache(
        DataConfig(
            sources=[dataclasses.replace(source, allsky=AllSkyConfig(cameras=allsky.cameras))],
            cache=tmp_path / "plain",
            patch_size=32,
        )
    )
    assert "test" not in plain.written  # no test split unless frames are held out
    with pytest.raises(ConfigError, match=r"'test_frames\[0\]': must be \[first, last\] with first <= last"):
        AllSkyConfig(test_frames=[[5, 3]]).validate()
