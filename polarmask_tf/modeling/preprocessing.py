"""What the network takes as input: an RGB image resized, normalised for the backbone's weights
and padded to the pyramid's size divisor. Training input (data.pipeline), inference, serving,
conversion and pictures (visualize) all use these rules.

    inputs, resized_size, scale = preprocess_image(image_uint8, config)   # [Hp, Wp, 3], [2], [2]

Resize (data.resize): "keep_ratio" fits the image inside data.image_size, "stretch" makes it
exactly data.image_size (the original's rule), bilinear. Normalisation (data.normalization, see
NORMALIZATIONS) then zero padding at the bottom and right up to multiples of data.size_divisor
(times the largest data.scale_range factor when training is multi-scale).
"""

import math

import tensorflow as tf

NORMALIZATIONS = {
    "caffe": ("bgr", (103.939, 116.779, 123.68), (1.0, 1.0, 1.0)),
    "caffe_detectron": ("bgr", (102.9801, 115.9465, 122.7717), (1.0, 1.0, 1.0)),
    "torch": ("rgb", (123.675, 116.28, 103.53), (58.395, 57.12, 57.375)),
    "tf": ("rgb", (127.5, 127.5, 127.5), (127.5, 127.5, 127.5)),
}
"""Input normalisation rules: (channel order, mean, std) on pixel values in [0, 255], applied as
(x - mean) / std in that channel order.
  caffe:           keras.applications ResNet weights (its preprocess_input "caffe" mode);
  caffe_detectron: the Detectron caffe2 ResNets of the original's R-50 / R-101 models;
  torch:           ImageNet RGB mean/std (torchvision, the original's ResNeXt-101 models);
  tf:              [-1, 1] (keras.applications MobileNetV2; the tiny backbone)."""

BACKBONE_NORMALIZATION = {
    "resnet50": "caffe",
    "resnet101": "caffe",
    "resnext101_64x4d": "torch",
    "mobilenet_v2": "tf",
    "tiny": "tf",
}
"""The rule each backbone's pretrained weights need: what data.normalization "auto" means. The one
place that decides it; a converted original model names its rule explicitly (caffe_detectron)."""


def input_normalization(config):
    """The normalisation rule (a key of NORMALIZATIONS) of a config.Config: data.normalization,
    or for "auto" the rule of model.backbone's weights."""
    rule = config.data.normalization
    if rule == "auto":
        if config.model.backbone not in BACKBONE_NORMALIZATION:
            raise ValueError(f"no input normalisation for backbone {config.model.backbone!r}")
        return BACKBONE_NORMALIZATION[config.model.backbone]
    return rule


def normalize_image(image, rule):
    """RGB float32 [..., 3] in [0, 255] -> the network input under `rule` (NORMALIZATIONS)."""
    if rule not in NORMALIZATIONS:
        raise ValueError(f"unknown input normalisation {rule!r}: use one of {', '.join(NORMALIZATIONS)}")
    order, mean, std = NORMALIZATIONS[rule]
    if order == "bgr":
        image = tf.reverse(image, [-1])
    # x * (1 / std) - mean / std: a multiply and an add cost half of a subtract and a divide on a large
    # image (the result differs by float32 rounding). With the same value for every channel both are
    # scalar ops, which TensorFlow runs about twice as fast as per-channel broadcasts; otherwise
    # bias_add is its fast per-channel add.
    scale = [1.0 / s for s in std]
    offset = [-m * k for m, k in zip(mean, scale, strict=True)]
    if len(set(scale)) == 1 and len(set(offset)) == 1:
        return image * scale[0] + offset[0] if scale[0] != 1.0 else image + offset[0]
    if scale != [1.0, 1.0, 1.0]:
        image = image * tf.constant(scale, image.dtype)
    return tf.nn.bias_add(image, tf.constant(offset, image.dtype))


def padded_image_shape(data):
    """Static (Hp, Wp) of the padded images for a config.DataConfig."""
    largest = max(data.scale_range) if data.scale_range else 1.0
    return tuple(int(math.ceil(side * largest / data.size_divisor) * data.size_divisor) for side in data.image_size)


def normalize_and_pad(image, config):
    """Resized RGB float32 [h, w, 3] in [0, 255] -> the network input [Hp, Wp, 3] (zero padding
    after normalisation, at the bottom and right)."""
    image = normalize_image(image, input_normalization(config))
    return tf.image.pad_to_bounding_box(image, 0, 0, *padded_image_shape(config.data))


def preprocess_image(image, config):
    """Inference preprocessing, identical to the evaluation path of data.pipeline.

    image: RGB [h, w, 3] uint8 or float32 in [0, 255]. Returns (input float32 [Hp, Wp, 3],
    resized_size int32 [2] (the unpadded extent), scale float32 [2] = (sy, sx) resized / original).
    A uint8 image is resized as it is (the bilinear kernel computes in float32 either way), so a
    large photo never exists as a float32 copy at full size.
    """
    image = tf.ensure_shape(image, [None, None, 3])
    if image.dtype not in (tf.uint8, tf.float32):
        image = tf.cast(image, tf.float32)
    original = tf.shape(image)[:2]
    size = resized_shape(original[0], original[1], config.data.image_size, config.data.resize)
    scale = tf.cast(size, tf.float32) / tf.cast(original, tf.float32)
    resized = tf.cast(tf.image.resize(image, size, method="bilinear"), tf.float32)
    return normalize_and_pad(resized, config), size, scale


def resized_shape(height, width, target_size, mode):
    """The (height, width) int32 an image of height x width gets, resizing into target_size (H, W).

    keep_ratio: scaled by min(H / height, W / width); stretch: exactly target_size.
    """
    height = tf.cast(height, tf.float32)
    width = tf.cast(width, tf.float32)
    target = tf.cast(tf.convert_to_tensor(target_size), tf.float32)
    if mode == "stretch":
        return tf.cast(tf.round(target), tf.int32)
    scale = tf.minimum(target[0] / height, target[1] / width)
    return tf.cast(tf.maximum(tf.round(tf.stack([height * scale, width * scale])), 1.0), tf.int32)
