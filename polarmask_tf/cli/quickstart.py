"""polarmask-quickstart: synthetic shapes -> TFRecords -> training a tiny PolarMask -> COCO evaluation \
on the held-out split -> overlays, on a CPU in minutes.

    polarmask-quickstart [--config configs/quickstart.yaml] [--model-dir runs/quickstart]
        [--set train.total_steps=300 ...]

Each stage is skipped when its output already exists, and training resumes from the latest
checkpoint, so running it again continues where it stopped. Evaluation and overlays are redone.
"""

import os
import pathlib
import sys

from polarmask_tf.cli import common

REPO_CONFIG = pathlib.Path(__file__).resolve().parents[2] / "configs" / "quickstart.yaml"


def prepare_data(config, stream=sys.stdout):
    """Makes the synthetic dataset and its TFRecords unless they exist; returns the records dir."""
    import tensorflow as tf

    from polarmask_tf.data import records_writer, synthetic

    root = config.synthetic.output_dir
    if not tf.io.gfile.exists(os.path.join(root, "annotations", "instances_train.json")):
        s = config.synthetic
        print(f"making the synthetic dataset in {root}", file=stream)
        synthetic.generate_dataset(root, s.num_images, seed=s.seed, val_fraction=s.val_fraction,
                                   min_size=s.min_size, max_size=s.max_size)
    records = os.path.join(root, "tfrecords")
    for split in synthetic.SPLITS:
        if not tf.io.gfile.glob(os.path.join(records, f"{split}-*.tfrecord")):
            report = records_writer.convert(
                os.path.join(root, "annotations", f"instances_{split}.json"), os.path.join(root, split),
                os.path.join(records, split), num_shards=2, skip_empty=split == "train", progress_stream=stream,
                label_map_path=os.path.join(records, "train-labels.json") if split != "train" else None,
                overwrite=True,  # no shard of this split exists: at most a report of an empty earlier run
            )
            print(f"{split}: {report['images']['written']} images in {records}", file=stream)
    return records


def evaluate_and_draw(config, model, model_dir, num_overlays=6, stream=sys.stdout):
    """COCO segm/bbox AP of `model` on the synthetic val split, printed and written to
    MODEL_DIR/eval/metrics.json, and overlays of its first images in MODEL_DIR/overlays."""
    import json

    import cv2
    import tensorflow as tf

    from polarmask_tf import evaluation, fileio, visualize
    from polarmask_tf.data import synthetic

    root = config.synthetic.output_dir
    evaluator = evaluation.Evaluator(config, os.path.join(root, "annotations", "instances_val.json"),
                                     os.path.join(root, "val"))
    predictor = evaluator.predictor(model)
    metrics, results = evaluator.evaluate(predictor=predictor, stream=stream)
    print(evaluation.format_table(metrics), file=stream)
    out = os.path.join(model_dir, "eval")
    fileio.write_json(os.path.join(out, "metrics.json"), metrics, indent=2)
    fileio.write_text(os.path.join(out, "results.json"), json.dumps(results))
    overlays = os.path.join(model_dir, "overlays")
    names = {label: name for label, name in enumerate(synthetic.SHAPE_NAMES, start=1)}
    for path in sorted(tf.io.gfile.glob(os.path.join(root, "val", "*.jpg")))[:num_overlays]:
        image = evaluation.load_image(path)
        drawn = visualize.draw_detections(image, predictor.predict([image])[0], names, score_threshold=0.3)
        stem = os.path.splitext(os.path.basename(path))[0]
        fileio.write_bytes(os.path.join(overlays, f"{stem}.png"), cv2.imencode(".png", drawn[..., ::-1])[1].tobytes())
    return os.path.join(out, "metrics.json"), overlays


def build_parser():
    parser = common.parser(__doc__)
    common.add_config(parser, default=str(REPO_CONFIG))
    parser.add_argument("--model-dir", default="runs/quickstart", help="default: %(default)s")
    return parser


def quickstart(args, stream):
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from polarmask_tf import config as cfg
    from polarmask_tf.training import loop

    config = cfg.load_config(args.config, args.set)
    records = prepare_data(config, stream)
    config = cfg.apply_overrides(
        config, [f"data.train_files={records}/train-*.tfrecord", f"data.val_files={records}/val-*.tfrecord"]
    )
    trainer = loop.Trainer(config, args.model_dir)
    history = trainer.train(stream=stream)
    if history:
        first, last = history[0], history[-1]
        print(f"total loss {first['total_loss']:.3f} at step {first['step']} -> {last['total_loss']:.3f} at step "
              f"{last['step']}", file=stream)
    metrics_path, overlays = evaluate_and_draw(config, trainer.model, args.model_dir, stream=stream)
    print(f"data: {config.synthetic.output_dir} (TFRecords in {records})", file=stream)
    print(f"evaluation on the held-out split: {metrics_path}; overlays: {overlays}", file=stream)
    print(f"model dir: {args.model_dir} (config.yaml, checkpoints/, TensorBoard logs in train/)", file=stream)
    print(f"checkpoint: {trainer.manager.latest_checkpoint}", file=stream)
    return 0


def main(argv=None, stream=None):
    return common.guarded(quickstart, common.parse(build_parser(), argv), stream or sys.stdout)


if __name__ == "__main__":
    sys.exit(main())
