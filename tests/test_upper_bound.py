"""The upper-bound CLI: measured IoUs, skipped-instance accounting, report, table and plot."""

import json

import cv2
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
        (1, _rle(np.pad(np.ones((1, 3)), ((40, 59), (40, 57))))),  # 3 pixels: below the conversion's 16 px^2
        (2, "not a segmentation"),
        (7, _polygon(square)),  # unknown image
    ]
    annotations = [
        {"id": i + 1, "image_id": image_id, "category_id": 1, "segmentation": seg, "iscrowd": 0,
         "area": 3.0 if isinstance(seg, dict) and seg.get("size") == [100, 100] else 400.0}
        for i, (image_id, seg) in enumerate(good + bad)
    ]
    annotations.append({"id": 99, "image_id": 1, "category_id": 1, "segmentation": _rle(square), "iscrowd": 1,
                        "area": 1600.0})
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
        "fewer_than_3_points": 1,
        "iscrowd": 1,
        "non_finite": 1,
        "rle_size_mismatch": 1,
        "small_area": 1,  # the conversion's minimum, 16 px^2 of COCO area
        "unknown_image": 1,
        "zero_area": 1,  # the collinear polygon
        "zero_size_box": 1,  # the polygon outside the image, clipped to its edge by the conversion
    }
    assert report["skipped_examples"]["iscrowd"] == [99]
    assert all(r["instances"] == 3 for r in report["results"])


def test_mean_ious_equal_the_per_instance_measurements(report):
    # Each instance as the conversion reads it, against COCO's rasterisation of its polygon.
    per_instance = []
    for name in ("square", "circle", "L"):
        annotation = {"id": 1, "category_id": 1, "segmentation": _polygon(spec_mask(name)), "area": 400.0}
        part, centres, _ = upper_bound.pipeline_instance(annotation, 100, 100, upper_bound._label_map(
            {"annotations": [annotation]}), 16.0)
        mask = geometry.coco_segmentation_to_mask(annotation["segmentation"], 100, 100).astype(bool)
        per_instance.append(upper_bound.instance_ious(mask, [36], ["exact"], ["mass"], part, centres))
    expected = np.mean([ious[("exact", "mass", 36)] for ious in per_instance])
    row = next(r for r in report["results"] if (r["method"], r["center"], r["num_rays"]) == ("exact", "mass", 36))
    assert row["mean_iou"] == pytest.approx(expected, abs=1e-9)
    assert 0.9 < row["mean_iou"] < 1.0
    by_key = {(r["method"], r["center"], r["num_rays"]): r["mean_iou"] for r in report["results"]}
    assert by_key[("exact", "mass", 72)] > by_key[("exact", "mass", 18)]
    assert by_key[("exact", "mass", 72)] > by_key[("reference", "mass", 72)]
    # Every instance's IoUs are in the report, and the size classes split the mean.
    assert [i["id"] for i in report["per_instance"]] == [1, 2, 3]
    assert [i["iou"]["exact/mass/36"] for i in report["per_instance"]] == pytest.approx(
        [ious[("exact", "mass", 36)] for ious in per_instance], abs=1e-12)
    assert {i["size"] for i in report["per_instance"]} == {"small"}  # COCO area 400 < 32^2
    assert row["by_size"] == {"small": {"mean_iou": row["mean_iou"], "instances": 3},
                              "medium": {"mean_iou": None, "instances": 0},
                              "large": {"mean_iou": None, "instances": 0}}


def test_size_classes_are_cocos():
    assert [upper_bound.size_class(a) for a in (0, 1023.9, 1024, 9215.9, 9216, 1e9)] == [
        "small", "small", "medium", "medium", "large", "large"]


def test_reference_method_reproduces_the_spec_upper_bound(spec_vectors):
    # The original's whole method on its spec masks: its contour, integer mass centre, vertex bins,
    # truncate-and-drawContours. Spec TV10 at 36 rays (e.g. L/mass = 0.8739 from the centre (41, 57)).
    for name in ("square", "circle", "L", "U", "wide_rect"):
        for center in ("mass", "box"):
            ious = upper_bound.instance_ious(spec_mask(name).astype(bool), [36], ["reference"], [center])
            expected = spec_vectors["upper_bound_100px"]["iou"][f"{name}/{center}"]["36"]
            assert ious[("reference", center, 36)] == pytest.approx(expected, abs=0.01), (name, center)


def test_a_mask_alone_is_measured_as_an_rle_annotation_would_be():
    # Without the conversion's part, instance_ious takes the mask's pixel-edge outline: the exact
    # rays of an axis-aligned square from its centre end on the square's outline, so the
    # rasterised 36-gon keeps (nearly) every pixel; the old pixel-centre contour lost its rim.
    square = np.zeros((60, 60), bool)
    square[20:36, 20:36] = True  # 16 x 16
    ious = upper_bound.instance_ious(square, [36], ["exact", "reference", "reference_exact"], ["mass"])
    assert ious[("exact", "mass", 36)] > 0.97
    assert ious[("reference_exact", "mass", 36)] > ious[("reference", "mass", 36)]


def test_an_instance_one_method_cannot_measure_is_skipped_for_every_row(tmp_path):
    square, line = spec_mask("square"), np.pad(np.ones((1, 20)), ((40, 59), (40, 40)))
    data = {
        "images": [{"id": 1, "width": 100, "height": 100}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "segmentation": _rle(square), "area": 1600.0},
                        {"id": 2, "image_id": 1, "category_id": 1, "segmentation": _rle(line), "area": 20.0}],
    }
    path = tmp_path / "instances.json"
    path.write_text(json.dumps(data))
    # The line's outline is a 20 x 1 rectangle (ours measures it); the original's contour of it has no area,
    # so exact rays cannot be cast to it ("zero_area"), and neither row counts the line.
    report = upper_bound.run(str(path), [36], ["exact", "reference_exact"], ["mass"], stream=open("/dev/null", "w"))
    assert report["skipped"] == {"zero_area": 1} and [i["id"] for i in report["per_instance"]] == [1]
    assert all(r["instances"] == 1 for r in report["results"])
    alone = upper_bound.run(str(path), [36], ["exact", "reference"], ["mass"], stream=open("/dev/null", "w"))
    assert alone["skipped"] == {} and alone["results"][0]["instances"] == 2


def test_cli_writes_report_table_and_plot(coco_file, tmp_path, capsys):
    out, png = tmp_path / "report.json", tmp_path / "plot.png"
    code = upper_bound_command.main(
        ["--annotations", str(coco_file), "--num-rays", "18", "36", "--method", "exact", "reference",
         "--output", str(out), "--plot", str(png)]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "exact            mass    all (3)" in printed and "small (3)" in printed and "N=36" in printed
    assert "iscrowd: 1" in printed and "reference: the original" in printed
    saved = json.loads(out.read_text())
    assert {(r["method"], r["num_rays"]) for r in saved["results"]} == {
        ("exact", 18), ("exact", 36), ("reference", 18), ("reference", 36)
    }
    assert set(saved["methods"]) == {"exact", "reference"} and saved["min_area"] == 16.0
    assert len(saved["per_instance"]) == 3 and set(saved["per_instance"][0]["iou"]) == {
        "exact/mass/18", "exact/mass/36", "reference/mass/18", "reference/mass/36"}
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000


def test_cli_min_area_and_the_removed_raster_flag(coco_file, tmp_path, capsys):
    out = tmp_path / "report.json"
    assert upper_bound_command.main(["--annotations", str(coco_file), "--num-rays", "36", "--min-area", "0",
                                     "--method", "exact", "--output", str(out)]) == 0
    saved = json.loads(out.read_text())
    assert "small_area" not in saved["skipped"] and saved["results"][0]["instances"] == 4  # the 3-pixel RLE too
    assert upper_bound_command.main(["--annotations", str(coco_file), "--raster", "reference"]) == 2
    assert "--raster was removed: each --method uses its own rasterisation" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        upper_bound_command.main(["--annotations", str(coco_file), "--min-area", "-1"])


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
        "annotations": [{"id": i + 1, "image_id": 1, "category_id": 1, "segmentation": seg, "iscrowd": crowd,
                         "area": 1600.0} for i, (seg, crowd) in enumerate(segmentations)],
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
    single = [i["iou"]["exact/mass/36"] for i in report["per_instance"]]
    assert single[0] == single[1] == single[2] and report["results"][0]["mean_iou"] == pytest.approx(single[0])


@pytest.mark.parametrize("argv", [["--max-instances", "0"], ["--max-instances", "-2"], ["--num-rays", "36", "0"]])
def test_cli_rejects_non_positive_counts_naming_the_flag(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        upper_bound_command.main(["--annotations", "a.json"] + argv)
    assert exit_info.value.code == 2
    assert f"argument {argv[0]}: must be at least 1" in capsys.readouterr().err


# ------------------------------------------------------------------ coco_mini val2017, computed independently
# Both methods written again here from their definitions with numpy and OpenCV only (no polarmask_tf
# function): the tool's rows must agree with them on real COCO annotations.


def _shoelace(points):
    """(signed area, area centroid) of a polygon [V, 2], float64."""
    x, y = points[:, 0], points[:, 1]
    x_next, y_next = np.roll(x, -1), np.roll(y, -1)
    cross = x * y_next - x_next * y
    area = cross.sum() / 2
    return area, np.array([((x + x_next) * cross).sum(), ((y + y_next) * cross).sum()]) / (6 * area)


def _cast_rays(polygon, origin, num_rays):
    """Farthest crossing of each ray origin + t (cos, sin)(2 pi k / N), t >= 0, with the polygon's edges."""
    angles = 2 * np.pi * np.arange(num_rays) / num_rays
    ux, uy = np.cos(angles)[:, None], np.sin(angles)[:, None]
    start = polygon - origin
    edge = np.roll(polygon, -1, axis=0) - polygon
    # t u - s e = start, by Cramer's rule
    det = -ux * edge[None, :, 1] + uy * edge[None, :, 0]
    ok = np.abs(det) > 1e-12
    det = np.where(ok, det, 1.0)
    t = (-start[None, :, 0] * edge[None, :, 1] + start[None, :, 1] * edge[None, :, 0]) / det
    s = (ux * start[None, :, 1] - uy * start[None, :, 0]) / det
    hit = ok & (t >= 0) & (s >= -1e-9) & (s <= 1 + 1e-9)
    return np.maximum(np.where(hit, t, 0.0).max(axis=1), 1e-6)


def _pixel_centres_in(polygon, xs, ys, tol=1e-3):
    """bool [len(ys), len(xs)]: pixel centres (x, y) inside the polygon (odd number of edges crossed by
    the ray towards +x) or within tol of an edge."""
    a, b = polygon, np.roll(polygon, -1, axis=0)
    py = ys.astype(np.float64)[:, None]
    crosses = (a[:, 1] > py) != (b[:, 1] > py)
    dy = np.where(b[:, 1] != a[:, 1], b[:, 1] - a[:, 1], 1.0)
    x_cross = a[:, 0] + (py - a[:, 1]) * (b[:, 0] - a[:, 0]) / dy
    inside = ((x_cross[:, None, :] > xs[None, :, None]) & crosses[:, None, :]).sum(-1) % 2 == 1
    for (x0, y0), (x1, y1) in zip(a, b, strict=True):
        cols = np.arange(max(np.ceil(min(x0, x1) - tol), xs[0]), min(np.floor(max(x0, x1) + tol), xs[-1]) + 1)
        rows = np.arange(max(np.ceil(min(y0, y1) - tol), ys[0]), min(np.floor(max(y0, y1) + tol), ys[-1]) + 1)
        if len(cols) and len(rows):
            gx, gy = np.meshgrid(cols, rows)
            ex, ey = x1 - x0, y1 - y0
            t = np.clip(((gx - x0) * ex + (gy - y0) * ey) / max(ex * ex + ey * ey, 1e-300), 0, 1)
            near = np.hypot(gx - x0 - t * ex, gy - y0 - t * ey) <= tol
            inside[(gy[near] - ys[0]).astype(int), (gx[near] - xs[0]).astype(int)] = True
    return inside


def _iou_of(a, b):
    return np.count_nonzero(a & b) / np.count_nonzero(a | b)


def _ours_by_hand(annotation, height, width, mask, num_rays=36):
    """Polygon parts in our frame (COCO - 0.5, clipped to the image's outer edges), the largest one,
    its area centroid, exact rays, the decoded polygon clipped to the pixel centres' range, the
    pixel centres inside or on it."""
    parts = []
    for flat in annotation["segmentation"]:
        part = np.array(flat, np.float64).reshape(-1, 2) - 0.5
        parts.append(np.stack([np.clip(part[:, 0], -0.5, width - 0.5), np.clip(part[:, 1], -0.5, height - 0.5)], 1))
    part = max(parts, key=lambda p: abs(_shoelace(p)[0]))
    centre = _shoelace(part)[1]
    rays = _cast_rays(part, centre, num_rays)
    angles = 2 * np.pi * np.arange(num_rays) / num_rays
    polygon = np.stack([np.clip(centre[0] + rays * np.cos(angles), 0, width - 1),
                        np.clip(centre[1] + rays * np.sin(angles), 0, height - 1)], 1)
    (x0, y0), (x1, y1) = np.floor(polygon.min(0)).astype(int), np.ceil(polygon.max(0)).astype(int)
    filled = np.zeros((height, width), bool)
    filled[y0 : y1 + 1, x0 : x1 + 1] = _pixel_centres_in(polygon, np.arange(x0, x1 + 1), np.arange(y0, y1 + 1))
    return _iou_of(filled, mask)


def _original_by_hand(mask, num_rays=36):
    """The original (spec sections 2 and 5): largest cv2 contour, int-truncated shoelace centroid, the
    farthest vertex of the first of the degree bins a, a+-1, a+-2, a+-3 holding one (angles from
    atan2(dx, dy), truncated), x = cx + d sin, y = cy + d cos, clipped, truncated, drawContours-filled."""
    height, width = mask.shape
    contours = cv2.findContours(mask.astype(np.uint8), cv2.RETR_TREE, cv2.CHAIN_APPROX_NONE)[-2]
    contour = max(contours, key=cv2.contourArea)[:, 0, :].astype(np.float64)
    x, y = contour[:, 0], contour[:, 1]
    x_prev, y_prev = np.roll(x, 1), np.roll(y, 1)
    fg = (x * y_prev - y * x_prev) / 2
    if fg.sum() == 0:
        cx, cy = int(x.mean()), int(y.mean())
    else:
        cx, cy = int((fg * (x + x_prev) / 3).sum() / fg.sum()), int((fg * (y + y_prev) / 3).sum() / fg.sum())
    dx, dy = (x - cx).astype(np.float32), (y - cy).astype(np.float32)
    degrees = np.degrees(np.arctan2(dx, dy))
    degrees = np.where(degrees < 0, degrees + 360, degrees).astype(np.int64)
    distance = np.sqrt(dx * dx + dy * dy)
    rays = []
    for a in range(0, 360, 360 // num_rays):
        found = [distance[degrees == a + o].max() for o in (0, 1, -1, 2, -2, 3, -3) if np.any(degrees == a + o)]
        rays.append(found[0] if found else 1e-6)
    # float32 like the original's torch tensors: a missing ray (1e-6) then lands on the centre pixel
    theta = np.arange(0, 360, 360 // num_rays, dtype=np.float32) / np.float32(180) * np.float32(np.pi)
    rays = np.array(rays, np.float32)
    points = np.stack([np.clip(np.float32(cx) + rays * np.sin(theta), 0, width - 1),
                       np.clip(np.float32(cy) + rays * np.cos(theta), 0, height - 1)], 1)
    canvas = np.zeros((height, width), np.uint8)
    cv2.drawContours(canvas, [points.astype(np.int32).reshape(-1, 1, 2)], -1, 1, thickness=-1)
    return _iou_of(canvas.astype(bool), mask)


@pytest.mark.slow
def test_the_tool_agrees_with_independent_computations_on_coco_mini_val():
    """All 618 non-crowd instances of >= 16 px^2 of coco_mini/val2017 (all polygons): ~30 s."""
    import contextlib
    import io

    from pycocotools.coco import COCO

    path = shared_path("data", "coco_mini", "annotations", "instances_val2017.json")
    report = upper_bound.run(str(path), [36], ["exact", "reference"], ["mass"], stream=io.StringIO())
    rows = {r["method"]: r for r in report["results"]}
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(path))
    ours, original, ids = [], [], []
    for annotation in gt.dataset["annotations"]:
        if annotation["iscrowd"] or annotation["area"] < 16:
            continue
        image = gt.imgs[annotation["image_id"]]
        mask = gt.annToMask(annotation).astype(bool)
        ours.append(_ours_by_hand(annotation, image["height"], image["width"], mask))
        original.append(_original_by_hand(mask))
        ids.append(annotation["id"])
    assert [i["id"] for i in report["per_instance"]] == ids and len(ids) == 618
    assert rows["exact"]["mean_iou"] == pytest.approx(np.mean(ours), abs=0.01)
    assert rows["reference"]["mean_iou"] == pytest.approx(np.mean(original), abs=0.01)
    assert np.mean(ours) > np.mean(original) + 0.05 and rows["exact"]["mean_iou"] > rows["reference"]["mean_iou"]
    # Instance by instance too: the same methods, up to float32 rounding of vertices that a pixel centre
    # (ours) or the integer truncation (the original's) puts on a knife edge.
    tool = np.array([i["iou"]["exact/mass/36"] for i in report["per_instance"]])
    assert np.mean(np.abs(tool - ours) < 1e-3) > 0.98 and np.abs(tool - ours).max() < 0.02
    tool = np.array([i["iou"]["reference/mass/36"] for i in report["per_instance"]])
    assert np.mean(np.abs(tool - original) < 1e-3) > 0.95 and np.mean(np.abs(tool - original) < 1e-2) > 0.99
