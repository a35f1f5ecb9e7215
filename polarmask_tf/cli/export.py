"""polarmask-export: exports a trained PolarMask as a SavedModel for TensorFlow Serving, or as
LiteRT (TFLite) files for devices.

    polarmask-export --model-dir runs/quickstart --export-dir exports/polarmask [--version 1]
        [--config C] [--max-detections K] [--score-threshold T] [--input-size S] [--mask-size M]
    polarmask-export --model-dir runs/quickstart --export-dir exports/tflite \
        --tflite float32 float16 int8 [--representative-images 100] [--input-size S]

--tflite writes EXPORT_DIR/polarmask_<quantization>.tflite for each quantization named, with
labels.json and config.yaml beside them (polarmask-predict --tflite reads both); int8 calibrates
on the first --representative-images images of the config's data.train_files. The contract is in
polarmask_tf/serving/tflite.py; EXPORT_DIR is local.

Writes EXPORT_DIR/VERSION in TF Serving's layout (with warm-up requests in assets.extra/) and an
example models.config and batching_parameters.txt in EXPORT_DIR. The signatures, outputs and
padding rules are documented in polarmask_tf/serving/export.py; docs/serving.md shows the docker
command. The config defaults to config.yaml of the model dir; category ids and names come from
--label-map, else the model dir's labels.json, else the labels json beside the config's training
shards. `python export_saved_model.py` is the same command. --export-dir, --model-dir,
--checkpoint, --config and --label-map may be URIs (gs://, s3://, hdfs://): on a URI the version
is published by a copy with saved_model.pb last (see polarmask_tf/serving/export.py).
"""

import os
import sys
import time

from polarmask_tf.cli import common


def build_parser():
    parser = common.parser(__doc__)
    common.add_model_source(parser)
    parser.add_argument("--export-dir", required=True,
                        help="TF Serving model base path, local or a URI (gs://...); the version goes in a subdir")
    parser.add_argument("--version", type=int, help="version number (default: 1 + the largest existing one)")
    common.add_config(parser)
    parser.add_argument("--max-detections", type=int,
                        help="K, detection slots per image (default: postprocess.max_detections)")
    parser.add_argument("--score-threshold", type=float,
                        help="class probability threshold (default: postprocess.score_threshold)")
    parser.add_argument("--input-size", type=int, help="resize images to fit S x S (default: data.image_size)")
    parser.add_argument("--mask-size", type=int, help="also output box-aligned M x M uint8 masks")
    parser.add_argument("--max-image-pixels", type=int, help="reject larger images (default: 10000 x 10000)")
    common.add_label_map(parser)
    parser.add_argument("--model-name", default="polarmask",
                        help="model name in models.config and the warm-up requests")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing version directory")
    parser.add_argument("--tflite", nargs="+", metavar="QUANTIZATION", choices=("float32", "float16", "int8"),
                        help="write LiteRT files (float32, float16, int8) instead of a SavedModel")
    parser.add_argument("--representative-images", type=common.positive_int, default=100,
                        help="int8: calibration images from data.train_files (default 100)")
    return parser


def _check(args):
    for name, least in (("version", 1), ("max_detections", 1), ("input_size", 32), ("mask_size", 1),
                        ("max_image_pixels", 1)):
        value = getattr(args, name)
        if value is not None and value < least:
            raise common.UsageError(f"--{name.replace('_', '-')} must be at least {least}, got {value}")


def export_model(args, stream):
    _check(args)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from polarmask_tf import inference
    from polarmask_tf.serving import export

    config = export.inference_config(common.load_model_config(args), args.max_detections, args.score_threshold,
                                     args.input_size)
    label_map = common.label_map(args, config)
    model = inference.load_model(config, common.model_source(args))
    if args.tflite:
        return _export_tflite(args, config, label_map, model, stream)
    start = time.perf_counter()
    path = export.export(config, model, label_map, args.export_dir, args.version, args.mask_size,
                         args.max_image_pixels or export.DEFAULT_MAX_IMAGE_PIXELS, args.model_name, args.overwrite)
    seconds = time.perf_counter() - start
    print(f"exported {path} in {seconds:.1f} s, {export.size_on_disk(path) / 2**20:.1f} MiB", file=stream)
    print("  serving_default: image_bytes string [B]; serve_images: images uint8 [B, H, W, 3]", file=stream)
    outputs = export.OUTPUT_KEYS + (("detection_masks",) if args.mask_size else ())
    print(f"  outputs: {', '.join(outputs)} (K = {config.postprocess.max_detections}, "
          f"N = {config.polar.num_rays} rays)", file=stream)
    print(f"  categories: {', '.join(c.name for c in label_map.categories)}", file=stream)
    print(f"  TF Serving configs: {os.path.join(args.export_dir, 'models.config')}, "
          f"{os.path.join(args.export_dir, 'batching_parameters.txt')}", file=stream)
    return 0


def _export_tflite(args, config, label_map, model, stream):
    from polarmask_tf.serving import tflite

    if "://" in args.export_dir:
        raise common.UsageError("--tflite writes to a local --export-dir (copy the files anywhere afterwards)")
    representative = None
    if "int8" in args.tflite:
        representative = tflite.representative_inputs(config, config.data.train_files, args.representative_images)
        print(f"int8 calibration: {len(representative['image'])} images of {config.data.train_files}", file=stream)
    start = time.perf_counter()
    paths = tflite.export_tflite(config, model, label_map, args.export_dir, args.tflite, representative)
    print(f"exported in {time.perf_counter() - start:.1f} s:", file=stream)
    for quantization, path in paths.items():
        size = os.path.getsize(path) / 2**20  # local: --tflite writes to a local directory (checked above)
        print(f"  {path}  {size:.2f} MiB ({quantization})", file=stream)
    height, width = tflite.input_shape(config)
    print(f"  inputs: image uint8 [1, {height}, {width}, 3], resized_size int32 [1, 2], scale float32 [1, 2]; "
          f"outputs: {', '.join(tflite.OUTPUT_NAMES)}", file=stream)
    return 0


def main(argv=None, stream=None):
    return common.guarded(export_model, common.parse(build_parser(), argv), stream or sys.stdout)


if __name__ == "__main__":
    sys.exit(main())
