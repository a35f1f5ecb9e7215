"""COCO evaluation of PolarMask detections: results entries, AP tables, whole-dataset runs.

    metrics, results = evaluate_model(config, model, "instances_val.json", "val_images/")
    print(format_table(metrics)); print(per_category_table(metrics, top=10))

    evaluator = Evaluator(config, "instances_val.json", "val_images/")   # during training
    scalars = evaluator(model)                  # {"segm/AP": ..., "bbox/AP50": ...}, cheap to repeat

As the original evaluated (spec section 5): each polygon is rasterised at the ORIGINAL image
resolution and stored as an RLE, the bbox comes from the box branch (from the polygon extent
without one, model.box_branch false), and mask and box share the detection's score.

Frames. In polarmask_tf pixel (row i, column j) has its centre at (x=j, y=i) and covers
[j - 0.5, j + 0.5]; COCO puts that pixel at [j, j + 1] (centre j + 0.5). So a point is
x_coco = x + 0.5 (and y alike), the shift data.coco undoes when it reads polygons.
- segmentation: polygons are rasterised in our frame with `geometry.rasterize` (a pixel is set
  when its centre lies inside or on the polygon); an RLE indexes pixels, so nothing is shifted.
- bbox: our boxes are the extents of polygon outlines (the box-branch targets are the extents of
  the instance's polygon parts, data.coco.image_instances), and COCO's boxes are the extents of
  its polygons (all 619 polygon annotations of coco_mini val2017 agree to 1e-13 px). A box is
  therefore translated like any point: [x1 + 0.5, y1 + 0.5, x2 - x1, y2 - y1]. The "+1" width
  of inclusive pixel-index boxes (x2 - x1 + 1, the original's mmdet v1 rule) would add a pixel to
  every box here, because x1 and x2 are outline extents, not the centres of the first and last
  pixels.

Results carry both "bbox" and "segmentation" (one file, like Detectron2). Each iou type is
evaluated on entries stripped of the other key: pycocotools' loadRes takes the area from the bbox
whenever one is present, which would sort mask detections into small/medium/large by box area.
"""

import collections
import contextlib
import copy
import io
import os
import sys
import time

import numpy as np
import tensorflow as tf
from pycocotools import mask as coco_mask
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from polarmask_tf import geometry, inference
from polarmask_tf.data import coco as coco_lib
from polarmask_tf.progress import ProgressBar

COCO_PIXEL_OFFSET = coco_lib.COCO_PIXEL_OFFSET
IOU_TYPES = ("segm", "bbox")
METRIC_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl")
"""The first six COCOeval stats (area "all", 100 detections; small/medium/large for APs..APl)."""

RASTER_PIXEL_BUDGET = 1 << 22
"""Polygons are rasterised in chunks of at most this many window pixels (bounds the memory of
geometry.rasterize's per-row crossing tables to a few tens of MB)."""

_WINDOW_MARGIN = 0.01  # px; wider than geometry.RASTER_TOLERANCE, so boundary pixels stay in the window


@tf.function(
    input_signature=[
        tf.TensorSpec([None, None, 2], tf.float32),
        tf.TensorSpec([], tf.int32),
        tf.TensorSpec([], tf.int32),
    ],
    reduce_retracing=True,
)
def _rasterize(polygons, height, width):
    return geometry.rasterize(polygons, height, width)


# --------------------------------------------------------------------------------------------
# Detections -> COCO results


def _windows(polygons, height, width):
    """Per polygon [n, V, 2] the pixel window int [n, 4] (x0, y0, x1, y1, end-exclusive, clipped to
    the image) that holds every pixel whose centre can be inside or on it."""
    low = np.floor(polygons.min(axis=1) - _WINDOW_MARGIN)
    high = np.floor(polygons.max(axis=1) + _WINDOW_MARGIN) + 1
    x0, y0 = np.clip(low[:, 0], 0, width), np.clip(low[:, 1], 0, height)
    x1, y1 = np.clip(high[:, 0], 0, width), np.clip(high[:, 1], 0, height)
    return np.stack([x0, y0, np.maximum(x1, x0), np.maximum(y1, y0)], axis=1).astype(np.int64)


def rasterize_windows(polygons, height, width):
    """Rasterises polygons float32 [n, V, 2] (our frame, original pixels) each inside its own window.

    Returns (windows int64 [n, 4] as x0, y0, x1, y1, end-exclusive, and a list of n bool masks
    [y1 - y0, x1 - x0]); pasted at (y0, x0) into a height x width canvas they equal
    geometry.rasterize(polygon, height, width), up to float32 rounding for pixel centres at the very
    edge of its RASTER_TOLERANCE band (the polygon is shifted by the window's integer corner).
    Polygons are grouped by window size into chunks of at most RASTER_PIXEL_BUDGET pixels, each one
    call of a traced geometry.rasterize.
    """
    polygons = np.asarray(polygons, np.float32)
    if len(polygons) == 0:
        return np.zeros((0, 4), np.int64), []
    windows = _windows(polygons, height, width)
    sizes = windows[:, 2:] - windows[:, :2]  # (w, h)
    masks = [np.zeros((h, w), bool) for w, h in sizes]
    order = [i for i in np.argsort(sizes[:, 0] * sizes[:, 1], kind="stable") if sizes[i].min() > 0]
    start = 0
    while start < len(order):
        end = start + 1
        while end < len(order):
            w, h = sizes[order[start : end + 1]].max(axis=0)
            if (end + 1 - start) * w * h > RASTER_PIXEL_BUDGET:
                break
            end += 1
        chunk = order[start:end]
        w, h = sizes[chunk].max(axis=0)
        shifted = polygons[chunk] - windows[chunk, None, :2].astype(np.float32)
        filled = _rasterize(shifted, int(h), int(w)).numpy()
        for k, i in enumerate(chunk):
            masks[i] = filled[k, : sizes[i, 1], : sizes[i, 0]]
        start = end
    return windows, masks


def polygons_to_rles(polygons, height, width):
    """COCO RLEs (dicts with "size" [height, width] and "counts" str) of polygons [n, V, 2] in our
    frame, rasterised with geometry.rasterize at height x width."""
    windows, masks = rasterize_windows(polygons, height, width)
    canvas = np.zeros((height, width, 1), np.uint8, order="F")
    rles = []
    for (x0, y0, x1, y1), mask in zip(windows, masks, strict=True):
        canvas[y0:y1, x0:x1, 0] = mask
        rle = coco_mask.encode(canvas)[0]
        canvas[y0:y1, x0:x1, 0] = 0
        rles.append({"size": [int(height), int(width)], "counts": rle["counts"].decode("ascii")})
    return rles


def box_to_coco(box):
    """[x1, y1, x2, y2] in our frame -> COCO [x, y, w, h] (see the module docstring)."""
    x1, y1, x2, y2 = (float(v) for v in box)
    return [x1 + COCO_PIXEL_OFFSET, y1 + COCO_PIXEL_OFFSET, x2 - x1, y2 - y1]


def detections_to_coco(image_id, detections, label_map, height, width):
    """One image's detections -> COCO results entries.

    detections: dict of numpy arrays (inference.Predictor): boxes float32 [n, 4] (x1, y1, x2, y2,
      our frame, original pixels), scores float32 [n], classes int [n] (labels 1..C), polygons
      float32 [n, V, 2] (our frame, original pixels).
    label_map: data.coco.LabelMap (label -> category id). height, width: the original image size.
    Returns a list of dicts {"image_id", "category_id", "bbox": [x, y, w, h], "score",
    "segmentation": {"size": [height, width], "counts": str}}. Detections with NaN or infinite
    coordinates or scores are dropped. ValueError names a class outside the label map.
    """
    boxes = np.asarray(detections["boxes"], np.float32).reshape(-1, 4)
    scores = np.asarray(detections["scores"], np.float32).reshape(-1)
    classes = np.asarray(detections["classes"]).reshape(-1).astype(np.int64)
    polygons = np.asarray(detections["polygons"], np.float32)
    if len(scores) == 0:
        return []
    polygons = polygons.reshape(len(scores), -1, 2)
    finite = np.isfinite(scores) & np.isfinite(boxes).all(axis=1) & np.isfinite(polygons).all(axis=(1, 2))
    unknown = sorted({int(c) for c in classes if not 1 <= c <= label_map.num_classes})
    if unknown:
        raise ValueError(f"class labels {unknown} are outside the label map's 1..{label_map.num_classes}")
    keep = np.flatnonzero(finite)
    rles = polygons_to_rles(polygons[keep], height, width)
    return [
        {
            "image_id": image_id,
            "category_id": label_map.categories[classes[i] - 1].category_id,
            "bbox": box_to_coco(boxes[i]),
            "score": float(scores[i]),
            "segmentation": rle,
        }
        for i, rle in zip(keep, rles, strict=True)
    ]


# --------------------------------------------------------------------------------------------
# COCOeval


def _detections_coco(coco_gt, entries):
    """A COCO object of results entries (pycocotools' loadRes, or an empty one: loadRes fails on [])."""
    if entries:
        with contextlib.redirect_stdout(io.StringIO()):
            return coco_gt.loadRes(entries)
    empty = COCO()
    empty.dataset = {
        "images": list(coco_gt.dataset["images"]),
        "categories": copy.deepcopy(coco_gt.dataset["categories"]),
        "annotations": [],
    }
    with contextlib.redirect_stdout(io.StringIO()):
        empty.createIndex()
    return empty


def _for_iou_type(results, iou_type):
    drop = "bbox" if iou_type == "segm" else "segmentation"
    return [{k: v for k, v in entry.items() if k != drop} for entry in results]


def _mean_valid(values):
    values = values[values > -1]
    return float(values.mean()) if values.size else None


def evaluate_results(coco_gt, results, image_ids=None):
    """COCO AP of results entries (detections_to_coco) against a ground truth.

    coco_gt: pycocotools COCO (data.coco.load_ground_truth). results: list of entries, possibly empty.
    image_ids: evaluate these images only (default: every image of coco_gt); the images that were
      not run must be left out, or their instances count as missed.
    Returns {"segm": {name: AP}, "bbox": {name: AP}, "per_category": {"segm": {category name: AP},
    "bbox": {...}}, "gt_instances": {category name: non-crowd instances}, "num_images",
    "num_detections"}, names as in METRIC_NAMES. APs are in [0, 1], or None where COCO has nothing
    to measure (no ground truth instance in that category or area range). No detections give 0.
    """
    unknown = sorted({entry["image_id"] for entry in results} - set(coco_gt.getImgIds()))
    if unknown:
        raise ValueError(f"results for image ids {unknown[:5]} that are not in the ground truth")
    image_ids = sorted(coco_gt.getImgIds() if image_ids is None else image_ids)
    wanted = set(image_ids)
    results = [entry for entry in results if entry["image_id"] in wanted]
    names = {c["id"]: c["name"] for c in coco_gt.dataset["categories"]}
    metrics = {"per_category": {}}
    for iou_type in IOU_TYPES:
        evaluator = COCOeval(coco_gt, _detections_coco(coco_gt, _for_iou_type(results, iou_type)), iou_type)
        evaluator.params.imgIds = image_ids
        with contextlib.redirect_stdout(io.StringIO()):
            evaluator.evaluate()
            evaluator.accumulate()
            evaluator.summarize()
        # strict=False: COCOeval has 12 stats; METRIC_NAMES names the first six.
        metrics[iou_type] = {name: (float(v) if v > -1 else None)
                             for name, v in zip(METRIC_NAMES, evaluator.stats, strict=False)}
        precision = evaluator.eval["precision"]  # [iou thresholds, recall, categories, areas, max dets]
        metrics["per_category"][iou_type] = {
            names[category_id]: _mean_valid(precision[:, :, k, 0, -1])
            for k, category_id in enumerate(evaluator.params.catIds)
        }
    counts = collections.Counter(
        a["category_id"] for a in coco_gt.loadAnns(coco_gt.getAnnIds(imgIds=image_ids)) if not a.get("iscrowd", 0)
    )
    metrics["gt_instances"] = {names[c]: counts.get(c, 0) for c in sorted(names)}
    metrics["num_images"] = len(image_ids)
    metrics["num_detections"] = len(results)
    return metrics


def scalar_metrics(metrics):
    """The overall APs as a flat {"segm/AP": float, ...} dict for logging (undefined ones left out)."""
    return {
        f"{iou_type}/{name}": value
        for iou_type in IOU_TYPES
        for name, value in metrics[iou_type].items()
        if value is not None
    }


def _cell(value, width=7):
    return f"{100 * value:>{width}.2f}" if value is not None else f"{'-':>{width}}"


def format_table(metrics):
    """The overall APs (percent) as a text table, one row per iou type."""
    header = f"{'':<6}" + "".join(f"{name:>7}" for name in METRIC_NAMES)
    lines = [header, "-" * len(header)]
    for iou_type in IOU_TYPES:
        lines.append(f"{iou_type:<6}" + "".join(_cell(metrics[iou_type][name]) for name in METRIC_NAMES))
    lines.append(f"{metrics['num_images']} images, {metrics['num_detections']} detections")
    return "\n".join(lines)


def per_category_table(metrics, top=None):
    """Per-category segm and bbox AP (percent), categories by descending ground-truth count
    (the `top` most frequent when given); categories without instances are left out."""
    counts = metrics["gt_instances"]
    ordered = sorted((name for name in counts if counts[name] > 0), key=lambda name: (-counts[name], name))
    shown = ordered[:top] if top else ordered
    width = max([len("category")] + [len(str(name)) for name in shown])
    header = f"{'category':<{width}} {'GT':>6} {'segm AP':>8} {'bbox AP':>8}"
    lines = [header, "-" * len(header)]
    for name in shown:
        segm, bbox = metrics["per_category"]["segm"].get(name), metrics["per_category"]["bbox"].get(name)
        lines.append(f"{name:<{width}} {counts[name]:>6} {_cell(segm, 8)} {_cell(bbox, 8)}")
    if len(shown) < len(ordered):
        lines.append(f"({len(ordered) - len(shown)} more categories with instances in metrics.json)")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# Running a model over a COCO dataset


def load_image(path):
    """RGB uint8 [h, w, 3] of an image file, or data.coco.ImageError with a reason tag
    ("missing_image", "unreadable_image", "corrupt_image" for truncated or damaged JPEG/PNG files,
    "undecodable_image" for anything else that is not an image)."""
    encoded = coco_lib.read_image(path)
    try:
        image = tf.io.decode_image(encoded.encoded, channels=3, expand_animations=False)
    except tf.errors.OpError as error:
        raise coco_lib.ImageError("undecodable_image", f"{path}: {error.message.split('[Op:')[0].strip()}") from None
    return np.asarray(image)


class Evaluator:
    """COCO evaluation of models on one annotated image set, set up once and run many times.

    config: config.Config of the models. annotations: COCO instances json path. images_dir: the
    directory its file names are relative to. label_map: data.coco.LabelMap of the model's labels
    (default: LabelMap.from_coco_categories of the json, contiguous in category id order, the rule
    the TFRecord conversion uses). max_images: evaluate the first N images by id only.

    The ground truth is checked first, before any inference (data.coco.load_ground_truth, the
    segmentation checks of the TFRecord conversion): annotations pycocotools cannot rasterise
    (huge or NaN coordinates, null segmentations, malformed RLEs, bad iscrowd, area or bbox) and
    images without a size are dropped, counted by reason in `ground_truth_skipped` and
    metrics["ground_truth_skipped"], and reported once on `report_stream` (default stderr; None:
    silent). Images that cannot be read, or whose size differs from the json's, are skipped and
    counted by reason in metrics["skipped_images"]; AP is then over the images that were run. A Predictor is
    built once per model and reused, so calling the evaluator every few thousand training steps
    costs only the inference itself.
    """

    def __init__(self, config, annotations, images_dir, label_map=None, max_images=None, batch_size=8,
                 report_stream=sys.stderr):
        if max_images is not None and max_images < 1:
            raise ValueError(f"max_images must be at least 1 (or None for all), got {max_images}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        self.config = config
        self.images_dir = images_dir
        self.batch_size = batch_size
        self.coco_gt, self.ground_truth_skipped = coco_lib.load_ground_truth(annotations)
        dropped = coco_lib.format_skips(self.ground_truth_skipped)
        if dropped and report_stream is not None:
            print(f"ground truth {annotations}: dropped {dropped}", file=report_stream)
        self.label_map = label_map or coco_lib.LabelMap.from_coco_categories(self.coco_gt.dataset["categories"])
        if self.label_map.num_classes != config.model.num_classes:
            raise ValueError(
                f"the label map has {self.label_map.num_classes} classes but the model has model.num_classes="
                f"{config.model.num_classes}; give the label map the model was trained with (written by "
                "create_tfrecords as <prefix>-labels.json)"
            )
        images = sorted(self.coco_gt.dataset["images"], key=lambda image: image["id"])
        self.images = images[:max_images] if max_images else images
        self._predictor = None

    def predictor(self, model):
        """The inference.Predictor of `model`, built on first use."""
        if self._predictor is None or self._predictor.model is not model:
            self._predictor = inference.Predictor(self.config, model, batch_size=self.batch_size)
        return self._predictor

    def _load(self, image, skips):
        path = os.path.join(self.images_dir, image["file_name"])
        try:
            pixels = load_image(path)
        except coco_lib.ImageError as error:
            skips.add(error.reason, image["id"])
            return None
        if (image.get("height", pixels.shape[0]), image.get("width", pixels.shape[1])) != pixels.shape[:2]:
            skips.add("size_mismatch", image["id"])
            return None
        return pixels

    def evaluate(self, model=None, predictor=None, stream=None):
        """Runs the model (or a ready inference.Predictor) over the images and evaluates.

        Returns (metrics, results): metrics as evaluate_results plus "skipped_images" (counts and
        example image ids by reason) and "seconds_per_image" (reading, inference, rasterisation);
        results the COCO results entries of every image run.
        """
        predictor = predictor or self.predictor(model)
        skips = coco_lib.ReasonLog()
        results, evaluated = [], []
        bar = ProgressBar(len(self.images), desc="evaluate", stream=stream)
        start = time.perf_counter()
        for first in range(0, len(self.images), self.batch_size):
            batch = self.images[first : first + self.batch_size]
            loaded = [(image, self._load(image, skips)) for image in batch]
            loaded = [(image, pixels) for image, pixels in loaded if pixels is not None]
            if loaded:
                detections = predictor.predict([pixels for _, pixels in loaded])
                for (image, pixels), found in zip(loaded, detections, strict=True):
                    results += detections_to_coco(image["id"], found, self.label_map, *pixels.shape[:2])
                    evaluated.append(image["id"])
            bar.update(len(batch), detections=len(results))
        bar.close()
        seconds = time.perf_counter() - start
        metrics = evaluate_results(self.coco_gt, results, evaluated)
        metrics["skipped_images"] = skips.to_dict()
        metrics["ground_truth_skipped"] = ground_truth_skips_dict(self.ground_truth_skipped)
        metrics["seconds_per_image"] = seconds / max(len(self.images), 1)
        return metrics, results

    def __call__(self, model):
        """The scalar metrics of `model` ({"segm/AP": ..., "bbox/AP75": ...}) for a training log."""
        metrics, _ = self.evaluate(model, stream=io.StringIO())
        return scalar_metrics(metrics)


def ground_truth_skips_dict(skips):
    """The ground-truth drops of data.coco.load_ground_truth as JSON: {"images", "annotations",
    "parts"}, each {"counts": {reason: n}, "examples": {reason: [ids]}}."""
    return {"images": skips.images.to_dict(), "annotations": skips.annotations.to_dict(),
            "parts": skips.parts.to_dict()}


def evaluate_model(config, model, annotations, images_dir, label_map=None, max_images=None, stream=None):
    """One evaluation of `model` (see Evaluator): returns (metrics, results)."""
    return Evaluator(config, annotations, images_dir, label_map, max_images).evaluate(model, stream=stream)
