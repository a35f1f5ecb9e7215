"""Geometric and photometric augmentation acting on an image and its polygons together.

Coordinates are in this project's pixel-centre frame (pixel (i, j) has its centre at (x=j, y=i)).
`Instances` carry, per instance: boxes [M, 4] (x1, y1, x2, y2), centers [M, 2] (x, y),
polygons [M, V, 2] and num_vertices [M] (the valid prefix of each padded polygon). Every function
moves the image and all of these with the same transform, so nothing is rasterised and traced again.
"""

import collections

import tensorflow as tf

Instances = collections.namedtuple("Instances", ["labels", "boxes", "centers", "polygons", "num_vertices"])


def _scale_points(points, scale_yx):
    """Maps (x, y) points through a resize by (sy, sx): pixel centres sit at (x + 0.5) * s - 0.5."""
    scale_xy = tf.reverse(scale_yx, [0])
    return (points + 0.5) * scale_xy - 0.5


def resize(image, instances, size):
    """Resizes image uint8 or float32 [h, w, 3] to `size` (int32 [2], height and width) with
    bilinear interpolation, and the instances with it. Returns (image float32, instances,
    scale float32 [2] = (sy, sx))."""
    shape = tf.cast(tf.shape(image)[:2], tf.float32)
    scale = tf.cast(size, tf.float32) / shape
    image = tf.image.resize(image, size, method="bilinear")
    boxes = tf.reshape(_scale_points(tf.reshape(instances.boxes, [-1, 2]), scale), [-1, 4])
    moved = instances._replace(
        boxes=boxes,
        centers=_scale_points(instances.centers, scale),
        polygons=_scale_points(instances.polygons, scale),
    )
    return image, moved, scale


def horizontal_flip(image, instances):
    """Mirrors x -> width - 1 - x. Polygon vertex order is reversed so that orientation is kept;
    boxes swap x1 and x2."""
    width = tf.cast(tf.shape(image)[1], tf.float32)
    boxes = instances.boxes
    boxes = tf.stack([width - 1.0 - boxes[:, 2], boxes[:, 1], width - 1.0 - boxes[:, 0], boxes[:, 3]], axis=-1)
    mirror = tf.constant([-1.0, 1.0])
    shift = tf.stack([width - 1.0, 0.0])
    polygons = instances.polygons * mirror + shift
    count = instances.num_vertices[:, None]
    j = tf.range(tf.shape(polygons)[1])[None, :]
    reversed_index = tf.where(j < count, count - 1 - j, 0)  # padding repeats the new last vertex
    return tf.reverse(image, [1]), instances._replace(
        boxes=boxes,
        centers=instances.centers * mirror + shift,
        polygons=tf.gather(polygons, reversed_index, batch_dims=1),
    )


def photometric_jitter(image, seed):
    """Random brightness, contrast, saturation and hue on an RGB float32 image in [0, 255].
    seed: int32 [2] for the stateless random ops."""
    seeds = tf.random.experimental.stateless_split(seed, 4)
    x = image / 255.0
    x = tf.image.stateless_random_brightness(x, 0.125, seeds[0])
    x = tf.image.stateless_random_contrast(x, 0.75, 1.25, seeds[1])
    x = tf.image.stateless_random_saturation(tf.clip_by_value(x, 0.0, 1.0), 0.75, 1.25, seeds[2])
    x = tf.image.stateless_random_hue(x, 0.04, seeds[3])
    return tf.clip_by_value(x, 0.0, 1.0) * 255.0
