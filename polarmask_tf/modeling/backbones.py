"""Backbones: a normalised image float32 [B, H, W, 3] -> [C3, C4, C5] at strides 8, 16, 32.

    backbone = build_backbone(config.model)   # a keras.Model named "backbone_<name>"
    c3, c4, c5 = backbone(images)             # images from data.pipeline.normalize_image

| backbone     | source                          | C3, C4, C5 layers (channels)                          |
|--------------|---------------------------------|-------------------------------------------------------|
| resnet50     | keras.applications.ResNet50     | conv3_block4_out, conv4_block6_out, conv5_block3_out  |
|              |                                 | (512, 1024, 2048)                                     |
| resnet101    | keras.applications.ResNet101    | conv3_block4_out, conv4_block23_out, conv5_block3_out |
|              |                                 | (512, 1024, 2048)                                     |
| resnext101_  | _resnext101_64x4d: ResNeXt-101  | conv3_block4_out, conv4_block23_out, conv5_block3_out |
| 64x4d        | 64x4d, pytorch style, no biases | (512, 1024, 2048)                                     |
| mobilenet_v2 | keras.applications.MobileNetV2  | block_6_expand_relu, block_13_expand_relu, out_relu   |
|              |                                 | (192, 576, 1280)                                      |
| tiny         | five residual stages (tests,    | tiny_relu3, tiny_relu4, tiny_relu5 (64, 96, 128)      |
|              | quickstart): see _tiny_backbone |                                                       |

The ResNets and the ResNeXt name their layers alike ("conv1_conv", "conv{s}_block{b}_{i}_conv/_bn",
the shortcut "_0_"), so one name mapping serves the original's checkpoints of all three
(polarmask_tf.conversion).

Weights (config.model.backbone_weights):
  * None: random initialisation.
  * "imagenet": keras.applications downloads the official ImageNet weights (needs internet access;
    cached in ~/.keras/models). Not available for "tiny" and "resnext101_64x4d" (keras.applications
    has no ResNeXt; its weights come from a converted original checkpoint).
  * a path to a Keras 3 `.weights.h5` file of the full keras.applications model (with or without
    its top), e.g. shared/weights/mobilenet_v2_1.0_imagenet/mobilenet_v2_1.0_imagenet_no_top.weights.h5.
    Keras 3 matches such files by model structure, so they are loaded into the complete
    keras.applications model before the C3..C5 sub-model is cut out of it. For resnext101_64x4d: a
    .weights.h5 file of this module's backbone model itself (backbone.save_weights).

Freezing (what "frozen" covers):
  * freeze_stem: the layers of the stem and the first (stride 4) stage get trainable=False, so
    their kernels, biases and norm parameters receive no gradient updates (the original's
    frozen_stages=1). ResNet: conv1_* and conv2_*; MobileNetV2: Conv1, bn_Conv1, expanded_conv_*,
    block_1_* and block_2_*; tiny: its first stage (tiny_conv1, tiny_bn1, tiny_conv1b, tiny_bn1b).
    The batch norms among them therefore also run in inference mode.
  * freeze_batchnorm: every BatchNormalization layer of the backbone gets trainable=False. Keras 3
    then always runs it in inference mode (moving statistics, never batch statistics, even when
    the model is called with training=True), and its gamma/beta and moving mean/variance never
    change. Normalisation layers outside the backbone (the head's GroupNorms) are not affected.
"""

import os
import warnings

import keras

from polarmask_tf import fileio

_APPLICATIONS = {
    "resnet50": (
        keras.applications.ResNet50,
        ("conv3_block4_out", "conv4_block6_out", "conv5_block3_out"),
        ("conv1_", "conv2_"),
    ),
    "resnet101": (
        keras.applications.ResNet101,
        ("conv3_block4_out", "conv4_block23_out", "conv5_block3_out"),
        ("conv1_", "conv2_"),
    ),
    "mobilenet_v2": (
        lambda **kwargs: keras.applications.MobileNetV2(alpha=1.0, **kwargs),
        ("block_6_expand_relu", "block_13_expand_relu", "out_relu"),
        ("Conv1", "bn_Conv1", "expanded_conv_", "block_1_", "block_2_"),
    ),
}
RESNEXT_BLOCKS = (3, 4, 23, 3)
RESNEXT_GROUPS = 64
RESNEXT_GROUP_WIDTH = 4
"""ResNeXt-101 64x4d: bottlenecks per stage, groups of the 3x3 convs and channels per group in the
first stage (doubling per stage: widths 256, 512, 1024, 2048)."""
BACKBONES = tuple(_APPLICATIONS) + ("resnext101_64x4d", "tiny")
"""Names accepted by build_backbone (config.model.backbone)."""

TINY_CHANNELS = (16, 32, 64, 96, 128)
"""Output channels of the tiny backbone's five stride-2 convs; C3, C4, C5 are the last three."""


def build_backbone(model_config):
    """The backbone of a config.ModelConfig as a keras.Model named "backbone_<name>".

    Input: float32 [B, H, W, 3], normalised by data.pipeline.normalize_image with the rule the
    backbone's weights need (data.pipeline.BACKBONE_NORMALIZATION, or the config's data.normalization).
    Outputs: [C3, C4, C5] with spatial sizes H/8, H/16, H/32 (exact when H and W are multiples
    of 32) and the channels listed in the module docstring.

    Raises ValueError for an unknown backbone, for weights the backbone cannot take ("imagenet" or
    a file for "tiny") or a weights file that does not fit the backbone, and FileNotFoundError for
    a weights path that does not exist.
    """
    name = model_config.backbone
    weights = model_config.backbone_weights
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}: use one of {', '.join(BACKBONES)}")
    if name == "tiny":
        if weights is not None:
            raise ValueError(
                f"backbone 'tiny' has no pretrained weights (got backbone_weights={weights!r}): "
                "set model.backbone_weights to null, or pick resnet50, resnet101 or mobilenet_v2"
            )
        backbone = _tiny_backbone()
        stem_prefixes = ("tiny_conv1", "tiny_bn1")
    elif name == "resnext101_64x4d":
        backbone = _resnext101_64x4d()
        _load_own_weights(backbone, weights)
        stem_prefixes = ("conv1_", "conv2_")
    else:
        factory, feature_layers, stem_prefixes = _APPLICATIONS[name]
        application = _application(name, factory, weights)
        outputs = [application.get_layer(layer).output for layer in feature_layers]
        backbone = keras.Model(application.input, outputs, name=f"backbone_{name}")

    for layer in backbone.layers:
        if model_config.freeze_stem and layer.name.startswith(stem_prefixes):
            layer.trainable = False
        if model_config.freeze_batchnorm and isinstance(layer, keras.layers.BatchNormalization):
            layer.trainable = False
    return backbone


def _application(name, factory, weights):
    """The full keras.applications model (no top) with `weights` loaded."""
    if weights is None or weights == "imagenet":
        return factory(include_top=False, weights=weights, input_shape=(None, None, 3))
    path = os.fspath(weights)
    if not fileio.is_file(path):
        raise FileNotFoundError(
            f"backbone {name!r}: weights file {path!r} does not exist. Set model.backbone_weights to a "
            f"Keras 3 .weights.h5 file of keras.applications' {name} model, to \"imagenet\" (download, needs "
            "internet) or to null (random initialisation)"
        )
    if not path.endswith(".weights.h5"):
        raise ValueError(
            f"backbone {name!r}: weights file {path!r} is not a Keras 3 .weights.h5 file "
            "(model.save_weights output; the name must end in .weights.h5)"
        )
    application = factory(include_top=False, weights=None, input_shape=(None, None, 3))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            application.load_weights(path)
        except (ValueError, OSError, KeyError) as error:
            raise ValueError(
                f"weights file {path!r} does not fit backbone {name!r} (keras.applications {name}, "
                f"include_top=False): {str(error).splitlines()[0]}"
            ) from error
    for warning in caught:
        warnings.warn(warning.message, warning.category, stacklevel=2)
    return application


def _load_own_weights(backbone, weights):
    """Loads a .weights.h5 file of `backbone` itself (None: keep the random initialisation)."""
    if weights is None:
        return
    if weights == "imagenet":
        raise ValueError(
            f"{backbone.name}: keras.applications has no ImageNet weights for it; convert an original "
            "PolarMask checkpoint (polarmask-convert-original) or give a .weights.h5 file"
        )
    path = os.fspath(weights)
    if not fileio.is_file(path):
        raise FileNotFoundError(f"{backbone.name}: weights file {path!r} does not exist")
    try:
        backbone.load_weights(path)
    except (ValueError, OSError, KeyError) as error:
        raise ValueError(f"weights file {path!r} does not fit {backbone.name}: {str(error).splitlines()[0]}") from error


def _conv_bn(x, filters, kernel_size, name, strides=1, groups=1, relu=True):
    """Conv (no bias; 3x3 with explicit 1-pixel zero padding, as torch's pad 1) + BN (eps 1e-5, as
    torch) [+ ReLU]. Explicit padding matters at stride 2, where "same" would pad only bottom/right."""
    if kernel_size == 3:
        x = keras.layers.ZeroPadding2D(1, name=f"{name}_pad")(x)
    x = keras.layers.Conv2D(filters, kernel_size, strides=strides, groups=groups, use_bias=False,
                            name=f"{name}_conv")(x)
    x = keras.layers.BatchNormalization(epsilon=1e-5, name=f"{name}_bn")(x)
    return keras.layers.ReLU(name=f"{name}_relu")(x) if relu else x


def _resnext101_64x4d():
    """ResNeXt-101 64x4d, "pytorch" style as in the original (mmdet v1 ResNeXt): the stride of a
    stage's first bottleneck sits on its grouped 3x3 conv; bottleneck width = output channels =
    64 groups x 4 x 2^stage; stem 7x7/2 + max pool 3/2. 92,637,891 parameters with FPN and head
    (original_checkpoints.md), of which the backbone holds 81,406,272 (plus BN statistics)."""
    inputs = keras.Input((None, None, 3), name="image")
    x = keras.layers.ZeroPadding2D(3, name="conv1_pad")(inputs)
    x = keras.layers.Conv2D(64, 7, strides=2, use_bias=False, name="conv1_conv")(x)
    x = keras.layers.BatchNormalization(epsilon=1e-5, name="conv1_bn")(x)
    x = keras.layers.ReLU(name="conv1_relu")(x)
    x = keras.layers.ZeroPadding2D(1, name="pool1_pad")(x)
    x = keras.layers.MaxPooling2D(3, strides=2, name="pool1_pool")(x)
    features = []
    for stage, blocks in enumerate(RESNEXT_BLOCKS):
        width = RESNEXT_GROUPS * RESNEXT_GROUP_WIDTH * 2**stage
        for block in range(blocks):
            name = f"conv{stage + 2}_block{block + 1}"
            strides = 2 if stage > 0 and block == 0 else 1
            shortcut = x
            if block == 0:
                shortcut = _conv_bn(x, width, 1, f"{name}_0", strides=strides, relu=False)
            y = _conv_bn(x, width, 1, f"{name}_1")
            y = _conv_bn(y, width, 3, f"{name}_2", strides=strides, groups=RESNEXT_GROUPS)
            y = _conv_bn(y, width, 1, f"{name}_3", relu=False)
            x = keras.layers.ReLU(name=f"{name}_out")(keras.layers.Add(name=f"{name}_add")([shortcut, y]))
        features.append(x)
    return keras.Model(inputs, features[1:], name="backbone_resnext101_64x4d")


def _tiny_backbone():
    """Five stages of a 3x3 stride-2 conv + BN + ReLU followed by a residual 3x3 conv + BN + ReLU
    (TINY_CHANNELS); C3..C5 = outputs of stages 3..5."""
    inputs = keras.Input((None, None, 3), name="image")
    x = inputs
    features = []
    for index, channels in enumerate(TINY_CHANNELS, start=1):
        x = keras.layers.Conv2D(channels, 3, strides=2, padding="same", use_bias=False, name=f"tiny_conv{index}")(x)
        x = keras.layers.BatchNormalization(name=f"tiny_bn{index}")(x)
        x = keras.layers.ReLU(name=f"tiny_relu{index}a")(x)
        y = keras.layers.Conv2D(channels, 3, padding="same", use_bias=False, name=f"tiny_conv{index}b")(x)
        y = keras.layers.BatchNormalization(name=f"tiny_bn{index}b")(y)
        x = keras.layers.ReLU(name=f"tiny_relu{index}")(keras.layers.Add(name=f"tiny_add{index}")([x, y]))
        features.append(x)
    return keras.Model(inputs, features[2:], name="backbone_tiny")
