"""The LiteRT export (polarmask_tf.serving.tflite) and its runner, on an untrained tiny model.

One module fixture converts the three files (each conversion in a child process) and exports the
SavedModel they are compared with; held-out synthetic scenes are the inputs. The untrained head's
class-logit kernel is scaled up (CLS_GAIN) so that its class probabilities spread over (0, 1) as a
trained model's do: the number of detections then depends on each image, is not capped, and is
not decided by rounding at the score threshold (an untrained head puts every probability near its
prior, where float16 or int8 rounding of one bias flips hundreds of pairs at once).
"""

import json
import os

import cv2
import numpy as np
import pytest
import tensorflow as tf

from polarmask_tf import config as cfg
from polarmask_tf import postprocess as postprocess_lib
from polarmask_tf.cli import predict as predict_command
from polarmask_tf.data import coco, synthetic
from polarmask_tf.modeling.model import build_model
from polarmask_tf.serving import export, tflite, tflite_runner

from conftest import synthetic_train_records

pytestmark = pytest.mark.slow

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLS_GAIN = 30.0
TINY = ["data.image_size=[128, 128]", "postprocess.max_detections=300", "postprocess.score_threshold=0.3",
        "model.fpn_channels=16", "model.head_channels=16", "model.head_convs=1", "model.group_norm_groups=4"]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """(config, label map, {quantization: path}, SavedModel serve_images, tflite dir)."""
    root = tmp_path_factory.mktemp("tflite")
    records = synthetic_train_records(root, num_images=12, seed=5, min_size=96, max_size=200, num_shards=1)
    config = export.inference_config(cfg.load_config(os.path.join(ROOT, "configs", "quickstart.yaml"),
                                                     TINY + [f"data.train_files={records}/train-*.tfrecord"]))
    tf.keras.utils.set_random_seed(3)
    model = build_model(config)
    cls_logits = model.get_layer("head").cls_logits
    cls_logits.kernel.assign(cls_logits.kernel * CLS_GAIN)
    label_map = coco.LabelMap(tuple(coco.Category(k, 10 * k, f"shape {k}") for k in range(1, 8)))
    representative = tflite.representative_inputs(config, config.data.train_files, 12)
    paths = tflite.export_tflite(config, model, label_map, str(root / "tflite"), tflite.QUANTIZATIONS,
                                 representative)
    version = export.export(config, model, label_map, str(root / "saved"), version=1)
    serve = tf.saved_model.load(version).signatures["serve_images"]
    return config, label_map, paths, serve, root / "tflite"


@pytest.fixture(scope="module")
def held_out():
    """Five synthetic scenes of different sizes and aspect ratios (RGB uint8), none of them a training image."""
    sizes = ((160, 120), (90, 200), (128, 128), (300, 140), (64, 96))
    return [synthetic.draw_image(np.random.default_rng((77, i)), w, h)[0] for i, (w, h) in enumerate(sizes)]


def _saved_model_on(serve, letterboxed, label_map):
    """The SavedModel's detections on the letterboxed image's resized part (it resizes that to
    itself, an exact copy), in its pixels, classes as labels."""
    image, resized_size, _ = letterboxed
    height, width = resized_size[0]
    found = {key: value.numpy()[0] for key, value in serve(images=tf.constant(image[:, :height, :width])).items()}
    n = int(found["num_detections"])
    labels = np.array([label_map.label_of(int(c)) for c in found["detection_classes"][:n]], np.int32)
    return {"num_detections": n, "classes": labels, "scores": found["detection_scores"][:n],
            "boxes": found["detection_boxes"][:n], "polygons": found["detection_polygons"][:n]}


def _tflite_on(detector, letterboxed):
    """The file's detections on the same input, in the input's pixels (scale 1)."""
    image, resized_size, _ = letterboxed
    found = detector.run(image, resized_size, np.ones((1, 2), np.float32))
    n = int(found["num_detections"][0])
    return {"num_detections": n, **{key: found[key][0, :n] for key in ("classes", "scores", "boxes", "polygons")}}


def _pairs(config, detector, exported, held_out):
    _, label_map, _, serve, _ = exported
    for image in held_out:
        letterboxed = tflite.letterbox(image, config)
        yield _saved_model_on(serve, letterboxed, label_map), _tflite_on(detector, letterboxed)


@pytest.mark.parametrize("quantization", tflite.QUANTIZATIONS)
def test_every_file_holds_builtin_ops_only_and_loads(exported, quantization):
    config, _, paths, _, _ = exported
    names = tflite.operator_names(paths[quantization])
    assert tflite.non_builtin_operators(names) == []
    assert {"CONV_2D", "NON_MAX_SUPPRESSION_V4", "TOPK_V2", "GATHER"} <= set(names)
    assert "WHILE" not in names  # class_offset_nms: no loops for the int8 calibrator
    detector = tflite_runner.TFLiteDetector(paths[quantization], config)
    assert detector.input_shape == (1, 128, 128, 3)


def test_the_operator_check_catches_flex_and_custom_ops():
    assert tflite.non_builtin_operators(["CONV_2D", "FlexTopKV2", "DELEGATE", "TFLite_Detection_PostProcess",
                                         "WHILE"]) == ["FlexTopKV2", "DELEGATE", "TFLite_Detection_PostProcess"]


def test_int8_quantises_the_network_and_keeps_the_decoding_float(exported):
    _, _, paths, _, _ = exported
    interpreter = tflite_runner.make_interpreter(paths["int8"])
    tensors = interpreter.get_tensor_details()

    def dtypes(op_name):
        return {np.dtype(tensors[i]["dtype"]).name for op in interpreter._get_ops_details()
                if op["op_name"] == op_name for i in list(op["inputs"]) + list(op["outputs"]) if i >= 0}

    assert "int8" in dtypes("CONV_2D")
    for decoding in ("LOGISTIC", "EXP", "NON_MAX_SUPPRESSION_V4", "DIV"):
        assert "int8" not in dtypes(decoding), decoding


def test_float32_matches_the_saved_model(exported, held_out):
    config, _, paths, _, _ = exported
    detector = tflite_runner.TFLiteDetector(paths["float32"], config)
    counts = []
    for reference, found in _pairs(config, detector, exported, held_out):
        assert found["num_detections"] == reference["num_detections"]
        np.testing.assert_array_equal(found["classes"], reference["classes"])
        np.testing.assert_allclose(found["polygons"], reference["polygons"], atol=1e-3)
        np.testing.assert_allclose(found["boxes"], reference["boxes"], atol=1e-3)
        np.testing.assert_allclose(found["scores"], reference["scores"], atol=1e-5)
        counts.append(reference["num_detections"])
    assert min(counts) > 0 and max(counts) < 300 and len(set(counts)) > 1  # uncapped and image dependent


def _nearest_polygon_distance(found, reference):
    """Per detection of `found`: the max vertex distance, px, to the nearest same-class reference
    polygon (inf when the reference has none of its class)."""
    distances = []
    for polygon, label in zip(found["polygons"], found["classes"], strict=True):
        same = reference["polygons"][reference["classes"] == label]
        distances.append(np.abs(same - polygon).max(axis=(1, 2)).min() if len(same) else np.inf)
    return np.array(distances)


def test_float16_is_within_half_a_pixel(exported, held_out):
    config, _, paths, _, _ = exported
    detector = tflite_runner.TFLiteDetector(paths["float16"], config)
    for reference, found in _pairs(config, detector, exported, held_out):
        assert found["num_detections"] == reference["num_detections"]
        assert _nearest_polygon_distance(found, reference).max() <= 0.5


def test_int8_finds_as_many_detections_within_20_percent(exported, held_out):
    config, _, paths, _, _ = exported
    detector = tflite_runner.TFLiteDetector(paths["int8"], config)
    pairs = list(_pairs(config, detector, exported, held_out))
    reference = sum(r["num_detections"] for r, _ in pairs)
    found = sum(f["num_detections"] for _, f in pairs)
    assert abs(found - reference) <= 0.2 * reference, (found, reference)


def test_predict_maps_back_to_the_original_image(exported, held_out):
    """predict() letterboxes and passes the scale: coordinates in the original image, equal to the
    input-pixel coordinates mapped with the pixel-centre rule (postprocess._to_original)."""
    config, _, paths, _, _ = exported
    detector = tflite_runner.TFLiteDetector(paths["float32"], config)
    image = held_out[3]  # 300 x 140: scale 128 / 300
    found = detector.predict([image])[0]
    letterboxed = tflite.letterbox(image, config)
    in_input = _tflite_on(detector, letterboxed)
    assert len(found["scores"]) == in_input["num_detections"] > 0
    sy, sx = letterboxed[2][0]
    height, width = letterboxed[1][0]
    expected = (in_input["polygons"] + 0.5) / [sx, sy] - 0.5
    # Vertices the input-pixel run clipped to the resized image's edge map elsewhere unclipped.
    unclipped = (in_input["polygons"] > 0) & (in_input["polygons"] < [width - 1, height - 1])
    np.testing.assert_allclose(found["polygons"][unclipped], expected[unclipped], atol=2e-3)
    assert unclipped.mean() > 0.5
    assert found["polygons"][..., 0].max() > 127  # beyond the 128-pixel input: original pixels


def test_class_offset_nms_equals_class_aware_nms():
    rng = np.random.default_rng(4)
    count = 300
    xy = rng.uniform(0, 200, (2, count, 2)).astype(np.float32)
    boxes = np.concatenate([xy, xy + rng.uniform(4, 60, (2, count, 2))], -1).astype(np.float32)
    boxes[:, ::7, 2] = boxes[:, ::7, 0]  # zero width, as boxes clipped to the image edge get
    boxes[:, 3::11, 3] = boxes[:, 3::11, 1] - 1  # negative height
    for num_classes in (1, 5, 80):
        classes = rng.integers(0, num_classes, (2, count)).astype(np.int32)
        valid = np.arange(count)[None] < np.array([[count - 20], [90]])
        for max_keep in (None, 25):
            expected = postprocess_lib.class_aware_nms(boxes, classes, valid, 0.5, max_keep=max_keep).numpy()
            np.testing.assert_array_equal(
                postprocess_lib.class_offset_nms(boxes, classes, valid, 0.5, max_keep=max_keep).numpy(), expected)
            assert expected[0].sum() == (25 if max_keep else expected[0].sum()) < valid[0].sum()
    with pytest.raises(ValueError, match="greater_equal"):
        postprocess_lib.class_offset_nms(boxes, classes, valid, 0.5, rule="greater_equal")


def test_bad_input_gives_a_clear_error(exported, tmp_path):
    config, _, paths, _, _ = exported
    detector = tflite_runner.TFLiteDetector(paths["int8"], config)
    image, size, scale = tflite.letterbox(np.zeros((40, 50, 3), np.uint8), config)
    with pytest.raises(ValueError, match=r"input image must be uint8 \[1, 128, 128, 3\], got uint8 \[1, 64, 64, 3\]"):
        detector.run(image[:, :64, :64], size, scale)
    with pytest.raises(ValueError, match=r"input image must be uint8 .* got float32"):
        detector.run(image.astype(np.float32), size, scale)
    with pytest.raises(ValueError, match=r"input scale must be float32 \[1, 2\], got float64"):
        detector.run(image, size, scale.astype(np.float64))
    with pytest.raises(ValueError, match=r"RGB uint8 images \[h, w, 3\], got uint8 \[40, 50\]"):
        detector.predict([np.zeros((40, 50), np.uint8)])
    junk = tmp_path / "junk.tflite"
    junk.write_bytes(b"this is not a flatbuffer" * 10)
    with pytest.raises(ValueError, match="junk.tflite is not a TFLite model"):
        tflite_runner.TFLiteDetector(junk, config)
    with pytest.raises(ValueError, match="no such file"):
        tflite_runner.TFLiteDetector(tmp_path / "missing.tflite", config)
    other = cfg.apply_overrides(config, ["data.image_size=[160, 160]"])  # padded to 256 (size_divisor 128)
    with pytest.raises(ValueError, match=r"takes images of shape \[1, 128, 128, 3\].*\[1, 256, 256, 3\]"):
        tflite_runner.TFLiteDetector(paths["float32"], other)


def test_predict_command_runs_a_tflite_file(exported, held_out, tmp_path):
    _, _, paths, _, directory = exported
    photo = tmp_path / "scene.png"
    cv2.imwrite(str(photo), held_out[0][..., ::-1])
    lines = []

    class Stream:
        def write(self, text):
            lines.append(text)

        def flush(self):
            pass

    status = predict_command.main(["--tflite", paths["int8"], "--images", str(photo), "--output-dir",
                                   str(tmp_path / "out"), "--score-threshold", "0.0"], stream=Stream())
    assert status == 0
    assert (tmp_path / "out" / "scene.png").exists()
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert results and {r["category_name"] for r in results} <= {f"shape {k}" for k in range(1, 8)}
    assert (directory / tflite.LABELS_FILE).exists() and (directory / tflite.CONFIG_FILE).exists()
