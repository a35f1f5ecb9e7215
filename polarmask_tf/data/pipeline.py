"""The tf.data input pipeline: TFRecord shards -> batches of images and dense polar targets.

    shards -> interleave -> shuffle -> parse -> decode -> augment -> encode targets -> batch -> prefetch

Pure TensorFlow ops throughout (no py_function), static element shapes, sharded per input pipeline
for tf.distribute. Each element is (images float32 [B, Hp, Wp, 3], targets dict):
  labels int32 [B, P], rays float32 [B, P, N], boxes float32 [B, P, 4], centerness float32 [B, P]
  (see data.targets), and per image: image_id int64 [B], image_size int32 [B, 2] (original height,
  width), resized_size int32 [B, 2] (the unpadded extent in the padded image), scale float32 [B, 2]
  (sy, sx: resized / original), num_instances int32 [B] (instances after filtering, before padding).
Hp, Wp are data.image_size (times the largest scale_range factor) rounded up to data.size_divisor.

Bad records never stop a run: shards are checked for truncation and broken framing when the
dataset is built (check_shards: a ValueError names the file, the record and what to do), and a
record that still fails later (a payload whose checksum fails, an image that does not decode, a
label beyond model.num_classes) is skipped with a warning from tf.data (`ignore_errors`). A pass in
which no record at all can be used ends the dataset rather than retrying forever.
"""

import struct

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
        tf.debugging.assert_less_equal(
            tf.reduce_max(tf.concat([parsed["labels"], [0]], axis=0)), config.model.num_classes,
            message=f"a record's label exceeds model.num_classes={config.model.num_classes}; record skipped")
        # Decoded as uint8 and resized before the float cast: a 12000 x 12000 photo then costs
        # 0.4 GB once instead of a further 1.7 GB float32 copy at full size.
        image = tf.io.decode_image(parsed["encoded"], channels=3, expand_animations=False)
        image = tf.ensure_shape(image, [None, None, 3])
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


_HEADER = 12  # uint64 length + uint32 masked CRC of the length; the payload is followed by its uint32 CRC


def check_shard(path):
    """Walks the TFRecord framing of `path` (reading 12 bytes per record, not the payloads) and
    returns its number of records. Raises ValueError naming the file, the record and its byte
    offset when a record runs past the end of the file (a truncated copy or write) or the framing
    is broken (garbage where a record header should be). Payload checksums are left to the
    reader, whose failures skip the record."""
    size = tf.io.gfile.stat(path).length
    offset, count = 0, 0
    with tf.io.gfile.GFile(path, "rb") as stream:
        while offset < size:
            header = stream.read(_HEADER)
            if len(header) < _HEADER:
                raise ValueError(f"{path}: truncated at record {count} (byte {offset} of {size}): header cut off")
            (length,) = struct.unpack("<Q", header[:8])
            end = offset + _HEADER + length + 4
            if end > size:
                raise ValueError(
                    f"{path}: record {count} at byte {offset} claims {length} bytes but the file ends at byte {size} "
                    "(a truncated copy, or not a TFRecord file). Re-create the shards with polarmask-create-tfrecords, "
                    "or leave this file out of the data.*_files pattern")
            stream.seek(end)
            offset, count = end, count + 1
    return count


def check_shards(paths):
    """check_shard for every path; returns the total number of records."""
    return sum(check_shard(path) for path in paths)


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
    check_shards(files)
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
        lambda path: tf.data.TFRecordDataset(path).ignore_errors(log_warning=True),
        cycle_length=min(len(files), 4),
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=deterministic,
    )
    if records_sharded:
        dataset = dataset.shard(input_context.num_input_pipelines, input_context.input_pipeline_id)
    if training:
        dataset = dataset.shuffle(data.shuffle_buffer, seed=data.seed, reshuffle_each_iteration=True)
    seeds = tf.data.Dataset.random(seed=data.seed, rerandomize_each_iteration=True).batch(2)
    dataset = tf.data.Dataset.zip((dataset, seeds))
    dataset = dataset.map(
        make_example_fn(config, training), num_parallel_calls=tf.data.AUTOTUNE, deterministic=deterministic
    ).ignore_errors(log_warning=True)
    if training:
        dataset = dataset.repeat()  # after the skips: a pass with no usable record ends the dataset
    dataset = dataset.batch(batch_size, drop_remainder=training)
    options = tf.data.Options()
    options.deterministic = deterministic
    return dataset.with_options(options).prefetch(tf.data.AUTOTUNE)
