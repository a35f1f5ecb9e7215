"""Exports a trained PolarMask as a SavedModel for TensorFlow Serving.

    python export_saved_model.py --checkpoint runs/quickstart --export_dir exports/polarmask [--version 1]
        [--config C] [--max_detections K] [--score_threshold T] [--input_size S] [--mask_size M]

Writes EXPORT_DIR/VERSION in TF Serving's layout (with warm-up requests in assets.extra/) and an
example models.config and batching_parameters.txt in EXPORT_DIR. The signatures, outputs and
padding rules are documented in polarmask_tf/serving/export.py; the README shows the docker
command. The config defaults to config.yaml of the checkpoint's model dir; category ids and names
come from --label_map, else the model dir's labels.json, else the labels json beside the config's
training shards.
"""

import os
import sys
import time

from absl import app, flags, logging

flags.DEFINE_string("checkpoint", None, "model dir, its checkpoints/ dir or a ckpt-N prefix", required=True)
flags.DEFINE_string("export_dir", None, "TF Serving model base path; the version goes in a subdirectory", required=True)
flags.DEFINE_integer("version", None, "version number (default: 1 + the largest existing one)", lower_bound=1)
flags.DEFINE_string("config", None, "YAML config (default: config.yaml beside the checkpoint)")
flags.DEFINE_multi_string("set", [], "dotted config override (repeatable)")
flags.DEFINE_integer("max_detections", None, "K, detection slots per image (default: postprocess.max_detections)",
                     lower_bound=1)
flags.DEFINE_float("score_threshold", None, "class probability threshold (default: postprocess.score_threshold)")
flags.DEFINE_integer("input_size", None, "resize images to fit S x S (default: data.image_size)", lower_bound=32)
flags.DEFINE_integer("mask_size", None, "also output box-aligned M x M uint8 masks", lower_bound=1)
flags.DEFINE_integer("max_image_pixels", None, "reject larger images (default: 10000 x 10000)", lower_bound=1)
flags.DEFINE_string("label_map", None, "labels json of create_tfrecords (category ids and names)")
flags.DEFINE_string("model_name", "polarmask", "model name in models.config and the warm-up requests")
flags.DEFINE_bool("overwrite", False, "replace an existing version directory")


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)
    from polarmask_tf import config as cfg, inference
    from polarmask_tf.data import coco
    from polarmask_tf.serving import export

    f = flags.FLAGS
    try:
        config = export.inference_config(
            cfg.load_config(inference.checkpoint_config_path(f.checkpoint, f.config), f.set),
            f.max_detections, f.score_threshold, f.input_size,
        )
        label_map = coco.model_label_map(
            config, f.label_map or inference.beside_checkpoint(f.checkpoint, inference.LABELS_FILE))
        model = inference.load_model(config, f.checkpoint)
        start = time.perf_counter()
        path = export.export(
            config, model, label_map, f.export_dir, f.version, f.mask_size,
            f.max_image_pixels or export.DEFAULT_MAX_IMAGE_PIXELS, f.model_name, f.overwrite,
        )
        seconds = time.perf_counter() - start
    except (cfg.ConfigError, inference.CheckpointMismatchError, FileNotFoundError, FileExistsError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"exported {path} in {seconds:.1f} s, {export.size_on_disk(path) / 2**20:.1f} MiB")
    print("  serving_default: image_bytes string [B]; serve_images: images uint8 [B, H, W, 3]")
    outputs = export.OUTPUT_KEYS + (("detection_masks",) if f.mask_size else ())
    print(f"  outputs: {', '.join(outputs)} (K = {config.postprocess.max_detections}, "
          f"N = {config.polar.num_rays} rays)")
    print(f"  categories: {', '.join(c.name for c in label_map.categories)}")
    print(f"  TF Serving configs: {os.path.join(f.export_dir, 'models.config')}, "
          f"{os.path.join(f.export_dir, 'batching_parameters.txt')}")
    return 0


if __name__ == "__main__":
    app.run(main)
