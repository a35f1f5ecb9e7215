"""Training step time with 1 and 2 replicas, in one process.

    python benchmarks/distributed.py [--config configs/quickstart.yaml] [--batch 8] [--steps 30] [--repeats 3]

The CPU is split into 2 logical devices; the same global batch trains on one device and on a
MirroredStrategy over both (synthetic images in a temporary directory, the config's model). Each
repeat is a call of Trainer.train for --steps more steps (it includes a checkpoint restore and
save, as real training does every checkpoint_every steps). On 2 CPU cores the two replicas share
the cores that one device already uses, so this shows the overhead of replication and cross-replica
reduction, not a speed-up; with one GPU per replica the compute would scale instead.
"""

import argparse
import os
import pathlib
import sys
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from timing import median_seconds  # noqa: E402

from polarmask_tf import config as cfg  # noqa: E402
from polarmask_tf.data import records_writer, synthetic  # noqa: E402
from polarmask_tf.training import distribute, loop  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parent.parent


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default=str(ROOT / "configs" / "quickstart.yaml"))
    parser.add_argument("--batch", type=int, default=8, help="global batch")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    distribute.split_cpu(2)
    work = tempfile.mkdtemp(prefix="distributed-bench-")
    synthetic.generate_dataset(os.path.join(work, "synthetic"), 32, seed=1, val_fraction=0.0)
    with open(os.devnull, "w") as quiet:
        records_writer.convert(os.path.join(work, "synthetic", "annotations", "instances_train.json"),
                                 os.path.join(work, "synthetic", "train"), os.path.join(work, "records", "train"),
                                 num_shards=2, progress_stream=quiet)
    config = cfg.load_config(args.config, [
        f"data.train_files={work}/records/train-*.tfrecord", f"data.batch_size={args.batch}",
        "train.checkpoint_every=100000", "train.log_every=100000", "train.total_steps=100000",
    ])
    print(f"TensorFlow {tf.__version__}, {os.cpu_count()} CPU cores split into 2 logical devices; "
          f"{config.model.backbone} at {config.data.image_size}, global batch {args.batch}; "
          f"median of {args.repeats} x {args.steps} steps")
    print(f"{'strategy':<12} {'replicas':>8} {'per replica':>11} {'s/step':>8} {'images/s':>9} {'vs 1':>6}")
    baseline = None
    with open(os.devnull, "w") as quiet:
        for name in ("one_device", "mirrored"):
            strategy = distribute.make_strategy(name, 2)
            trainer = loop.Trainer(config, os.path.join(work, name), strategy)
            seconds = median_seconds(
                lambda trainer=trainer: trainer.train(total_steps=trainer.step + args.steps, stream=quiet), 1,
                args.repeats,
            ) / args.steps
            baseline = baseline or seconds
            replicas = strategy.num_replicas_in_sync
            print(f"{name:<12} {replicas:>8} {args.batch // replicas:>11} {seconds:>8.3f} "
                  f"{args.batch / seconds:>9.1f} {seconds / baseline:>6.2f}")


if __name__ == "__main__":
    main()
