"""PolarMask training losses (spec section 4), float32, static shapes, safe without positives.

Total loss = L_cls + L_mask + L_bbox + L_ctr, all weights 1.0 (L_cls + L_mask + L_ctr without the
box branch, model.box_branch false: the outputs then have no "boxes" and there is no L_bbox):

- L_cls: sigmoid focal loss (alpha 0.25, gamma 2) over all locations x C classes,
  sum / (num_positives + num_images).
- L_mask ("ray_loss"): Polar IoU loss, per positive log(sum_k max(d, d*) / sum_k min(d, d*)),
  weighted by the centerness target c*, sum / sum(c*). Runs in its own
  tf.function(jit_compile=True).
- L_bbox ("box_loss"): IoU loss -log(IoU) with the original's "+1" box areas, weighted by c*,
  sum / sum(c*). Only when the outputs have "boxes".
- L_ctr: BCE with logits between the centerness logit and c*, sum over positives / num_positives.

Normalisation and distribution. Every loss here is a plain sum over the local batch divided by a
normaliser passed in by the caller. The training loop computes the local normalisers with
`loss_normalizers`, sums them across replicas (`all_reduce_normalizers` inside `strategy.run`),
and passes those GLOBAL values to `polarmask_losses`. Each replica's loss is then its share of the
global loss, the per-replica losses add up to the loss of the whole global batch, and the
gradients the optimizer sums across replicas are the gradients of that global loss: do not divide
the loss by the number of replicas again. (The original normalised per GPU; with global
normalisers the result no longer depends on how the batch is split, spec section 4.) The
reductions stay outside the jitted Polar IoU function: `model.compile(jit_compile=True)` fails
under MirroredStrategy, a jitted function that receives the reduced values works.

Without any positive (all normalisers but num_images are 0) the positive-only losses are exactly
0.0 with zero, finite gradients: numerators are masked with tf.where on safe operands and the
division is tf.math.divide_no_nan. A floor such as max(sum(c*), 1) would be wrong here, since
sum(c*) is legitimately below 1 for a few off-centre positives.
"""

import tensorflow as tf

# Floor of the Polar IoU denominator sum_k min(d, d*). Only reached when every predicted ray of a
# positive underflows (exp of a logit below about -69); it keeps the ratio finite (rays are
# pixels, so sum|d - d*| / 1e-30 < 3e38) where the original would return inf.
_MIN_RAY_SUM = 1e-30


def _f32(x):
    return tf.cast(x, tf.float32)


def loss_normalizers(targets):
    """The LOCAL normalisers of a batch, to be summed across replicas before calling the losses.

    targets: the pipeline's batched targets; uses labels int32 [B, P] (0 = negative) and
        centerness float32 [B, P].

    Returns a dict of float32 scalars:
      num_positives: number of positive locations.
      centerness_sum: sum of the centerness targets c* over the positives (Polar IoU and box losses).
      num_images: B. The classification loss is divided by num_positives + num_images (the
        original's sum / (num_pos + num_imgs)), which is never 0 for a non-empty batch.
    """
    positive = _f32(targets["labels"] > 0)
    return {
        "num_positives": tf.reduce_sum(positive),
        "centerness_sum": tf.reduce_sum(_f32(targets["centerness"]) * positive),
        "num_images": _f32(tf.shape(targets["labels"])[0]),
    }


def all_reduce_normalizers(normalizers):
    """Sums `loss_normalizers` across replicas: call inside `strategy.run` (replica context).

    In the default (single-device) context it returns the values unchanged.
    """
    context = tf.distribute.get_replica_context()
    if context is None:
        raise RuntimeError("all_reduce_normalizers must run in a replica context (inside strategy.run)")
    keys = sorted(normalizers)
    reduced = context.all_reduce(tf.distribute.ReduceOp.SUM, [normalizers[k] for k in keys])
    return dict(zip(keys, reduced, strict=True))


def sigmoid_focal_loss(logits, labels, normalizer, alpha=0.25, gamma=2.0):
    """Sigmoid focal loss summed over locations and classes, divided by `normalizer`.

    logits: [..., C] class logits (any float dtype; computed in float32). labels: int [...],
        1..C for a class, 0 for background (an all-negative row). normalizer: scalar, the global
        num_positives + num_images for PolarMask.
    Per element: -alpha_t (1 - p_t)^gamma log(p_t), alpha_t = alpha for the true class and
    1 - alpha elsewhere. Returns a float32 scalar.
    """
    logits = _f32(logits)
    targets = tf.one_hot(tf.cast(labels, tf.int32) - 1, tf.shape(logits)[-1], dtype=tf.float32)
    cross_entropy = tf.nn.sigmoid_cross_entropy_with_logits(labels=targets, logits=logits)
    # 1 - p_t = sigmoid(-x) for a positive target, sigmoid(x) for a negative one: no 1 - p cancellation.
    one_minus_pt = tf.sigmoid(logits * (1.0 - 2.0 * targets))
    alpha_t = targets * alpha + (1.0 - targets) * (1.0 - alpha)
    loss = alpha_t * tf.pow(one_minus_pt, gamma) * cross_entropy
    return tf.math.divide_no_nan(tf.reduce_sum(loss), _f32(normalizer))


def _polar_iou_loss(pred_rays, target_rays, weights, normalizer):
    valid = weights > 0
    # sum max / sum min = 1 + sum|d - d*| / sum min: log1p keeps small losses accurate and is
    # exactly 0 when pred == target.
    difference = tf.reduce_sum(tf.abs(pred_rays - target_rays), axis=-1)
    smaller = tf.reduce_sum(tf.minimum(pred_rays, target_rays), axis=-1)
    # Negatives have d* = 0, so sum min = 0: substitute safe operands before the log, otherwise
    # 0 * inf and the gradient of log(x / 0) turn into NaN.
    smaller = tf.where(valid, tf.maximum(smaller, _MIN_RAY_SUM), 1.0)
    difference = tf.where(valid, difference, 0.0)
    per_sample = tf.math.log1p(difference / smaller)
    weighted = tf.where(valid, weights * per_sample, 0.0)
    return tf.math.divide_no_nan(tf.reduce_sum(weighted), normalizer)


_polar_iou_loss_xla = tf.function(_polar_iou_loss, jit_compile=True)


def polar_iou_per_sample(pred_rays, target_rays):
    """log(sum_k max(d, d*) / sum_k min(d, d*)) per location: [..., N] x 2 -> [...] float32.

    For positives only (target rays > 0); reference value for tests and diagnostics.
    """
    pred_rays, target_rays = _f32(pred_rays), _f32(target_rays)
    larger = tf.reduce_sum(tf.maximum(pred_rays, target_rays), axis=-1)
    smaller = tf.reduce_sum(tf.minimum(pred_rays, target_rays), axis=-1)
    return tf.math.log(larger / smaller)


def polar_iou_loss(pred_rays, target_rays, weights, normalizer, jit=True):
    """Polar IoU loss (the original's MaskIOULoss), weighted and normalised.

    pred_rays: [..., N] predicted ray lengths, > 0. target_rays: [..., N] float32, >= 1e-6 for
        positives, anything (0 in the pipeline) elsewhere. weights: [...] per-location weights, the
        centerness target times the positive mask; locations with weight 0 contribute exactly 0 and a
        zero gradient. normalizer: scalar, the global sum of the centerness targets.
    jit: run the XLA-compiled function (one compilation per input shape); False runs the same
        computation eagerly (tests, debugging).
    Returns a float32 scalar sum_i w_i log(sum_k max / sum_k min) / normalizer (0 if normalizer is 0).
    """
    args = (_f32(pred_rays), _f32(target_rays), _f32(weights), _f32(normalizer))
    return _polar_iou_loss_xla(*args) if jit else _polar_iou_loss(*args)


def box_iou(pred_ltrb, target_ltrb):
    """IoU of boxes decoded from the same point, with the original's "+1" areas.

    pred_ltrb, target_ltrb: [..., 4] distances (l, t, r, b) from the location to the box sides,
    >= 0. Area (l + r + 1)(t + b + 1); overlap per axis min(l) + min(r) + 1, clamped at 0.
    Returns float32 [...] (not clamped).
    """
    pred_ltrb, target_ltrb = _f32(pred_ltrb), _f32(target_ltrb)
    pl, pt, pr, pb = tf.unstack(pred_ltrb, axis=-1)
    tl, tt, tr, tb = tf.unstack(target_ltrb, axis=-1)
    pred_area = (pl + pr + 1.0) * (pt + pb + 1.0)
    target_area = (tl + tr + 1.0) * (tt + tb + 1.0)
    overlap_w = tf.maximum(tf.minimum(pl, tl) + tf.minimum(pr, tr) + 1.0, 0.0)
    overlap_h = tf.maximum(tf.minimum(pt, tt) + tf.minimum(pb, tb) + 1.0, 0.0)
    overlap = overlap_w * overlap_h
    union = pred_area + target_area - overlap
    return overlap / tf.where(union > 0, union, 1.0)


def box_iou_loss(pred_ltrb, target_ltrb, weights, normalizer):
    """IoU loss -log(max(IoU, 1e-6)) weighted per location and normalised.

    pred_ltrb: [..., 4] predicted (l, t, r, b), > 0. target_ltrb: [..., 4] float32 (0 for
        negatives). weights: [...], the centerness target times the positive mask. normalizer:
        scalar, the global sum of the centerness targets. Returns a float32 scalar (0 if the
        normalizer is 0).
    """
    weights = _f32(weights)
    valid = weights > 0
    iou = tf.maximum(box_iou(pred_ltrb, target_ltrb), 1e-6)
    loss = tf.where(valid, -weights * tf.math.log(iou), 0.0)
    return tf.math.divide_no_nan(tf.reduce_sum(loss), _f32(normalizer))


def centerness_loss(logits, targets, mask, normalizer):
    """Binary cross-entropy with logits, summed over the masked locations, / normalizer.

    logits: [...] centerness logits. targets: [...] float32 centerness targets in [0, 1].
    mask: [...] bool or 0/1, the positives. normalizer: scalar, the global number of positives
    (so the result is the mean over positives). Returns a float32 scalar (0 if normalizer is 0).
    """
    bce = tf.nn.sigmoid_cross_entropy_with_logits(labels=_f32(targets), logits=_f32(logits))
    loss = tf.where(tf.cast(mask, tf.bool), bce, 0.0)
    return tf.math.divide_no_nan(tf.reduce_sum(loss), _f32(normalizer))


def polarmask_losses(outputs, targets, normalizers=None, alpha=0.25, gamma=2.0, jit=True):
    """The four PolarMask losses (three without the box branch) and their sum, float32 scalars.

    outputs: the head's outputs (any float dtype, cast to float32 here): cls_logits [B, P, C],
        centerness [B, P] logits, boxes [B, P, 4] predicted (l, t, r, b) > 0 (absent without the box
        branch: then there is no box loss), rays [B, P, N] > 0.
    targets: the pipeline's targets: labels int32 [B, P] (0 = negative, 1..C), rays float32
        [B, P, N], boxes float32 [B, P, 4], centerness float32 [B, P].
    normalizers: dict like `loss_normalizers` holding the GLOBAL values (summed over replicas).
        None uses this batch's own values, which is right for a single replica only.
    jit: run the Polar IoU loss in its XLA-compiled function.

    Returns {"cls_loss", "ray_loss", "box_loss", "centerness_loss", "total_loss"}; without "boxes" in
    `outputs` the dict has no "box_loss" key and total_loss = cls + ray + centerness. (The targets'
    "boxes" are then unused.)
    """
    if normalizers is None:
        normalizers = loss_normalizers(targets)
    num_positives = _f32(normalizers["num_positives"])
    centerness_sum = _f32(normalizers["centerness_sum"])
    num_images = _f32(normalizers["num_images"])

    positive = targets["labels"] > 0
    center_target = _f32(targets["centerness"])
    weights = tf.where(positive, center_target, 0.0)

    losses = {
        "cls_loss": sigmoid_focal_loss(
            outputs["cls_logits"], targets["labels"], num_positives + num_images, alpha, gamma
        ),
        "ray_loss": polar_iou_loss(outputs["rays"], targets["rays"], weights, centerness_sum, jit=jit),
    }
    if "boxes" in outputs:
        losses["box_loss"] = box_iou_loss(outputs["boxes"], targets["boxes"], weights, centerness_sum)
    losses["centerness_loss"] = centerness_loss(outputs["centerness"], center_target, positive, num_positives)
    losses["total_loss"] = tf.add_n(list(losses.values()))
    return losses
