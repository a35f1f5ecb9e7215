"""Writes the synthetic shapes dataset (COCO format) used by the quickstart, tests and smoke runs.

    python -m polarmask_tf.tools.make_synthetic --output data/shapes --num-images 200 --seed 0

Layout: OUTPUT/{train,val}/NNNNNN.jpg and OUTPUT/annotations/instances_{train,val}.json.
"""

import argparse
import sys

from polarmask_tf.config import SyntheticConfig
from polarmask_tf.data.synthetic import SHAPE_NAMES, SPLITS, check_arguments, generate_dataset
from polarmask_tf.progress import ProgressBar


def _parse_args(argv):
    defaults = SyntheticConfig()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", default=defaults.output_dir, help="output directory (default %(default)s)")
    parser.add_argument("--num-images", type=int, default=defaults.num_images, help="total images (default %(default)s)")
    parser.add_argument("--seed", type=int, default=defaults.seed, help="random seed (default %(default)s)")
    parser.add_argument("--val-fraction", type=float, default=defaults.val_fraction,
                        help="fraction of images (the last ones) in the val split (default %(default)s)")
    parser.add_argument("--min-size", type=int, default=defaults.min_size,
                        help="minimum image width/height in pixels (default %(default)s)")
    parser.add_argument("--max-size", type=int, default=defaults.max_size,
                        help="maximum image width/height in pixels (default %(default)s)")
    return parser.parse_args(argv)


def _report(summary, output):
    print(f"wrote synthetic shapes dataset to {output}")
    for split in SPLITS:
        total = sum(summary["num_instances"][split].values())
        print(f"  {split}: {summary['num_images'][split]} images, {total} instances")
        print(f"    images      {summary['image_dirs'][split]}")
        print(f"    annotations {summary['annotation_files'][split]}")
    print(f"  {'instances':10s}" + "".join(f"{split:>8s}" for split in SPLITS))
    for name in SHAPE_NAMES:
        print(f"  {name:10s}"
              + "".join(f"{summary['num_instances'][split][name]:8d}" for split in SPLITS))


def main(argv=None):
    args = _parse_args(argv)
    try:
        check_arguments(args.num_images, args.seed, args.val_fraction, args.min_size,
                        args.max_size)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    bar = ProgressBar(total=args.num_images, desc="synthetic")
    try:
        summary = generate_dataset(
            args.output, args.num_images, seed=args.seed, val_fraction=args.val_fraction,
            min_size=args.min_size, max_size=args.max_size, on_image=bar.update,
        )
    finally:
        bar.close()
    _report(summary, args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
