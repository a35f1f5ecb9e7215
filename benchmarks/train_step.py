"""Training step and forward pass against a peer detector, measured in one process.

    python benchmarks/train_step.py [--steps 3] [--repeats 5] [--models resnet50 mobilenetv2]
                                    [--precisions float32 mixed_bfloat16 mixed_float16]

The peer is keras-hub 0.32's RetinaNet on the same ResNet-50 trunk (ResNetBackbone, bottleneck
blocks [3, 4, 6, 3], FPN levels 3-7 with use_p5=False, 80 classes, its own label encoder, focal +
Huber loss, SGD with momentum 0.9): a one-stage detector of the same family whose head has two
towers where ours has three (two without the box branch). keras-hub is a benchmark dependency,
installed without its declared dependencies (benchmarks/README.md).

Every variant is timed on one fixed 512x512 batch from coco128 (input cost excluded):
  step     the function `fit` runs per step (ours: the Trainer's step function: forward, losses,
           backward, all-reduce, clipping, SGD; RetinaNet: Keras' train_function after a real
           `fit` call on a tf.data dataset of that batch), at the model's batch size;
  forward  the network alone at batch 1, training=False, raw outputs (no decoding, no NMS).
Rounds alternate over the variants (each round: `steps` calls of every variant in turn), so a
slow minute of the machine hits all of them; the table shows the median round. Ratios are to
RetinaNet in float32 (ResNet-50) or to our float32 model with the box branch (MobileNetV2, which
has no RetinaNet counterpart here). Losses, boxes and rays stay float32 under every policy.
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
from data_pipeline import TRAIN_POOL  # noqa: E402
from timing import alternating_medians  # noqa: E402

from polarmask_tf import config as cfg  # noqa: E402
from polarmask_tf.data import pipeline, records_writer, tfrecord  # noqa: E402
from polarmask_tf.training import loop  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parent.parent
IMAGE_SIZE = 512
MODELS = {  # --models key: (title, config file, train batch, overrides)
    "resnet50": ("ResNet-50", "polarmask_r50_fpn_1x_coco.yaml", 2, ["model.backbone_weights=null"]),
    "mobilenetv2": ("MobileNetV2", "polarmask_mnv2_coco_subset.yaml", 4, []),
}
SHORT = {"float32": "fp32", "mixed_bfloat16": "bf16", "mixed_float16": "fp16"}


def fixed_batch(config):
    """(images float32 [B, 512, 512, 3], PolarMask targets, RetinaNet targets) of the first batch of
    config.data.val_files: RetinaNet's are {"boxes": float32 [B, M, 4] xyxy in resized pixels, "labels":
    float32 [B, M] 0-based}, padded with -1 as keras-hub's label encoder expects."""
    images, targets = next(iter(pipeline.build_dataset(config, training=False)))
    instances = {}
    for serialized in tf.data.TFRecordDataset(tf.io.gfile.glob(config.data.val_files)):
        parsed = tfrecord.parse_example(serialized)
        instances[int(parsed["image_id"])] = (parsed["boxes"], parsed["labels"])
    boxes, labels = [], []
    for image_id, (sy, sx) in zip(targets["image_id"].numpy(), targets["scale"].numpy(), strict=True):
        b, c = instances[int(image_id)]
        boxes.append(b * [sx, sy, sx, sy])
        labels.append(tf.cast(c - 1, tf.float32))
    most = max(len(c) for c in labels)
    pad = lambda t, value: tf.pad(t, [[0, most - len(t)]] + [[0, 0]] * (t.shape.rank - 1), constant_values=value)
    peer = {"boxes": tf.stack([pad(b, -1.0) for b in boxes]), "labels": tf.stack([pad(c, -1.0) for c in labels])}
    return images, targets, peer


def polarmask_variant(config, model_dir, batch):
    """(step, forward) callables of our model under `config` on the fixed batch."""
    images, targets, _ = batch
    trainer = loop.Trainer(config, model_dir)
    step_fn = trainer._make_step_fn()
    iterator = iter(tf.data.Dataset.from_tensors((images, targets)).repeat())
    stop = tf.constant(0.0)
    forward = tf.function(lambda x: trainer.model(x, training=False))
    single = images[:1]
    return (lambda: step_fn(iterator, stop)["total_loss"].numpy(),
            lambda: next(iter(forward(single).values())).numpy())


def retinanet_variant(batch, precision):
    """(step, forward) callables of keras-hub's RetinaNet with a ResNet-50 trunk on the fixed batch."""
    import keras_hub

    images, _, peer = batch
    shape = (IMAGE_SIZE, IMAGE_SIZE, 3)
    encoder = keras_hub.models.ResNetBackbone(
        input_conv_filters=[64], input_conv_kernel_sizes=[7], stackwise_num_filters=[64, 128, 256, 512],
        stackwise_num_blocks=[3, 4, 6, 3], stackwise_num_strides=[1, 2, 2, 2], block_type="bottleneck_block",
        image_shape=shape, dtype=precision)
    backbone = keras_hub.models.RetinaNetBackbone(image_encoder=encoder, min_level=3, max_level=7, use_p5=False,
                                                  image_shape=shape, dtype=precision)
    detector = keras_hub.models.RetinaNetObjectDetector(backbone=backbone, num_classes=80,
                                                        bounding_box_format="xyxy", dtype=precision)
    detector.compile(optimizer=keras.optimizers.SGD(0.01, momentum=0.9))
    dataset = tf.data.Dataset.from_tensors((images, peer)).repeat()
    detector.fit(dataset, steps_per_epoch=1, epochs=1, shuffle=False, verbose=0)  # builds train_function as fit does
    iterator = iter(dataset)
    forward = tf.function(lambda x: detector(x, training=False))
    single = images[:1]
    return (lambda: detector.train_function(iterator)["loss"].numpy(),
            lambda: forward(single)["cls_logits"].numpy())


def measure(model_key, precisions, records, steps, repeats):
    """{variant name: {"step": s, "forward": s}} for one model."""
    title, config_file, batch_size, overrides = MODELS[model_key]
    base = [f"data.train_files={records}-*.tfrecord", f"data.val_files={records}-*.tfrecord",
            f"data.batch_size={batch_size}", f"data.image_size=[{IMAGE_SIZE}, {IMAGE_SIZE}]",
            "data.scale_range=null"] + overrides
    variants = {}
    with tempfile.TemporaryDirectory() as work:
        batch = fixed_batch(cfg.load_config(ROOT / "configs" / config_file, base))
        for precision in precisions:
            mixed = "null" if precision == "float32" else precision
            for box_branch in (True, False):
                config = cfg.load_config(ROOT / "configs" / config_file, base + [
                    f"train.mixed_precision={mixed}", f"model.box_branch={str(box_branch).lower()}"])
                name = f"PolarMask {'box branch' if box_branch else 'no box branch'}, {SHORT[precision]}"
                variants[name] = polarmask_variant(config, os.path.join(work, name.replace(" ", "_")), batch)
            if model_key == "resnet50":
                keras.mixed_precision.set_global_policy("float32")
                variants[f"RetinaNet (keras-hub), {SHORT[precision]}"] = retinanet_variant(batch, precision)
        keras.mixed_precision.set_global_policy("float32")
        steps_fns = {name: fns[0] for name, fns in variants.items()}
        forward_fns = {name: fns[1] for name, fns in variants.items()}
        step_times = alternating_medians(steps_fns, steps, repeats)
        forward_times = alternating_medians(forward_fns, steps * 3, repeats)
    return title, batch_size, {name: {"step": step_times[name], "forward": forward_times[name]} for name in variants}


def print_table(title, batch_size, results):
    reference = next((n for n in results if n.startswith("RetinaNet") and n.endswith("fp32")), next(iter(results)))
    print(f"\n{title}, {IMAGE_SIZE}x{IMAGE_SIZE}: step at batch {batch_size}, forward at batch 1; "
          f"ratios to {reference}")
    print(f"{'variant':<36} {'step s':>8} {'images/s':>9} {'step ratio':>11} {'forward ms':>11} {'fwd ratio':>10}")
    ref = results[reference]
    for name, r in sorted(results.items(), key=lambda item: item[1]["step"]):
        print(f"{name:<36} {r['step']:>8.3f} {batch_size / r['step']:>9.2f} {r['step'] / ref['step']:>10.2f}x "
              f"{r['forward'] * 1e3:>11.1f} {r['forward'] / ref['forward']:>9.2f}x")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=3, help="training steps per variant per round")
    parser.add_argument("--repeats", type=int, default=5, help="rounds; the median round is reported")
    parser.add_argument("--models", nargs="+", choices=sorted(MODELS), default=["resnet50", "mobilenetv2"])
    parser.add_argument("--precisions", nargs="+", choices=sorted(SHORT), default=["float32", "mixed_bfloat16"])
    args = parser.parse_args()
    if "resnet50" in args.models:
        try:
            import keras_hub  # noqa: F401
        except ImportError as error:
            raise SystemExit(f"the RetinaNet peer needs keras-hub ({error}): pip install --no-deps "
                             "keras-hub==0.32.0 regex tokenizers (see benchmarks/README.md)") from error
    name, annotations, images_dir = TRAIN_POOL[0]
    if not annotations.exists():
        raise SystemExit(f"the benchmark images are missing: {annotations}")
    print(f"TensorFlow {tf.__version__}, Keras {keras.__version__}, {os.cpu_count()} CPUs; median of "
          f"{args.repeats} alternating rounds of {args.steps} steps and {args.steps * 3} forwards per variant")
    with tempfile.TemporaryDirectory() as directory:
        records = os.path.join(directory, f"{name}-train")
        records_writer.convert(str(annotations), str(images_dir), records, num_shards=1, skip_empty=True,
                               progress_stream=open(os.devnull, "w"))  # local: discarded progress
        for model_key in args.models:
            print_table(*measure(model_key, args.precisions, records, args.steps, args.repeats))


if __name__ == "__main__":
    main()
