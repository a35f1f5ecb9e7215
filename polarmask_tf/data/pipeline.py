"""The tf.data input pipeline: TFRecord shards -> batches of images and dense polar targets.

    shards -> interleave -> shuffle -> parse -> decode -> augment -> encode targets -> batch -> prefetch

Pure TensorFlow ops throughout (no py_function), static element shapes, sharded per input pipeline
for tf.distribute. Each element is (images float32 [B, Hp, Wp, 3], targets dict):
  labels int32 [B, P], rays float32 [B, P, N], boxes float32 [B, P, 4], centerness float32 [B, P]
  (see data.targets), and per image: image_id int64 [B], image_size int32 [B, 2] (original height,
  width), resized_size int32 [B, 2] (the unpadded extent in the padded image), scale float32 [B, 2]
  (sy, sx: resized / original), num_instances int32 [B] (instances after filtering, before padding).
Hp, Wp are data.image_size (times the largest scale_range factor) rounded up to data.size_divisor.
"""

import math

import tensorflow as tf

from polarmask_tf.data import augment, targets, tfrecord

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
    image = image - tf.constant(mean, image.dtype)
    if std != (1.0, 1.0, 1.0):
        image = image / tf.constant(std, image.dtype)
    return image


def padded_image_shape(data):
    """Static (Hp, Wp) of the padded images for a config.DataConfig."""
    largest = max(data.scale_range) if data.scale_range else 1.0
    return tuple(int(math.ceil(side * largest / data.size_divisor) * data.size_divisor) for side in data.image_size)


def _normalize_and_pad(image, config):
    """Resized RGB float32 [h, w, 3] in [0, 255] -> the network input [Hp, Wp, 3] (zero padding
    after normalisation, at the bottom and right)."""
    image = normalize_image(image, input_normalization(config))
    return tf.image.pad_to_bounding_box(image, 0, 0, *padded_image_shape(config.data))


def preprocess_image(image, config):
    """Inference preprocessing, identical to the evaluation path of the pipeline.

    image: RGB [h, w, 3] uint8 or float32 in [0, 255]. Returns (input float32 [Hp, Wp, 3],
    resized_size int32 [2] (the unpadded extent), scale float32 [2] = (sy, sx) resized / original).
    A uint8 image is resized as it is (the bilinear kernel computes in float32 either way), so a
    large photo never exists as a float32 copy at full size.
    """
    image = tf.ensure_shape(image, [None, None, 3])
    if image.dtype not in (tf.uint8, tf.float32):
        image = tf.cast(image, tf.float32)
    original = tf.shape(image)[:2]
    size = augment.resized_shape(original[0], original[1], config.data.image_size, config.data.resize)
    scale = tf.cast(size, tf.float32) / tf.cast(original, tf.float32)
    resized = tf.cast(tf.image.resize(image, size, method="bilinear"), tf.float32)
    return _normalize_and_pad(resized, config), size, scale


def _select_instances(parsed, max_instances, max_vertices):
    """The (at most max_instances, largest COCO area first) instances, padded to max_instances."""
    count = tf.shape(parsed["labels"])[0]
    keep = tf.math.top_k(parsed["areas"], k=tf.minimum(count, max_instances), sorted=True).indices
    polygons, num_vertices = tfrecord.largest_parts(parsed, max_vertices)
    pad = max_instances - tf.shape(keep)[0]

    def take(values):
        values = tf.gather(values, keep)
        return tf.pad(values, [[0, pad]] + [[0, 0]] * (len(values.shape) - 1))

    instances = augment.Instances(
        labels=take(parsed["labels"]),
        boxes=take(parsed["boxes"]),
        centers=take(parsed["mass_centers"]),
        polygons=take(polygons),
        num_vertices=take(num_vertices),
    )
    instances = augment.Instances(*(tf.ensure_shape(v, [max_instances] + v.shape[1:]) for v in instances))
    return instances, tf.shape(keep)[0]


def make_example_fn(config, training):
    """The per-example map function: (serialized string, seed int64 [2]) -> (image, targets)."""
    data, polar = config.data, config.polar
    padded = padded_image_shape(data)
    encode = tf.function(
        lambda labels, boxes, centers, polygons: targets.encode_targets(labels, boxes, centers, polygons, padded, polar),
        jit_compile=data.jit_targets,
    )

    def example_fn(serialized, seed):
        parsed = tfrecord.parse_example(serialized)
        image = tf.io.decode_image(parsed["encoded"], channels=3, expand_animations=False)
        image = tf.cast(tf.ensure_shape(image, [None, None, 3]), tf.float32)
        original = tf.shape(image)[:2]
        instances, num_instances = _select_instances(parsed, data.max_instances, data.max_vertices)

        seeds = tf.random.experimental.stateless_split(tf.cast(seed, tf.int32), 3)
        target_size = tf.constant(data.image_size, tf.float32)
        if training and data.scale_range:
            low, high = data.scale_range
            target_size *= tf.random.stateless_uniform([], seeds[0], low, high)
        size = augment.resized_shape(original[0], original[1], target_size, data.resize)
        image, instances, scale = augment.resize(image, instances, size)
        if training and data.hflip_prob > 0:
            flip = tf.random.stateless_uniform([], seeds[1]) < data.hflip_prob
            image, instances = tf.cond(
                flip, lambda: augment.horizontal_flip(image, instances), lambda: (image, instances)
            )
        if training and data.photometric_jitter:
            image = augment.photometric_jitter(image, seeds[2])

        image = _normalize_and_pad(image, config)
        if polar.center == "box":
            b = instances.boxes
            centers = tf.stack([(b[:, 0] + b[:, 2]) / 2, (b[:, 1] + b[:, 3]) / 2], axis=-1)
        else:
            centers = instances.centers
        encoded = encode(instances.labels, instances.boxes, centers, instances.polygons)
        encoded.update(
            image_id=parsed["image_id"],
            image_size=original,
            resized_size=size,
            scale=scale,
            num_instances=num_instances,
        )
        return image, encoded

    return example_fn


def list_shards(pattern):
    """Sorted shard paths matching a glob; ValueError naming the pattern when there are none."""
    files = sorted(tf.io.gfile.glob(pattern))
    if not files:
        raise ValueError(f"no TFRecord files match {pattern!r} (make them with polarmask_tf.tools.create_tfrecords)")
    return files


def build_dataset(config, training, input_context=None):
    """The input pipeline for training (repeated, shuffled, augmented, drop_remainder) or
    evaluation (one pass, in order, no augmentation).

    config: config.Config. input_context: tf.distribute.InputContext; the dataset is then sharded
    per input pipeline and batched at the per-replica batch size. Deterministic order and
    augmentation when config.data.deterministic (seeded by config.data.seed).
    """
    data = config.data
    files = list_shards(data.train_files if training else data.val_files)
    deterministic = data.deterministic or not training
    batch_size = data.batch_size
    shards = tf.data.Dataset.from_tensor_slices(files)
    records_sharded = False
    if input_context is not None:
        batch_size = input_context.get_per_replica_batch_size(data.batch_size)
        if input_context.num_input_pipelines > 1:
            if len(files) >= input_context.num_input_pipelines:
                shards = shards.shard(input_context.num_input_pipelines, input_context.input_pipeline_id)
            else:
                records_sharded = True
    if training:
        shards = shards.shuffle(len(files), seed=data.seed, reshuffle_each_iteration=True)
    dataset = shards.interleave(
        tf.data.TFRecordDataset,
        cycle_length=min(len(files), 4),
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=deterministic,
    )
    if records_sharded:
        dataset = dataset.shard(input_context.num_input_pipelines, input_context.input_pipeline_id)
    if training:
        dataset = dataset.shuffle(data.shuffle_buffer, seed=data.seed, reshuffle_each_iteration=True).repeat()
    seeds = tf.data.Dataset.random(seed=data.seed).batch(2)
    dataset = tf.data.Dataset.zip((dataset, seeds))
    dataset = dataset.map(
        make_example_fn(config, training), num_parallel_calls=tf.data.AUTOTUNE, deterministic=deterministic
    )
    dataset = dataset.batch(batch_size, drop_remainder=training)
    options = tf.data.Options()
    options.deterministic = deterministic
    return dataset.with_options(options).prefetch(tf.data.AUTOTUNE)


def num_locations(config):
    """P, the number of FPN locations of a padded image."""
    return sum(h * w for h, w in targets.level_shapes(*padded_image_shape(config.data), config.polar.strides))

