"""polarmask-upper-bound: the representation upper bound of PolarMask on a COCO dataset.

    polarmask-upper-bound --annotations instances_val2017.json --num-rays 18 36 72 \\
        --method exact reference reference_exact --center mass box --output report.json --plot upper_bound.png

For every non-crowd instance of at least --min-area px^2: the mask each method makes of it with N
rays from a centre, and its IoU with COCO's own mask of the annotation; the mean IoU per (method,
centre, N), over all instances and per COCO size class, is the best mask IoU a perfect model of
that method reaches (polarmask_tf.upper_bound). Each method is complete, from the annotation to
the rasterised mask:
  exact            this project's pipeline: the instance as the TFRecord conversion reads it (its
                   largest polygon part; an RLE's outline along its pixels' edges), exact rays,
                   evaluation's rasterisation (pixel centres inside or on the polygon);
  reference        the original's: the mask's contour through its boundary pixels' centres, the
                   integer centre, the 1-degree vertex bins, truncation and cv2.drawContours;
  reference_exact  the original's with exact rays to its contour: against `reference`, the ray
                   rule alone.
--raster (which rasterisation to apply) was removed: each method now uses its own.
The report (--output) holds the table's numbers, every instance's IoUs and the skipped instances
by reason. Exit status 0, or 1 when no instance could be measured.
"""

import argparse
import sys

from polarmask_tf.cli import common

METHOD_NAMES = ("exact", "reference", "reference_exact")


def _non_negative_float(text):
    value = float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be a number >= 0, got {text}")
    return value


def build_parser():
    parser = common.parser(__doc__)
    parser.add_argument("--annotations", required=True, help="COCO instances json")
    parser.add_argument("--num-rays", type=common.positive_int, nargs="+", default=[18, 36, 72])
    parser.add_argument("--method", nargs="+", choices=METHOD_NAMES, default=["exact", "reference"],
                        help="complete methods to measure (see above); default: exact reference")
    parser.add_argument("--center", nargs="+", choices=["mass", "box"], default=["mass"],
                        help="ray origin: the mass centre of the largest part / contour, or the box centre")
    parser.add_argument("--min-area", type=_non_negative_float, default=None,
                        help="skip instances whose COCO area is below this, px^2 (default: the conversion's, 16)")
    parser.add_argument("--max-instances", type=common.positive_int, default=None,
                        help="measure only the first N annotations")
    parser.add_argument("--output", default=None, help="report json path (local or a tf.io.gfile URI)")
    parser.add_argument("--plot", default=None, help="PNG path for the IoU-vs-rays plot")
    parser.add_argument("--raster", default=None, help=argparse.SUPPRESS)
    return parser


def upper_bound(args, stream):
    if args.raster is not None:
        raise common.UsageError("--raster was removed: each --method uses its own rasterisation "
                                "(exact: pixel centres inside the polygon; reference: truncation + drawContours)")
    if "reference" in args.method and any(360 % n for n in args.num_rays):
        raise common.UsageError("--method reference needs ray counts that divide 360")
    if any(n < 3 for n in args.num_rays):
        raise common.UsageError("--num-rays: at least 3 rays")
    from polarmask_tf import fileio
    from polarmask_tf import upper_bound as lib

    report = lib.run(args.annotations, args.num_rays, args.method, args.center, args.min_area, args.max_instances)
    print(lib.format_table(report), file=stream)
    if args.output:
        fileio.write_json(args.output, report, indent=2)
        print(f"report: {args.output}", file=stream)
    if args.plot:
        lib.plot(report, args.plot)
        print(f"plot: {args.plot}", file=stream)
    return 0 if report["results"] and report["results"][0]["instances"] else 1


def main(argv=None, stream=None):
    return common.guarded(upper_bound, common.parse(build_parser(), argv), stream or sys.stdout)


if __name__ == "__main__":
    sys.exit(main())
