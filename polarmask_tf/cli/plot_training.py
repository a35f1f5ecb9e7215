"""polarmask-plot-training: a training run's losses and learning rate as a PNG.

    polarmask-plot-training --model-dir runs/quickstart [--output runs/quickstart/curves.png]

Reads the TensorBoard scalars in MODEL_DIR/train (polarmask_tf.training.curves). Exit status 1 when
the model dir holds no loss scalars.
"""

import os
import sys

from polarmask_tf.cli import common


def build_parser():
    parser = common.parser(__doc__)
    parser.add_argument("--model-dir", required=True, help="the training run's model dir")
    parser.add_argument("--output", default=None, help="PNG path (default: MODEL_DIR/curves.png)")
    parser.add_argument("--title", default=None, help="plot title (default: the model dir's name)")
    return parser


def plot_training(args, stream):
    from polarmask_tf.training import curves

    scalars = curves.read_scalars(args.model_dir)
    if not any(tag in scalars for tag in curves.LOSSES):
        print(f"error: no loss scalars under {args.model_dir}/train", file=sys.stderr)
        return 1
    output = args.output or os.path.join(args.model_dir, "curves.png")
    curves.plot(scalars, output, args.title or os.path.basename(os.path.normpath(args.model_dir)))
    total = scalars["loss/total_loss"]
    print(f"{output}: total loss {total[0][1]:.3f} at step {total[0][0]} -> {total[-1][1]:.3f} at step "
          f"{total[-1][0]}", file=stream)
    return 0


def main(argv=None, stream=None):
    return common.guarded(plot_training, common.parse(build_parser(), argv), stream or sys.stdout)


if __name__ == "__main__":
    sys.exit(main())
