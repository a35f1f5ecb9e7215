"""COCO reading: json validation, label map, image checks and re-encoding, instance rules."""

import io
import json

import cv2
import numpy as np
import pytest
import tensorflow as tf
from hypothesis import given, settings
from hypothesis import strategies as st
from pycocotools import mask as coco_mask

from polarmask_tf import geometry
from polarmask_tf.data import coco

H, W = 60, 80
LABELS = coco.LabelMap.from_coco_categories(
    [{"id": 90, "name": "toothbrush"}, {"id": 1, "name": "person"}, {"id": 17, "name": "cat"}]
)
SQUARE = [10.5, 10.5, 30.5, 10.5, 30.5, 30.5, 10.5, 30.5]  # COCO frame: pixel centres 10..30 in ours


def _annotation(annotation_id, segmentation, category_id=1, area=400.0, iscrowd=0):
    return {"id": annotation_id, "image_id": 1, "category_id": category_id, "segmentation": segmentation,
            "area": area, "iscrowd": iscrowd}


def _instances(*annotations, min_area=coco.DEFAULT_MIN_AREA):
    skips = coco.Skips()
    return coco.image_instances(list(annotations), H, W, LABELS, min_area, skips), skips


def _tf_rgb(encoded):
    return tf.io.decode_image(encoded, channels=3, expand_animations=False).numpy()


def _gradient(height=24, width=32):
    """A smooth RGB uint8 image [height, width, 3] (JPEG keeps it within a few levels)."""
    x, y = np.meshgrid(np.linspace(0, 255, width), np.linspace(0, 255, height))
    return np.dstack([x, y, np.full_like(x, 128)]).astype(np.uint8)


def _encode(array_bgr, extension):
    ok, encoded = cv2.imencode(extension, array_bgr)
    assert ok
    return encoded.tobytes()


# --------------------------------------------------------------------------------------------
# Instances json


@pytest.mark.parametrize(
    "content, message",
    [
        ("{not json", "is not valid JSON"),
        ("[1, 2]", "top level is a list"),
        ('{"images": [], "annotations": []}', "missing the list(s) 'categories'"),
        ('{"images": {}, "categories": []}', "'images', 'annotations'"),
        ('{"images": [{"id": 1}], "annotations": [], "categories": []}', "images[0] key 'file_name' is missing"),
        ('{"images": [], "annotations": [{"id": 1, "image_id": 1}], "categories": []}', "key 'category_id' is missing"),
        ('{"images": [], "annotations": [], "categories": [{"id": 1, "name": "a"}, {"id": 1, "name": "b"}]}',
         "repeated: [1]"),
        ('{"images": [{"id": 1, "file_name": "a.jpg", "height": "x"}], "annotations": [], "categories": []}',
         "height='x'"),
    ],
)
def test_a_json_that_is_not_coco_instances_is_an_error_naming_the_file(tmp_path, content, message):
    path = tmp_path / "broken.json"
    path.write_text(content)
    with pytest.raises(coco.InvalidAnnotationsError) as error:
        coco.load_coco(str(path))
    assert str(path) in str(error.value)
    assert message in str(error.value)


def test_load_coco_indexes_a_valid_file_quietly(tmp_path, capsys):
    path = tmp_path / "instances.json"
    data = {
        "images": [{"id": 3, "file_name": "a.jpg", "height": H, "width": W}],
        "annotations": [_annotation(7, [SQUARE]) | {"image_id": 3}],
        "categories": [{"id": 1, "name": "person"}],
    }
    path.write_text(json.dumps(data))
    dataset = coco.load_coco(str(path))
    assert [a["id"] for a in dataset.imgToAnns[3]] == [7]
    assert capsys.readouterr().out == ""


# --------------------------------------------------------------------------------------------
# Label map


def test_label_map_orders_sparse_category_ids_into_contiguous_labels():
    described = [(c.label, c.category_id, c.name) for c in LABELS.categories]
    assert described == [(1, 1, "person"), (2, 17, "cat"), (3, 90, "toothbrush")]
    assert LABELS.num_classes == 3
    assert (LABELS.label_of(1), LABELS.label_of(17), LABELS.label_of(90)) == (1, 2, 3)
    assert LABELS.label_of(2) is None and LABELS.label_of("1") is None and LABELS.label_of(True) is None


def test_label_map_json_round_trip(tmp_path):
    path = tmp_path / "labels.json"
    coco.write_label_map(LABELS, path)
    assert coco.read_label_map(path) == LABELS
    assert json.loads(path.read_text())["background_label"] == 0
    path.write_text('{"categories": [{"label": 2, "category_id": 1, "name": "a"}]}')
    with pytest.raises(ValueError, match="labels must be 1..C"):
        coco.read_label_map(path)



def test_model_label_map_prefers_the_given_file_then_the_one_beside_the_shards(tmp_path):
    from polarmask_tf import config as cfg

    config = cfg.load_config(None, [f"data.train_files={tmp_path}/train-*.tfrecord", "model.num_classes=3"])
    fallback = coco.model_label_map(config)
    assert [(c.label, c.category_id, c.name) for c in fallback.categories] == [(1, 1, "class 1"), (2, 2, "class 2"),
                                                                               (3, 3, "class 3")]
    assert coco.labels_beside_shards(config.data.train_files) == f"{tmp_path}/train-labels.json"
    assert coco.labels_beside_shards("records.tfrecord") is None
    coco.write_label_map(LABELS, tmp_path / "train-labels.json")
    assert coco.model_label_map(config) == LABELS
    with pytest.raises(ValueError, match="has 3 classes, the model 5"):
        coco.model_label_map(cfg.apply_overrides(config, ["model.num_classes=5"]), str(tmp_path / "train-labels.json"))
    with pytest.raises(ValueError, match="cannot read the label map"):
        coco.model_label_map(config, str(tmp_path / "missing.json"))

# --------------------------------------------------------------------------------------------
# Image bytes: what is kept, what is re-encoded, and what TensorFlow decodes from it


def test_rgb_and_grayscale_jpegs_are_kept_as_they_are():
    rgb = _gradient()
    for pixels, expected in [(rgb[..., ::-1], rgb), (rgb[..., 0], np.repeat(rgb[..., :1], 3, axis=-1))]:
        data = _encode(pixels, ".jpg")
        image = coco.prepare_image_bytes(data)
        assert ((image.encoded, image.format, image.height, image.width, image.converted_from)
                == (data, "jpeg", 24, 32, None))
        assert np.abs(_tf_rgb(image.encoded).astype(int) - expected).max() <= 12  # JPEG loss (chroma subsampling)


def test_png_gray_rgb_rgba_are_kept_and_tensorflow_drops_alpha():
    rgb = _gradient()
    for pixels, expected in [
        (rgb[..., 0], np.repeat(rgb[..., :1], 3, axis=-1)),
        (rgb[..., ::-1], rgb),
        (np.dstack([rgb[..., ::-1], np.full(rgb.shape[:2], 7, np.uint8)]), rgb),
    ]:
        data = _encode(pixels, ".png")
        image = coco.prepare_image_bytes(data)
        assert (image.encoded, image.format, image.converted_from) == (data, "png", None)
        np.testing.assert_array_equal(_tf_rgb(image.encoded), expected)


def test_16_bit_png_is_re_encoded_as_8_bit_png():
    rgb16 = _gradient().astype(np.uint16) * 257 + 100  # the high byte is the 8-bit value
    image = coco.prepare_image_bytes(_encode(rgb16[..., ::-1], ".png"))
    assert (image.format, image.converted_from) == ("png", "16_bit_png")
    assert cv2.imdecode(np.frombuffer(image.encoded, np.uint8), cv2.IMREAD_UNCHANGED).dtype == np.uint8
    np.testing.assert_array_equal(_tf_rgb(image.encoded), (rgb16 >> 8).astype(np.uint8))


def test_cmyk_jpeg_is_re_encoded_as_rgb_png():
    pil = pytest.importorskip("PIL.Image")
    rgb = _gradient()
    buffer = io.BytesIO()
    pil.fromarray(rgb).convert("CMYK").save(buffer, "JPEG", quality=100)
    image = coco.prepare_image_bytes(buffer.getvalue())
    assert (image.format, image.converted_from, image.height, image.width) == ("png", "cmyk_or_unusual_jpeg", 24, 32)
    assert np.abs(_tf_rgb(image.encoded).astype(int) - rgb).max() <= 3


def test_other_formats_are_re_encoded_as_png():
    rgb = _gradient()
    image = coco.prepare_image_bytes(_encode(rgb[..., ::-1], ".bmp"))
    assert (image.format, image.converted_from) == ("png", "other_format")
    np.testing.assert_array_equal(_tf_rgb(image.encoded), rgb)


def test_jpeg_bytes_after_the_end_marker_are_allowed_as_tensorflow_ignores_them():
    data = _encode(_gradient(), ".jpg")
    for tail in (b"\0" * 16, b"trailing data"):
        image = coco.prepare_image_bytes(data + tail)
        assert image.format == "jpeg"
        assert _tf_rgb(image.encoded).shape == (24, 32, 3)


def test_exif_orientation_is_ignored_like_tensorflow_does():
    pil = pytest.importorskip("PIL.Image")
    exif = pil.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees" tag
    buffer = io.BytesIO()
    pil.fromarray(_gradient(24, 32)).save(buffer, "JPEG", exif=exif.tobytes())
    image = coco.prepare_image_bytes(buffer.getvalue())
    assert (image.height, image.width) == (24, 32) == _tf_rgb(image.encoded).shape[:2]


@pytest.mark.parametrize(
    "make, reason",
    [
        (lambda: _encode(cv2.resize(_gradient(), (200, 200)), ".jpg")[:-2], "corrupt_image"),  # no EOI
        (lambda: _encode(cv2.resize(_gradient(), (200, 200)), ".jpg")[:3000], "corrupt_image"),
        (lambda: _encode(_gradient(), ".png")[:-12], "corrupt_image"),  # no IEND chunk
        (lambda: _encode(_gradient(), ".png")[:200], "corrupt_image"),
        (lambda: b"", "corrupt_image"),
        (lambda: b"GIF89a but not really", "undecodable_image"),
        (lambda: b"just some text\n", "undecodable_image"),
    ],
)
def test_broken_image_bytes_are_rejected_with_a_reason(make, reason):
    data = make()
    with pytest.raises(coco.ImageError) as error:
        coco.prepare_image_bytes(data, name="x.jpg")
    assert error.value.reason == reason
    assert "x.jpg" in str(error.value)


def test_truncated_files_that_opencv_rejects_tensorflow_rejects_too():
    for data in (_encode(cv2.resize(_gradient(), (200, 200)), ".jpg")[:-2], _encode(_gradient(), ".png")[:-12]):
        with pytest.raises(tf.errors.InvalidArgumentError):
            _tf_rgb(data)


def test_a_missing_file_is_missing_image(tmp_path):
    with pytest.raises(coco.ImageError) as error:
        coco.read_image(tmp_path / "nope.jpg")
    assert error.value.reason == "missing_image"


# --------------------------------------------------------------------------------------------
# Instances


def test_polygons_move_to_this_projects_pixel_frame():
    instances, skips = _instances(_annotation(1, [SQUARE], category_id=17))
    np.testing.assert_allclose(instances["polygons"][0][0], np.array(SQUARE).reshape(-1, 2) - 0.5)
    np.testing.assert_allclose(instances["boxes"], [[10, 10, 30, 30]])
    np.testing.assert_allclose(instances["mass_centers"], [[20, 20]], atol=1e-5)
    assert instances["labels"].tolist() == [2] and instances["category_ids"].tolist() == [17]
    assert instances["areas"].tolist() == [400.0]
    assert instances["mass_centers"].dtype == np.float32 and instances["boxes"].dtype == np.float32
    assert not skips.annotations.counts and not skips.parts.counts


def test_vertices_are_clipped_to_the_outer_pixel_edges():
    overhang = [-20.0, -5.0, 100.0, -5.0, 100.0, 70.0, -20.0, 70.0]
    instances, _ = _instances(_annotation(1, [overhang]))
    corners = [[-0.5, -0.5], [W - 0.5, -0.5], [W - 0.5, H - 0.5], [-0.5, H - 0.5]]
    np.testing.assert_allclose(instances["polygons"][0][0], corners)
    np.testing.assert_allclose(instances["boxes"], [[-0.5, -0.5, W - 0.5, H - 0.5]])


def test_parts_are_ordered_largest_first_with_box_over_all_and_centre_of_the_largest():
    small = [50.5, 40.5, 55.5, 40.5, 55.5, 45.5]
    instances, _ = _instances(_annotation(1, [small, SQUARE]))
    parts = instances["polygons"][0]
    assert [len(p) for p in parts] == [4, 3]
    np.testing.assert_allclose(parts[1], np.array(small).reshape(-1, 2) - 0.5)
    np.testing.assert_allclose(instances["boxes"], [[10, 10, 55, 45]])
    np.testing.assert_allclose(instances["mass_centers"], [[20, 20]], atol=1e-5)


def test_crowd_annotations_are_excluded():
    instances, skips = _instances(_annotation(1, [SQUARE]), _annotation(2, [SQUARE], iscrowd=1))
    assert len(instances["labels"]) == 1
    assert skips.annotations.counts == {"crowd": 1} and skips.annotations.examples == {"crowd": [2]}


@pytest.mark.parametrize(
    "segmentation, category_id, area, reason",
    [
        ([[10.5, 10.5, 30.5, 30.5]], 1, 400.0, "fewer_than_3_points"),
        ([[10.5, 10.5, 30.5, float("nan"), 10.5, 30.5]], 1, 400.0, "non_finite"),
        ([[10.5, 10.5, 30.5, float("inf"), 10.5, 30.5]], 1, 400.0, "non_finite"),
        ([[200.5, 10.5, 300.5, 10.5, 300.5, 30.5]], 1, 400.0, "zero_size_box"),  # right of the image
        ([[-50.0, -50.0, -10.0, -50.0, -10.0, -10.0]], 1, 400.0, "zero_size_box"),  # beyond a corner
        ([[10.5, 10.5, 20.5, 20.5, 30.5, 30.5]], 1, 400.0, "zero_area"),  # collinear
        ([[10.5, 10.5, 30.5, 30.5, 30.5, 10.5, 10.5, 30.5]], 1, 400.0, "zero_area"),  # symmetric bow-tie
        ([SQUARE], 2, 400.0, "unknown_category"),
        ([SQUARE], 1, 15.9, "small_area"),
        ([SQUARE], 1, None, "bad_area"),
        ([SQUARE], 1, "400", "bad_area"),
        ("not a segmentation", 1, 400.0, "bad_segmentation"),
        ([], 1, 400.0, "bad_segmentation"),
        (SQUARE, 1, 400.0, "bad_segmentation"),  # flat list, not a list of polygons
        ([[10.5, 10.5, 30.5]], 1, 400.0, "bad_segmentation"),  # odd coordinate count
        ([["a", "b", "c", "d", "e", "f"]], 1, 400.0, "bad_segmentation"),
        ({"size": [10, 10], "counts": "PP0"}, 1, 400.0, "rle_size_mismatch"),
        ({"counts": "PP0"}, 1, 400.0, "bad_segmentation"),
        (None, 1, 400.0, "bad_segmentation"),  # segmentation: null
        ([[10.5, 10.5, 1e12, 10.5, 30.5, 30.5]], 1, 400.0, "far_outside_image"),  # pycocotools: 20+ GB
        ([[10.5, 10.5, 30.5, -1e30, 30.5, 30.5]], 1, 400.0, "far_outside_image"),
        # Malformed RLEs: every one of these aborted the conversion or made pycocotools read garbage.
        ({"size": "ab", "counts": "PP0"}, 1, 400.0, "bad_rle_size"),
        ({"size": [H], "counts": "PP0"}, 1, 400.0, "bad_rle_size"),
        ({"size": [H, "80"], "counts": "PP0"}, 1, 400.0, "bad_rle_size"),
        ({"size": [H, W], "counts": 12}, 1, 400.0, "bad_rle_counts"),  # neither a string nor a list
        ({"size": [H, W], "counts": {"a": 1}}, 1, 400.0, "bad_rle_counts"),
        ({"size": [H, W], "counts": "P\x01P"}, 1, 400.0, "bad_rle_counts"),  # outside the RLE alphabet
        ({"size": [H, W], "counts": "oooooooooo0"}, 1, 400.0, "bad_rle_counts"),  # a count of 55 bits
        ({"size": [H, W], "counts": "P"}, 1, 400.0, "bad_rle_counts"),  # ends inside a count
        ({"size": [H, W], "counts": "O"}, 1, 400.0, "bad_rle_counts"),  # "O" is -1: a negative count
        ({"size": [H, W], "counts": [H * W, -5, 5]}, 1, 400.0, "bad_rle_counts"),  # sums to H*W, negative
        ({"size": [H, W], "counts": [100, "x"]}, 1, 400.0, "bad_rle_counts"),
        ({"size": [H, W], "counts": [100, 50]}, 1, 400.0, "rle_counts_sum_mismatch"),  # uncompressed, short
        ({"size": [H, W], "counts": [H * W, 1]}, 1, 400.0, "rle_counts_sum_mismatch"),  # would overrun
        ({"size": [H, W], "counts": "PP0"}, 1, 400.0, "rle_counts_sum_mismatch"),  # compressed, short
    ],
)
def test_degenerate_annotations_are_dropped_with_a_reason_and_good_ones_kept(segmentation, category_id, area, reason):
    bad = _annotation(2, segmentation, category_id=category_id, area=area)
    instances, skips = _instances(_annotation(1, [SQUARE]), bad, _annotation(3, [SQUARE]))
    assert skips.annotations.counts == {reason: 1}
    assert skips.annotations.examples == {reason: [2]}
    assert len(instances["labels"]) == 2
    np.testing.assert_allclose(instances["boxes"], [[10, 10, 30, 30]] * 2)


@pytest.mark.parametrize(
    "iscrowd, reason",
    [(0, None), (1, "crowd"), (False, None), (True, "crowd"), ("0", None), ("1", "crowd"),
     (2, "bad_iscrowd"), (0.0, "bad_iscrowd"), ("yes", "bad_iscrowd"), ("", "bad_iscrowd"), (None, "bad_iscrowd")],
)
def test_iscrowd_is_parsed_strictly(iscrowd, reason):
    instances, skips = _instances(_annotation(1, [SQUARE]), _annotation(2, [SQUARE], iscrowd=iscrowd))
    assert skips.annotations.counts == ({reason: 1} if reason else {})
    assert len(instances["labels"]) == (2 if reason is None else 1)


def test_a_far_outside_part_is_dropped_and_the_other_parts_kept():
    instances, skips = _instances(_annotation(7, [[10.5, 10.5, 1e12, 10.5, 30.5, 30.5], SQUARE]))
    np.testing.assert_allclose(instances["boxes"], [[10, 10, 30, 30]])
    assert not skips.annotations.counts and skips.parts.counts == {"far_outside_image": 1}
    # The limit: OUTSIDE_IMAGE_LIMIT image sizes beyond each edge are still clipped and kept.
    near = 80 + coco.OUTSIDE_IMAGE_LIMIT * 80 - 1
    instances, skips = _instances(_annotation(8, [[10.5, 10.5, near, 10.5, 30.5, 30.5]]))
    assert len(instances["labels"]) == 1 and not skips.annotations.counts


def _uncompressed_counts(mask):
    """Run lengths of a mask in column-major order, starting with a run of zeros (COCO's RLE)."""
    flat = mask.reshape(-1, order="F")
    changes = np.flatnonzero(np.diff(flat)) + 1
    bounds = np.concatenate([[0], changes, [flat.size]])
    runs = np.diff(bounds).tolist()
    return ([0] + runs) if flat.size and flat[0] else runs


@given(st.integers(1, 40), st.integers(1, 40), st.floats(0.0, 1.0), st.integers(0, 2**32 - 1))
@settings(max_examples=60, deadline=None)
def test_the_rle_string_decoder_inverts_pycocotools_encode(height, width, density, seed):
    rng = np.random.default_rng(seed)
    mask = np.asfortranarray((rng.random((height, width)) < density).astype(np.uint8))
    rle = coco_mask.encode(mask)
    counts = geometry.decode_rle_string(rle["counts"])
    assert sum(counts) == height * width and min(counts) >= 0
    assert counts == _uncompressed_counts(mask)
    geometry.check_rle({"size": [height, width], "counts": rle["counts"].decode()}, height, width)  # no error


def test_the_rle_string_decoder_reads_large_and_delta_coded_counts():
    # Runs long enough to need several 5-bit groups, and deltas (from the fourth count on) of both signs.
    mask = np.zeros((300, 400), np.uint8, order="F")
    mask[:, 10:20] = 1
    mask[:5, 200:399] = 1
    rle = coco_mask.encode(mask)
    assert geometry.decode_rle_string(rle["counts"]) == _uncompressed_counts(mask)


def test_check_ground_truth_drops_what_pycocotools_cannot_rasterise():
    good = [dict(_annotation(i, [SQUARE]), bbox=[10, 10, 20, 20]) for i in (1, 2)]
    bad = [
        dict(_annotation(3, [[10.5, 10.5, 1e12, 10.5, 30.5, 30.5]]), bbox=[10, 10, 20, 20]),
        dict(_annotation(4, None), bbox=[10, 10, 20, 20]),
        dict(_annotation(5, {"size": [H, W], "counts": [1, 2]}), bbox=[10, 10, 20, 20]),
        dict(_annotation(6, [SQUARE], iscrowd="crowd"), bbox=[10, 10, 20, 20]),
        _annotation(7, [SQUARE]),  # no bbox
        dict(_annotation(8, [SQUARE], area=float("nan")), bbox=[10, 10, 20, 20]),
        dict(_annotation(9, [SQUARE]), bbox=[10, 10, 20, 20], image_id=5),
        dict(_annotation(10, [SQUARE]), bbox=[10, 10, 20, 20], image_id=2),
    ]
    mixed = dict(_annotation(11, [SQUARE, [1.0, 2.0, 3.0, float("nan"), 5.0, 6.0]], iscrowd="0"),
                 bbox=[10, 10, 20, 20])
    data = {"images": [{"id": 1, "file_name": "a.jpg", "height": H, "width": W}, {"id": 2, "file_name": "b.jpg"}],
            "annotations": good + bad + [mixed], "categories": [{"id": 1, "name": "person"}]}
    cleaned, skips = coco.check_ground_truth(data)
    assert skips.images.counts == {"missing_size": 1} and skips.images.examples == {"missing_size": [2]}
    assert skips.annotations.counts == {"far_outside_image": 1, "bad_segmentation": 1, "rle_counts_sum_mismatch": 1,
                                        "bad_iscrowd": 1, "bad_bbox": 1, "bad_area": 1, "unknown_image": 1,
                                        "image_skipped": 1}
    assert skips.parts.counts == {"non_finite": 1} and skips.parts.examples == {"non_finite": [11]}
    assert [a["id"] for a in cleaned["annotations"]] == [1, 2, 11]
    assert cleaned["annotations"][2]["segmentation"] == [SQUARE] and cleaned["annotations"][2]["iscrowd"] == 0
    assert [image["id"] for image in cleaned["images"]] == [1]
    assert len(data["annotations"]) == 11  # the input is not modified
    assert "1 images (missing_size: 1 (e.g. [2]))" in coco.format_skips(skips)


def test_min_area_is_configurable():
    annotation = _annotation(1, [SQUARE], area=15.0)
    assert len(_instances(annotation)[0]["labels"]) == 0
    assert len(_instances(annotation, min_area=15.0)[0]["labels"]) == 1


def test_an_asymmetric_self_intersecting_polygon_is_kept_as_given():
    bow_tie = [10.5, 10.5, 40.5, 40.5, 40.5, 10.5, 10.5, 20.5]  # lobes of different size
    instances, skips = _instances(_annotation(1, [bow_tie]))
    assert not skips.annotations.counts
    np.testing.assert_allclose(instances["polygons"][0][0], np.array(bow_tie).reshape(-1, 2) - 0.5)
    np.testing.assert_allclose(instances["boxes"], [[10, 10, 40, 40]])


def test_degenerate_parts_are_dropped_from_an_otherwise_valid_instance():
    parts = [[1.0, 2.0, 3.0, 4.0], SQUARE, [200.5, 10.5, 300.5, 10.5, 300.5, 30.5],
             [5.5, 5.5, 6.5, float("nan"), 7.5, 5.5]]
    instances, skips = _instances(_annotation(9, parts))
    assert len(instances["polygons"]) == 1 and len(instances["polygons"][0]) == 1
    np.testing.assert_allclose(instances["boxes"], [[10, 10, 30, 30]])
    assert not skips.annotations.counts
    assert skips.parts.counts == {"fewer_than_3_points": 1, "zero_size_box": 1, "non_finite": 1}
    assert skips.parts.examples["zero_size_box"] == [9]


def test_an_instance_without_valid_parts_takes_the_reason_of_its_first_part():
    parts = [[10.5, 10.5, 20.5, 20.5, 30.5, 30.5], [1.0, 2.0, 3.0, 4.0]]
    _, skips = _instances(_annotation(4, parts))
    assert skips.annotations.counts == {"zero_area": 1}
    assert not skips.parts.counts


def test_rle_annotations_become_contours_already_in_this_projects_frame():
    mask = np.zeros((H, W), np.uint8)
    mask[10:20, 20:30] = 1
    rle = coco_mask.encode(np.asfortranarray(mask))
    rle["counts"] = rle["counts"].decode()
    instances, _ = _instances(_annotation(1, rle, area=100.0))
    # The outline runs along the pixels' outer edges (issue 15): the box of a polygon of that shape.
    np.testing.assert_allclose(instances["boxes"], [[19.5, 9.5, 29.5, 19.5]])
    np.testing.assert_allclose(instances["mass_centers"], [[24.5, 14.5]], atol=1e-5)


def test_an_image_without_annotations_has_no_instances():
    instances, skips = _instances()
    assert instances["boxes"].shape == (0, 4) and instances["mass_centers"].shape == (0, 2)
    assert instances["polygons"] == [] and instances["labels"].dtype == np.int64
    assert not skips.annotations.counts


def test_image_record_skips_an_image_whose_size_differs_from_the_json(tmp_path):
    cv2.imwrite(str(tmp_path / "a.png"), np.zeros((H, W, 3), np.uint8))
    skips = coco.Skips()
    image = {"id": 1, "file_name": "a.png", "height": H, "width": W}
    good = coco.image_record(image, [_annotation(5, [SQUARE])], str(tmp_path), LABELS, skips=skips)
    assert good["format"] == "png" and good["height"] == H and len(good["labels"]) == 1
    wrong = {"id": 2, "file_name": "a.png", "height": W, "width": H}
    assert coco.image_record(wrong, [_annotation(6, [SQUARE])], str(tmp_path), LABELS, skips=skips) is None
    assert skips.images.counts == {"size_mismatch": 1} and skips.images.examples == {"size_mismatch": [2]}
    assert skips.annotations.counts == {"image_skipped": 1} and skips.annotations.examples == {"image_skipped": [6]}


def test_skip_examples_are_capped_per_reason():
    log, other = coco.ReasonLog(), coco.ReasonLog()
    for i in range(4):
        log.add("crowd", i)
        other.add("crowd", 10 + i)
    log.merge(other)
    assert log.counts == {"crowd": 8}
    assert log.examples == {"crowd": [0, 1, 2, 3, 10]}
