"""The polar target encoder: ground-truth instances -> dense per-location training targets.

Pure TensorFlow with static shapes, so it runs inside tf.data maps and under
tf.function(jit_compile=True). The rules are the original's (spec section 2), on one padded image:

- FPN locations: level l with stride s has (H // s) x (W // s) points at the centres of their
  s x s pixel cells, (j*s + (s-1)/2, i*s + (s-1)/2) in this project's pixel-centre frame, or at
  (j*s + s//2, i*s + s//2) as the original did (PolarConfig.grid), flattened row-major per level
  and concatenated P3 -> P7.
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


def level_shapes(height, width, strides):
    """Feature map sizes [(H // s, W // s), ...] for a padded image of height x width pixels."""
    return [(int(height) // s, int(width) // s) for s in strides]


def fpn_points(height, width, strides, grid="cell_center"):
    """Location centres of all levels, numpy: points float32 [P, 2] (x, y) and level index int32 [P].

    grid: "cell_center" puts location (i, j) at j*s + (s-1)/2, "original" at j*s + s//2.
    """
    if grid not in ("cell_center", "original"):
        raise ValueError(f"unknown grid {grid!r}: use 'cell_center' or 'original'")
    points, levels = [], []
    for level, ((rows, cols), stride) in enumerate(zip(level_shapes(height, width, strides), strides)):
        offset = (stride - 1) / 2.0 if grid == "cell_center" else stride // 2
        ys, xs = np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij")
        grid_points = np.stack([xs * stride + offset, ys * stride + offset], -1).reshape(-1, 2)
        points.append(grid_points.astype(np.float32))
        levels.append(np.full(len(grid_points), level, np.int32))
    return np.concatenate(points), np.concatenate(levels)


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
    points_np, levels_np = fpn_points(height, width, polar.strides, polar.grid)
    points = tf.constant(points_np)
    strides = tf.constant(np.asarray(polar.strides, np.float32)[levels_np])[:, None]  # [P, 1]
    ranges = np.asarray(polar.regress_ranges, np.float32)[levels_np]
    low, high = tf.constant(ranges[:, :1]), tf.constant(ranges[:, 1:])

    x, y = points[:, 0:1], points[:, 1:2]  # [P, 1]
    x1, y1, x2, y2 = (boxes[None, :, i] for i in range(4))  # [1, M]
    box_targets = tf.stack([x - x1, y - y1, x2 - x, y2 - y], axis=-1)  # [P, M, 4]

    radius = strides * polar.center_sample_radius
    cx, cy = centers[None, :, 0], centers[None, :, 1]
    window = [tf.maximum(cx - radius, x1), tf.maximum(cy - radius, y1), tf.minimum(cx + radius, x2), tf.minimum(cy + radius, y2)]
    in_window = (x > window[0]) & (y > window[1]) & (x < window[2]) & (y < window[3])
    extent = tf.reduce_max(box_targets, axis=-1)
    in_range = (extent >= low) & (extent <= high)
    candidate = in_window & in_range & (labels > 0)[None, :]  # [P, M]

    area = (boxes[:, 2] - boxes[:, 0] + 1.0) * (boxes[:, 3] - boxes[:, 1] + 1.0)
    masked_area = tf.where(candidate, area[None, :], np.inf)
    smallest = tf.reduce_min(masked_area, axis=1, keepdims=True)
    num_instances = tf.shape(labels)[0]
    index = tf.range(num_instances)[None, :]
    assigned = tf.reduce_min(tf.where(candidate & (masked_area == smallest), index, num_instances), axis=1)
    positive = assigned < num_instances
    assigned = tf.minimum(assigned, tf.maximum(num_instances - 1, 0))

    point_labels = tf.where(positive, tf.gather(labels, assigned), 0)
    point_boxes = tf.where(positive[:, None], tf.gather(box_targets, assigned, batch_dims=1), 0.0)
    rays = _positive_rays(points, positive, assigned, polygons, polar)
    centerness = tf.where(positive, geometry.polar_centerness(rays), 0.0)
    return {"labels": point_labels, "rays": rays, "boxes": point_boxes, "centerness": centerness}


def _positive_rays(points, positive, assigned, polygons, polar):
    """Rays [P, N] from each positive location to its assigned instance's polygon; 0 for negatives.

    Casting rays from all P locations would cost P x N x V; only positives need them. Their indices
    are moved to the front by a stable sort and processed in fixed-size chunks inside a while
    loop, so every shape stays static (XLA) and no positive is dropped however many there are.
    """
    num_points = points.shape[0]
    chunk = min(polar.positives_per_chunk, num_points)
    padded = -(-num_points // chunk) * chunk
    order = tf.argsort(tf.cast(positive, tf.int32), direction="DESCENDING", stable=True)
    order = tf.concat([order, tf.zeros([padded - num_points], tf.int32)], axis=0)
    num_positive = tf.reduce_sum(tf.cast(positive, tf.int32))
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
