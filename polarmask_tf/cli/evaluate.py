"""polarmask-evaluate: COCO mask and box AP of a trained PolarMask on an annotated image set.

    polarmask-evaluate --model-dir runs/quickstart \\
        --annotations data/synthetic/annotations/instances_val.json --images-dir data/synthetic/val \\
        --output-dir runs/quickstart/eval

Prints the segm and bbox AP table (AP, AP50, AP75, APs, APm, APl in percent) and the per-category
APs of the most frequent categories; with --output-dir writes `results.json` (COCO results: one
entry per detection with image_id, category_id, bbox [x, y, w, h] in COCO's frame, score and the
RLE of the polygon rasterised at the original resolution) and `metrics.json` (everything printed,
plus per-category APs of every category, ground-truth counts, skipped images by reason and
seconds per image). Evaluation follows the original (spec section 5); see
polarmask_tf.evaluation for the frame conversions.

The config defaults to config.yaml of the model dir. The label map defaults to the model dir's
labels.json, else to the annotations' categories in category id order (the rule
polarmask-create-tfrecords uses without --label-map); give --label-map when the model was trained
with another one. The ground truth is checked before the model runs: annotations pycocotools
cannot rasterise (huge or NaN coordinates, null segmentations, malformed RLEs, bad iscrowd, area or
bbox) are dropped, printed by reason and kept in metrics.json under "ground_truth_skipped". Images
that cannot be read are skipped and reported, never fatal. Exit status:
0 after an evaluation, 1 when no image could be read, 2 for unusable arguments (a checkpoint that
does not fit the config, a missing checkpoint, an invalid config, annotations or label map).
"""

import argparse
import os
import sys

from polarmask_tf.cli import common


def _non_negative_int(text):
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be at least 0, got {value}")
    return value


def build_parser():
    parser = common.parser(__doc__)
    common.add_model_source(parser)
    common.add_config(parser)
    parser.add_argument("--annotations", required=True, help="COCO instances json")
    parser.add_argument("--images-dir", required=True, help="directory the json's file names are relative to")
    common.add_label_map(parser)
    parser.add_argument("--output-dir", help="write results.json and metrics.json here")
    parser.add_argument("--max-images", type=common.positive_int, default=None,
                        help="evaluate the first N images (by id) only")
    parser.add_argument("--batch-size", type=common.positive_int, default=8)
    parser.add_argument("--top-categories", type=_non_negative_int, default=20,
                        help="per-category rows printed (0: all)")
    return parser


def evaluate(args, stream):
    from polarmask_tf import evaluation, fileio, inference
    from polarmask_tf.data import coco

    if args.output_dir:
        fileio.makedirs(args.output_dir)  # before the model runs: a path that is a file fails now
    config = common.load_model_config(args)
    source = common.model_source(args)
    labels = args.label_map or inference.beside_checkpoint(source, inference.LABELS_FILE)
    label_map = coco.read_label_map(labels) if labels else None
    evaluator = evaluation.Evaluator(config, args.annotations, args.images_dir, label_map, args.max_images,
                                     args.batch_size, report_stream=stream)
    model = inference.load_model(config, source)

    metrics, results = evaluator.evaluate(model, stream=sys.stderr)
    skipped = metrics["skipped_images"]["counts"]
    if skipped:
        reasons = ", ".join(f"{reason}: {n} (e.g. image ids {metrics['skipped_images']['examples'][reason]})"
                            for reason, n in skipped.items())
        print(f"skipped images: {reasons}; AP is over the {metrics['num_images']} images that were read", file=stream)
    if not metrics["num_images"]:
        print("error: no image could be read", file=sys.stderr)
        return 1
    print(evaluation.format_table(metrics), file=stream)
    print(file=stream)
    print(evaluation.per_category_table(metrics, top=args.top_categories or None), file=stream)
    print(f"{metrics['seconds_per_image'] * 1000:.0f} ms per image (reading, inference, rasterisation)", file=stream)
    if args.output_dir:
        metrics.update(checkpoint=inference.find_checkpoint(source),
                       config=fileio.absolute(inference.checkpoint_config_path(source, args.config)),
                       annotations=fileio.absolute(args.annotations))
        fileio.write_json(os.path.join(args.output_dir, "results.json"), results, indent=None)
        fileio.write_json(os.path.join(args.output_dir, "metrics.json"), metrics, indent=None)
        print(f"results: {os.path.join(args.output_dir, 'results.json')}; "
              f"metrics: {os.path.join(args.output_dir, 'metrics.json')}", file=stream)
    return 0


def main(argv=None, stream=None):
    return common.guarded(evaluate, common.parse(build_parser(), argv), stream or sys.stdout)


if __name__ == "__main__":
    sys.exit(main())
