"""`tfsky data prepare`: manifest, checksums, exact round trips, skipped bad inputs, CLI errors, re-runs."""

from __future__ import annotations

import hashlib
import json
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
import yaml

from tfsky.config import load_config, to_dict
from tfsky.data.cache import assign_splits, iter_cached, prepare_cache, read_manifest
from tfsky.data.config import DataConfig
from tfsky.data.pipeline import segmentation_dataset
from tfsky.data.sources import LabelledImage
from tfsky.errors import ConfigError, InputError, TfskyError
from tfsky.io.images import read_image, read_mask
from tfsky.io.writers import write_mask_png, write_png, write_tif

REPO = Path(__file__).resolve().parents[1]


def make_pair(images: Path, masks: Path, name: str, height: int, width: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    write_png(images / f"{name}.png", rng.integers(0, 256, (height, width, 3), dtype=np.uint8))
    write_mask_png(masks / f"{name}.png", rng.random((height, width)) > 0.5)


def ldr_folder(root: Path, count: int = 3) -> tuple[Path, Path]:
    images, masks = root / "images", root / "masks"
    for index in range(count):
        make_pair(images, masks, f"img{index}", 40 + 8 * index, 56, seed=index)
    return images, masks


def data_config(tmp_path: Path, sources: list[dict], **extra) -> DataConfig:
    raw = {"sources": sources, "cache": str(tmp_path / "cache"), "patch_size": 32, **extra}
    return load_config(DataConfig, None, [f"data={json.dumps(raw)}"], section="data")


def mask_source(images: Path, masks: Path, name: str = "photos") -> dict:
    return {"kind": "mask_folder", "name": name, "images": str(images), "masks": str(masks)}


def test_prepare_writes_manifest_and_round_trips_ldr_exactly(tmp_path):
    images, masks = ldr_folder(tmp_path / "ldr", count=5)
    cfg = data_config(tmp_path, [mask_source(images, masks)])
    report = prepare_cache(cfg)
    manifest = read_manifest(cfg.cache)
    assert sum(report.written.values()) == manifest["totals"]["written"] == 5 and report.skipped == []
    assert report.written["val"] == 1 and manifest["splits"]["val"]["shards"] == ["val-00000.tfrecord"]
    assert manifest["totals"]["bytes"] == sum(p.stat().st_size for p in Path(cfg.cache).glob("*.tfrecord"))
    assert manifest["config"]["patch_size"] == 32 and manifest["dtype"] == "uint8"
    entries = {entry["id"]: entry for entry in manifest["items"]}
    cached = list(iter_cached(cfg.cache))
    assert sorted(c.id for c in cached) == sorted(entries) == [f"photos/img{i}.png" for i in range(5)]
    for item in cached:
        name = item.id.split("/")[1]
        np.testing.assert_array_equal(item.image, read_image(images / name))
        np.testing.assert_array_equal(item.mask, read_mask(masks / name))
        entry = entries[item.id]
        assert entry["sha256"] == hashlib.sha256(item.image.tobytes()).hexdigest()
        assert (entry["split"], entry["height"], entry["width"], entry["status"]) == (
            item.split,
            *item.image.shape[:2],
            "written",
        )


def test_prepare_round_trips_hdr_float32_exactly(tmp_path):
    rng = np.random.default_rng(1)
    radiance = (rng.random((48, 64, 3)) * 1e4).astype(np.float32)
    write_tif(tmp_path / "hdr" / "pano.tif", radiance)
    write_mask_png(tmp_path / "hdr_masks" / "pano.png", rng.random((48, 64)) > 0.3)
    source = mask_source(tmp_path / "hdr", tmp_path / "hdr_masks", "hdr")
    cfg = data_config(tmp_path, [source], preprocess={"mode": "log"})
    prepare_cache(cfg)
    (item,) = iter_cached(cfg.cache)
    assert item.image.dtype == np.float32 and read_manifest(cfg.cache)["dtype"] == "float32"
    np.testing.assert_array_equal(item.image, radiance)


def test_hdr_image_in_an_ldr_cache_is_skipped(tmp_path):
    images, masks = ldr_folder(tmp_path / "ldr", count=2)
    write_tif(images / "pano.tif", np.ones((40, 56, 3), np.float32))
    write_mask_png(masks / "pano.png", np.ones((40, 56), bool))
    report = prepare_cache(data_config(tmp_path, [mask_source(images, masks)]))
    assert report.skipped == [("photos/pano.tif", "HDR image (float32) but data.preprocess.mode is ldr")]


@pytest.fixture
def bad_inputs(tmp_path) -> DataConfig:
    """Two good photos plus one item for each kind of bad input, and a COCO source with a missing image."""
    images, masks = ldr_folder(tmp_path / "photos", count=2)
    (images / "empty.png").write_bytes(b"")
    write_mask_png(masks / "empty.png", np.zeros((8, 8)))
    (images / "truncated.jpg").write_bytes(_jpeg_bytes(64, 64)[:300])
    write_mask_png(masks / "truncated.png", np.zeros((64, 64)))
    (images / "notes.png").write_text("not an image\n")
    write_mask_png(masks / "notes.png", np.zeros((8, 8)))
    make_pair(images, masks, "wrong_mask", 40, 56, seed=5)
    write_mask_png(masks / "wrong_mask.png", np.zeros((20, 20)))
    write_png(images / "no_mask.png", np.zeros((40, 56, 3), np.uint8))
    coco_root = tmp_path / "coco"
    write_png(coco_root / "present.png", np.zeros((40, 56, 3), np.uint8))
    _write_coco(coco_root / "ok.json", ["present.png", "absent.png"])
    _write_coco(coco_root / "escape.json", ["../photos/images/img0.png"])
    sources = [
        mask_source(images, masks),
        {"kind": "coco", "name": "labelled", "images": str(coco_root), "annotations": str(coco_root / "ok.json")},
        {"kind": "coco", "name": "escaping", "images": str(coco_root), "annotations": str(coco_root / "escape.json")},
    ]
    return data_config(tmp_path, sources)


def test_each_bad_input_is_skipped_with_its_reason_and_the_run_continues(bad_inputs):
    report = prepare_cache(bad_inputs)
    reasons = dict(report.skipped)
    assert reasons.pop("photos/empty.png") == "file is empty (0 bytes)"
    assert reasons.pop("photos/truncated.jpg").startswith("truncated or corrupt image")
    assert reasons.pop("photos/notes.png").startswith("not a .png image")
    assert reasons.pop("photos/wrong_mask.png").endswith("mask is 20x20 but image wrong_mask.png is 56x40")
    assert reasons.pop("photos/no_mask.png").startswith("missing mask ")
    assert reasons.pop("labelled/absent.png") == "file not found"
    assert "image path escapes the image root" in reasons.pop("escaping")
    assert reasons == {}
    assert sum(report.written.values()) == 3  # img0, img1 and the COCO image
    manifest = read_manifest(bad_inputs.cache)
    assert manifest["totals"] == {**manifest["totals"], "written": 3, "skipped": 7}
    skipped = {e["id"]: e["reason"] for e in manifest["items"] if e["status"] == "skipped"}
    assert skipped == dict(report.skipped)


def test_strict_stops_at_the_first_bad_item_and_keeps_the_old_cache(bad_inputs):
    prepare_cache(bad_inputs)
    before = read_manifest(bad_inputs.cache)
    with pytest.raises(TfskyError, match=r"^escaping: .*escape.json: .*image path escapes .* \(stopped by --strict\)$"):
        prepare_cache(bad_inputs, strict=True)
    bad_inputs.sources.pop()  # without the escaping COCO file, the first bad photo stops the run
    with pytest.raises(TfskyError, match=r"^photos/empty.png: file is empty \(0 bytes\) \(stopped by --strict\)$"):
        prepare_cache(bad_inputs, strict=True)
    assert read_manifest(bad_inputs.cache) == before  # the previous cache is untouched


def test_nothing_usable_is_an_error(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    (images / "a.png").write_bytes(b"")
    cfg = data_config(tmp_path, [mask_source(images, tmp_path)])
    with pytest.raises(TfskyError, match=r"no usable image in data.sources: 1 item\(s\) skipped \(first: photos/a.png"):
        prepare_cache(cfg)


def test_missing_source_folder_is_a_config_error_naming_the_key(tmp_path):
    images, masks = ldr_folder(tmp_path / "ldr", count=1)
    cfg = data_config(tmp_path, [mask_source(images, masks), mask_source(tmp_path / "nope", masks, "other")])
    with pytest.raises(ConfigError, match=r"config key 'data.sources\[1\].images': folder not found: .*nope"):
        prepare_cache(cfg)


def test_rerun_after_a_killed_run_finishes_cleanly(tmp_path):
    images, masks = ldr_folder(tmp_path / "ldr", count=3)
    cfg = data_config(tmp_path, [mask_source(images, masks)])
    stale = tmp_path / ".cache.x1y2.part"  # what a killed prepare leaves: a temp folder with a partial shard
    stale.mkdir()
    (stale / "train-00000.tfrecord").write_bytes(b"\x00partial")
    Path(cfg.cache).mkdir()
    (Path(cfg.cache) / "train-00000.tfrecord").write_bytes(b"old junk")  # an old cache without manifest
    prepare_cache(cfg)
    assert not stale.exists()
    files = sorted(p.name for p in Path(cfg.cache).iterdir())
    assert files == ["manifest.json", "train-00000.tfrecord", "val-00000.tfrecord"]
    first = [entry["sha256"] for entry in read_manifest(cfg.cache)["items"]]
    assert len(list(iter_cached(cfg.cache))) == 3
    prepare_cache(cfg)  # a plain re-run rebuilds the same content
    assert [entry["sha256"] for entry in read_manifest(cfg.cache)["items"]] == first


def test_shards_roll_over_at_the_size_limit(tmp_path):
    images, masks = ldr_folder(tmp_path / "ldr", count=6)
    cfg = data_config(tmp_path, [mask_source(images, masks)], shard_size_mb=1, compression="NONE")
    big = np.random.default_rng(0).integers(0, 256, (700, 600, 3), dtype=np.uint8)  # ~1.2 MB raw each
    for name in ("img0", "img1", "img2", "img3"):
        write_png(images / f"{name}.png", big)
        write_mask_png(masks / f"{name}.png", np.zeros((700, 600)))
    prepare_cache(cfg)
    manifest = read_manifest(cfg.cache)
    shards = [e["shard"] for e in manifest["items"] if e["split"] == "train"]
    assert len(set(shards)) >= 3 and manifest["splits"]["train"]["shards"][1] == "train-00001.tfrecord"
    assert len(list(iter_cached(cfg.cache, "train"))) == manifest["splits"]["train"]["images"]


def test_missing_or_invalid_cache_is_an_input_error_naming_the_folder(tmp_path):
    with pytest.raises(InputError, match=r"nowhere: no prepared cache here \(manifest.json missing\)"):
        read_manifest(tmp_path / "nowhere")
    (tmp_path / "manifest.json").write_text("{")
    with pytest.raises(InputError, match="manifest.json is not valid JSON"):
        list(iter_cached(tmp_path))


def test_split_is_by_group_deterministic_and_never_empty():
    items = [LabelledImage(f"cams/{c}/{f}", Path("x"), "cams", f"cams/{c}") for c in range(5) for f in range(3)]
    items += [LabelledImage(f"photos/{p}", Path("x"), "photos", f"photos/{p}") for p in range(10)]
    splits = assign_splits(items, 0.2, seed=0)
    assert splits == assign_splits(items[::-1], 0.2, seed=0)  # independent of listing order
    by_source = defaultdict(list)
    for group, split in splits.items():
        by_source[group.split("/")[0]].append(split)
    assert sorted(by_source["cams"]) == ["train"] * 4 + ["val"]
    assert sorted(by_source["photos"]) == ["train"] * 8 + ["val"] * 2
    assert any(assign_splits(items, 0.2, seed=s) != splits for s in range(1, 5))
    two_single_group_sources = [LabelledImage("a/1", Path("x"), "a", "a"), LabelledImage("b/1", Path("x"), "b", "b")]
    assert sorted(assign_splits(two_single_group_sources, 0.1, seed=0).values()) == ["train", "val"]


# --- CLI ---------------------------------------------------------------------------------------


def write_config(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump({"name": "t", "data": data}))
    return path


def test_cli_shows_library_messages_on_stderr_and_quiet_silences_them(tmp_path, cli, monkeypatch):
    """The library logs (``tfsky`` logger) and reports progress; the CLI shows both, ``--quiet`` neither."""
    import tfsky.data.cache as cache_module
    from tfsky.progress import logger

    def fake_prepare(cfg, strict, progress):
        progress.started(1, "prepare")
        logger("data").info("an info line")
        logger().warning("a warning line")
        progress.advanced("item")
        progress.finished()
        return cache_module.PrepareReport(Path(cfg.cache), {"train": 1}, [], 0, 0.0)

    monkeypatch.setattr(cache_module, "prepare_cache", fake_prepare)
    images, masks = ldr_folder(tmp_path / "ok", count=1)
    config = write_config(tmp_path / "c.yaml", {"sources": [mask_source(images, masks)], "cache": str(tmp_path / "c")})
    shown = ["an info line", "a warning line"]
    assert cli("data", "prepare", "-c", config).stderr.splitlines() == shown
    assert cli("data", "prepare", "-c", config, "-q").stderr.splitlines() == shown[1:]
    assert cli("--quiet", "data", "prepare", "-c", config).stderr.splitlines() == shown[1:]
    assert cli("data", "prepare", "-c", config).stderr.splitlines() == shown  # quiet was for that command only


def test_cli_prepare_summary_and_exit_codes(tmp_path, cli, bad_inputs):
    images, masks = ldr_folder(tmp_path / "ok", count=2)
    config = write_config(tmp_path / "c.yaml", {"sources": [mask_source(images, masks)], "cache": str(tmp_path / "c")})
    result = cli("data", "prepare", "-c", config, "--quiet")
    assert result.exit_code == 0, result.stderr
    assert result.stdout.startswith("wrote 2 images (1 train, 1 val) to ") and "skipped 0" in result.stdout
    config = write_config(tmp_path / "bad.yaml", {**to_dict(bad_inputs), "cache": str(tmp_path / "b")})
    result = cli("data", "prepare", "-c", config, "-q")
    assert result.exit_code == 0 and "skipped 7" in result.stdout
    assert "skipped photos/empty.png: file is empty (0 bytes)" in result.stderr.splitlines()
    result = cli("data", "prepare", "-c", config, "-q", "--strict")
    assert result.exit_code == 1
    assert result.stderr.startswith("Error: escaping: ") and result.stderr.strip().endswith("(stopped by --strict)")


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("data.patchsize=64", "Error: config key 'data.patchsize': unknown key"),
        ("data.patch_size=big", "Error: config key 'data.patch_size': expected an integer, got 'big'"),
        ("data.patch_size=48", "Error: config key 'data.patch_size': must be divisible by 32 (the U-Net downsamples"),
        ("data.sources=[{kind: mask_folder, images: nowhere/images, masks: nowhere}]",
         "Error: config key 'data.sources[0].images': folder not found: nowhere/images"),
        ("data.sources=[{kind: coco, images: x}]",
         "Error: config key 'data.sources[0].annotations': is required for a coco source"),
    ],
)  # fmt: skip
def test_cli_config_errors_are_one_line_with_exit_1(cli, tmp_path, override, message):
    images, masks = ldr_folder(tmp_path / "ok", count=1)
    config = write_config(tmp_path / "c.yaml", {"sources": [mask_source(images, masks)], "cache": str(tmp_path / "c")})
    result = cli("data", "prepare", "-c", config, "-q", "--set", override)
    assert result.exit_code == 1
    assert result.stderr.startswith(message) and len(result.stderr.strip().splitlines()) == 1
    assert "Traceback" not in result.stderr


# --- real data ---------------------------------------------------------------------------------


def test_prepare_real_photos_and_webcams_into_batches(shared_data, tmp_path):
    sources = [
        mask_source(shared_data / "sky_ade20k" / "images", shared_data / "sky_ade20k" / "masks", "ade"),
        {
            "kind": "camera_folder",
            "name": "skyfinder",
            "images": str(shared_data / "skyfinder_webcams"),
            "labels_csv": str(shared_data / "skyfinder_webcams" / "weather_labels_cam623.csv"),
        },
    ]
    cfg = data_config(tmp_path, sources, patches_per_image=1, shuffle_buffer=16, compression="NONE")
    report = prepare_cache(cfg)
    assert sum(report.written.values()) == 140 and report.skipped == []
    manifest = read_manifest(cfg.cache)
    cam623 = [e["condition"] for e in manifest["items"] if e["group"] == "skyfinder/623"]
    assert sorted(cam623) == ["clear"] * 4 + ["overcast"] * 3 + ["unlabelled(night)"] * 3
    camera_splits = defaultdict(set)
    for entry in manifest["items"]:
        camera_splits[entry["group"]].add(entry["split"])
    assert all(len(splits) == 1 for splits in camera_splits.values())
    assert {"train", "val"} == {s for g, (s,) in camera_splits.items() if g.startswith("skyfinder/")}
    image, mask = next(iter(segmentation_dataset(cfg, "train", 8, seed=0)))
    assert (image.shape, image.dtype.name) == ((8, 32, 32, 3), "float32")
    assert (mask.shape, mask.dtype.name) == ((8, 32, 32, 1), "float32")
    image, mask = next(iter(segmentation_dataset(cfg, "val", 8)))
    assert image.shape == (8, 32, 32, 3) and set(np.unique(mask.numpy())) <= {0.0, 1.0}


def test_shipped_sky_ldr_config_prepares_the_shared_data_into_model_batches(shared_data, tmp_path, cli, monkeypatch):
    if shared_data.resolve() != (REPO.parent / "shared" / "data").resolve():
        pytest.skip("configs/sky_ldr.yaml names ../shared/data relative to the repository")
    monkeypatch.chdir(REPO)
    config, cache = REPO / "configs" / "sky_ldr.yaml", tmp_path / "sky_ldr"
    result = cli("data", "prepare", "-c", config, "-q", "--set", f"data.cache={cache}")
    assert result.exit_code == 0, result.stderr
    cfg = load_config(DataConfig, config, [f"data.cache={cache}"], section="data")
    manifest = read_manifest(cache)
    assert (
        manifest["totals"]["written"] == 100 + 100 + 20 + 40 + 468 + 358
    )  # ADE20K, Cityscapes, GoPro, SkyFinder, CamVid, WSISEG
    written = [entry for entry in manifest["items"] if entry["status"] == "written"]
    for entry in written:  # the short side at the working scale, never enlarged
        short = min(entry["source_height"], entry["source_width"])
        assert min(entry["height"], entry["width"]) == min(short, 384), entry["id"]
    for split in ("train", "val"):
        image, mask = next(iter(segmentation_dataset(cfg, split, 4, seed=0)))
        assert (image.shape, image.dtype.name, mask.shape, mask.dtype.name) == (
            (4, 256, 256, 3),
            "float32",
            (4, 256, 256, 1),
            "float32",
        )


def test_shipped_configs_load_and_validate():
    for name, patch in (("sky_ldr", 256), ("sky_hdr", 256), ("sky_tiny", 64)):
        cfg = load_config(DataConfig, REPO / "configs" / f"{name}.yaml", section="data")
        assert cfg.patch_size == patch and str(cfg.cache) == f"cache/{name}"
    hdr = load_config(DataConfig, REPO / "configs" / "sky_hdr.yaml", section="data")
    assert hdr.preprocess.mode == "log" and hdr.grid_stride == 100


# --- helpers -----------------------------------------------------------------------------------


def _jpeg_bytes(height: int, width: int) -> bytes:
    import cv2

    noise = np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)
    return cv2.imencode(".jpg", noise)[1].tobytes()


def _write_coco(path: Path, file_names: list[str]) -> None:
    square = [[4, 4, 30, 4, 30, 30, 4, 30]]
    images = [{"id": i, "file_name": n, "height": 40, "width": 56} for i, n in enumerate(file_names)]
    annotations = [
        {"id": i, "image_id": i, "category_id": 1, "segmentation": square, "iscrowd": 0} for i in range(len(images))
    ]
    categories = [{"id": 1, "name": "sky"}]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
