"""The polar target encoder: spec TV8 parity, flip consistency, XLA, edge cases."""

import dataclasses

import numpy as np
import pytest
import tensorflow as tf
from hypothesis import given, settings
from hypothesis import strategies as st

from polarmask_tf import config as cfg
from polarmask_tf import geometry
from polarmask_tf.data import targets
from polarmask_tf.modeling import pyramid

HEAD = geometry.ray_index_map(36, "head")
REFERENCE = dataclasses.replace(cfg.PolarConfig(), ray_method="reference", grid="original")


def tv8_masks():
    """The four ground truths of spec TV8 on a 256 x 256 padded image, uint8 [4, 256, 256]."""
    yy, xx = np.mgrid[:256, :256]
    masks = np.zeros((4, 256, 256), np.uint8)
    masks[0][(xx - 60) ** 2 + (yy - 70) ** 2 <= 900] = 1
    masks[1, 40:230, 100:240] = 1
    masks[2, 140:200, 120:180] = 1
    masks[3, 55:86, 45:96] = 1
    return masks


def instances_from_masks(masks, max_vertices=None):
    """labels [M], inclusive boxes [M, 4] and padded largest contours [M, V, 2] of binary masks."""
    contours = [geometry.largest_contour(m) for m in masks]
    size = max_vertices or max(len(c) for c in contours)
    polygons = np.stack([np.concatenate([c, np.repeat(c[-1:], size - len(c), 0)]) for c in contours])
    boxes = []
    for m in masks:
        ys, xs = np.nonzero(m)
        boxes.append([xs.min(), ys.min(), xs.max(), ys.max()])
    return np.arange(1, len(masks) + 1, dtype=np.int32), np.array(boxes, np.float32), polygons


@pytest.fixture(scope="module")
def tv8(spec_vectors):
    vector = spec_vectors["assignment_256"]
    labels, boxes, polygons = instances_from_masks(tv8_masks())
    centres = np.array(vector["mass_centres_int"], np.float32)
    encoded = targets.encode_targets(labels, boxes, centres, polygons, (256, 256), REFERENCE)
    return vector, {k: v.numpy() for k, v in encoded.items()}, (labels, boxes, centres, polygons)


def test_tv8_points_per_level(spec_vectors):
    points, levels = pyramid.locations(256, 256, "original")
    assert np.bincount(levels).tolist() == spec_vectors["assignment_256"]["points_per_level"]
    np.testing.assert_array_equal(points[:2], [[4, 4], [12, 4]])  # row-major, x fastest
    centred, _ = pyramid.locations(256, 256)
    np.testing.assert_array_equal(centred[:2], [[3.5, 3.5], [11.5, 3.5]])
    np.testing.assert_array_equal(centred[1024:1025], [[7.5, 7.5]])


def test_tv8_positives_labels_boxes_centerness_and_rays(tv8):
    vector, encoded, _ = tv8
    points, levels = pyramid.locations(256, 256, REFERENCE.grid)
    positive = np.flatnonzero(encoded["labels"] > 0)
    assert len(positive) == vector["num_positives"] == 33
    found = {(int(points[i, 0]), int(points[i, 1]), int(levels[i]) + 3): i for i in positive}
    for expected in vector["positives"]:
        i = found[(expected["point"][0], expected["point"][1], expected["level"])]
        assert encoded["labels"][i] == expected["label"]
        np.testing.assert_array_equal(encoded["boxes"][i], expected["box_ltrb"])
        assert encoded["centerness"][i] == pytest.approx(expected["centerness"], abs=1e-3)
        ours = encoded["rays"][i][[(9 - k) % 36 for k in (0, 9, 18, 27)]]
        np.testing.assert_allclose(ours, expected["rays_head_k0_9_18_27"], atol=1e-3)
    negative = encoded["labels"] == 0
    assert not encoded["rays"][negative].any() and not encoded["centerness"][negative].any()
    assert not encoded["boxes"][negative].any()


def test_exact_rays_agree_with_reference_on_convex_shapes(tv8):
    vector, reference, (labels, boxes, centres, polygons) = tv8
    exact = targets.encode_targets(labels, boxes, centres, polygons, (256, 256),
                                   dataclasses.replace(REFERENCE, ray_method="exact"))
    np.testing.assert_array_equal(exact["labels"], reference["labels"])
    positive = reference["labels"] > 0
    # Same contour, different rule: a 1-degree bin reads the farthest vertex near the ray, a few
    # pixels off the exact crossing near the corners of long boxes, well under one elsewhere.
    difference = np.abs(exact["rays"].numpy()[positive] - reference["rays"][positive])
    assert np.median(difference) < 0.2 and difference.max() < 5


def _xla_encoder(polar):
    return tf.function(lambda *a: targets.encode_targets(*a, (256, 256), polar), jit_compile=True)


@pytest.mark.slow
def test_encoder_compiles_with_xla_and_matches_eager(tv8):
    _, _, (labels, boxes, centres, polygons) = tv8
    for polar in (cfg.PolarConfig(), REFERENCE):
        polar = dataclasses.replace(polar, positives_per_chunk=8)  # several loop trips
        eager = targets.encode_targets(labels, boxes, centres, polygons, (256, 256), polar)
        compiled = _xla_encoder(polar)(labels, boxes, centres, polygons)
        for key in eager:
            np.testing.assert_allclose(compiled[key], eager[key], rtol=1e-5, atol=1e-4)


def test_no_instances_and_padding_give_empty_targets():
    polar = cfg.PolarConfig()
    labels = np.zeros([3], np.int32)
    empty = targets.encode_targets(labels, np.zeros([3, 4]), np.zeros([3, 2]), np.zeros([3, 5, 2]), (128, 128), polar)
    assert int(tf.reduce_sum(empty["labels"])) == 0 and float(tf.reduce_sum(empty["rays"])) == 0
    assert empty["rays"].shape == (256 + 64 + 16 + 4 + 1, 36)


def test_horizontal_flip_mirrors_the_targets():
    masks = tv8_masks()
    labels, boxes, polygons = instances_from_masks(masks)
    centres = geometry.mass_center(polygons).numpy()
    original = targets.encode_targets(labels, boxes, centres, polygons, (256, 256), cfg.PolarConfig())
    width = 256
    flipped_boxes = np.stack([width - 1 - boxes[:, 2], boxes[:, 1], width - 1 - boxes[:, 0], boxes[:, 3]], -1)
    mirror = np.float32([-1, 1]), np.float32([width - 1, 0])
    flipped = targets.encode_targets(
        labels, flipped_boxes, centres * mirror[0] + mirror[1], polygons * mirror[0] + mirror[1], (256, 256),
        cfg.PolarConfig(),
    )
    # The cell-centre grid is symmetric under the image flip x -> W - 1 - x: location (i, j) of a
    # level pairs with (i, W/s - 1 - j).
    points, levels = pyramid.locations(256, 256)
    lookup = {(float(p[0]), float(p[1]), int(level)): i
              for i, (p, level) in enumerate(zip(points, levels, strict=True))}
    partner = np.array([lookup[(width - 1 - float(p[0]), float(p[1]), int(level))]
                        for p, level in zip(points, levels, strict=True)])
    assert (original["labels"].numpy() > 0).sum() > 20
    np.testing.assert_array_equal(flipped["labels"].numpy()[partner], original["labels"])
    hflip = geometry.ray_index_map(36, "hflip")
    np.testing.assert_allclose(flipped["rays"].numpy()[partner][:, hflip], original["rays"], atol=2e-3)
    np.testing.assert_allclose(flipped["centerness"].numpy()[partner], original["centerness"], atol=1e-4)
    swapped = flipped["boxes"].numpy()[partner][:, [2, 1, 0, 3]]
    np.testing.assert_allclose(swapped, original["boxes"], atol=1e-4)


def dense_assignment(labels, boxes, centres, image_shape, polar):
    """Brute force over every location and instance (the original's formulation), numpy."""
    points, levels = pyramid.locations(*image_shape, polar.grid)
    strides = np.asarray(pyramid.STRIDES, np.float32)[levels][:, None]
    ranges = np.asarray(polar.regress_ranges, np.float32)[levels]
    x, y = points[:, :1], points[:, 1:]
    x1, y1, x2, y2 = boxes.T[:, None, :]
    ltrb = np.stack([x - x1, y - y1, x2 - x, y2 - y], -1)
    r = strides * polar.center_sample_radius
    cx, cy = centres.T[:, None, :]
    inside = ((x > np.maximum(cx - r, x1)) & (x < np.minimum(cx + r, x2))
              & (y > np.maximum(cy - r, y1)) & (y < np.minimum(cy + r, y2)))
    extent = ltrb.max(-1)
    ok = inside & (extent >= ranges[:, :1]) & (extent <= ranges[:, 1:]) & (labels > 0)[None]
    area = (boxes[:, 2] - boxes[:, 0] + 1) * (boxes[:, 3] - boxes[:, 1] + 1)
    if not len(labels):
        return np.zeros(len(points), np.int32), np.zeros((len(points), 4), np.float32)
    key = np.where(ok, area[None], np.inf)
    winner = np.argmin(key, axis=1)  # numpy: first index among ties
    positive = ok.any(1)
    return np.where(positive, labels[winner], 0), np.where(positive[:, None], ltrb[np.arange(len(points)), winner], 0)


@settings(max_examples=30, deadline=None)
@given(
    data=st.lists(
        st.tuples(st.floats(0, 250), st.floats(0, 250), st.floats(4, 300), st.floats(4, 300),
                  st.floats(0, 1), st.floats(0, 1), st.integers(0, 5)),
        min_size=0, max_size=12,
    ),
    radius=st.sampled_from([1.0, 1.5, 2.5]),
    grid=st.sampled_from(["cell_center", "original"]),
)
@pytest.mark.slow
def test_candidate_enumeration_equals_the_dense_rule(data, radius, grid):
    polar = dataclasses.replace(cfg.PolarConfig(), center_sample_radius=radius, grid=grid)
    rows = np.array(data, np.float32).reshape(-1, 7)
    boxes = np.stack([rows[:, 0], rows[:, 1], rows[:, 0] + rows[:, 2], rows[:, 1] + rows[:, 3]], -1)
    boxes = np.round(boxes)  # integer boxes produce exact ties between equal areas
    centres = boxes[:, :2] + rows[:, 4:6] * (boxes[:, 2:] - boxes[:, :2])
    labels = rows[:, 6].astype(np.int32)
    polygons = np.stack([boxes[:, [0, 1]], boxes[:, [2, 1]], boxes[:, [2, 3]], boxes[:, [0, 3]]], 1)
    encoded = targets.encode_targets(labels, boxes, centres, polygons, (256, 384), polar)
    want_labels, want_boxes = dense_assignment(labels, boxes, centres, (256, 384), polar)
    np.testing.assert_array_equal(encoded["labels"], want_labels)
    np.testing.assert_allclose(encoded["boxes"], want_boxes, atol=1e-4)
