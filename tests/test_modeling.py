"""Backbones, FPN, PolarHead and the assembled model: layout, dtypes, parameter counts, init, saving,
freezing, weight loading and input checks. Tiny models at 128 x 128 keep the file fast."""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from polarmask_tf import config as config_lib
from polarmask_tf.modeling import backbones, fpn, head, pyramid
from polarmask_tf.modeling import model as model_lib

from conftest import shared_path

MOBILENET_WEIGHTS = ("weights", "mobilenet_v2_1.0_imagenet", "mobilenet_v2_1.0_imagenet_no_top.weights.h5")
PYRAMID_LAYERS = ("fpn_output_p3", "fpn_output_p4", "fpn_output_p5", "fpn_p6", "fpn_p7")


def tiny_config(**model_overrides):
    values = dict(
        backbone="tiny", backbone_weights=None, freeze_stem=False, freeze_batchnorm=False, num_classes=3,
        fpn_channels=32, head_channels=32, head_convs=2, group_norm_groups=8,
    )
    values.update(model_overrides)
    return config_lib.Config(model=config_lib.ModelConfig(**values))


def random_images(batch, height, width, seed=0):
    return np.random.default_rng(seed).uniform(-1.0, 1.0, (batch, height, width, 3)).astype(np.float32)


@pytest.fixture(scope="module")
def tiny_model():
    return model_lib.build_model(tiny_config())


@pytest.fixture(scope="module")
def tiny_outputs(tiny_model):
    images = random_images(2, 128, 128)
    return images, {key: value.numpy() for key, value in tiny_model(images).items()}


def per_level_outputs(model, images):
    """The head's per-level outputs, computed from the model's own pyramid layers."""
    pyramid = keras.Model(model.input, [model.get_layer(name).output for name in PYRAMID_LAYERS])(images)
    return model.get_layer("head")(pyramid)


@pytest.mark.parametrize("height, width", [(128, 128), (256, 384)])
def test_output_shapes_and_flattened_layout(tiny_model, height, width):
    images = random_images(2, height, width, seed=1)
    outputs = tiny_model(images)
    shapes = pyramid.level_shapes(height, width)
    num_points = sum(h * w for h, w in shapes)
    assert num_points == pyramid.num_locations(height, width)
    assert num_points == {(128, 128): 341, (256, 384): 2046}[(height, width)]
    assert outputs["cls_logits"].shape == (2, num_points, 3)
    assert outputs["centerness"].shape == (2, num_points)
    assert outputs["boxes"].shape == (2, num_points, 4)
    assert outputs["rays"].shape == (2, num_points, 36)

    per_level = per_level_outputs(tiny_model, images)
    offset = 0
    for (h, w), level in zip(shapes, per_level, strict=True):
        assert level["rays"].shape == (2, h, w, 36)
        for key in model_lib.OUTPUT_KEYS:
            expected = level[key].numpy()
            flat = outputs[key].numpy()[:, offset : offset + h * w]
            np.testing.assert_allclose(flat, expected.reshape(flat.shape), rtol=1e-6, atol=1e-6)
        # row-major, x fastest: location (row i, column j) sits at offset + i * w + j
        i, j = h - 1, min(1, w - 1)
        np.testing.assert_allclose(outputs["rays"][1, offset + i * w + j], level["rays"][1, i, j], rtol=1e-6)
        offset += h * w
    assert offset == num_points


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_outputs_are_float32_under_mixed_precision(policy):
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(policy)
    try:
        model = model_lib.build_model(tiny_config())
        outputs = model(random_images(1, 128, 128))
        compute_dtype = model.get_layer("head").compute_dtype
        scales = [v for v in model.get_layer("head").weights if "scales" in v.path]
    finally:
        keras.mixed_precision.set_global_policy(previous)
    assert compute_dtype == policy.split("_")[1]
    for key, value in outputs.items():
        assert value.dtype == tf.float32, key
        assert np.all(np.isfinite(value.numpy())), key
    assert [v.dtype for v in scales] == ["float32", "float32"]


def test_tv11_head_parameter_count():
    polar_head = head.PolarHead(num_classes=80, num_rays=36, channels=256, num_convs=4, groups=32)
    polar_head.build([(None, None, None, 256)] * 5)
    assert polar_head.count_params() == 7_362_947
    assert [v.shape for v in polar_head.weights if "scales" in v.path] == [(5,), (5,)]


def test_tv11_fpn_parameter_count_on_resnet50_channels():
    inputs = [keras.Input((None, None, c)) for c in (512, 1024, 2048)]
    pyramid = keras.Model(inputs, fpn.build_fpn(inputs, channels=256))
    assert pyramid.count_params() == 3_868_672
    c3 = np.zeros((1, 16, 24, 512), np.float32)
    shapes = [p.shape for p in pyramid([c3, np.zeros((1, 8, 12, 1024)), np.zeros((1, 4, 6, 2048))])]
    assert shapes == [(1, 16, 24, 256), (1, 8, 12, 256), (1, 4, 6, 256), (1, 2, 3, 256), (1, 1, 2, 256)]


def test_initial_predictions(tiny_model, tiny_outputs):
    _, outputs = tiny_outputs
    bias = tiny_model.get_layer("head").cls_logits.bias.numpy()
    np.testing.assert_allclose(bias, -math.log(0.99 / 0.01), rtol=1e-6)
    probabilities = 1.0 / (1.0 + np.exp(-outputs["cls_logits"]))
    assert abs(probabilities.mean() - 0.01) < 0.002
    assert np.all((probabilities > 0.005) & (probabilities < 0.02))
    for key in ("boxes", "rays"):
        assert abs(np.median(outputs[key]) - 1.0) < 0.1, key
        assert np.all((outputs[key] > 0.5) & (outputs[key] < 2.0)), key
    scales = [v.numpy() for v in tiny_model.get_layer("head").weights if "scales" in v.path]
    np.testing.assert_array_equal(np.concatenate(scales), np.ones(10))


def test_distance_exponent_is_clipped():
    polar_head = head.PolarHead(num_classes=2, num_rays=8, channels=8, num_convs=1, groups=4)
    polar_head.build([(None, None, None, 8)] * 5)
    polar_head.ray_pred.bias.assign(np.full(8, 200.0, np.float32))
    rays = polar_head([np.ones((1, 2, 2, 8), np.float32)] * 5)[0]["rays"].numpy()
    np.testing.assert_allclose(rays, math.exp(20.0), rtol=1e-5)


def test_keras_save_and_load_round_trip(tiny_model, tiny_outputs, tmp_path):
    images, outputs = tiny_outputs
    path = tmp_path / "tiny.keras"
    tiny_model.save(path)
    loaded = keras.saving.load_model(path)
    assert loaded.name == tiny_model.name
    assert isinstance(loaded.get_layer("head"), head.PolarHead)
    reloaded = loaded(images)
    for key in model_lib.OUTPUT_KEYS:
        np.testing.assert_array_equal(reloaded[key].numpy(), outputs[key], err_msg=key)


@pytest.fixture(scope="module")
def frozen_mobilenet():
    model_config = config_lib.ModelConfig(backbone="mobilenet_v2", freeze_stem=True, freeze_batchnorm=True)
    return backbones.build_backbone(model_config)


def test_freezing_mobilenet_v2(frozen_mobilenet):
    stem = ("Conv1", "bn_Conv1", "expanded_conv_", "block_1_", "block_2_")
    weighted = [layer for layer in frozen_mobilenet.layers if layer.weights]
    for layer in weighted:
        frozen = layer.name.startswith(stem) or isinstance(layer, keras.layers.BatchNormalization)
        assert layer.trainable is not frozen, layer.name
    names = {layer.name for layer in weighted if layer.trainable}
    assert {"block_3_expand", "block_10_expand", "Conv_1"} <= names
    assert not any(name.startswith(stem) for name in names)
    trainable_paths = {v.path for v in frozen_mobilenet.trainable_variables}
    assert "Conv1/kernel" not in trainable_paths and "block_3_expand/kernel" in trainable_paths
    assert not any(path.endswith(("gamma", "beta")) for path in trainable_paths)


def test_frozen_batchnorm_runs_in_inference_mode(frozen_mobilenet):
    images = random_images(2, 64, 64)
    bn = frozen_mobilenet.get_layer("block_3_expand_BN")
    mean = bn.moving_mean.numpy().copy()
    training = frozen_mobilenet(images, training=True)[2].numpy()
    inference = frozen_mobilenet(images, training=False)[2].numpy()
    np.testing.assert_array_equal(training, inference)
    np.testing.assert_array_equal(bn.moving_mean.numpy(), mean)


def test_unfrozen_backbone_is_fully_trainable():
    backbone = backbones.build_backbone(
        config_lib.ModelConfig(backbone="tiny", freeze_stem=False, freeze_batchnorm=False)
    )
    assert all(layer.trainable for layer in backbone.layers)
    frozen = backbones.build_backbone(config_lib.ModelConfig(backbone="tiny", freeze_stem=True, freeze_batchnorm=False))
    assert [layer.name for layer in frozen.layers if not layer.trainable] == ["tiny_conv1", "tiny_bn1", "tiny_conv1b",
                                                                             "tiny_bn1b"]


def test_frozen_layers_are_not_model_trainable_variables(tmp_path):
    model = model_lib.build_model(tiny_config(freeze_stem=True, freeze_batchnorm=True))
    paths = {v.path for v in model.trainable_variables}
    assert "tiny_conv1/kernel" not in paths and "tiny_conv2/kernel" in paths
    assert not any(path.startswith("tiny_bn") for path in paths)
    assert "head/box_scales" in paths and "fpn_p7/kernel" in paths
    model.save(tmp_path / "frozen.keras")
    loaded = keras.saving.load_model(tmp_path / "frozen.keras")
    assert {v.path for v in loaded.trainable_variables} == paths


def test_resnet50_features_and_frozen_stages():
    backbone = backbones.build_backbone(config_lib.ModelConfig(backbone="resnet50"))
    c3, c4, c5 = backbone(random_images(1, 128, 128))
    assert (c3.shape, c4.shape, c5.shape) == ((1, 16, 16, 512), (1, 8, 8, 1024), (1, 4, 4, 2048))
    for layer in backbone.layers:
        if layer.weights:
            frozen = layer.name.startswith(("conv1_", "conv2_")) or isinstance(layer, keras.layers.BatchNormalization)
            assert layer.trainable is not frozen, layer.name


@pytest.mark.slow
def test_mobilenet_v2_loads_shared_weights(frozen_mobilenet):
    path = shared_path(*MOBILENET_WEIGHTS)
    loaded = backbones.build_backbone(config_lib.ModelConfig(backbone="mobilenet_v2", backbone_weights=str(path)))
    reference = keras.applications.MobileNetV2(include_top=False, weights=str(path), input_shape=(None, None, 3))
    images = random_images(1, 128, 128, seed=2)
    c3, c4, c5 = (c.numpy() for c in loaded(images))
    assert (c3.shape, c4.shape, c5.shape) == ((1, 16, 16, 192), (1, 8, 8, 576), (1, 4, 4, 1280))
    np.testing.assert_allclose(c5, reference(images).numpy(), rtol=1e-5, atol=1e-5)
    random_c5 = frozen_mobilenet(images)[2].numpy()
    assert np.abs(c5 - random_c5).mean() > 0.1 * np.abs(c5).mean()


def test_missing_weights_file_names_the_path(tmp_path):
    missing = tmp_path / "nowhere" / "mobilenet.weights.h5"
    model_config = config_lib.ModelConfig(backbone="mobilenet_v2", backbone_weights=str(missing))
    with pytest.raises(FileNotFoundError, match="nowhere/mobilenet.weights.h5"):
        backbones.build_backbone(model_config)


def test_weights_file_that_does_not_fit(tmp_path):
    other = keras.Sequential([keras.Input((None, None, 3)), keras.layers.Conv2D(4, 3, name="other")])
    path = tmp_path / "other.weights.h5"
    other.save_weights(path)
    model_config = config_lib.ModelConfig(backbone="mobilenet_v2", backbone_weights=str(path))
    with pytest.raises(ValueError, match=r"other\.weights\.h5.*does not fit backbone 'mobilenet_v2'"):
        backbones.build_backbone(model_config)
    not_keras = tmp_path / "weights.pth"
    not_keras.write_bytes(b"\0")
    with pytest.raises(ValueError, match="not a Keras 3 .weights.h5"):
        backbones.build_backbone(config_lib.ModelConfig(backbone="mobilenet_v2", backbone_weights=str(not_keras)))


@pytest.mark.parametrize("weights", ["imagenet", "some/file.weights.h5"])
def test_tiny_backbone_rejects_pretrained_weights(weights):
    with pytest.raises(ValueError, match="'tiny' has no pretrained weights"):
        backbones.build_backbone(config_lib.ModelConfig(backbone="tiny", backbone_weights=weights))


def test_unknown_backbone():
    with pytest.raises(ValueError, match="unknown backbone"):
        backbones.build_backbone(config_lib.ModelConfig(backbone="vgg16"))


@pytest.mark.parametrize("height, width", [(192, 128), (128, 130)])
def test_input_size_not_multiple_of_128_is_rejected(tiny_model, height, width):
    images = random_images(1, height, width)
    with pytest.raises(ValueError, match=f"multiples of 128 \\(got {height} x {width}\\)"):
        tiny_model(images)

    # sizes only known when the graph runs: the run-time assertion, before any backbone shape error
    dynamic = tf.function(tiny_model, input_signature=[tf.TensorSpec([None, None, None, 3], tf.float32)])
    with pytest.raises(tf.errors.InvalidArgumentError, match=f"multiples of 128.*\\[{height} {width}\\]"):
        dynamic(images)
    assert dynamic(random_images(1, 256, 128))["rays"].shape == (1, pyramid.num_locations(256, 128), 36)


def _numpy_conv(x, kernel, bias, stride, pad):
    """Reference 2D convolution: x [H, W, I], kernel [k, k, I, O], symmetric zero padding `pad`."""
    x = np.pad(x, ((pad, pad), (pad, pad), (0, 0)))
    k = kernel.shape[0]
    rows, cols = (x.shape[0] - k) // stride + 1, (x.shape[1] - k) // stride + 1
    out = np.zeros((rows, cols, kernel.shape[-1]))
    for i in range(rows):
        for j in range(cols):
            window = x[i * stride : i * stride + k, j * stride : j * stride + k]
            out[i, j] = np.tensordot(window, kernel, axes=3) + bias
    return out


@pytest.mark.parametrize("p5_size", [(4, 6), (3, 5)])
def test_p6_and_p7_are_stride_2_convs_with_one_pixel_padding(p5_size):
    """As the original's conv3x3 s2 p1: on an even map Keras "same" would pad bottom/right only."""
    inputs = [keras.Input((None, None, c)) for c in (4, 4, 4)]
    pyramid = keras.Model(inputs, fpn.build_fpn(inputs, channels=8))
    rng = np.random.default_rng(0)
    h, w = p5_size
    features = [rng.normal(size=(1, h * s, w * s, 4)).astype(np.float32) for s in (4, 2, 1)]
    p5, p6, p7 = (np.asarray(p[0], np.float64) for p in pyramid(features)[2:])
    for layer, source, result in (("fpn_p6", p5, p6), ("fpn_p7", np.maximum(p6, 0), p7)):
        kernel, bias = (np.asarray(v, np.float64) for v in pyramid.get_layer(layer).weights)
        np.testing.assert_allclose(result, _numpy_conv(source, kernel, bias, 2, 1), rtol=1e-5, atol=1e-5)
    assert p6.shape[:2] == ((h + 1) // 2, (w + 1) // 2)


@pytest.mark.slow
def test_resnext101_64x4d_layout():
    """Pytorch style (stride on the grouped 3x3), 64 groups of width 4 doubling per stage, torch's BN eps."""
    backbone = backbones.build_backbone(config_lib.ModelConfig(backbone="resnext101_64x4d"))
    c3, c4, c5 = backbone(random_images(1, 64, 96))
    assert (c3.shape, c4.shape, c5.shape) == ((1, 8, 12, 512), (1, 4, 6, 1024), (1, 2, 3, 2048))
    layer = backbone.get_layer
    assert layer("conv2_block1_2_conv").kernel.shape == (3, 3, 4, 256)
    assert layer("conv5_block3_2_conv").kernel.shape == (3, 3, 32, 2048)
    assert layer("conv3_block1_1_conv").strides == (1, 1) and layer("conv3_block1_2_conv").strides == (2, 2)
    assert layer("conv4_block1_0_conv").strides == (2, 2)
    assert len([conv for conv in backbone.layers if isinstance(conv, keras.layers.Conv2D)]) == 104
    assert not any(conv.use_bias for conv in backbone.layers if isinstance(conv, keras.layers.Conv2D))
    assert {norm.epsilon for norm in backbone.layers if isinstance(norm, keras.layers.BatchNormalization)} == {1e-5}
    assert not layer("conv2_block3_3_conv").trainable and layer("conv3_block1_1_conv").trainable
    with pytest.raises(ValueError, match="no ImageNet weights"):
        backbones.build_backbone(config_lib.ModelConfig(backbone="resnext101_64x4d", backbone_weights="imagenet"))
