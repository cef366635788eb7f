"""Label sources on the real sample data: ADE20K mask folder, SkyFinder webcams, COCO files."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from tfsky.data.config import SourceConfig
from tfsky.data.sources import iter_source
from tfsky.errors import ConfigError, InputError
from tfsky.io.images import image_size
from tfsky.io.writers import write_mask_png


def test_mask_folder_pairs_every_ade20k_photo_with_its_mask(shared_data):
    root = shared_data / "sky_ade20k"
    items = list(iter_source(SourceConfig(kind="mask_folder", images=root / "images", masks=root / "masks")))
    assert len(items) == 100 and all(item.problem is None for item in items)
    assert items[0].id == "sky_ade20k/ADE_train_00000004.jpg" and items[0].source == "sky_ade20k"
    assert all(item.group == item.id and item.condition is None for item in items)
    masks = [item.load_mask() for item in items]
    assert all(mask.shape == image_size(item.image_path) for item, mask in zip(items, masks))
    assert all(set(np.unique(mask)) <= {0, 1} for mask in masks)
    assert sum(not mask.any() for mask in masks) == 63  # the README's real negatives


def test_mask_folder_reports_an_image_without_its_mask(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "lonely.jpg").write_bytes(b"x")
    (item,) = iter_source(SourceConfig(kind="mask_folder", images=tmp_path / "images", masks=tmp_path))
    assert item.problem == f"missing mask {tmp_path / 'lonely.png'}"


def test_camera_folder_groups_frames_by_camera_with_conditions(shared_data):
    root = shared_data / "skyfinder_webcams"
    cfg = SourceConfig(kind="camera_folder", images=root, labels_csv=root / "weather_labels_cam623.csv")
    items = list(iter_source(cfg))
    assert len(items) == 40 and all(item.problem is None for item in items)
    cameras = ("10917", "623", "684", "9730")
    assert Counter(item.group for item in items) == {f"skyfinder_webcams/{camera}": 10 for camera in cameras}
    conditions = Counter(item.condition for item in items if item.group.endswith("/623"))
    assert conditions == {"clear": 4, "overcast": 3, "unlabelled(night)": 3}
    assert all(item.condition is None for item in items if not item.group.endswith("/623"))
    by_camera = {item.group.split("/")[1]: item for item in items}
    assert not by_camera["10917"].load_mask().any()  # camera 10917 sees no sky
    mask = by_camera["623"].load_mask()
    assert mask.shape == image_size(by_camera["623"].image_path) and 0 < mask.mean() < 1


def test_camera_folder_restricts_cameras_and_flags_missing_masks(shared_data, tmp_path):
    root = shared_data / "skyfinder_webcams"
    items = list(iter_source(SourceConfig(kind="camera_folder", images=root, cameras=["684"])))
    assert {item.group for item in items} == {"skyfinder_webcams/684"} and len(items) == 10
    with pytest.raises(ConfigError, match=r"config key 'cameras': camera folder\(s\) not found in .*: 42"):
        list(iter_source(SourceConfig(kind="camera_folder", images=root, cameras=["684", "42"])))
    (tmp_path / "cam").mkdir()
    (tmp_path / "cam" / "f.jpg").write_bytes(b"x")
    (item,) = iter_source(SourceConfig(kind="camera_folder", images=tmp_path))
    assert item.problem == f"missing camera mask {tmp_path / 'cam-mask.png'}"


def test_coco_source_lists_images_including_missing_ones(shared_data):
    root = shared_data / "coco" / "sahi_terrain"
    cfg = SourceConfig(kind="coco", images=root, annotations=root / "terrain_all_coco.json", positive=["car"])
    items = {item.id: item for item in iter_source(cfg)}
    assert sorted(items) == ["sahi_terrain/terrain1.jpg", "sahi_terrain/terrain2.png", "sahi_terrain/terrain3.png"]
    assert not items["sahi_terrain/terrain3.png"].image_path.exists()  # listed; prepare skips it
    mask = items["sahi_terrain/terrain2.png"].load_mask()
    assert mask.shape == image_size(root / "terrain2.png") and mask.any()


def test_coco_source_with_unknown_category_is_an_input_error(shared_data):
    root = shared_data / "coco" / "sahi_terrain"
    with pytest.raises(InputError, match="unknown category 'sky'"):
        list(iter_source(SourceConfig(kind="coco", images=root, annotations=root / "combined_coco.json")))


def test_missing_paths_are_config_errors_naming_the_field(tmp_path):
    with pytest.raises(ConfigError, match=r"config key 'images': folder not found: .*nope"):
        iter_source(SourceConfig(kind="mask_folder", images=tmp_path / "nope", masks=tmp_path))
    with pytest.raises(ConfigError, match=r"config key 'labels_csv': file not found"):
        iter_source(SourceConfig(kind="camera_folder", images=tmp_path, labels_csv=tmp_path / "x.csv"))


def test_labels_csv_needs_image_and_condition_columns(tmp_path):
    (tmp_path / "labels.csv").write_text("file,weather\na.jpg,clear\n")
    write_mask_png(tmp_path / "cam-mask.png", np.ones((4, 4)))
    with pytest.raises(InputError, match=r"labels.csv: needs columns 'image' and 'condition'"):
        list(iter_source(SourceConfig(kind="camera_folder", images=tmp_path, labels_csv=tmp_path / "labels.csv")))


def test_default_source_name_skips_a_generic_images_folder():
    assert SourceConfig(kind="mask_folder", images=Path("data/ade/images"), masks=Path("m")).name == "ade"
    assert SourceConfig(kind="camera_folder", images=Path("data/webcams")).name == "webcams"


def test_group_pattern_keeps_each_camvid_sequence_on_one_side_of_the_split(shared_data):
    root = shared_data / "sky_camvid"
    source = SourceConfig(kind="mask_folder", images=root / "images", masks=root / "masks", group_pattern="^[^_]+")
    source.validate()
    items = list(iter_source(source))
    assert Counter(item.group for item in items) == {
        "sky_camvid/0001TP": 62,
        "sky_camvid/0006R0": 101,
        "sky_camvid/0016E5": 305,
    }


def test_group_pattern_errors_name_the_key(tmp_path):
    with pytest.raises(ConfigError, match="group_pattern.*not a regular expression"):
        SourceConfig(kind="mask_folder", images=tmp_path, masks=tmp_path, group_pattern="([").validate()
    with pytest.raises(ConfigError, match="group_pattern.*mask_folder sources only"):
        SourceConfig(kind="camera_folder", images=tmp_path, group_pattern="x").validate()


def test_exclude_drops_the_named_images_of_any_source_kind(shared_data):
    gopro = shared_data / "sky_gopro"
    every = [
        item.id
        for item in iter_source(SourceConfig(kind="mask_folder", images=gopro / "images", masks=gopro / "masks"))
    ]
    cfg = SourceConfig(
        kind="mask_folder", images=gopro / "images", masks=gopro / "masks", exclude=["193878.*", "7912e*"]
    )
    kept = [item.id for item in iter_source(cfg)]
    dropped = sorted(set(every) - set(kept))
    assert len(every) == 20 and [name.split("/")[1].split(".")[0] for name in dropped] == [
        "193878",
        "7912e366988030ad54ae2e6989804dad",
    ]
    assert kept == [item for item in every if item not in dropped]  # the order of the rest is kept
    webcams = shared_data / "skyfinder_webcams"
    frames = list(iter_source(SourceConfig(kind="camera_folder", images=webcams, exclude=["10917/*", "623/2012*"])))
    assert Counter(item.group.split("/")[1] for item in frames) == {"623": 5, "684": 10, "9730": 10}
    assert all(not item.image_path.name.startswith("2012") for item in frames if item.group.endswith("/623"))
