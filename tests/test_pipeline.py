"""The tf.data pipeline: static specs, determinism, sharding, augmentation geometry, flips, real data."""

import os

import numpy as np
import pytest
import tensorflow as tf

from polarmask_tf import config as cfg
from polarmask_tf import geometry
from polarmask_tf.data import augment, pipeline, records_writer, synthetic, tfrecord
from polarmask_tf.modeling import preprocessing, pyramid

from conftest import shared_path

DEVNULL = open(os.devnull, "w")


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """A 10-image synthetic dataset as TFRecords: train (2 shards, 8 images), val (1 shard, 2 images)."""
    root = tmp_path_factory.mktemp("pipeline")
    synthetic.generate_dataset(root / "synthetic", num_images=10, seed=3, val_fraction=0.2)
    for split, count in (("train", 2), ("val", 1)):
        records_writer.convert(
            str(root / "synthetic" / "annotations" / f"instances_{split}.json"),
            str(root / "synthetic" / split),
            str(root / "records" / split),
            num_shards=count,
            progress_stream=DEVNULL,
        )
    return root / "records"


def make_config(shards, *overrides):
    return cfg.load_config(
        None,
        [
            f"data.train_files={shards}/train-*.tfrecord",
            f"data.val_files={shards}/val-*.tfrecord",
            "data.image_size=[256, 256]",
            "data.batch_size=2",
            "model.backbone=mobilenet_v2",
            *overrides,
        ],
    )


@pytest.mark.slow
def test_training_batches_have_static_shapes_and_real_targets(shards):
    config = make_config(shards, "data.scale_range=[0.6, 1.0]", "data.photometric_jitter=true")
    dataset = pipeline.build_dataset(config, training=True)
    images_spec, targets_spec = dataset.element_spec
    num_points = pyramid.num_locations(*preprocessing.padded_image_shape(config.data))
    assert num_points == 32 * 32 + 16 * 16 + 8 * 8 + 4 * 4 + 2 * 2
    assert images_spec.shape == (2, 256, 256, 3) and images_spec.dtype == tf.float32
    expected = {"labels": (2, num_points), "rays": (2, num_points, 36), "boxes": (2, num_points, 4),
                "centerness": (2, num_points), "image_id": (2,), "image_size": (2, 2), "resized_size": (2, 2),
                "scale": (2, 2), "num_instances": (2,)}
    assert {k: tuple(v.shape) for k, v in targets_spec.items()} == expected
    for images, batch in dataset.take(3):
        assert -1.0 <= float(tf.reduce_min(images)) and float(tf.reduce_max(images)) <= 1.0
        positive = batch["labels"].numpy() > 0
        assert positive.sum() > 0 and batch["labels"].numpy().max() <= 7
        assert np.all(batch["rays"].numpy()[positive] > 0) and not batch["rays"].numpy()[~positive].any()
        assert np.all(batch["resized_size"].numpy() <= 256)


@pytest.mark.slow
def test_evaluation_is_one_ordered_pass_with_image_info(shards):
    config = make_config(shards)
    batches = list(pipeline.build_dataset(config, training=False))
    ids = np.concatenate([b["image_id"].numpy() for _, b in batches])
    assert ids.tolist() == [9, 10]  # val holds the last images of the synthetic set
    for _, batch in batches:
        size, resized, scale = (batch[k].numpy() for k in ("image_size", "resized_size", "scale"))
        np.testing.assert_allclose(resized / size, scale, rtol=1e-6)
        assert np.all(resized.max(axis=1) == 256)  # keep_ratio: the longer side fills the canvas


@pytest.mark.slow
def test_deterministic_mode_repeats_exactly(shards):
    config = make_config(shards, "data.deterministic=true", "data.scale_range=[0.5, 1.0]")
    first = [b for b in pipeline.build_dataset(config, training=True).take(3)]
    second = [b for b in pipeline.build_dataset(config, training=True).take(3)]
    for (image_a, targets_a), (image_b, targets_b) in zip(first, second, strict=True):
        np.testing.assert_array_equal(image_a, image_b)
        np.testing.assert_array_equal(targets_a["rays"], targets_b["rays"])
    sizes = np.concatenate([t["resized_size"].numpy() for _, t in first])
    assert len({tuple(s) for s in sizes}) > 1  # multi-scale really varies the scale


@pytest.mark.slow
def test_input_context_shards_per_pipeline_and_splits_the_global_batch(shards):
    config = make_config(shards, "data.batch_size=4")
    seen = []
    for pipeline_id in range(2):
        context = tf.distribute.InputContext(num_input_pipelines=2, input_pipeline_id=pipeline_id,
                                             num_replicas_in_sync=2)
        dataset = pipeline.build_dataset(config, training=False, input_context=context)
        assert dataset.element_spec[0].shape[0] is None or dataset.element_spec[0].shape[0] == 2
        seen.append({int(i) for _, t in dataset for i in t["image_id"].numpy()})
    train_ids = {int(i)
                 for _, t in pipeline.build_dataset(
                     make_config(shards, "data.val_files=" + str(shards) + "/train-*.tfrecord"), training=False)
                 for i in t["image_id"].numpy()}
    assert seen[0].isdisjoint(seen[1])
    context = tf.distribute.InputContext(num_input_pipelines=2, input_pipeline_id=0, num_replicas_in_sync=2)
    train = pipeline.build_dataset(config, training=True, input_context=context)
    assert train.element_spec[0].shape[0] == 2
    assert len(train_ids) == 8
    # MirroredStrategy: one input pipeline feeding 2 replicas still batches per replica
    mirrored = tf.distribute.InputContext(num_input_pipelines=1, input_pipeline_id=0, num_replicas_in_sync=2)
    assert pipeline.build_dataset(config, training=True, input_context=mirrored).element_spec[0].shape[0] == 2


@pytest.mark.parametrize("scale", [3, 2])
def test_resize_moves_polygons_with_the_pixels(scale):
    # Pixels 5..12 x 3..9 set; the rectangle along their outer edges must land on the resized pixels.
    mask = np.zeros((16, 20), np.float32)
    mask[3:10, 5:13] = 1
    edges = np.array([[4.5, 2.5], [12.5, 2.5], [12.5, 9.5], [4.5, 9.5]], np.float32)
    instances = augment.Instances(
        labels=tf.constant([1]), boxes=tf.constant([[4.5, 2.5, 12.5, 9.5]]),
        centers=geometry.mass_center(edges[None]), polygons=tf.constant(edges[None]), num_vertices=tf.constant([4]),
    )
    size = tf.constant([16 * scale, 20 * scale])
    resized, moved, factors = augment.resize(mask[..., None], instances, size)
    np.testing.assert_allclose(factors, [scale, scale])
    # Shrink by a hair so that the boundary pixel centres outside the edges are not counted.
    inset = moved.polygons[0].numpy() + np.float32([[1, 1], [-1, 1], [-1, -1], [1, -1]]) * 0.01
    filled = geometry.rasterize(inset, *size.numpy()).numpy()
    expected = np.zeros(size.numpy(), bool)
    expected[3 * scale : 10 * scale, 5 * scale : 13 * scale] = True
    np.testing.assert_array_equal(filled, expected)
    interior = np.zeros_like(expected)
    interior[3 * scale + 1 : 10 * scale - 1, 5 * scale + 1 : 13 * scale - 1] = True
    assert np.all(resized.numpy()[..., 0][interior] > 0.99) and np.all(resized.numpy()[..., 0][~expected] < 0.5)
    np.testing.assert_allclose(moved.centers[0], geometry.mass_center(moved.polygons[0]), atol=1e-4)
    np.testing.assert_allclose(moved.boxes[0], [4.5 * scale + (scale - 1) / 2, 2.5 * scale + (scale - 1) / 2,
                                                12.5 * scale + (scale - 1) / 2, 9.5 * scale + (scale - 1) / 2],
                               atol=1e-4)


def test_horizontal_flip_mirrors_image_polygons_and_keeps_orientation():
    image = tf.reshape(tf.range(2 * 5 * 3, dtype=tf.float32), [2, 5, 3])
    polygon = np.array([[0, 0], [3, 0], [3, 1], [3, 1]], np.float32)
    instances = augment.Instances(
        labels=tf.constant([1]), boxes=tf.constant([[0.0, 0.0, 3.0, 1.0]]), centers=tf.constant([[1.0, 0.5]]),
        polygons=tf.constant(polygon[None]), num_vertices=tf.constant([3]),
    )
    flipped, moved = augment.horizontal_flip(image, instances)
    np.testing.assert_array_equal(flipped.numpy()[:, ::-1], image.numpy())
    np.testing.assert_allclose(moved.boxes, [[1.0, 0.0, 4.0, 1.0]])
    np.testing.assert_allclose(moved.centers, [[3.0, 0.5]])
    np.testing.assert_allclose(moved.polygons[0], [[1, 1], [1, 0], [4, 0], [4, 0]])
    assert np.sign(float(geometry.polygon_area(moved.polygons[0]))) == np.sign(float(geometry.polygon_area(polygon)))


@pytest.mark.slow
def test_flipped_image_gets_mirrored_targets(shards):
    """Stretching every image to the full canvas makes the image flip a symmetry of the location grid."""
    results = {}
    for prob in (0.0, 1.0):
        config = make_config(shards, "data.resize=stretch", f"data.hflip_prob={prob}", "data.deterministic=true")
        images, batch = next(iter(pipeline.build_dataset(config, training=True)))
        results[prob] = images.numpy(), {k: v.numpy() for k, v in batch.items()}
    (plain, original), (mirrored_image, flipped) = results[0.0], results[1.0]
    np.testing.assert_array_equal(original["image_id"], flipped["image_id"])
    np.testing.assert_allclose(mirrored_image[:, :, ::-1], plain, atol=1e-5)
    points, levels = pyramid.locations(256, 256)
    lookup = {(float(p[0]), float(p[1]), int(level)): i
              for i, (p, level) in enumerate(zip(points, levels, strict=True))}
    partner = np.array([lookup[(255.0 - float(p[0]), float(p[1]), int(level))]
                        for p, level in zip(points, levels, strict=True)])
    hflip = geometry.ray_index_map(36, "hflip")
    assert (original["labels"] > 0).sum() > 10
    np.testing.assert_array_equal(flipped["labels"][:, partner], original["labels"])
    np.testing.assert_allclose(flipped["rays"][:, partner][..., hflip], original["rays"], atol=2e-3)
    np.testing.assert_allclose(flipped["centerness"][:, partner], original["centerness"], atol=1e-4)
    np.testing.assert_allclose(flipped["boxes"][:, partner][..., [2, 1, 0, 3]], original["boxes"], atol=1e-3)


def test_normalisation_rules():
    pixel = tf.constant([[[255.0, 0.0, 10.0]]])
    rules = {
        "caffe": [10 - 103.939, -116.779, 255 - 123.68],
        "caffe_detectron": [10 - 102.9801, -115.9465, 255 - 122.7717],
        "torch": [(255 - 123.675) / 58.395, -116.28 / 57.12, (10 - 103.53) / 57.375],
        "tf": [1.0, -1.0, 10 / 127.5 - 1],
    }
    for rule, expected in rules.items():
        np.testing.assert_allclose(preprocessing.normalize_image(pixel, rule), [[expected]], rtol=1e-6, atol=1e-5)
    with pytest.raises(ValueError, match="unknown input normalisation 'vgg'"):
        preprocessing.normalize_image(pixel, "vgg")


@pytest.mark.parametrize("backbone, rule", [
    ("resnet50", "caffe"), ("resnet101", "caffe"), ("resnext101_64x4d", "torch"),
    ("mobilenet_v2", "tf"), ("tiny", "tf"),
])
def test_auto_normalisation_follows_the_backbone_and_an_explicit_rule_wins(backbone, rule):
    assert preprocessing.input_normalization(cfg.load_config(None, [f"model.backbone={backbone}"])) == rule
    explicit = cfg.load_config(None, [f"model.backbone={backbone}", "data.normalization=caffe_detectron"])
    assert preprocessing.input_normalization(explicit) == "caffe_detectron"


def test_missing_shards_name_the_pattern(tmp_path):
    config = cfg.load_config(None, [f"data.train_files={tmp_path}/nothing-*.tfrecord"])
    with pytest.raises(ValueError, match="nothing-\\*.tfrecord"):
        pipeline.build_dataset(config, training=True)


@pytest.mark.slow
def test_more_instances_than_the_maximum_keeps_the_largest(shards):
    config = make_config(shards, "data.max_instances=2")
    _, batch = next(iter(pipeline.build_dataset(config, training=False)))
    assert np.all(batch["num_instances"].numpy() <= 2)
    parsed = tfrecord.parse_example(next(iter(tf.data.TFRecordDataset(pipeline.list_shards(config.data.val_files)))))
    instances, count = pipeline._select_instances(parsed, 2, 16)
    assert int(count) == 2
    largest = np.sort(parsed["areas"].numpy())[::-1][:2]
    kept = {int(label) for label in instances.labels.numpy()}
    assert kept <= {int(label) for label, area in zip(parsed["labels"].numpy(), parsed["areas"].numpy(), strict=True)
                    if area >= largest[-1]}


TRAIN_POOL = [
    ("coco128", ("coco128", "annotations", "instances_train2017.json"), ("coco128", "train2017")),
    ("coco_mini", ("coco_mini", "annotations", "instances_train2017.json"), ("coco_mini", "train2017")),
    ("tiny_coco", ("tiny_coco", "tiny_coco", "annotations", "instances_train2017.json"),
     ("tiny_coco", "tiny_coco", "train2017")),
]


@pytest.fixture(scope="module")
def train_pool(tmp_path_factory):
    """The train pool of DESIGN.md (three COCO train2017 subsets) as TFRecords."""
    records = tmp_path_factory.mktemp("train_pool")
    for name, annotations, images in TRAIN_POOL:
        records_writer.convert(
            str(shared_path("data", *annotations)), str(shared_path("data", *images)),
            str(records / f"{name}-train"), num_shards=2, skip_empty=True, progress_stream=DEVNULL,
        )
    return records


@pytest.mark.slow
@pytest.mark.parametrize("size, padded", [((512, 512), (512, 512)), ((800, 1333), (896, 1408))])
def test_runs_on_the_coco_train_pool(train_pool, size, padded):
    config = cfg.load_config(None, [f"data.train_files={train_pool}/*-train-*.tfrecord", "data.batch_size=4",
                                    f"data.image_size=[{size[0]}, {size[1]}]"])
    assert len(pipeline.list_shards(config.data.train_files)) == 6
    images, batch = next(iter(pipeline.build_dataset(config, training=True)))
    assert images.shape == (4,) + padded + (3,)
    assert (batch["labels"].numpy() > 0).sum() > 0
    assert batch["labels"].numpy().max() <= 80


# --- bad records: refused by name when the dataset is built, or skipped when read ---------------


def _records(shards, split="val"):
    path = tf.io.gfile.glob(str(shards / f"{split}-*.tfrecord"))[0]
    return path, [r.numpy() for r in tf.data.TFRecordDataset(path)]


def _write(path, records):
    with tf.io.TFRecordWriter(str(path)) as writer:
        for record in records:
            writer.write(record)


def _with(record, **features):
    example = tf.train.Example.FromString(record)
    for key, value in features.items():
        feature = example.features.feature[key]
        if isinstance(value, bytes):
            feature.bytes_list.value[:] = [value]
        else:
            feature.int64_list.value[:] = value
    return example.SerializeToString()


def _image_ids(config):
    return [int(i) for _, batch in pipeline.build_dataset(config, training=False) for i in batch["image_id"]]


def test_a_truncated_or_garbled_shard_is_refused_naming_file_record_and_offset(shards, tmp_path):
    path, records = _records(shards)
    _write(tmp_path / "good.tfrecord", records)
    assert pipeline.check_shard(str(tmp_path / "good.tfrecord")) == len(records) == 2
    data = (tmp_path / "good.tfrecord").read_bytes()
    first = 12 + len(records[0]) + 4
    (tmp_path / "cut.tfrecord").write_bytes(data[: first + 100])
    with pytest.raises(ValueError, match=rf"cut.tfrecord: record 1 at byte {first} claims {len(records[1])} bytes"):
        pipeline.check_shard(str(tmp_path / "cut.tfrecord"))
    (tmp_path / "garbage.tfrecord").write_bytes(data[:first] + os.urandom(64) + data[first + 64:])
    with pytest.raises(ValueError, match=r"garbage.tfrecord: (record 1 at byte|truncated at record)"):
        pipeline.check_shard(str(tmp_path / "garbage.tfrecord"))
    config = make_config(shards, f"data.val_files={tmp_path}/cut.tfrecord")
    with pytest.raises(ValueError, match=r"cut.tfrecord: record 1 .*Re-create the shards"):
        pipeline.build_dataset(config, training=False)


def test_records_that_fail_when_read_are_skipped_and_the_rest_kept(shards, tmp_path):
    _, records = _records(shards)
    train_path, train_records = _records(shards, "train")
    good = [records[0], train_records[0]]
    ids = [int(tf.train.Example.FromString(r).features.feature["image/id"].int64_list.value[0]) for r in good]
    undecodable = _with(train_records[1], **{"image/encoded": b"not an image" * 10})
    label = _with(records[1], **{"instance/label": [1, 99]})
    _write(tmp_path / "mixed-a.tfrecord", [good[0], undecodable, records[1]])
    data = bytearray((tmp_path / "mixed-a.tfrecord").read_bytes())
    data[-len(records[1]) // 2] ^= 0xFF  # in the last record's payload: framing intact, its checksum fails
    (tmp_path / "mixed-a.tfrecord").write_bytes(bytes(data))
    _write(tmp_path / "mixed-b.tfrecord", [label, good[1]])
    config = make_config(shards, f"data.val_files={tmp_path}/mixed-*.tfrecord", "model.num_classes=7")
    assert sorted(_image_ids(config)) == sorted(ids)


def test_a_pass_with_no_usable_record_ends_training_data_instead_of_spinning(shards, tmp_path):
    _, records = _records(shards)
    _write(tmp_path / "bad.tfrecord", [_with(r, **{"image/encoded": b"\x89PNG broken"}) for r in records])
    config = make_config(shards, f"data.train_files={tmp_path}/bad.tfrecord")
    with pytest.raises((StopIteration, tf.errors.OutOfRangeError)):
        next(iter(pipeline.build_dataset(config, training=True)))


def test_images_are_resized_before_the_float_cast():
    """Full-size photos stay uint8 until resized (a 12000 x 12000 image costs 0.4 GB, not 2.1)."""
    config = cfg.load_config(None, ["data.image_size=[256, 256]", "model.backbone=mobilenet_v2"])
    example_fn = tf.function(pipeline.make_example_fn(config, training=False))
    graph = example_fn.get_concrete_function(tf.TensorSpec([], tf.string), tf.TensorSpec([2], tf.int64)).graph
    resizes = [op for op in graph.get_operations() if op.type == "ResizeBilinear"]
    assert resizes and all(op.inputs[0].dtype == tf.uint8 for op in resizes)
