"""COCO -> TFRecord conversion end to end: round trips, bad input, shards, failures, exit codes."""

import glob
import io
import json
import os
import signal
import subprocess
import sys
import time

import cv2
import numpy as np
import pytest
import tensorflow as tf

from polarmask_tf.cli import create_tfrecords as create_command
from polarmask_tf.data import coco, records_writer, synthetic, tfrecord

from conftest import shared_path

try:
    from PIL import Image
except ImportError:  # Pillow comes with matplotlib; without it there is no CMYK JPEG to test
    Image = None

H, W = 48, 64
SQUARE = [10.5, 10.5, 30.5, 10.5, 30.5, 30.5, 10.5, 30.5]


def _read_shards(paths):
    """{image id: parsed example (eager tensors)} over TFRecord files."""
    parsed = (tfrecord.parse_example(s) for s in tf.data.TFRecordDataset([str(p) for p in paths]))
    return {int(p["image_id"]): p for p in parsed}


def _tf_rgb(parsed):
    return tf.io.decode_image(parsed["encoded"], channels=3, expand_animations=False).numpy()


def _shoelace(p):
    x, y = p[:, 0], p[:, 1]
    return 0.5 * np.sum(x * np.roll(y, -1) - np.roll(x, -1) * y)


def _centroid(p):
    """Area centroid of a polygon [V, 2] in float64 (independent of geometry.mass_center)."""
    p = np.asarray(p, np.float64)
    q = p - p[0]
    x, y, xn, yn = q[:, 0], q[:, 1], np.roll(q[:, 0], -1), np.roll(q[:, 1], -1)
    cross = x * yn - xn * y
    return np.array([np.sum((x + xn) * cross), np.sum((y + yn) * cross)]) / (3 * np.sum(cross)) + p[0]


def _expected_parts(segmentation, height, width):
    """COCO polygon list -> parts in this project's frame (minus 0.5, clipped), largest first."""
    parts = []
    for flat in segmentation:
        p = np.asarray(flat, np.float64).reshape(-1, 2) - 0.5
        parts.append(np.stack([p[:, 0].clip(-0.5, width - 0.5), p[:, 1].clip(-0.5, height - 0.5)], axis=1))
    return sorted(parts, key=lambda p: -abs(_shoelace(p)))


def _check_round_trip(data, records, min_area=coco.DEFAULT_MIN_AREA):
    """Every kept instance of `data` (a COCO dict) equals its source polygons in `records`."""
    labels = {c["id"]: i + 1 for i, c in enumerate(sorted(data["categories"], key=lambda c: c["id"]))}
    by_image = {}
    for annotation in data["annotations"]:
        by_image.setdefault(annotation["image_id"], []).append(annotation)
    checked = 0
    for image in data["images"]:
        parsed = records[image["id"]]
        kept = [a for a in by_image.get(image["id"], []) if not a["iscrowd"] and a["area"] >= min_area]
        assert parsed["labels"].numpy().tolist() == [labels[a["category_id"]] for a in kept]
        assert parsed["category_ids"].numpy().tolist() == [a["category_id"] for a in kept]
        assert (int(parsed["height"]), int(parsed["width"])) == (image["height"], image["width"])
        for index, annotation in enumerate(kept):
            expected = _expected_parts(annotation["segmentation"], image["height"], image["width"])
            stored = tfrecord.instance_parts(parsed, index)
            assert len(stored) == len(expected), annotation["id"]
            for got, want in zip(stored, expected, strict=True):
                np.testing.assert_allclose(got, want, atol=1e-3, err_msg=str(annotation["id"]))
            everything = np.concatenate(expected)
            box = np.concatenate([everything.min(axis=0), everything.max(axis=0)])
            np.testing.assert_allclose(parsed["boxes"][index], box, atol=1e-3)
            np.testing.assert_allclose(parsed["mass_centers"][index], _centroid(expected[0]), atol=1e-3)
            assert float(parsed["areas"][index]) == pytest.approx(annotation["area"], rel=1e-6)
            checked += 1
    return checked


def _convert(tmp_path, annotations, images_dir, name="train", num_shards=2, **kwargs):
    prefix = str(tmp_path / "out" / name)
    kwargs.setdefault("num_workers", 0)
    report = records_writer.convert(
        str(annotations), str(images_dir), prefix, num_shards, progress_stream=io.StringIO(), **kwargs
    )
    return prefix, report


# --------------------------------------------------------------------------------------------
# Round trips


@pytest.fixture(scope="module")
def coco128(tmp_path_factory):
    annotations = shared_path("data", "coco128", "annotations", "instances_train2017.json")
    images_dir = shared_path("data", "coco128", "train2017")
    prefix, report = _convert(tmp_path_factory.mktemp("coco128"), annotations, images_dir, num_shards=4)
    return json.loads(annotations.read_text()), prefix, report


@pytest.mark.slow
def test_coco128_round_trip(coco128):
    data, prefix, report = coco128
    records = _read_shards(report["shards"])
    assert sorted(records) == sorted(image["id"] for image in data["images"])
    checked = _check_round_trip(data, records)
    assert checked == report["annotations"]["written"] == 925
    assert report["annotations"]["skipped"]["counts"] == {"crowd": 10, "small_area": 4}
    assert report["images"]["skipped"]["counts"] == {}
    assert report["dropped_parts_of_kept_annotations"]["counts"] == {}
    assert coco.read_label_map(f"{prefix}-labels.json").num_classes == 80


def test_coco128_records_hold_what_coco_py_computes(coco128):
    data, _, report = coco128
    records = _read_shards(report["shards"])
    dataset = coco.load_coco(str(shared_path("data", "coco128", "annotations", "instances_train2017.json")))
    labels = coco.LabelMap.from_coco_categories(data["categories"])
    for image_id, parsed in records.items():
        image = dataset.imgs[image_id]
        instances = coco.image_instances(dataset.imgToAnns[image_id], image["height"], image["width"], labels)
        for key in ("labels", "category_ids", "boxes", "areas", "mass_centers"):
            np.testing.assert_array_equal(parsed[key].numpy(), instances[key])
        stored = open(os.path.join(shared_path("data", "coco128", "train2017"), image["file_name"]), "rb").read()
        assert parsed["encoded"].numpy() == stored and parsed["format"].numpy() == b"jpeg"


@pytest.fixture(scope="module")
def synthetic_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic")
    synthetic.generate_dataset(str(root), num_images=6, seed=3, val_fraction=0.0, min_size=96, max_size=128)
    return root


def test_synthetic_round_trip_never_skips(synthetic_data, tmp_path):
    annotations = synthetic_data / "annotations" / "instances_train.json"
    prefix, report = _convert(tmp_path, annotations, synthetic_data / "train", num_shards=2)
    data = json.loads(annotations.read_text())
    assert _check_round_trip(data, _read_shards(report["shards"])) == len(data["annotations"])
    assert report["images"]["written"] == 6
    assert report["images"]["skipped"]["counts"] == report["annotations"]["skipped"]["counts"] == {}
    assert report["dropped_parts_of_kept_annotations"]["counts"] == {}


@pytest.mark.slow
def test_worker_processes_write_the_same_shards_as_the_main_process(synthetic_data, tmp_path, capsys):
    annotations = synthetic_data / "annotations" / "instances_train.json"
    _, in_process = _convert(tmp_path, annotations, synthetic_data / "train", name="main", num_shards=3)
    prefix = str(tmp_path / "out" / "pool")
    argv = ["--annotations", str(annotations), "--images-dir", str(synthetic_data / "train"), "--output-prefix", prefix]
    assert create_command.main(argv + ["--num-shards", "3", "--num-workers", "2"]) == 0
    pooled = records_writer.shard_paths(prefix, 3)
    # Compared parsed: Example bytes order the feature map by string hash, which varies by process.
    for a, b in zip(in_process["shards"], pooled, strict=True):
        records_a, records_b = _read_shards([a]), _read_shards([b])
        assert list(records_a) == list(records_b)
        for image_id, parsed in records_a.items():
            for key, value in parsed.items():
                np.testing.assert_array_equal(value.numpy(), records_b[image_id][key].numpy(), err_msg=key)
    out = capsys.readouterr().out
    assert "images written: 6 of 6" in out and pooled[2] in out


# --------------------------------------------------------------------------------------------
# Bad input, end to end


def _pattern(height=H, width=W, seed=0):
    """A smooth RGB uint8 image [height, width, 3]."""
    x, y = np.meshgrid(np.linspace(0, 1, width), np.linspace(0, 1, height))
    phase = np.random.default_rng(seed).uniform(0, 6, 3)
    return (127.5 + 120 * np.sin(3 * x[..., None] + 2 * y[..., None] + phase)).astype(np.uint8)


def _write(path, pixels_bgr, params=()):
    assert cv2.imwrite(str(path), pixels_bgr, list(params))


def _build_bad_dataset(root):
    """Images and annotations, one image per kind of image-level trouble, every image with a good
    square annotation; image 1 also carries one annotation per kind of annotation-level trouble.
    Returns {image id: expected RGB pixels} for the images whose pixels the tests check."""
    images_dir = root / "images"
    images_dir.mkdir()
    rgb = _pattern()
    best_jpeg = [cv2.IMWRITE_JPEG_QUALITY, 100, cv2.IMWRITE_JPEG_SAMPLING_FACTOR, cv2.IMWRITE_JPEG_SAMPLING_FACTOR_444]
    _write(images_dir / "good.jpg", rgb[..., ::-1], best_jpeg)
    _write(images_dir / "full.jpg", cv2.resize(rgb, (640, 480))[..., ::-1])
    (images_dir / "truncated.jpg").write_bytes((images_dir / "full.jpg").read_bytes()[:5000])
    _write(images_dir / "gray.jpg", rgb[..., 0], best_jpeg)
    rgba = np.dstack([rgb[..., ::-1], np.arange(H * W, dtype=np.uint8).reshape(H, W)])
    _write(images_dir / "rgba.png", rgba)
    rgb16 = rgb.astype(np.uint16) * 256 + 255
    _write(images_dir / "deep.png", rgb16[..., ::-1])
    _write(images_dir / "empty.png", rgb[..., ::-1])
    _write(images_dir / "crowd.png", rgb[..., ::-1])
    _write(images_dir / "small.png", rgb[: H // 2, : W // 2, ::-1])
    (images_dir / "text.jpg").write_text("this is not an image\n")
    expected = {1: rgb, 4: np.repeat(rgb[..., :1], 3, axis=-1), 5: rgb, 6: rgb}
    files = {1: "good.jpg", 2: "missing.jpg", 3: "truncated.jpg", 4: "gray.jpg", 5: "rgba.png", 6: "deep.png",
             8: "empty.png", 9: "crowd.png", 10: "small.png", 11: "text.jpg"}
    if Image is not None:
        Image.fromarray(rgb).convert("CMYK").save(images_dir / "cmyk.jpg", "JPEG", quality=100)
        files[7], expected[7] = "cmyk.jpg", rgb

    def annotation(annotation_id, image_id, segmentation, category_id=1, iscrowd=0):
        return {"id": annotation_id, "image_id": image_id, "category_id": category_id, "segmentation": segmentation,
                "area": 400.0, "bbox": [10, 10, 20, 20], "iscrowd": iscrowd}

    annotations = [annotation(100 + i, i, [SQUARE]) for i in files if i not in (8, 9)]
    annotations += [
        annotation(901, 1, [[10.5, 10.5, 30.5, 30.5]]),  # 2 points
        annotation(902, 1, [[10.5, 10.5, 40.5, 40.5, 40.5, 10.5, 10.5, 20.5]]),  # bow-tie: kept
        annotation(903, 1, [[10.5, 10.5, float("nan"), 30.5, 10.5, 30.5]]),
        annotation(904, 1, [[100.5, 10.5, 120.5, 10.5, 120.5, 30.5]]),  # right of the image
        annotation(905, 1, [SQUARE], category_id=77),
        annotation(906, 9, [SQUARE], iscrowd=1),
        annotation(907, 9, {"size": [H, W], "counts": [0, H * W]}, iscrowd=1),
        annotation(908, 42, [SQUARE]),  # an image that is not in the json
    ]
    data = {
        "images": [{"id": i, "file_name": name, "height": H, "width": W} for i, name in files.items()],
        "annotations": annotations,
        "categories": [{"id": 1, "name": "thing"}, {"id": 5, "name": "other"}],
    }
    (root / "instances.json").write_text(json.dumps(data))
    return expected


@pytest.fixture(scope="module")
def bad(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad")
    expected = _build_bad_dataset(root)
    prefix, report = _convert(root, root / "instances.json", root / "images", num_shards=3)
    _, skip_empty = _convert(
        root, root / "instances.json", root / "images", name="train_nonempty", num_shards=1, skip_empty=True
    )
    return {"root": root, "expected": expected, "report": report, "records": _read_shards(report["shards"]),
            "skip_empty": skip_empty, "skip_empty_records": _read_shards(skip_empty["shards"])}


GOOD_IMAGES = {1, 4, 5, 6, 8, 9}


def _assert_skipped(report, section, reason, ids):
    assert report[section]["skipped"]["counts"][reason] == len(ids)
    assert report[section]["skipped"]["examples"][reason] == ids


def _assert_good_images_written(bad):
    assert GOOD_IMAGES <= set(bad["records"])
    for image_id in GOOD_IMAGES - {8, 9}:
        assert 1 in bad["records"][image_id]["labels"].numpy().tolist()


def test_missing_image_file_is_skipped(bad):
    _assert_skipped(bad["report"], "images", "missing_image", [2])
    assert 102 in bad["report"]["annotations"]["skipped"]["examples"]["image_skipped"]
    _assert_good_images_written(bad)


def test_truncated_jpeg_is_skipped(bad):
    _assert_skipped(bad["report"], "images", "corrupt_image", [3])
    _assert_good_images_written(bad)


def test_a_file_that_is_not_an_image_is_skipped(bad):
    _assert_skipped(bad["report"], "images", "undecodable_image", [11])


def test_an_image_whose_size_differs_from_the_json_is_skipped(bad):
    _assert_skipped(bad["report"], "images", "size_mismatch", [10])


@pytest.mark.parametrize("image_id, file_format", [(1, b"jpeg"), (4, b"jpeg"), (5, b"png"), (6, b"png"), (7, b"png")])
def test_stored_bytes_decode_with_tensorflow_to_the_source_rgb(bad, image_id, file_format):
    if image_id == 7 and Image is None:
        pytest.skip("Pillow is not installed: no CMYK JPEG to test")
    parsed = bad["records"][image_id]
    assert parsed["format"].numpy() == file_format
    pixels = _tf_rgb(parsed)
    error = np.abs(pixels.astype(int) - bad["expected"][image_id])
    if file_format == b"png" and image_id != 7:
        assert error.max() == 0
    else:  # JPEG at quality 100 without chroma subsampling: rounding only
        assert error.max() <= 8 and error.mean() < 1.5
    if image_id == 6:
        assert bad["report"]["reencoded_images"]["examples"]["16_bit_png"] == [6]
    if image_id == 7:
        assert bad["report"]["reencoded_images"]["examples"]["cmyk_or_unusual_jpeg"] == [7]


def test_an_image_without_annotations_is_kept_unless_skip_empty(bad):
    assert bad["records"][8]["labels"].shape == (0,)
    assert bad["records"][8]["boxes"].shape == (0, 4)
    assert 8 not in bad["skip_empty_records"]
    _assert_skipped(bad["skip_empty"], "images", "no_instances", [8, 9])
    assert {1, 4, 5, 6} <= set(bad["skip_empty_records"])


def test_an_image_with_only_crowd_annotations_is_kept_empty(bad):
    assert bad["records"][9]["labels"].shape == (0,)
    _assert_skipped(bad["report"], "annotations", "crowd", [906, 907])


def test_degenerate_annotations_are_counted_and_the_good_ones_written(bad):
    for reason, ids in [("fewer_than_3_points", [901]), ("non_finite", [903]), ("zero_size_box", [904]),
                        ("unknown_category", [905]), ("unknown_image", [908])]:
        _assert_skipped(bad["report"], "annotations", reason, ids)
    good = bad["records"][1]
    assert good["labels"].numpy().tolist() == [1, 1]  # the square and the bow-tie
    np.testing.assert_allclose(tfrecord.instance_parts(good, 1)[0][[0, 1, 3]], [[10, 10], [40, 40], [10, 20]])


def test_report_accounts_for_every_image_and_annotation(bad):
    report = bad["report"]
    images, annotations = report["images"], report["annotations"]
    assert images["written"] + sum(images["skipped"]["counts"].values()) == images["total"]
    assert annotations["written"] + sum(annotations["skipped"]["counts"].values()) == annotations["total"]
    saved = json.loads(open(f"{report['output_prefix']}-report.json").read())
    assert saved["images"] == images and saved["annotations"] == annotations


# --------------------------------------------------------------------------------------------
# Shards


def test_shards_hold_every_written_image_once_assigned_by_sorted_id(bad):
    report = bad["report"]
    assert report["shards"] == records_writer.shard_paths(report["output_prefix"], 3)
    assert report["shards"][1].endswith("train-00001-of-00003.tfrecord")
    all_ids = sorted(image["id"] for image in json.loads((bad["root"] / "instances.json").read_text())["images"])
    seen = []
    for shard, path in enumerate(report["shards"]):
        ids = list(_read_shards([path]))
        assert all(all_ids.index(i) % 3 == shard for i in ids)
        seen += ids
    assert sorted(seen) == sorted(bad["records"]) and len(seen) == report["images"]["written"]
    assert not glob.glob(str(bad["root"] / "out" / "*.tmp*"))


@pytest.mark.parametrize("error", [RuntimeError("disk on fire"), KeyboardInterrupt()])
def test_a_failure_midway_leaves_no_partial_shard(synthetic_data, tmp_path, monkeypatch, error):
    out = tmp_path / "out"
    out.mkdir()
    old_shard = out / "train-00000-of-00002.tfrecord"
    old_shard.write_bytes(b"previous run")
    calls = []
    real = coco.image_record

    def failing(*args, **kwargs):
        calls.append(1)
        if len(calls) == 4:
            raise error
        return real(*args, **kwargs)

    monkeypatch.setattr(coco, "image_record", failing)
    with pytest.raises(type(error)):
        _convert(tmp_path, synthetic_data / "annotations" / "instances_train.json", synthetic_data / "train",
                 num_shards=2, overwrite=True)
    assert sorted(os.listdir(out)) == ["train-00000-of-00002.tfrecord"]
    assert old_shard.read_bytes() == b"previous run"


# --------------------------------------------------------------------------------------------
# Command line


def test_a_json_that_is_not_coco_exits_2_naming_the_file(tmp_path, capsys):
    path = tmp_path / "labels.json"
    path.write_text('{"labels": []}')
    argv = ["--annotations", str(path), "--images-dir", str(tmp_path), "--output-prefix", str(tmp_path / "out" / "x")]
    assert create_command.main(argv) == 2
    err = capsys.readouterr().err
    assert str(path) in err and "'images'" in err
    assert create_command.main(["--annotations", str(tmp_path / "absent.json")] + argv[2:]) == 2
    assert "absent.json" in capsys.readouterr().err
    assert not (tmp_path / "out").exists() or not os.listdir(tmp_path / "out")


def test_no_record_written_exits_1_without_shards(synthetic_data, tmp_path, capsys):
    prefix = tmp_path / "out" / "train"
    argv = ["--annotations", str(synthetic_data / "annotations" / "instances_train.json"), "--images-dir",
            str(tmp_path / "nowhere"), "--output-prefix", str(prefix), "--num-shards", "2"]
    assert create_command.main(argv) == 1
    assert sorted(os.listdir(tmp_path / "out")) == ["train-report.json"]
    assert "missing_image: 6" in capsys.readouterr().out


def test_a_given_label_map_is_reused_and_other_categories_are_skipped(synthetic_data, tmp_path):
    annotations = synthetic_data / "annotations" / "instances_train.json"
    data = json.loads(annotations.read_text())
    kept = [c for c in data["categories"] if c["id"] in (2, 5)]
    path = tmp_path / "labels.json"
    coco.write_label_map(coco.LabelMap.from_coco_categories(kept), str(path))
    report = records_writer.convert(
        str(annotations), str(synthetic_data / "train"), str(tmp_path / "out" / "x"), 1,
        progress_stream=io.StringIO(), label_map_path=str(path),
    )
    records = _read_shards(report["shards"])
    pairs = {(int(label), int(category_id)) for p in records.values()
             for label, category_id in zip(p["labels"].numpy(), p["category_ids"].numpy(), strict=True)}
    assert pairs <= {(1, 2), (2, 5)} and pairs
    others = sum(a["category_id"] not in (2, 5) for a in data["annotations"])
    assert report["annotations"]["skipped"]["counts"] == {"unknown_category": others}
    assert coco.read_label_map(report["label_map"]).to_dict() == coco.read_label_map(str(path)).to_dict()


# --------------------------------------------------------------------------------------------
# Output prefix: earlier conversions, unusable paths, termination


def test_an_earlier_conversion_into_the_prefix_is_refused_unless_overwrite(synthetic_data, tmp_path, capsys):
    annotations, images = synthetic_data / "annotations" / "instances_train.json", synthetic_data / "train"
    prefix, first = _convert(tmp_path, annotations, images, num_shards=3)
    other = tmp_path / "out" / "train-extra-00000-of-00001.tfrecord"  # another prefix: never touched
    other.write_bytes(b"other prefix")
    before = sorted(os.listdir(tmp_path / "out"))
    with pytest.raises(records_writer.OutputExistsError) as error:
        _convert(tmp_path, annotations, images, num_shards=2)
    message = str(error.value)
    assert "--overwrite" in message and "train-00002-of-00003.tfrecord" in message
    assert "train-labels.json" in message and "train-report.json" in message and "train-extra" not in message
    argv = ["--annotations", str(annotations), "--images-dir", str(images), "--output-prefix", prefix,
            "--num-shards", "2", "--num-workers", "0"]
    assert create_command.main(argv) == 2
    err = capsys.readouterr().err
    assert "train-00000-of-00003.tfrecord" in err and "--overwrite" in err
    assert sorted(os.listdir(tmp_path / "out")) == before  # refused before writing anything

    assert create_command.main(argv + ["--overwrite"]) == 0
    assert sorted(os.listdir(tmp_path / "out")) == [
        "train-00000-of-00002.tfrecord", "train-00001-of-00002.tfrecord", "train-extra-00000-of-00001.tfrecord",
        "train-labels.json", "train-report.json",
    ]
    records = _read_shards(glob.glob(prefix + "-[0-9]*-of-*.tfrecord"))
    assert len(records) == first["images"]["written"]  # each image once: the 3-shard files are gone
    assert other.read_bytes() == b"other prefix"


def test_an_output_directory_that_is_a_file_exits_2_naming_it(synthetic_data, tmp_path, capsys):
    blocker = tmp_path / "blocker"
    blocker.write_text("a file")
    annotations = str(synthetic_data / "annotations" / "instances_train.json")
    for prefix in (blocker / "train", blocker / "sub" / "train"):
        argv = ["--annotations", annotations, "--images-dir", str(synthetic_data / "train"),
                "--output-prefix", str(prefix)]
        assert create_command.main(argv) == 2
        err = capsys.readouterr().err
        assert str(blocker) in err and "is a file, not a directory" in err and "Traceback" not in err
    assert blocker.read_text() == "a file"


@pytest.mark.skipif(os.geteuid() == 0, reason="running as root: chmod 0555 does not stop root from writing")
def test_a_read_only_output_directory_exits_2_naming_it(synthetic_data, tmp_path, capsys):
    out = tmp_path / "read_only"
    out.mkdir()
    out.chmod(0o555)
    try:
        argv = ["--annotations", str(synthetic_data / "annotations" / "instances_train.json"),
                "--images-dir", str(synthetic_data / "train"), "--output-prefix", str(out / "train")]
        assert create_command.main(argv) == 2
        err = capsys.readouterr().err
        assert str(out) in err and "not writable" in err
        assert os.listdir(out) == []
    finally:
        out.chmod(0o755)


@pytest.mark.parametrize("value", ["0", "-1"])
def test_num_shards_must_be_positive(value, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        create_command.main(["--annotations", "a.json", "--images-dir", "i", "--output-prefix", "p",
                             "--num-shards", value])
    assert exit_info.value.code == 2
    assert "argument --num-shards: must be at least 1" in capsys.readouterr().err


_SLOW_CONVERSION = """
import sys, time
from polarmask_tf.data import coco
real = coco.image_record
def slow(*args, **kwargs):
    time.sleep(0.5)
    return real(*args, **kwargs)
coco.image_record = slow
from polarmask_tf.cli import create_tfrecords
sys.exit(create_tfrecords.main(sys.argv[1:]))
"""


@pytest.mark.slow
def test_sigterm_removes_the_temporaries_and_exits_143(synthetic_data, tmp_path):
    out = tmp_path / "out"
    argv = ["--annotations", str(synthetic_data / "annotations" / "instances_train.json"),
            "--images-dir", str(synthetic_data / "train"), "--output-prefix", str(out / "train"),
            "--num-shards", "2", "--num-workers", "0"]
    process = subprocess.Popen([sys.executable, "-c", _SLOW_CONVERSION, *argv], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not glob.glob(str(out / "*.tmp-*")):
            assert process.poll() is None and time.monotonic() < deadline, process.communicate()
            time.sleep(0.02)
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == create_command.TERMINATED == 143, err
    assert "terminated: no shard was written" in err and "Traceback" not in err
    assert os.listdir(out) == []
