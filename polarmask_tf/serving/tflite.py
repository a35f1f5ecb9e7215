"""LiteRT (TFLite) export: the whole detector, post-processing and polygon decoding included, in one
`.tflite` file per quantization, with TFLite built-in ops only (no Flex / SELECT_TF_OPS), so the
file runs on the interpreter's own kernels and its delegates.

    paths = export_tflite(config, model, label_map, "exports/tflite", ["float32", "float16", "int8"],
                          representative=representative_inputs(config, "data/train-*.tfrecord", 100))

The contract, signature "serving_default", batch 1, a fixed input of Hp x Wp pixels (the padded
network input of the config, preprocessing.padded_image_shape):
Inputs:
  image         uint8   [1, Hp, Wp, 3]  RGB, the resized image at the top left, anything elsewhere
                                        (the model zeroes the padding after normalising, as the
                                        SavedModel's preprocessing does); `letterbox` makes it
  resized_size  int32   [1, 2]          (h, w) of the resized image inside `image`
  scale         float32 [1, 2]          (sy, sx) = resized / original size; (1, 1) gives
                                        coordinates in the input's pixels
Outputs, K = postprocess.max_detections, N = polar.num_rays:
  num_detections  int32   [1]
  boxes           float32 [1, K, 4]     x1, y1, x2, y2, original-image pixels (pixel centres at integers)
  scores          float32 [1, K]        descending
  classes         int32   [1, K]        contiguous labels 1..C (labels.json beside the file maps
                                        them to the dataset's category ids and names), -1 for padding
  polygons        float32 [1, K, N, 2]  (x, y) vertices in ray order
Padding and post-processing are exactly polarmask_tf.postprocess's (score threshold, per-level
top-k, class-aware NMS, ray decoding); the resize stays outside, as usual for TFLite.

Quantizations:
  float32  the graph as it is;
  float16  weights stored as float16 (half the size), dequantised to float32 at load on CPU, so
           the arithmetic is float32 (GPU delegates can run float16);
  int8     full-integer network: weights and activations int8 with scales calibrated on a
           representative dataset of training images (`representative_inputs`), int8 input to the
           first convolution. The post-processing is denylisted from quantization and stays float32
           (its sigmoids, scores, top-k, NMS and the ray decoding), so only the network is
           approximated: int8 scores and rays are dequantised once, at the head's outputs.

What the post-processing needed to become built-ins: top-k, argsort and batched gathers convert
as they are (TOPK_V2, GATHER); the class-aware NMS is the one change. Its tiled while loops
(postprocess.class_aware_nms) convert to WHILE, but int8 calibration crashes on them (the
calibrator segfaults in TF 2.21), so this graph uses postprocess.class_offset_nms instead: the
greedy NMS kernel (NON_MAX_SUPPRESSION_V4) on boxes shifted apart per class, with zero-area
boxes kept out of the kernel, which mishandles them. It takes the same decisions except for IoUs
within about 1e-3 of the threshold, and implements the default rule only (nms_rule "greater",
no nms_plus_one: detection_module refuses the others). Every conversion checks the written file's
op list for anything that is not a built-in (`operator_names`, `non_builtin_operators`).

Each conversion runs in a child process (`python -m polarmask_tf.serving.tflite`) on a SavedModel
written once: TFLiteConverter.convert() leaks memory in TF 2.21.0 (tensorflow#122598), and a
process that exits returns it.
"""

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile

import numpy as np
import tensorflow as tf

from polarmask_tf import config as cfg
from polarmask_tf import fileio
from polarmask_tf import postprocess as postprocess_lib
from polarmask_tf.modeling import preprocessing

QUANTIZATIONS = ("float32", "float16", "int8")
INPUT_NAMES = ("image", "resized_size", "scale")
OUTPUT_NAMES = ("num_detections", "boxes", "scores", "classes", "polygons")
LABELS_FILE = "labels.json"
CONFIG_FILE = "config.yaml"
CONVERSION_TIMEOUT_SECONDS = 1800


class TFLiteConversionError(RuntimeError):
    """A conversion that failed, or produced a file with ops outside TFLite's built-ins."""


def input_shape(config):
    """(Hp, Wp), the fixed pixel size of the `image` input for `config`."""
    return preprocessing.padded_image_shape(config.data)


def letterbox(image, config):
    """The `image` input for an RGB uint8 image [h, w, 3] of any size: resized into data.image_size
    with the pipeline's resize (bilinear, keep_ratio or stretch), rounded to uint8 and placed at the
    top left of a zero [Hp, Wp, 3] canvas. Returns numpy (image uint8 [1, Hp, Wp, 3], resized_size
    int32 [1, 2], scale float32 [1, 2]).

    The rounding is the one difference from the SavedModel, which feeds the float resize to the
    network: a SavedModel given this uint8 image (resized already) sees the same pixels."""
    image = tf.convert_to_tensor(image)
    if image.dtype != tf.uint8 or image.shape.rank != 3 or image.shape[-1] != 3:
        raise ValueError(f"letterbox needs an RGB uint8 image [h, w, 3], got {image.dtype.name} {image.shape}")
    original = tf.shape(image)[:2]
    size = preprocessing.resized_shape(original[0], original[1], config.data.image_size, config.data.resize)
    resized = tf.image.resize(image, size, method="bilinear")
    resized = tf.cast(tf.clip_by_value(tf.round(resized), 0, 255), tf.uint8)
    height, width = input_shape(config)
    canvas = tf.image.pad_to_bounding_box(resized, 0, 0, height, width)
    scale = tf.cast(size, tf.float32) / tf.cast(original, tf.float32)
    return canvas.numpy()[None], size.numpy()[None].astype(np.int32), scale.numpy()[None].astype(np.float32)


def detection_module(config, model):
    """A tf.Module whose `detect` is the contract's function (module docstring), for conversion.
    ValueError for a postprocess.nms_rule or nms_plus_one that class_offset_nms cannot apply
    (checked here, before tracing, so the message is not buried in a trace)."""
    postprocess_lib.check_offset_nms_rule(config.postprocess.nms_rule, config.postprocess.nms_plus_one)
    height, width = input_shape(config)
    rule = preprocessing.input_normalization(config)
    signature = [tf.TensorSpec([1, height, width, 3], tf.uint8, name="image"),
                 tf.TensorSpec([1, 2], tf.int32, name="resized_size"),
                 tf.TensorSpec([1, 2], tf.float32, name="scale")]

    @tf.function(input_signature=signature)
    def detect(image, resized_size, scale):
        inside = ((tf.range(height)[:, None] < resized_size[0, 0]) & (tf.range(width)[None, :] < resized_size[0, 1]))
        inputs = tf.where(inside[None, :, :, None],
                          preprocessing.normalize_image(tf.cast(image, tf.float32), rule), 0.0)
        found = postprocess_lib.postprocess(model(inputs, training=False), resized_size, scale, (height, width),
                                            config.polar, config.postprocess, nms=postprocess_lib.class_offset_nms)
        return {name: found[name] for name in OUTPUT_NAMES}

    module = tf.Module()
    module.model = model
    module.detect = detect
    return module


def representative_inputs(config, train_files, count):
    """`count` inputs (letterbox) of the first images of TFRecord shards (a glob), as the int8
    calibration data: a dict of numpy arrays stacked along a leading axis of `count` (fewer when
    the shards hold fewer images). The shards are polarmask-create-tfrecords output, whose images
    were decoded when written; ValueError when the glob matches no shard."""
    from polarmask_tf.data import pipeline, tfrecord

    shards = pipeline.list_shards(train_files)
    images, sizes, scales = [], [], []
    for serialized in tf.data.TFRecordDataset(shards):
        encoded = tfrecord.parse_example(serialized)["encoded"]
        image = tf.io.decode_image(encoded, channels=3, expand_animations=False)
        inputs = letterbox(image, config)
        images.append(inputs[0][0])
        sizes.append(inputs[1][0])
        scales.append(inputs[2][0])
        if len(images) == count:
            break
    return {"image": np.stack(images), "resized_size": np.stack(sizes), "scale": np.stack(scales)}


_FLOAT_HEAD_OPS = re.compile(r"/head[^/]*/(Exp|Minimum|Cast|mul|Mul)|/flatten_(rays|boxes)|/(rays|boxes)[^/]*/concat")
"""Tensors inside the Keras model that stay float32 in the int8 file: the head's ray and box
decoding, scale * exp of the conv outputs (head._distances), flattened and concatenated."""


def network_tensor(name, model_name):
    """Whether the tensor `name` of the converted graph is quantised in the int8 file: it lies in
    the Keras model's name scope (backbone, FPN, head convolutions; `model_name`) and is not its
    ray or box decoding (_FLOAT_HEAD_OPS). Everything else, the input normalisation and the whole
    post-processing, stays float32."""
    first = name.split(";")[0]
    return f"/{model_name}" in first and not _FLOAT_HEAD_OPS.search(first)


def _quantize_network_only(converter, model_name):
    """int8 bytes with only the network quantised: the converter (optimizations and representative
    dataset set) calibrates the float graph, then TFLite's MLIR quantizer quantises it with every
    tensor outside `network_tensor` denylisted. These are the calls
    tf.lite.experimental.QuantizationDebugger makes for its denylisted_nodes option (calibrate only,
    then mlir_quantize), without its numeric-verification model."""
    from tensorflow.lite.python import convert as lite_convert

    from polarmask_tf.serving import tflite_runner

    converter.experimental_mlir_quantizer = True
    converter._experimental_calibrate_only = True
    calibrated = converter.convert()
    interpreter = tflite_runner.interpreter_class()(model_content=calibrated)
    denylisted = sorted({tensor["name"] for tensor in interpreter.get_tensor_details()
                         if tensor["name"] and not network_tensor(tensor["name"], model_name)})
    return lite_convert.mlir_quantize(calibrated, disable_per_channel=False, fully_quantize=False,
                                      enable_numeric_verify=False, denylisted_nodes=denylisted)


def convert(saved_model_dir, quantization, representative_path=None, model_name="polarmask"):
    """The `.tflite` bytes of the SavedModel's serving_default (detection_module), in this process.

    quantization: one of QUANTIZATIONS; int8 needs representative_path, an .npz of
    representative_inputs, and model_name, the Keras model's name (network_tensor)."""
    from tensorflow.python.framework import convert_to_constants

    # Frozen here: from_saved_model keeps this model's variables as VAR_HANDLE / READ_VARIABLE ops,
    # which int8 calibration cannot run and which no delegate takes.
    loaded = tf.saved_model.load(saved_model_dir)
    signature = loaded.signatures["serving_default"]
    frozen = convert_to_constants.convert_variables_to_constants_v2(signature, lower_control_flow=False)
    # The frozen function returns a flat list (the dict's outputs in sorted key order); the named
    # wrapper gives the .tflite signature the contract's output names again.
    names = sorted(signature.structured_outputs)

    @tf.function(input_signature=[tf.TensorSpec(t.shape, t.dtype, name=t.name.split(":")[0])
                                  for t in frozen.inputs])
    def named(*inputs):
        return dict(zip(names, frozen(*inputs), strict=True))

    converter = tf.lite.TFLiteConverter.from_concrete_functions([named.get_concrete_function()], loaded)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    if quantization == "float16":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    elif quantization == "int8":
        if representative_path is None:
            raise ValueError("int8 needs representative inputs")
        data = dict(np.load(representative_path))

        def representative_dataset():
            for index in range(len(data["image"])):
                yield {name: data[name][index : index + 1] for name in INPUT_NAMES}

        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = representative_dataset
        # int8 built-in kernels for the network, float built-ins for what _quantize_network_only keeps float.
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8, tf.lite.OpsSet.TFLITE_BUILTINS]
        return _quantize_network_only(converter, model_name)
    elif quantization != "float32":
        raise ValueError(f"unknown quantization {quantization!r}: use one of {', '.join(QUANTIZATIONS)}")
    return converter.convert()


def operator_names(path):
    """The sorted distinct operator names of a .tflite file, read from the file (the interpreter's
    op list): built-ins by name (CONV_2D, WHILE, ...), Flex ops as Flex<TFOp>, custom ops by code."""
    from polarmask_tf.serving import tflite_runner

    interpreter = tflite_runner.make_interpreter(path, num_threads=1)
    return sorted({op["op_name"] for op in interpreter._get_ops_details()})


def non_builtin_operators(names):
    """The names among `names` (operator_names) that are not TFLite built-ins: Flex (SELECT_TF_OPS)
    delegate ops and custom ops. Built-in names are upper case (CONV_2D); Flex ops read "Flex..."
    or "DELEGATE", custom ops carry their custom code."""
    return [name for name in names if name.startswith("Flex") or name == "DELEGATE" or name != name.upper()]


def _convert_in_child(saved_model_dir, quantization, output_path, representative_path, model_name, timeout):
    command = [sys.executable, "-m", "polarmask_tf.serving.tflite", saved_model_dir, quantization, output_path,
               "--model-name", model_name]
    if representative_path:
        command += ["--representative", representative_path]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL=os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2"))
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired as error:
        raise TFLiteConversionError(f"the {quantization} conversion took more than {timeout} s") from error
    if done.returncode != 0:
        tail = "\n".join(done.stderr.strip().splitlines()[-15:])
        raise TFLiteConversionError(f"the {quantization} conversion failed (exit {done.returncode}):\n{tail}")


def export_tflite(config, model, label_map, output_dir, quantizations=QUANTIZATIONS, representative=None,
                  name="polarmask", timeout=CONVERSION_TIMEOUT_SECONDS):
    """Writes OUTPUT_DIR/<name>_<quantization>.tflite for each quantization, OUTPUT_DIR/labels.json
    (data.coco label map: labels -> category ids and names) and OUTPUT_DIR/config.yaml (the config,
    for the runner's letterbox). Returns {quantization: path}.

    representative: representative_inputs' dict, needed for int8. Each file is checked after its
    conversion: TFLiteConversionError when it holds an op that is not a built-in (non_builtin_operators).
    output_dir is local (the converter writes bytes; copy them anywhere afterwards)."""
    from polarmask_tf.data import coco

    unknown = [q for q in quantizations if q not in QUANTIZATIONS]
    if unknown:
        raise ValueError(f"unknown quantization {unknown[0]!r}: use one of {', '.join(QUANTIZATIONS)}")
    if "int8" in quantizations and representative is None:
        raise ValueError("int8 needs representative inputs (representative_inputs of the training TFRecords)")
    os.makedirs(output_dir, exist_ok=True)  # local: the converter's files are for devices, copied from here
    paths = {}
    with tempfile.TemporaryDirectory(prefix="polarmask-tflite-") as work:
        saved_model_dir = os.path.join(work, "saved_model")
        module = detection_module(config, model)
        tf.saved_model.save(module, saved_model_dir, signatures={"serving_default": module.detect})
        representative_path = None
        if representative is not None:
            representative_path = os.path.join(work, "representative.npz")
            np.savez(representative_path, **representative)
        for quantization in quantizations:
            path = os.path.join(output_dir, f"{name}_{quantization}.tflite")
            _convert_in_child(saved_model_dir, quantization, path,
                              representative_path if quantization == "int8" else None, model.name, timeout)
            foreign = non_builtin_operators(operator_names(path))
            if foreign:
                raise TFLiteConversionError(f"{path} holds ops that are not TFLite built-ins: {', '.join(foreign)}")
            paths[quantization] = path
    coco.write_label_map(label_map, os.path.join(output_dir, LABELS_FILE))
    cfg.dump_config(config, os.path.join(output_dir, CONFIG_FILE))
    return paths


def main(argv=None):
    """The child process of one conversion: SAVED_MODEL QUANTIZATION OUTPUT [--representative NPZ]."""
    parser = argparse.ArgumentParser(description="Converts a detection_module SavedModel to one .tflite file.")
    parser.add_argument("saved_model")
    parser.add_argument("quantization", choices=QUANTIZATIONS)
    parser.add_argument("output")
    parser.add_argument("--representative")
    parser.add_argument("--model-name", default="polarmask")
    args = parser.parse_args(argv)
    fileio.write_bytes(args.output, convert(args.saved_model, args.quantization, args.representative,
                                            args.model_name))
    print(json.dumps({"output": args.output, "bytes": os.path.getsize(args.output)}))  # local: export_tflite's dir
    return 0


if __name__ == "__main__":
    sys.exit(main())
