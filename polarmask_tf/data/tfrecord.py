"""The TFRecord schema: one `tf.train.Example` per image, written by data.records_writer and read
by data/pipeline. This module is the only place that knows the feature keys.

Coordinates are pixels in this project's frame (pixel (row i, column j) has its centre at
(x=j, y=i)), i.e. COCO polygon coordinates minus 0.5, clipped to the image's outer pixel edges
[-0.5, width - 0.5] x [-0.5, height - 0.5]. Boxes are [x1, y1, x2, y2], the extent of all of an
instance's parts (for an RLE mask: its pixel-edge outline, so the box runs along the outer edges
of its first and last pixels, half a pixel outside their centres).

| key | type | shape | meaning |
|---|---|---|---|
| image/encoded | bytes | scalar | the image file (JPEG or PNG; CMYK/16-bit images are re-encoded as PNG) |
| image/format | bytes | scalar | b"jpeg" or b"png" |
| image/filename | bytes | scalar | file name relative to the images directory |
| image/id | int64 | scalar | COCO image id |
| image/height, image/width | int64 | scalar | image size in pixels |
| instance/label | int64 | [M] | contiguous label 1..C (0 is background) |
| instance/category_id | int64 | [M] | the dataset's own category id |
| instance/box | float | [M*4] | x1, y1, x2, y2 of all the instance's parts |
| instance/area | float | [M] | COCO area (pixels^2) |
| instance/mass_center | float | [M*2] | area centroid (x, y) of the instance's largest part |
| instance/num_parts | int64 | [M] | polygon parts per instance, the largest part first |
| part/num_vertices | int64 | [S] | vertices per part, S = sum(num_parts) |
| part/vertices | float | [T*2] | x, y of every vertex of every part, T = sum(num_vertices) |
"""

import numpy as np
import tensorflow as tf

_INT = tf.io.FixedLenFeature([], tf.int64)
_BYTES = tf.io.FixedLenFeature([], tf.string)
FEATURES = {
    "image/encoded": _BYTES,
    "image/format": _BYTES,
    "image/filename": _BYTES,
    "image/id": _INT,
    "image/height": _INT,
    "image/width": _INT,
    "instance/label": tf.io.VarLenFeature(tf.int64),
    "instance/category_id": tf.io.VarLenFeature(tf.int64),
    "instance/box": tf.io.VarLenFeature(tf.float32),
    "instance/area": tf.io.VarLenFeature(tf.float32),
    "instance/mass_center": tf.io.VarLenFeature(tf.float32),
    "instance/num_parts": tf.io.VarLenFeature(tf.int64),
    "part/num_vertices": tf.io.VarLenFeature(tf.int64),
    "part/vertices": tf.io.VarLenFeature(tf.float32),
}


def _ints(values):
    return tf.train.Feature(int64_list=tf.train.Int64List(value=[int(v) for v in np.ravel(values)]))


def _floats(values):
    return tf.train.Feature(float_list=tf.train.FloatList(value=np.ravel(np.asarray(values, np.float32)).tolist()))


def _bytes(value):
    return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))


def encode_example(record):
    """Serialises one image record to `tf.train.Example` bytes.

    record: dict with
      encoded (bytes), format ("jpeg"/"png"), file_name (str), image_id, height, width (int),
      labels, category_ids (int [M]), boxes (float [M, 4]), areas (float [M]),
      mass_centers (float [M, 2]), polygons (list over instances of lists of float [V, 2] parts,
      the largest part first).
    """
    polygons = record["polygons"]
    parts = [np.asarray(part, np.float32).reshape(-1, 2) for instance in polygons for part in instance]
    feature = {
        "image/encoded": _bytes(record["encoded"]),
        "image/format": _bytes(record["format"].encode()),
        "image/filename": _bytes(record["file_name"].encode()),
        "image/id": _ints([record["image_id"]]),
        "image/height": _ints([record["height"]]),
        "image/width": _ints([record["width"]]),
        "instance/label": _ints(record["labels"]),
        "instance/category_id": _ints(record["category_ids"]),
        "instance/box": _floats(record["boxes"]),
        "instance/area": _floats(record["areas"]),
        "instance/mass_center": _floats(record["mass_centers"]),
        "instance/num_parts": _ints([len(instance) for instance in polygons]),
        "part/num_vertices": _ints([len(part) for part in parts]),
        "part/vertices": _floats(np.concatenate(parts) if parts else np.zeros((0, 2))),
    }
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString(deterministic=True)


def parse_example(serialized):
    """Parses one serialised example (graph-safe) into dense tensors.

    Returns a dict: encoded (string), format (string), filename (string), image_id (int64),
    height, width (int32), labels (int32 [M]), category_ids (int32 [M]), boxes (float32 [M, 4]),
    areas (float32 [M]), mass_centers (float32 [M, 2]), num_parts (int32 [M]),
    part_num_vertices (int32 [S]), part_vertices (float32 [T, 2]).
    """
    parsed = tf.io.parse_single_example(serialized, FEATURES)
    dense = {key: tf.sparse.to_dense(value) if isinstance(value, tf.SparseTensor) else value
             for key, value in parsed.items()}
    return {
        "encoded": dense["image/encoded"],
        "format": dense["image/format"],
        "filename": dense["image/filename"],
        "image_id": dense["image/id"],
        "height": tf.cast(dense["image/height"], tf.int32),
        "width": tf.cast(dense["image/width"], tf.int32),
        "labels": tf.cast(dense["instance/label"], tf.int32),
        "category_ids": tf.cast(dense["instance/category_id"], tf.int32),
        "boxes": tf.reshape(dense["instance/box"], [-1, 4]),
        "areas": dense["instance/area"],
        "mass_centers": tf.reshape(dense["instance/mass_center"], [-1, 2]),
        "num_parts": tf.cast(dense["instance/num_parts"], tf.int32),
        "part_num_vertices": tf.cast(dense["part/num_vertices"], tf.int32),
        "part_vertices": tf.reshape(dense["part/vertices"], [-1, 2]),
    }


def largest_parts(parsed, max_vertices):
    """Each instance's largest polygon part at a fixed vertex count.

    Returns (polygons float32 [M, max_vertices, 2], num_vertices int32 [M], the valid prefix).
    A part with fewer vertices is padded by repeating its last vertex (degenerate edges, which ray
    casting and areas ignore); a part with more is subsampled at indices floor(j * n / max_vertices),
    as the original's fast loader did for long contours.
    """
    part_offsets = tf.cumsum(parsed["num_parts"], exclusive=True)  # [M] index of each instance's first part
    vertex_offsets = tf.cumsum(parsed["part_num_vertices"], exclusive=True)  # [S]
    count = tf.gather(parsed["part_num_vertices"], part_offsets)  # [M]
    start = tf.gather(vertex_offsets, part_offsets)
    j = tf.range(max_vertices, dtype=tf.int32)[None, :]
    n = count[:, None]
    subsampled = (j * n) // max_vertices
    local = tf.where(n > max_vertices, subsampled, tf.minimum(j, n - 1))
    return tf.gather(parsed["part_vertices"], start[:, None] + local), tf.minimum(count, max_vertices)


def instance_parts(parsed, index):
    """All polygon parts of instance `index` as a list of float32 numpy [V, 2] (eager only; tests, tools)."""
    num_parts = parsed["num_parts"].numpy()
    counts = parsed["part_num_vertices"].numpy()
    vertices = parsed["part_vertices"].numpy()
    first = int(num_parts[:index].sum())
    offsets = np.concatenate([[0], np.cumsum(counts)])
    return [vertices[offsets[p] : offsets[p + 1]] for p in range(first, first + int(num_parts[index]))]
