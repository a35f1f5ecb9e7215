"""Inference post-processing: dense PolarMask outputs -> at most K scored detections per image.

    detections = postprocess(model(images), info["resized_size"], info["scale"], padded_shape=(Hp, Wp),
                             polar_config=config.polar, postprocess_config=config.postprocess)

Pure TensorFlow, batched, every output shape static; it runs in a plain tf.function and under
tf.function(jit_compile=True) (serving keeps XLA out, ../shared/DESIGN.md). The steps follow the
original's inference (spec sections 3 and 5), per image:

1. Per FPN level, keep the `pre_nms_top_k` locations with the largest max_c sigmoid(cls_c) *
   sigmoid(ctr) (all of them when the level has no more). Locations over the padding are kept; their
   boxes and polygons are clipped to the image.
2. Candidates are the (location, class) pairs whose raw class probability sigmoid(cls_c) exceeds
   `score_threshold`; score = sigmoid(cls_c) * (sigmoid(ctr) + `centerness_offset`).
3. Boxes (x - l, y - t, x + r, y + b) from the box branch (or the polygon's extent); they and the
   polygons decoded from the rays are mapped to original-image pixels and clipped to the image.
4. Greedy NMS within each class (`class_aware_nms`), on the original-pixel boxes as the original did.
5. The K = `max_detections` highest-scoring survivors, in descending score order.

Where this differs from the original, and why:
- Static candidate count. The original sends every pair above the threshold to NMS; here only the
  `max_candidates` highest-scoring pairs do, so shapes stay static. With 5 levels x 1000 locations x
  80 classes up to 400,000 pairs could pass in principle, but the cap only bites on an image where
  more than max_candidates pairs have a class probability above 0.05 on their own, and then what is
  dropped are its lowest-scoring pairs, which rarely reach its top 100 after NMS. The
  `num_candidates` output counts the pairs above the threshold before the cap, so a caller can see
  when it bit.
- Order. Detections are always sorted by score; the original re-sorted only when it had more than
  100 and otherwise returned them class by class. The set of detections is the same.
- Defaults (`config.PostprocessConfig`): IoU without the "+1" and suppression at IoU > threshold,
  coordinates mapped back with the pipeline's pixel-centre resize, boxes and polygons clipped to the
  original image. The original's rules are options: `nms_plus_one`, `nms_rule="greater_equal"`
  (its CPU kernel), `rescale="original"` (x' / sx, clipped to the resized image first).

Why no "+1": this project's boxes and polygons are continuous outlines (COCO polygons shifted by
-0.5 so that pixel centres sit at integers), so a box [x1, x2] covers x2 - x1 pixels' worth of width
and its COCO width is x2 - x1. The "+1" belongs to inclusive integer-pixel boxes; on continuous boxes
it makes IoU depend on the image scale (two boxes get different IoUs before and after a resize),
whereas the plain IoU is invariant under the resize, so NMS gives the same answer in either frame.
"""

import numpy as np
import tensorflow as tf

from polarmask_tf import geometry
from polarmask_tf.modeling import pyramid

NMS_TILE_SIZE = 128
"""Candidates are suppressed tile by tile, so NMS needs O(tile x candidates) memory, not candidates^2."""

PADDED_CLASS = -1
"""The class of padding slots (index >= num_detections) in every detection output of this project."""


def location_rank(cls_logits, centerness_logits):
    """The per-level top-k key of every location (spec section 3): max_c sigmoid(cls_c) * sigmoid(ctr),
    no centerness offset. cls_logits: float32 [..., C]; centerness_logits: float32 [...] -> float32 [...].
    The sigmoid is monotone, so it is taken of the largest logit: C times fewer sigmoids."""
    cls_logits = tf.cast(cls_logits, tf.float32)
    return tf.sigmoid(tf.reduce_max(cls_logits, axis=-1)) * tf.sigmoid(tf.cast(centerness_logits, tf.float32))


def scoring(cls_logits, centerness_logits, centerness_offset=0.5):
    """The original's per-(location, class) numbers (spec section 3).

    cls_logits: float32 [..., C] class logits; centerness_logits: float32 [...].
    Returns float32 tensors:
      probs  [..., C]  sigmoid(cls): the value compared with the score threshold;
      scores [..., C]  probs * (sigmoid(ctr) + centerness_offset): the detection scores.
    """
    probs = tf.sigmoid(tf.cast(cls_logits, tf.float32))
    centerness = tf.sigmoid(tf.cast(centerness_logits, tf.float32))
    return probs, probs * (centerness[..., None] + centerness_offset)


def pairwise_iou(boxes_a, boxes_b, plus_one=False):
    """IoU of boxes_a float32 [..., n, 4] with boxes_b [..., m, 4] (x1, y1, x2, y2) -> [..., n, m].

    plus_one: widths x2 - x1 + 1 and overlaps min - max + 1 (the original's inclusive-pixel rule),
    computed in the same float32 order as its NMS kernel. Pairs with an empty union get IoU 0.
    """
    def extent(low, high):
        return high - low + 1.0 if plus_one else high - low

    a = boxes_a[..., :, None, :]
    b = boxes_b[..., None, :, :]
    width = tf.maximum(extent(tf.maximum(a[..., 0], b[..., 0]), tf.minimum(a[..., 2], b[..., 2])), 0.0)
    height = tf.maximum(extent(tf.maximum(a[..., 1], b[..., 1]), tf.minimum(a[..., 3], b[..., 3])), 0.0)
    intersection = width * height

    def area(boxes):
        return extent(boxes[..., 0], boxes[..., 2]) * extent(boxes[..., 1], boxes[..., 3])

    union = area(boxes_a)[..., :, None] + area(boxes_b)[..., None, :] - intersection
    return tf.math.divide_no_nan(intersection, union)


def _nms_capacity(max_keep, num):
    """Survivors an NMS of `num` candidates stops at: max_keep clamped to 1..num (None: num)."""
    return num if max_keep is None else max(1, min(int(max_keep), num))


def class_aware_nms(boxes, classes, valid, iou_threshold=0.5, rule="greater", plus_one=False, max_keep=None):
    """Greedy non-maximum suppression within each class, with static shapes.

    boxes: float32 [B, M, 4] (x1, y1, x2, y2), in descending score order (the greedy order).
    classes: int32 [B, M]. valid: bool [B, M], False for padding candidates (they neither survive nor
    suppress). rule: "greater" suppresses at IoU > iou_threshold, "greater_equal" at IoU >= it.
    max_keep: stop after this many survivors per image (None: M).
    Returns keep bool [B, M]: the first max_keep survivors of sequential greedy NMS per class
    (candidate i survives when it is valid and no surviving candidate j < i of its class overlaps it
    beyond the threshold); every later candidate is False.

    Tiles of NMS_TILE_SIZE candidates are settled in order, and each tile's survivors are appended
    to a buffer of max_keep slots: first every candidate of the tile that a buffered survivor
    suppresses is dropped, then keep_i = alive_i and not any_{j<i in tile} (keep_j and j suppresses
    i) is iterated to its fixed point. Candidate i's value is final after at most i + 1 passes (it
    depends only on earlier ones), so the iteration ends, and its fixed point is the greedy result;
    the passes needed are the length of the longest suppression chain, a few in practice. The loop
    stops once every image has max_keep survivors, so the cost is at most M x (max_keep + tile)
    IoUs and, when survivors are many (e.g. many classes), only the first few tiles are settled.
    """
    if rule not in ("greater", "greater_equal"):
        raise ValueError(f"unknown NMS rule {rule!r}: use 'greater' or 'greater_equal'")
    compare = tf.greater if rule == "greater" else tf.greater_equal
    boxes = tf.convert_to_tensor(boxes, tf.float32)
    classes = tf.convert_to_tensor(classes, tf.int32)
    valid = tf.convert_to_tensor(valid, tf.bool)
    num = boxes.shape[1]
    if num is None:
        raise ValueError("class_aware_nms needs a static number of candidates M")
    if num == 0:
        return valid
    capacity = _nms_capacity(max_keep, num)
    tile = min(NMS_TILE_SIZE, num)
    num_tiles = -(-num // tile)
    pad = num_tiles * tile - num
    batch = tf.shape(boxes)[0]
    tiled_boxes = tf.reshape(tf.pad(boxes, [[0, 0], [0, pad], [0, 0]]), [batch, num_tiles, tile, 4])
    tiled_classes = tf.reshape(tf.pad(classes, [[0, 0], [0, pad]]), [batch, num_tiles, tile])
    tiled_valid = tf.reshape(tf.pad(valid, [[0, 0], [0, pad]]), [batch, num_tiles, tile])
    earlier_in_tile = tf.range(tile)[None, :] < tf.range(tile)[:, None]  # [i, j]: j < i
    slots = tf.range(capacity)

    def suppression(row_boxes, row_classes, col_boxes, col_classes):
        """[B, rows, cols]: column candidate overlaps row candidate beyond the threshold, same class."""
        overlap = compare(pairwise_iou(row_boxes, col_boxes, plus_one), iou_threshold)
        return overlap & (row_classes[:, :, None] == col_classes[:, None, :])

    def settle_tile(t, keep, kept_boxes, kept_classes, count):
        tile_boxes = tf.gather(tiled_boxes, t, axis=1)
        tile_classes = tf.gather(tiled_classes, t, axis=1)
        filled = slots[None, :] < count[:, None]  # [B, capacity]
        by_kept = suppression(tile_boxes, tile_classes, kept_boxes, kept_classes) & filled[:, None, :]
        alive = tf.gather(tiled_valid, t, axis=1) & ~tf.reduce_any(by_kept, axis=-1)
        within = suppression(tile_boxes, tile_classes, tile_boxes, tile_classes) & earlier_in_tile

        def one_pass(current, _):
            updated = alive & ~tf.reduce_any(within & current[:, None, :], axis=-1)
            return updated, tf.reduce_any(updated != current)

        settled, _ = tf.while_loop(
            lambda current, changed: changed, one_pass, (alive, tf.constant(True)), maximum_iterations=tile + 1
        )
        slot = count[:, None] + tf.cumsum(tf.cast(settled, tf.int32), axis=1, exclusive=True)  # [B, tile]
        settled &= slot < capacity
        # For every buffer slot, the tile position of the survivor that fills it (-1: none).
        placed = settled[:, :, None] & (slot[:, :, None] == slots[None, None, :])  # [B, tile, capacity]
        source = tf.reduce_max(tf.where(placed, tf.range(tile)[None, :, None], -1), axis=1)
        new_slot, source = source >= 0, tf.maximum(source, 0)
        kept_boxes = tf.where(new_slot[..., None], tf.gather(tile_boxes, source, batch_dims=1), kept_boxes)
        kept_classes = tf.where(new_slot, tf.gather(tile_classes, source, batch_dims=1), kept_classes)
        keep = tf.where((tf.range(num_tiles) == t)[None, :, None], settled[:, None, :], keep)
        return t + 1, keep, kept_boxes, kept_classes, count + tf.reduce_sum(tf.cast(settled, tf.int32), axis=1)

    last_valid = tf.reduce_max(tf.where(valid, tf.range(num)[None, :], -1), axis=1)  # valid ones may be anywhere
    active_tiles = tf.reduce_max(tf.concat([last_valid, [-1]], 0)) // tile + 1
    _, keep, _, _, _ = tf.while_loop(
        lambda t, keep, kept_boxes, kept_classes, count: (t < active_tiles) & tf.reduce_any(count < capacity),
        settle_tile,
        (tf.constant(0), tf.zeros_like(tiled_valid), tf.zeros([batch, capacity, 4]),
         tf.zeros([batch, capacity], tf.int32), tf.zeros([batch], tf.int32)),
    )
    return tf.reshape(keep, [batch, num_tiles * tile])[:, :num]


def check_offset_nms_rule(rule, plus_one):
    """ValueError unless `class_offset_nms` can apply postprocess.nms_rule `rule` and nms_plus_one
    `plus_one`: the NMS kernel's rule, "greater" without plus_one, only."""
    if rule != "greater" or plus_one:
        raise ValueError("class_offset_nms (the LiteRT export's NMS) implements nms_rule 'greater' without "
                         f"nms_plus_one only, got nms_rule {rule!r}, nms_plus_one {plus_one}")


def class_offset_nms(boxes, classes, valid, iou_threshold=0.5, rule="greater", plus_one=False, max_keep=None):
    """`class_aware_nms` through TensorFlow's greedy NMS kernel (NonMaxSuppressionV4, the TFLite
    built-in NON_MAX_SUPPRESSION_V4), for graphs without while loops: the LiteRT export, whose int8
    calibration cannot run the tiled NMS's loops.

    Same arguments and result (max_keep is the kernel's max_output_size); only rule "greater"
    without plus_one (the kernel's own rule).
    Classes are kept apart by shifting each class's boxes by class x (the largest |coordinate| + 1),
    so boxes of two classes never overlap; the shift rounds coordinates to the float32 spacing at
    its size (about 0.008 px at 80 classes of a 1333 px image), so an IoU within about 1e-3 of the
    threshold can be decided differently from class_aware_nms. The kernel visits the candidates in
    the given order (scores M - position, strictly decreasing) and never takes invalid ones.
    """
    check_offset_nms_rule(rule, plus_one)
    boxes = tf.convert_to_tensor(boxes, tf.float32)
    classes = tf.convert_to_tensor(classes, tf.int32)
    valid = tf.convert_to_tensor(valid, tf.bool)
    num = boxes.shape[1]
    if num is None or boxes.shape[0] is None:
        raise ValueError("class_offset_nms needs a static batch size and number of candidates M")
    # A box without area has IoU 0 with every box, so it survives and suppresses nothing; it is kept
    # out of the kernel, because TFLite's NMS kernel mishandles zero-area boxes (boxes clipped to the
    # image edge are such): it then suppresses or keeps boxes that do not overlap at all.
    flat = (boxes[..., 2] <= boxes[..., 0]) | (boxes[..., 3] <= boxes[..., 1])
    surrogate = tf.where(valid & ~flat, tf.cast(num - tf.range(num), tf.float32)[None, :], 0.0)
    extent = tf.reduce_max(tf.where(valid[..., None], tf.abs(boxes), 0.0), axis=[1, 2], keepdims=True) + 1.0
    shifted = boxes + tf.cast(tf.maximum(classes, 0), tf.float32)[..., None] * extent
    capacity = _nms_capacity(max_keep, num)
    keep = []
    for b in range(boxes.shape[0]):
        selected, count = tf.raw_ops.NonMaxSuppressionV4(
            boxes=tf.gather(shifted[b], [1, 0, 3, 2], axis=-1), scores=surrogate[b], max_output_size=capacity,
            iou_threshold=iou_threshold, score_threshold=0.5, pad_to_max_output_size=True)
        slots = tf.where(tf.range(capacity) < count, selected, num)  # padding goes to a spare slot
        hits = tf.scatter_nd(slots[:, None], tf.ones([capacity], tf.int32), [num + 1])[:num]
        keep.append(hits > 0)
    keep = tf.stack(keep) | (valid & flat)
    return keep & (tf.cumsum(tf.cast(keep, tf.int32), axis=1) <= capacity)


def _to_original(xy, resized_size, scale, rescale):
    """Points float32 [B, ..., 2] (x, y) in the network input's pixels -> original-image pixels,
    clipped to the image.

    rescale "pixel_centers": x = (x' + 0.5) / sx - 0.5 (inverse of the pipeline's resize), clipped to
    [0, W - 1] with W = round(w / sx) the original width. "original": clipped to the resized
    extent [0, w - 1] first, then x = x' / sx (the original release's order and rule).
    """
    shape = tf.concat([tf.shape(xy)[:1], tf.ones([xy.shape.rank - 2], tf.int32), [2]], 0)
    scale_xy = tf.reshape(tf.reverse(tf.cast(scale, tf.float32), [-1]), shape)
    size_xy = tf.reshape(tf.cast(tf.reverse(resized_size, [-1]), tf.float32), shape)
    if rescale == "original":
        return tf.minimum(tf.maximum(xy, 0.0), size_xy - 1.0) / scale_xy
    if rescale != "pixel_centers":
        raise ValueError(f"unknown rescale {rescale!r}: use 'pixel_centers' or 'original'")
    original_size = tf.round(size_xy / scale_xy)
    return tf.minimum(tf.maximum((xy + 0.5) / scale_xy - 0.5, 0.0), original_size - 1.0)


def _gather(values, indices):
    return tf.gather(values, indices, batch_dims=1)


def top_locations(rank, padded_shape, pre_nms_top_k):
    """Stage 1: per level, the `pre_nms_top_k` locations with the largest rank (all of a level that
    has no more). rank: float32 [B, P] (`location_rank`). Returns location indices int32 [B, L], levels
    in P3 -> P7 order."""
    batch = tf.shape(rank)[0]
    kept, start = [], 0
    for rows, cols in pyramid.level_shapes(*padded_shape):
        count = rows * cols
        if count > pre_nms_top_k:
            kept.append(tf.math.top_k(rank[:, start : start + count], k=pre_nms_top_k).indices + start)
        else:
            kept.append(tf.broadcast_to(tf.range(start, start + count), [batch, count]))
        start += count
    return tf.concat(kept, axis=1)


def top_candidates(probs, scores, location, score_threshold, max_candidates):
    """Stage 2: the (location, class) pairs of the kept locations whose class probability exceeds
    `score_threshold`, the `max_candidates` highest-scoring first (a static count M).

    probs, scores: float32 [B, L, C] (`scoring` of the kept locations); location: int32 [B, L], their
    indices (`top_locations`).
    Returns a dict: scores float32 [B, M] (descending, -inf for padding), valid bool [B, M],
    location int32 [B, M], class_index int32 [B, M] (label - 1), num_candidates int32 [B] (pairs
    above the threshold before the cap).
    """
    batch, num_classes = tf.shape(probs)[0], probs.shape[-1]
    num_pairs = location.shape[1] * num_classes
    passed = tf.reshape(probs > score_threshold, [batch, num_pairs])
    pair_scores = tf.where(passed, tf.reshape(scores, [batch, num_pairs]), -np.inf)
    candidate_scores, pair = tf.math.top_k(pair_scores, k=min(max_candidates, num_pairs))
    return {
        "scores": candidate_scores,
        "valid": _gather(passed, pair),
        "location": _gather(location, pair // num_classes),
        "class_index": pair % num_classes,
        "num_candidates": tf.reduce_sum(tf.cast(passed, tf.int32), axis=1),
    }


def box_branch_boxes(points, box_sides, location):
    """Boxes (x - l, y - t, x + r, y + b) float32 [B, M, 4] of the locations int32 [B, M], in the
    network input's pixels. points: float32 [P, 2]; box_sides: float32 [B, P, 4] (l, t, r, b)."""
    centres = tf.gather(points, location)
    sides = _gather(box_sides, location)
    return tf.concat([centres - sides[..., :2], centres + sides[..., 2:]], axis=-1)


def polygon_extent(polygons):
    """Boxes float32 [..., 4] (x1, y1, x2, y2) around polygons float32 [..., N, 2]."""
    return tf.concat([tf.reduce_min(polygons, axis=-2), tf.reduce_max(polygons, axis=-2)], axis=-1)


def select_detections(keep, candidates, boxes, max_detections):
    """Stage 5: the first `max_detections` (K) survivors of NMS in candidate order, i.e. by
    descending score, padded: slots at index >= num_detections hold score 0, class PADDED_CLASS and
    candidate index -1. keep: bool [B, M]; candidates: `top_candidates`' dict; boxes: float32 [B, M, 4].

    Returns num_detections int32 [B], index int32 [B, K] (into the candidates), boxes float32
    [B, K, 4], scores float32 [B, K], classes int32 [B, K] (labels 1..C).
    """
    slots = keep.shape[1]
    k = min(max_detections, slots)
    position = tf.range(slots, dtype=tf.float32)[None, :]
    _, pick = tf.math.top_k(tf.where(keep, -position, -np.inf), k=k)
    num_detections = tf.minimum(tf.reduce_sum(tf.cast(keep, tf.int32), axis=1), k)
    filled = tf.range(k)[None, :] < num_detections[:, None]
    missing = max_detections - k  # fewer candidate slots than K

    def padded(values, fill):
        mask = filled
        for _ in range(values.shape.rank - 2):
            mask = mask[..., None]
        values = tf.where(mask, values, fill)
        return tf.pad(values, [[0, 0], [0, missing]] + [[0, 0]] * (values.shape.rank - 2), constant_values=fill)

    return {
        "num_detections": num_detections,
        "index": padded(pick, -1),
        "boxes": padded(_gather(boxes, pick), 0.0),
        "scores": padded(_gather(candidates["scores"], pick), 0.0),
        "classes": padded(_gather(candidates["class_index"], pick) + 1, PADDED_CLASS),
    }


def effective_box_source(postprocess_config, outputs):
    """"box_branch" or "polygon": postprocess_config.box_source, with "auto" resolved to the box
    branch when `outputs` (the model's dict) has "boxes" (model.box_branch true), else the polygon.
    ValueError for "box_branch" on outputs without "boxes" or an unknown value."""
    source = postprocess_config.box_source
    if source == "auto":
        return "box_branch" if "boxes" in outputs else "polygon"
    if source not in ("box_branch", "polygon"):
        raise ValueError(f"unknown box_source {source!r}: use 'auto', 'box_branch' or 'polygon'")
    if source == "box_branch" and "boxes" not in outputs:
        raise ValueError("postprocess.box_source 'box_branch', but the model has no box branch "
                         "(model.box_branch false): use 'auto' or 'polygon'")
    return source


def postprocess(outputs, resized_size, scale, padded_shape, polar_config, postprocess_config,
                nms=class_aware_nms):
    """Detections from the model's dense outputs, K = postprocess_config.max_detections per image.

    outputs: the model's dict (modeling.model.build_model): "cls_logits" float32 [B, P, C],
      "centerness" [B, P] (logits), "boxes" [B, P, 4] (l, t, r, b, input pixels; absent without the
      box branch, read only for box_source "box_branch"), "rays" [B, P, N] (input pixels, this
      project's ray order), P the locations of `padded_shape`.
    resized_size: int32 [B, 2], (h, w) of the unpadded image inside the padded input.
    scale: float32 [B, 2], (sy, sx) = resized / original size (modeling.preprocessing).
    padded_shape: static (Hp, Wp) of the network input, pixels.
    polar_config: config.PolarConfig (the location grid). postprocess_config: config.PostprocessConfig.
    nms: class_aware_nms, or class_offset_nms for a graph without while loops (the LiteRT export);
      called with max_keep=max_detections, the survivors select_detections takes.

    Stages: location_rank -> top_locations -> scoring of the kept locations -> top_candidates ->
    boxes (box_branch_boxes or the polygons' extent, effective_box_source), mapped to original
    pixels -> nms -> select_detections -> polygons of the detections (decoded from
    their rays only, unless they were needed for the boxes).

    Returns a dict; entries at index >= num_detections are padding with score 0, class
    PADDED_CLASS (-1) and all-zero boxes and polygons:
      num_detections int32 [B];
      boxes    float32 [B, K, 4]     x1, y1, x2, y2, original-image pixels (pixel centres at integers);
      scores   float32 [B, K]        descending;
      classes  int32 [B, K]          contiguous labels 1..C;
      polygons float32 [B, K, N, 2]  (x, y) vertices in ray order, original-image pixels;
      num_candidates int32 [B]       (location, class) pairs above the score threshold among the
                                     kept locations, before the max_candidates cap.
    """
    cfg = postprocess_config
    box_source = effective_box_source(cfg, outputs)
    padded_shape = tuple(int(side) for side in padded_shape)
    cls_logits = tf.convert_to_tensor(outputs["cls_logits"], tf.float32)
    rays = tf.convert_to_tensor(outputs["rays"], tf.float32)
    resized_size = tf.convert_to_tensor(resized_size, tf.int32)
    scale = tf.convert_to_tensor(scale, tf.float32)
    points = pyramid.locations(*padded_shape, polar_config.grid)[0]
    if cls_logits.shape[1] is not None and cls_logits.shape[1] != len(points):
        raise ValueError(f"outputs have {cls_logits.shape[1]} locations but a {padded_shape[0]} x {padded_shape[1]} "
                         f"input has {len(points)}")
    points = tf.constant(points)

    def polygons_at(location):
        """Decoded polygons float32 [B, n, N, 2] of locations int32 [B, n], original pixels."""
        polygons = geometry.rays_to_polygon(tf.gather(points, location), _gather(rays, location))
        return _to_original(polygons, resized_size, scale, cfg.rescale)

    centerness = tf.convert_to_tensor(outputs["centerness"], tf.float32)
    location = top_locations(location_rank(cls_logits, centerness), padded_shape, cfg.pre_nms_top_k)
    probs, scores = scoring(_gather(cls_logits, location), _gather(centerness, location), cfg.centerness_offset)
    candidates = top_candidates(probs, scores, location, cfg.score_threshold, cfg.max_candidates)
    candidate_polygons = None
    if box_source == "box_branch":
        slots = candidates["scores"].shape[1]
        boxes = box_branch_boxes(points, tf.convert_to_tensor(outputs["boxes"], tf.float32), candidates["location"])
        corners = _to_original(tf.reshape(boxes, [-1, slots, 2, 2]), resized_size, scale, cfg.rescale)
        boxes = tf.reshape(corners, [-1, slots, 4])
    else:
        candidate_polygons = polygons_at(candidates["location"])
        boxes = polygon_extent(candidate_polygons)
    keep = nms(boxes, candidates["class_index"], candidates["valid"], cfg.nms_iou_threshold, cfg.nms_rule,
               cfg.nms_plus_one, max_keep=cfg.max_detections)
    detections = select_detections(keep, candidates, boxes, cfg.max_detections)

    index = detections.pop("index")
    safe = tf.maximum(index, 0)
    if candidate_polygons is None:
        polygons = polygons_at(_gather(candidates["location"], safe))
    else:
        polygons = _gather(candidate_polygons, safe)
    detections["polygons"] = tf.where((index >= 0)[..., None, None], polygons, 0.0)
    detections["num_candidates"] = candidates["num_candidates"]
    return detections
