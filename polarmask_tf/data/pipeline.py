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


import tensorflow as tf

from polarmask_tf.data import augment, targets, tfrecord
from polarmask_tf.modeling import preprocessing


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
    padded = preprocessing.padded_image_shape(data)
    encode = tf.function(
        lambda labels, boxes, centers, polygons: targets.encode_targets(
            labels, boxes, centers, polygons, padded, polar),
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
        size = preprocessing.resized_shape(original[0], original[1], target_size, data.resize)
        image, instances, scale = augment.resize(image, instances, size)
        if training and data.hflip_prob > 0:
            flip = tf.random.stateless_uniform([], seeds[1]) < data.hflip_prob
            image, instances = tf.cond(
                flip, lambda: augment.horizontal_flip(image, instances), lambda: (image, instances)
            )
        if training and data.photometric_jitter:
            image = augment.photometric_jitter(image, seeds[2])

        image = preprocessing.normalize_and_pad(image, config)
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
        raise ValueError(f"no TFRecord files match {pattern!r} (make them with polarmask-create-tfrecords)")
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
