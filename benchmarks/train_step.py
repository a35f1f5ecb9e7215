"""Training step cost: ResNet-50 at 512x512 batch 2 and MobileNetV2 at 512 batch 4.

    python benchmarks/train_step.py [--steps 5] [--repeats 3]

For each model: the median time of a full training step (forward, losses, backward, all-reduce,
clipping, SGD update) on one fixed batch from the shared COCO train pool (so input cost is
excluded), with the Polar IoU loss under XLA and without, and the time of a forward + backward of
the backbone + FPN alone on the same batch. "head + losses" is the difference: an estimate of
what the polar head, the target-facing losses and their gradients add to the step.
"""

import argparse
import os
import pathlib
import sys
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from data_pipeline import TRAIN_POOL, convert_pool  # noqa: E402
from timing import median_seconds  # noqa: E402

from polarmask_tf import config as cfg  # noqa: E402
from polarmask_tf.data import pipeline  # noqa: E402
from polarmask_tf.training import loop  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parent.parent
MODELS = [
    ("ResNet-50", "polarmask_r50_fpn_1x_coco.yaml", 2, ["model.backbone_weights=null"]),
    ("MobileNetV2", "polarmask_mnv2_coco_subset.yaml", 4, []),
]
FPN_OUTPUTS = ("fpn_output_p3", "fpn_output_p4", "fpn_output_p5", "fpn_p6", "fpn_p7")


def _train_step(trainer, images, targets):
    """One training step of `trainer` on a fixed batch, as a tf.function."""
    return tf.function(lambda: trainer.strategy.run(trainer._replica_step, (images, targets)))


def _trunk_step(trunk, images):
    """Forward and backward pass of the trunk (backbone + FPN) alone on a fixed batch, as a tf.function."""

    @tf.function
    def trunk_step():
        with tf.GradientTape() as tape:
            loss = tf.add_n([tf.reduce_mean(f) for f in trunk(images, training=True)])
        return tape.gradient(loss, trunk.trainable_variables)[0]

    return trunk_step


def measure(name, config_file, batch_size, overrides, records, steps, repeats):
    base = [f"data.train_files={records}/*-train-*.tfrecord", f"data.batch_size={batch_size}",
            "data.image_size=[512, 512]", "data.scale_range=null", "train.mixed_precision=null"] + overrides
    results = {}
    for jit in (True, False):
        config = cfg.load_config(ROOT / "configs" / config_file, base + [f"train.jit_polar_iou={str(jit).lower()}"])
        with tempfile.TemporaryDirectory() as model_dir:
            trainer = loop.Trainer(config, model_dir)
            images, targets = next(iter(pipeline.build_dataset(config, training=True)))
            step = _train_step(trainer, images, targets)
            results[jit] = median_seconds(lambda step=step: step()["total_loss"].numpy(), steps, repeats)
            if jit:
                model = trainer.model
                trunk = keras.Model(model.input, [model.get_layer(n).output for n in FPN_OUTPUTS])
                trunk_step = _trunk_step(trunk, images)
                results["trunk"] = median_seconds(lambda trunk_step=trunk_step: trunk_step().numpy(), steps, repeats)
    return results


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    missing = [str(a) for _, a, _ in TRAIN_POOL if not a.exists()]
    if missing:
        raise SystemExit(f"the train pool is missing: {missing}")
    print(f"TensorFlow {tf.__version__}, Keras {keras.__version__}, {os.cpu_count()} CPUs; "
          f"median of {args.repeats} x {args.steps} steps on one fixed batch")
    rows = []
    with tempfile.TemporaryDirectory() as records:
        convert_pool(records)
        for name, config_file, batch_size, overrides in MODELS:
            r = measure(name, config_file, batch_size, overrides, records, args.steps, args.repeats)
            rows.append((name, batch_size, r))
    print(f"\n{'model (512x512)':<16} {'batch':>5} {'step s':>8} {'images/s':>9} {'no-XLA loss s':>14} "
          f"{'XLA speed-up':>13} {'backbone+FPN':>13} {'head+losses':>12}")
    for name, batch_size, r in rows:
        trunk_share = r["trunk"] / r[True]
        print(f"{name:<16} {batch_size:>5} {r[True]:>8.3f} {batch_size / r[True]:>9.2f} {r[False]:>14.3f} "
              f"{r[False] / r[True]:>12.2f}x {trunk_share:>12.0%} {1 - trunk_share:>11.0%}")


if __name__ == "__main__":
    main()
