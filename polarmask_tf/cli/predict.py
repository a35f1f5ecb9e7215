"""polarmask-predict: runs a trained PolarMask on image files and saves overlays, or shows the targets of TFRecords.

    polarmask-predict --model-dir runs/quickstart --images 'photos/*.jpg' --output-dir out
    polarmask-predict --tflite exports/tflite/polarmask_int8.tflite --images 'photos/*.jpg' --output-dir out
    polarmask-predict --config configs/quickstart.yaml --show-targets \\
        --images 'data/synthetic/tfrecords/train-*.tfrecord' --output-dir out --max-images 8

Predictions: one PNG per readable image (`<stem>.png`, translucent polygons, outlines, class and
score; `--draw-rays` adds each detection's rays) and `results.json`, COCO-style results entries
with "file_name" (the path as found) and "category_name" instead of an image id; their bbox and
RLE are in COCO's frame exactly as polarmask_tf.evaluation writes them. Detections below
--score-threshold are neither drawn nor written. Files that are not readable images are skipped
with a message; the exit status is 1 only when no image could be read.

--show-targets (no model needed): the inputs are TFRecord shards (polarmask-create-tfrecords);
the first --max-images examples go through the evaluation-mode pipeline (resize, normalise, pad,
encode targets: data.pipeline.make_example_fn, no augmentation) and each is drawn as
`targets-<image id>.png`: positive locations coloured by FPN level and, per instance, the polygon
decoded from the rays of its most central positive. The check to make on your own data before
training.

--tflite runs a LiteRT file of polarmask-export --tflite (polarmask_tf.serving.tflite_runner, one
image at a time) instead of a checkpoint; its config and class names default to the config.yaml
and labels.json beside the file.

The config defaults to config.yaml of the model dir; class names come from
--label-map, else from the model dir's labels.json, else from the `<prefix>-labels.json` that
polarmask-create-tfrecords wrote beside the config's training shards, else "class k".
"""

import glob
import json
import os
import sys

import numpy as np

from polarmask_tf.cli import common


def expand_inputs(patterns):
    """(files, others): the regular files named by paths, directories (their entries, sorted) and
    globs, in order, without repeats; and the other paths met (FIFOs, sockets, devices,
    directories inside a glob), which are never opened: reading a FIFO would block. URIs
    (gs://...) are listed through tf.io.gfile, where every entry that is not a directory is a file."""
    files, others = [], []
    for pattern in patterns:
        if "://" in pattern:
            import tensorflow as tf

            if tf.io.gfile.isdir(pattern):
                found = sorted(os.path.join(pattern, name.rstrip("/")) for name in tf.io.gfile.listdir(pattern))
            else:
                found = sorted(tf.io.gfile.glob(pattern))
            for path in found:
                if path not in files and path not in others:
                    (others if tf.io.gfile.isdir(path) else files).append(path)
            continue
        if os.path.isdir(pattern):  # local: the branch for local paths (FIFOs, links: see above)
            found = sorted(os.path.join(pattern, name) for name in os.listdir(pattern))  # local: as above
        elif os.path.lexists(pattern):  # local: as above
            found = [pattern]
        else:
            found = sorted(glob.glob(pattern))  # local: as above
        for path in found:
            if path in files or path in others:
                continue
            (files if os.path.isfile(path) else others).append(path)  # local: as above
    return files, others


def output_names(paths, suffix=".png"):
    """Distinct output file names <stem><suffix> for input paths (a counter separates equal stems)."""
    names, used = [], set()
    for path in paths:
        stem = os.path.splitext(os.path.basename(path))[0] or "image"
        name, count = stem + suffix, 1
        while name in used:
            name, count = f"{stem}-{count}{suffix}", count + 1
        used.add(name)
        names.append(name)
    return names


def _write_png(path, rgb):
    import cv2

    from polarmask_tf import fileio

    ok, png = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    if not ok:
        raise OSError(f"could not encode {path} as PNG")
    fileio.write_bytes(path, png.tobytes())


def predict_images(args, config, stream):
    """Overlays and results.json for image files; returns the exit status. The model is loaded
    only once a readable image is found."""
    from polarmask_tf import evaluation, fileio, inference, visualize
    from polarmask_tf.data import coco
    from polarmask_tf.progress import ProgressBar

    files, others = expand_inputs(args.images)
    for path in others:
        print(f"skipped: {path} is not a regular file", file=stream)
    files = files[: args.max_images]
    if not files:
        print(f"error: no regular files match {' '.join(args.images)}", file=sys.stderr)
        return 1
    label_map = common.label_map(args, config)
    names = {c.label: c.name for c in label_map.categories}
    outputs = dict(zip(files, output_names(files), strict=True))
    predictor, results, written, skipped = None, [], 0, len(others)
    bar = ProgressBar(len(files), desc="predict", stream=sys.stderr)
    for first in range(0, len(files), args.batch_size):
        batch, loaded = files[first : first + args.batch_size], []
        for path in batch:
            try:
                loaded.append((path, evaluation.load_image(path)))
            except coco.ImageError as error:
                skipped += 1
                print(f"skipped: {error}", file=stream)
        if loaded and predictor is None:
            if args.tflite:
                from polarmask_tf.serving import tflite_runner

                predictor = tflite_runner.TFLiteDetector(args.tflite, config)
            else:
                predictor = inference.Predictor(config, inference.load_model(config, common.model_source(args)),
                                                args.batch_size)
            fileio.makedirs(args.output_dir)
        detections = predictor.predict([image for _, image in loaded]) if loaded else []
        for (path, image), found in zip(loaded, detections, strict=True):
            keep = found["scores"] >= args.score_threshold
            found = {key: value[keep] for key, value in found.items()}
            overlay = visualize.draw_detections(image, found, names, args.score_threshold, args.draw_rays)
            _write_png(os.path.join(args.output_dir, outputs[path]), overlay)
            for entry in evaluation.detections_to_coco(None, found, label_map, *image.shape[:2]):
                del entry["image_id"]
                category = label_map.categories[label_map.label_of(entry["category_id"]) - 1]
                results.append({"file_name": path, "category_name": category.name, **entry})
            written += 1
        bar.update(len(batch))
    bar.close()
    if not written:
        print(f"error: none of the {len(files)} files is a readable image", file=sys.stderr)
        return 1
    results_path = os.path.join(args.output_dir, "results.json")
    fileio.write_text(results_path, json.dumps(results))
    print(f"{written} images drawn to {args.output_dir}, {skipped} skipped; {len(results)} detections with score >= "
          f"{args.score_threshold} in {results_path}", file=stream)
    return 0


def show_targets(args, config, stream):
    """targets-<image id>.png for the first examples of TFRecord shards; returns the exit status."""
    import tensorflow as tf

    from polarmask_tf import fileio, visualize
    from polarmask_tf.data import pipeline

    files = [path for path in expand_inputs(args.images)[0] if path.endswith(".tfrecord")]
    if not files:
        print(f"error: --show-targets needs TFRecord shards (*.tfrecord); none match {' '.join(args.images)}",
              file=sys.stderr)
        return 1
    dataset = tf.data.Dataset.zip((tf.data.TFRecordDataset(files), tf.data.Dataset.random(seed=0).batch(2)))
    dataset = dataset.map(pipeline.make_example_fn(config, training=False)).take(args.max_images or 8)
    fileio.makedirs(args.output_dir)
    count = 0
    for image, targets in dataset:
        targets = {key: value.numpy() for key, value in targets.items()}
        picture = visualize.draw_targets(image.numpy(), targets, config, draw_rays=args.draw_rays)
        path = os.path.join(args.output_dir, f"targets-{int(targets['image_id'])}.png")
        _write_png(path, picture)
        positives = int(np.count_nonzero(targets["labels"]))
        print(f"{path}: {int(targets['num_instances'])} instances, {positives} positive locations", file=stream)
        count += 1
    return 0 if count else 1


def build_parser():
    parser = common.parser(__doc__)
    common.add_model_source(parser, required=False)
    common.add_config(parser)
    parser.add_argument("--images", nargs="+", action="extend", required=True, help="image files, directories or globs")
    parser.add_argument("--output-dir", default="predictions")
    common.add_score_threshold(parser, 0.3)
    common.add_label_map(parser)
    parser.add_argument("--draw-rays", action="store_true", help="draw each detection's rays from its centre")
    parser.add_argument("--show-targets", action="store_true",
                        help="draw the encoded training targets of TFRecord shards instead of predicting")
    parser.add_argument("--max-images", type=common.positive_int, default=None,
                        help="only the first N inputs (targets: default 8)")
    parser.add_argument("--batch-size", type=common.positive_int, default=4)
    parser.add_argument("--tflite", help="a .tflite file of polarmask-export --tflite to run instead of a checkpoint")
    return parser


def _tflite_config(args):
    """The config of a --tflite run (--config, else config.yaml beside the file, then --set); sets
    args.label_map to the labels.json beside the file when none is given and it exists."""
    from polarmask_tf import config as cfg
    from polarmask_tf.serving import tflite

    if args.show_targets or common.model_source(args) is not None:
        raise common.UsageError("--tflite runs the file alone: drop --show-targets, --model-dir and --checkpoint")
    directory = os.path.dirname(os.path.abspath(args.tflite))
    config_path = args.config or os.path.join(directory, tflite.CONFIG_FILE)
    if not os.path.isfile(config_path):  # local: the LiteRT interpreter reads local files only
        raise cfg.ConfigError(f"no config: pass --config ({args.tflite} has no {tflite.CONFIG_FILE} beside it)")
    labels = os.path.join(directory, tflite.LABELS_FILE)
    if args.label_map is None and os.path.isfile(labels):  # local: as above
        args.label_map = labels
    return cfg.load_config(config_path, args.set)


def predict(args, stream):
    if args.tflite:
        return predict_images(args, _tflite_config(args), stream)
    if not args.show_targets and common.model_source(args) is None:
        raise common.UsageError("--model-dir (or --checkpoint) is required, except with --show-targets")
    config = common.load_model_config(args)
    if args.show_targets:
        return show_targets(args, config, stream)
    return predict_images(args, config, stream)


def main(argv=None, stream=None):
    return common.guarded(predict, common.parse(build_parser(), argv), stream or sys.stdout)


if __name__ == "__main__":
    sys.exit(main())
