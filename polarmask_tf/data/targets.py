"""The polar target encoder: ground-truth instances -> dense per-location training targets.

Pure TensorFlow with static shapes, so it runs inside tf.data maps and under
tf.function(jit_compile=True). The rules are the original's (spec section 2), on one padded image:

- FPN locations: modeling.pyramid.locations (PolarConfig.grid: cell centres, or the original's
  j*s + s//2), flattened row-major per level and concatenated P3 -> P7.
- Box targets (l, t, r, b) = (x - x1, y - y1, x2 - x, y2 - y), boxes inclusive-pixel [x1, y1, x2, y2].
- Centre sampling: a location is a candidate for an instance when it lies strictly inside the
  window centre +- radius * stride intersected with the instance box.
- Level filter: max(l, t, r, b) must lie in the level's regress range (inclusive at both ends).
- Ambiguity: the candidate instance with the smallest box area (w + 1)(h + 1); ties -> lowest index.
- Rays: measured from the location itself to the instance's largest polygon part (exact ray casting
  by default, the original's vertex binning with ray_method="reference").
- Centerness target: sqrt(min ray / max ray).
"""

import numpy as np
import tensorflow as tf

from polarmask_tf import geometry
from polarmask_tf.modeling import pyramid


def encode_targets(labels, boxes, centers, polygons, image_shape, polar):
    """Targets of one image.

    labels: int32 [M], 0 for padding entries. boxes: float32 [M, 4] x1, y1, x2, y2 (inclusive
    pixel boxes). centers: float32 [M, 2], the centre of each instance's sampling window (mass
    centre or box centre). polygons: float32 [M, V, 2], each instance's largest part, padded by
    repeating its last vertex. image_shape: static (height, width) of the padded image, pixels.
    polar: config.PolarConfig.

    Returns a dict, P = number of FPN locations for image_shape:
      labels int32 [P] (0 = negative), rays float32 [P, N] (0 for negatives), boxes float32 [P, 4]
      (l, t, r, b; 0 for negatives), centerness float32 [P] (0 for negatives).
    """
    height, width = image_shape
    labels = tf.convert_to_tensor(labels, tf.int32)
    boxes = tf.convert_to_tensor(boxes, tf.float32)
    centers = tf.convert_to_tensor(centers, tf.float32)
    polygons = tf.convert_to_tensor(polygons, tf.float32)
    points = tf.constant(pyramid.locations(height, width, polar.grid)[0])
    num_points = points.shape[0]
    num_instances = tf.shape(labels)[0]

    point_index, instance_index, valid = _candidates(labels, boxes, centers, image_shape, polar)
    # Ambiguity: per location the candidate with the smallest box area, then the lowest index.
    # Invalid candidates go to an extra segment (num_points) that is dropped.
    segment = tf.where(valid, point_index, num_points)
    area = (boxes[:, 2] - boxes[:, 0] + 1.0) * (boxes[:, 3] - boxes[:, 1] + 1.0)
    candidate_area = tf.where(valid, tf.gather(area, instance_index), np.inf)
    smallest = tf.math.unsorted_segment_min(candidate_area, segment, num_points + 1)
    best = valid & (candidate_area == tf.gather(smallest, segment))
    winner = tf.math.unsorted_segment_min(tf.where(best, instance_index, num_instances), segment, num_points + 1)
    assigned = tf.minimum(winner[:num_points], num_instances)  # num_instances: none (empty segments give INT_MAX)
    positive = assigned < num_instances

    # One extra all-zero instance at index num_instances makes every gather safe, even with M = 0.
    labels_ext = tf.concat([labels, [0]], axis=0)
    boxes_ext = tf.concat([boxes, tf.zeros([1, 4])], axis=0)
    polygons_ext = tf.concat([polygons, tf.zeros_like(polygons[:1])], axis=0)
    box = tf.gather(boxes_ext, assigned)
    ltrb = tf.concat([points - box[:, :2], box[:, 2:] - points], axis=-1)
    point_labels = tf.gather(labels_ext, assigned)
    point_boxes = tf.where(positive[:, None], ltrb, 0.0)
    rays = _positive_rays(points, positive, assigned, polygons_ext, polar)
    centerness = tf.where(positive, geometry.polar_centerness(rays), 0.0)
    return {"labels": point_labels, "rays": rays, "boxes": point_boxes, "centerness": centerness}


def _candidates(labels, boxes, centers, image_shape, polar):
    """(location index, instance index, valid) of every possible positive, each int32/bool [C].

    Centre sampling confines an instance's positives on a level to the grid points strictly inside
    centre +- radius * stride, at most K = ceil(2 * radius) per axis. Enumerating those K x K
    points per instance and level costs O(M * levels * K^2) instead of comparing every location
    with every instance (O(P * M)); the rules checked on them are the dense rule's, so the result
    is identical.
    """
    height, width = image_shape
    steps = max(int(np.ceil(2 * polar.center_sample_radius)), 1)
    offsets = tf.range(steps, dtype=tf.float32)
    x1, y1, x2, y2 = (boxes[:, i : i + 1] for i in range(4))  # [M, 1]
    cx, cy = centers[:, 0:1], centers[:, 1:2]
    active = (labels > 0)[:, None, None]
    point_index, instance_index, valid = [], [], []
    base = 0
    for stride, (rows, cols), (low, high) in zip(
        pyramid.STRIDES, pyramid.level_shapes(height, width), polar.regress_ranges, strict=True
    ):
        offset = pyramid.grid_offset(stride, polar.grid)
        radius = stride * polar.center_sample_radius
        x_low, x_high = tf.maximum(cx - radius, x1), tf.minimum(cx + radius, x2)
        y_low, y_high = tf.maximum(cy - radius, y1), tf.minimum(cy + radius, y2)
        # The first grid index strictly beyond the window's low edge, then `steps` indices on.
        j = tf.floor((x_low - offset) / stride) + 1.0 + offsets  # [M, K]
        i = tf.floor((y_low - offset) / stride) + 1.0 + offsets
        x, y = j * stride + offset, i * stride + offset
        inside_x = (x > x_low) & (x < x_high) & (j >= 0) & (j < cols)
        inside_y = (y > y_low) & (y < y_high) & (i >= 0) & (i < rows)
        x, y = x[:, None, :], y[:, :, None]  # [M, 1, K], [M, K, 1]: rows i, columns j
        extent = tf.maximum(
            tf.maximum(x - x1[:, :, None], y - y1[:, :, None]), tf.maximum(x2[:, :, None] - x, y2[:, :, None] - y)
        )
        ok = inside_x[:, None, :] & inside_y[:, :, None] & (extent >= low) & (extent <= high) & active
        index = base + tf.cast(i, tf.int32)[:, :, None] * cols + tf.cast(j, tf.int32)[:, None, :]
        point_index.append(tf.reshape(tf.where(ok, index, 0), [-1]))
        instance_index.append(
            tf.reshape(tf.broadcast_to(tf.range(tf.shape(labels)[0])[:, None, None], tf.shape(ok)), [-1])
        )
        valid.append(tf.reshape(ok, [-1]))
        base += rows * cols
    return tf.concat(point_index, 0), tf.concat(instance_index, 0), tf.concat(valid, 0)


def _positive_rays(points, positive, assigned, polygons, polar):
    """Rays [P, N] from each positive location to its assigned instance's polygon; 0 for negatives.

    Casting rays from all P locations would cost P x N x V; only positives need them. A stable
    partition (positives first, by running counts) orders the locations, and the positives are
    processed in fixed-size chunks inside a while loop, so every shape stays static (XLA) and no
    positive is dropped however many there are.
    """
    num_points = points.shape[0]
    chunk = min(polar.positives_per_chunk, num_points)
    padded = -(-num_points // chunk) * chunk
    as_int = tf.cast(positive, tf.int32)
    num_positive = tf.reduce_sum(as_int)
    rank = tf.where(positive, tf.cumsum(as_int) - 1, num_positive + tf.cumsum(1 - as_int) - 1)
    order = tf.scatter_nd(rank[:, None], tf.range(num_points), [num_points])
    order = tf.concat([order, tf.zeros([padded - num_points], tf.int32)], axis=0)
    num_chunks = (num_positive + chunk - 1) // chunk

    def body(i, rays):
        index = tf.slice(order, [i * chunk], [chunk])
        lengths = geometry.ray_distances(
            tf.gather(polygons, tf.gather(assigned, index)),
            tf.gather(points, index),
            polar.num_rays,
            method=polar.ray_method,
        )
        keep = tf.gather(positive, index)[:, None] & (tf.range(chunk) + i * chunk < num_positive)[:, None]
        return i + 1, tf.tensor_scatter_nd_add(rays, index[:, None], tf.where(keep, lengths, 0.0))

    _, rays = tf.while_loop(
        lambda i, _: i < num_chunks, body, (tf.constant(0), tf.zeros([num_points, polar.num_rays], tf.float32))
    )
    return rays
