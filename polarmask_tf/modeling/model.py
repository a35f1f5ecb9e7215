"""The PolarMask network: image -> backbone (C3..C5) -> FPN (P3..P7) -> PolarHead -> dense outputs.

    model = build_model(config)          # config.Config
    outputs = model(images)              # images [B, H, W, 3], H and W multiples of 128
    outputs["rays"]                      # float32 [B, P, num_rays], pixels

The outputs line up one to one with the targets of data.pipeline: locations of each level
flattened row-major (x fastest), levels concatenated P3 -> P7, P = sum_s (H/s) * (W/s).
"""

import keras
import tensorflow as tf

from polarmask_tf.modeling import backbones, fpn, head, pyramid

OUTPUT_KEYS = ("cls_logits", "centerness", "boxes", "rays")


def output_keys(model_config):
    """The keys of build_model's outputs for a config.ModelConfig: OUTPUT_KEYS, without "boxes"
    when model.box_branch is false."""
    return tuple(key for key in OUTPUT_KEYS if key != "boxes" or model_config.box_branch)


@keras.saving.register_keras_serializable(package="polarmask_tf")
class InputSizeCheck(keras.layers.Layer):
    """Identity on images [B, H, W, C] that rejects H or W not divisible by `divisor`.

    Statically known sizes fail with a ValueError when the model is called or traced; sizes only
    known at run time (a tf.function with a [None, None, None, 3] signature) fail with an
    InvalidArgumentError when the graph runs. Under XLA (jit_compile=True) the run-time assertion is
    compiled away, so there only the static check applies.
    """

    def __init__(self, divisor=pyramid.SIZE_DIVISOR, **kwargs):
        super().__init__(**kwargs)
        self.divisor = divisor

    def _message(self, height, width):
        return (
            f"PolarMask input height and width must be multiples of {self.divisor} (got {height} x {width}) so "
            f"that every level with stride s is exactly H/s x W/s; pad the image (bottom/right) up to a multiple "
            f"of {self.divisor}, as data.pipeline does with data.size_divisor"
        )

    def call(self, images):
        height, width = images.shape[1], images.shape[2]
        if height is not None and width is not None:
            if height % self.divisor or width % self.divisor:
                raise ValueError(self._message(height, width))
            return images
        size = tf.shape(images)[1:3]
        check = tf.debugging.Assert(
            tf.reduce_all(tf.math.floormod(size, self.divisor) == 0), [self._message("H", "W") + "; [H, W] =", size]
        )
        with tf.control_dependencies([check]):
            return tf.identity(images)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(divisor=self.divisor)
        return config


def build_model(config):
    """The PolarMask keras.Model for a config.Config (sections model and polar).

    Input "image": float32 [B, H, W, 3], normalised by data.pipeline.normalize_image with the rule
    data.pipeline.input_normalization(config). H and W are dynamic but must be multiples of 128
    (the P7 stride): the model then has exactly H/s x W/s locations at every level s, like the
    targets, and the FPN's top-down additions line up. Other sizes raise an error (InputSizeCheck).

    Outputs, a dict of float32 tensors (also under mixed precision), P = sum_s (H/s) * (W/s):
      "cls_logits": [B, P, num_classes], class logits (class c is column c - 1);
      "centerness": [B, P], polar centerness logits;
      "boxes":      [B, P, 4], (l, t, r, b) distances from the location, input pixels; only with
                    model.box_branch true (without it the dict has no "boxes" key);
      "rays":       [B, P, num_rays], ray lengths, input pixels.

    Layer names: "input_size_check", "backbone_<name>" (a nested keras.Model), "fpn_*", "head"
    (PolarHead), "flatten_<output>_p<level>" and "<output>" (the concatenations).
    """
    model_config = config.model
    images = keras.Input((None, None, 3), name="image")
    checked = InputSizeCheck(pyramid.SIZE_DIVISOR, name="input_size_check")(images)
    features = backbones.build_backbone(model_config)(checked)
    levels = fpn.build_fpn(features, model_config.fpn_channels, name="fpn")
    per_level = head.PolarHead(
        num_classes=model_config.num_classes,
        num_rays=config.polar.num_rays,
        channels=model_config.head_channels,
        num_convs=model_config.head_convs,
        groups=model_config.group_norm_groups,
        prior_prob=model_config.prior_prob,
        num_levels=len(pyramid.STRIDES),
        box_branch=model_config.box_branch,
        name="head",
    )(levels)

    outputs = {}
    for key in output_keys(model_config):
        flat = []
        for level, level_outputs in zip(pyramid.LEVELS, per_level, strict=True):
            channels = level_outputs[key].shape[-1]
            # float32 layers: under a mixed policy, layers would otherwise cast the outputs back down.
            target = (-1,) if key == "centerness" else (-1, channels)
            flatten = keras.layers.Reshape(target, dtype="float32", name=f"flatten_{key}_{level}")
            flat.append(flatten(level_outputs[key]))
        outputs[key] = keras.layers.Concatenate(axis=1, dtype="float32", name=key)(flat)
    return keras.Model(images, outputs, name=f"polarmask_{model_config.backbone}")
