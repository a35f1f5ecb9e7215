"""polarmask-upper-bound: the representation upper bound of PolarMask on a COCO dataset.

    polarmask-upper-bound --annotations instances_val2017.json --num-rays 18 36 72 \\
        --method exact reference --center mass box --output report.json --plot upper_bound.png

For every non-crowd instance: its ground-truth mask, the outline's rays from a centre, the decoded
polygon rasterised, and its IoU with the mask; mean IoU per (method, centre, N) is the best mask
IoU a perfect PolarMask could reach (polarmask_tf.upper_bound). Instances that cannot be measured
are counted under "skipped" by reason. Exit status 0, or 1 when no instance could be measured.
"""

import json
import os
import sys

from polarmask_tf.cli import common


def build_parser():
    parser = common.parser(__doc__)
    parser.add_argument("--annotations", required=True, help="COCO instances json")
    parser.add_argument("--num-rays", type=common.positive_int, nargs="+", default=[18, 36, 72])
    parser.add_argument("--method", nargs="+", choices=["exact", "reference"], default=["exact", "reference"])
    parser.add_argument("--center", nargs="+", choices=["mass", "box"], default=["mass"])
    parser.add_argument("--raster", choices=["center", "reference"], default="center",
                        help="polygon rasterisation: pixel centres inside or on the polygon (default), or the "
                             "original's truncate-and-drawContours rule")
    parser.add_argument("--max-instances", type=common.positive_int, default=None,
                        help="measure only the first N annotations")
    parser.add_argument("--output", default=None, help="report json path")
    parser.add_argument("--plot", default=None, help="PNG path for the IoU-vs-rays plot")
    return parser


def upper_bound(args, stream):
    if "reference" in args.method and any(360 % n for n in args.num_rays):
        raise common.UsageError("--method reference needs ray counts that divide 360")
    if any(n < 3 for n in args.num_rays):
        raise common.UsageError("--num-rays: at least 3 rays")
    from polarmask_tf import upper_bound as lib

    report = lib.run(args.annotations, args.num_rays, args.method, args.center, args.raster, args.max_instances)
    print(lib.format_table(report), file=stream)
    if args.output:
        os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
        with open(args.output, "w") as out:
            json.dump(report, out, indent=2)
        print(f"report: {args.output}", file=stream)
    if args.plot:
        os.makedirs(os.path.dirname(os.path.abspath(args.plot)), exist_ok=True)
        lib.plot(report, args.plot)
        print(f"plot: {args.plot}", file=stream)
    return 0 if report["results"] and report["results"][0]["instances"] else 1


def main(argv=None, stream=None):
    return common.guarded(upper_bound, common.parse(build_parser(), argv), stream or sys.stdout)


if __name__ == "__main__":
    sys.exit(main())
