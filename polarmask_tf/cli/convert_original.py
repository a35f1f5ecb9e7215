"""polarmask-convert-original: converts an original PolarMask checkpoint (PyTorch .pth) into a model dir.

    polarmask-convert-original --pth polar_768_1x_r50.pth --model-dir models/r50_1x \\
        [--set data.image_size=[800,1333] ...] [--ray-order auto|old|head] [--verify-image photo.jpg]

The model dir holds config.yaml (the original's test settings), labels.json (COCO's categories),
checkpoints/ckpt-0 and conversion.json; see polarmask_tf.conversion.convert. Nothing is written
when the file cannot be converted. Needs PyTorch: pip install -e '.[convert]'. Exit status 0 on
success, 2 for a file or setting that cannot be converted (the message says why).
"""

import sys

from polarmask_tf.cli import common


def build_parser():
    parser = common.parser(__doc__)
    parser.add_argument("--pth", required=True, help="the original's .pth file")
    parser.add_argument("--model-dir", required=True, help="model dir to create (must not exist, or be empty)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override the converted config, e.g. data.image_size=[800,1333] (repeatable)")
    parser.add_argument("--ray-order", choices=("auto", "old", "head"), default="auto",
                        help="the file's ray order: auto (from the head naming and meta), old (fcos_ files) or "
                             "head (polar_ files); only for files whose naming and meta disagree")
    parser.add_argument("--verify-image", help="a photo to check the ray order on: at the most confident locations "
                        "the rays pointing right/down/left/up must match the box branch's sides (real weights only)")
    return parser


def convert_original(args, stream):
    from polarmask_tf.conversion import convert

    report = convert.convert(args.pth, args.model_dir, args.set, args.ray_order, stream, args.verify_image)
    for note in report["notes"]:
        print(f"note: {note}", file=stream)
    if report["ray_order_check"]:
        errors = report["ray_order_check"]["errors"]
        print("ray order check: median relative error of the right/down/left/up rays against the box sides: "
              + ", ".join(f"{name} {value:.3f}" for name, value in errors.items()), file=stream)
    print(f"wrote {args.model_dir} in {report['seconds']:.1f} s: {report['original_parameters']:,} parameters "
          f"({report['tensors']} tensors) into {report['keras_variables']} Keras variables", file=stream)
    print(f"  predict:  polarmask-predict --model-dir {args.model_dir} --images photo.jpg", file=stream)
    print(f"  evaluate: polarmask-evaluate --model-dir {args.model_dir} --annotations instances_val2017.json "
          "--images-dir val2017", file=stream)
    print(f"  export:   polarmask-export --model-dir {args.model_dir} --export-dir exports/polarmask", file=stream)
    return 0


def main(argv=None, stream=None):
    return common.guarded(convert_original, common.parse(build_parser(), argv), stream or sys.stdout)


if __name__ == "__main__":
    sys.exit(main())
