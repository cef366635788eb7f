"""COCO rasterisation against labelme's reference, SAHI boxes, and hand-made annotations."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from tfsky.data.coco import CocoDataset, CocoImage, write_masks
from tfsky.errors import InputError
from tfsky.io.images import read_mask

# (file stem, category) -> (agreement on non-ignored pixels, IoU) measured against labelme's
# SegmentationClassNpy; labelme fills polygons with PIL (outline included), pycocotools samples
# pixel centres, so the two differ by about one pixel along every edge.
LABELME_AGREEMENT_MIN = 0.995
LABELME_IOU_MIN = 0.93


def test_labelme_masks_match_the_reference_rasterisation(shared_data):
    root = shared_data / "coco" / "labelme_voc3"
    annotations = root / "data_dataset_coco" / "annotations.json"
    class_names = (root / "data_dataset_voc" / "class_names.txt").read_text().splitlines()
    data = json.loads(annotations.read_text())
    assert [cat["name"] for cat in data["categories"]] == class_names  # class id == category id
    checked = 0
    for image in data["images"]:
        reference = np.load(root / "data_dataset_voc" / "SegmentationClassNpy" / f"{Path(image['file_name']).stem}.npy")
        labelled = reference != -1
        for category_id in sorted({a["category_id"] for a in data["annotations"] if a["image_id"] == image["id"]}):
            dataset = CocoDataset(annotations, root / "data_dataset_coco", positive=[class_names[category_id]])
            mask = dataset.mask(image["id"]).astype(bool)
            expected = reference == category_id
            agreement = (mask == expected)[labelled].mean()
            iou = (mask & expected)[labelled].sum() / (mask | expected)[labelled].sum()
            assert mask.shape == reference.shape
            assert agreement >= LABELME_AGREEMENT_MIN and iou >= LABELME_IOU_MIN, (image["file_name"], agreement, iou)
            checked += 1
    assert checked == 7


def test_sahi_box_polygons_rasterise_to_the_exact_box_union(shared_data):
    root = shared_data / "coco" / "sahi_terrain"
    for name, category in (("terrain1_coco.json", "human"), ("terrain2_coco.json", "car")):
        data = json.loads((root / name).read_text())
        dataset = CocoDataset(root / name, root, positive=[category])
        (image,) = dataset.images()
        boxes = np.zeros((image.height, image.width), np.uint8)
        for ann in data["annotations"]:
            x, y, w, h = map(int, ann["bbox"])
            boxes[y : y + h, x : x + w] = 1
        mask = dataset.mask(image.id)
        assert (
            mask.shape
            == (image.height, image.width)
            == {"terrain1.jpg": (1365, 2048)}.get(image.file_name, (682, 1024))
        )
        # the files' "area" field is the whole image (a SAHI quirk), so compare with the boxes instead
        assert mask.sum() > 0 and np.array_equal(mask, boxes)


def test_write_masks_skips_the_missing_image_and_goes_on(shared_data, tmp_path):
    root = shared_data / "coco" / "sahi_terrain"
    report = write_masks(root / "terrain_all_coco.json", root, tmp_path, positive=["human", "car"])
    assert sorted(p.name for p in report.written) == ["terrain1.png", "terrain2.png"]
    assert report.skipped == [("terrain3.png", f"image file not found: {root.resolve() / 'terrain3.png'}")]
    mask = read_mask(tmp_path / "terrain1.png")
    assert mask.shape == (1365, 2048) and mask.any()


# --- hand-made annotations --------------------------------------------------------------------


def _square_rle_counts(height: int, width: int) -> dict:
    """Uncompressed (column-major) RLE of a 2x3 block at rows 1-2, columns 4-6."""
    block = np.zeros((height, width), np.uint8, order="F")
    block[1:3, 4:7] = 1
    flat = block.flatten(order="F")
    changes = np.flatnonzero(np.diff(np.r_[0, flat, 1 - flat[-1]]))
    counts = np.diff(np.r_[0, changes]).tolist()
    return {"size": [height, width], "counts": counts}


@pytest.fixture
def coco_file(tmp_path) -> Path:
    height, width = 10, 12
    compressed = mask_utils.encode(np.asfortranarray(np.eye(height, width, dtype=np.uint8)))
    data = {
        "images": [{"id": 7, "file_name": "a.jpg", "height": height, "width": width}],
        "categories": [{"id": 1, "name": "sky"}, {"id": 2, "name": "bird"}, {"id": 3, "name": "tree"}],
        "annotations": [
            # square polygon x 2..8, y 2..8: pycocotools covers pixel centres inside -> 6 x 6
            {"id": 1, "image_id": 7, "category_id": 1, "iscrowd": 0, "segmentation": [[2, 2, 8, 2, 8, 8, 2, 8]]},
            {"id": 2, "image_id": 7, "category_id": 1, "iscrowd": 1, "segmentation": _square_rle_counts(height, width)},
            {"id": 3, "image_id": 7, "category_id": 2, "iscrowd": 0, "segmentation": [[4, 4, 6, 4, 6, 6, 4, 6]]},
            {
                "id": 4,
                "image_id": 7,
                "category_id": 3,
                "iscrowd": 1,
                "segmentation": {"size": [height, width], "counts": compressed["counts"].decode()},
            },
        ],
    }
    path = tmp_path / "ann.json"
    path.write_text(json.dumps(data))
    return path


def test_square_polygon_has_the_exact_pixel_count(coco_file, tmp_path):
    data = json.loads(coco_file.read_text())
    data["annotations"] = data["annotations"][:1]
    coco_file.write_text(json.dumps(data))
    mask = CocoDataset(coco_file, tmp_path).mask(7)
    assert mask.dtype == np.uint8 and mask.sum() == 36
    assert mask[2:8, 2:8].all()


def test_polygon_plus_rle_minus_negative(coco_file, tmp_path):
    expected = np.zeros((10, 12), np.uint8)
    expected[2:8, 2:8] = 1  # polygon
    expected[1:3, 4:7] = 1  # uncompressed RLE (iscrowd=1)
    expected[4:6, 4:6] = 0  # "bird" cut out
    mask = CocoDataset(coco_file, tmp_path, positive=["sky"], negative=["bird"]).mask(7)
    assert np.array_equal(mask, expected)


def test_compressed_rle_and_other_categories_ignored(coco_file, tmp_path):
    assert np.array_equal(CocoDataset(coco_file, tmp_path, positive=["tree"]).mask(7), np.eye(10, 12))
    assert CocoDataset(coco_file, tmp_path, positive=["bird"]).mask(7).sum() == 4


def test_images_and_category_names(coco_file, tmp_path):
    dataset = CocoDataset(coco_file, tmp_path)
    assert dataset.category_names() == ["sky", "bird", "tree"]
    assert dataset.images() == [CocoImage(7, "a.jpg", (tmp_path / "a.jpg").resolve(), 10, 12)]


def test_unknown_category(coco_file, tmp_path):
    with pytest.raises(
        InputError, match=r"ann\.json: unknown category 'cloud' \(categories in the file: 'sky', 'bird', 'tree'\)"
    ):
        CocoDataset(coco_file, tmp_path, positive=["sky"], negative=["cloud"])


def test_no_positive_category(coco_file, tmp_path):
    with pytest.raises(InputError, match="no positive category given"):
        CocoDataset(coco_file, tmp_path, positive=[])


@pytest.mark.parametrize("file_name", ["../escape.jpg", "/etc/passwd", "sub/../../x.jpg"])
def test_file_names_outside_the_root_are_rejected(coco_file, tmp_path, file_name):
    data = json.loads(coco_file.read_text())
    data["images"][0]["file_name"] = file_name
    coco_file.write_text(json.dumps(data))
    (tmp_path / "root").mkdir()
    with pytest.raises(InputError, match=rf"image '{file_name}': image path escapes the image root"):
        CocoDataset(coco_file, tmp_path / "root")


def test_symlink_out_of_the_root_is_rejected(coco_file, tmp_path):
    (tmp_path / "root").mkdir()
    (tmp_path / "root" / "a.jpg").symlink_to(tmp_path / "elsewhere.jpg")
    with pytest.raises(InputError, match="image 'a.jpg': image path escapes the image root"):
        CocoDataset(coco_file, tmp_path / "root")


def test_invalid_json(tmp_path):
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(InputError, match=r"bad\.json: invalid JSON \(Expecting property name"):
        CocoDataset(tmp_path / "bad.json", tmp_path)


def test_not_coco_and_missing_file(tmp_path):
    (tmp_path / "other.json").write_text(json.dumps({"images": []}))
    missing_keys = r"other\.json: not a COCO annotation file \(missing annotations, categories\)"
    with pytest.raises(InputError, match=missing_keys):
        CocoDataset(tmp_path / "other.json", tmp_path)
    with pytest.raises(InputError, match=r"gone\.json: annotation file not found"):
        CocoDataset(tmp_path / "gone.json", tmp_path)


def test_malformed_segmentation(coco_file, tmp_path):
    data = json.loads(coco_file.read_text())
    data["annotations"][0]["segmentation"] = {"size": [10, 12], "counts": 5}
    coco_file.write_text(json.dumps(data))
    with pytest.raises(InputError, match=r"ann\.json: annotation 1: invalid segmentation"):
        CocoDataset(coco_file, tmp_path).mask(7)


def test_malformed_entries(coco_file, tmp_path):
    data = json.loads(coco_file.read_text())
    del data["images"][0]["height"]
    coco_file.write_text(json.dumps(data))
    with pytest.raises(InputError, match=r"ann\.json: images\[0\]: missing or invalid field 'height'"):
        CocoDataset(coco_file, tmp_path)
    data = json.loads(coco_file.read_text())
    data["images"][0]["height"] = 10
    del data["annotations"][2]["category_id"]
    coco_file.write_text(json.dumps(data))
    with pytest.raises(InputError, match=r"ann\.json: annotations\[2\]: needs image_id and category_id"):
        CocoDataset(coco_file, tmp_path)
    data = json.loads(coco_file.read_text())
    data["annotations"][2]["category_id"] = 2
    del data["categories"][1]["name"]
    coco_file.write_text(json.dumps(data))
    with pytest.raises(InputError, match=r"ann\.json: categories\[1\]: missing or invalid field 'name'"):
        CocoDataset(coco_file, tmp_path)


def test_write_masks_reports_wrong_sizes(coco_file, tmp_path):
    from tfsky.io.writers import write_jpeg

    write_jpeg(tmp_path / "a.jpg", np.zeros((5, 5, 3), np.uint8))
    report = write_masks(coco_file, tmp_path, tmp_path / "out")
    assert report.written == []
    assert report.skipped == [("a.jpg", "image is 5x5 but the annotations say 12x10")]
