"""Input pipeline throughput on the shared COCO train pool, and target encoding against the original's way.

    python benchmarks/data_pipeline.py [--batches 20] [--repeats 3] [--encode-images 48]

1. Converts the train pool (coco128, coco_mini/train2017, tiny_coco/train2017 from ../shared/data;
   258 images) to TFRecords in a temporary directory (timed once).
2. Whole pipeline (read, parse, decode, resize + flip, encode targets, batch 4) at a 512 max side and
   at 1333x800: images/s, median over --repeats runs of --batches batches after a warm-up.
3. Target encoding alone on the same images (instances already resized into the padded canvas):
   ours (tf.function, and under XLA), and the original's way (data.reference_targets: numpy/OpenCV
   per image, on the instances' masks), images/s and ratio against the original.
"""

import argparse
import os
import pathlib
import statistics
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from polarmask_tf import config as cfg  # noqa: E402
from polarmask_tf.data import augment, pipeline, records_writer, reference_targets, targets, tfrecord  # noqa: E402
from polarmask_tf.modeling import preprocessing  # noqa: E402

SHARED = pathlib.Path(__file__).resolve().parent.parent.parent / "shared" / "data"
TRAIN_POOL = [
    ("coco128", SHARED / "coco128/annotations/instances_train2017.json", SHARED / "coco128/train2017"),
    ("coco_mini", SHARED / "coco_mini/annotations/instances_train2017.json", SHARED / "coco_mini/train2017"),
    ("tiny_coco", SHARED / "tiny_coco/tiny_coco/annotations/instances_train2017.json",
     SHARED / "tiny_coco/tiny_coco/train2017"),
]
SETTINGS = [("512 max side", (512, 512)), ("1333x800", (800, 1333))]


def convert_pool(directory):
    start = time.perf_counter()
    images = 0
    for name, annotations, images_dir in TRAIN_POOL:
        report = records_writer.convert(
            str(annotations), str(images_dir), os.path.join(directory, f"{name}-train"), num_shards=2,
            skip_empty=True, progress_stream=open(os.devnull, "w"),
        )
        images += report["images"]["written"]
    return images, time.perf_counter() - start


def pipeline_rate(config, batches, repeats):
    iterator = iter(pipeline.build_dataset(config, training=True))
    for _ in range(5):
        next(iterator)
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(batches):
            images, _ = next(iterator)
        rates.append(batches * images.shape[0] / (time.perf_counter() - start))
    return statistics.median(rates)


def prepared_instances(config, count):
    """(labels, boxes, centres, polygons, masks) per image, resized into the padded canvas."""
    data = config.data
    padded = preprocessing.padded_image_shape(data)
    files = pipeline.list_shards(data.train_files)
    prepared = []
    for serialized in tf.data.TFRecordDataset(files).take(count):
        parsed = tfrecord.parse_example(serialized)
        image = tf.cast(tf.io.decode_image(parsed["encoded"], channels=3, expand_animations=False), tf.float32)
        instances, _ = pipeline._select_instances(parsed, data.max_instances, data.max_vertices)
        size = preprocessing.resized_shape(tf.shape(image)[0], tf.shape(image)[1], data.image_size, data.resize)
        _, instances, _ = augment.resize(image, instances, size)
        valid = instances.labels.numpy() > 0
        polygons = instances.polygons.numpy()[valid]
        masks = np.zeros((int(valid.sum()),) + padded, np.uint8)
        for mask, polygon in zip(masks, polygons, strict=True):
            cv2.fillPoly(mask, [np.round(polygon).astype(np.int32)], 1)
        prepared.append((instances, masks, instances.labels.numpy()[valid]))
    return prepared


def encoding_table(config, count, repeats):
    padded = preprocessing.padded_image_shape(config.data)
    prepared = prepared_instances(config, count)
    polar = config.polar

    def ours(jit):
        fn = tf.function(lambda labels, boxes, centers, polygons: targets.encode_targets(
            labels, boxes, centers, polygons, padded, polar), jit_compile=jit)
        return lambda: [fn(i.labels, i.boxes, i.centers, i.polygons)["rays"].numpy() for i, _, _ in prepared]

    def original():
        return [reference_targets.original_targets(m, labels, padded) for _, m, labels in prepared if len(labels)]

    rows = []
    for name, run in [("original's way (numpy/OpenCV, per image)", original), ("ours, tf.function", ours(False)),
                      ("ours, tf.function + XLA", ours(True))]:
        run()  # warm-up and tracing
        seconds = []
        for _ in range(repeats):
            start = time.perf_counter()
            run()
            seconds.append(time.perf_counter() - start)
        rows.append((name, count / statistics.median(seconds)))
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--encode-images", type=int, default=48)
    args = parser.parse_args()
    missing = [str(a) for _, a, _ in TRAIN_POOL if not a.exists()]
    if missing:
        raise SystemExit(f"the train pool is missing: {missing}")
    print(f"TensorFlow {tf.__version__}, {os.cpu_count()} CPUs")
    with tempfile.TemporaryDirectory() as directory:
        images, seconds = convert_pool(directory)
        print(f"\nTFRecord conversion of the train pool: {images} images in {seconds:.1f} s "
              f"({images / seconds:.1f} images/s)")
        base = ["model.backbone=mobilenet_v2", f"data.train_files={directory}/*-train-*.tfrecord", "data.batch_size=4"]
        print(f"\nWhole pipeline, batch 4, median of {args.repeats} x {args.batches} batches")
        print(f"{'setting':<14} {'padded':>11} {'images/s':>9}")
        for name, size in SETTINGS:
            config = cfg.load_config(None, base + [f"data.image_size=[{size[0]}, {size[1]}]"])
            padded = preprocessing.padded_image_shape(config.data)
            print(f"{name:<14} {padded[0]:>5}x{padded[1]:<5} {pipeline_rate(config, args.batches, args.repeats):>9.1f}")
        for name, size in SETTINGS:
            config = cfg.load_config(None, base + [f"data.image_size=[{size[0]}, {size[1]}]"])
            rows = encoding_table(config, args.encode_images, args.repeats)
            print(f"\nTarget encoding alone at {name}, {args.encode_images} images, median of {args.repeats}")
            print(f"{'variant':<42} {'images/s':>9} {'vs original':>12}")
            for variant, rate in rows:
                print(f"{variant:<42} {rate:>9.1f} {rate / rows[0][1]:>11.2f}x")


if __name__ == "__main__":
    main()
