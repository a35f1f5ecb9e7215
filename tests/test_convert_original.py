"""The original-checkpoint converter against PyTorch models written from the facts document
(tests/original_torch.py): file formats, head namings and ray orders, numerical parity of the dense
outputs and of the post-processed detections, refusals, parameter counts, the SavedModel export
and fine-tuning on the synthetic dataset."""

import glob
import io
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="the converter tests need PyTorch: pip install -e '.[convert]'")

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

from polarmask_tf import config as cfg  # noqa: E402
from polarmask_tf import inference  # noqa: E402
from polarmask_tf.cli import convert_original as convert_command  # noqa: E402
from polarmask_tf.conversion import ConversionError, layout, settings  # noqa: E402
from polarmask_tf.conversion import convert as convert_original  # noqa: E402
from polarmask_tf.data import synthetic  # noqa: E402
from polarmask_tf.modeling import preprocessing  # noqa: E402
from polarmask_tf.training import loop  # noqa: E402

import original_torch  # noqa: E402  (needs torch)
from conftest import SHARED_DIR, scheme_named_entries, synthetic_train_records  # noqa: E402

pytestmark = pytest.mark.slow  # end-to-end: exports, conversions, subprocesses; -m "not slow" skips

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
R50_SIZE = "data.image_size=[256,384]"


def _save(net_or_state, path, legacy, meta=None, prefix=None):
    """torch.save as mmcv did: {"meta", "state_dict"}; legacy: the pre-1.6 (non-zip) format.
    prefix: rename the head outputs to "<prefix>_" (same tensors)."""
    state = net_or_state.state_dict() if hasattr(net_or_state, "state_dict") else net_or_state
    if prefix:
        state = {k.replace("bbox_head.fcos_", f"bbox_head.{prefix}_"): v for k, v in state.items()}
    payload = {"meta": meta or {"mmdet_version": "1.0rc0+test", "epoch": 12}, "state_dict": state}
    torch.save(payload, str(path), _use_new_zipfile_serialization=not legacy)
    return path


def _real_image():
    """A COCO photo from ../shared when present, else a synthetic scene (RGB uint8)."""
    import cv2

    photos = sorted(glob.glob(str(SHARED_DIR / "data" / "coco_mini" / "train2017" / "*.jpg")))
    if photos:
        return cv2.cvtColor(cv2.imread(photos[0]), cv2.COLOR_BGR2RGB)
    return synthetic.render_image(0, 0, 300, 400)[0]


def _angle_sorted(dx, dy):
    """Ray end points [..., N, 2] relative to their location, sorted by angle: independent of any index map.
    (Angles are shifted by half a 10-degree step, so no ray sits at the 0 / 2 pi wrap.)"""
    points = np.stack([dx, dy], -1)
    order = np.argsort(np.mod(np.arctan2(dy, dx) + np.pi / 36, 2 * np.pi), axis=-1)
    return np.take_along_axis(points, order[..., None], axis=-2)


def _flat(levels, key):
    return np.concatenate([level[key].reshape(level[key].shape[0], -1, *level[key].shape[3:]) for level in levels], 1)


def _assert_dense_parity(model, net, inputs, prefix):
    """Keras outputs (our ray order) = PyTorch outputs (its own order) within 1e-4 relative."""
    ours = {k: v.numpy() for k, v in model(inputs).items()}
    theirs = original_torch.dense_outputs(net, inputs)
    for key, their_key in (("cls_logits", "cls"), ("centerness", "centerness"), ("boxes", "bbox")):
        reference = _flat(theirs, their_key)
        np.testing.assert_allclose(ours[key], reference, rtol=1e-4, atol=1e-4 * np.abs(reference).max(), err_msg=key)
    # Rays: ours end at (d cos t_k, d sin t_k); theirs where the original's decode puts them.
    rays = _flat(theirs, "mask")
    zeros = np.zeros(rays.shape[:-1], np.float32)
    their_points = original_torch.decode_rays(zeros, zeros, rays, prefix)
    angles = np.arange(36) * np.pi / 18
    mine = _angle_sorted(ours["rays"] * np.cos(angles), ours["rays"] * np.sin(angles))
    theirs_sorted = _angle_sorted(their_points[..., 0], their_points[..., 1])
    np.testing.assert_allclose(mine, theirs_sorted, rtol=1e-4, atol=1e-4 * np.abs(rays).max())
    return ours


def _assert_detections_agree(config, model, net, image, prefix):
    """Post-processing of both sides on a real image: same count, boxes within 0.01 px."""
    inputs, size, scale = preprocessing.preprocess_image(tf.constant(image), config)
    theirs = original_torch.original_detections(
        original_torch.dense_outputs(net, inputs.numpy()[None]), tuple(size.numpy()), tuple(scale.numpy()), prefix
    )
    ours = inference.Predictor(config, model).predict([image])[0]
    assert len(theirs["scores"]) > 5
    assert len(ours["scores"]) == len(theirs["scores"])
    np.testing.assert_allclose(ours["boxes"], theirs["boxes"], atol=0.01)
    np.testing.assert_allclose(ours["scores"], theirs["scores"], rtol=1e-4)
    np.testing.assert_array_equal(ours["classes"], theirs["classes"])
    # Polygons as point sets (the vertex order differs by convention): nearest-point distances.
    distances = np.linalg.norm(ours["polygons"][:, :, None] - theirs["contours"][:, None], axis=-1)
    assert distances.min(axis=2).max() < 0.01 and distances.min(axis=1).max() < 0.01


@pytest.fixture(scope="module")
def r50(tmp_path_factory):
    """A random R-50 PolarMask in PyTorch (fcos_ naming), saved in the legacy format and converted."""
    root = tmp_path_factory.mktemp("r50")
    net = original_torch.randomize(original_torch.OriginalPolarMask("resnet50", "fcos"), seed=0)
    path = _save(net, root / "polar_768_1x_r50.pth", legacy=True)
    report = convert_original.convert(str(path), str(root / "model"), [R50_SIZE], stream=io.StringIO())
    config = cfg.load_config(str(root / "model" / "config.yaml"))
    return net, root, config, inference.load_model(config, str(root / "model")), report


@pytest.fixture(scope="module")
def image():
    return _real_image()


def test_reference_model_has_the_documented_layout():
    """The PyTorch side itself against original_checkpoints.md: 388 keys, their order, 34,739,651 parameters."""
    net = original_torch.OriginalPolarMask("resnet50", "fcos")
    keys = list(net.state_dict())
    assert len(keys) == 388
    assert keys[:2] == ["backbone.conv1.weight", "backbone.bn1.weight"] and keys[-1] == "bbox_head.scales_mask.4.scale"
    assert sum(p.numel() for p in net.parameters()) == 34_739_651
    found = layout.inspect({k: v.numpy() for k, v in net.state_dict().items()})
    assert list(layout.expected_shapes(found)) == [k for k in keys if not k.endswith("num_batches_tracked")]


@pytest.mark.parametrize("backbone, keys, parameters", [
    ("resnet50", 388, 34_739_651), ("resnet101", 694, 53_731_779), ("resnext101_64x4d", 694, 92_637_891),
])
def test_layout_counts_match_the_facts_document(backbone, keys, parameters):
    found = layout.Layout(backbone, "fcos", 80, 36)
    shapes = layout.expected_shapes(found)
    batch_norms = sum(k.endswith(".running_mean") for k in shapes)
    assert len(shapes) + batch_norms == keys  # + one num_batches_tracked per BN
    assert layout.parameter_count(found) == parameters


def test_r50_dense_outputs_match_pytorch_on_a_real_image(r50, image):
    net, _, config, model, report = r50
    inputs = preprocessing.preprocess_image(tf.constant(image), config)[0].numpy()[None]
    assert inputs.shape == (1, 256, 384, 3)
    _assert_dense_parity(model, net, inputs, "fcos")
    assert report["ray_order"] == "old" and report["backbone"] == "resnet50"


def test_r50_detections_match_the_original_inference(r50, image):
    _, _, config, model, _ = r50
    _assert_detections_agree(config, model, r50[0], image, "fcos")


def test_r50_parameter_count_and_zero_backbone_biases(r50):
    net, _, _, model, report = r50
    assert report["original_parameters"] == sum(p.numel() for p in net.parameters()) == 34_739_651
    backbone = model.get_layer("backbone_resnet50")
    biases = [layer.bias for layer in backbone.layers if isinstance(layer, keras.layers.Conv2D) and layer.use_bias]
    assert len(biases) == 53 and not any(np.any(b.numpy()) for b in biases)
    statistics = sum(int(np.prod(v.shape)) for v in model.weights if "moving_" in v.path)
    extra = statistics + sum(int(np.prod(b.shape)) for b in biases)
    assert model.count_params() == report["keras_weights"] == 34_739_651 + extra


def test_r50_config_labels_and_report(r50):
    _, root, config, _, report = r50
    assert config.data.normalization == "caffe_detectron" and config.data.resize == "stretch"
    assert config.data.image_size == (256, 384)  # the --set override; the default is (768, 1280)
    assert config.polar.grid == "original"
    post = config.postprocess
    assert ((post.score_threshold, post.nms_iou_threshold, post.max_detections, post.pre_nms_top_k)
            == (0.05, 0.5, 100, 1000))
    assert post.nms_plus_one and post.rescale == "original" and post.box_source == "box_branch"
    from polarmask_tf.data import coco

    labels = coco.read_label_map(str(root / "model" / inference.LABELS_FILE))
    assert labels.categories[0].name == "person" and labels.categories[-1].category_id == 90
    assert labels.categories[11].category_id == 13  # stop sign: COCO ids have gaps
    assert report["tensors"] == 388 and report["source_bytes"] == os.path.getsize(root / "polar_768_1x_r50.pth")
    assert any("running statistics" in note for note in report["notes"])  # random BN stats are not caffe's 0 / 1
    assert any("assumed the 1x models' 1280x768" in note for note in report["notes"])  # this meta has no config


def test_zip_format_with_polar_naming_and_module_prefix_converts_with_the_head_order(r50, tmp_path, image):
    """The same tensors under 'polar_' names mean rays in the HEAD order: the conversion must
    permute them differently, and the rays must still land where the original's decode puts them."""
    net, _, _, _, _ = r50
    state = {f"module.{k}": v for k, v in net.state_dict().items()}
    path = _save(state, tmp_path / "polar.pth", legacy=False, prefix="polar")
    report = convert_original.convert(str(path), str(tmp_path / "model"), [R50_SIZE], stream=io.StringIO())
    assert report["head_naming"] == "polar" and report["ray_order"] == "head"
    config = cfg.load_config(str(tmp_path / "model" / "config.yaml"))
    model = inference.load_model(config, str(tmp_path / "model"))
    polar_net = original_torch.OriginalPolarMask("resnet50", "polar").eval()
    polar_net.load_state_dict({k[len("module."):].replace("fcos_", "polar_"): v for k, v in state.items()})
    inputs = preprocessing.preprocess_image(tf.constant(image), config)[0].numpy()[None]
    _assert_dense_parity(model, polar_net, inputs, "polar")


def test_resnext101_64x4d_matches_pytorch_at_a_small_input(tmp_path, image):
    net = original_torch.randomize(original_torch.OriginalPolarMask("resnext101_64x4d", "fcos"), seed=1)
    path = _save(net, tmp_path / "x101.pth", legacy=False)
    report = convert_original.convert(str(path), str(tmp_path / "model"), ["data.image_size=[128,256]"],
                                      stream=io.StringIO())
    assert report["backbone"] == "resnext101_64x4d"
    assert report["original_parameters"] == sum(p.numel() for p in net.parameters()) == 92_637_891
    config = cfg.load_config(str(tmp_path / "model" / "config.yaml"))
    assert config.data.normalization == "torch"
    model = inference.load_model(config, str(tmp_path / "model"))
    statistics = sum(int(np.prod(v.shape)) for v in model.weights if "moving_" in v.path)
    assert model.count_params() == 92_637_891 + statistics  # no conv biases in the ResNeXt
    inputs = preprocessing.preprocess_image(tf.constant(image), config)[0].numpy()[None]
    _assert_dense_parity(model, net, inputs, "fcos")
    _assert_detections_agree(config, model, net, image, "fcos")


def test_ray_order_check_on_an_image_confirms_the_order_or_refuses_a_wrong_naming(r50, tmp_path, image):
    """A model whose up/right/down/left rays equal its box sides (as a trained model's nearly do):
    converted with its true naming the check finds that order; the same tensors under the other
    naming are refused unless the order is forced."""
    import copy

    aligned = original_torch.align_rays_with_boxes(copy.deepcopy(r50[0]))
    photo = tmp_path / "photo.png"
    import cv2

    cv2.imwrite(str(photo), image[..., ::-1])
    good = _save(aligned, tmp_path / "aligned.pth", legacy=False)
    report = convert_original.convert(str(good), str(tmp_path / "ok"), [R50_SIZE], stream=io.StringIO(),
                                      verify_image=str(photo))
    errors = report["ray_order_check"]["errors"]
    assert report["ray_order_check"]["best"] == "old" and errors["old"] < 1e-4 and errors["head"] > 0.1
    lying = _save(aligned, tmp_path / "lying.pth", legacy=False, prefix="polar")
    with pytest.raises(ConversionError, match="best in the 'old' order, not the 'head' order"):
        convert_original.convert(str(lying), str(tmp_path / "no"), [R50_SIZE], stream=io.StringIO(),
                                 verify_image=str(photo))
    assert not (tmp_path / "no").exists()


MMDET_CONFIG = '''
# model settings
model = dict(
    type='PolarMask',
    pretrained='open-mmlab://resnet50_caffe',
    backbone=dict(type='ResNet', depth=50, num_stages=4, out_indices=(0, 1, 2, 3), frozen_stages=1,
                  norm_cfg=dict(type='BN', requires_grad=False), style='caffe'),
    bbox_head=dict(type='PolarMask_Head', num_classes=81, in_channels=256, strides=[8, 16, 32, 64, 128]))
test_cfg = dict(nms_pre=1000, min_bbox_size=0, score_thr=0.05, nms=dict(type='nms', iou_thr=0.5), max_per_img=100)
dataset_type = 'Coco_Seg_Dataset'
data_root = 'data/coco/'
img_norm_cfg = dict(mean=[102.9801, 115.9465, 122.7717], std=[1.0, 1.0, 1.0], to_rgb=False)
data = dict(
    imgs_per_gpu=4,
    test=dict(type=dataset_type, ann_file=data_root + 'annotations/instances_val2017.json',
              img_prefix=data_root + 'val2017/', img_scale=(1333, 800), img_norm_cfg=img_norm_cfg,
              size_divisor=128, flip_ratio=0, with_mask=False, test_mode=True, resize_keep_ratio=False))
work_dir = './work_dirs/' + __import__('os').getcwd()
'''


def test_meta_config_is_read_without_running_it():
    found = settings.read_settings({"config": MMDET_CONFIG,
                                    "CLASSES": tuple(n.replace(" ", "_") for _, n in settings.COCO_CATEGORIES)})
    assert ((found.head_prefix, found.backbone, found.test_scale, found.keep_ratio)
            == ("polar", "resnet50", (1333, 800), False))
    assert (found.normalization, found.score_threshold, found.nms_iou_threshold) == ("caffe_detectron", 0.05, 0.5)
    config = settings.converted_config(layout.Layout("resnet50", "polar", 80, 36), found)
    assert config.data.image_size == (800, 1333) and config.data.resize == "stretch"
    assert settings.assumption_notes(found) == []
    assert settings.label_map(80, found.classes).categories[9].name == "traffic light"
    with pytest.raises(ConversionError, match="'fcos_' head naming but meta\\['config'\\] names the 'polar'"):
        settings.ray_order(layout.Layout("resnet50", "fcos", 80, 36), found)
    assert settings.ray_order(layout.Layout("resnet50", "fcos", 80, 36), found, "head") == "head"
    with pytest.raises(ConversionError, match="backbone resnet50 but the weights are a resnet101"):
        settings.converted_config(layout.Layout("resnet101", "polar", 80, 36), found)
    with pytest.raises(ConversionError, match="not a Python config"):
        settings.read_settings({"config": "model = dict(("})


def _refused(path, tmp_path, message):
    output = tmp_path / "refused"
    err = io.StringIO()
    with pytest.raises(ConversionError, match=message):
        convert_original.convert(str(path), str(output), stream=err)
    assert not output.exists() and not glob.glob(str(output) + "*"), "nothing may be written"


@pytest.fixture(scope="module")
def r50_state(r50):
    return dict(r50[0].state_dict())


@pytest.mark.parametrize("change, message", [
    ("missing", r"lacks 1 key\(s\) of the resnet50 PolarMask layout, first 'neck.fpn_convs.3.conv.bias'"),
    ("extra", r"key\(s\) the resnet50 PolarMask layout does not: 'bbox_head.extra.weight'"),
    ("shape", r"'bbox_head.fcos_reg.bias' has shape \[5\], the layout needs \[4\]"),
    ("dcn", r"deformable-convolution \(DCN\).*no deformable convolution"),
    ("scalar", r"state_dict\['backbone.conv1.weight'\] is a str, not a tensor"),
])
def test_bad_state_dicts_are_refused_naming_the_key(r50_state, tmp_path, change, message):
    state = dict(r50_state)
    if change == "missing":
        del state["neck.fpn_convs.3.conv.bias"]
    elif change == "extra":
        state["bbox_head.extra.weight"] = torch.zeros(3)
    elif change == "shape":
        state["bbox_head.fcos_reg.bias"] = torch.zeros(5)
    elif change == "dcn":
        state["backbone.layer2.0.conv2_offset.weight"] = torch.zeros(18, 128, 3, 3)
    else:
        state["backbone.conv1.weight"] = "not a tensor"
    _refused(_save(state, tmp_path / "bad.pth", legacy=False), tmp_path, message)


def test_random_bytes_and_a_missing_file_are_refused(tmp_path):
    path = tmp_path / "noise.pth"
    path.write_bytes(np.random.default_rng(0).bytes(4096))
    _refused(path, tmp_path, r"noise.pth cannot be read as a PyTorch checkpoint")
    _refused(tmp_path / "absent.pth", tmp_path, r"absent.pth: no such file")


class _Payload:
    """Unpickling this would run code: it reduces to exec of a statement that writes a file."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return exec, (f"open({str(self.marker)!r}, 'w').write('ran')",)


@pytest.mark.parametrize("legacy", [True, False])
def test_a_pickle_that_would_run_code_is_refused_and_does_not_run(tmp_path, legacy):
    marker = tmp_path / "code_ran"
    path = tmp_path / "evil.pth"
    torch.save({"state_dict": {"backbone.conv1.weight": torch.zeros(1)}, "meta": _Payload(marker)}, str(path),
               _use_new_zipfile_serialization=not legacy)
    with open(path, "rb") as stream:  # the file really carries the call
        assert b"exec" in stream.read()
    _refused(path, tmp_path, r"evil.pth cannot be read as a PyTorch checkpoint of tensors and plain containers")
    assert not marker.exists()
    pickle.loads(pickle.dumps(_Payload(marker)))  # the control: plain unpickling does run it
    assert marker.exists()


def test_command_line_refuses_a_non_empty_output_dir_and_reports_success(r50, tmp_path):
    _, root, _, _, _ = r50
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "keep.txt").write_text("mine")
    out, err = io.StringIO(), io.StringIO()
    sys_stderr, sys.stderr = sys.stderr, err
    try:
        assert convert_command.main(["--pth", str(root / "polar_768_1x_r50.pth"), "--model-dir", str(busy)],
                                     stream=out) == 2
    finally:
        sys.stderr = sys_stderr
    assert "is not empty" in err.getvalue() and (busy / "keep.txt").read_text() == "mine"


def test_export_of_a_converted_model_reproduces_its_detections(r50, image, tmp_path):
    _, root, config, model, _ = r50
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    ran = subprocess.run([os.path.join(os.path.dirname(sys.executable), "polarmask-export"), "--model-dir",
                          str(root / "model"), "--export-dir", str(tmp_path / "export")],
                         capture_output=True, text=True, timeout=600, env=env, cwd=ROOT)
    assert ran.returncode == 0, ran.stderr
    assert "person, bicycle" in ran.stdout
    served = tf.saved_model.load(str(tmp_path / "export" / "1")).signatures["serve_images"]
    outputs = {k: v.numpy() for k, v in served(images=tf.constant(image[None])).items()}
    expected = inference.Predictor(config, model).predict([image])[0]
    n = int(outputs["num_detections"][0])
    assert n == len(expected["scores"]) > 5
    np.testing.assert_allclose(outputs["detection_boxes"][0, :n], expected["boxes"], atol=1e-3)
    np.testing.assert_allclose(outputs["detection_scores"][0, :n], expected["scores"], atol=1e-5)
    coco_ids = np.array([c.category_id for c in settings.label_map(80).categories])
    np.testing.assert_array_equal(outputs["detection_classes"][0, :n], coco_ids[expected["classes"] - 1])


def test_fine_tuning_a_converted_model_on_synthetic_classes(r50, tmp_path):
    """train.init_checkpoint: every converted weight but the class conv (80 -> 7 classes) at step 0;
    a few steps train; the frozen stem and BNs stay as converted."""
    _, root, _, converted, _ = r50
    records = synthetic_train_records(tmp_path, num_images=8, seed=5, min_size=120, max_size=160, num_shards=1)
    config = cfg.load_config(str(root / "model" / "config.yaml"), [
        f"data.train_files={records}/train-*.tfrecord", "model.num_classes=7",
        f"train.init_checkpoint={root / 'model'}",
        "data.image_size=[128,128]", "data.batch_size=2", "data.shuffle_buffer=8", "train.total_steps=3",
        "train.warmup_steps=1", "train.base_learning_rate=0.002", "train.log_every=1", "train.checkpoint_every=100",
    ])
    trainer = loop.Trainer(config, str(tmp_path / "finetune"))
    assert trainer.train(total_steps=0) == []
    converted_weights = {v.path: v.numpy() for v in converted.weights}
    fresh = []
    for variable in trainer.model.weights:
        if "cls_logits" in variable.path:
            fresh.append(variable.path)
            assert variable.shape[-1] == 7
        else:
            np.testing.assert_array_equal(variable.numpy(), converted_weights[variable.path], err_msg=variable.path)
    assert sorted(fresh) == ["head/cls_logits/bias", "head/cls_logits/kernel"]
    np.testing.assert_allclose(trainer.model.get_layer("head").cls_logits.bias.numpy(), -np.log(99.0), rtol=1e-6)

    history = trainer.train(stream=io.StringIO())
    assert len(history) == 3 and all(np.isfinite(h["total_loss"]) for h in history)
    changed = {v.path for v in trainer.model.weights
               if "cls_logits" not in v.path and not np.array_equal(v.numpy(), converted_weights[v.path])}
    assert any(p.startswith("head/ray_tower") for p in changed) and any(p.startswith("fpn_") for p in changed)
    assert not [p for p in changed if "conv1_" in p or "conv2_" in p or "_bn/" in p], "frozen layers moved"
    assert (tmp_path / "finetune" / inference.LABELS_FILE).exists()


def test_a_conversion_from_and_to_ram_loads_back_with_the_same_weights(r50, monkeypatch, tmp_path):
    """ram:// stands for a bucket: the .pth read from it, the model dir written to it in place
    with conversion.json last."""
    from polarmask_tf import fileio

    _, root, _, model, _ = r50
    monkeypatch.chdir(tmp_path)
    bucket = "ram://conversion"
    fileio.copy(str(root / "polar_768_1x_r50.pth"), f"{bucket}/polar_768_1x_r50.pth")
    report = convert_original.convert(f"{bucket}/polar_768_1x_r50.pth", f"{bucket}/model", [R50_SIZE],
                                      stream=io.StringIO())
    assert report["source"] == f"{bucket}/polar_768_1x_r50.pth"
    assert fileio.read_json(f"{bucket}/model/conversion.json") == report
    assert sorted(tf.io.gfile.listdir(bucket)) == ["model", "polar_768_1x_r50.pth"]  # no staging left
    config = cfg.load_config(f"{bucket}/model/config.yaml")
    loaded = inference.load_model(config, f"{bucket}/model")
    assert loop.weights_digest(loaded) == loop.weights_digest(model)
    assert not scheme_named_entries(tmp_path)
