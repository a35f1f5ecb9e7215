"""How good can rays be? The representation upper bound of PolarMask on a COCO dataset.

Every (method, centre, N) row is one complete method, from the annotation to the mask it yields,
scored per instance by the IoU of that mask with COCO's own mask of the annotation (pycocotools'
rasterisation, what COCO evaluation compares detections with); the row's mean is the mask IoU a
perfect model of that method reaches. The methods (METHODS):

- "exact", this project's pipeline: the instance as the TFRecord conversion reads it
  (data.coco.image_instances: polygon parts shifted into our pixel frame and clipped, an RLE traced
  along its pixels' outer edges by geometry.mask_outlines, parts ordered by area), its largest
  part, the centre (that part's mass centre, or the centre of the instance's box: polar.center),
  N rays cast exactly from the centre to the part (geometry.ray_distances, as the target encoder
  casts them), decoded and clipped to the image (geometry.rays_to_polygon) and rasterised with
  evaluation's rule (pixel centres inside or on the polygon, evaluation.rasterize_windows).
- "reference", the original's whole method (spec sections 2 and 5): the largest contour of the COCO
  mask through its boundary pixels' centres (cv2.findContours, RETR_TREE, CHAIN_APPROX_NONE), its
  integer-truncated mass centre (or the truncated centre of the mask's pixel box), the rays read off
  the contour's vertices in 1-degree bins, decoded, clipped, truncated to integers and filled with
  cv2.drawContours (geometry.rasterize_reference).
- "reference_exact": the original's method with the rays cast exactly to its contour instead of
  binned, so that its difference to "reference" is the ray rule alone.

    report = run("instances_val2017.json", num_rays=[18, 36, 72], methods=["exact", "reference"],
                 centers=["mass"])
    print(format_table(report))

The command is polarmask-upper-bound (cli/upper_bound.py). All rows measure the same instances: the
non-crowd annotations that pass the conversion's checks, with a COCO area of at least `min_area`
(the conversion's 16 px^2 by default). An instance that cannot be measured (crowd, too small, empty
or degenerate, broken segmentation, or one that a requested method cannot handle) is counted under
"skipped" by reason, with a few annotation ids per reason; the run never stops on one of them.
Segmentations are checked with data.coco.check_segmentation before pycocotools rasterises them:
huge coordinates ("far_outside_image"), malformed RLEs and null segmentations are skipped instead of
exhausting memory or crashing; invalid parts of an otherwise valid annotation are left out and
counted under "dropped_parts". Means are also reported per COCO size class of the annotation's
area (small < 32^2, medium < 96^2, large), and the report holds every instance's IoUs.
"""

import collections
import functools
import sys

import numpy as np

from polarmask_tf import fileio
from polarmask_tf.progress import ProgressBar

EXAMPLES_PER_REASON = 5

METHODS = {
    "exact": "ours: the conversion's largest polygon part (an RLE's pixel-edge outline), exact rays, "
             "pixel centres inside the polygon",
    "reference": "the original: the mask's pixel-centre contour, integer centre, 1-degree vertex bins, "
                 "truncation + cv2.drawContours",
    "reference_exact": "the original with exact rays to its contour (integer centre, truncation + drawContours)",
}

SIZES = (("small", 0.0, 32.0**2), ("medium", 32.0**2, 96.0**2), ("large", 96.0**2, float("inf")))
"""COCO's area ranges (px^2 of the annotation's area): [low, high)."""
_SIZE_TEXT = {"small": "area < 32²", "medium": "32² ≤ area < 96²", "large": "area ≥ 96²"}


def size_class(area):
    """COCO's size class of an annotation area: "small", "medium" or "large"."""
    return next(name for name, low, high in SIZES if low <= area < high)


def key_name(method, center, num_rays):
    """The per-instance IoU key of a row: "method/center/N"."""
    return f"{method}/{center}/{num_rays}"


def _load_coco(path):
    """The json at `path`; ValueError naming the file when it cannot be read or is not COCO instances."""
    try:
        data = fileio.read_json(path)
    except OSError as error:
        raise ValueError(f"cannot read annotations {path}: {error}") from None
    if (not isinstance(data, dict) or not isinstance(data.get("images"), list)
            or not isinstance(data.get("annotations"), list)):
        raise ValueError(f"{path} is not a COCO instances file (needs 'images' and 'annotations' lists)")
    return data


# --------------------------------------------------------------------------------------------
# One instance


@functools.lru_cache(maxsize=None)
def _decoder(num_rays, method):
    """A traced (polygon [V, 2], origins [C, 2], image (height, width)) -> decoded ray polygons
    [C, N, 2]: geometry.ray_distances then rays_to_polygon clipped to the image, one trace per
    (N, method) instead of some forty eager TensorFlow calls per instance."""
    import tensorflow as tf

    from polarmask_tf import geometry

    @tf.function(input_signature=[tf.TensorSpec([None, 2], tf.float32), tf.TensorSpec([None, 2], tf.float32),
                                  tf.TensorSpec([2], tf.float32)])
    def decode(polygon, origins, image_shape):
        rays = geometry.ray_distances(polygon, origins, num_rays, method=method)
        return geometry.rays_to_polygon(origins, rays, image_shape)

    return decode


def _ray_polygons(polygon, origins, num_rays, method, shape):
    """Validated as geometry.ray_distances validates concrete input, then _decoder's polygons (numpy)."""
    from polarmask_tf import geometry

    polygon = geometry.validate_polygon(polygon, "contour" if method == "reference" else "polygon",
                                        require_area=method == "exact")
    return _decoder(int(num_rays), method)(polygon, np.asarray(origins, np.float32), np.float32(shape)).numpy()


def pipeline_instance(annotation, height, width, label_map, min_area):
    """The instance our target encoder sees: (largest part float32 [V, 2], {"mass": centre, "box":
    centre} float32 [2], Skips of the parts left out), in our pixel frame.

    Read by data.coco.image_instances exactly as the TFRecord conversion reads it. Raises
    GeometryError with the conversion's reason when it drops the annotation.
    """
    from polarmask_tf.data import coco
    from polarmask_tf.geometry import GeometryError

    skips = coco.Skips()
    instances = coco.image_instances([annotation], height, width, label_map, min_area, skips)
    if not len(instances["labels"]):
        reason = next(iter(skips.annotations.counts), "empty_mask")
        raise GeometryError(reason, f"the conversion drops the annotation ({reason})")
    box = instances["boxes"][0]
    centres = {"mass": instances["mass_centers"][0],
               "box": np.array([(box[0] + box[2]) / 2, (box[1] + box[3]) / 2], np.float32)}
    return instances["polygons"][0][0], centres, skips


def exact_ious(mask, part, centres, num_rays, centers):
    """Our pipeline's IoUs with `mask` (bool [H, W], COCO's mask): rays cast exactly from each
    centre to `part` [V, 2], decoded, clipped and rasterised with evaluation's rule.
    Returns {(center, n): IoU}."""
    from polarmask_tf import evaluation

    height, width = mask.shape
    origins = np.stack([np.asarray(centres[center], np.float32) for center in centers])
    ious = {}
    for n in num_rays:
        polygons = _ray_polygons(part, origins, n, "exact", mask.shape)
        windows, filled = evaluation.rasterize_windows(polygons, height, width)
        for center, window, pixels in zip(centers, windows, filled, strict=True):
            ious[(center, n)] = _window_iou(pixels, window, mask)
    return ious


def reference_ious(mask, num_rays, centers, exact_rays=False):
    """The original's method's IoUs with `mask` (bool [H, W]): its contour of the mask, integer
    centre, binned (or, with exact_rays, exactly cast) rays, truncate-and-drawContours raster.
    Returns {(center, n): IoU}."""
    from polarmask_tf import geometry
    from polarmask_tf.data import reference_targets

    height, width = mask.shape
    contour = reference_targets.largest_contour(mask)
    if contour is None:
        raise geometry.GeometryError("empty_mask", "the mask covers no pixel")
    found = {"mass": reference_targets.contour_mass_centre(contour)}
    if "box" in centers:
        x1, y1, x2, y2 = reference_targets.mask_box(mask)
        found["box"] = (int((x1 + x2) / 2), int((y1 + y2) / 2))
    origins = np.array([found[center] for center in centers], np.float32)
    contour = contour.astype(np.float32)
    ious = {}
    for n in num_rays:
        polygons = _ray_polygons(contour, origins, n, "exact" if exact_rays else "reference", mask.shape)
        for center, polygon in zip(centers, polygons, strict=True):
            ious[(center, n)] = _iou(geometry.rasterize_reference(polygon, height, width), mask)
    return ious


def instance_ious(mask, num_rays, methods, centers, part=None, centres=None):
    """Upper-bound IoUs of one instance: {(method, center, n): IoU}.

    mask: bool [H, W], COCO's mask of the annotation. part, centres: the instance as our conversion
    reads it (pipeline_instance); when not given the mask is taken as an RLE annotation would be
    (its largest pixel-edge outline, that outline's mass centre, the centre of all parts' extent).
    Raises GeometryError when a method cannot measure the instance.
    """
    from polarmask_tf import geometry

    mask = np.asarray(mask, bool)
    if part is None:
        parts, _ = geometry.mask_outlines(mask)
        if not parts:
            raise geometry.GeometryError("empty_mask", "the mask covers no pixel")
        part = parts[0]
        every = np.concatenate(parts)
        low, high = every.min(axis=0), every.max(axis=0)
        centres = {"mass": geometry.mass_center(part).numpy(), "box": (low + high) / 2}
    ious = {}
    for method in methods:
        if method == "exact":
            found = exact_ious(mask, part, centres, num_rays, centers)
        elif method in ("reference", "reference_exact"):
            found = reference_ious(mask, num_rays, centers, exact_rays=method == "reference_exact")
        else:
            raise ValueError(f"unknown method {method!r}: use one of {', '.join(METHODS)}")
        ious.update({(method, center, n): iou for (center, n), iou in found.items()})
    return ious


def _iou(a, b):
    union = np.count_nonzero(a | b)
    return np.count_nonzero(a & b) / union if union else 0.0


def _window_iou(pixels, window, mask):
    """IoU of a polygon's pixels [y1 - y0, x1 - x0] at window (x0, y0, x1, y1) with a whole mask."""
    x0, y0, x1, y1 = (int(v) for v in window)
    inside = np.count_nonzero(pixels & mask[y0:y1, x0:x1])
    union = np.count_nonzero(pixels) + np.count_nonzero(mask) - inside
    return inside / union if union else 0.0


# --------------------------------------------------------------------------------------------
# A whole file


def _label_map(data):
    """Labels for every int category id of the file (the category plays no part in the bound)."""
    from polarmask_tf.data import coco

    ids = {c.get("id") for c in data.get("categories") or () if isinstance(c, dict)}
    ids |= {a.get("category_id") for a in data["annotations"] if isinstance(a, dict)}
    ids = sorted(i for i in ids if isinstance(i, int) and not isinstance(i, bool))
    return coco.LabelMap.from_coco_categories([{"id": i, "name": str(i)} for i in ids])


def run(annotations_path, num_rays, methods, centers, min_area=None, max_instances=None, stream=sys.stdout):
    """Measures the upper bound over a COCO file; returns the report dict (see format_table).

    min_area: instances with a smaller COCO area are skipped ("small_area"); None is the TFRecord
    conversion's data.coco.DEFAULT_MIN_AREA (16 px^2). max_instances: only the first annotations.
    """
    from polarmask_tf import geometry
    from polarmask_tf.data import coco

    min_area = coco.DEFAULT_MIN_AREA if min_area is None else float(min_area)

    for method in methods:
        if method not in METHODS:
            raise ValueError(f"unknown method {method!r}: use one of {', '.join(METHODS)}")
    data = _load_coco(annotations_path)
    images = {image.get("id"): image for image in data["images"] if isinstance(image, dict)}
    annotations = [a for a in data["annotations"] if isinstance(a, dict)]
    if max_instances:
        annotations = annotations[:max_instances]
    label_map = _label_map(data)
    skipped = collections.Counter()
    examples = collections.defaultdict(list)
    dropped_parts = collections.Counter()
    measured = []

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
            height, width = image["height"], image["width"]
            # The conversion's checks first: pycocotools never sees what it cannot rasterise.
            segmentation, _ = coco.check_segmentation(annotation.get("segmentation"), height, width)
            part, centres, parts_skipped = pipeline_instance(annotation, height, width, label_map, min_area)
            mask = geometry.coco_segmentation_to_mask(segmentation, height, width).astype(bool)
            if not mask.any():
                raise geometry.GeometryError("empty_mask", "the segmentation covers no pixel")
            ious = instance_ious(mask, num_rays, methods, centers, part, centres)
            dropped_parts.update(parts_skipped.parts.counts)
            area = float(annotation["area"])
            measured.append({"id": annotation.get("id"), "image_id": annotation.get("image_id"), "area": area,
                             "size": size_class(area), "iou": {key_name(*key): iou for key, iou in ious.items()}})
        except geometry.GeometryError as error:
            skip(error.reason, annotation)
        except Exception as error:  # a long job never dies on one record; the reason names the error
            skip(f"error:{type(error).__name__}", annotation)
        bar.update(1, measured=len(measured))
    bar.close()

    def mean(key, subset):
        values = [instance["iou"][key] for instance in subset]
        return {"mean_iou": float(np.mean(values)) if values else None, "instances": len(values)}

    by_size = {name: [i for i in measured if i["size"] == name] for name, _, _ in SIZES}
    results = []
    for method in methods:
        for center in centers:
            for n in num_rays:
                key = key_name(method, center, n)
                results.append({"method": method, "center": center, "num_rays": n, **mean(key, measured),
                                "by_size": {name: mean(key, subset) for name, subset in by_size.items()}})
    return {
        "annotations": fileio.absolute(annotations_path),
        "min_area": float(min_area),
        "methods": {method: METHODS[method] for method in methods},
        "results": results,
        "skipped": dict(sorted(skipped.items())),
        "skipped_examples": {reason: ids for reason, ids in sorted(examples.items())},
        "dropped_parts": dict(sorted(dropped_parts.items())),
        "per_instance": measured,
    }


# --------------------------------------------------------------------------------------------
# Output


def format_table(report):
    """The report's mean IoUs as a text table: one row per (method, centre) and size class (all
    instances first), one column per N; then what each method is and what was skipped."""
    num_rays = sorted({r["num_rays"] for r in report["results"]})
    rows = collections.OrderedDict()
    for r in report["results"]:
        row = rows.setdefault((r["method"], r["center"]), {})
        row.setdefault("all", [r["instances"], {}])[1][r["num_rays"]] = r["mean_iou"]
        for name, entry in (r.get("by_size") or {}).items():
            row.setdefault(name, [entry["instances"], {}])[1][r["num_rays"]] = entry["mean_iou"]
    header = f"{'method':<16} {'center':<7} {'instances':<16}" + "".join(f" {f'N={n}':>8}" for n in num_rays)
    lines = [header, "-" * len(header)]
    for (method, center), groups in rows.items():
        for index, (group, (count, values)) in enumerate(groups.items()):
            label = f"{method:<16} {center:<7}" if index == 0 else " " * 24
            cells = "".join(f" {values[n]:>8.4f}" if values.get(n) is not None else f" {'-':>8}" for n in num_rays)
            lines.append(f"{label} {f'{group} ({count})':<16}{cells}")
    for method, description in report.get("methods", {}).items():
        lines.append(f"{method}: {description}")
    instances = report["results"][0]["instances"] if report["results"] else 0
    skipped = ", ".join(f"{k}: {v}" for k, v in report["skipped"].items()) or "none"
    lines.append(f"instances measured: {instances} (COCO area >= {report.get('min_area', 0):g} px^2; small < 32^2, "
                 f"medium < 96^2); skipped: {skipped}")
    if report.get("dropped_parts"):
        parts = ", ".join(f"{k}: {v}" for k, v in report["dropped_parts"].items())
        lines.append(f"invalid polygon parts left out of measured instances: {parts}")
    return "\n".join(lines)


def plot(report, path):
    """Mean IoU against ray count, one line per (method, centre), for all instances and each size
    class (2 x 2 panels), saved as a PNG at `path` (local or URI)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = ["all"] + [name for name, _, _ in SIZES]
    lines = collections.OrderedDict()
    counts = {}
    for r in report["results"]:
        entries = {"all": r, **(r.get("by_size") or {})}
        for group, entry in entries.items():
            counts[group] = entry["instances"]
            if entry["mean_iou"] is not None:
                lines.setdefault((r["method"], r["center"]), {}).setdefault(group, []).append(
                    (r["num_rays"], entry["mean_iou"]))
    colours = {"exact": "tab:blue", "reference": "tab:red", "reference_exact": "tab:green"}
    names = {"exact": "exact (ours)", "reference": "reference (the original)",
             "reference_exact": "reference_exact (original, exact rays)"}
    figure, axes = plt.subplots(2, 2, figsize=(9, 6.5), dpi=110, sharex=True, sharey=True)
    for ax, group in zip(axes.flat, groups, strict=True):
        for (method, center), by_group in lines.items():
            points = sorted(by_group.get(group, []))
            if points:
                ax.plot([p[0] for p in points], [p[1] for p in points], marker="o" if center == "mass" else "s",
                        color=colours.get(method), linestyle="-" if center == "mass" else "--",
                        label=f"{names.get(method, method)}, {center} centre")
        title = "all instances" if group == "all" else f"{group} ({_SIZE_TEXT[group]})"
        ax.set_title(f"{title}: {counts.get(group, 0)}", fontsize=10)
        ax.set_xticks(sorted({n for by_group in lines.values() for p in by_group.get(group, []) for n in [p[0]]}))
        ax.grid(True, alpha=0.3)
    for ax in axes[1]:
        ax.set_xlabel("number of rays")
    for ax in axes[:, 0]:
        ax.set_ylabel("mean IoU with COCO's mask")
    # In the large objects' panel, whose bottom stays free; the handles of "all", which has every line.
    axes.flat[-1].legend(*axes.flat[0].get_legend_handles_labels(), fontsize=8, loc="lower right")
    figure.suptitle("Polar representation upper bound", fontsize=11)
    figure.tight_layout()
    fileio.write_figure(path, figure)
    plt.close(figure)
