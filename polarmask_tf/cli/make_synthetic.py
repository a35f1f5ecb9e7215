"""polarmask-make-synthetic: writes the synthetic shapes dataset (COCO format) of the quickstart, tests and smoke runs.

    polarmask-make-synthetic --output-dir data/shapes --num-images 200 --seed 0

Layout: OUTPUT_DIR/{train,val}/NNNNNN.jpg and OUTPUT_DIR/annotations/instances_{train,val}.json.
"""

import sys

from polarmask_tf.cli import common
from polarmask_tf.config import SyntheticConfig


def build_parser():
    defaults = SyntheticConfig()
    parser = common.parser(__doc__)
    parser.add_argument("--output-dir", default=defaults.output_dir, help="output directory (default %(default)s)")
    parser.add_argument("--num-images", type=int, default=defaults.num_images,
                        help="total images (default %(default)s)")
    parser.add_argument("--seed", type=int, default=defaults.seed, help="random seed (default %(default)s)")
    parser.add_argument("--val-fraction", type=float, default=defaults.val_fraction,
                        help="fraction of images (the last ones) in the val split (default %(default)s)")
    parser.add_argument("--min-size", type=int, default=defaults.min_size,
                        help="minimum image width/height in pixels (default %(default)s)")
    parser.add_argument("--max-size", type=int, default=defaults.max_size,
                        help="maximum image width/height in pixels (default %(default)s)")
    return parser


def _report(summary, output, stream):
    from polarmask_tf.data.synthetic import SHAPE_NAMES, SPLITS

    print(f"wrote synthetic shapes dataset to {output}", file=stream)
    for split in SPLITS:
        total = sum(summary["num_instances"][split].values())
        print(f"  {split}: {summary['num_images'][split]} images, {total} instances", file=stream)
        print(f"    images      {summary['image_dirs'][split]}", file=stream)
        print(f"    annotations {summary['annotation_files'][split]}", file=stream)
    print(f"  {'instances':10s}" + "".join(f"{split:>8s}" for split in SPLITS), file=stream)
    for name in SHAPE_NAMES:
        print(f"  {name:10s}" + "".join(f"{summary['num_instances'][split][name]:8d}" for split in SPLITS),
              file=stream)


def make_synthetic(args, stream):
    from polarmask_tf.data.synthetic import check_arguments, generate_dataset
    from polarmask_tf.progress import ProgressBar

    check_arguments(args.num_images, args.seed, args.val_fraction, args.min_size, args.max_size)
    bar = ProgressBar(total=args.num_images, desc="synthetic")
    try:
        summary = generate_dataset(
            args.output_dir, args.num_images, seed=args.seed, val_fraction=args.val_fraction,
            min_size=args.min_size, max_size=args.max_size, on_image=bar.update,
        )
    finally:
        bar.close()
    _report(summary, args.output_dir, stream)
    return 0


def main(argv=None, stream=None):
    return common.guarded(make_synthetic, common.parse(build_parser(), argv), stream or sys.stdout)


if __name__ == "__main__":
    sys.exit(main())
