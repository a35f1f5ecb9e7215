"""Converts an original PolarMask checkpoint (PyTorch .pth) into a model dir of this project; the
command is polarmask-convert-original (cli/convert_original.py).

    report = convert("polar_768_1x_r50.pth", "models/r50_1x", overrides=["data.image_size=[800,1333]"])

Writes a model dir in the layout training writes, so polarmask-predict, -evaluate, -export and
-train (resume, or train.init_checkpoint for fine-tuning) take it as it is:
  config.yaml        the original's test settings (conversion.settings.converted_config), then overrides;
  labels.json        COCO's 80 categories with their real ids and names (or meta["CLASSES"]);
  checkpoints/ckpt-0 model and a fresh optimiser at step 0 (training.loop.build_training_state);
  conversion.json    the source file (path, size, SHA-256), what was detected, notes, counts.
Nothing is written when anything is wrong with the file: the output appears complete or not at
all (written beside it, then renamed). ResNet-50/101 (caffe) and ResNeXt-101 64x4d (pytorch)
backbones; "fcos_" and "polar_" head namings with their ray orders; legacy and zip torch formats.
"""

import hashlib
import os
import sys
import time

from polarmask_tf import config as cfg
from polarmask_tf.conversion import ConversionError, checkpoint
from polarmask_tf.conversion import layout as layout_lib
from polarmask_tf.conversion import settings as settings_lib

CONVERSION_REPORT = "conversion.json"


def _sha256(path):
    import tensorflow as tf

    digest = hashlib.sha256()
    with tf.io.gfile.GFile(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _meta_summary(meta):
    return {key: meta[key] for key in ("mmdet_version", "mmcv_version", "epoch", "iter", "time")
            if isinstance(meta.get(key), (str, int, float))}


def check_ray_order(config, model, order, image_path, forced):
    """conversion.ray_check on one image: {"image", "errors", "best"}. Raises ConversionError when
    the rays follow another order than `order` and the order was not `forced` by the user."""
    from polarmask_tf import evaluation
    from polarmask_tf.conversion import ray_check
    from polarmask_tf.data import coco
    from polarmask_tf.modeling import preprocessing

    try:
        image = evaluation.load_image(image_path)
    except coco.ImageError as error:
        raise ConversionError(f"--verify-image: {error}") from None
    inputs = preprocessing.preprocess_image(image, config)[0][None]
    outputs = {key: value.numpy() for key, value in model(inputs, training=False).items()}
    errors = ray_check.ray_order_errors(outputs, order)
    best = min(errors, key=errors.get)
    if best != order and not forced:
        shown = ", ".join(f"{name} {value:.2f}" for name, value in errors.items())
        raise ConversionError(
            f"on {image_path} the rays match the box sides best in the {best!r} order, not the {order!r} order "
            f"the head naming implies (median relative errors: {shown}); check the file, or pass --ray-order "
            "old or head to convert it in the order you know it has"
        )
    return {"image": image_path, "errors": errors, "best": best}


def convert(checkpoint_path, output_dir, overrides=(), ray_order="auto", stream=None, verify_image=None):
    """Converts `checkpoint_path` into the model dir `output_dir` (which must not exist, or be empty).
    verify_image: an image file (a real photo) to check the ray order on (check_ray_order).
    Returns the conversion report (a dict, also written as conversion.json). Raises ConversionError
    (nothing written) for a file or setting that cannot be converted, FileExistsError for a
    non-empty output_dir.

    A local model dir appears whole: it is written under a staging name and renamed into place. A
    URI (gs://, s3://, hdfs://...: object stores have no directory rename) is written in place with
    conversion.json last, the file whose presence says the conversion finished."""
    import tensorflow as tf

    from polarmask_tf import fileio

    stream = stream or sys.stdout
    if tf.io.gfile.isdir(output_dir) and tf.io.gfile.listdir(output_dir):
        raise FileExistsError(f"{output_dir} exists and is not empty: choose a new --model-dir")
    start = time.perf_counter()
    state, meta = checkpoint.read_checkpoint(checkpoint_path)
    found = layout_lib.inspect(state)
    layout_lib.check_state(state, found)
    original = settings_lib.read_settings(meta)
    order = settings_lib.ray_order(found, original, ray_order)
    config = settings_lib.converted_config(found, original, overrides)
    labels = settings_lib.label_map(found.num_classes, original.classes)
    read_seconds = time.perf_counter() - start
    print(f"read {checkpoint_path}: {found.backbone}, '{found.head_prefix}_' head ({order} ray order), "
          f"{found.num_classes} classes, {found.num_rays} rays, {len(state)} tensors ({read_seconds:.1f} s)",
          file=stream)

    import keras

    from polarmask_tf import inference
    from polarmask_tf.data import coco
    from polarmask_tf.training.loop import build_training_state

    keras.mixed_precision.set_global_policy("float32")
    model, optimizer = build_training_state(config)
    assignments = layout_lib.keras_assignments(model, state, found, order)
    for variable, value in assignments:
        variable.assign(value)
    check = check_ray_order(config, model, order, verify_image, ray_order != "auto") if verify_image else None

    in_place = fileio.is_remote(output_dir)
    staging = output_dir if in_place else f"{output_dir.rstrip('/')}.converting-{os.getpid()}"
    if not in_place and tf.io.gfile.exists(staging):
        tf.io.gfile.rmtree(staging)  # left by an earlier conversion of this process id that died
    fileio.makedirs(staging)
    try:
        cfg.dump_config(config, os.path.join(staging, "config.yaml"))
        coco.write_label_map(labels, os.path.join(staging, inference.LABELS_FILE))
        manager = tf.train.CheckpointManager(
            tf.train.Checkpoint(model=model, optimizer=optimizer), os.path.join(staging, "checkpoints"),
            max_to_keep=config.train.keep_checkpoints,
        )
        manager.save(checkpoint_number=0)
        report = {
            "source": fileio.absolute(checkpoint_path),
            "source_bytes": tf.io.gfile.stat(checkpoint_path).length,
            "source_sha256": _sha256(checkpoint_path),
            "meta": _meta_summary(meta),
            "backbone": found.backbone,
            "head_naming": found.head_prefix,
            "ray_order": order,
            "num_classes": found.num_classes,
            "num_rays": found.num_rays,
            "tensors": len(state),
            "original_parameters": layout_lib.parameter_count(found),
            "keras_variables": len(assignments),
            "keras_weights": int(model.count_params()),
            "notes": settings_lib.assumption_notes(original) + layout_lib.batchnorm_notes(state, found),
            "ray_order_check": check,
            "seconds": round(time.perf_counter() - start, 2),
        }
        fileio.write_json(os.path.join(staging, CONVERSION_REPORT), report, indent=2)
        if not in_place:
            if tf.io.gfile.isdir(output_dir):
                tf.io.gfile.rmtree(output_dir)  # empty, checked above
            tf.io.gfile.rename(staging, output_dir)
    finally:
        if not in_place and tf.io.gfile.exists(staging):
            tf.io.gfile.rmtree(staging)
    return report
