"""The PolarMask head (spec section 1), shared by all pyramid levels.

Three separate towers, each `num_convs` x [3x3 conv (no bias), GroupNorm, ReLU]:
  cls tower -> class logits (num_classes) and the centerness logit (1);
  box tower -> 4 box distances (l, t, r, b) = exp(s_box[l] * conv);
  ray tower -> num_rays ray lengths = exp(s_ray[l] * conv),
with one learnable scalar per level for boxes and one for rays (s_box, s_ray, initialised to 1).
With box_branch=False (config model.box_branch, the paper's final model) the box tower, box_pred
and s_box do not exist and the outputs have no "boxes": the boxes come from the polygons.
Distances are pixels of the network input (no division by the stride). All convs are initialised
N(0, 0.01) with zero bias, except the class bias -log((1 - p) / p) (p = prior_prob), so at
initialisation every class probability is p and every distance is about exp(0) = 1 px.

With 80 classes, 36 rays, 256 channels, 4 convs and GroupNorm the head has 7,362,947 parameters
(spec TV11); without the box branch 4 x (3*3*256*256 + 2*256) + (3*3*256*4 + 4) + 5 = 2,370,569
fewer.
"""

import math

import keras
from keras import ops

BRANCHES = ("cls", "box", "ray")


@keras.saving.register_keras_serializable(package="polarmask_tf")
class PolarHead(keras.layers.Layer):
    """Class, centerness, box and ray predictions for every location of every pyramid level.

    Call on a list of `num_levels` feature maps [B, h_l, w_l, C_in] (P3..P7). Returns a list with
    one dict per level:
      "cls_logits": float32 [B, h_l, w_l, num_classes], logits;
      "centerness": float32 [B, h_l, w_l, 1], logit;
      "boxes":      float32 [B, h_l, w_l, 4], (l, t, r, b) distances from the location, pixels;
      "rays":       float32 [B, h_l, w_l, num_rays], ray k at angle 2*pi*k/num_rays, pixels.
    Under a mixed precision policy the convs run in the compute dtype; all outputs are float32 and the
    scale * exp is computed in float32.

    Variables (paths under the layer name, e.g. "head/"): "<branch>_tower_conv<i>/kernel",
    "<branch>_tower_gn<i>/gamma|beta" for branch in cls, box, ray; "cls_logits/kernel|bias",
    "centerness/kernel|bias", "box_pred/kernel|bias", "ray_pred/kernel|bias"; and the per-level
    scales "box_scales" and "ray_scales", float32 [num_levels] (never autocast).

    box_branch=False: no box tower, "box_pred" or "box_scales" (no variable path contains "box"),
    and the level dicts have no "boxes".
    """

    def __init__(
        self,
        num_classes,
        num_rays=36,
        channels=256,
        num_convs=4,
        groups=32,
        prior_prob=0.01,
        num_levels=5,
        max_exponent=20.0,
        box_branch=True,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if not 0.0 < prior_prob < 1.0:
            raise ValueError(f"prior_prob must lie in (0, 1), got {prior_prob}")
        if channels % groups:
            raise ValueError(f"head channels ({channels}) must be divisible by the GroupNorm groups ({groups})")
        self.num_classes = num_classes
        self.num_rays = num_rays
        self.channels = channels
        self.num_convs = num_convs
        self.groups = groups
        self.prior_prob = prior_prob
        self.num_levels = num_levels
        self.box_branch = bool(box_branch)
        self.branches = BRANCHES if self.box_branch else tuple(b for b in BRANCHES if b != "box")
        # exp() of a float32 overflows to inf above ~88; one bad step must not turn every distance
        # (and then the losses and the weights) into inf/NaN. exp(20) ~ 4.9e8 px is far beyond any
        # image, so the clip never binds in healthy training (its gradient there is zero).
        self.max_exponent = max_exponent

        def normal():
            return keras.initializers.RandomNormal(mean=0.0, stddev=0.01)

        # One attribute per layer: TensorFlow checkpoints (tf.train.Checkpoint) follow attributes,
        # not layers placed inside a dict after it was assigned.
        for branch in self.branches:
            for i in range(num_convs):
                setattr(self, f"{branch}_tower_conv{i}", keras.layers.Conv2D(
                    channels, 3, padding="same", use_bias=False, kernel_initializer=normal(),
                    dtype=self.dtype_policy, name=f"{branch}_tower_conv{i}",
                ))
                setattr(self, f"{branch}_tower_gn{i}", keras.layers.GroupNormalization(
                    groups=groups, epsilon=1e-5, dtype=self.dtype_policy, name=f"{branch}_tower_gn{i}"
                ))

        def output_conv(filters, name, bias=0.0):
            return keras.layers.Conv2D(
                filters, 3, padding="same", kernel_initializer=normal(),
                bias_initializer=keras.initializers.Constant(bias), dtype=self.dtype_policy, name=name,
            )

        self.cls_logits = output_conv(num_classes, "cls_logits", -math.log((1.0 - prior_prob) / prior_prob))
        self.centerness = output_conv(1, "centerness")
        if self.box_branch:
            self.box_pred = output_conv(4, "box_pred")
        self.ray_pred = output_conv(num_rays, "ray_pred")

    def build(self, input_shape):
        if len(input_shape) != self.num_levels:
            raise ValueError(f"PolarHead expects {self.num_levels} feature maps, got {len(input_shape)}")
        in_channels = {shape[-1] for shape in input_shape}
        if len(in_channels) != 1 or None in in_channels:
            raise ValueError(f"all pyramid levels need the same, known channel count; got shapes {input_shape}")
        in_channels = in_channels.pop()
        tower_out = self.channels if self.num_convs else in_channels
        for branch in self.branches:
            for i, (conv, norm) in enumerate(self._tower_layers(branch)):
                conv.build((None, None, None, in_channels if i == 0 else self.channels))
                norm.build((None, None, None, self.channels))
        for conv in (self.cls_logits, self.centerness, self.ray_pred) + ((self.box_pred,) if self.box_branch else ()):
            conv.build((None, None, None, tower_out))
        if self.box_branch:
            self.box_scales = self.add_weight(
                name="box_scales", shape=(self.num_levels,), initializer="ones", autocast=False
            )
        self.ray_scales = self.add_weight(
            name="ray_scales", shape=(self.num_levels,), initializer="ones", autocast=False
        )

    def _tower_layers(self, branch):
        """[(conv, group norm)] of a branch's tower, in order."""
        return [
            (getattr(self, f"{branch}_tower_conv{i}"), getattr(self, f"{branch}_tower_gn{i}"))
            for i in range(self.num_convs)
        ]

    def _tower(self, branch, x, training):
        for conv, norm in self._tower_layers(branch):
            x = ops.relu(norm(conv(x), training=training))
        return x

    def _distances(self, conv_output, scale):
        # float32 before scale * exp: exp of a float16 overflows above ~11 (65504).
        exponent = ops.cast(conv_output, "float32") * scale
        return ops.exp(ops.minimum(exponent, self.max_exponent))

    def call(self, features, training=None):
        outputs = []
        for level, x in enumerate(features):
            cls_features = self._tower("cls", x, training)
            level_outputs = {
                "cls_logits": ops.cast(self.cls_logits(cls_features), "float32"),
                "centerness": ops.cast(self.centerness(cls_features), "float32"),
            }
            if self.box_branch:
                level_outputs["boxes"] = self._distances(
                    self.box_pred(self._tower("box", x, training)), self.box_scales[level]
                )
            level_outputs["rays"] = self._distances(
                self.ray_pred(self._tower("ray", x, training)), self.ray_scales[level]
            )
            outputs.append(level_outputs)
        return outputs

    def get_config(self):
        config = super().get_config()
        config.update(
            num_classes=self.num_classes,
            num_rays=self.num_rays,
            channels=self.channels,
            num_convs=self.num_convs,
            groups=self.groups,
            prior_prob=self.prior_prob,
            num_levels=self.num_levels,
            max_exponent=self.max_exponent,
            box_branch=self.box_branch,
        )
        return config
