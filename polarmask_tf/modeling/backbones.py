"""Backbones: a normalised image float32 [B, H, W, 3] -> [C3, C4, C5] at strides 8, 16, 32.

    backbone = build_backbone(config.model)   # a keras.Model named "backbone_<name>"
    c3, c4, c5 = backbone(images)             # images from data.pipeline.normalize_image

| backbone     | source                          | C3, C4, C5 layers (channels)                          |
|--------------|---------------------------------|-------------------------------------------------------|
| resnet50     | keras.applications.ResNet50     | conv3_block4_out, conv4_block6_out, conv5_block3_out  |
|              |                                 | (512, 1024, 2048)                                     |
| resnet101    | keras.applications.ResNet101    | conv3_block4_out, conv4_block23_out, conv5_block3_out |
|              |                                 | (512, 1024, 2048)                                     |
| mobilenet_v2 | keras.applications.MobileNetV2  | block_6_expand_relu, block_13_expand_relu, out_relu   |
|              |                                 | (192, 576, 1280)                                      |
| tiny         | five residual stages (tests,    | tiny_relu3, tiny_relu4, tiny_relu5 (64, 96, 128)      |
|              | quickstart): see _tiny_backbone |                                                       |

Weights (config.model.backbone_weights):
  * None: random initialisation.
  * "imagenet": keras.applications downloads the official ImageNet weights (needs internet access;
    cached in ~/.keras/models). Not available for "tiny".
  * a path to a Keras 3 `.weights.h5` file of the full keras.applications model (with or without
    its top), e.g. shared/weights/mobilenet_v2_1.0_imagenet/mobilenet_v2_1.0_imagenet_no_top.weights.h5.
    Keras 3 matches such files by model structure, so they are loaded into the complete
    keras.applications model before the C3..C5 sub-model is cut out of it.

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
from absl import logging

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
BACKBONES = tuple(_APPLICATIONS) + ("tiny",)
"""Names accepted by build_backbone (config.model.backbone)."""

TINY_CHANNELS = (16, 32, 64, 96, 128)
"""Output channels of the tiny backbone's five stride-2 convs; C3, C4, C5 are the last three."""


def build_backbone(model_config):
    """The backbone of a config.ModelConfig as a keras.Model named "backbone_<name>".

    Input: float32 [B, H, W, 3], normalised by data.pipeline.normalize_image for this backbone.
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
    else:
        factory, feature_layers, stem_prefixes = _APPLICATIONS[name]
        application = _application(name, factory, weights)
        outputs = [application.get_layer(layer).output for layer in feature_layers]
        backbone = keras.Model(application.input, outputs, name=f"backbone_{name}")

    if weights is None and (model_config.freeze_stem or model_config.freeze_batchnorm):
        logging.warning(
            "backbone %s has random weights but freeze_stem=%s, freeze_batchnorm=%s: frozen layers keep "
            "their random initialisation (set both to false when training from scratch)",
            name, model_config.freeze_stem, model_config.freeze_batchnorm,
        )
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
    if not os.path.isfile(path):
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
        warnings.warn(warning.message, warning.category)
    return application


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
