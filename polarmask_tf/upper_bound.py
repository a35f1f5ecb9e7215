"""How good can rays be? The representation upper bound of PolarMask on a COCO dataset.

For every non-crowd instance: its ground-truth mask (COCO's own rasterisation), the largest outer
contour, a centre (mass centre of that contour, or the mask's box centre), N rays from the centre,
the decoded polygon rasterised at image resolution, and its IoU with the ground-truth mask. The
mean IoU per (method, centre, N) is the best mask IoU a perfect PolarMask could reach with that
setting (the paper's "upper bound" figure).

    report = run("instances_val2017.json", num_rays=[18, 36, 72], methods=["exact"], centers=["mass"])
    print(format_table(report))

The command is polarmask-upper-bound (cli/upper_bound.py).
With `--method reference` the centre is truncated to integers, as the original does. Instances
that cannot be measured (crowd, empty or degenerate masks, broken segmentations) are counted under
"skipped" by reason, with a few annotation ids per reason; the run never stops on one of them.
Segmentations are checked with data.coco.check_segmentation (the TFRecord conversion's checks)
before pycocotools rasterises them: huge coordinates ("far_outside_image"), malformed RLEs and
null segmentations are skipped instead of exhausting memory or crashing; invalid polygon parts of
an otherwise valid annotation are left out and counted under "dropped_parts".
"""

import collections
import json
import os
import sys

import numpy as np

from polarmask_tf.progress import ProgressBar

EXAMPLES_PER_REASON = 5


def _load_coco(path):
    """The json at `path`; ValueError naming the file when it cannot be read or is not COCO instances."""
    try:
        with open(path) as stream:
            data = json.load(stream)
    except OSError as error:
        raise ValueError(f"cannot read annotations {path}: {error.strerror}") from None
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON: {error}") from None
    if (not isinstance(data, dict) or not isinstance(data.get("images"), list)
            or not isinstance(data.get("annotations"), list)):
        raise ValueError(f"{path} is not a COCO instances file (needs 'images' and 'annotations' lists)")
    return data


def _box_center(mask):
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    return np.array([(cols[0] + cols[-1]) / 2.0, (rows[0] + rows[-1]) / 2.0], np.float32)


def instance_ious(mask, num_rays, methods, centers, raster="center"):
    """Upper-bound IoUs of one instance.

    mask: bool [H, W] ground truth. Returns {(method, center, n): IoU}. Raises GeometryError when
    the mask's largest contour cannot carry rays (empty, fewer than 3 vertices, zero area).
    """
    from polarmask_tf import geometry

    contour = geometry.validate_polygon(geometry.largest_contour(mask), "largest contour")
    height, width = mask.shape
    found = {"mass": geometry.mass_center(contour).numpy(), "box": _box_center(mask)}
    ious = {}
    for method in methods:
        origins = np.stack([found[center] for center in centers])  # [C, 2]
        if method == "reference":
            origins = np.floor(origins)
        for n in num_rays:
            rays = geometry.ray_distances(contour, origins, n, method=method)
            polygons = geometry.rays_to_polygon(origins, rays, (height, width)).numpy()  # [C, n, 2]
            for center, iou in zip(centers, _polygon_mask_ious(polygons, mask, raster), strict=True):
                ious[(method, center, n)] = iou
    return ious


def _polygon_mask_ious(polygons, mask, raster):
    """IoUs of polygons [C, V, 2] rasterised at the mask's resolution with one mask [H, W]; the
    default rule is evaluated on the window that holds the mask and all polygons."""
    from polarmask_tf import geometry

    if raster == "reference":
        return [_iou(geometry.rasterize_reference(p, *mask.shape), mask) for p in polygons]
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    x0 = int(min(cols[0], np.floor(polygons[..., 0].min())))
    y0 = int(min(rows[0], np.floor(polygons[..., 1].min())))
    x1 = int(max(cols[-1], np.ceil(polygons[..., 0].max()))) + 1
    y1 = int(max(rows[-1], np.ceil(polygons[..., 1].max()))) + 1
    filled = geometry.rasterize(polygons - np.array([x0, y0], np.float32), y1 - y0, x1 - x0).numpy()
    window = mask[y0:y1, x0:x1]
    return [_iou(f, window) for f in filled]


def _iou(a, b):
    union = np.count_nonzero(a | b)
    return np.count_nonzero(a & b) / union if union else 0.0


def run(annotations_path, num_rays, methods, centers, raster="center", max_instances=None, stream=sys.stdout):
    """Measures the upper bound over a COCO file; returns the report dict."""
    from polarmask_tf import geometry
    from polarmask_tf.data import coco

    data = _load_coco(annotations_path)
    images = {image.get("id"): image for image in data["images"] if isinstance(image, dict)}
    annotations = [a for a in data["annotations"] if isinstance(a, dict)]
    if max_instances:
        annotations = annotations[:max_instances]
    skipped = collections.Counter()
    examples = collections.defaultdict(list)
    dropped_parts = collections.Counter()
    sums = collections.defaultdict(float)
    measured = 0

    def skip(reason, annotation):
        skipped[reason] += 1
        if len(examples[reason]) < EXAMPLES_PER_REASON:
            examples[reason].append(annotation.get("id"))

    bar = ProgressBar(len(annotations), desc="upper bound", stream=stream)
    for annotation in annotations:
        try:
            image = images.get(annotation.get("image_id"))
            if coco.parse_iscrowd(annotation.get("iscrowd", 0)):
                raise geometry.GeometryError("iscrowd", "crowd annotation")
            if image is None or not isinstance(image.get("height"), int) or not isinstance(image.get("width"), int):
                raise geometry.GeometryError("unknown_image", "image id not in 'images' or without a size")
            # The conversion's checks first: pycocotools never sees what it cannot rasterise.
            segmentation, parts = coco.check_segmentation(annotation.get("segmentation"), image["height"],
                                                          image["width"])
            dropped_parts.update(part.reason for part in parts or () if isinstance(part, geometry.GeometryError))
            mask = geometry.coco_segmentation_to_mask(segmentation, image["height"], image["width"])
            if not mask.any():
                raise geometry.GeometryError("empty_mask", "the segmentation covers no pixel")
            for key, value in instance_ious(mask.astype(bool), num_rays, methods, centers, raster).items():
                sums[key] += value
            measured += 1
        except geometry.GeometryError as error:
            skip(error.reason, annotation)
        except Exception as error:  # a long job never dies on one record; the reason names the error
            skip(f"error:{type(error).__name__}", annotation)
        bar.update(1, measured=measured)
    bar.close()

    results = [
        {
            "method": method,
            "center": center,
            "num_rays": n,
            "mean_iou": sums[(method, center, n)] / measured if measured else None,
            "instances": measured,
        }
        for method in methods
        for center in centers
        for n in num_rays
    ]
    return {
        "annotations": os.path.abspath(annotations_path),
        "raster": raster,
        "results": results,
        "skipped": dict(sorted(skipped.items())),
        "skipped_examples": {reason: ids for reason, ids in sorted(examples.items())},
        "dropped_parts": dict(sorted(dropped_parts.items())),
    }


def format_table(report):
    """The report's mean IoUs as a text table: one row per (method, centre), one column per N."""
    num_rays = sorted({r["num_rays"] for r in report["results"]})
    rows = collections.OrderedDict()
    for r in report["results"]:
        rows.setdefault((r["method"], r["center"]), {})[r["num_rays"]] = r["mean_iou"]
    header = f"{'method':<10} {'center':<7}" + "".join(f" {f'N={n}':>8}" for n in num_rays)
    lines = [header, "-" * len(header)]
    for (method, center), values in rows.items():
        cells = "".join(f" {values[n]:>8.4f}" if values.get(n) is not None else f" {'-':>8}" for n in num_rays)
        lines.append(f"{method:<10} {center:<7}{cells}")
    instances = report["results"][0]["instances"] if report["results"] else 0
    skipped = ", ".join(f"{k}: {v}" for k, v in report["skipped"].items()) or "none"
    lines.append(f"instances measured: {instances}; skipped: {skipped}")
    if report.get("dropped_parts"):
        parts = ", ".join(f"{k}: {v}" for k, v in report["dropped_parts"].items())
        lines.append(f"invalid polygon parts left out of measured instances: {parts}")
    return "\n".join(lines)


def plot(report, path):
    """Mean IoU against ray count, one line per (method, centre), saved as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lines = collections.OrderedDict()
    for r in report["results"]:
        if r["mean_iou"] is not None:
            lines.setdefault((r["method"], r["center"]), []).append((r["num_rays"], r["mean_iou"]))
    figure, axes = plt.subplots(figsize=(6, 4), dpi=120)
    for (method, center), points in lines.items():
        points.sort()
        axes.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=f"{method} rays, {center} centre")
    axes.set_xlabel("number of rays")
    axes.set_ylabel("mean IoU with the ground-truth mask")
    instances = report["results"][0]["instances"] if report["results"] else 0
    axes.set_title(f"Polar representation upper bound ({instances} instances)")
    axes.grid(True, alpha=0.3)
    axes.legend()
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
