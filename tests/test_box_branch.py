"""model.box_branch false: no box tower, output or loss; boxes from the polygon extent in
post-processing and the export; checkpoints of one setting refuse to load into the other."""

import os

import numpy as np
import pytest
import tensorflow as tf

from polarmask_tf import config as cfg
from polarmask_tf import inference, losses, postprocess
from polarmask_tf.data import synthetic
from polarmask_tf.modeling import pyramid
from polarmask_tf.modeling.model import build_model
from polarmask_tf.training import loop

from conftest import synthetic_train_records

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QUICKSTART = os.path.join(ROOT, "configs", "quickstart.yaml")
TINY = ["data.image_size=[128, 128]", "model.prior_prob=0.2", "postprocess.max_detections=12",
        "model.fpn_channels=8", "model.head_channels=16", "model.head_convs=2", "model.group_norm_groups=4"]
DEVNULL = open(os.devnull, "w")


def _text(flag):
    return "true" if flag else "false"


@pytest.fixture(scope="module")
def configs():
    return {flag: cfg.load_config(QUICKSTART, [*TINY, f"model.box_branch={_text(flag)}"]) for flag in (True, False)}


@pytest.fixture(scope="module")
def models(configs):
    return {flag: build_model(config) for flag, config in configs.items()}


@pytest.fixture(scope="module")
def model_dirs(configs, models, tmp_path_factory):
    """A model dir (config.yaml + checkpoint) per setting."""
    root = tmp_path_factory.mktemp("box_branch")
    dirs = {}
    for flag, config in configs.items():
        model_dir = root / f"box_{_text(flag)}"
        model_dir.mkdir()
        cfg.dump_config(config, str(model_dir / "config.yaml"))
        tf.train.Checkpoint(model=models[flag]).save(str(model_dir / "checkpoints" / "ckpt"))
        dirs[flag] = str(model_dir)
    return dirs


@pytest.fixture(scope="module")
def scene():
    return synthetic.draw_image(np.random.default_rng(7), 150, 120)[0]


def _polygon_extents(polygons):
    return np.concatenate([polygons.min(axis=1), polygons.max(axis=1)], axis=-1)


def test_the_default_keeps_the_box_branch_and_the_nobox_config_drops_it():
    assert cfg.Config().model.box_branch is True
    assert cfg.load_config(os.path.join(ROOT, "configs", "polarmask_r50_fpn_1x_coco.yaml")).model.box_branch
    nobox = cfg.load_config(os.path.join(ROOT, "configs", "polarmask_r50_nobox_1x_coco.yaml"))
    assert nobox.model.box_branch is False and nobox.model.backbone == "resnet50"
    with pytest.raises(cfg.ConfigError, match=r"postprocess.box_source: 'box_branch' .*model.box_branch is false"):
        cfg.load_config(QUICKSTART, ["model.box_branch=false", "postprocess.box_source=box_branch"])
    with pytest.raises(cfg.ConfigError, match="model.box_branch: expected bool"):
        cfg.load_config(QUICKSTART, ["model.box_branch=3"])


def _dotted(config):
    """{"section.key": value} of a config (its sections hold no nested sections)."""
    return {f"{section}.{key}": value
            for section, values in cfg.to_dict(config).items() for key, value in values.items()}


def test_the_nobox_quickstart_is_the_quickstart_with_three_changes_and_the_same_head_cost():
    box = cfg.load_config(QUICKSTART)
    nobox = cfg.load_config(os.path.join(ROOT, "configs", "quickstart_nobox.yaml"))
    box_keys, nobox_keys = _dotted(box), _dotted(nobox)
    changed = {key: (box_keys[key], nobox_keys[key]) for key in box_keys if box_keys[key] != nobox_keys[key]}
    assert changed == {"model.box_branch": (True, False), "model.head_convs": (2, 3),
                       "train.base_learning_rate": (0.01, 0.015)}
    # three towers of 2 convs against two of 3, at 64 channels
    heads = [build_model(config).get_layer("head").count_params() for config in (box, nobox)]
    assert heads == [249658, 247345]


def test_without_the_box_branch_there_are_no_box_variables_and_exactly_its_parameters_fewer(configs, models):
    with_box, without = models[True], models[False]
    assert [w.path for w in without.weights if "box" in w.path] == []
    outputs = without(tf.zeros([1, 128, 128, 3]))
    assert sorted(outputs) == ["centerness", "cls_logits", "rays"]
    assert "boxes" in with_box(tf.zeros([1, 128, 128, 3]))
    model = configs[True].model
    c, f = model.head_channels, model.fpn_channels
    tower = 9 * f * c + (model.head_convs - 1) * 9 * c * c + model.head_convs * 2 * c  # convs (no bias) + GN
    box_pred = 9 * c * 4 + 4
    box_scales = len(pyramid.STRIDES)
    assert with_box.count_params() - without.count_params() == tower + box_pred + box_scales
    assert sum(int(np.prod(w.shape)) for w in with_box.weights if "box" in w.path) == tower + box_pred + box_scales


def test_the_losses_have_no_box_term_without_box_outputs():
    rng = np.random.default_rng(0)
    b, p, c, n = 2, 30, 3, 8
    labels = np.where(rng.random([b, p]) < 0.3, rng.integers(1, c + 1, [b, p]), 0).astype(np.int32)
    positive = (labels > 0)[..., None]
    targets = {
        "labels": tf.constant(labels),
        "rays": tf.constant(np.where(positive, rng.uniform(2, 20, [b, p, n]), 0).astype(np.float32)),
        "boxes": tf.constant(np.where(positive, rng.uniform(2, 20, [b, p, 4]), 0).astype(np.float32)),
        "centerness": tf.constant(np.where(labels > 0, rng.uniform(0.1, 1, [b, p]), 0).astype(np.float32)),
    }
    outputs = {
        "cls_logits": tf.constant(rng.normal(size=[b, p, c]).astype(np.float32)),
        "centerness": tf.constant(rng.normal(size=[b, p]).astype(np.float32)),
        "boxes": tf.constant(rng.uniform(1, 25, [b, p, 4]).astype(np.float32)),
        "rays": tf.constant(rng.uniform(1, 25, [b, p, n]).astype(np.float32)),
    }
    full = losses.polarmask_losses(outputs, targets, jit=False)
    nobox = losses.polarmask_losses({k: v for k, v in outputs.items() if k != "boxes"}, targets, jit=False)
    assert sorted(nobox) == ["centerness_loss", "cls_loss", "ray_loss", "total_loss"]
    assert float(full["box_loss"]) > 0
    for key in ("cls_loss", "ray_loss", "centerness_loss"):
        assert float(nobox[key]) == pytest.approx(float(full[key]), rel=1e-6)
    np.testing.assert_allclose(
        nobox["total_loss"], nobox["cls_loss"] + nobox["ray_loss"] + nobox["centerness_loss"], rtol=1e-6)


def test_postprocess_boxes_are_the_polygon_extents_without_the_box_branch(configs, models, scene):
    config, model = configs[False], models[False]
    assert config.postprocess.box_source == "auto"
    (found,) = inference.Predictor(config, model).predict([scene])
    assert len(found["scores"]) > 0
    np.testing.assert_allclose(found["boxes"], _polygon_extents(found["polygons"]), atol=1e-4)
    with_boxes = {"cls_logits": None, "boxes": None}
    assert postprocess.effective_box_source(config.postprocess, with_boxes) == "box_branch"
    assert postprocess.effective_box_source(config.postprocess, {"cls_logits": None}) == "polygon"
    explicit = cfg.PostprocessConfig(box_source="box_branch")
    with pytest.raises(ValueError, match="model has no box branch"):
        postprocess.effective_box_source(explicit, {"cls_logits": None})


@pytest.mark.parametrize("trained", [True, False])
def test_a_checkpoint_of_one_setting_refuses_to_load_into_the_other(configs, model_dirs, trained):
    other = not trained
    message = (rf"ckpt-1 was trained with model.box_branch={_text(trained)}, the config has {_text(other)}: "
               rf"set model.box_branch={_text(trained)}")
    with pytest.raises(inference.CheckpointMismatchError, match=message):
        inference.load_model(configs[other], model_dirs[trained])
    with pytest.raises(inference.CheckpointMismatchError, match=message):
        loop.initialize_from(build_model(configs[other]), configs[other], model_dirs[trained])
    loaded = inference.load_model(configs[trained], model_dirs[trained])
    assert any("box" in w.path for w in loaded.weights) == trained


def test_converted_configs_keep_the_box_branch_and_refuse_removing_it():
    from polarmask_tf.conversion import ConversionError, layout, settings

    found = settings.OriginalSettings()
    converted = layout.Layout("resnet50", "polar", 80, 36)
    config = settings.converted_config(converted, found)
    assert config.model.box_branch and config.postprocess.box_source == "box_branch"
    with pytest.raises(ConversionError, match="model.box_branch=false, but the original's checkpoints always have"):
        settings.converted_config(converted, found, ["model.box_branch=false"])


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    return synthetic_train_records(tmp_path_factory.mktemp("train"), 4, seed=5, min_size=128, max_size=160,
                                   num_shards=1)


@pytest.mark.slow
def test_training_without_the_box_branch_runs_evaluates_and_logs_no_box_loss(records, tmp_path, capsys):
    from polarmask_tf.cli import predict
    from polarmask_tf.training import curves

    synthetic_dir = records.parent / "synthetic"
    overrides = [
        f"data.train_files={records}/train-*.tfrecord", "data.batch_size=4", "data.image_size=[128, 128]",
        "data.hflip_prob=0", "data.deterministic=true", "data.max_instances=8", "data.max_vertices=48",
        "train.warmup_steps=5", "train.decay_steps=[]", "train.total_steps=30", "train.log_every=10",
        "train.checkpoint_every=1000", "train.eval_every=30",
        f"train.eval_annotations={synthetic_dir}/annotations/instances_train.json",
        f"train.eval_images_dir={synthetic_dir}/train", "model.box_branch=false",
    ]
    config = cfg.load_config(QUICKSTART, overrides)
    model_dir = str(tmp_path / "run")
    history = loop.Trainer(config, model_dir).train(stream=DEVNULL)
    assert len(history) == 30 and all("box_loss" not in h for h in history)
    totals = [h["total_loss"] for h in history]
    assert np.all(np.isfinite(totals))
    assert np.mean(totals[-5:]) < np.mean(totals[:5])
    scalars = curves.read_scalars(model_dir)
    assert "loss/box_loss" not in scalars
    assert {"loss/total_loss", "loss/cls_loss", "loss/ray_loss", "loss/centerness_loss"} <= set(scalars)
    assert [step for step, _ in scalars["eval/bbox/AP50"]] == [30]
    curves.plot(scalars, str(tmp_path / "curves.png"), "no box branch")
    assert (tmp_path / "curves.png").stat().st_size > 0

    # Resuming in the same model dir with the box branch back is refused, naming the key; so is
    # loading the training checkpoint (model and optimizer: its variables are keyed by the optimizer's
    # paths) into a model with the branch.
    with_box = cfg.apply_overrides(config, ["model.box_branch=true"])
    with pytest.raises(loop.ArchitectureMismatchError, match="model.box_branch: False there, True here"):
        loop.Trainer(with_box, model_dir)
    with pytest.raises(inference.CheckpointMismatchError, match="trained with model.box_branch=false, the config has"):
        inference.load_model(with_box, model_dir)
    assert not any("box" in w.path for w in inference.load_model(config, model_dir).weights)

    capsys.readouterr()
    out = tmp_path / "predicted"
    status = predict.main(["--model-dir", model_dir, "--images", str(synthetic_dir / "train"), "--output-dir",
                           str(out), "--score-threshold", "0.0"])
    assert status == 0 and (out / "results.json").exists()


@pytest.mark.slow
def test_the_export_without_the_box_branch_returns_polygon_extents_as_boxes(configs, models, scene, tmp_path):
    import cv2

    from polarmask_tf.data import coco
    from polarmask_tf.serving import export, warmup

    config = export.inference_config(configs[False])
    label_map = coco.LabelMap(tuple(coco.Category(k, k, f"shape {k}") for k in range(1, 8)))
    version = export.export(config, models[False], label_map, str(tmp_path / "export"), version=1, mask_size=8)
    loaded = tf.saved_model.load(version)
    ok, png = cv2.imencode(".png", np.ascontiguousarray(scene[..., ::-1]))
    assert ok
    outputs = loaded.signatures["serving_default"](image_bytes=tf.constant([png.tobytes()]))
    n = int(outputs["num_detections"][0])
    assert n > 0
    polygons = outputs["detection_polygons"][0, :n].numpy()
    np.testing.assert_allclose(outputs["detection_boxes"][0, :n], _polygon_extents(polygons), atol=1e-4)
    images = loaded.signatures["serve_images"](images=tf.constant(scene[None]))
    np.testing.assert_allclose(images["detection_boxes"][0, :n], outputs["detection_boxes"][0, :n], atol=1e-4)
    for log in warmup.read_warmup_requests(os.path.join(version, *warmup.WARMUP_FILE)):
        request = log.predict_log.request.inputs["image_bytes"]
        answer = loaded.signatures["serving_default"](image_bytes=tf.constant(list(request.string_val)))
        assert answer["detection_boxes"].shape[0] == len(request.string_val)
