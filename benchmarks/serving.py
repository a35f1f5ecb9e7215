"""Serving latency of the SavedModel export next to the raw Keras forward pass, in one process.

    python benchmarks/serving.py [--models mobilenet_v2 resnet50] [--batches 1 8] [--images 8] [--repeats 15]

Per model (random weights, 80 classes): the export's time and size on disk, then per batch size
the time per image (--images images per round, in calls of that batch size) of
- "forward": the Keras model alone on preprocessed float32 inputs (tf.function, no XLA);
- "export": serving_default of the reloaded SavedModel, JPEG bytes in (640 x 480 synthetic scenes)
  -> decode, resize, normalise, model, post-processing, polygons and 28 x 28 masks out.
MobileNetV2 runs at 512 x 512, ResNet-50 at 800 x 800 (export --input_size). The heads are built
with prior_prob 0.06, above the 0.05 score threshold, so every kept location passes it and NMS
works on the full max_candidates (2000) set: the expensive end of post-processing.
Rounds alternate over everything timed for a batch size (each round: --images images through
every function in turn), so a slow minute of the machine hits all of them; the table shows the
median round, and "ratio" is the median over the rounds of export / forward within a round (the
machine's speed drifts by 10 % between rounds here; a ratio of two medians would carry that).
At batch 1 the export's time is split into its stages, each timed alone as a
tf.function in the same rounds: decode + resize + normalise, forward, post-processing (top-k,
scoring, NMS, ray decoding), masks (polygons rasterised into 28 x 28 box masks); "rest" is the
export's time minus their sum (the signature's own cost: map_fn, category lookups, SavedModel
call overhead; smaller than the drift between rounds here, so it can come out negative).
"""

import argparse
import os
import pathlib
import shutil
import statistics
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from timing import alternating_rounds, paired_ratio  # noqa: E402

from polarmask_tf import config as cfg  # noqa: E402
from polarmask_tf import geometry  # noqa: E402
from polarmask_tf import postprocess as postprocess_lib  # noqa: E402
from polarmask_tf.data import coco, synthetic  # noqa: E402
from polarmask_tf.modeling import model as modeling  # noqa: E402
from polarmask_tf.modeling import preprocessing  # noqa: E402
from polarmask_tf.serving import export  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parent.parent
MODELS = {
    "mobilenet_v2": (ROOT / "configs" / "polarmask_mnv2_coco_subset.yaml", 512),
    "resnet50": (ROOT / "configs" / "polarmask_r50_fpn_1x_coco.yaml", 800),
}


def _jpegs(count):
    encoded = []
    for index in range(count):
        image, _ = synthetic.draw_image(np.random.default_rng((11, index)), 640, 480)
        encoded.append(cv2.imencode(".jpg", image[..., ::-1])[1].tobytes())
    return encoded


def measure(name, batches, images, repeats, workdir):
    path, size = MODELS[name]
    config = export.inference_config(
        cfg.load_config(path, ["model.backbone_weights=null", "model.prior_prob=0.06"]), input_size=size
    )
    model = modeling.build_model(config)
    label_map = coco.model_label_map(config)
    start = time.perf_counter()
    version = export.export(config, model, label_map, os.path.join(workdir, name), version=1, mask_size=28)
    export_seconds = time.perf_counter() - start
    served = tf.saved_model.load(version).signatures["serving_default"]
    forward = tf.function(lambda x: model(x, training=False))
    jpegs = _jpegs(max(batches))
    rows, stages = [], None
    for batch in batches:
        inputs = tf.stack([preprocessing.preprocess_image(tf.io.decode_jpeg(data), config)[0]
                           for data in jpegs[:batch]])
        request = tf.constant(jpegs[:batch])
        fns = {
            "forward": lambda inputs=inputs: forward(inputs)["rays"].numpy(),
            "export": lambda request=request: served(image_bytes=request)["num_detections"].numpy(),
        }
        if batch == 1:
            fns.update(_stage_fns(config, forward, jpegs[0], inputs))
        rounds = alternating_rounds(fns, max(1, images // batch), repeats)
        seconds = {name: statistics.median(values) / batch for name, values in rounds.items()}
        rows.append((batch, seconds["forward"], seconds["export"], paired_ratio(rounds["export"], rounds["forward"])))
        if batch == 1:
            stages = {name: seconds[name] for name in ("decode + resize", "forward", "post-processing", "masks")}
    return export_seconds, export.size_on_disk(version) / 2**20, rows, stages


def _stage_fns(config, forward, jpeg, inputs):
    """{stage: callable} for the export's stages at batch 1 but the forward pass, as the module
    docstring lists them; forward: the model's forward pass as a tf.function, inputs its input."""
    padded = preprocessing.padded_image_shape(config.data)
    prepare = tf.function(lambda data: preprocessing.preprocess_image(tf.io.decode_image(
        data, channels=3, expand_animations=False), config))
    _, resized_size, scale = (t[None] for t in prepare(tf.constant(jpeg)))
    outputs = forward(inputs)
    post = tf.function(lambda o: postprocess_lib.postprocess(o, resized_size, scale, padded, config.polar,
                                                             config.postprocess))
    found = post(outputs)
    masks = tf.function(lambda polygons, boxes: geometry.box_masks(polygons, boxes, 28))
    return {
        "decode + resize": lambda: prepare(tf.constant(jpeg))[0].numpy(),
        "post-processing": lambda: post(outputs)["num_detections"].numpy(),
        "masks": lambda: masks(found["polygons"], found["boxes"]).numpy(),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--images", type=int, default=8, help="images per function per round")
    parser.add_argument("--repeats", type=int, default=15, help="rounds; the median round is reported")
    args = parser.parse_args()
    print(f"TensorFlow {tf.__version__}, {os.cpu_count()} CPUs; median of {args.repeats} alternating rounds "
          f"of {args.images} images; ms per image")
    print(f"{'model':<13} {'input':>7} {'export s':>9} {'MiB':>6} "
          f"{'batch':>5} {'forward':>9} {'export':>9} {'ratio':>6}")
    workdir = tempfile.mkdtemp(prefix="serving-bench-")
    breakdowns = []
    try:
        for name in args.models:
            seconds, mib, rows, stages = measure(name, args.batches, args.images, args.repeats, workdir)
            for batch, raw, full, ratio in rows:
                print(f"{name:<13} {MODELS[name][1]:>7} {seconds:>9.1f} {mib:>6.1f} {batch:>5} "
                      f"{raw * 1e3:>9.1f} {full * 1e3:>9.1f} {ratio:>6.2f}")
                if batch == 1:
                    breakdowns.append((name, full, stages))
        for name, full, stages in breakdowns:
            stages["rest"] = full - sum(stages.values())
            print(f"\n{name}, batch 1: the export's {full * 1e3:.1f} ms per image by stage")
            for stage, seconds in stages.items():
                print(f"  {stage:<16} {seconds * 1e3:>8.1f} ms {seconds / full:>7.1%}")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
