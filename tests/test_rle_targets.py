"""Mask-only (RLE) annotations train on the same shapes as polygon annotations of the same object.

The conversion traces an RLE along its pixels' outer edges (geometry.mask_outlines): its rays, mass
centre, box and the target encoder's output agree with those of the polygon the mask was drawn
from. A contour through the boundary pixels' centres, as before, was half a pixel inside the object:
every ray 0.5 px short, every box 1 px narrower.
"""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pycocotools import mask as coco_mask

from polarmask_tf import config as cfg
from polarmask_tf import geometry
from polarmask_tf.data import coco, targets

SIZE = 128
LABELS = coco.LabelMap.from_coco_categories([{"id": 1, "name": "thing"}])


def _annotations(flat):
    """The polygon annotation (COCO frame) and the RLE annotation of COCO's mask of it."""
    rle = coco_mask.merge(coco_mask.frPyObjects([flat], SIZE, SIZE))
    area = float(coco_mask.area(rle))
    rle = {"size": rle["size"], "counts": rle["counts"].decode("ascii")}
    polygon = {"id": 1, "category_id": 1, "iscrowd": 0, "area": area, "segmentation": [flat]}
    return polygon, dict(polygon, id=2, segmentation=rle)


def _instance(annotation):
    skips = coco.Skips()
    instances = coco.image_instances([annotation], SIZE, SIZE, LABELS, skips=skips)
    assert len(instances["labels"]) == 1, skips.annotations.to_dict()
    return instances


def _ellipse(cx, cy, a, ratio, angle, vertices=32):
    t = np.linspace(0, 2 * np.pi, vertices, endpoint=False)
    x, y = a * np.cos(t), a * ratio * np.sin(t)
    c, s = np.cos(angle), np.sin(angle)
    return np.stack([cx + c * x - s * y, cy + s * x + c * y], 1).reshape(-1).tolist()


@settings(max_examples=40, deadline=None)
@given(cx=st.floats(40, 88), cy=st.floats(40, 88), a=st.floats(6, 30), ratio=st.floats(0.5, 1.0),
       angle=st.floats(0, np.pi))
def test_rle_and_polygon_of_the_same_shape_give_the_same_rays(cx, cy, a, ratio, angle):
    polygon, rle = _annotations(_ellipse(cx, cy, a, ratio, angle))
    from_polygon, from_rle = _instance(polygon), _instance(rle)
    centre = from_polygon["mass_centers"]
    rays_polygon = geometry.ray_distances(from_polygon["polygons"][0][0], centre, 36).numpy()[0]
    rays_rle = geometry.ray_distances(from_rle["polygons"][0][0], centre, 36).numpy()[0]
    difference = rays_rle - rays_polygon
    assert np.abs(difference).max() <= 1.0
    assert abs(difference.mean()) <= 0.35  # no bias: the pixel-centre contour was 0.5 px short (0.3 seen: sampling)
    assert np.abs(from_rle["mass_centers"] - centre).max() <= 0.5
    assert np.abs(from_rle["boxes"] - from_polygon["boxes"]).max() <= 1.0


def _encode(instances, polar):
    polygons = instances["polygons"][0][0][None]
    return {key: value.numpy() for key, value in targets.encode_targets(
        instances["labels"].astype(np.int32), instances["boxes"], instances["mass_centers"], polygons,
        (SIZE, SIZE), polar).items()}


@pytest.mark.parametrize("ray_method", ["exact", "reference"])
def test_the_target_encoder_gives_an_rle_instance_the_polygons_targets(ray_method):
    # A polygon on pixel edges (integer COCO coordinates), which COCO's rasterisation fills exactly: its
    # RLE's outline is the polygon itself (the same six corners), so every target is the polygon path's,
    # with either ray rule.
    polygon, rle = _annotations([20, 30, 90, 30, 90, 50, 45, 50, 45, 110, 20, 110])
    polar = cfg.PolarConfig(ray_method=ray_method)
    from_polygon, from_rle = _instance(polygon), _instance(rle)
    assert rle["area"] == 70 * 20 + 25 * 60
    assert sorted(map(tuple, from_rle["polygons"][0][0].tolist())) == sorted(
        map(tuple, from_polygon["polygons"][0][0].tolist()))
    np.testing.assert_allclose(from_rle["boxes"], from_polygon["boxes"], atol=1e-5)
    np.testing.assert_allclose(from_rle["mass_centers"], from_polygon["mass_centers"], atol=1e-4)
    want, got = _encode(from_polygon, polar), _encode(from_rle, polar)
    assert np.count_nonzero(want["labels"]) > 5
    np.testing.assert_array_equal(got["labels"], want["labels"])
    for key in ("boxes", "rays", "centerness"):
        np.testing.assert_allclose(got[key], want[key], atol=1e-3, err_msg=key)


def test_the_target_encoder_rays_of_a_curved_rle_instance_are_within_a_pixel():
    polygon, rle = _annotations(_ellipse(64.3, 60.8, 34.0, 0.7, 0.4))
    polar = cfg.PolarConfig()
    want, got = _encode(_instance(polygon), polar), _encode(_instance(rle), polar)
    positive = (want["labels"] > 0) & (got["labels"] > 0)
    assert positive.sum() >= 0.9 * max(np.count_nonzero(want["labels"]), np.count_nonzero(got["labels"])) > 5
    difference = got["rays"][positive] - want["rays"][positive]
    assert np.abs(difference).max() <= 1.0 and abs(difference.mean()) <= 0.25
    assert np.abs(got["boxes"][positive] - want["boxes"][positive]).max() <= 1.0
