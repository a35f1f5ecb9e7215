"""Real-data learning check: the MobileNetV2 config trained on a small fixed set of real COCO
training images until it fits them, evaluated on those same images, then on coco_mini/val2017 for
contrast. A detector that cannot fit a few dozen real images points to a defect in the real-data
path (polygon parts, crowd handling, label map, scale); one that can shows the path works.

    python benchmarks/fit_real_subset.py [--images 32] [--steps 2400] [--work-dir runs/fit32]

Writes, under WORK_DIR: annotations/train<N>.json (the subset), records/, the model dir run/
(checkpoints, TensorBoard, curves.png), eval_targets/, eval_train/ and eval_val/ (metrics.json),
overlays/ (the first training images with their detections). eval_targets is the AP of the
training targets themselves (TargetOracle): what a model that fits them exactly would score, so a
gap between it and the trained model is learning, and a low value a defect in the data path.
Prints segm and bbox AP of every evaluation and the per-category table of the training images.
Training resumes when run again with the same work dir.
The defaults are the run of docs/training.md: 32 coco128 images, 512², batch 4, 2400 steps, lr
0.005 with warm-up over the first eighth and decays at 3/4 and 9/10 of the steps, no scale jitter
(about an hour on 2 CPU cores; 800 steps, 21 minutes, leave it half fitted).
"""

import argparse
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.path.join(os.path.dirname(ROOT), "shared", "data")


def subset(annotations, num_images):
    """The first `num_images` images (by id) with at least one non-crowd annotation, as a COCO dict."""
    from polarmask_tf.data import coco

    data = coco.read_instances_json(annotations)
    annotated = {a["image_id"] for a in data["annotations"] if not a.get("iscrowd", 0)}
    images = sorted((image for image in data["images"] if image["id"] in annotated), key=lambda i: i["id"])
    images = images[:num_images]
    keep = {image["id"] for image in images}
    return {**data, "images": images, "annotations": [a for a in data["annotations"] if a["image_id"] in keep]}


class TargetOracle:
    """A stand-in for inference.Predictor whose "model outputs" are the training targets the
    pipeline encodes for each image (class logit +12 at positives, -12 elsewhere, the centerness
    target as a logit, the target boxes and rays), run through the same post-processing: the AP
    of a model that fits its targets exactly, through every step of the real-data path (COCO
    polygons -> TFRecord -> tf.data resize and targets -> decoding -> COCO evaluation)."""

    def __init__(self, config, image_ids):
        import tensorflow as tf

        from polarmask_tf import postprocess
        from polarmask_tf.data import pipeline
        from polarmask_tf.modeling import preprocessing

        self.outputs = {}
        padded = preprocessing.padded_image_shape(config.data)
        num_classes = config.model.num_classes
        for _, targets in pipeline.build_dataset(config, training=False):
            labels = targets["labels"]
            cls_logits = tf.where(tf.one_hot(labels - 1, num_classes) > 0, 12.0, -12.0)
            centerness = tf.clip_by_value(targets["centerness"], 1e-4, 1 - 1e-4)
            outputs = {"cls_logits": cls_logits, "centerness": tf.math.log(centerness / (1 - centerness)),
                       "boxes": targets["boxes"], "rays": targets["rays"]}
            found = postprocess.postprocess(outputs, targets["resized_size"], targets["scale"], padded,
                                            config.polar, config.postprocess)
            for i, image_id in enumerate(targets["image_id"].numpy()):
                n = int(found["num_detections"][i])
                self.outputs[int(image_id)] = {key: found[key][i, :n].numpy()
                                               for key in ("boxes", "scores", "classes", "polygons")}
        self.order = iter(image_ids)

    def predict(self, images):
        return [self.outputs[next(self.order)] for _ in images]


def evaluate(config, model, annotations, images_dir, label_map, out_dir, stream):
    from polarmask_tf import evaluation, fileio

    evaluator = evaluation.Evaluator(config, annotations, images_dir, label_map, report_stream=None)
    predictor = evaluator.predictor(model)
    metrics, _ = evaluator.evaluate(predictor=predictor, stream=stream)
    fileio.write_json(os.path.join(out_dir, "metrics.json"), metrics, indent=2)
    return metrics, evaluator, predictor


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--steps", type=int, default=2400)
    parser.add_argument("--work-dir", default="runs/fit32")
    parser.add_argument("--config", default=os.path.join(ROOT, "configs", "polarmask_mnv2_coco_subset.yaml"))
    parser.add_argument("--set", action="append", default=[], help="more config overrides")
    args = parser.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

    import cv2

    from polarmask_tf import config as cfg
    from polarmask_tf import evaluation, fileio, visualize
    from polarmask_tf.data import coco, records_writer
    from polarmask_tf.training import curves, loop

    coco128 = os.path.join(SHARED, "coco128")
    images_dir = os.path.join(coco128, "train2017")
    train_json = os.path.join(args.work_dir, "annotations", f"train{args.images}.json")
    fileio.write_json(train_json, subset(os.path.join(coco128, "annotations", "instances_train2017.json"),
                                         args.images))
    prefix = os.path.join(args.work_dir, "records", "train")
    if not records_writer.existing_outputs(prefix):
        report = records_writer.convert(train_json, images_dir, prefix, num_shards=1, num_workers=0,
                                        progress_stream=sys.stderr)
        print(records_writer.format_report(report))
    steps = args.steps
    config = cfg.load_config(args.config, [
        f"data.train_files={prefix}-*.tfrecord", f"data.val_files={prefix}-*.tfrecord", "data.scale_range=null",
        f"train.total_steps={steps}", "train.base_learning_rate=0.005", f"train.warmup_steps={steps // 8}",
        f"train.decay_steps=[{steps * 3 // 4}, {steps * 9 // 10}]", f"train.checkpoint_every={max(steps // 4, 1)}",
        "train.log_every=10", *args.set,
    ])
    model_dir = os.path.join(args.work_dir, "run")
    trainer = loop.Trainer(config, model_dir)
    history = trainer.train()
    if history:
        print(f"total loss {history[0]['total_loss']:.3f} at step {history[0]['step']} -> "
              f"{history[-1]['total_loss']:.3f} at step {history[-1]['step']}")
    curves.plot(curves.read_scalars(model_dir), os.path.join(model_dir, "curves.png"),
                f"MobileNetV2 on {args.images} coco128 images")

    label_map = coco.read_label_map(f"{prefix}-labels.json")
    names = {c.label: c.name for c in label_map.categories}
    oracle_evaluator = evaluation.Evaluator(config, train_json, images_dir, label_map, report_stream=None)
    oracle = TargetOracle(config, [image["id"] for image in oracle_evaluator.images])
    oracle_metrics, _ = oracle_evaluator.evaluate(predictor=oracle, stream=sys.stderr)
    fileio.write_json(os.path.join(args.work_dir, "eval_targets", "metrics.json"), oracle_metrics, indent=2)
    train_metrics, evaluator, predictor = evaluate(config, trainer.model, train_json, images_dir, label_map,
                                                   os.path.join(args.work_dir, "eval_train"), sys.stderr)
    mini = os.path.join(SHARED, "coco_mini")
    val_metrics, _, _ = evaluate(config, trainer.model, os.path.join(mini, "annotations", "instances_val2017.json"),
                                 os.path.join(mini, "val2017"), label_map, os.path.join(args.work_dir, "eval_val"),
                                 sys.stderr)
    for image in evaluator.images[:8]:
        pixels = evaluation.load_image(os.path.join(images_dir, image["file_name"]))
        drawn = visualize.draw_detections(pixels, predictor.predict([pixels])[0], names, score_threshold=0.3)
        fileio.write_bytes(os.path.join(args.work_dir, "overlays", f"{image['id']:012d}.jpg"),
                           cv2.imencode(".jpg", drawn[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes())
    print("\nthe training targets themselves, decoded and evaluated (a model fitting them exactly):")
    print(evaluation.format_table(oracle_metrics))
    print(evaluation.per_category_table(oracle_metrics, top=12))
    print(f"\non its {args.images} training images (step {trainer.step}):")
    print(evaluation.format_table(train_metrics))
    print(evaluation.per_category_table(train_metrics, top=12))
    print("\non coco_mini/val2017 (never trained on):")
    print(evaluation.format_table(val_metrics))
    print(f"\ncurves: {model_dir}/curves.png; overlays: {args.work_dir}/overlays")
    return 0


if __name__ == "__main__":
    sys.exit(main())
