"""COCO instances -> image records for the TFRecord schema (see data/tfrecord.py).

Three jobs, each robust to real-world data:
- `load_coco`: validate an instances json, then index it with pycocotools.
- `LabelMap`: sparse category ids (COCO's 1..90) -> contiguous labels 1..C (0 is background).
- `image_record`: one image's file bytes (checked, re-encoded when TensorFlow could not use them)
  and its instances as polygon parts in this project's pixel frame.

Pixel frame: pixel (row i, column j) has its centre at (x=j, y=i); COCO polygons put it at j + 0.5,
so polygon coordinates are COCO's minus COCO_PIXEL_OFFSET. Vertices are clipped to the image's outer
pixel edges, x in [-0.5, width - 0.5] and y in [-0.5, height - 0.5].

What is dropped, and why (each skip is counted by reason in a `Skips`):
- annotations: "bad_iscrowd" (iscrowd other than 0, 1, false, true, "0", "1"); "crowd";
  "unknown_category"; "bad_area" (missing or not a finite number); "small_area" (COCO area <
  min_area); "bad_segmentation" (malformed or null); "fewer_than_3_points"; "non_finite" (NaN/inf);
  "far_outside_image" (a vertex more than OUTSIDE_IMAGE_LIMIT image sizes outside the image, e.g.
  1e12: pycocotools would allocate gigabytes to rasterise it); "zero_size_box" (zero width or
  height after clipping, e.g. entirely outside the image); "zero_area" (|signed shoelace area| <=
  MIN_PART_AREA); the RLE reasons of geometry.check_rle ("bad_rle_size", "rle_size_mismatch",
  "bad_rle_counts", "rle_counts_sum_mismatch") and "empty_mask"; "image_skipped" (its image was
  skipped). A multi-part annotation is dropped only when none of its parts is
  valid, with the reason of its first invalid part; otherwise the invalid parts alone are dropped
  and counted in `Skips.parts`.
- images: "missing_image", "unreadable_image", "corrupt_image", "undecodable_image",
  "size_mismatch" (the file's size differs from the json's: its annotations would be misplaced).

The segmentation checks are `check_segmentation` (with `parse_iscrowd`), shared by the TFRecord
conversion, evaluation (`load_ground_truth`, which also needs a finite area and bbox and a sized
image) and the upper-bound tool, so that nothing pycocotools cannot rasterise reaches it.

Self-intersecting polygons (a bow-tie) are kept as given: ray casting takes the farthest boundary
crossing, which is defined for any closed polygon. Their shoelace area is the difference of the
lobes' areas, which only orders the parts, and their area centroid lies on the line through the
lobes' centroids, beyond the larger one: for the usual annotator slip (a small loop) it moves the
mass centre by (small lobe / large lobe) x (distance between the lobes' centroids). A symmetric
bow-tie has signed area ~0 and is dropped as "zero_area", like any polygon without a centroid.
3 of the 929 non-crowd annotations of coco128 have a self-intersecting part.
"""

import collections
import contextlib
import dataclasses
import io
import json
import math
import os
import re

import cv2
import numpy as np
import tensorflow as tf
from pycocotools.coco import COCO

from polarmask_tf import fileio, geometry
from polarmask_tf.geometry import GeometryError

COCO_PIXEL_OFFSET = 0.5
"""COCO polygon coordinate of the centre of pixel 0; this project puts it at 0."""

DEFAULT_MIN_AREA = 16.0
"""Annotations with a COCO area below this many px^2 are dropped (the original drops area <= 15)."""

OUTSIDE_IMAGE_LIMIT = 4.0
"""Polygon vertices may lie at most this many times max(height, width) outside the image
("far_outside_image" beyond): bounds what pycocotools allocates to rasterise a polygon."""

MIN_PART_AREA = 1e-6
"""Polygon parts with |signed area| at or below this many px^2 are degenerate ("zero_area")."""

EXAMPLES_PER_REASON = 5

_JPEG_MAGIC = b"\xff\xd8"
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_JPEG_EOI, _JPEG_SOS = b"\xff\xd9", b"\xff\xda"
# Huffman-coded baseline, extended and progressive frames: what every JPEG decoder reads.
_JPEG_PLAIN_FRAMES = {0xC0, 0xC1, 0xC2}
_JPEG_FRAMES = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
_JPEG_STANDALONE = {0x01, *range(0xD0, 0xD8)}


# --------------------------------------------------------------------------------------------
# Skip accounting


@dataclasses.dataclass
class ReasonLog:
    """Counts by reason plus up to EXAMPLES_PER_REASON example ids per reason."""

    counts: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    examples: dict = dataclasses.field(default_factory=dict)

    def add(self, reason, example_id):
        self.counts[reason] += 1
        ids = self.examples.setdefault(reason, [])
        if len(ids) < EXAMPLES_PER_REASON:
            ids.append(example_id)

    def merge(self, other):
        """Adds `other`'s counts and examples (kept in order, still at most EXAMPLES_PER_REASON)."""
        self.counts.update(other.counts)
        for reason, ids in other.examples.items():
            mine = self.examples.setdefault(reason, [])
            mine.extend(ids[: EXAMPLES_PER_REASON - len(mine)])

    def total(self):
        return sum(self.counts.values())

    def to_dict(self):
        """{"counts": {reason: n}, "examples": {reason: [ids]}}, reasons sorted."""
        return {
            "counts": dict(sorted(self.counts.items())),
            "examples": {reason: list(self.examples[reason]) for reason in sorted(self.examples)},
        }


@dataclasses.dataclass
class Skips:
    """What was left out: whole images (image ids), annotations (annotation ids) and degenerate
    polygon parts of annotations that were kept (annotation ids). `reencoded` is not a skip: the
    images kept but stored as a PNG re-encoding, by cause (image ids)."""

    images: ReasonLog = dataclasses.field(default_factory=ReasonLog)
    annotations: ReasonLog = dataclasses.field(default_factory=ReasonLog)
    parts: ReasonLog = dataclasses.field(default_factory=ReasonLog)
    reencoded: ReasonLog = dataclasses.field(default_factory=ReasonLog)

    def merge(self, other):
        for field in dataclasses.fields(self):
            getattr(self, field.name).merge(getattr(other, field.name))


# --------------------------------------------------------------------------------------------
# Instances json


class InvalidAnnotationsError(ValueError):
    """An annotations file that is not JSON or not COCO instances; the message names the file."""


def read_instances_json(path):
    """Loads and validates a COCO instances json; returns the dict.

    Raises InvalidAnnotationsError (a ValueError) naming the file when it is not JSON or not COCO
    instances: the top level must hold "images", "annotations" and "categories" lists; images need
    an int "id" and a str "file_name" (and, if given, positive int "height"/"width"); annotations
    need int "id", "image_id" and "category_id"; categories need an int "id" and a "name"; image
    and category ids are unique. These are what pycocotools indexes by and the TFRecords store.
    OSError (missing or unreadable file) propagates.
    """
    raw = fileio.read_bytes(path)
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise InvalidAnnotationsError(f"{path} is not valid JSON: {error}") from None
    if not isinstance(data, dict):
        kind = type(data).__name__
        raise InvalidAnnotationsError(f"{path} is not a COCO instances file: its top level is a {kind}, not an object")
    missing = [key for key in ("images", "annotations", "categories") if not isinstance(data.get(key), list)]
    if missing:
        names = ", ".join(map(repr, missing))
        raise InvalidAnnotationsError(f"{path} is not a COCO instances file: missing the list(s) {names}")
    _check_entries(path, "images", data["images"], {"id": _is_int, "file_name": lambda v: isinstance(v, str) and v})
    _check_entries(path, "annotations", data["annotations"],
                   {"id": _is_int, "image_id": _is_int, "category_id": _is_int})
    _check_entries(path, "categories", data["categories"], {"id": _is_int, "name": _present})
    for index, image in enumerate(data["images"]):
        for key in ("height", "width"):
            if key in image and not (_is_int(image[key]) and image[key] > 0):
                raise InvalidAnnotationsError(
                    f"{path}: images[{index}] (id {image['id']}) has {key}={image[key]!r}, expected a positive integer"
                )
    for name in ("images", "categories"):
        ids = collections.Counter(entry["id"] for entry in data[name])
        repeated = sorted(i for i, n in ids.items() if n > 1)
        if repeated:
            raise InvalidAnnotationsError(f"{path}: {name} ids must be unique, "
                                          f"repeated: {repeated[:EXAMPLES_PER_REASON]}")
    return data


def _is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)


def _present(value):
    return value is not None


def _check_entries(path, name, entries, required):
    for index, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise InvalidAnnotationsError(f"{path}: {name}[{index}] is a {type(entry).__name__}, not an object")
        for key, valid in required.items():
            if not valid(entry.get(key)):
                got = "missing" if key not in entry else f"invalid ({entry[key]!r})"
                raise InvalidAnnotationsError(f"{path}: {name}[{index}] key {key!r} is {got}")


def load_coco(path):
    """A validated instances json (see read_instances_json) indexed by pycocotools.COCO.

    The json is parsed once, validated, then handed to COCO (so a malformed file gives an
    InvalidAnnotationsError naming it instead of a KeyError deep in pycocotools). COCO's index messages are
    silenced.
    """
    data = read_instances_json(path)
    coco = COCO()
    coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def check_ground_truth(data):
    """A copy of a COCO instances dict (read_instances_json) that pycocotools can index and
    evaluate without crashing, and the Skips of what was left out.

    Images without an int "height" and "width" ("missing_size": pycocotools needs them to
    rasterise) are dropped with their annotations ("image_skipped"). Annotations are dropped for
    "unknown_image", "bad_iscrowd", "bad_area", "bad_bbox" (not 4 finite numbers with non-negative
    width and height) and the reasons of check_segmentation; polygon parts check_segmentation
    rejects are removed from annotations that keep a valid part (counted in `parts`). Kept
    annotations get iscrowd as int 0/1. Crowd annotations are kept (COCOeval ignores what they
    cover). Parts that are merely degenerate (zero area, outside the image) are kept: pycocotools
    rasterises them to nothing.
    """
    skips = Skips()
    sizes, images = {}, []
    for image in data["images"]:
        if _is_int(image.get("height")) and _is_int(image.get("width")):
            sizes[image["id"]] = (image["height"], image["width"])
            images.append(image)
        else:
            skips.images.add("missing_size", image["id"])
    known = {image["id"] for image in data["images"]}
    annotations = []
    for annotation in data["annotations"]:
        try:
            if annotation["image_id"] not in known:
                raise GeometryError("unknown_image", "image id not in 'images'")
            if annotation["image_id"] not in sizes:
                raise GeometryError("image_skipped", "its image was dropped")
            iscrowd = parse_iscrowd(annotation.get("iscrowd", 0))
            area = _finite_number(annotation.get("area"))
            if area is None:
                raise GeometryError("bad_area", f"area {annotation.get('area')!r:.40} is not a finite number")
            bbox = annotation.get("bbox")
            bbox = [_finite_number(v) for v in bbox] if isinstance(bbox, (list, tuple)) and len(bbox) == 4 else None
            if bbox is None or None in bbox or bbox[2] < 0 or bbox[3] < 0:
                raise GeometryError("bad_bbox", f"bbox {annotation.get('bbox')!r:.60} is not [x, y, w, h]")
            segmentation, parts = check_segmentation(annotation.get("segmentation"), *sizes[annotation["image_id"]])
        except GeometryError as error:
            skips.annotations.add(error.reason, annotation["id"])
            continue
        for part in parts or ():
            if isinstance(part, GeometryError):
                skips.parts.add(part.reason, annotation["id"])
        annotations.append(dict(annotation, iscrowd=int(iscrowd), area=area, bbox=bbox, segmentation=segmentation))
    return dict(data, images=images, annotations=annotations), skips


def load_ground_truth(path):
    """(pycocotools COCO, Skips): the instances json at `path` validated (read_instances_json),
    cleaned by check_ground_truth, and only then indexed, so that pycocotools never sees an
    annotation it cannot rasterise. Call it before running a model: a bad ground truth fails or
    is reported before the inference, not after."""
    data, skips = check_ground_truth(read_instances_json(path))
    coco = COCO()
    coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco, skips


def format_skips(skips, what="annotations"):
    """One line for the terminal of a Skips of ground truth: images, annotations and parts dropped
    by reason with example ids ("" when nothing was dropped)."""
    pieces = []
    for name, log in (("images", skips.images), (what, skips.annotations), ("polygon parts", skips.parts)):
        if log.total():
            reasons = ", ".join(f"{reason}: {n} (e.g. {log.examples[reason]})"
                                for reason, n in sorted(log.counts.items()))
            pieces.append(f"{log.total()} {name} ({reasons})")
    return "; ".join(pieces)


# --------------------------------------------------------------------------------------------
# Label map


@dataclasses.dataclass(frozen=True)
class Category:
    label: int
    category_id: int
    name: str


@dataclasses.dataclass(frozen=True)
class LabelMap:
    """Contiguous labels 1..C for a dataset's category ids, in increasing category id order.

    Label 0 is the background. `categories[label - 1]` describes `label`.
    """

    categories: tuple
    _by_id: dict = dataclasses.field(init=False, repr=False, compare=False)

    def __post_init__(self):
        object.__setattr__(self, "_by_id", {c.category_id: c.label for c in self.categories})

    @classmethod
    def from_coco_categories(cls, categories):
        """From a COCO "categories" list (dicts with int "id" and "name")."""
        ordered = sorted(categories, key=lambda c: c["id"])
        return cls(tuple(Category(i + 1, int(c["id"]), str(c["name"])) for i, c in enumerate(ordered)))

    @property
    def num_classes(self):
        """C, the number of object classes (labels 1..C)."""
        return len(self.categories)

    def label_of(self, category_id):
        """The label of an int category id, or None if it is unknown or not an int."""
        return self._by_id.get(category_id) if _is_int(category_id) else None

    def to_dict(self):
        return {
            "background_label": 0,
            "categories": [dataclasses.asdict(c) for c in self.categories],
        }

    @classmethod
    def from_dict(cls, data, source="label map"):
        """Inverse of to_dict; raises ValueError naming `source` if labels are not 1..C in order."""
        try:
            categories = tuple(Category(int(c["label"]), int(c["category_id"]), str(c["name"]))
                               for c in data["categories"])
        except (KeyError, TypeError, ValueError) as error:
            raise ValueError(f"{source}: not a label map ({type(error).__name__}: {error})") from None
        if [c.label for c in categories] != list(range(1, len(categories) + 1)):
            raise ValueError(f"{source}: labels must be 1..C in order")
        return cls(categories)


def write_label_map(label_map, path):
    """Writes the label map as JSON (see LabelMap.to_dict), atomically (fileio.write_json)."""
    fileio.write_json(path, label_map.to_dict(), indent=2)


def read_label_map(path):
    """Reads a label map written by write_label_map (local path or URI)."""
    return LabelMap.from_dict(fileio.read_json(path), source=str(path))


_SHARD_SUFFIX = re.compile(r"-[*?\d\[\]]+(-of-[*?\d\[\]]+)?\.tfrecord$")


def labels_beside_shards(pattern):
    """The label map path create_tfrecords writes beside shards matching `pattern`
    (<prefix>-labels.json for <prefix>-*.tfrecord), or None when the pattern has no shard suffix."""
    prefix = _SHARD_SUFFIX.sub("", pattern)
    return None if prefix == pattern else f"{prefix}-labels.json"


def model_label_map(config, path=None):
    """The label map of a model (labels 1..config.model.num_classes -> category ids and names).

    From `path` when given (ValueError naming it when it is unreadable or has another number of
    classes); else the one create_tfrecords wrote beside config.data.train_files, if it exists and
    fits; else labels standing for themselves: category id k, name "class k".
    """
    num_classes = config.model.num_classes
    if path is not None:
        try:
            label_map = read_label_map(path)
        except (OSError, ValueError) as error:
            raise ValueError(f"cannot read the label map {path}: {error}") from error
        if label_map.num_classes != num_classes:
            raise ValueError(f"{path} has {label_map.num_classes} classes, the model {num_classes}")
        return label_map
    beside = labels_beside_shards(config.data.train_files)
    if beside is not None and fileio.is_file(beside):
        try:
            label_map = read_label_map(beside)
        except (OSError, ValueError):
            label_map = None
        if label_map is not None and label_map.num_classes == num_classes:
            return label_map
    return LabelMap(tuple(Category(k, k, f"class {k}") for k in range(1, num_classes + 1)))


# --------------------------------------------------------------------------------------------
# Images


class ImageError(ValueError):
    """An image file that cannot be used; `reason` tags it for the skip counts."""

    def __init__(self, reason, message):
        super().__init__(message)
        self.reason = reason


@dataclasses.dataclass(frozen=True)
class EncodedImage:
    """Image bytes that tf.io.decode_image(channels=3, expand_animations=False) decodes to uint8.

    encoded: the file's own bytes, or a PNG re-encoding; format: "jpeg" or "png";
    height, width: pixels; converted_from: None if the bytes are the file's, else why they were
    re-encoded ("cmyk_or_unusual_jpeg", "16_bit_png", "other_format").
    """

    encoded: bytes
    format: str
    height: int
    width: int
    converted_from: str = None


def read_image(path):
    """Reads an image file and checks it; returns an EncodedImage or raises ImageError.

    Reasons: "missing_image" (no such file), "unreadable_image" (other OS errors), plus those
    of `prepare_image_bytes`.
    """
    try:
        data = fileio.read_bytes(path)
    except OSError as error:  # FileNotFoundError included
        if isinstance(error, FileNotFoundError) or tf.io.gfile.isdir(path):
            raise ImageError("missing_image", f"{path}: no such file") from None
        raise ImageError("unreadable_image", str(error)) from None
    return prepare_image_bytes(data, name=str(path))


def prepare_image_bytes(data, name="image"):
    """Checks encoded image bytes by decoding them; returns an EncodedImage or raises ImageError.

    - JPEG (FF D8) with 8-bit, 1 or 3 components in a Huffman-coded frame: kept as is. Other JPEGs
      (CMYK/YCCK, 12-bit, lossless, arithmetic-coded) are decoded to BGR and re-encoded as PNG.
    - PNG (89 50 4E 47 ...), 8-bit gray/gray+alpha/RGB/RGBA/palette: kept. 16-bit: re-encoded as
      8-bit PNG (value >> 8), channels unchanged.
    - Anything OpenCV decodes (BMP, GIF's first frame, TIFF, WebP...): re-encoded as PNG.
    Orientation tags are ignored, as tf.io.decode_image does, so sizes agree with TensorFlow's.

    Reasons: "corrupt_image" (empty; a JPEG without an end-of-image marker after its last scan;
    a PNG without an IEND chunk after its image data; or JPEG/PNG bytes OpenCV cannot decode) and
    "undecodable_image" (another format OpenCV cannot decode, or a sample type other than 8/16 bit).
    """
    if not data:
        raise ImageError("corrupt_image", f"{name}: empty file")
    kind = "jpeg" if data.startswith(_JPEG_MAGIC) else "png" if data.startswith(_PNG_MAGIC) else "other"
    if kind == "jpeg" and data.rfind(_JPEG_EOI) < data.rfind(_JPEG_SOS):
        raise ImageError("corrupt_image", f"{name}: truncated JPEG (no end-of-image marker after the last scan)")
    if kind == "png" and data.rfind(b"IEND") < data.rfind(b"IDAT"):
        raise ImageError("corrupt_image", f"{name}: truncated PNG (no IEND chunk after the image data)")
    buffer = np.frombuffer(data, np.uint8)
    pixels = cv2.imdecode(buffer, cv2.IMREAD_UNCHANGED)
    if pixels is None:
        reason = "undecodable_image" if kind == "other" else "corrupt_image"
        raise ImageError(reason, f"{name}: OpenCV cannot decode it ({kind})")
    height, width = pixels.shape[:2]
    if kind == "jpeg":
        frame = _jpeg_frame(data)
        if frame is not None and frame[0] in _JPEG_PLAIN_FRAMES and frame[1] == 8 and frame[2] in (1, 3):
            return EncodedImage(data, "jpeg", height, width)
        # IMREAD_COLOR converts CMYK/YCCK (Adobe-inverted or not) to BGR, as libjpeg defines it.
        pixels = cv2.imdecode(buffer, cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
        if pixels is None:
            raise ImageError("corrupt_image", f"{name}: OpenCV cannot decode it to colour")
        return EncodedImage(_png_bytes(pixels, name), "png", height, width, "cmyk_or_unusual_jpeg")
    if kind == "png" and pixels.dtype == np.uint8:
        return EncodedImage(data, "png", height, width)
    converted_from = "16_bit_png" if kind == "png" else "other_format"
    return EncodedImage(_png_bytes(_to_uint8(pixels, name), name), "png", height, width, converted_from)


def _jpeg_frame(data):
    """(SOF marker, sample precision in bits, components) of a JPEG's frame header, or None."""
    i = 2
    while i + 4 <= len(data):
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in _JPEG_STANDALONE:
            i += 2
            continue
        if marker == 0xDA:  # a scan before any frame header
            return None
        if marker in _JPEG_FRAMES:
            return (marker, data[i + 4], data[i + 9]) if i + 10 <= len(data) else None
        i += 2 + int.from_bytes(data[i + 2 : i + 4], "big")
    return None


def _to_uint8(pixels, name):
    if pixels.dtype == np.uint8:
        return pixels
    if pixels.dtype == np.uint16:
        return (pixels >> 8).astype(np.uint8)
    raise ImageError("undecodable_image", f"{name}: {pixels.dtype} samples are not supported")


def _png_bytes(pixels, name):
    ok, encoded = cv2.imencode(".png", pixels)
    if not ok:
        raise ImageError("undecodable_image", f"{name}: cannot re-encode as PNG")
    return encoded.tobytes()


# --------------------------------------------------------------------------------------------
# Instances


@dataclasses.dataclass
class _Candidate:
    """An annotation that passed the per-annotation checks; parts not yet area-checked."""

    annotation_id: object
    label: int
    category_id: int
    area: float
    parts: list  # float32 [V, 2], clipped, in segmentation order
    failures: list  # (part index, reason) of parts already rejected
    indices: list  # part index of each entry of `parts`


def _finite_number(value):
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def parse_iscrowd(value):
    """COCO's iscrowd flag read strictly: 0, 1, False, True, "0" or "1" -> bool; anything else
    (2, 0.5, "yes", None, "") raises GeometryError "bad_iscrowd" (a non-empty string such as "0"
    must not read as true). Callers pass annotation.get("iscrowd", 0): a missing flag is 0."""
    if isinstance(value, bool):
        return value
    if _is_int(value) and value in (0, 1):
        return value == 1
    if isinstance(value, str) and value in ("0", "1"):
        return value == "1"
    raise GeometryError("bad_iscrowd", f"iscrowd {value!r:.40} is not 0 or 1")


def check_segmentation(segmentation, height, width):
    """The check of a ground-truth segmentation shared by conversion, evaluation and the upper
    bound, before anything hands it to pycocotools. Returns (segmentation, parts):

    - polygon list: segmentation is the list of its valid parts as given (flat float lists), parts
      a list over every given part of its float64 [V, 2] vertices in this project's frame, or of
      the GeometryError rejecting it ("bad_segmentation", "fewer_than_3_points", "non_finite",
      "far_outside_image").
    - RLE dict: segmentation as given, checked by geometry.check_rle; parts None.
    Raises GeometryError when nothing is usable: neither (null, a string, an empty list:
    "bad_segmentation"), an invalid RLE (its reason), or no valid part (the reason of the first).
    """
    if isinstance(segmentation, dict):
        geometry.check_rle(segmentation, height, width)
        return segmentation, None
    if not isinstance(segmentation, (list, tuple)) or not segmentation:
        raise GeometryError("bad_segmentation",
                            f"segmentation: expected a polygon list or RLE, got {segmentation!r:.40}")
    parts, valid = [], []
    for index, flat in enumerate(segmentation):
        try:
            parts.append(_coco_polygon_part(flat, index, height, width))
            valid.append([float(v) for v in flat])
        except GeometryError as error:
            parts.append(error)
    if not valid:
        raise parts[0]
    return valid, parts


def _coco_polygon_part(flat, index, height, width):
    """One COCO polygon (flat x0, y0, x1, y1, ...) -> float64 [V, 2] in this project's frame."""
    try:
        coords = np.asarray(flat, dtype=np.float64)
    except (TypeError, ValueError):
        raise GeometryError("bad_segmentation", f"polygon part {index}: not a list of numbers") from None
    if coords.ndim != 1 or coords.size % 2:
        raise GeometryError("bad_segmentation", f"polygon part {index}: not a flat list of x, y pairs")
    if coords.size < 6:
        raise GeometryError("fewer_than_3_points", f"polygon part {index}: {coords.size // 2} vertices")
    if not np.all(np.isfinite(coords)):
        raise GeometryError("non_finite", f"polygon part {index}: NaN or infinite coordinates")
    coords = coords.reshape(-1, 2)
    limit = OUTSIDE_IMAGE_LIMIT * max(height, width)
    low, high = coords.min(axis=0), coords.max(axis=0)
    if low[0] < -limit or low[1] < -limit or high[0] > width + limit or high[1] > height + limit:
        raise GeometryError("far_outside_image",
                            f"polygon part {index}: a vertex more than {limit:g} px outside the image")
    return coords - COCO_PIXEL_OFFSET


def _segmentation_parts(segmentation, height, width):
    """-> list over parts of (float64 [V, 2] in this project's frame, or the GeometryError that
    rejects that part). Raises GeometryError when the whole segmentation is unusable."""
    segmentation, parts = check_segmentation(segmentation, height, width)
    if parts is None:
        return list(geometry.coco_segmentation_to_polygons(segmentation, height, width))
    return parts


def _clip_part(part, height, width):
    """Clips vertices to the image's outer pixel edges -> float32 [V, 2]; GeometryError
    "zero_size_box" if the result has zero width or height (e.g. the part lies outside)."""
    low = -COCO_PIXEL_OFFSET
    clipped = np.stack(
        [np.clip(part[:, 0], low, width - COCO_PIXEL_OFFSET), np.clip(part[:, 1], low, height - COCO_PIXEL_OFFSET)],
        axis=1,
    ).astype(np.float32)
    extent = clipped.max(axis=0) - clipped.min(axis=0)
    if not np.all(extent > 0):
        raise GeometryError("zero_size_box", "zero width or height after clipping to the image")
    return clipped


def _candidate(annotation, height, width, label_map, min_area):
    """Per-annotation checks and clipping; raises GeometryError with the reason to drop it."""
    if parse_iscrowd(annotation.get("iscrowd", 0)):
        raise GeometryError("crowd", "crowd annotation")
    label = label_map.label_of(annotation["category_id"])
    if label is None:
        raise GeometryError("unknown_category", f"category id {annotation['category_id']!r} is not in 'categories'")
    area = _finite_number(annotation.get("area"))
    if area is None:
        raise GeometryError("bad_area", f"area {annotation.get('area')!r} is not a finite number")
    if area < min_area:
        raise GeometryError("small_area", f"area {area} < {min_area}")
    candidate = _Candidate(annotation["id"], label, int(annotation["category_id"]), area, [], [], [])
    for index, part in enumerate(_segmentation_parts(annotation.get("segmentation"), height, width)):
        try:
            if isinstance(part, GeometryError):
                raise part
            candidate.parts.append(_clip_part(part, height, width))
            candidate.indices.append(index)
        except GeometryError as error:
            candidate.failures.append((index, error.reason))
    return candidate


@tf.function(input_signature=[tf.TensorSpec([None, None, 2], tf.float32)])
def _areas_and_centres(parts):
    """Signed areas [P] (px^2) and area centroids [P, 2] (px) of padded parts [P, V, 2], in one
    traced call: eager TensorFlow costs ~1 ms per geometry call, which dominated conversion."""
    return geometry.polygon_area(parts), geometry.mass_center(parts)


def _pad_stack(parts):
    """Parts [V_i, 2] -> float32 [P, max V_i, 2], each padded by repeating its last vertex (which
    leaves shoelace areas and area centroids unchanged)."""
    longest = max(len(p) for p in parts)
    return np.stack([np.concatenate([p, np.repeat(p[-1:], longest - len(p), axis=0)]) for p in parts])


def _extent(vertices):
    """[x1, y1, x2, y2] of vertices [V, 2]."""
    return np.concatenate([vertices.min(axis=0), vertices.max(axis=0)])


def _empty_instances():
    return {
        "labels": np.zeros([0], np.int64),
        "category_ids": np.zeros([0], np.int64),
        "boxes": np.zeros([0, 4], np.float32),
        "areas": np.zeros([0], np.float32),
        "mass_centers": np.zeros([0, 2], np.float32),
        "polygons": [],
    }


def image_instances(annotations, height, width, label_map, min_area=DEFAULT_MIN_AREA, skips=None):
    """An image's annotations -> its instances, in annotation order.

    Returns a dict: labels, category_ids (int64 [M]), boxes (float32 [M, 4], x1, y1, x2, y2 =
    extent of all the instance's parts), areas (float32 [M], COCO area, px^2), mass_centers
    (float32 [M, 2], area centroid of the largest part), polygons (list over instances of lists of
    float32 [V, 2] parts, largest |area| first), all in pixels of this project's frame.
    Dropped annotations and parts are counted in `skips` (a Skips).
    """
    skips = skips if skips is not None else Skips()
    candidates = []
    for annotation in annotations:
        try:
            candidates.append(_candidate(annotation, height, width, label_map, min_area))
        except GeometryError as error:
            skips.annotations.add(error.reason, annotation.get("id"))
    all_parts = [part for c in candidates for part in c.parts]
    all_areas, all_centres = np.zeros([0], np.float32), np.zeros([0, 2], np.float32)
    if all_parts:
        signed_areas, all_centres = (t.numpy() for t in _areas_and_centres(_pad_stack(all_parts)))
        all_areas = np.abs(signed_areas)
    kept, offset = [], 0
    for c in candidates:
        areas, centres = all_areas[offset : offset + len(c.parts)], all_centres[offset : offset + len(c.parts)]
        offset += len(c.parts)
        c.failures += [(i, "zero_area") for i, a in zip(c.indices, areas, strict=True) if a <= MIN_PART_AREA]
        order = [k for k in np.argsort(-areas, kind="stable") if areas[k] > MIN_PART_AREA]
        if not order:
            skips.annotations.add(min(c.failures)[1], c.annotation_id)
            continue
        for _, reason in sorted(c.failures):
            skips.parts.add(reason, c.annotation_id)
        kept.append((c, [c.parts[k] for k in order], centres[order[0]]))
    if not kept:
        return _empty_instances()
    return {
        "labels": np.array([c.label for c, _, _ in kept], np.int64),
        "category_ids": np.array([c.category_id for c, _, _ in kept], np.int64),
        "boxes": np.array([_extent(np.concatenate(parts)) for _, parts, _ in kept], np.float32),
        "areas": np.array([c.area for c, _, _ in kept], np.float32),
        "mass_centers": np.array([centre for _, _, centre in kept], np.float32),
        "polygons": [parts for _, parts, _ in kept],
    }


def image_record(image, annotations, images_dir, label_map, min_area=DEFAULT_MIN_AREA, skips=None):
    """One image entry of the json and its annotations -> a record for tfrecord.encode_example,
    or None when the image is skipped (reason counted in `skips.images`, and its annotations
    under "image_skipped").

    image: dict with "id", "file_name" (relative to images_dir) and optionally "height"/"width",
    which must equal the file's size ("size_mismatch" otherwise). Records with no instance left
    (M = 0) are returned: callers decide whether to keep them.
    """
    skips = skips if skips is not None else Skips()
    path = os.path.join(images_dir, image["file_name"])
    try:
        decoded = read_image(path)
        expected = (image.get("height", decoded.height), image.get("width", decoded.width))
        if expected != (decoded.height, decoded.width):
            raise ImageError(
                "size_mismatch",
                f"{path}: the file is {decoded.width}x{decoded.height}, the json says {expected[1]}x{expected[0]}",
            )
    except ImageError as error:
        skips.images.add(error.reason, image["id"])
        for annotation in annotations:
            skips.annotations.add("image_skipped", annotation.get("id"))
        return None
    if decoded.converted_from:
        skips.reencoded.add(decoded.converted_from, image["id"])
    instances = image_instances(annotations, decoded.height, decoded.width, label_map, min_area, skips)
    return {
        "encoded": decoded.encoded,
        "format": decoded.format,
        "file_name": image["file_name"],
        "image_id": image["id"],
        "height": decoded.height,
        "width": decoded.width,
        **instances,
    }
