"""COCO evaluation: frames of detections_to_coco end to end, AP against known IoUs, empty results."""

import contextlib
import io
import json
import types

import numpy as np
import pytest
from pycocotools import mask as coco_mask

from polarmask_tf import evaluation, geometry, upper_bound
from polarmask_tf.data import coco, synthetic

from conftest import shared_path


@pytest.fixture(scope="module")
def val_split(tmp_path_factory):
    """The val split of a 24-image synthetic dataset (12 images, ~50 instances): (COCO, label map)."""
    root = tmp_path_factory.mktemp("evaluation")
    synthetic.generate_dataset(root, num_images=24, seed=11, val_fraction=0.5, min_size=128, max_size=192)
    gt = coco.load_coco(str(root / "annotations" / "instances_val.json"))
    return gt, coco.LabelMap.from_coco_categories(gt.dataset["categories"])


def _detection(box, polygon, label, score=1.0):
    return {"boxes": np.float32([box]), "scores": np.float32([score]), "classes": np.int32([label]),
            "polygons": np.float32([polygon])}


def _single_part_gt(gt):
    """A copy of `gt` keeping the annotations whose COCO mask is exactly the fill of its largest
    outer contour (one part, no hole), each with that contour: {annotation id: contour [V, 2]}."""
    contours = {}
    for annotation in gt.dataset["annotations"]:
        image = gt.imgs[annotation["image_id"]]
        mask = gt.annToMask(annotation).astype(bool)
        contour = geometry.largest_contour(mask)
        filled = geometry.rasterize(contour, image["height"], image["width"]).numpy() if len(contour) >= 3 else None
        if filled is not None and np.array_equal(filled, mask):
            contours[annotation["id"]] = contour
    data = dict(gt.dataset, annotations=[a for a in gt.dataset["annotations"] if a["id"] in contours])
    kept = coco.COCO()
    kept.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):
        kept.createIndex()
    return kept, contours


def test_polygons_to_rles_equal_full_image_rasterisation():
    rng = np.random.default_rng(0)
    height, width = 37, 53
    centres = rng.uniform([-5, -5], [width + 5, height + 5], size=(12, 2))
    radii = rng.uniform(0.3, 25, size=(12, 36))
    polygons = geometry.rays_to_polygon(centres, radii).numpy()
    polygons[0] = [[3.0, 4.0]] * 36  # degenerate: every vertex on one pixel centre
    rles = evaluation.polygons_to_rles(polygons, height, width)
    expected = geometry.rasterize(polygons, height, width).numpy()
    for rle, mask in zip(rles, expected, strict=True):
        assert rle["size"] == [height, width] and isinstance(rle["counts"], str)
        np.testing.assert_array_equal(coco_mask.decode(dict(rle, counts=rle["counts"].encode())).astype(bool), mask)
    assert evaluation.polygons_to_rles(np.zeros((0, 36, 2), np.float32), height, width) == []


def test_boxes_are_translated_into_coco_frame():
    assert evaluation.box_to_coco([9.5, 19.5, 29.5, 24.5]) == [10.0, 20.0, 20.0, 5.0]


def test_gt_masks_and_boxes_as_predictions_score_ap_1(val_split):
    """COCO's own masks (as single-part contours in our frame) and COCO's boxes (translated into our
    frame) fed through detections_to_coco must come back exactly: AP 1 for segm and bbox. A half
    pixel off in either path would cost small objects their IoU >= 0.95 matches."""
    gt, contours = _single_part_gt(val_split[0])
    label_map = val_split[1]
    assert len(contours) >= 30
    results, shifted, inclusive = [], [], []
    for annotation_id, contour in contours.items():
        annotation = gt.anns[annotation_id]
        image = gt.imgs[annotation["image_id"]]
        x, y, w, h = annotation["bbox"]
        box = [x - 0.5, y - 0.5, x + w - 0.5, y + h - 0.5]  # COCO -> our frame: every point moves by -0.5
        label = label_map.label_of(annotation["category_id"])
        size = (image["height"], image["width"])
        results += evaluation.detections_to_coco(image["id"], _detection(box, contour, label), label_map, *size)
        shifted += evaluation.detections_to_coco(image["id"], _detection(box, contour + 0.5, label), label_map, *size)
        entry = evaluation.detections_to_coco(image["id"], _detection(box, contour, label), label_map, *size)[0]
        entry["bbox"] = [x - 0.5, y - 0.5, w + 1, h + 1]  # what an inclusive "+1" rule would write
        inclusive.append(entry)
    metrics = evaluation.evaluate_results(gt, results)
    assert metrics["segm"]["AP"] == pytest.approx(1.0) and metrics["bbox"]["AP"] == pytest.approx(1.0), metrics
    assert evaluation.evaluate_results(gt, shifted)["segm"]["AP"] < 0.99  # half a pixel off: caught
    assert evaluation.evaluate_results(gt, inclusive)["bbox"]["AP"] < 0.99


def test_coco_polygons_as_predictions_on_real_annotations():
    """Real COCO polygons, moved into our frame by -0.5 and given their extents as boxes, score
    segm AP >= 0.99 (pycocotools rasterises at 1/5 px, we exactly) and bbox AP 1 (COCO's boxes are
    the polygons' extents)."""
    path = shared_path("data", "coco_mini", "annotations", "instances_val2017.json")
    gt = coco.load_coco(str(path))
    image_ids = sorted(gt.getImgIds())[:30]
    label_map = coco.LabelMap.from_coco_categories(gt.dataset["categories"])
    results = []
    for image_id in image_ids:
        image = gt.imgs[image_id]
        for annotation in gt.imgToAnns[image_id]:
            if annotation["iscrowd"] or not isinstance(annotation["segmentation"], list):
                continue
            parts = [np.float32(p).reshape(-1, 2) - coco.COCO_PIXEL_OFFSET for p in annotation["segmentation"]]
            everything = np.concatenate(parts)
            box = np.concatenate([everything.min(0), everything.max(0)])
            longest = max(len(p) for p in parts)
            padded = [np.concatenate([p, np.repeat(p[-1:], longest - len(p), 0)]) for p in parts]
            rles = evaluation.polygons_to_rles(np.stack(padded), image["height"], image["width"])
            merged = coco_mask.merge([dict(r, counts=r["counts"].encode()) for r in rles])
            entry = evaluation.detections_to_coco(
                image_id, _detection(box, parts[0], label_map.label_of(annotation["category_id"])), label_map,
                image["height"], image["width"],
            )[0]
            entry["segmentation"] = dict(merged, counts=merged["counts"].decode())  # all parts, as annotated
            results.append(entry)
    metrics = evaluation.evaluate_results(gt, results, image_ids)
    assert metrics["segm"]["AP"] >= 0.99, metrics["segm"]
    assert metrics["bbox"]["AP"] >= 0.999, metrics["bbox"]


def _expected_ap(ious, categories, thresholds, recall_thresholds):
    """COCO AP per IoU threshold when every instance has one detection of its class, matched to it
    alone, ranked by its IoU: at threshold t a category with n instances and k of IoU >= t has
    precision 1 up to recall k / n and nothing beyond, so its AP is the share of the 101 recall
    thresholds r <= k / n, or 0 when k = 0 (even at r = 0: the first detection is a false
    positive); AP_t is the mean over categories."""
    ap = []
    for t in thresholds:
        per_category = []
        for c in sorted(set(categories)):
            hits = np.array([iou >= t for iou, k in zip(ious, categories, strict=True) if k == c])
            reached = np.count_nonzero(recall_thresholds <= hits.sum() / hits.size) if hits.any() else 0
            per_category.append(reached / recall_thresholds.size)
        ap.append(np.mean(per_category))
    return np.array(ap)


@pytest.mark.slow
def test_ray_reconstructions_score_the_ap_their_upper_bound_ious_imply(val_split):
    """36 exact rays from each instance's mass centre: the IoUs upper_bound.instance_ious measures
    determine COCO's AP exactly when each detection is ranked by its IoU; with all scores equal the
    ranking is arbitrary and AP_t lies between f_t * A_t and A_t (f_t the share of instances with
    IoU >= t, A_t the ranked AP)."""
    gt, label_map = val_split
    ranked, tied, ious, categories = [], [], [], []
    for annotation in gt.dataset["annotations"]:
        image = gt.imgs[annotation["image_id"]]
        size = (image["height"], image["width"])
        mask = gt.annToMask(annotation).astype(bool)
        iou = upper_bound.instance_ious(mask, [36], ["exact"], ["mass"])[("exact", "mass", 36)]
        contour = geometry.mask_outlines(mask)[0][0]
        centre = geometry.mass_center(contour).numpy()[None]
        polygon = geometry.rays_to_polygon(centre, geometry.ray_distances(contour, centre, 36), size).numpy()[0]
        box = np.concatenate([polygon.min(0), polygon.max(0)])
        label = label_map.label_of(annotation["category_id"])
        ranked += evaluation.detections_to_coco(image["id"], _detection(box, polygon, label, iou), label_map, *size)
        tied += evaluation.detections_to_coco(image["id"], _detection(box, polygon, label, 1.0), label_map, *size)
        ious.append(iou)
        categories.append(annotation["category_id"])
    thresholds = np.linspace(0.5, 0.95, 10)
    recall_thresholds = np.linspace(0.0, 1.0, 101)
    expected = _expected_ap(ious, categories, thresholds, recall_thresholds)
    got = evaluation.evaluate_results(gt, ranked)["segm"]
    assert [got["AP"], got["AP50"], got["AP75"]] == pytest.approx([expected.mean(), expected[0], expected[5]], abs=1e-9)
    assert 0.3 < expected.mean() < 1.0  # the check has something to tell apart
    share = np.array([np.mean(np.array(ious) >= t) for t in thresholds])
    equal = evaluation.evaluate_results(gt, tied)["segm"]
    for t, name in ((0, "AP50"), (5, "AP75")):
        assert share[t] * expected[t] - 1e-9 <= equal[name] <= expected[t] + 1e-9, (name, share[t], expected[t], equal)


def test_empty_results_give_zero_ap(val_split):
    gt, _ = val_split
    metrics = evaluation.evaluate_results(gt, [])
    assert all(metrics[t][name] == 0.0 for t in evaluation.IOU_TYPES for name in ("AP", "AP50", "AP75"))
    assert all(v == 0.0 for v in metrics["per_category"]["segm"].values())
    assert metrics["num_detections"] == 0 and metrics["num_images"] == len(gt.getImgIds())
    assert "segm" in evaluation.format_table(metrics) and "circle" in evaluation.per_category_table(metrics)
    assert evaluation.scalar_metrics(metrics)["bbox/AP"] == 0.0


def test_results_json_loads_in_pycocotools_and_restricts_to_given_images(val_split, tmp_path):
    gt, label_map = val_split
    image = gt.dataset["images"][0]
    polygon = geometry.rays_to_polygon([[40.0, 50.0]], np.full([1, 36], 12.0)).numpy()[0]
    results = evaluation.detections_to_coco(image["id"], _detection([28, 38, 52, 62], polygon, 1, 0.7), label_map,
                                            image["height"], image["width"])
    path = tmp_path / "results.json"
    path.write_text(json.dumps(results))
    loaded = gt.loadRes(str(path))
    assert len(loaded.anns) == 1 and loaded.anns[1]["category_id"] == label_map.categories[0].category_id
    assert loaded.anns[1]["bbox"] == [28.5, 38.5, 24.0, 24.0]
    metrics = evaluation.evaluate_results(gt, results, [image["id"]])
    assert metrics["num_images"] == 1 and metrics["gt_instances"] == {
        name: sum(1 for a in gt.imgToAnns[image["id"]] if gt.cats[a["category_id"]]["name"] == name)
        for name in (c["name"] for c in sorted(gt.dataset["categories"], key=lambda c: c["id"]))
    }
    with pytest.raises(ValueError, match="not in the ground truth"):
        evaluation.evaluate_results(gt, [dict(results[0], image_id=10**6)])


def test_unknown_labels_and_non_finite_detections(val_split):
    _, label_map = val_split
    polygon = np.float32([[1, 1], [5, 1], [5, 5]])
    with pytest.raises(ValueError, match=r"outside the label map's 1..7"):
        evaluation.detections_to_coco(1, _detection([1, 1, 5, 5], polygon, 8), label_map, 10, 10)
    broken = _detection([1, 1, 5, 5], np.where(polygon > 4, np.nan, polygon), 1)
    assert evaluation.detections_to_coco(1, broken, label_map, 10, 10) == []


# --------------------------------------------------------------------------------------------
# Ground truth checked before inference


class _BoxPredictor:
    """Stands in for inference.Predictor: 'detects' each image's ground-truth boxes (as 4-vertex
    polygons, our frame), for the images in the order the Evaluator asks for them."""

    def __init__(self, data, label_map):
        self.order = sorted(image["id"] for image in data["images"] if "height" in image)
        self.detections = {}
        for image_id in self.order:
            boxes, labels = [], []
            for annotation in data["annotations"]:
                if annotation["image_id"] == image_id:
                    x, y, w, h = annotation["bbox"]
                    boxes.append([x - 0.5, y - 0.5, x + w - 0.5, y + h - 0.5])
                    labels.append(label_map.label_of(annotation["category_id"]))
            boxes = np.float32(boxes).reshape(-1, 4)
            corners = np.stack([boxes[:, [0, 1]], boxes[:, [2, 1]], boxes[:, [2, 3]], boxes[:, [0, 3]]], axis=1)
            self.detections[image_id] = {"boxes": boxes, "scores": np.linspace(1.0, 0.5, len(boxes), dtype=np.float32),
                                         "classes": np.int32(labels), "polygons": corners}
        self.asked = []

    def predict(self, images):
        found = []
        for _ in images:
            self.asked.append(self.order[len(self.asked)])
            found.append(self.detections[self.asked[-1]])
        return found


@pytest.fixture(scope="module")
def small_val(tmp_path_factory):
    root = tmp_path_factory.mktemp("gt_checks")
    synthetic.generate_dataset(root, num_images=4, seed=5, val_fraction=0.5, min_size=96, max_size=128)
    return root


def _evaluate(path, images_dir, data):
    label_map = coco.LabelMap.from_coco_categories(data["categories"])
    config = types.SimpleNamespace(model=types.SimpleNamespace(num_classes=label_map.num_classes))
    report = io.StringIO()
    evaluator = evaluation.Evaluator(config, str(path), str(images_dir), batch_size=2, report_stream=report)
    predictor = _BoxPredictor(evaluator.coco_gt.dataset, label_map)
    metrics, _ = evaluator.evaluate(predictor=predictor, stream=io.StringIO())
    return metrics, report.getvalue(), predictor


def test_bad_ground_truth_is_dropped_before_inference_and_the_ap_of_the_good_ones_is_unchanged(small_val, tmp_path):
    clean = json.loads((small_val / "annotations" / "instances_val.json").read_text())
    first, height, width = (clean["images"][0][k] for k in ("id", "height", "width"))
    box = {"image_id": first, "category_id": clean["categories"][0]["id"], "area": 100.0, "bbox": [5, 5, 10, 10]}
    bad = [
        dict(box, segmentation=[[5, 5, 1e12, 5, 15, 15]]),  # pycocotools would allocate 20+ GB
        dict(box, segmentation=[[5, 5, 15, 5, 15, 1e30]]),  # ... or crash
        dict(box, segmentation=None),  # TypeError inside COCOeval
        dict(box, segmentation={"size": [height, 3], "counts": "PP0"}),
        dict(box, segmentation={"size": [height, width], "counts": [7]}),  # pycocotools: uninitialised memory
        dict(box, segmentation=[[5, 5, 15, 5, 15, 15]], iscrowd="yes"),
        dict({k: v for k, v in box.items() if k != "bbox"}, segmentation=[[5, 5, 15, 5, 15, 15]]),
        dict(box, segmentation=[[5, 5, 15, 5, 15, 15]], image_id=10**6),
        dict(box, segmentation=[[5, 5, 15, 5, 15, 15]], image_id=777),  # an image without a size
    ]
    ids = list(range(10**5, 10**5 + len(bad)))
    dirty = dict(clean, images=clean["images"] + [{"id": 777, "file_name": "absent.jpg"}],
                 annotations=clean["annotations"] + [dict(a, id=i) for a, i in zip(bad, ids, strict=True)])
    dirty_path = tmp_path / "dirty.json"
    dirty_path.write_text(json.dumps(dirty))
    expected, quiet, _ = _evaluate(small_val / "annotations" / "instances_val.json", small_val / "val", clean)
    metrics, printed, predictor = _evaluate(dirty_path, small_val / "val", dirty)

    assert quiet == "" and expected["ground_truth_skipped"]["annotations"]["counts"] == {}
    dropped = metrics["ground_truth_skipped"]
    assert dropped["annotations"]["counts"] == {
        "far_outside_image": 2, "bad_segmentation": 1, "rle_size_mismatch": 1, "rle_counts_sum_mismatch": 1,
        "bad_iscrowd": 1, "bad_bbox": 1, "unknown_image": 1, "image_skipped": 1,
    }
    assert dropped["annotations"]["examples"]["far_outside_image"] == ids[:2]
    assert dropped["images"] == {"counts": {"missing_size": 1}, "examples": {"missing_size": [777]}}
    assert "far_outside_image: 2" in printed and "missing_size: 1" in printed
    assert json.loads(json.dumps(metrics))["ground_truth_skipped"] == dropped  # goes into metrics.json as is
    assert predictor.asked == sorted(image["id"] for image in clean["images"])  # 777 never ran
    for key in ("segm", "bbox", "per_category", "gt_instances", "num_images", "num_detections"):
        assert metrics[key] == expected[key], key
    assert expected["bbox"]["AP"] == pytest.approx(1.0)


@pytest.mark.parametrize("flag, value", [("--max-images", "-1"), ("--max-images", "0"), ("--batch-size", "0"),
                                         ("--batch-size", "-3"), ("--top-categories", "-1")])
def test_evaluate_rejects_non_positive_counts_naming_the_flag(flag, value, capsys):
    from polarmask_tf.cli import evaluate as evaluate_command

    argv = ["--model-dir", "m", "--annotations", "a.json", "--images-dir", "i", flag, value]
    with pytest.raises(SystemExit) as exit_info:
        evaluate_command.main(argv)
    assert exit_info.value.code == 2
    assert f"argument {flag}: must be at least" in capsys.readouterr().err
