"""The ORIGINAL PolarMask training targets, per image, in numpy + OpenCV (no TensorFlow).

This re-implements what the original release (xieenze/PolarMask, HEAD 90c4798, mmdetection v1)
does in its data loader, `coco_seg.py` `prepare_train_img` -> `polar_target_single`, exactly as
../shared/reference/polarmask_spec.md section 2 (steps 5-12) and section 3 describe it. It is

* the baseline the project's TensorFlow target encoder is benchmarked against ("the original's way:
  Python/numpy/OpenCV per image"), which is why this module must not import TensorFlow; and
* a parity reference for tests (spec section 8, TV8 is reproduced by tests/test_reference_targets.py).

What is kept from the original's structure (so that its cost is measured honestly):
  * one call per image, on the padded image shape, with the gts' masks already resized/flipped/padded;
  * a Python loop over the gts running `cv2.findContours` (RETR_TREE, CHAIN_APPROX_NONE) on each
    full-image mask, sorting all its contours by `cv2.contourArea` and computing the shoelace mass
    centre of the largest one;
  * the dense assignment broadcast over [points, gts] (the original did it with torch tensors; here
    numpy float32, the same arithmetic);
  * a Python loop over the positive locations, each casting its rays against the whole contour of its
    gt, with the original's per-bin search (bins 0, 10, ..., 350; the bin itself, then +1, -1, +2, -2,
    +3, -3 degrees) as a Python loop over the bins.
    Each probe is, as in the original, a membership test over all the contour's vertices followed
    by a masked max (`i in angle`, `dist[angle == i].max()`), so a positive costs O(36 x probes x V).
What is vectorised with numpy: the per-vertex angles and distances of a positive (vectorised torch
ops in the original too; the original's extra, result-neutral torch.sort of the angles is left out),
and the shoelace sums, which the original ran as a Python loop over the vertices: here
np.add.accumulate, which adds strictly left to right, so the float64 result is bit-identical to the
original's `+=` loop (this matters because the centre is int()-truncated).
So the measured cost is that of the original's algorithm in numpy; the original's own torch-on-CPU
code (small-tensor op overhead, the Python vertex loop of the centroid) was slower, not faster.

Conventions: x = column (right), y = row (down); pixel (row i, column j) is the contour vertex
(x = j, y = i), as OpenCV reports it. Boxes [x1, y1, x2, y2] are inclusive pixels. All distances
are pixels of the padded network input. Points are concatenated level by level (strides order),
each level row-major (x fastest), exactly like the original and TF's NHWC flattening.

Rays are computed in the original's "HEAD" order (ray k' at 10k' degrees measured from straight
down towards the right: x = px + d sin, y = py + d cos) and returned in THIS project's order (ray k
at 360k/N degrees from +x towards +y: x = px + d cos, y = py + d sin): rays_ours = rays_head[...,
perm] with perm[k] = (N/4 - k) mod N, i.e. k = (9 - k') mod 36 (the same map as
`polarmask_tf.geometry.ray_index_map(N, "head")`, re-implemented here to keep TF out).

Departures from the original:
  * the gt box is the mask's pixel extent [x1, y1, x2, y2] (inclusive); the original used the
    annotation bbox [x, y, x+w-1, y+h-1], scaled by the resize factors and clipped, as floats, so
    after a resize the two can differ by a fraction of a pixel. On unresized rasterised annotations
    (and in spec TV8) they agree;
  * a gt whose mask has no pixel (no contour) is SKIPPED: it is never positive, takes no part in the
    ambiguity resolution and its mass centre is reported as (-1, -1) with `valid_gts` False. The
    original raised IndexError on `contour[0]` (spec section 7, issues #7/#59) and relied on its
    annotation filter (area <= 15 etc.) never to pass such a mask;
  * an image with no (kept) gt gets all-negative targets (the original's num_gts == 0 branch returned
    two of its three outputs and would have crashed the caller; its loader skipped such images first);
  * `num_rays` other than 36 is accepted when 360 % N == 0 and N % 4 == 0 (bins every 360/N degrees,
    the same +-3 degree search); the original hard-coded 36.
One original quirk is kept on purpose: if the first (kept) gt's int mass centre has x == 0, the
original's `get_mask_sample_region` takes its "no gt" early exit (`center_x[..., 0].sum() == 0`) and
the whole image gets no positive; so does this port.
"""

import cv2
import numpy as np

INF = 1e8
"""The original's INF: the last regress range's upper end and the 'not a candidate' area."""

MISSING_RAY = np.float32(1e-6)
"""Length of a ray whose bin and its +-3 degree neighbours hold no contour vertex."""

SEARCH_OFFSETS = (0, 1, -1, 2, -2, 3, -3)
"""Degree offsets probed around each ray's bin, in the original's order; first hit wins."""

DEFAULT_STRIDES = (8, 16, 32, 64, 128)
DEFAULT_REGRESS_RANGES = ((-1, 64), (64, 128), (128, 256), (256, 512), (512, INF))


def head_to_paper_permutation(num_rays):
    """int64 [N] perm with rays_ours = rays_head[..., perm]: perm[k] = (N/4 - k) mod N.

    For 36 rays our k = (9 - k') mod 36 (head k' = 0, straight down, is our k = 9). The map is an
    involution. Same as `polarmask_tf.geometry.ray_index_map(N, "head")`, without importing TF.
    """
    num_rays = int(num_rays)
    if num_rays % 4:
        raise ValueError(f"num_rays must be divisible by 4 for the head -> paper ray map, got {num_rays}")
    return (num_rays // 4 - np.arange(num_rays)) % num_rays


def level_points(padded_shape, strides=DEFAULT_STRIDES):
    """FPN location centres of all levels, as the original's `get_points`.

    Args:
        padded_shape: (H_pad, W_pad) of the padded network input, pixels.
        strides: level strides, pixels.
    Returns:
        points: float32 [P, 2] (x, y), pixels; level l has int(H/s) x int(W/s) points with
            x = j*s + s//2, y = i*s + s//2, row-major (x fastest); levels concatenated in order.
        levels: int32 [P], index into `strides` of each point's level (0 = the first stride, P3).
        counts: list of int, points per level.
    """
    height, width = int(padded_shape[0]), int(padded_shape[1])
    points, levels, counts = [], [], []
    for index, stride in enumerate(strides):
        rows, cols = int(height / stride), int(width / stride)
        y, x = np.meshgrid(np.arange(rows) * stride, np.arange(cols) * stride, indexing="ij")
        points.append(np.stack([x.reshape(-1), y.reshape(-1)], axis=-1) + stride // 2)
        levels.append(np.full(rows * cols, index, np.int32))
        counts.append(rows * cols)
    return (np.concatenate(points).astype(np.float32).reshape(-1, 2),
            np.concatenate(levels).astype(np.int32), counts)


def largest_contour(mask):
    """The original's contour: int32 [V, 2] (x, y) vertices of the contour of largest
    `cv2.contourArea` among ALL contours cv2.findContours(RETR_TREE, CHAIN_APPROX_NONE) returns
    (outer boundaries and holes alike; a stable descending sort, so ties keep OpenCV's order),
    or None when the mask has no pixel set (the original crashed there).

    mask: [H, W], any dtype; non-zero = object.
    """
    mask = np.ascontiguousarray(np.asarray(mask) != 0, dtype=np.uint8)
    found = cv2.findContours(mask, cv2.RETR_TREE, cv2.CHAIN_APPROX_NONE)
    contours = found[-2]  # OpenCV 4/5 return (contours, hierarchy), OpenCV 3 (image, contours, hierarchy)
    if len(contours) == 0:
        return None
    contours = sorted(contours, key=cv2.contourArea, reverse=True)  # tuples in OpenCV >= 4: no .sort()
    return contours[0][:, 0, :]


def contour_mass_centre(contour):
    """The original's `get_centerpoint` with its fallback: (x, y) python ints, pixels.

    Shoelace centroid of the int vertices [V, 2] (x, y), every term computed as the original does
    (fg = (x_i*y_{i-1} - y_i*x_{i-1}) / 2.0, x += fg*(x_i + x_{i-1}) / 3.0, same for y, in float64)
    and summed strictly in contour order, then int()-truncated (towards zero). A centroid at 50.0
    can come out as 49.99999 and truncate to 49: that is the original's behaviour (spec TV2/TV8).
    When the area is 0 (one pixel, a one-pixel-wide line) the original's division gave NaN/inf, int()
    raised and the fallback is int() of the mean of the contour vertices.
    """
    contour = np.asarray(contour)
    x = contour[:, 0].astype(np.int64)
    y = contour[:, 1].astype(np.int64)
    x_prev, y_prev = np.roll(x, 1), np.roll(y, 1)  # lis[i - 1], lis[-1] for i = 0
    fg = (x * y_prev - y * x_prev) / 2.0
    area = np.add.accumulate(fg)[-1]  # left to right, like the original's `area += fg`
    if area == 0.0:
        mean_x, mean_y = contour.mean(axis=0)  # the original's count.mean(axis=0)
        return int(mean_x), int(mean_y)
    sum_x = np.add.accumulate(fg * (x + x_prev) / 3.0)[-1]
    sum_y = np.add.accumulate(fg * (y + y_prev) / 3.0)[-1]
    return int(sum_x / area), int(sum_y / area)


def mask_box(mask):
    """Extent of a mask as float32 [x1, y1, x2, y2], inclusive pixels (the original used the
    annotation's [x, y, x+w-1, y+h-1], which is this for a rasterised annotation). The mask must
    have a pixel set."""
    mask = np.asarray(mask) != 0
    cols = np.flatnonzero(mask.any(axis=0))
    rows = np.flatnonzero(mask.any(axis=1))
    return np.array([cols[0], rows[0], cols[-1], rows[-1]], np.float32)


def original_rays(point, contour, num_rays=36):
    """The original's `get_36_coordinates`: float32 [N] ray lengths from `point` in HEAD order.

    Args:
        point: (x, y) of the location, pixels.
        contour: [V, 2] (x, y) contour vertices, pixels.
        num_rays: N, with 360 % N == 0 (the original: 36).
    Returns:
        float32 [N]; ray k' is the bin at a = k'*360/N degrees, angles measured as
        atan2(dx, dy) in degrees (0 = straight down, 90 = right, 180 = up, 270 = left), negative
        += 360, truncated to int; the value is the largest distance to a vertex in the first of the
        bins a, a+1, a-1, a+2, a-2, a+3, a-3 that holds a vertex (no wrap-around below 0 degrees),
        else MISSING_RAY. float32 throughout, as the original's torch tensors.
    """
    if 360 % int(num_rays):
        raise ValueError(f"num_rays must divide 360, got {num_rays}")
    contour = np.asarray(contour, np.float32)
    dx = contour[:, 0] - np.float32(point[0])
    dy = contour[:, 1] - np.float32(point[1])
    angle = np.arctan2(dx, dy) * np.float32(180) / np.float32(np.pi)  # torch: atan2(x, y) * 180 / np.pi
    angle[angle < 0] += np.float32(360)
    bins = angle.astype(np.int64)  # torch .int(): truncation; 360 can occur (never probed)
    dist = np.sqrt(dx ** 2 + dy ** 2)
    step = 360 // int(num_rays)
    rays = np.full(int(num_rays), MISSING_RAY, np.float32)
    for k, a in enumerate(range(0, 360, step)):
        for offset in SEARCH_OFFSETS:  # the original's `if i in angle: d = dist[angle == i].max()` chain
            in_bin = bins == a + offset  # a - 1 < 0 never matches: no wrap-around
            if in_bin.any():
                rays[k] = dist[in_bin].max()
                break
    return rays


def original_targets(masks, labels, padded_shape, strides=DEFAULT_STRIDES,
                     regress_ranges=DEFAULT_REGRESS_RANGES, radius=1.5, num_rays=36):
    """Training targets of one image, the original PolarMask way (spec section 2 and 3).

    Args:
        masks: uint8 (or bool) [M, H_pad, W_pad] binary instance masks, already resized, flipped and
            padded (the original builds targets on the padded shape). M may be 0.
        labels: int [M], 1-based class labels.
        padded_shape: (H_pad, W_pad), pixels; must match the masks.
        strides: FPN strides, pixels. Level l has int(H_pad/s) x int(W_pad/s) points.
        regress_ranges: per level (lo, hi), inclusive at both ends, on max(l, t, r, b), pixels.
        radius: centre-sampling radius in strides (window = mass centre +- radius*stride, clipped
            to the gt box, a point must lie strictly inside).
        num_rays: N (the original: 36); 360 % N == 0 and N % 4 == 0.
    Returns:
        dict of numpy arrays, P = total points of all levels:
          labels: int32 [P], the assigned gt's label, 0 = negative. Among the gts whose window holds
              the point and whose max(l, t, r, b) lies in the point's range, the one with the
              smallest box area (w+1)(h+1) wins; ties -> lowest gt index.
          boxes: float32 [P, 4] (l, t, r, b) = (x - x1, y - y1, x2 - x, y2 - y), pixels, to the
              assigned gt. Negatives get the distances to the first kept gt, as in the original
              (meaningless, possibly negative; never used); all zeros when no gt is kept.
          rays: float32 [P, N], pixels, in THIS project's order (ray k at 360k/N degrees from +x
              towards +y); measured from the point to the largest contour of its gt with the
              original's 1-degree binning; MISSING_RAY (1e-6) where no vertex is found; 0 for negatives.
          centerness: float32 [P], sqrt(min_k d_k / max_k d_k) over the rays; 0 for negatives.
          points: float32 [P, 2] (x, y) location centres, pixels.
          levels: int32 [P], index into `strides` of each point's level (0 = P3 with the defaults).
          mass_centres: int64 [M, 2] (x, y), the original's int-truncated mass centres, pixels;
              (-1, -1) for a gt with an empty mask.
          valid_gts: bool [M], False for gts skipped because their mask is empty.
    """
    height, width = int(padded_shape[0]), int(padded_shape[1])
    masks = np.asarray(masks)
    if masks.ndim == 2 and masks.size == 0:
        masks = masks.reshape(0, height, width)
    if masks.ndim != 3 or masks.shape[1:] != (height, width):
        raise ValueError(f"masks must be [M, {height}, {width}] (the padded shape), got {masks.shape}")
    labels = np.asarray(labels).reshape(-1).astype(np.int64)
    if labels.shape[0] != masks.shape[0]:
        raise ValueError(f"{masks.shape[0]} masks but {labels.shape[0]} labels")
    if len(regress_ranges) != len(strides):
        raise ValueError(f"{len(strides)} strides but {len(regress_ranges)} regress ranges")
    perm = head_to_paper_permutation(num_rays)

    points, levels, _ = level_points((height, width), strides)
    num_points = points.shape[0]
    ranges = np.asarray(regress_ranges, np.float32)[levels]  # [P, 2]
    window = (np.asarray(strides, np.float32) * np.float32(radius))[levels]  # [P], radius*stride

    # Per gt, as the original's loop over gt_masks: contour, mass centre (and, here, the box).
    num_masks = masks.shape[0]
    mass_centres = np.full((num_masks, 2), -1, np.int64)
    valid = np.zeros(num_masks, bool)
    contours, boxes, kept_labels = [], [], []
    for g in range(num_masks):
        contour = largest_contour(masks[g])
        if contour is None:
            continue  # the original: IndexError on contour[0]
        mass_centres[g] = contour_mass_centre(contour)
        valid[g] = True
        contours.append(contour)
        boxes.append(mask_box(masks[g]))
        kept_labels.append(labels[g])

    out = dict(
        labels=np.zeros(num_points, np.int32),
        boxes=np.zeros((num_points, 4), np.float32),
        rays=np.zeros((num_points, num_rays), np.float32),
        centerness=np.zeros(num_points, np.float32),
        points=points,
        levels=levels,
        mass_centres=mass_centres,
        valid_gts=valid,
    )
    if not contours:
        return out

    # Dense assignment over [P, G] in float32, like the original's torch code.
    gt_boxes = np.stack(boxes)  # [G, 4]
    kept_labels = np.asarray(kept_labels)
    centres = mass_centres[valid].astype(np.float32)  # [G, 2] (x, y)
    areas = (gt_boxes[:, 2] - gt_boxes[:, 0] + 1) * (gt_boxes[:, 3] - gt_boxes[:, 1] + 1)  # [G]
    xs, ys = points[:, 0:1], points[:, 1:2]  # [P, 1]
    box_targets = np.stack([xs - gt_boxes[None, :, 0], ys - gt_boxes[None, :, 1],
                            gt_boxes[None, :, 2] - xs, gt_boxes[None, :, 3] - ys], axis=-1)  # [P, G, 4]

    # Centre sampling (get_mask_sample_region): window around the mass centre, clipped to the box.
    if centres[0, 0] == 0:
        inside = np.zeros(box_targets.shape[:2], bool)  # the original's "no gt" early exit (see module doc)
    else:
        half = window[:, None]
        x_min = np.maximum(centres[None, :, 0] - half, gt_boxes[None, :, 0])
        y_min = np.maximum(centres[None, :, 1] - half, gt_boxes[None, :, 1])
        x_max = np.minimum(centres[None, :, 0] + half, gt_boxes[None, :, 2])
        y_max = np.minimum(centres[None, :, 1] + half, gt_boxes[None, :, 3])
        margins = np.stack([xs - x_min, ys - y_min, x_max - xs, y_max - ys], axis=-1)
        inside = margins.min(axis=-1) > 0

    longest_side = box_targets.max(axis=-1)  # [P, G]
    in_range = (longest_side >= ranges[:, 0:1]) & (longest_side <= ranges[:, 1:2])
    candidate_areas = np.where(inside & in_range, areas[None, :], np.float32(INF))
    assigned = candidate_areas.argmin(axis=1)  # first minimum: ties -> lowest gt index
    positive = candidate_areas[np.arange(num_points), assigned] != np.float32(INF)
    out["labels"] = np.where(positive, kept_labels[assigned], 0).astype(np.int32)
    out["boxes"] = box_targets[np.arange(num_points), assigned].astype(np.float32)

    # Rays, positives only, one at a time as the original's loop over pos_inds.
    rays_head = np.zeros((num_points, num_rays), np.float32)
    for p in np.flatnonzero(positive):
        rays_head[p] = original_rays(points[p], contours[assigned[p]], num_rays)
    pos_rays = rays_head[positive]
    out["centerness"][positive] = np.sqrt(pos_rays.min(axis=-1) / pos_rays.max(axis=-1))
    out["rays"] = rays_head[:, perm]
    return out
