"""Polar geometry against the spec's test vectors (section 8) and geometric properties."""

import math

import cv2
import numpy as np
import pytest
import tensorflow as tf
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from pycocotools import mask as coco_mask

from polarmask_tf import geometry

from conftest import spec_mask

HEAD = geometry.ray_index_map(36, "head")
PROPERTY_SETTINGS = settings(max_examples=40, deadline=None)

# Integer centres of spec TV10 (mass centre and box centre per shape, original truncation).
TV10_CENTRES = {
    "square/mass": (49, 39), "square/box": (49, 39),
    "circle/mass": (49, 50), "circle/box": (50, 50),
    "ellipse/mass": (49, 50), "ellipse/box": (50, 50),
    "L/mass": (41, 57), "L/box": (49, 49),
    "U/mass": (49, 54), "U/box": (49, 49),
    "donut/mass": (49, 49), "donut/box": (50, 50),
    "wide_rect/mass": (49, 39), "wide_rect/box": (49, 39),
}


# ------------------------------------------------------------------ spec vectors


@pytest.mark.parametrize("name", ["square", "circle", "L", "wide_rect", "U"])
def test_reference_rays_and_centerness_match_spec_tv1_to_tv3(spec_vectors, name):
    expected = spec_vectors["rays_from_mass_centre"][name]
    contour = geometry.largest_contour(spec_mask(name))
    assert len(contour) == expected["contour_points"]
    origin = np.array([expected["mass_centre_int"]], np.float32)
    rays = geometry.ray_distances(contour, origin, 36, method="reference").numpy()[0]
    want = np.array(expected["rays_head_order"], np.float32)[HEAD]
    np.testing.assert_allclose(rays, want, rtol=1e-3)
    assert float(geometry.polar_centerness(rays)) == pytest.approx(expected["centerness"], rel=1e-3, abs=1e-6)


def test_reference_rays_from_a_non_centre_point_tv4(spec_vectors):
    expected = spec_vectors["rays_square_from_point_52_44"]
    contour = geometry.largest_contour(spec_mask("square"))
    rays = geometry.ray_distances(contour, [expected["origin"]], 36, method="reference").numpy()[0]
    np.testing.assert_allclose(rays, np.array(expected["rays_head_order"])[HEAD], rtol=1e-3)
    assert float(geometry.polar_centerness(rays)) == pytest.approx(expected["centerness"], rel=1e-3, abs=1e-6)


@pytest.mark.parametrize("name", ["square", "circle", "L", "wide_rect", "U"])
def test_mass_centre_within_the_truncation_effect(spec_vectors, name):
    # The original truncates a float64 centroid with int(); a centroid at an integer can come out
    # as x.99999 and truncate one pixel lower (spec section 7). Ours is the untruncated centroid.
    expected = np.array(spec_vectors["rays_from_mass_centre"][name]["mass_centre_int"])
    centre = geometry.mass_center(geometry.largest_contour(spec_mask(name))).numpy()
    assert np.all(np.abs(np.floor(centre) - expected) <= 1)
    assert np.all((centre - expected >= -1e-4) & (centre - expected < 1 + 1e-4))


def test_mass_centre_exact_values_and_zero_area_fallback():
    square = np.array([[0, 0], [4, 0], [4, 2], [0, 2]], np.float32)
    np.testing.assert_allclose(geometry.mass_center(square), [2.0, 1.0], atol=1e-6)
    triangle = np.array([[0, 0], [6, 0], [0, 3]], np.float32)
    np.testing.assert_allclose(geometry.mass_center(triangle), [2.0, 1.0], atol=1e-6)
    line = np.array([[0, 0], [2, 2], [4, 4], [10, 10]], np.float32)
    np.testing.assert_allclose(geometry.mass_center(line), [4.0, 4.0], atol=1e-6)
    padded = np.concatenate([triangle, np.repeat(triangle[-1:], 5, axis=0)])
    np.testing.assert_allclose(geometry.mass_center(padded), [2.0, 1.0], atol=1e-6)
    batch = np.stack([square, square + 10])
    np.testing.assert_allclose(geometry.mass_center(batch), [[2, 1], [12, 11]], atol=1e-5)


def test_decode_matches_spec_tv6(spec_vectors):
    vector = spec_vectors["decode_head_order"]
    head_rays = 10.0 + np.arange(36, dtype=np.float32)
    polygon = geometry.rays_to_polygon(vector["origin"], head_rays[HEAD]).numpy()
    for point in vector["points"]:
        k = (9 - point["k_head"]) % 36
        np.testing.assert_allclose(polygon[k], [point["x"], point["y"]], atol=1e-4)


def test_decode_clips_to_the_image_tv6():
    polygon = geometry.rays_to_polygon([5.0, 5.0], np.full(36, 20.0), image_shape=(50, 60)).numpy()
    head = polygon[HEAD]  # back to the original's order, k' = 0 straight down
    np.testing.assert_allclose(
        head[:10, 0], [5, 8.4730, 11.8404, 15, 17.8558, 20.3209, 22.3205, 23.7939, 24.6962, 25], atol=1e-4
    )
    np.testing.assert_allclose(
        head[:10, 1], [25, 24.6962, 23.7939, 22.3205, 20.3209, 17.8558, 15, 11.8404, 8.4730, 5], atol=1e-4
    )
    assert np.all(head[11:26, 1] == 0) and np.all(head[20:35, 0] == 0)
    per_image = geometry.rays_to_polygon([[5.0, 5.0]], np.full((1, 36), 100.0), image_shape=[[50, 60]]).numpy()
    assert per_image[..., 0].max() == 59 and per_image[..., 1].max() == 49


@pytest.mark.parametrize("key", sorted(TV10_CENTRES))
def test_upper_bound_36_rays_matches_spec_tv10(spec_vectors, key):
    # The original's rule end to end: reference rays from the integer centre, decoded, filled with
    # the original's truncate-and-drawContours rasterisation.
    mask = spec_mask(key.split("/")[0])
    contour = geometry.largest_contour(mask)
    origin = np.array([TV10_CENTRES[key]], np.float32)
    rays = geometry.ray_distances(contour, origin, 36, method="reference")
    polygon = geometry.rays_to_polygon(origin, rays, (100, 100))[0].numpy()
    iou = float(geometry.mask_iou(geometry.rasterize_reference(polygon, 100, 100), mask))
    assert iou == pytest.approx(spec_vectors["upper_bound_100px"]["iou"][key]["36"], abs=0.01)


def test_reference_raster_reproduces_the_originals_circle_area():
    polygon = geometry.rays_to_polygon([50.0, 50.0], np.full(36, 20.0)).numpy()
    # spec TV6: 1295 px; float32 cos/sin put a vertex at 39.999996 instead of 40, which truncates lower
    assert abs(int(geometry.rasterize_reference(polygon, 100, 100).sum()) - 1295) <= 2
    ours = int(geometry.rasterize(polygon, 100, 100).numpy().sum())
    polygon_area = abs(float(geometry.polygon_area(polygon)))  # 36-gon inscribed in r = 20: 1250.7
    assert abs(ours - polygon_area) < abs(1295 - polygon_area)
    assert abs(ours - polygon_area) < 0.02 * polygon_area


# ------------------------------------------------------------------ ray index conventions


def test_ray_index_maps():
    assert HEAD[0] == 9 and HEAD[9] == 0 and HEAD[27] == 18  # ours right <- head right; up <- up
    for convention in ("head", "old", "hflip", "vflip"):
        perm = geometry.ray_index_map(36, convention)
        assert sorted(perm) == list(range(36))
        np.testing.assert_array_equal(perm[perm], np.arange(36))  # involution
    np.testing.assert_array_equal(geometry.ray_index_map(36, "old"), (18 - np.arange(36)) % 36)
    with pytest.raises(ValueError, match="divisible by 4"):
        geometry.ray_index_map(18, "head")
    with pytest.raises(ValueError, match="unknown ray convention"):
        geometry.ray_index_map(36, "sideways")


def test_old_convention_differs_from_head_by_nine_rays(spec_vectors):
    # Spec TV5: old-convention rays ~ head rays rolled by 9; in our order both land on the same angles.
    head = np.array(spec_vectors["rays_from_mass_centre"]["wide_rect"]["rays_head_order"], np.float32)
    old = np.array(
        [39.0, 39.6232, 28.7924, 19.7231, 15.6205, 12.8062, 11.6619, 10.7703, 10.198, 10.0, 10.198, 10.7703,
         11.6619, 13.4536, 15.6205, 20.5913, 30.6757, 40.6079, 40.0, 40.6079, 27.5136, 18.3576, 14.2127,
         12.0416, 10.2956, 9.4868, 9.2195, 9.0, 9.2195, 9.4868, 10.2956, 12.0416, 14.2127, 17.4929, 25.632,
         39.6232], np.float32)
    ours_from_head = geometry.to_paper_order(head, "head").numpy()
    ours_from_old = geometry.to_paper_order(old, "old").numpy()
    assert np.abs(ours_from_head - ours_from_old).max() < 1.9  # spec: max diff 1.8816 from binning
    assert np.abs(ours_from_head - geometry.to_paper_order(old, "head").numpy()).max() > 20


# ------------------------------------------------------------------ exact ray casting: properties

coordinate = st.floats(-500, 500, allow_nan=False, allow_infinity=False)


@PROPERTY_SETTINGS
@given(
    x0=coordinate, y0=coordinate, w=st.floats(2, 300), h=st.floats(2, 300),
    fx=st.floats(0.05, 0.95), fy=st.floats(0.05, 0.95), n=st.sampled_from([8, 18, 36, 72]),
)
def test_exact_rays_in_a_rectangle_are_closed_form(x0, y0, w, h, fx, fy, n):
    rect = np.array([[x0, y0], [x0 + w, y0], [x0 + w, y0 + h], [x0, y0 + h]], np.float32)
    ox, oy = x0 + fx * w, y0 + fy * h
    rays = geometry.ray_distances(rect, [[ox, oy]], n).numpy()[0]
    theta = 2 * np.pi * np.arange(n) / n
    c, s = np.cos(theta), np.sin(theta)
    with np.errstate(divide="ignore"):
        tx = np.where(np.abs(c) > 1e-9, np.where(c > 0, x0 + w - ox, x0 - ox) / c, np.inf)
        ty = np.where(np.abs(s) > 1e-9, np.where(s > 0, y0 + h - oy, y0 - oy) / s, np.inf)
    np.testing.assert_allclose(rays, np.minimum(tx, ty), rtol=1e-4, atol=2e-3)


@PROPERTY_SETTINGS
@given(
    cx=coordinate, cy=coordinate, r=st.floats(5, 400),
    fx=st.floats(-0.9, 0.9), fy=st.floats(-0.9, 0.9), n=st.sampled_from([18, 36, 72]),
)
def test_exact_rays_in_a_circle_are_closed_form(cx, cy, r, fx, fy, n):
    vertices = 720
    phi = 2 * np.pi * np.arange(vertices) / vertices
    circle = np.stack([cx + r * np.cos(phi), cy + r * np.sin(phi)], -1).astype(np.float32)
    dx, dy = fx * r / math.sqrt(2), fy * r / math.sqrt(2)
    rays = geometry.ray_distances(circle, [[cx + dx, cy + dy]], n).numpy()[0]
    theta = 2 * np.pi * np.arange(n) / n
    along = dx * np.cos(theta) + dy * np.sin(theta)
    expected = -along + np.sqrt(along**2 - (dx * dx + dy * dy) + r * r)
    chord_gap = r * (1 - math.cos(math.pi / vertices))  # the 720-gon lies this far inside the circle
    assert np.all(rays <= expected + 1e-3 * r) and np.all(rays >= expected - 2 * chord_gap - 1e-3 * r)


def _star_polygon(centre, radii):
    angles = 2 * np.pi * np.arange(len(radii)) / len(radii)
    return np.stack([centre[0] + radii * np.cos(angles), centre[1] + radii * np.sin(angles)], -1).astype(np.float32)


@PROPERTY_SETTINGS
@given(radii=st.lists(st.floats(25, 80), min_size=5, max_size=24))
def test_star_shaped_polygon_survives_its_own_360_rays(radii):
    polygon = _star_polygon((100.0, 100.0), np.array(radii))
    rays = geometry.ray_distances(polygon, [[100.0, 100.0]], 360)
    decoded = geometry.rays_to_polygon([[100.0, 100.0]], rays)[0]
    iou = geometry.mask_iou(geometry.rasterize(decoded, 200, 200), geometry.rasterize(polygon, 200, 200))
    assert float(iou) >= 0.98


@PROPERTY_SETTINGS
@given(
    radii=st.lists(st.floats(10, 60), min_size=3, max_size=16),
    shift=st.tuples(st.floats(-300, 300), st.floats(-300, 300)),
    scale=st.floats(0.25, 8),
    offset=st.tuples(st.floats(-5, 5), st.floats(-5, 5)),
)
def test_exact_rays_are_translation_and_scale_equivariant(radii, shift, scale, offset):
    polygon = _star_polygon((0.0, 0.0), np.array(radii))
    origin = np.array([offset], np.float32)
    rays = geometry.ray_distances(polygon, origin, 36).numpy()
    moved = geometry.ray_distances(polygon + np.float32(shift), origin + np.float32(shift), 36).numpy()
    scaled = geometry.ray_distances(polygon * np.float32(scale), origin * np.float32(scale), 36).numpy()
    np.testing.assert_allclose(moved, rays, rtol=1e-3, atol=5e-3)
    np.testing.assert_allclose(scaled, rays * scale, rtol=1e-3, atol=5e-3 * scale)


@PROPERTY_SETTINGS
@given(
    points=st.lists(st.tuples(coordinate, coordinate), min_size=3, max_size=30),
    origins=st.lists(st.tuples(coordinate, coordinate), min_size=1, max_size=5),
)
def test_rays_are_never_negative_or_nan(points, origins):
    polygon = np.array(points, np.float32)
    if abs(float(geometry.polygon_area(polygon))) < 1e-6:
        return  # degenerate polygons are rejected (see test_bad_polygons_raise)
    rays = geometry.ray_distances(polygon, np.array(origins, np.float32), 36).numpy()
    assert np.all(np.isfinite(rays)) and np.all(rays >= geometry.MISSING_RAY)


@PROPERTY_SETTINGS
@given(radii=st.lists(st.floats(10, 60), min_size=3, max_size=16), ox=st.floats(-8, 8), oy=st.floats(-8, 8))
def test_mirrored_shape_has_mirrored_rays(radii, ox, oy):
    polygon = _star_polygon((0.0, 0.0), np.array(radii))
    origin = np.array([[ox, oy]], np.float32)
    rays = geometry.ray_distances(polygon, origin, 36).numpy()
    mirror = np.float32([-1, 1])
    mirrored = geometry.ray_distances(polygon * mirror, origin * mirror, 36).numpy()
    np.testing.assert_allclose(mirrored, rays[:, geometry.ray_index_map(36, "hflip")], rtol=1e-4, atol=1e-3)


def test_origin_outside_gives_missing_rays_and_farthest_crossing():
    square = np.array([[0, 0], [10, 0], [10, 10], [0, 10]], np.float32)
    rays = geometry.ray_distances(square, [[-5.0, 5.0], [5.0, 5.0]], 4).numpy()
    np.testing.assert_allclose(rays[0], [15.0, 1e-6, 1e-6, 1e-6], atol=1e-5)  # right: crosses at 5 and 15
    np.testing.assert_allclose(rays[1], [5, 5, 5, 5], atol=1e-5)


def test_per_origin_polygons_and_padding():
    square = np.array([[0, 0], [10, 0], [10, 10], [0, 10]], np.float32)
    padded = np.concatenate([square, np.repeat(square[-1:], 4, 0)])
    big = np.concatenate([square * 2, np.repeat(square[-1:] * 2, 4, 0)])
    rays = geometry.ray_distances(np.stack([padded, big]), [[5.0, 5.0], [10.0, 10.0]], 4).numpy()
    np.testing.assert_allclose(rays, [[5, 5, 5, 5], [10, 10, 10, 10]], atol=1e-5)


def test_exact_rays_compile_with_xla():
    polygon = tf.constant(_star_polygon((50.0, 50.0), np.linspace(20, 40, 12)))
    origins = tf.constant([[50.0, 50.0], [55.0, 45.0]])
    eager = geometry.ray_distances(polygon, origins, 36)
    compiled = tf.function(lambda p, o: geometry.ray_distances(p, o, 36), jit_compile=True)(polygon, origins)
    np.testing.assert_allclose(compiled, eager, rtol=1e-5)


# ------------------------------------------------------------------ rasterisation and masks


@pytest.mark.parametrize("name", ["square", "circle", "ellipse", "L", "U", "wide_rect"])
def test_a_mask_contour_rasterises_back_to_the_mask(name):
    mask = spec_mask(name).astype(bool)
    filled = geometry.rasterize(geometry.largest_contour(mask), 100, 100).numpy()
    np.testing.assert_array_equal(filled, mask)


def _filled(mask):
    """The mask with its holes filled: every pixel not 4-connected to the outside through background."""
    outside = np.pad(~np.asarray(mask, bool), 1, constant_values=True).astype(np.uint8)
    flood = np.zeros((outside.shape[0] + 2, outside.shape[1] + 2), np.uint8)
    cv2.floodFill(outside, flood, (0, 0), 2, flags=4)
    return (outside != 2)[1:-1, 1:-1]


@st.composite
def masks_with_holes_and_parts(draw):
    """Random pixel masks (noise: single pixels, diagonal contacts, pinholes) or rectangles with
    rectangular holes and islands inside the holes."""
    height, width = draw(st.integers(1, 24)), draw(st.integers(1, 24))
    if draw(st.booleans()):
        return draw(hnp.arrays(np.bool_, (height, width)))
    mask = np.zeros((height, width), bool)
    for value in draw(st.lists(st.booleans(), min_size=1, max_size=6)):
        y0, x0 = draw(st.integers(0, height - 1)), draw(st.integers(0, width - 1))
        y1, x1 = draw(st.integers(y0 + 1, height)), draw(st.integers(x0 + 1, width))
        mask[y0:y1, x0:x1] = value
    return mask


def _fills(polygons, height, width):
    """rasterize of each polygon [V_i, 2] (padded by repeating the last vertex, one call): bool [K, H, W]."""
    longest = max(len(p) for p in polygons)
    padded = np.stack([np.concatenate([p, np.repeat(p[-1:], longest - len(p), axis=0)]) for p in polygons])
    return geometry.rasterize(padded, height, width).numpy()


def _area(polygon):
    x, y = polygon[:, 0].astype(np.float64), polygon[:, 1].astype(np.float64)
    return abs(float(np.sum(x * np.roll(y, -1) - np.roll(x, -1) * y))) / 2


@settings(max_examples=100, deadline=None)
@given(mask=masks_with_holes_and_parts())
def test_pixel_edge_outlines_rasterise_back_to_the_mask(mask):
    height, width = mask.shape
    parts, holes = geometry.mask_outlines(mask)
    # Outlines and holes together are the mask, exactly; each part alone is its pixels with holes filled.
    np.testing.assert_array_equal(geometry.rasterize_outlines(parts + holes, height, width), mask)
    if not mask.any():
        assert parts == holes == []
        return
    np.testing.assert_array_equal(_fills(parts, height, width).any(axis=0), _filled(mask))
    # On the pixels' edges, corners only, and enclosing the pixel count (parts minus holes).
    for outline in parts + holes:
        assert np.all(outline * 2 % 2 == 1)
        step = np.roll(outline, -1, axis=0) - outline
        assert np.all((step[:, 0] == 0) != (step[:, 1] == 0))
        assert np.all(step[:, 0] * np.roll(step, 1, axis=0)[:, 1] - step[:, 1] * np.roll(step, 1, axis=0)[:, 0] != 0)
    assert sum(map(_area, parts)) - sum(map(_area, holes)) == mask.sum()
    areas = [_area(p) for p in parts]
    assert areas == sorted(areas, reverse=True)


@settings(max_examples=60, deadline=None)
@given(mask=masks_with_holes_and_parts())
def test_rle_annotations_become_pixel_edge_outlines(mask):
    # The conversion's RLE path: parts whose fill is the mask with its holes filled (COCO polygons
    # cannot hold holes), the largest first, its mass centre the mean of its pixels' centres.
    # A contour through the boundary pixels' centres loses one-pixel parts and lines and cuts corners.
    height, width = mask.shape
    if not mask.any():
        return
    rle = coco_mask.encode(np.asfortranarray(mask.astype(np.uint8)))
    parts = geometry.coco_segmentation_to_polygons(rle, height, width)
    fills = _fills(parts, height, width)
    np.testing.assert_array_equal(fills.any(axis=0), _filled(mask))
    rows, cols = np.nonzero(fills[0])
    np.testing.assert_allclose(geometry.mass_center(parts[0]).numpy(), [cols.mean(), rows.mean()], atol=1e-3)


def test_outlines_of_diagonal_contacts_holes_and_islands():
    mask = np.array([[1, 0, 0, 0, 0, 0, 0, 0],
                     [0, 1, 0, 1, 1, 1, 1, 1],
                     [0, 0, 0, 1, 0, 1, 0, 1],
                     [0, 0, 0, 1, 1, 0, 1, 1],
                     [0, 0, 0, 1, 1, 1, 1, 1]], bool)
    parts, holes = geometry.mask_outlines(mask)
    # The ring and the diagonal pair; in the ring, the background pixels (x, y) = (4, 2) and (6, 2)
    # touch (5, 3) only at corners: three one-pixel holes.
    assert len(parts) == 2 and len(holes) == 3
    assert sorted(map(tuple, parts[1].tolist())) == sorted(
        [(-0.5, -0.5), (0.5, -0.5), (0.5, 0.5), (1.5, 0.5), (1.5, 1.5), (0.5, 1.5), (0.5, 0.5), (-0.5, 0.5)])
    assert [_area(h) for h in holes] == [1.0, 1.0, 1.0] and _area(parts[0]) == 20.0
    np.testing.assert_array_equal(geometry.rasterize_outlines(parts + holes, *mask.shape), mask)
    # The pixel-centre contour of the diagonal pair is a zero-area segment: its two pixels vanish.
    contour = geometry.outer_contours(mask)[1]
    assert abs(float(geometry.polygon_area(contour))) == 0.0
    assert geometry.mask_outlines(np.zeros((3, 4), bool)) == ([], [])


@PROPERTY_SETTINGS
@given(x0=st.integers(0, 40), y0=st.integers(0, 40), w=st.integers(1, 50), h=st.integers(1, 50),
       dx=st.floats(0.01, 0.49))
def test_rectangle_raster_counts_pixel_centres(x0, y0, w, h, dx):
    rect = np.array([[x0, y0], [x0 + w, y0], [x0 + w, y0 + h], [x0, y0 + h]], np.float32)
    assert int(geometry.rasterize(rect, 100, 100).numpy().sum()) == (w + 1) * (h + 1)
    shrunk = rect + np.float32([[dx, dx], [-dx, dx], [-dx, -dx], [dx, -dx]])
    assert int(geometry.rasterize(shrunk, 100, 100).numpy().sum()) == max(w - 1, 0) * max(h - 1, 0)


def test_rasterize_batches_and_clips_to_the_canvas():
    square = np.array([[-5, -5], [4, -5], [4, 4], [-5, 4]], np.float32)
    batch = np.stack([np.stack([square, square + 3]), np.stack([square + 100, square + 6])])
    masks = geometry.rasterize(batch, 8, 9).numpy()
    assert masks.shape == (2, 2, 8, 9)
    assert masks[0, 0].sum() == 25 and masks[0, 1].sum() == 8 * 8 and masks[1, 0].sum() == 0


def test_mask_iou():
    a = np.zeros((2, 4, 4), bool)
    b = np.zeros((2, 4, 4), bool)
    a[0, :2] = True
    b[0, 1:3] = True
    np.testing.assert_allclose(geometry.mask_iou(a, b), [4 / 12, 0.0])


def test_largest_contour_picks_the_largest_part_and_rejects_empty_masks():
    mask = np.zeros((50, 50), np.uint8)
    mask[5:10, 5:10] = 1
    mask[20:40, 20:45] = 1
    contour = geometry.largest_contour(mask)
    assert contour.min(axis=0).tolist() == [20, 20] and contour.max(axis=0).tolist() == [44, 39]
    with pytest.raises(geometry.GeometryError, match="no pixel"):
        geometry.largest_contour(np.zeros((5, 5), np.uint8))


# ------------------------------------------------------------------ COCO segmentations and bad input


def test_coco_polygons_and_rle_to_parts_and_masks():
    segmentation = [[10, 10, 30, 10, 30, 20, 10, 20], [40, 40, 45, 40, 45, 48]]
    parts = geometry.coco_segmentation_to_polygons(segmentation, 60, 60)
    assert [p.shape for p in parts] == [(4, 2), (3, 2)]
    mask = geometry.coco_segmentation_to_mask(segmentation, 60, 60)
    assert mask.shape == (60, 60) and mask[15, 20] == 1 and mask[0, 0] == 0
    rle = coco_mask.encode(np.asfortranarray(mask))
    rle_parts = geometry.coco_segmentation_to_polygons(rle, 60, 60)
    # The RLE's outline runs along its pixels' edges: the rectangle itself, in our frame (COCO - 0.5).
    assert len(rle_parts) == 2 and sorted(map(tuple, rle_parts[0].tolist())) == sorted(
        map(tuple, (parts[0] - 0.5).tolist()))
    np.testing.assert_array_equal(geometry.coco_segmentation_to_mask(rle, 60, 60), mask)
    uncompressed = {"size": [60, 60], "counts": [60 * 20 + 5, 10, 60 * 40 - 15]}
    assert geometry.coco_segmentation_to_mask(uncompressed, 60, 60).sum() == 10


def test_coco_masks_rasterise_the_coordinates_as_given():
    # pycocotools decides boundary pixels on the coordinates themselves: rounded to float32 first,
    # this triangle gained or lost 4 pixels against COCO's own annToMask.
    flat = [7.7, 9.34, 23.01, 9.85, 15.59, 29.46]
    want = coco_mask.decode(coco_mask.merge(coco_mask.frPyObjects([flat], 32, 32)))
    np.testing.assert_array_equal(geometry.coco_segmentation_to_mask([flat], 32, 32), want)


@pytest.mark.parametrize(
    "polygon, reason",
    [
        ([[0, 0], [5, 5]], "fewer_than_3_points"),
        ([[0, 0], [5, 5], [10, 10]], "zero_area"),
        ([[0, 0], [5, np.nan], [10, 0]], "non_finite"),
        ([[0, 0], [5, np.inf], [10, 0]], "non_finite"),
    ],
)
def test_bad_polygons_raise(polygon, reason):
    polygon = np.array(polygon, np.float32)
    with pytest.raises(ValueError) as error:
        geometry.ray_distances(polygon, [[1.0, 1.0]], 36)
    assert error.value.reason == reason
    if reason != "zero_area":
        with pytest.raises(ValueError):
            geometry.mass_center(polygon)


@pytest.mark.parametrize(
    "segmentation, reason",
    [
        ([[0, 0, 10, 0, 10]], "bad_segmentation"),
        ([[0, 0, 10, 10]], "fewer_than_3_points"),
        ([[0, 0, 10, 0, float("nan"), 10]], "non_finite"),
        ([[0, 0, 10, 10, 20, 20]], "zero_area"),
        ([], "bad_segmentation"),
        ("polygon", "bad_segmentation"),
        ({"size": [30, 30], "counts": "PP0"}, "rle_size_mismatch"),
        ({"counts": "PP0"}, "bad_segmentation"),
    ],
)
def test_bad_coco_segmentations_raise_with_a_reason(segmentation, reason):
    with pytest.raises(ValueError) as error:
        geometry.coco_segmentation_to_polygons(segmentation, 20, 20)
    assert error.value.reason == reason
    with pytest.raises(ValueError):
        geometry.coco_segmentation_to_mask(segmentation, 20, 20)


def test_reference_method_needs_a_divisor_of_360():
    square = np.array([[0, 0], [10, 0], [10, 10], [0, 10]], np.float32)
    with pytest.raises(ValueError, match="360"):
        geometry.ray_distances(square, [[5.0, 5.0]], 7, method="reference")
    with pytest.raises(ValueError, match="unknown ray method"):
        geometry.ray_distances(square, [[5.0, 5.0]], 36, method="fast")


@settings(max_examples=15, deadline=None)
@given(
    x1=st.floats(0, 50), y1=st.floats(0, 50), radius=st.floats(0.3, 0.95), wobble=st.floats(0.0, 0.5),
    scale=st.sampled_from([1, 2, 4]),
)
def test_box_masks_equal_the_rasterised_polygon_resampled_at_cell_centres(x1, y1, radius, wobble, scale):
    """Property: when the box is an integer grid of mask cells (cell size 1/scale px), the box mask
    is `rasterize` of the polygon on that grid, cut to the box."""
    m = 16
    side = m / scale
    box = np.array([x1, y1, x1 + side, y1 + side], np.float32)
    centre = box[:2] + side / 2
    angles = np.arange(36) * 2 * np.pi / 36
    rays = (radius * side / 2 * (1 + wobble * np.sin(3 * angles))).astype(np.float32)  # may leave the box
    polygon = geometry.rays_to_polygon(centre[None], rays[None]).numpy()[0]
    got = geometry.box_masks(polygon, box, m).numpy()
    fine = (polygon - box[:2]) * scale - 0.5  # the same grid, in cell units with centres at integers
    np.testing.assert_array_equal(got, geometry.rasterize(fine, m, m).numpy())
    assert got.dtype == bool and got[m // 2, m // 2]  # the centre cell is inside


def test_box_masks_fill_a_box_shaped_polygon_and_leave_degenerate_boxes_empty():
    square = np.array([[10, 20], [50, 20], [50, 60], [10, 60]], np.float32)
    masks = geometry.box_masks(np.stack([square, square]),
                               np.array([[10, 20, 50, 60], [10, 20, 10, 60]], np.float32), 8)
    assert masks.shape == (2, 8, 8)
    assert masks[0].numpy().all() and not masks[1].numpy().any()
    left_half = np.array([[10, 20], [30, 20], [30, 60], [10, 60]], np.float32)
    half = geometry.box_masks(left_half, np.array([10, 20, 50, 60], np.float32), 8).numpy()
    assert half[:, :4].all() and not half[:, 4:].any()
