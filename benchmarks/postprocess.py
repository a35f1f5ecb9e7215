"""Post-processing cost next to the model's forward pass: MobileNetV2 PolarMask at 512x512, 80 classes.

    python benchmarks/postprocess.py [--batches 1 8] [--steps 3] [--repeats 5]

For each batch size, in one process: the median time of the model's forward pass (tf.function,
random weights: the cost does not depend on them) and of polarmask_tf.postprocess in a plain
tf.function and under XLA (jit_compile=True), per image. Post-processing runs on two inputs:
- "model": the model's own outputs. A randomly initialised head gives every class probability
  about 0.01 (the prior), below the 0.05 threshold, so almost nothing reaches NMS: the cheap end.
- "full": outputs where far more than max_candidates (2000) pairs pass the threshold, with boxes
  of 4-64 px, so NMS works on the full, capped candidate set: the expensive end. A trained model
  on a typical COCO image lies in between.
The target is post-processing <= 10% of the forward time.
"""

import argparse
import os
import pathlib
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from timing import median_seconds  # noqa: E402

from polarmask_tf import config as cfg  # noqa: E402
from polarmask_tf import postprocess as pp  # noqa: E402
from polarmask_tf.modeling import model as modeling  # noqa: E402
from polarmask_tf.modeling import pyramid  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parent.parent
CONFIG = ROOT / "configs" / "polarmask_mnv2_coco_subset.yaml"
SIZE = 512


def _full_load(outputs, seed=0):
    """The model's outputs with class logits ~ N(-4.6, 1) (about 5% of the 80 x 2336 kept pairs pass
    0.05) and box sides and rays uniform in [4, 64) px."""
    rng = np.random.default_rng(seed)
    shape = outputs["cls_logits"].shape
    return {
        "cls_logits": tf.constant(rng.normal(-4.6, 1.0, shape), tf.float32),
        "centerness": tf.constant(rng.normal(0.0, 1.0, shape[:2]), tf.float32),
        "boxes": tf.constant(rng.uniform(4, 64, shape[:2] + (4,)), tf.float32),
        "rays": tf.constant(rng.uniform(4, 64, outputs["rays"].shape), tf.float32),
    }


def measure(model, config, batch, steps, repeats):
    images = tf.random.normal([batch, SIZE, SIZE, 3])
    forward = tf.function(lambda x: model(x, training=False))
    results = {"forward": median_seconds(lambda: forward(images)["rays"].numpy(), steps, repeats) / batch}
    outputs = {key: tf.identity(value) for key, value in forward(images).items()}
    # A 640 x 480 image resized into 512 x 512 keeping its aspect ratio: 512 x 384, scale 0.8.
    resized_size = tf.constant([[384, 512]] * batch, tf.int32)
    scale = tf.constant([[0.8, 0.8]] * batch, tf.float32)

    def post(o, r, s):
        return pp.postprocess(o, r, s, (SIZE, SIZE), config.polar, config.postprocess)

    for load, inputs in (("model", outputs), ("full", _full_load(outputs))):
        for jit in (False, True):
            fn = tf.function(post, jit_compile=jit)
            result = fn(inputs, resized_size, scale)
            results[(load, jit)] = median_seconds(
                lambda fn=fn, inputs=inputs: fn(inputs, resized_size, scale)["num_detections"].numpy(), steps,
                repeats) / batch
            results[(load, "candidates")] = int(tf.reduce_mean(result["num_candidates"]))
            results[(load, "detections")] = float(tf.reduce_mean(tf.cast(result["num_detections"], tf.float32)))
    return results


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    config = cfg.load_config(CONFIG, ["model.backbone_weights=null"])
    model = modeling.build_model(config)
    print(f"TensorFlow {tf.__version__}, {os.cpu_count()} CPUs; MobileNetV2 PolarMask {SIZE}x{SIZE}, "
          f"{config.model.num_classes} classes, {pyramid.num_locations(SIZE, SIZE)} locations; "
          f"median of {args.repeats} x {args.steps} calls; ms per image")
    header = (f"{'batch':>5} {'forward':>9} {'load':>6} {'pairs>thr':>10} {'dets':>6} "
              f"{'post fn':>9} {'share':>7} {'post XLA':>9} {'share':>7}")
    print(header)
    for batch in args.batches:
        r = measure(model, config, batch, args.steps, args.repeats)
        for load in ("model", "full"):
            plain, xla = r[(load, False)], r[(load, True)]
            print(f"{batch:>5} {r['forward'] * 1e3:>9.1f} {load:>6} {r[(load, 'candidates')]:>10} "
                  f"{r[(load, 'detections')]:>6.1f} {plain * 1e3:>9.2f} {plain / r['forward']:>7.1%} "
                  f"{xla * 1e3:>9.2f} {xla / r['forward']:>7.1%}")


if __name__ == "__main__":
    main()
