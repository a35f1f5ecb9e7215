"""Tests of the synthetic shapes dataset generator and its command-line tool."""

import json
import os

import cv2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from polarmask_tf.cli import make_synthetic
from polarmask_tf.data import synthetic

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """A 30-image dataset (24 train, 6 val) written once for the module."""
    root = tmp_path_factory.mktemp("shapes")
    summary = synthetic.generate_dataset(root, num_images=30, seed=0, val_fraction=0.2)
    return root, summary


def _load(root, split):
    return COCO(os.path.join(root, "annotations", f"instances_{split}.json"))


def _boxes_overlap(a, b):
    return a[0] < b[0] + b[2] and b[0] < a[0] + a[2] and a[1] < b[1] + b[3] and b[1] < a[1] + a[3]


def test_layout_and_image_files(dataset):
    root, summary = dataset
    assert summary["num_images"] == {"train": 24, "val": 6}
    assert sorted(os.listdir(root)) == ["annotations", "train", "val"]
    ids = []
    for split in synthetic.SPLITS:
        coco = _load(root, split)
        assert set(coco.dataset) >= {"info", "licenses", "images", "annotations", "categories"}
        assert coco.dataset["categories"] == [dict(c) for c in synthetic.CATEGORIES]
        assert sorted(os.listdir(os.path.join(root, split))) == sorted(
            image["file_name"] for image in coco.dataset["images"]
        )
        for image in coco.dataset["images"]:
            ids.append(image["id"])
            assert image["file_name"] == f"{image['id']:06d}.jpg"
            pixels = cv2.imread(os.path.join(root, split, image["file_name"]))
            assert pixels.shape == (image["height"], image["width"], 3)
            assert 192 <= image["width"] <= 320 and 192 <= image["height"] <= 320
    assert ids == list(range(1, 31))
    sizes = {(i["width"], i["height"]) for i in _load(root, "train").dataset["images"]}
    assert len(sizes) > 10


def test_annotation_ids_unique_and_fields_valid(dataset):
    root, _ = dataset
    annotations = [a for s in synthetic.SPLITS for a in _load(root, s).dataset["annotations"]]
    assert [a["id"] for a in annotations] == list(range(1, len(annotations) + 1))
    for annotation in annotations:
        assert annotation["iscrowd"] == 0
        assert annotation["category_id"] in range(1, 8)
        assert annotation["area"] >= synthetic.MIN_VISIBLE_AREA
        assert annotation["segmentation"]
        for part in annotation["segmentation"]:
            assert len(part) >= 6 and len(part) % 2 == 0
            assert cv2.contourArea(np.array(part, np.float32).reshape(-1, 2)) > 0


def test_polygons_match_area_and_lie_in_bbox(dataset):
    root, _ = dataset
    for split in synthetic.SPLITS:
        coco = _load(root, split)
        for annotation in coco.dataset["annotations"]:
            image = coco.imgs[annotation["image_id"]]
            rles = mask_utils.frPyObjects(
                annotation["segmentation"], image["height"], image["width"]
            )
            raster = mask_utils.decode(mask_utils.merge(rles))
            polygon_area = int(raster.sum())
            # the outlines enclose exactly the visible pixels; pycocotools rounds a rare corner pixel
            assert abs(polygon_area - annotation["area"]) <= 2
            x, y, w, h = annotation["bbox"]
            for part in annotation["segmentation"]:
                points = np.array(part).reshape(-1, 2)
                # outlines run along the pixels' edges, which COCO's bbox [x, x + w] spans too
                assert points[:, 0].min() >= x and points[:, 0].max() <= x + w
                assert points[:, 1].min() >= y and points[:, 1].max() <= y + h
            assert coco.annToMask(annotation).shape == (image["height"], image["width"])


def test_all_categories_appear(dataset):
    root, summary = dataset
    train_and_val = {
        name: summary["num_instances"]["train"][name] + summary["num_instances"]["val"][name]
        for name in synthetic.SHAPE_NAMES
    }
    assert all(count > 0 for count in train_and_val.values()), train_and_val
    recorded = {
        a["category_id"] for s in synthetic.SPLITS for a in _load(root, s).dataset["annotations"]
    }
    assert recorded == set(range(1, 8))


def test_instances_overlap_in_the_json(dataset):
    root, _ = dataset
    coco = _load(root, "train")
    overlapping = 0
    for image_id in coco.imgs:
        boxes = [a["bbox"] for a in coco.loadAnns(coco.getAnnIds(imgIds=image_id))]
        overlapping += sum(
            _boxes_overlap(a, b) for i, a in enumerate(boxes) for b in boxes[i + 1:]
        )
    assert overlapping > 0


def test_draw_image_contract_and_occlusion():
    occluded = 0
    for index in range(10):
        image, instances = synthetic.render_image(seed=1, index=index)
        height, width = image.shape[:2]
        assert image.dtype == np.uint8 and image.shape == (height, width, 3)
        assert len(instances) >= 2
        union = np.zeros((height, width), np.int32)
        for instance in instances:
            mask = instance["mask"]
            assert mask.dtype == bool and mask.shape == (height, width)
            assert instance["area"] == np.count_nonzero(mask)
            assert instance["area"] >= synthetic.MIN_VISIBLE_FRACTION * instance["full_area"]
            assert all(p.dtype == np.float32 and p.ndim == 2 and p.shape[1] == 2
                       for p in instance["polygons"])
            ys, xs = np.nonzero(mask)
            x, y, w, h = instance["bbox"]
            assert (x, y, x + w - 1, y + h - 1) == (xs.min(), ys.min(), xs.max(), ys.max())
            union += mask
            occluded += instance["area"] < instance["full_area"]
        assert union.max() == 1
    assert occluded > 0


def test_shapes_stand_out_from_their_surroundings():
    contrasts = []
    for index in range(10):
        image, instances = synthetic.render_image(seed=2, index=index)
        pixels = image.astype(np.float64)
        for instance in instances:
            mask = instance["mask"].astype(np.uint8)
            ring = cv2.dilate(mask, np.ones((7, 7), np.uint8)).astype(bool) & ~instance["mask"]
            inside = pixels[instance["mask"]].mean(axis=0)
            contrasts.append(np.linalg.norm(inside - pixels[ring].mean(axis=0)))
    assert np.percentile(contrasts, 5) > 60


def test_same_seed_is_byte_identical_and_other_seed_differs(tmp_path):
    runs = {}
    for name, seed in [("a", 3), ("b", 3), ("c", 4)]:
        synthetic.generate_dataset(tmp_path / name, num_images=4, seed=seed, val_fraction=0.25)
        runs[name] = {
            "json": [(tmp_path / name / "annotations" / f"instances_{s}.json").read_bytes()
                     for s in synthetic.SPLITS],
            "pixels": [cv2.imread(str(path)) for s in synthetic.SPLITS
                       for path in sorted((tmp_path / name / s).iterdir())],
        }
    assert runs["a"]["json"] == runs["b"]["json"]
    assert all(np.array_equal(p, q) for p, q in zip(runs["a"]["pixels"], runs["b"]["pixels"], strict=True))
    assert runs["a"]["json"] != runs["c"]["json"]
    assert not any(np.array_equal(p, q) for p, q in zip(runs["a"]["pixels"], runs["c"]["pixels"], strict=True))


def test_image_content_does_not_depend_on_the_split(tmp_path):
    synthetic.generate_dataset(tmp_path / "all_train", num_images=3, seed=5, val_fraction=0.0)
    synthetic.generate_dataset(tmp_path / "split", num_images=3, seed=5, val_fraction=0.5)
    assert (tmp_path / "all_train" / "train" / "000003.jpg").read_bytes() == (
        tmp_path / "split" / "val" / "000003.jpg"
    ).read_bytes()
    empty_val = json.loads(
        (tmp_path / "all_train" / "annotations" / "instances_val.json").read_text()
    )
    assert empty_val["images"] == [] and empty_val["annotations"] == []


@pytest.mark.parametrize(
    "kwargs",
    [
        {"num_images": 0},
        {"num_images": 4, "min_size": 300, "max_size": 200},
        {"num_images": 4, "min_size": 32, "max_size": 200},
        {"num_images": 4, "val_fraction": 1.0},
        {"num_images": 4, "val_fraction": -0.1},
        {"num_images": 1, "val_fraction": 0.6},
        {"num_images": 4, "seed": -1},
    ],
)
def test_invalid_arguments_raise(tmp_path, kwargs):
    with pytest.raises(ValueError):
        synthetic.generate_dataset(tmp_path, **kwargs)
    assert not os.listdir(tmp_path)


def test_cli_writes_layout_and_reports_counts(tmp_path, capsys):
    output = tmp_path / "cli"
    argv = ["--output-dir", str(output), "--num-images", "6", "--seed", "0", "--val-fraction", "0.34",
            "--min-size", "96", "--max-size", "128"]
    assert make_synthetic.main(argv) == 0
    train_files = sorted(p.name for p in (output / "train").iterdir())
    assert train_files == [f"{i:06d}.jpg" for i in range(1, 5)]
    assert sorted(p.name for p in (output / "val").iterdir()) == ["000005.jpg", "000006.jpg"]
    assert (output / "annotations" / "instances_train.json").is_file()
    assert (output / "annotations" / "instances_val.json").is_file()
    printed = capsys.readouterr().out
    assert str(output) in printed and "U-shape" in printed
    train = json.loads((output / "annotations" / "instances_train.json").read_text())
    for image in train["images"]:
        assert 96 <= image["width"] <= 128 and 96 <= image["height"] <= 128


def test_cli_rejects_invalid_arguments(tmp_path, capsys):
    assert make_synthetic.main(["--output-dir", str(tmp_path), "--num-images", "0"]) != 0
    assert "num_images" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        make_synthetic.main(["--output-dir", str(tmp_path), "--num-images", "three"])
    assert exit_info.value.code != 0


@settings(max_examples=15, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    width=st.integers(64, 200),
    height=st.integers(64, 200),
)
def test_draw_image_invariants(seed, width, height):
    image, instances = synthetic.draw_image(np.random.default_rng(seed), width, height)
    assert image.shape == (height, width, 3)
    covered = np.zeros((height, width), bool)
    for instance in instances[::-1]:
        mask = instance["mask"]
        assert not np.any(mask & covered)
        covered |= mask
        assert instance["area"] >= max(synthetic.MIN_VISIBLE_AREA,
                                       synthetic.MIN_VISIBLE_FRACTION * instance["full_area"])
        raster = synthetic.outlines_to_mask(instance["polygons"], height, width)
        assert np.count_nonzero(raster != mask) <= synthetic.MAX_POLYGON_ERROR * instance["area"]
        x, y, w, h = instance["bbox"]
        assert w <= 0.6 * width + 2 and h <= 0.6 * height + 2
