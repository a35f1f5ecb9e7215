"""The original PolarMask's target generation (polarmask_tf.data.reference_targets) against the spec:
section 8 TV8 (full assignment on a 256x256 image) in full, plus TV1-TV4 pieces, the empty-mask
decision and a concave shape whose positives lie outside it."""

import subprocess
import sys

import numpy as np
import pytest

from polarmask_tf.data import reference_targets as rt

from conftest import spec_mask

HEAD_TO_OURS = {0: 9, 9: 0, 18: 27, 27: 18}
"""The spec lists the original's (HEAD) rays k' = 0, 9, 18, 27; our k = (9 - k') mod 36."""


def tv8_masks():
    """Spec section 8 TV8: the four gts of the 256x256 padded image, uint8 [4, 256, 256]."""
    yy, xx = np.mgrid[:256, :256]
    masks = np.zeros((4, 256, 256), np.uint8)
    masks[0][(xx - 60) ** 2 + (yy - 70) ** 2 <= 900] = 1  # g1: circle centre (60, 70), r 30
    masks[1][40:230, 100:240] = 1
    masks[2][140:200, 120:180] = 1
    masks[3][55:86, 45:96] = 1
    return masks


@pytest.fixture(scope="module")
def tv8():
    return rt.original_targets(tv8_masks(), [1, 2, 3, 4], (256, 256))


def _on_canvas(mask, size=128, shift=0):
    """`mask` pasted at (shift, shift) on a zero canvas [size, size] (a multiple of the strides)."""
    canvas = np.zeros((size, size), np.uint8)
    canvas[shift : shift + mask.shape[0], shift : shift + mask.shape[1]] = mask
    return canvas


def _index_of(out, x, y, level):
    hits = np.flatnonzero((out["points"][:, 0] == x) & (out["points"][:, 1] == y) & (out["levels"] == level))
    assert hits.size == 1, (x, y, level)
    return int(hits[0])


def test_tv8_gt_boxes_are_the_spec_boxes():
    boxes = [rt.mask_box(m).tolist() for m in tv8_masks()]
    assert boxes == [[30, 40, 90, 100], [100, 40, 239, 229], [120, 140, 179, 199], [45, 55, 95, 85]]


def test_tv8_points_and_mass_centres(tv8, spec_vectors):
    spec = spec_vectors["assignment_256"]
    assert spec["image"] == [256, 256]
    counts = np.bincount(tv8["levels"], minlength=5).tolist()
    assert counts == spec["points_per_level"] == [1024, 256, 64, 16, 4]
    assert tv8["points"].dtype == np.float32 and tv8["points"].shape == (1364, 2)
    # Level 0 (P3) starts at (4, 4), row-major with x fastest; P7 is 2x2 at 64 + 128 * j.
    np.testing.assert_array_equal(tv8["points"][:3], [[4, 4], [12, 4], [20, 4]])
    np.testing.assert_array_equal(tv8["points"][-4:], [[64, 64], [192, 64], [64, 192], [192, 192]])
    assert tv8["mass_centres"].tolist() == spec["mass_centres_int"] == [[59, 69], [169, 134], [149, 169], [70, 69]]
    assert tv8["valid_gts"].tolist() == [True] * 4


def test_tv8_exactly_the_spec_positives(tv8, spec_vectors):
    spec = spec_vectors["assignment_256"]
    positives = np.flatnonzero(tv8["labels"])
    assert positives.size == spec["num_positives"] == 33
    got = {
        (int(tv8["points"][p, 0]), int(tv8["points"][p, 1]), int(tv8["levels"][p]) + 3): int(tv8["labels"][p])
        for p in positives
    }
    want = {(e["point"][0], e["point"][1], e["level"]): e["label"] for e in spec["positives"]}
    assert got == want
    # The spec's prose: g1 keeps only x = 52 on P3 (the rest of its window goes to the smaller g4);
    # g2 is positive on P4 and P5, never on P3.
    assert sorted(k[:2] for k, v in want.items() if v == 1) == [(52, 60), (52, 68), (52, 76)]
    assert sorted({k[2] for k, v in want.items() if v == 2}) == [4, 5]


def test_tv8_box_centerness_and_ray_targets(tv8, spec_vectors):
    for entry in spec_vectors["assignment_256"]["positives"]:
        p = _index_of(tv8, *entry["point"], entry["level"] - 3)
        assert tv8["labels"][p] == entry["label"]
        assert tv8["boxes"][p].tolist() == entry["box_ltrb"], entry
        assert tv8["centerness"][p] == pytest.approx(entry["centerness"], abs=1e-3), entry
        ours = [tv8["rays"][p, HEAD_TO_OURS[k]] for k in (0, 9, 18, 27)]
        np.testing.assert_allclose(ours, entry["rays_head_k0_9_18_27"], atol=1e-3, err_msg=str(entry))


def test_tv8_one_degree_bin_maximum(tv8):
    # (168,136) on P4: axis-aligned rays read the farthest vertex of their 1-degree bin, not 93/96/...
    p = _index_of(tv8, 168, 136, 1)
    np.testing.assert_allclose(tv8["rays"][p, [9, 0, 27, 18]], [93.005, 71.007, 96.005, 68.007], atol=1e-3)
    assert tv8["rays"][p, 9] > tv8["boxes"][p, 3]  # down ray longer than the box's bottom distance


def test_tv8_negatives_and_output_types(tv8):
    negative = tv8["labels"] == 0
    assert tv8["labels"].dtype == np.int32 and tv8["levels"].dtype == np.int32
    assert tv8["boxes"].dtype == tv8["rays"].dtype == tv8["centerness"].dtype == np.float32
    assert tv8["rays"].shape == (1364, 36)
    assert not tv8["rays"][negative].any() and not tv8["centerness"][negative].any()
    # Negatives carry the distances to gt 0 (the original's argmin over an all-INF row).
    p = _index_of(tv8, 4, 4, 0)
    assert tv8["boxes"][p].tolist() == [4 - 30, 4 - 40, 90 - 4, 100 - 4]
    assert np.all(tv8["rays"][~negative] > 0)


def test_head_to_paper_permutation():
    perm = rt.head_to_paper_permutation(36)
    for head, ours in HEAD_TO_OURS.items():
        assert perm[ours] == head
    np.testing.assert_array_equal(perm[perm], np.arange(36))  # involution
    np.testing.assert_array_equal(rt.head_to_paper_permutation(72)[[0, 18, 36, 54]], [18, 0, 54, 36])


@pytest.mark.parametrize("name", ["square", "circle", "L", "wide_rect", "U"])
def test_mass_centres_of_spec_shapes(spec_vectors, name):
    spec = spec_vectors["rays_from_mass_centre"][name]
    contour = rt.largest_contour(spec_mask(name))
    assert len(contour) == spec["contour_points"]
    assert list(rt.contour_mass_centre(contour)) == spec["mass_centre_int"]
    assert rt.mask_box(spec_mask(name)).tolist() == spec["box"]


def test_rays_from_a_positive_point_tv4(spec_vectors):
    # TV4: square m[20:60, 30:70], rays from (52, 44), which is a P3 positive of the square.
    spec = spec_vectors["rays_square_from_point_52_44"]
    out = rt.original_targets(_on_canvas(spec_mask("square"))[None], [7], (128, 128))
    p = _index_of(out, 52, 44, 0)
    assert out["labels"][p] == 7
    perm = rt.head_to_paper_permutation(36)
    np.testing.assert_allclose(out["rays"][p], np.asarray(spec["rays_head_order"])[perm], atol=1e-3)
    assert out["centerness"][p] == pytest.approx(spec["centerness"], abs=1e-5)


def test_l_shape_centre_outside(spec_vectors):
    # The spec's L shifted by (3, 3) so that its mass centre (41, 57) + 3 = (44, 60) is a P3 point:
    # that positive lies in the notch, outside the shape, and its rays are TV3's.
    mask = _on_canvas(spec_mask("L"), shift=3)
    out = rt.original_targets(mask[None], [5], (128, 128))
    assert out["mass_centres"].tolist() == [[44, 60]]
    positives = np.flatnonzero(out["labels"])
    assert positives.size == 9 and set(out["levels"][positives].tolist()) == {0}
    p = _index_of(out, 44, 60, 0)
    assert mask[60, 44] == 0
    spec = spec_vectors["rays_from_mass_centre"]["L"]
    perm = rt.head_to_paper_permutation(36)
    np.testing.assert_allclose(out["rays"][p], np.asarray(spec["rays_head_order"])[perm], atol=1e-3)
    missing = out["rays"][p] == rt.MISSING_RAY
    assert missing.sum() == 9  # head k' = 9..17 (left through up-left) -> our k = 0 and 28..35
    assert sorted(np.flatnonzero(missing).tolist()) == [0] + list(range(28, 36))
    assert out["centerness"][p] == pytest.approx(spec["centerness"], abs=2e-6)
    assert out["centerness"][p] < 1e-3
    # Every positive outside the mask has some missing ray and a tiny centerness.
    for q in positives:
        x, y = out["points"][q].astype(int)
        if mask[y, x] == 0:
            assert (out["rays"][q] == rt.MISSING_RAY).any() and out["centerness"][q] < 1e-3


def test_empty_mask_is_skipped():
    masks = tv8_masks()
    empty = np.zeros((1, 256, 256), np.uint8)
    with_empty = np.concatenate([empty, masks[:2], empty, masks[2:]])
    reference = rt.original_targets(masks, [1, 2, 3, 4], (256, 256))
    out = rt.original_targets(with_empty, [9, 1, 2, 9, 3, 4], (256, 256))
    assert out["valid_gts"].tolist() == [False, True, True, False, True, True]
    assert out["mass_centres"][[0, 3]].tolist() == [[-1, -1], [-1, -1]]
    np.testing.assert_array_equal(out["mass_centres"][out["valid_gts"]], reference["mass_centres"])
    for key in ("labels", "boxes", "rays", "centerness", "points", "levels"):
        np.testing.assert_array_equal(out[key], reference[key], err_msg=key)
    assert 9 not in out["labels"]


def test_no_gt_and_only_empty_masks():
    for masks, labels in ((np.zeros((0, 128, 128), np.uint8), []), (np.zeros((2, 128, 128), np.uint8), [1, 2])):
        out = rt.original_targets(masks, labels, (128, 128))
        assert out["labels"].shape == (256 + 64 + 16 + 4 + 1,) and not out["labels"].any()
        assert not out["rays"].any() and not out["boxes"].any() and not out["centerness"].any()
        assert out["mass_centres"].shape == (len(labels), 2)


def test_zero_area_contour_uses_the_vertex_mean_and_first_centre_at_x0_disables_the_image():
    # A one-pixel-wide line has contour area 0: the centre falls back to the vertex mean.
    line = np.zeros((128, 128), np.uint8)
    line[40, 10:31] = 1
    assert rt.contour_mass_centre(rt.largest_contour(line)) == (20, 40)
    # The original's "no gt" early exit: the first gt's centre at x = 0 leaves the image without positives.
    edge = np.zeros((128, 128), np.uint8)
    edge[10:60, 0] = 1
    other = _on_canvas(spec_mask("square"))
    assert rt.original_targets(other[None], [1], (128, 128))["labels"].any()
    out = rt.original_targets(np.stack([edge, other]), [1, 2], (128, 128))
    assert out["mass_centres"][0].tolist() == [0, 34]
    assert not out["labels"].any()


def test_bad_inputs():
    with pytest.raises(ValueError, match="padded shape"):
        rt.original_targets(np.zeros((1, 64, 64), np.uint8), [1], (128, 128))
    with pytest.raises(ValueError, match="labels"):
        rt.original_targets(np.zeros((1, 128, 128), np.uint8), [1, 2], (128, 128))


def test_module_does_not_import_tensorflow():
    code = "import sys, polarmask_tf.data.reference_targets; sys.exit('tensorflow' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
