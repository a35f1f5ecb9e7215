"""Deterministic synthetic instance-segmentation data ("shapes") in COCO format.

Every image is a textured background (colour gradient, optional stripes or checkerboard,
optional low-frequency blotches, gaussian noise) with 2-6 filled shapes of seven kinds:
circle, ellipse, rectangle, triangle, 5-point star, L shape and U shape. Shapes are drawn in
order, so later shapes occlude earlier ones, and every annotation describes the VISIBLE part of
its shape: its own filled mask minus the union of the masks drawn after it.

Conventions used throughout:
  * images are uint8 RGB arrays [H, W, 3]; pixel (x, y) is image[y, x];
  * masks are bool arrays [H, W];
  * polygon coordinates are float32 [K, 2] (x, y) in pixels, with the centre of pixel x at
    coordinate x (as cv2.findContours reports contours); annotation polygons run along the
    visible pixels' outer edges (see mask_to_polygons); the COCO json puts pixel centres at
    x + 0.5 (COCO's convention, which pycocotools rasterises by), so it holds the same
    polygons shifted by COCO_PIXEL_OFFSET;
  * bbox is COCO [x, y, w, h] in pixels: (x, y) is the top-left visible pixel and
    w = xmax - xmin + 1, h = ymax - ymin + 1.

A placement that would leave an earlier instance with too little visible area (below
MIN_VISIBLE_FRACTION of its full area or below MIN_VISIBLE_AREA pixels), or whose visible part
is not well described by polygons (for example a ring around a hole), is rejected and
re-sampled rather than drawn and left unannotated, so every shape pixel in an image belongs to
an annotation.

Each image is generated from numpy.random.default_rng((seed, index)), so its content depends
only on the seed, its index and the size range, never on the train/val split.
"""

import json
import os

import cv2
import numpy as np
from pycocotools import mask as mask_utils

from polarmask_tf import fileio, geometry

SHAPE_NAMES = ("circle", "ellipse", "rectangle", "triangle", "star", "L-shape", "U-shape")
CATEGORIES = tuple(
    {"id": i + 1, "name": name, "supercategory": "shape"} for i, name in enumerate(SHAPE_NAMES)
)

INSTANCES_PER_IMAGE = (2, 6)
PLACEMENT_TRIES = 30
MIN_SHAPE_SIDE = 28.0
MAX_SHAPE_FRACTION = 0.6
MIN_VISIBLE_FRACTION = 0.4
MIN_VISIBLE_AREA = 64
MIN_PART_AREA = 4.0
MAX_POLYGON_ERROR = 0.1
MIN_COLOUR_DISTANCE = 90.0
JPEG_QUALITY = 95
SPLITS = ("train", "val")
COCO_PIXEL_OFFSET = 0.5

_SUBPIXEL_BITS = 4


def mask_to_polygons(mask):
    """Outer outlines of a mask along its pixels' edges, one polygon per connected part
    (geometry.mask_outlines; holes are not described: placements that leave a hole larger than
    MAX_POLYGON_ERROR of the area are re-sampled).

    The outlines have half-integer coordinates and enclose exactly the pixel centres of the part:
    rasterising them (here, with pycocotools after the COCO shift, or with geometry.rasterize)
    gives the mask back.

    Args:
        mask: bool or uint8 array [H, W].

    Returns:
        list of float32 arrays [K, 2] of (x, y) pixel coordinates, one per connected part, largest
        first; parts with an area below MIN_PART_AREA px are dropped.
    """
    parts, _ = geometry.mask_outlines(mask)
    return [part for part in parts if cv2.contourArea(part) >= MIN_PART_AREA]


def outlines_to_mask(polygons, height, width):
    """The pixels whose centres lie inside pixel-edge outlines (mask_to_polygons), bool [H, W];
    pycocotools' rasterisation, as COCO evaluation sees the annotation."""
    coco = [(np.asarray(p, np.float64) + COCO_PIXEL_OFFSET).reshape(-1).tolist() for p in polygons]
    return mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(coco, height, width))).astype(bool)


def polygons_to_mask(polygons, height, width):
    """Rasterises polygons (union of their filled interiors, boundary pixels included).

    Args:
        polygons: iterable of float arrays [K, 2] of (x, y) pixel coordinates.
        height, width: mask size in pixels.

    Returns:
        bool array [height, width].
    """
    scaled = [np.round(np.asarray(p) * (1 << _SUBPIXEL_BITS)).astype(np.int32) for p in polygons]
    mask = np.zeros((height, width), np.uint8)
    cv2.fillPoly(mask, scaled, 1, lineType=cv2.LINE_8, shift=_SUBPIXEL_BITS)
    return mask.astype(bool)


def _unit_outline(kind, rng):
    """Outline of a shape kind as float64 [K, 2], centred at 0 with a bounding box of 1 x 1."""
    if kind in ("circle", "ellipse"):
        angles = np.linspace(0.0, 2.0 * np.pi, 64, endpoint=False)
        points = np.stack([np.cos(angles), np.sin(angles)], axis=1)
    elif kind == "rectangle":
        points = np.array([[0, 0], [1, 0], [1, 1], [0, 1]], np.float64)
    elif kind == "triangle":
        angles = np.pi / 2 + 2 * np.pi / 3 * np.arange(3) + rng.uniform(-0.4, 0.4, 3)
        points = np.stack([np.cos(angles), np.sin(angles)], axis=1)
    elif kind == "star":
        angles = np.pi / 2 + np.pi / 5 * np.arange(10)
        radii = np.where(np.arange(10) % 2 == 0, 1.0, rng.uniform(0.45, 0.6))
        points = np.stack([radii * np.cos(angles), radii * np.sin(angles)], axis=1)
    elif kind == "L-shape":
        arm, leg = rng.uniform(0.35, 0.5, 2)
        points = np.array([[0, 0], [1, 0], [1, arm], [leg, arm], [leg, 1], [0, 1]], np.float64)
        points[:, 0] *= rng.choice([-1.0, 1.0])
    elif kind == "U-shape":
        arm, base = rng.uniform(0.28, 0.36), rng.uniform(0.3, 0.45)
        points = np.array(
            [[0, 0], [arm, 0], [arm, 1 - base], [1 - arm, 1 - base], [1 - arm, 0], [1, 0],
             [1, 1], [0, 1]],
            np.float64,
        )
    else:
        raise ValueError(f"unknown shape kind {kind!r}")
    low, high = points.min(axis=0), points.max(axis=0)
    return (points - (low + high) / 2) / (high - low)


def _sample_outline(kind, rng, width, height):
    """A randomly sized, rotated and positioned outline of `kind`, float64 [K, 2] in pixels.

    The long side is uniform in [MIN_SHAPE_SIDE + 4, 0.45 * min(width, height)] px, the short
    side at least MIN_SHAPE_SIDE px; the rotated shape is shrunk if needed so its extent is at
    most MAX_SHAPE_FRACTION of the image side, and placed fully inside the image.
    """
    long_side = rng.uniform(MIN_SHAPE_SIDE + 4, max(MIN_SHAPE_SIDE + 4, 0.45 * min(width, height)))
    if kind == "circle":
        size, angle = np.array([long_side, long_side]), 0.0
    else:
        aspect = rng.uniform(0.4, 0.75) if kind == "ellipse" else rng.uniform(0.55, 1.0)
        size = np.array([long_side, max(MIN_SHAPE_SIDE, aspect * long_side)])
        angle = rng.uniform(0.0, 2.0 * np.pi)
    cos, sin = np.cos(angle), np.sin(angle)
    points = (_unit_outline(kind, rng) * size) @ np.array([[cos, sin], [-sin, cos]])
    extent = points.max(axis=0) - points.min(axis=0)
    points *= min(1.0, *(MAX_SHAPE_FRACTION * np.array([width, height]) / extent))
    low = -points.min(axis=0)
    high = np.array([width - 1, height - 1]) - points.max(axis=0)
    return points + rng.uniform(low, high)


def _describe_visible(visible, full_area):
    """Annotation fields of one visible mask, or None if it is too small or badly described."""
    area = int(np.count_nonzero(visible))
    if area < max(MIN_VISIBLE_AREA, MIN_VISIBLE_FRACTION * full_area):
        return None
    polygons = mask_to_polygons(visible)
    if not polygons:
        return None
    raster = outlines_to_mask(polygons, *visible.shape)
    if np.count_nonzero(raster != visible) > MAX_POLYGON_ERROR * area:
        return None
    xs = np.flatnonzero(visible.any(axis=0))
    ys = np.flatnonzero(visible.any(axis=1))
    bbox = [int(xs[0]), int(ys[0]), int(xs[-1] - xs[0] + 1), int(ys[-1] - ys[0] + 1)]
    return {"mask": visible, "polygons": polygons, "area": area, "bbox": bbox,
            "full_area": int(full_area)}


def _describe_layers(full_masks):
    """Visible-region descriptions of stacked masks (later ones on top), or None if any fails."""
    covered = np.zeros_like(full_masks[0])
    described = []
    for full in reversed(full_masks):
        instance = _describe_visible(full & ~covered, np.count_nonzero(full))
        if instance is None:
            return None
        described.append(instance)
        covered |= full
    return described[::-1]


def _background(rng, height, width):
    """Textured background, float32 [height, width, 3] RGB in about [0, 255]."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)

    def along(angle):
        return xx * np.float32(np.cos(angle)) + yy * np.float32(np.sin(angle))

    ramp = along(rng.uniform(0, 2 * np.pi))
    ramp = (ramp - ramp.min()) / max(float(np.ptp(ramp)), 1.0)
    start, end = rng.uniform(0, 255, (2, 3)).astype(np.float32)
    image = start + ramp[..., None] * (end - start)

    pattern = rng.choice(["plain", "stripes", "checkerboard"])
    if pattern != "plain":
        angle, period = rng.uniform(0, 2 * np.pi), rng.uniform(8, 40)
        u = along(angle) / np.float32(period)
        if pattern == "stripes":
            weight = (np.sin(2 * np.pi * u) + 1) / 2 if rng.random() < 0.5 else np.floor(u) % 2
        else:
            v = along(angle + np.pi / 2) / np.float32(period)
            weight = (np.floor(u) + np.floor(v)) % 2
        colour = rng.uniform(0, 255, 3).astype(np.float32)
        image += rng.uniform(0.15, 0.45) * weight[..., None] * (colour - image)

    if rng.random() < 0.5:
        cells = rng.integers(3, 9, size=2)
        coarse = rng.normal(0, 1, (cells[0], cells[1], 3)).astype(np.float32)
        blotches = cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC)
        image += rng.uniform(10, 30) * blotches

    image += rng.normal(0, rng.uniform(2, 10), image.shape).astype(np.float32)
    return image


def _pick_colour(rng, references):
    """A fill colour, float64 [3], at least MIN_COLOUR_DISTANCE (RGB L2) from every reference
    colour [N, 3] if one of 32 candidates is; otherwise the most distant candidate."""
    candidates = rng.uniform(0, 255, (32, 3))
    distance = np.linalg.norm(candidates[:, None] - references[None], axis=-1).min(axis=1)
    far_enough = distance >= MIN_COLOUR_DISTANCE
    return candidates[np.argmax(far_enough) if far_enough.any() else np.argmax(distance)]


def _paint(rng, image, mask, colour):
    """Fills `mask` [H, W] of the float image [H, W, 3] with `colour` plus shading and noise."""
    ys, xs = np.nonzero(mask)
    angle = rng.uniform(0, 2 * np.pi)
    ramp = (xs - xs.mean()) * np.cos(angle) + (ys - ys.mean()) * np.sin(angle)
    ramp /= max(np.abs(ramp).max(), 1.0)
    shading = rng.uniform(-25, 25) * ramp[:, None]
    noise = rng.normal(0, rng.uniform(2, 6), (len(xs), 3))
    image[ys, xs] = colour + shading + noise


def draw_image(rng, width, height):
    """Draws one synthetic image with its visible-instance annotations.

    Args:
        rng: numpy.random.Generator, the only source of randomness.
        width, height: image size in pixels (at least 64 each).

    Returns:
        image: uint8 array [height, width, 3], RGB.
        instances: list (in drawing order, bottom to top) of dicts with
            category_id: int in 1..7, see CATEGORIES;
            mask: bool [height, width], the visible pixels (disjoint across instances);
            polygons: list of float32 [K, 2] (x, y) outer contours of the visible mask;
            area: int, visible pixel count;
            bbox: [x, y, w, h] ints of the visible mask (COCO convention);
            full_area: int, pixel count of the unoccluded shape.
    """
    if width < 64 or height < 64:
        raise ValueError(f"image size must be at least 64 x 64, got {width} x {height}")
    image = _background(rng, height, width)
    count = rng.integers(INSTANCES_PER_IMAGE[0], INSTANCES_PER_IMAGE[1] + 1)
    full_masks, colours, category_ids, described = [], [], [], []
    for kind_index in rng.integers(0, len(SHAPE_NAMES), size=count):
        for _ in range(PLACEMENT_TRIES):
            outline = _sample_outline(SHAPE_NAMES[kind_index], rng, width, height)
            mask = polygons_to_mask([outline], height, width)
            candidate = _describe_layers(full_masks + [mask])
            if candidate is not None:
                break
        else:
            continue
        overlapped = [c for m, c in zip(full_masks, colours, strict=True) if np.any(m & mask)]
        references = np.array([image[mask].mean(axis=0), *overlapped])
        colour = _pick_colour(rng, references)
        _paint(rng, image, mask, colour)
        full_masks.append(mask)
        colours.append(colour)
        category_ids.append(int(kind_index) + 1)
        described = candidate
    instances = [dict(category_id=c, **d) for c, d in zip(category_ids, described, strict=True)]
    return np.clip(np.rint(image), 0, 255).astype(np.uint8), instances


def render_image(seed, index, min_size=192, max_size=320):
    """Image `index` of the dataset for `seed`: size drawn uniformly (inclusive) in
    [min_size, max_size] px per side, content from draw_image. Returns draw_image's output."""
    rng = np.random.default_rng((seed, index))
    width, height = (int(side) for side in rng.integers(min_size, max_size + 1, size=2))
    return draw_image(rng, width, height)


def _coco_annotation(instance, annotation_id, image_id):
    return {
        "id": annotation_id,
        "image_id": image_id,
        "category_id": instance["category_id"],
        "segmentation": [[float(v) for v in (p + COCO_PIXEL_OFFSET).reshape(-1)] for p in instance["polygons"]],
        "area": instance["area"],
        "bbox": instance["bbox"],
        "iscrowd": 0,
    }


def check_arguments(num_images, seed, val_fraction, min_size, max_size):
    """Raises ValueError unless the generate_dataset arguments are valid."""
    if int(num_images) != num_images or num_images < 1:
        raise ValueError(f"num_images must be a positive integer, got {num_images!r}")
    if int(seed) != seed or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction!r}")
    if min_size < 64:
        raise ValueError(f"min_size must be at least 64 px, got {min_size!r}")
    if min_size > max_size:
        raise ValueError(f"min_size ({min_size}) must not exceed max_size ({max_size})")
    if round(num_images * val_fraction) >= num_images:
        raise ValueError(
            f"val_fraction={val_fraction} of {num_images} images leaves no training images"
        )


def generate_dataset(output_dir, num_images, seed=0, val_fraction=0.2, min_size=192,
                     max_size=320, on_image=None):
    """Writes a synthetic COCO-format dataset.

    Layout: output_dir/{train,val}/NNNNNN.jpg (JPEG quality 95) and
    output_dir/annotations/instances_{train,val}.json. Image i (0-based) has id and file number
    i + 1; the last round(num_images * val_fraction) images form the val split. Both json files
    are always written, so with val_fraction=0 the val json has empty images/annotations.
    Annotation ids are unique across both files, starting at 1 in train. Existing files in
    output_dir are overwritten but never deleted.

    Args:
        output_dir: directory to write to (created if missing).
        num_images: total number of images, >= 1.
        seed: non-negative int; equal arguments give byte-identical files.
        val_fraction: fraction of images in val, in [0, 1), leaving at least one train image.
        min_size, max_size: range of image width and height in pixels (inclusive, min >= 64).
        on_image: optional callable invoked with no arguments after each image is written.

    Returns:
        dict with "annotation_files" and "image_dirs" ({split: path}), "num_images"
        ({split: int}) and "num_instances" ({split: {category name: int}}).
    """
    check_arguments(num_images, seed, val_fraction, min_size, max_size)
    num_val = round(num_images * val_fraction)
    indices = {"train": range(num_images - num_val), "val": range(num_images - num_val, num_images)}
    names = {c["id"]: c["name"] for c in CATEGORIES}
    output_dir = str(output_dir)
    annotation_dir = os.path.join(output_dir, "annotations")
    summary = {"annotation_files": {}, "image_dirs": {}, "num_images": {}, "num_instances": {}}
    annotation_id = 1
    for split in SPLITS:
        image_dir = os.path.join(output_dir, split)
        fileio.makedirs(image_dir)
        images, annotations = [], []
        counts = dict.fromkeys(SHAPE_NAMES, 0)
        for index in indices[split]:
            image, instances = render_image(seed, index, min_size, max_size)
            image_id = index + 1
            file_name = f"{image_id:06d}.jpg"
            bgr = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
            ok, jpeg = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
            if not ok:
                raise OSError(f"could not encode {os.path.join(image_dir, file_name)}")
            fileio.write_bytes(os.path.join(image_dir, file_name), jpeg.tobytes())
            height, width = image.shape[:2]
            images.append(
                {"id": image_id, "file_name": file_name, "width": width, "height": height}
            )
            for instance in instances:
                annotations.append(_coco_annotation(instance, annotation_id, image_id))
                counts[names[instance["category_id"]]] += 1
                annotation_id += 1
            if on_image is not None:
                on_image()
        coco = {
            "info": {
                "description": "polarmask_tf synthetic shapes",
                "version": "1.0",
                "seed": int(seed),
                "min_size": int(min_size),
                "max_size": int(max_size),
            },
            "licenses": [],
            "images": images,
            "annotations": annotations,
            "categories": [dict(c) for c in CATEGORIES],
        }
        annotation_file = os.path.join(annotation_dir, f"instances_{split}.json")
        fileio.write_text(annotation_file, json.dumps(coco))
        summary["annotation_files"][split] = annotation_file
        summary["image_dirs"][split] = image_dir
        summary["num_images"][split] = len(images)
        summary["num_instances"][split] = counts
    return summary
