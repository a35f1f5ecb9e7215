"""Post-processing: spec TV9 and TV12, padding, batches, class-aware NMS, tf.function vs XLA."""

import dataclasses

import numpy as np
import pytest
import tensorflow as tf

from polarmask_tf import config as cfg
from polarmask_tf import geometry
from polarmask_tf import postprocess as pp
from polarmask_tf.modeling import pyramid

TV12_POLAR = cfg.PolarConfig(grid="original")
TV12_ORIGINAL_RULES = cfg.PostprocessConfig(nms_plus_one=True, nms_rule="greater_equal", rescale="original")
TV12_RESIZED = np.array([[32, 32]], np.int32)
TV12_SCALE = np.array([[32 / 48, 32 / 64]], np.float32)  # (sy, sx): 64 (w) x 48 (h) resized to 32 x 32


NUM_POINTS = 21
"""Locations of a 32 x 32 input: P3 4 x 4, P4 2 x 2, P5 1 x 1 (P6 and P7 are empty)."""


def tv12_outputs():
    """Spec TV12's synthetic head outputs (2 levels: stride 8 on 4 x 4, stride 16 on 2 x 2; C = 3),
    rays built in the original's HEAD order and converted to ours. Our pyramid also has P5 at
    32 x 32: its one location gets class logits of -30 (probability 1e-13), so it is never a
    candidate and TV12's numbers are unchanged."""
    cls, ctr, box, ray = [], [], [], []
    for li, cells in enumerate((4, 2)):
        for y in range(cells):
            for x in range(cells):
                cls.append([3 * np.sin(1 + c + 2 * y + 3 * x + li) - 2 for c in range(3)])
                ctr.append(np.cos(x - y + li))
                box.append([4 + x + li, 5 + y, 6 + x, 3 + y + li])
                ray.append([5 + (k % 7) + x + y + li for k in range(36)])
    cls.append([-30.0] * 3)
    ctr.append(0.0)
    box.append([1.0] * 4)
    ray.append([1.0] * 36)

    def batch(values):
        return tf.constant(np.asarray(values, np.float32)[None])

    return {
        "cls_logits": batch(cls),
        "centerness": batch(ctr),
        "boxes": batch(box),
        "rays": geometry.to_paper_order(batch(ray), "head"),
    }


def run(outputs, resized_size, scale, padded_shape, polar, post, mode="function"):
    """postprocess eagerly, in a plain tf.function or under XLA; results as numpy."""

    def call(o, r, s):
        return pp.postprocess(o, r, s, padded_shape, polar, post)

    if mode != "eager":
        call = tf.function(call, jit_compile=mode == "xla")
    result = call(outputs, tf.constant(resized_size, tf.int32), tf.constant(scale, tf.float32))
    return {key: value.numpy() for key, value in result.items()}


def canonical(result, b):
    """Image b's detections as rows (class, box, score, polygon), sorted by class and box: scores
    that tie, or differ in the last bit (sigmoid rounds differently with batch size and under XLA),
    may come in either order."""
    n = int(result["num_detections"][b])
    rows = np.concatenate([
        result["classes"][b, :n, None].astype(np.float64), result["boxes"][b, :n],
        result["scores"][b, :n, None], result["polygons"][b, :n].reshape(n, -1),
    ], axis=1)
    return rows[np.lexsort(np.round(rows[:, 4::-1], 3).T)]


def assert_padding(result, max_detections):
    assert result["boxes"].shape[1:] == (max_detections, 4)
    for b, n in enumerate(result["num_detections"]):
        assert np.all(result["scores"][b, n:] == 0) and np.all(result["classes"][b, n:] == pp.PADDED_CLASS)
        assert np.all(result["boxes"][b, n:] == 0) and np.all(result["polygons"][b, n:] == 0)
        assert np.all(result["scores"][b, :n] > 0) and np.all(result["classes"][b, :n] >= 1)
        assert np.all(np.diff(result["scores"][b, :n]) <= 0), "detections are sorted by score"


@pytest.mark.parametrize("mode", ["eager", "function", "xla"])
def test_tv12_with_the_original_rules(spec_vectors, mode):
    expected = spec_vectors["postprocess_example"]
    result = run(tv12_outputs(), TV12_RESIZED, TV12_SCALE, (32, 32), TV12_POLAR, TV12_ORIGINAL_RULES, mode)
    n = int(result["num_detections"][0])
    assert n == expected["num_detections"] == 36
    classes = result["classes"][0, :n]
    assert np.bincount(classes, minlength=4)[1:].tolist() == expected["per_class_counts"]  # 0-based 11/12/13
    assert result["scores"][0, :n].astype(np.float64).sum() == pytest.approx(expected["sum_scores"], abs=2e-5)
    assert result["boxes"][0, :n].astype(np.float64).sum() == pytest.approx(expected["sum_boxes"], abs=1e-3)
    # All 36 contour points' x and y of every detection, original-image pixels.
    assert result["polygons"][0, :n].astype(np.float64).sum() == pytest.approx(expected["sum_mask_coords"], abs=1e-2)
    assert_padding(result, 100)

    assert result["scores"][0, 0] == pytest.approx(0.892192, abs=1e-6)
    assert classes[0] == 3  # the spec's 0-based class 2
    np.testing.assert_allclose(result["boxes"][0, 0], [14, 9, 38, 24], atol=1e-4)
    head_order = geometry.ray_index_map(36, "head")  # HEAD ray k' is our ray head_order[k']
    first = result["polygons"][0, 0, head_order[:3]]
    np.testing.assert_allclose(first[:, 0], [24.0, 26.7784, 30.1564], atol=1e-4)
    np.testing.assert_allclose(first[:, 1], [28.5, 29.8177, 30.6859], atol=1e-4)
    assert result["scores"][0, 1] == pytest.approx(0.830155, abs=1e-6) and classes[1] == 2
    np.testing.assert_allclose(result["boxes"][0, 1], [0, 0, 20, 10.5], atol=1e-4)


def test_tv9_scoring():
    logit = lambda p: np.log(p / (1 - p))  # noqa: E731
    probs, scores = pp.scoring(tf.constant([[logit(0.6)]]), tf.constant([logit(0.5)]))
    rank = pp.location_rank(tf.constant([[logit(0.6), logit(0.2)]]), tf.constant([logit(0.5)]))
    assert probs.numpy()[0, 0] == pytest.approx(0.6, abs=1e-6)
    assert rank.numpy()[0] == pytest.approx(0.30, abs=1e-6)  # the pre-NMS top-k key has no offset
    assert scores.numpy()[0, 0] == pytest.approx(0.60, abs=1e-6)

    # Through postprocess: the only location whose class passes the threshold.
    outputs = tv12_outputs()
    cls = np.full((1, NUM_POINTS, 3), -20.0, np.float32)
    cls[0, 5, 1] = logit(0.6)
    ctr = np.full((1, NUM_POINTS), logit(0.5), np.float32)
    outputs.update(cls_logits=tf.constant(cls), centerness=tf.constant(ctr))
    result = run(outputs, TV12_RESIZED, TV12_SCALE, (32, 32), TV12_POLAR, cfg.PostprocessConfig())
    assert result["num_detections"][0] == 1 and result["num_candidates"][0] == 1
    assert result["scores"][0, 0] == pytest.approx(0.60, abs=1e-6) and result["classes"][0, 0] == 2


def single_location_outputs(num_points, index, classes, sides, ray, num_classes=3, num_rays=36):
    """Outputs where only location `index` has classes above the threshold (logit 3 each)."""
    cls = np.full((1, num_points, num_classes), -20.0, np.float32)
    cls[0, index, [c - 1 for c in classes]] = 3.0
    boxes = np.ones((1, num_points, 4), np.float32)
    boxes[0, index] = sides
    return {
        "cls_logits": tf.constant(cls),
        "centerness": tf.zeros((1, num_points)),
        "boxes": tf.constant(boxes),
        "rays": tf.fill((1, num_points, num_rays), float(ray)),
    }


def test_exact_boxes_and_polygons_in_the_pixel_centre_frame():
    # Default grid: location (i=1, j=2) of stride 8 sits at (2*8 + 3.5, 8 + 3.5) = (19.5, 11.5).
    outputs = single_location_outputs(NUM_POINTS, 1 * 4 + 2, [1], [4.0, 3.0, 6.0, 5.0], 10.0)
    scale = np.array([[0.5, 0.25]], np.float32)  # original 64 (h) x 128 (w) -> 32 x 32
    result = run(outputs, [[32, 32]], scale, (32, 32), cfg.PolarConfig(), cfg.PostprocessConfig())
    assert result["num_detections"][0] == 1

    def back(x, s):
        return (x + 0.5) / s - 0.5

    x, y = 19.5, 11.5
    np.testing.assert_allclose(
        result["boxes"][0, 0], [back(x - 4, 0.25), back(y - 3, 0.5), back(x + 6, 0.25), back(y + 5, 0.5)], atol=1e-4
    )
    angles = 2 * np.pi * np.arange(36) / 36
    px = np.clip(back(x + 10 * np.cos(angles), 0.25), 0, 127)
    py = np.clip(back(y + 10 * np.sin(angles), 0.5), 0, 63)
    np.testing.assert_allclose(result["polygons"][0, 0], np.stack([px, py], -1), atol=1e-4)
    # Ray 27 points up from y = 11.5 by 10 px: resized 1.5 -> original (1.5 + 0.5) / 0.5 - 0.5 = 3.5.
    assert result["polygons"][0, 0, 27, 1] == pytest.approx(3.5, abs=1e-4)

    # box_source "polygon": the box is the clipped polygon's extent.
    polygon_boxes = run(outputs, [[32, 32]], scale, (32, 32), cfg.PolarConfig(),
                        cfg.PostprocessConfig(box_source="polygon"))
    np.testing.assert_allclose(polygon_boxes["boxes"][0, 0], [px.min(), py.min(), px.max(), py.max()], atol=1e-4)


def test_clipping_to_the_image_in_both_rescale_modes():
    # A huge box and long rays at the last stride-8 location of a 32 x 32 input whose image is 24 x 16.
    outputs = single_location_outputs(NUM_POINTS, 15, [1], [100.0, 100.0, 100.0, 100.0], 100.0)
    scale = np.array([[0.5, 0.5]], np.float32)  # original 48 (h) x 32 (w) -> 24 x 16
    polar = cfg.PolarConfig()
    centres = run(outputs, [[24, 16]], scale, (32, 32), polar, cfg.PostprocessConfig())
    np.testing.assert_allclose(centres["boxes"][0, 0], [0, 0, 31, 47], atol=1e-4)
    assert centres["polygons"][0, 0, :, 0].max() == pytest.approx(31) and centres["polygons"].min() == 0
    original = run(outputs, [[24, 16]], scale, (32, 32), polar, cfg.PostprocessConfig(rescale="original"))
    np.testing.assert_allclose(original["boxes"][0, 0], [0, 0, 30, 46], atol=1e-4)  # (16 - 1) / 0.5, (24 - 1) / 0.5


def test_batch_with_different_sizes_and_an_empty_image():
    tv12 = tv12_outputs()
    empty = {key: value for key, value in tv12.items()}
    empty["cls_logits"] = tf.fill(tv12["cls_logits"].shape, -30.0)
    batch = {key: tf.concat([tv12[key], empty[key], tv12[key]], 0) for key in tv12}
    sizes = np.array([[32, 32], [32, 32], [24, 16]], np.int32)
    scales = np.array([[32 / 48, 0.5], [1, 1], [0.5, 0.25]], np.float32)
    post = cfg.PostprocessConfig(max_detections=20)
    together = run(batch, sizes, scales, (32, 32), TV12_POLAR, post)
    assert together["num_detections"][1] == 0 and together["num_candidates"][1] == 0
    assert_padding(together, 20)
    for b in (0, 2):
        alone = run(tv12, sizes[b : b + 1], scales[b : b + 1], (32, 32), TV12_POLAR, post)
        assert together["num_detections"][b] == alone["num_detections"][0] == 20  # 36 survivors, K = 20
        np.testing.assert_allclose(canonical(together, b), canonical(alone, 0), atol=1e-5)
    # The third image is 64 (w) x 48 (h) in original pixels.
    assert together["boxes"][2, :, [0, 2]].max() <= 63 and together["boxes"][2, :, [1, 3]].max() <= 47
    assert not np.allclose(together["boxes"][0], together["boxes"][2])


def test_plain_function_and_xla_agree():
    rng = np.random.default_rng(0)
    padded = (128, 128)
    polar = cfg.PolarConfig()  # P3..P7: 256 + 64 + 16 + 4 + 1 = 341 locations
    points, _ = pyramid.locations(128, 128)
    outputs = {
        "cls_logits": tf.constant(rng.normal(-2.5, 1.5, (2, len(points), 5)), tf.float32),
        "centerness": tf.constant(rng.normal(0, 1, (2, len(points))), tf.float32),
        "boxes": tf.constant(rng.uniform(2, 40, (2, len(points), 4)), tf.float32),
        "rays": tf.constant(rng.uniform(2, 40, (2, len(points), 36)), tf.float32),
    }
    sizes = np.array([[128, 96], [100, 128]], np.int32)
    scales = np.array([[0.5, 0.5], [100 / 300, 0.4]], np.float32)
    # Per-level top-k (P3 > 200), the candidate cap and several NMS tiles are all exercised.
    post = cfg.PostprocessConfig(pre_nms_top_k=200, max_candidates=700)
    plain = run(outputs, sizes, scales, padded, polar, post, "function")
    xla = run(outputs, sizes, scales, padded, polar, post, "xla")
    assert np.all(plain["num_candidates"] > 700)
    assert 20 < plain["num_detections"].min()
    for key in ("num_detections", "num_candidates"):
        np.testing.assert_array_equal(plain[key], xla[key])
    for b in range(2):  # coordinates up to ~250 px: XLA's cos may differ in the last bits (1 ulp = 1.5e-5)
        np.testing.assert_allclose(canonical(plain, b), canonical(xla, b), atol=1e-5, rtol=1e-6)
    np.testing.assert_allclose(plain["scores"], xla["scores"], atol=1e-5)
    assert_padding(plain, 100)


def test_class_aware_nms_through_postprocess():
    # One location, two classes: identical boxes of different classes both survive.
    outputs = single_location_outputs(NUM_POINTS, 5, [1, 3], [4.0, 4.0, 4.0, 4.0], 5.0)
    result = run(outputs, TV12_RESIZED, [[1.0, 1.0]], (32, 32), TV12_POLAR, cfg.PostprocessConfig())
    assert result["num_detections"][0] == 2 and sorted(result["classes"][0, :2]) == [1, 3]
    np.testing.assert_array_equal(result["boxes"][0, 0], result["boxes"][0, 1])
    np.testing.assert_array_equal(result["polygons"][0, 0], result["polygons"][0, 1])

    # Two locations 8 px apart with boxes that coincide: of the same class only one survives.
    cls = np.full((1, NUM_POINTS, 3), -20.0, np.float32)
    cls[0, [5, 6], 0] = [3.0, 2.0]
    boxes = np.ones((1, NUM_POINTS, 4), np.float32)
    boxes[0, 5] = [4, 4, 12, 4]
    boxes[0, 6] = [12, 4, 4, 4]
    outputs.update(cls_logits=tf.constant(cls), boxes=tf.constant(boxes))
    result = run(outputs, TV12_RESIZED, [[1.0, 1.0]], (32, 32), TV12_POLAR, cfg.PostprocessConfig())
    assert result["num_detections"][0] == 1 and result["scores"][0, 0] == pytest.approx(1 / (1 + np.exp(-3.0)))
    cls[0, 6] = [-20.0, 2.0, -20.0]  # ... and of different classes both do
    outputs.update(cls_logits=tf.constant(cls))
    result = run(outputs, TV12_RESIZED, [[1.0, 1.0]], (32, 32), TV12_POLAR, cfg.PostprocessConfig())
    assert result["num_detections"][0] == 2


def greedy_nms(boxes, classes, valid, threshold, rule, plus_one):
    """Sequential greedy NMS per class in float32, the textbook loop."""
    keep = np.zeros(len(boxes), bool)
    iou = pp.pairwise_iou(boxes, boxes, plus_one).numpy()
    for i in range(len(boxes)):
        if not valid[i]:
            continue
        rivals = keep[:i] & (classes[:i] == classes[i])
        overlap = iou[i, :i] >= threshold if rule == "greater_equal" else iou[i, :i] > threshold
        keep[i] = not np.any(rivals & overlap)
    return keep


@pytest.mark.parametrize("rule,plus_one,num_classes", [("greater", False, 3), ("greater_equal", True, 3),
                                                      ("greater", False, 40)])
def test_nms_equals_sequential_greedy_nms_across_tiles(rule, plus_one, num_classes):
    """Few classes: every class spans several tiles. Many: most tiles need no earlier tile."""
    rng = np.random.default_rng(1)
    count = 4 * pp.NMS_TILE_SIZE + 77
    xy = rng.uniform(0, 60, (2, count, 2)).astype(np.float32)
    boxes = np.round(np.concatenate([xy, xy + rng.uniform(4, 20, (2, count, 2))], -1)).astype(np.float32)
    classes = rng.integers(0, num_classes, (2, count)).astype(np.int32)
    valid = np.arange(count)[None] < np.array([[count - 30], [150]])
    keep = pp.class_aware_nms(boxes, classes, valid, 0.5, rule, plus_one).numpy()
    for b in range(2):
        expected = greedy_nms(boxes[b], classes[b], valid[b], 0.5, rule, plus_one)
        np.testing.assert_array_equal(keep[b], expected)
        assert 20 < expected.sum() < valid[b].sum()
    if rule == "greater" and not plus_one:  # TensorFlow's own NMS, one class at a time
        for c in range(3):
            members = np.flatnonzero((classes[0] == c) & valid[0])
            yxyx = tf.gather(boxes[0, members], [1, 0, 3, 2], axis=-1)
            scores = tf.range(len(members), 0, -1, dtype=tf.float32)
            chosen = tf.image.non_max_suppression(yxyx, scores, len(members), 0.5).numpy()
            np.testing.assert_array_equal(np.sort(members[chosen]), np.flatnonzero(keep[0] & (classes[0] == c)))


@pytest.mark.parametrize("num_classes", [1, 40])
@pytest.mark.parametrize("max_keep", [1, 37, pp.NMS_TILE_SIZE + 5])
def test_nms_max_keep_is_the_first_survivors_of_greedy_nms(num_classes, max_keep):
    """The loop stops once max_keep survivors are found: those are greedy NMS's first ones, the
    rest False, also when an image reaches max_keep in a tile that the other image does not."""
    rng = np.random.default_rng(2)
    count = 3 * pp.NMS_TILE_SIZE + 19
    xy = rng.uniform(0, 80, (2, count, 2)).astype(np.float32)
    boxes = np.concatenate([xy, xy + rng.uniform(4, 24, (2, count, 2))], -1).astype(np.float32)
    classes = rng.integers(0, num_classes, (2, count)).astype(np.int32)
    valid = np.arange(count)[None] < np.array([[count], [200]])
    keep = pp.class_aware_nms(boxes, classes, valid, 0.5, max_keep=max_keep).numpy()
    for b in range(2):
        expected = greedy_nms(boxes[b], classes[b], valid[b], 0.5, "greater", False)
        expected &= np.cumsum(expected) <= max_keep
        np.testing.assert_array_equal(keep[b], expected)
        assert expected.sum() == min(max_keep, greedy_nms(boxes[b], classes[b], valid[b], 0.5, "greater",
                                                          False).sum())


def test_nms_suppression_chain_across_tiles():
    """Box i overlaps box i + 1 (IoU 8/12) but not i + 2 (6/14): greedy keeps every other box, a
    chain as long as the candidates, through the tile boundaries and the survivor buffer."""
    count = 2 * pp.NMS_TILE_SIZE + 44
    x = 2.0 * np.arange(count, dtype=np.float32)
    boxes = np.stack([x, np.zeros_like(x), x + 10, np.full_like(x, 10)], -1)[None]
    classes = np.zeros((1, count), np.int32)
    valid = np.ones((1, count), bool)
    np.testing.assert_array_equal(pp.class_aware_nms(boxes, classes, valid, 0.5).numpy()[0],
                                  np.arange(count) % 2 == 0)
    keep = pp.class_aware_nms(boxes, classes, valid, 0.5, max_keep=100).numpy()[0]
    np.testing.assert_array_equal(np.flatnonzero(keep), np.arange(0, 200, 2))


def test_nms_threshold_rule_and_plus_one_at_an_exact_tie():
    boxes = np.array([[[0, 0, 10, 10], [0, 0, 10, 5]]], np.float32)  # IoU 50 / 100 = 0.5 exactly
    classes = np.zeros((1, 2), np.int32)
    valid = np.ones((1, 2), bool)
    assert pp.class_aware_nms(boxes, classes, valid, 0.5, "greater").numpy().tolist() == [[True, True]]
    assert pp.class_aware_nms(boxes, classes, valid, 0.5, "greater_equal").numpy().tolist() == [[True, False]]
    # "+1": 66 / 121 > 0.5.
    assert pp.pairwise_iou(boxes[0], boxes[0], plus_one=True).numpy()[0, 1] == pytest.approx(66 / 121)
    assert pp.class_aware_nms(boxes, classes, valid, 0.5, "greater", plus_one=True).numpy().tolist() == [[True, False]]


def test_candidate_cap_keeps_the_highest_scores():
    outputs = tv12_outputs()
    full = run(outputs, TV12_RESIZED, TV12_SCALE, (32, 32), TV12_POLAR, TV12_ORIGINAL_RULES)
    capped = run(outputs, TV12_RESIZED, TV12_SCALE, (32, 32), TV12_POLAR,
                 dataclasses.replace(TV12_ORIGINAL_RULES, max_candidates=10))
    assert capped["num_candidates"][0] == full["num_candidates"][0] == 37
    n = capped["num_detections"][0]
    assert n <= 10
    np.testing.assert_allclose(capped["scores"][0, :n], full["scores"][0, :n])  # no suppression among the top 10


def test_config_section():
    config = cfg.load_config(overrides=["postprocess.nms_rule=greater_equal", "postprocess.max_detections=50"])
    assert config.postprocess.nms_rule == "greater_equal" and config.postprocess.max_detections == 50
    assert config.postprocess.score_threshold == 0.05 and config.postprocess.pre_nms_top_k == 1000
    with pytest.raises(cfg.ConfigError, match="postprocess.rescale"):
        cfg.load_config(overrides=["postprocess.rescale=floor"])


def test_unknown_batch_size_in_a_serving_signature():
    outputs = tv12_outputs()
    specs = {key: tf.TensorSpec([None] + value.shape[1:].as_list(), tf.float32) for key, value in outputs.items()}

    @tf.function(input_signature=[specs, tf.TensorSpec([None, 2], tf.int32), tf.TensorSpec([None, 2], tf.float32)])
    def serve(o, resized_size, scale):
        return pp.postprocess(o, resized_size, scale, (32, 32), TV12_POLAR, TV12_ORIGINAL_RULES)

    result = serve(outputs, tf.constant(TV12_RESIZED), tf.constant(TV12_SCALE))
    assert result["polygons"].shape == (1, 100, 36, 2) and int(result["num_detections"][0]) == 36
    assert serve.get_concrete_function().structured_outputs["boxes"].shape.as_list() == [None, 100, 4]


def test_stage_top_locations_keeps_the_best_per_level():
    rng = np.random.default_rng(3)
    rank = tf.constant(rng.uniform(size=(2, pyramid.num_locations(64, 64))), tf.float32)  # 64 + 16 + 4 + 1 + 0
    location = pp.top_locations(rank, (64, 64), pre_nms_top_k=10).numpy()
    assert location.shape == (2, 10 + 10 + 4 + 1)
    for b in range(2):
        p3 = np.sort(location[b, :10])
        np.testing.assert_array_equal(p3, np.sort(np.argsort(-rank.numpy()[b, :64])[:10]))
        assert set(location[b, 10:20]) <= set(range(64, 80)) and list(location[b, 20:]) == [80, 81, 82, 83, 84]


def test_stage_top_candidates_thresholds_caps_and_counts():
    probs = np.zeros((1, 4, 3), np.float32)
    probs[0, 0] = [0.9, 0.06, 0.01]
    probs[0, 2] = [0.5, 0.05, 0.7]  # exactly the threshold does not pass
    scores = probs * 0.5
    candidates = pp.top_candidates(tf.constant(probs), tf.constant(scores), tf.constant([[0, 1, 2, 3]]), 0.05, 3)
    got = {k: v.numpy() for k, v in candidates.items()}
    assert got["num_candidates"].tolist() == [4]  # 0.9, 0.06, 0.5, 0.7; the cap keeps 3
    np.testing.assert_allclose(got["scores"][0], [0.45, 0.35, 0.25])
    assert got["valid"][0].all() and got["location"][0].tolist() == [0, 2, 2]
    assert got["class_index"][0].tolist() == [0, 2, 0]


def test_stage_select_detections_pads_with_the_one_convention():
    keep = tf.constant([[False, True, True, False]])
    candidates = {"scores": tf.constant([[0.9, 0.8, 0.7, 0.6]]), "class_index": tf.constant([[0, 1, 2, 0]])}
    boxes = tf.reshape(tf.range(16, dtype=tf.float32), [1, 4, 4])
    got = {k: v.numpy() for k, v in pp.select_detections(keep, candidates, boxes, max_detections=6).items()}
    assert got["num_detections"].tolist() == [2]
    assert got["index"][0].tolist() == [1, 2, -1, -1, -1, -1]
    assert got["classes"][0].tolist() == [2, 3] + [pp.PADDED_CLASS] * 4
    np.testing.assert_allclose(got["scores"][0], [0.8, 0.7, 0, 0, 0, 0])
    np.testing.assert_allclose(got["boxes"][0, :2], [[4, 5, 6, 7], [8, 9, 10, 11]])
    assert not got["boxes"][0, 2:].any()
