"""Detection tags of visualize.draw_detections: placement (place_labels), font size and drawing."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from polarmask_tf import visualize

NAMES = {1: "person", 2: "bottle", 3: "cup", 4: "chair", 5: "dining table"}


def _overlap_areas(rects):
    """Pairwise intersection areas [n, n] of rectangles [x1, y1, x2, y2) (diagonal zeroed)."""
    rects = np.asarray(rects, np.int64)
    width = np.minimum(rects[:, None, 2], rects[None, :, 2]) - np.maximum(rects[:, None, 0], rects[None, :, 0])
    height = np.minimum(rects[:, None, 3], rects[None, :, 3]) - np.maximum(rects[:, None, 1], rects[None, :, 1])
    area = np.maximum(width, 0) * np.maximum(height, 0)
    np.fill_diagonal(area, 0)
    return area


def _ellipse(box, n=36):
    x1, y1, x2, y2 = box
    t = np.arange(n) * 2 * np.pi / n
    return np.stack([(x1 + x2) / 2 + (x2 - x1) / 2 * np.cos(t), (y1 + y2) / 2 + (y2 - y1) / 2 * np.sin(t)], 1)


def _crowd(seed=0, count=30):
    """`count` detections with heavily overlapping boxes in x 100..250, y 80..230 (for a 320 x 400
    image); the first 6 share one box (six classes on one object)."""
    rng = np.random.default_rng(seed)
    boxes = np.float32([[110, 100, 290, 180]] * 6
                       + [[x, y, x + w, y + h] for x, y, w, h in rng.uniform([100, 80, 30, 30], [160, 140, 90, 90],
                                                                             (count - 6, 4))])
    return {"boxes": boxes, "scores": np.float32(rng.uniform(0.3, 1.0, count)),
            "classes": np.int32(np.r_[1:7, rng.integers(1, 6, count - 6)]),
            "polygons": np.float32([_ellipse(box) for box in boxes])}


def test_crowded_labels_do_not_overlap_and_stay_inside():
    crowd = _crowd()
    sizes = np.tile([[84, 20]], (30, 1))
    sizes[6::3, 0] = 120
    positions = visualize.place_labels(crowd["boxes"], sizes, (320, 400, 3))
    assert positions.shape == (30, 2) and positions.dtype == np.int32
    rects = np.concatenate([positions, positions + sizes], 1)
    assert (rects[:, :2] >= 0).all() and (rects[:, 2] <= 400).all() and (rects[:, 3] <= 320).all()
    assert _overlap_areas(rects).max() == 0
    # the first label goes above the top-left corner of its box, the labels of the same box next to it
    np.testing.assert_array_equal(positions[0], [110, 80])
    np.testing.assert_array_equal(positions[1], [110, 100])  # inside, below the corner
    np.testing.assert_array_equal(positions[2], [290 - 84, 80])  # above the top-right corner
    np.testing.assert_array_equal(positions[3], [110, 180])  # below the bottom-left corner
    # the crowd's labels stay near it: every label touches or is within 3 label heights of its box
    boxes = np.round(crowd["boxes"]).astype(int)
    gap_x = np.maximum(np.maximum(boxes[:, 0] - rects[:, 2], rects[:, 0] - boxes[:, 2]), 0)
    gap_y = np.maximum(np.maximum(boxes[:, 1] - rects[:, 3], rects[:, 1] - boxes[:, 3]), 0)
    assert np.hypot(gap_x, gap_y).max() <= 60


def test_labels_fall_back_to_least_overlap_and_fit_small_images():
    # two 60 x 40 labels cannot both fit in a 50 x 60 image: both inside (at x = 0), overlap least
    positions = visualize.place_labels([[10, 10, 40, 40], [10, 10, 40, 40]], [[60, 40], [60, 40]], (50, 60))
    np.testing.assert_array_equal(positions[:, 0], [0, 0])
    assert (positions[:, 1] >= 0).all() and (positions[:, 1] <= 10).all()
    assert abs(positions[0, 1] - positions[1, 1]) == 10  # as far apart as the image allows
    # a box at the top border: the label cannot go above it, so it goes inside below the corner
    np.testing.assert_array_equal(visualize.place_labels([[30.4, 0.0, 90.0, 50.0]], [[40, 12]], (100, 100)),
                                  [[30, 0]])
    assert visualize.place_labels(np.zeros((0, 4)), np.zeros((0, 2)), (10, 10)).shape == (0, 2)
    with pytest.raises(ValueError):
        visualize.place_labels([[0, 0, 1, 1]], np.zeros((0, 2)), (10, 10))


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), height=st.integers(40, 700), width=st.integers(40, 700),
       count=st.integers(1, 40), spread=st.floats(0.05, 1.5))
def test_random_labels_stay_inside_and_apart_while_there_is_room(seed, height, width, count, spread):
    rng = np.random.default_rng(seed)
    centres = rng.uniform(-0.2, 1.2, (count, 2)) * [width, height] * spread
    halves = rng.uniform(0, 0.3, (count, 2)) * [width, height]
    boxes = np.concatenate([centres - halves, centres + halves], 1)
    sizes = np.stack([rng.integers(1, max(2, width // 8), count), rng.integers(1, max(2, height // 8), count)], 1)
    positions = visualize.place_labels(boxes, sizes, (height, width))
    rects = np.concatenate([positions, positions + sizes], 1)
    assert (rects[:, :2] >= 0).all() and (rects[:, 2] <= width).all() and (rects[:, 3] <= height).all()
    overlaps = _overlap_areas(rects)
    for i in range(count):
        # a top-left at which label i meets label j lies in a (w_i + w_j - 1) x (h_i + h_j - 1) area;
        # when these areas cover less than the allowed top-lefts, a free position exists
        blocked = np.sum((sizes[:i, 0] + sizes[i, 0] - 1) * (sizes[:i, 1] + sizes[i, 1] - 1))
        allowed = (width - sizes[i, 0] + 1) * (height - sizes[i, 1] + 1)
        if blocked < allowed:
            assert overlaps[i, :i].max(initial=0) == 0, (i, blocked, allowed)
    total = np.prod(sizes, axis=1).sum()
    if total * 16 < width * height and sizes.max() * 4 < min(width, height):
        assert overlaps.max() == 0


@pytest.mark.parametrize("shape, text_height", [((256, 256), 12), ((480, 640), 12.8), ((960, 1280), 25.6)])
def test_tag_font_sizes_text_from_the_image(shape, text_height):
    scale, thickness = visualize.tag_font(shape)
    import cv2

    measured = cv2.getTextSize("0", cv2.FONT_HERSHEY_SIMPLEX, scale, 1)[0][1]
    assert abs(measured - text_height) <= 1.0
    assert thickness == (1 if max(shape) < 1000 else 2)
    assert scale > max(0.35, max(shape) / 1500)  # larger than the old rule


def test_draw_detections_keeps_every_tag_of_a_crowd_visible():
    image = np.full((320, 400, 3), 128, np.uint8)
    crowd = _crowd(seed=3)
    drawn = visualize.draw_detections(image, crowd, NAMES, score_threshold=0.0)
    assert drawn.shape == image.shape and drawn.dtype == np.uint8
    tags = visualize.detection_tags(image.shape, crowd, NAMES, score_threshold=0.0)
    assert len(tags["index"]) == 30 and sorted(tags["index"]) == list(range(30))
    assert np.all(np.diff(crowd["scores"][tags["index"]]) <= 0)  # placed highest score first
    rects = tags["rect"]
    assert (rects[:, :2] >= 0).all() and (rects[:, 2] <= 400).all() and (rects[:, 3] <= 320).all()
    assert _overlap_areas(rects).max() == 0
    assert len(set(rects[:, 3] - rects[:, 1])) == 1  # one tag height
    for k, (x1, y1, x2, y2) in enumerate(rects):
        patch = drawn[y1:y2, x1:x2]
        assert (patch != image[y1:y2, x1:x2]).any(axis=-1).all(), tags["text"][k]
        paint = visualize.colour(int(crowd["classes"][tags["index"][k]]))
        # mostly the tag's own colour (not covered by another tag), and some ink
        assert (patch == paint).all(axis=-1).mean() > 0.6, tags["text"][k]
        assert (patch != paint).any(axis=-1).mean() > 0.05, tags["text"][k]
    assert tags["text"][0] == f"{NAMES[int(crowd['classes'][tags['index'][0]])]} {crowd['scores'].max():.2f}"
