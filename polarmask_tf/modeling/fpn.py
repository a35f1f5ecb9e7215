"""Feature pyramid (mmdet v1 FPN as PolarMask uses it, spec section 1): C3..C5 -> P3..P7.

    p3, p4, p5, p6, p7 = build_fpn([c3, c4, c5], channels=256)

  * lateral 1x1 convs (bias, no norm, no activation) on C3, C4, C5;
  * top-down: nearest-neighbour x2 upsampling of the coarser merged map, added to the lateral;
  * 3x3 output convs (bias, no activation) -> P3, P4, P5;
  * P6 = 3x3 stride-2 conv on the P5 OUTPUT; P7 = 3x3 stride-2 conv on ReLU(P6).
All convs: Xavier (Glorot) uniform kernels, zero biases. With C channels (512, 1024, 2048) and
256 output channels the FPN has 3,868,672 parameters (spec TV11).

Sizes: the top-down adds need each C level to be exactly twice the size of the next one, which holds
when the image height and width are multiples of 32; P6 and P7 are then ceil(P5 / 2) and
ceil(P6 / 2). The model (model.build_model) requires multiples of 128, so that every level is exactly
H/s x W/s like the targets.
"""

import keras


def _conv(channels, kernel_size, name, strides=1, padding="same"):
    return keras.layers.Conv2D(
        channels,
        kernel_size,
        strides=strides,
        padding=padding,
        kernel_initializer=keras.initializers.GlorotUniform(),
        bias_initializer="zeros",
        name=name,
    )


def build_fpn(features, channels=256, name="fpn"):
    """Adds the FPN layers to a functional graph.

    features: [C3, C4, C5] Keras tensors [B, H/8, W/8, c3], [B, H/16, W/16, c4], [B, H/32, W/32, c5].
    Returns [P3, P4, P5, P6, P7], each [B, H/s, W/s, channels] for s = 8, 16, 32, 64, 128, in the
    compute dtype of the global dtype policy. Layers are named "<name>_lateral_c3",
    "<name>_output_p3", "<name>_p6", "<name>_p7", ...
    """
    if len(features) != 3:
        raise ValueError(f"build_fpn expects [C3, C4, C5], got {len(features)} feature maps")
    laterals = [_conv(channels, 1, f"{name}_lateral_c{level}")(c) for level, c in zip((3, 4, 5), features, strict=True)]

    merged = [laterals[2]]
    for level in (4, 3):
        upsampled = keras.layers.UpSampling2D(2, interpolation="nearest", name=f"{name}_upsample_p{level + 1}")(
            merged[0]
        )
        merged.insert(0, keras.layers.Add(name=f"{name}_merge_p{level}")([laterals[level - 3], upsampled]))
    outputs = [_conv(channels, 3, f"{name}_output_p{level}")(m) for level, m in zip((3, 4, 5), merged, strict=True)]

    # "conv3x3 s2 p1" as in the original: explicit symmetric padding. Keras "same" with stride 2 pads
    # only the bottom/right of an even-sized map, which would shift P6/P7 by half a P5 cell.
    p6 = keras.layers.ZeroPadding2D(1, name=f"{name}_pad_p6")(outputs[2])
    p6 = _conv(channels, 3, f"{name}_p6", strides=2, padding="valid")(p6)
    p7 = keras.layers.ReLU(name=f"{name}_relu_p6")(p6)
    p7 = keras.layers.ZeroPadding2D(1, name=f"{name}_pad_p7")(p7)
    p7 = _conv(channels, 3, f"{name}_p7", strides=2, padding="valid")(p7)
    return outputs + [p6, p7]
