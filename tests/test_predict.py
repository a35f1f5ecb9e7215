"""Running a model: the predict and evaluate command lines, the Evaluator, and the drawings."""

import io
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from polarmask_tf import config as cfg
from polarmask_tf import evaluation, geometry, visualize
from polarmask_tf.cli import evaluate, predict
from polarmask_tf.data import coco, pipeline, records_writer, synthetic
from polarmask_tf.modeling import preprocessing, pyramid
from polarmask_tf.modeling.model import build_model

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["data.image_size=[128, 128]", "model.prior_prob=0.2", "postprocess.max_detections=20", "data.jit_targets=false"]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A synthetic dataset (4 val images) and a model dir holding an untrained tiny model's
    checkpoint and config.yaml. prior_prob 0.2 makes an untrained model detect things."""
    root = tmp_path_factory.mktemp("predict")
    synthetic.generate_dataset(root / "synthetic", num_images=8, seed=2, val_fraction=0.5, min_size=128, max_size=160)
    config = cfg.load_config(os.path.join(ROOT, "configs", "quickstart.yaml"), TINY)
    model_dir = root / "run"
    model_dir.mkdir()
    cfg.dump_config(config, str(model_dir / "config.yaml"))
    tf.train.Checkpoint(model=build_model(config)).save(str(model_dir / "checkpoints" / "ckpt"))
    return root, config


def _val(root):
    return str(root / "synthetic" / "annotations" / "instances_val.json"), str(root / "synthetic" / "val")


@pytest.mark.slow
def test_predict_draws_readable_images_and_skips_the_rest(tiny_run, tmp_path, capsys):
    root, _ = tiny_run
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    images = sorted((root / "synthetic" / "val").glob("*.jpg"))[:3]
    for path in images:
        shutil.copy(path, inputs)
    (inputs / "notes.txt").write_text("not an image")
    data = images[0].read_bytes()
    (inputs / "truncated.jpg").write_bytes(data[: len(data) // 2])
    out = tmp_path / "out"
    status = predict.main(["--model-dir", str(root / "run"), "--images", str(inputs), "--output-dir", str(out),
                           "--score-threshold", "0.1", "--draw-rays"])
    printed = capsys.readouterr().out
    assert status == 0
    assert sorted(p.name for p in out.glob("*.png")) == [p.stem + ".png" for p in images]
    assert "notes.txt" in printed and "truncated.jpg: truncated JPEG" in printed and "2 skipped" in printed
    results = json.loads((out / "results.json").read_text())
    assert results and {r["file_name"] for r in results} <= {str(inputs / p.name) for p in images}
    keys = {"bbox", "segmentation", "category_id", "category_name"}
    assert all(r["score"] >= 0.1 and set(r) >= keys for r in results)
    for path in images:
        drawn = (out / (path.stem + ".png"))
        assert tf.io.decode_png(drawn.read_bytes()).shape == tf.io.decode_jpeg(path.read_bytes()).shape


def test_predict_fails_when_no_file_is_an_image(tiny_run, tmp_path, capsys):
    root, _ = tiny_run
    (tmp_path / "a.txt").write_text("text")
    (tmp_path / "b.jpg").write_bytes(b"\xff\xd8\xff\xe0 broken")
    status = predict.main(["--model-dir", str(root / "run"), "--images", str(tmp_path / "*"),
                           "--output-dir", str(tmp_path / "out")])
    assert status == 1
    assert "none of the 2 files is a readable image" in capsys.readouterr().err
    assert not (tmp_path / "out" / "results.json").exists()


@pytest.mark.slow
def test_show_targets_draws_tfrecord_examples(tiny_run, tmp_path, capsys):
    root, _ = tiny_run
    annotations, images_dir = _val(root)
    records_writer.convert(annotations, images_dir, str(tmp_path / "records" / "val"), num_shards=1,
                             progress_stream=io.StringIO())
    status = predict.main(["--config", str(root / "run" / "config.yaml"), "--show-targets", "--max-images", "2",
                           "--images", str(tmp_path / "records" / "val-*.tfrecord"),
                           "--output-dir", str(tmp_path / "t")])
    assert status == 0
    assert len(list((tmp_path / "t").glob("targets-*.png"))) == 2
    assert "positive locations" in capsys.readouterr().out


@pytest.mark.slow
def test_evaluate_cli_end_to_end(tiny_run, tmp_path, capsys):
    root, _ = tiny_run
    annotations, images_dir = _val(root)
    out = tmp_path / "eval"
    status = evaluate.main(["--model-dir", str(root / "run"), "--annotations", annotations, "--images-dir", images_dir,
                            "--output-dir", str(out)])
    printed = capsys.readouterr().out
    assert status == 0
    assert "segm" in printed and "bbox" in printed and "category" in printed
    metrics = json.loads((out / "metrics.json").read_text())
    for iou_type in ("segm", "bbox"):
        assert all(0.0 <= metrics[iou_type][name] <= 1.0 for name in ("AP", "AP50", "AP75"))
    assert metrics["num_images"] == 4 and metrics["num_detections"] > 0
    gt = coco.load_coco(annotations)
    loaded = gt.loadRes(str(out / "results.json"))
    assert len(loaded.anns) == metrics["num_detections"]


@pytest.mark.slow
def test_evaluate_cli_rejects_a_checkpoint_of_another_config(tiny_run, tmp_path):
    root, config = tiny_run
    other = tmp_path / "other.yaml"
    cfg.dump_config(cfg.apply_overrides(config, ["model.head_channels=32"]), str(other))
    annotations, images_dir = _val(root)
    command = [sys.executable, "-m", "polarmask_tf.cli.evaluate", "--config", str(other),
               "--model-dir", str(root / "run"), "--annotations", annotations, "--images-dir", images_dir]
    finished = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert finished.returncode == 2, finished.stderr[-2000:]
    assert "does not fit the model of this config" in finished.stderr and "ckpt-1" in finished.stderr
    assert "Traceback" not in finished.stderr


@pytest.mark.slow
def test_evaluator_skips_unreadable_images_and_reuses_its_predictor(tiny_run, tmp_path):
    root, config = tiny_run
    annotations, original_dir = _val(root)
    images_dir = str(tmp_path / "images")
    shutil.copytree(original_dir, images_dir)
    data = json.loads(open(annotations).read())
    data["images"].append(dict(data["images"][0], id=999, file_name="missing.jpg"))
    data["images"].append(dict(data["images"][0], id=1000, file_name="small.png"))
    tf.io.write_file(os.path.join(images_dir, "small.png"), tf.io.encode_png(np.zeros((8, 8, 3), np.uint8)))
    edited = tmp_path / "val.json"
    edited.write_text(json.dumps(data))
    model = build_model(config)
    tf.train.Checkpoint(model=model).restore(tf.train.latest_checkpoint(str(root / "run" / "checkpoints")))
    evaluator = evaluation.Evaluator(config, str(edited), images_dir)
    metrics, results = evaluator.evaluate(model, stream=io.StringIO())
    assert metrics["skipped_images"]["counts"] == {"missing_image": 1, "size_mismatch": 1}
    assert metrics["num_images"] == 4 and {r["image_id"] for r in results} <= {i["id"] for i in data["images"][:4]}
    first = evaluator(model)
    predictor = evaluator._predictor
    assert set(first) >= {"segm/AP", "segm/AP50", "bbox/AP", "bbox/AP75"}
    assert evaluator(model) == first and evaluator._predictor is predictor


def test_draw_detections_fills_polygons_and_finds_ray_origins():
    image = np.full((120, 160, 3), 40, np.uint8)
    origin = np.float32([[70.0, 60.0]])
    rays = np.float32([np.linspace(15, 30, 36)])
    polygon = geometry.rays_to_polygon(origin, rays).numpy()
    detections = {"boxes": np.concatenate([polygon.min(1), polygon.max(1)], 1), "scores": np.float32([0.9]),
                  "classes": np.int32([2]), "polygons": polygon}
    drawn = visualize.draw_detections(image, detections, {2: "star"}, draw_rays=True)
    assert drawn.shape == image.shape and drawn.dtype == np.uint8
    inside = geometry.rasterize(polygon[0], 120, 160).numpy()
    assert (drawn[inside] != 40).any(axis=-1).mean() > 0.95
    assert (drawn[5:20, 140:] == 40).all()  # far from the polygon and its tag
    assert (visualize.draw_detections(image, detections, None, score_threshold=0.95) == image).all()
    # after an anisotropic resize the rays are no longer at their angles, but opposite vertices still
    # lie on lines through the origin
    stretched = polygon[0] * np.float32([1.7, 0.6])
    np.testing.assert_allclose(visualize.ray_origin(stretched), origin[0] * [1.7, 0.6], atol=1e-3)


def test_draw_targets_marks_positives_of_a_pipeline_element(tiny_run, tmp_path):
    root, config = tiny_run
    annotations, images_dir = _val(root)
    records_writer.convert(annotations, images_dir, str(tmp_path / "val"), num_shards=1,
                             progress_stream=io.StringIO())
    records = tf.data.TFRecordDataset([str(tmp_path / "val-00000-of-00001.tfrecord")])
    element = tf.data.Dataset.zip((records, tf.data.Dataset.random(seed=0).batch(2)))
    image, targets = next(iter(element.map(pipeline.make_example_fn(config, training=False))))
    targets = {k: v.numpy() for k, v in targets.items()}
    picture = visualize.draw_targets(image.numpy(), targets, config)
    rows, cols = targets["resized_size"]
    assert picture.shape == (rows, cols, 3) and picture.dtype == np.uint8
    plain = visualize.denormalize_image(image.numpy(), "tf")[:rows, :cols]
    points, _ = pyramid.locations(*image.shape[:2], config.polar.grid)
    positives = points[targets["labels"] > 0].round().astype(int)
    assert len(positives) > 0
    assert (picture[positives[:, 1], positives[:, 0]] != plain[positives[:, 1], positives[:, 0]]).any(axis=-1).all()


@pytest.mark.parametrize("rule", sorted(preprocessing.NORMALIZATIONS))
def test_denormalize_inverts_the_pipeline_normalisation(rule):
    rgb = np.random.default_rng(0).integers(0, 256, (4, 5, 3)).astype(np.float32)
    normalized = np.asarray(preprocessing.normalize_image(rgb, rule))
    np.testing.assert_array_equal(visualize.denormalize_image(normalized, rule), rgb.astype(np.uint8))


def test_draw_detections_without_detections_returns_the_image():
    image = np.full((20, 30, 3), 7, np.uint8)
    empty = {"boxes": np.zeros((0, 4)), "scores": np.zeros(0), "classes": np.zeros(0, int),
             "polygons": np.zeros((0, 36, 2))}
    np.testing.assert_array_equal(visualize.draw_detections(image, empty), image)


def _inputs_with_a_fifo(tmp_path):
    import cv2

    inputs = tmp_path / "in"
    inputs.mkdir()
    os.mkfifo(inputs / "pipe.jpg")
    cv2.imwrite(str(inputs / "ok.png"), synthetic.render_image(0, 0, 96, 128)[0][..., ::-1])
    return inputs


def test_expand_inputs_keeps_regular_files_and_reports_the_rest(tmp_path):
    inputs = _inputs_with_a_fifo(tmp_path)
    files, others = predict.expand_inputs([str(inputs), str(inputs / "pipe.jpg"), str(inputs / "*.jpg")])
    assert files == [str(inputs / "ok.png")] and others == [str(inputs / "pipe.jpg")]


@pytest.mark.slow
def test_a_fifo_among_the_inputs_is_skipped_not_read(tiny_run, tmp_path, capsys):
    """Opening a FIFO blocks until someone writes to it: predict must not open one."""
    root, _ = tiny_run
    inputs = _inputs_with_a_fifo(tmp_path)
    status = predict.main(["--model-dir", str(root / "run"), "--images", str(inputs / "*"),
                           "--output-dir", str(tmp_path / "out")])
    assert status == 0
    assert f"skipped: {inputs / 'pipe.jpg'} is not a regular file" in capsys.readouterr().out
