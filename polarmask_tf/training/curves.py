"""Training curves: a run's TensorBoard scalars (the losses and the learning rate) as a PNG; the
command is polarmask-plot-training (cli/plot_training.py).

    plot(read_scalars("runs/quickstart"), "runs/quickstart/curves.png", "quickstart")
"""

import collections
import os

LOSSES = ("loss/total_loss", "loss/cls_loss", "loss/ray_loss", "loss/box_loss", "loss/centerness_loss")
"""The loss curves drawn, those the run has: a run without the box branch has no loss/box_loss."""


def read_scalars(model_dir):
    """{tag: sorted [(step, value)]} from the event files in MODEL_DIR/train."""
    import tensorflow as tf

    scalars = collections.defaultdict(dict)
    for path in sorted(tf.io.gfile.glob(os.path.join(model_dir, "train", "events.out.tfevents.*"))):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                number = float(tf.make_ndarray(value.tensor)) if value.HasField("tensor") else value.simple_value
                scalars[value.tag][event.step] = number  # a resumed run rewrites steps: keep the last
    return {tag: sorted(points.items()) for tag, points in scalars.items()}


def plot(scalars, output, title):
    """Draws the curves and writes them as a PNG to `output` (a local path or URI)."""
    import matplotlib

    from polarmask_tf import fileio

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (losses, rate) = plt.subplots(1, 2, figsize=(11, 4), dpi=110, gridspec_kw={"width_ratios": [3, 1]})
    for tag in LOSSES:
        if tag in scalars:
            steps, values = zip(*scalars[tag], strict=True)
            losses.plot(steps, values, label=tag.split("/")[1].replace("_loss", ""),
                        linewidth=1.5 if "total" in tag else 1)
    losses.set_xlabel("step")
    losses.set_ylabel("loss")
    losses.set_yscale("log")
    losses.grid(True, which="both", alpha=0.3)
    losses.legend()
    losses.set_title(title)
    if "learning_rate" in scalars:
        steps, values = zip(*scalars["learning_rate"], strict=True)
        rate.plot(steps, values, color="black")
    rate.set_xlabel("step")
    rate.set_title("learning rate")
    rate.grid(True, alpha=0.3)
    figure.tight_layout()
    fileio.write_figure(output, figure)
    plt.close(figure)
