"""The upper-bound CLI: measured IoUs, skipped-instance accounting, report, table and plot."""

import json

import numpy as np
import pytest
from pycocotools import mask as coco_mask

from polarmask_tf import geometry, upper_bound
from polarmask_tf.cli import upper_bound as upper_bound_command

from conftest import shared_path, spec_mask


def _polygon(mask):
    return [geometry.largest_contour(mask).reshape(-1).tolist()]


def _rle(mask):
    rle = coco_mask.encode(np.asfortranarray(mask.astype(np.uint8)))
    rle["counts"] = rle["counts"].decode()
    return rle


@pytest.fixture(scope="module")
def coco_file(tmp_path_factory):
    """Two 100x100 images: the spec's square, circle and L, plus one annotation per kind of bad input."""
    square, circle, shape_l = spec_mask("square"), spec_mask("circle"), spec_mask("L")
    good = [(1, _polygon(square)), (1, _polygon(circle)), (2, _polygon(shape_l))]
    bad = [
        (1, [[10, 10, 20, 20]]),  # 2 points
        (1, [[10, 10, 20, 20, 30, 30]]),  # collinear: zero area
        (1, [[10, 10, 20, float("nan"), 30, 10]]),  # NaN
        (1, {"size": [50, 50], "counts": "PP0"}),  # RLE of the wrong size
        (1, [[150, 150, 250, 150, 250, 250]]),  # entirely outside the image (near enough to rasterise)
        (1, _rle(np.pad(np.ones((1, 1)), ((40, 59), (40, 59))))),  # one pixel: contour of 1 point
        (1, _rle(np.pad(np.ones((1, 9)), ((40, 59), (40, 51))))),  # one-pixel line: zero-area contour
        (2, "not a segmentation"),
        (7, _polygon(square)),  # unknown image
    ]
    annotations = [
        {"id": i + 1, "image_id": image_id, "category_id": 1, "segmentation": seg, "iscrowd": 0}
        for i, (image_id, seg) in enumerate(good + bad)
    ]
    annotations.append({"id": 99, "image_id": 1, "category_id": 1, "segmentation": _rle(square), "iscrowd": 1})
    data = {
        "images": [{"id": 1, "width": 100, "height": 100}, {"id": 2, "width": 100, "height": 100}],
        "annotations": annotations,
        "categories": [{"id": 1, "name": "thing"}],
    }
    path = tmp_path_factory.mktemp("coco") / "instances.json"
    path.write_text(json.dumps(data))
    return path


@pytest.fixture(scope="module")
def report(coco_file):
    return upper_bound.run(str(coco_file), [18, 36, 72], ["exact", "reference"], ["mass", "box"],
                           stream=open("/dev/null", "w"))


def test_every_bad_instance_is_counted_by_reason(report):
    assert report["skipped"] == {
        "bad_segmentation": 1,
        "empty_mask": 1,
        "fewer_than_3_points": 2,  # the 2-point polygon and the one-pixel mask's contour
        "iscrowd": 1,
        "non_finite": 1,
        "rle_size_mismatch": 1,
        "unknown_image": 1,
        "zero_area": 2,  # the collinear polygon and the one-pixel line
    }
    assert report["skipped_examples"]["iscrowd"] == [99]
    assert all(r["instances"] == 3 for r in report["results"])


def test_mean_ious_equal_the_per_instance_measurements(report):
    # The file holds the masks' contours; COCO's polygon rasterisation turns them back into masks.
    masks = [
        geometry.coco_segmentation_to_mask(_polygon(spec_mask(name)), 100, 100).astype(bool)
        for name in ("square", "circle", "L")
    ]
    per_instance = [upper_bound.instance_ious(m, [36], ["exact"], ["mass"]) for m in masks]
    expected = np.mean([ious[("exact", "mass", 36)] for ious in per_instance])
    row = next(r for r in report["results"] if (r["method"], r["center"], r["num_rays"]) == ("exact", "mass", 36))
    assert row["mean_iou"] == pytest.approx(expected, abs=1e-9)
    assert 0.9 < row["mean_iou"] < 1.0
    by_key = {(r["method"], r["center"], r["num_rays"]): r["mean_iou"] for r in report["results"]}
    assert by_key[("exact", "mass", 72)] > by_key[("exact", "mass", 18)]
    assert by_key[("exact", "mass", 72)] > by_key[("reference", "mass", 72)]


def test_reference_raster_option_reproduces_the_spec_upper_bound(spec_vectors):
    # The original's pipeline, integer mass centre (41, 57) of the L: spec TV10 L/mass 36 rays = 0.8739.
    ious = upper_bound.instance_ious(spec_mask("L").astype(bool), [36], ["reference"], ["mass"], raster="reference")
    assert ious[("reference", "mass", 36)] == pytest.approx(spec_vectors["upper_bound_100px"]["iou"]["L/mass"]["36"],
                                                            abs=0.01)


def test_cli_writes_report_table_and_plot(coco_file, tmp_path, capsys):
    out, png = tmp_path / "report.json", tmp_path / "plot.png"
    code = upper_bound_command.main(
        ["--annotations", str(coco_file), "--num-rays", "18", "36", "--method", "exact", "reference",
         "--output", str(out), "--plot", str(png)]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "exact      mass" in printed and "N=36" in printed and "iscrowd: 1" in printed
    saved = json.loads(out.read_text())
    assert {(r["method"], r["num_rays"]) for r in saved["results"]} == {
        ("exact", 18), ("exact", 36), ("reference", 18), ("reference", 36)
    }
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000


def test_cli_rejects_files_that_are_not_coco(tmp_path, capsys):
    path = tmp_path / "x.json"
    path.write_text('{"hello": 1}')
    assert upper_bound_command.main(["--annotations", str(path)]) == 2
    assert "x.json is not a COCO instances file" in capsys.readouterr().err
    path.write_text("{not json")
    assert upper_bound_command.main(["--annotations", str(path)]) == 2
    assert "not valid JSON" in capsys.readouterr().err
    assert upper_bound_command.main(["--annotations", str(path), "--method", "reference", "--num-rays", "7"]) == 2
    assert "--method reference needs ray counts that divide 360" in capsys.readouterr().err


def test_ground_truth_pycocotools_cannot_rasterise_is_skipped_before_it_sees_it(tmp_path):
    square = spec_mask("square")
    good = _polygon(square)
    segmentations = [
        (good, 0),
        (good, "0"),  # a string flag: not a crowd, measured
        (good + [[10, 10, 1e12, 10, 30, 30]], 0),  # the far part is dropped, the square measured
        ([[10, 10, 1e12, 10, 30, 30]], 0),  # pycocotools would allocate 20+ GB
        ([[10, 10, 30, 1e30, 30, 30]], 0),
        (None, 0),  # segmentation: null
        ({"size": [100, 100], "counts": [5]}, 0),  # uncompressed, short: pycocotools reads garbage
        ({"size": [100, 100], "counts": "0\x7f"}, 0),  # not RLE characters
        ({"size": "100x100", "counts": "PP0"}, 0),
        (good, "yes"),
    ]
    data = {
        "images": [{"id": 1, "width": 100, "height": 100}],
        "annotations": [{"id": i + 1, "image_id": 1, "category_id": 1, "segmentation": seg, "iscrowd": crowd}
                        for i, (seg, crowd) in enumerate(segmentations)],
        "categories": [{"id": 1, "name": "thing"}],
    }
    path = tmp_path / "instances.json"
    path.write_text(json.dumps(data))
    report = upper_bound.run(str(path), [36], ["exact"], ["mass"], stream=open("/dev/null", "w"))
    assert report["skipped"] == {"far_outside_image": 2, "bad_segmentation": 1, "rle_counts_sum_mismatch": 1,
                                 "bad_rle_counts": 1, "bad_rle_size": 1, "bad_iscrowd": 1}
    assert report["skipped_examples"]["far_outside_image"] == [4, 5]
    assert report["dropped_parts"] == {"far_outside_image": 1}
    assert report["results"][0]["instances"] == 3
    assert "far_outside_image: 2" in upper_bound.format_table(report)
    assert "left out of measured instances: far_outside_image: 1" in upper_bound.format_table(report)
    single = upper_bound.instance_ious(geometry.coco_segmentation_to_mask(good, 100, 100).astype(bool), [36],
                                       ["exact"], ["mass"])[("exact", "mass", 36)]
    assert report["results"][0]["mean_iou"] == pytest.approx(single, abs=1e-9)


@pytest.mark.parametrize("argv", [["--max-instances", "0"], ["--max-instances", "-2"], ["--num-rays", "36", "0"]])
def test_cli_rejects_non_positive_counts_naming_the_flag(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        upper_bound_command.main(["--annotations", "a.json"] + argv)
    assert exit_info.value.code == 2
    assert f"argument {argv[0]}: must be at least 1" in capsys.readouterr().err


@pytest.mark.slow
def test_runs_on_real_coco_annotations():
    path = shared_path("data", "coco_mini", "annotations", "instances_val2017.json")
    result = upper_bound.run(str(path), [36], ["exact", "reference"], ["mass"], max_instances=25,
                             stream=open("/dev/null", "w"))
    ious = {r["method"]: r["mean_iou"] for r in result["results"]}
    assert result["results"][0]["instances"] + sum(result["skipped"].values()) == 25
    assert 0.7 < ious["reference"] < ious["exact"] < 0.98
