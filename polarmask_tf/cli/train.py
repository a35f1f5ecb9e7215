"""polarmask-train: trains PolarMask on one device, several local GPUs or several machines.

    polarmask-train --config configs/quickstart.yaml --model-dir runs/quickstart [--set train.total_steps=500]
    polarmask-train --config C --model-dir D --strategy mirrored            # every local GPU
    polarmask-train --config C --model-dir D --strategy multi_worker \\
        --worker-hosts host1:2222,host2:2222 --task-index 0                # on host1; 1 on host2

Writes the resolved config to MODEL_DIR/config.yaml, checkpoints to MODEL_DIR/checkpoints, the
label map to MODEL_DIR/labels.json and TensorBoard scalars to MODEL_DIR/train (the chief only, with
several workers). Running the same command again resumes from the latest checkpoint at the step it
was saved. data.batch_size is the global batch over all replicas. SIGTERM or Ctrl-C saves a
checkpoint and exits with status 130. `python train_main.py` is the same command.
"""

import os
import sys

from polarmask_tf.cli import common


def build_parser():
    parser = common.parser(__doc__)
    common.add_config(parser, required=True)
    parser.add_argument("--model-dir", required=True, help="where checkpoints, summaries and config.yaml go")
    parser.add_argument("--strategy", choices=["auto", "one_device", "mirrored", "multi_worker"], default="auto",
                        help="auto (default): mirrored when more than one GPU is visible, else one_device")
    parser.add_argument("--worker-hosts",
                        help="multi_worker without TF_CONFIG: host:port of every worker, comma-separated")
    parser.add_argument("--task-index", type=int,
                        help="multi_worker without TF_CONFIG: this worker's index in --worker-hosts")
    parser.add_argument("--cpu-replicas", type=common.positive_int, default=1,
                        help="mirrored without GPUs: split the CPU into this many replicas (testing)")
    parser.add_argument("--scratch-dir", help="where non-chief workers save (default: the system temp dir)")
    return parser


def train(args, stream):
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from absl import logging

    from polarmask_tf import config as cfg
    from polarmask_tf.training import distribute, loop

    logging.set_verbosity(logging.WARNING)
    if (args.worker_hosts is None) != (args.task_index is None):
        raise common.UsageError("--worker-hosts and --task-index go together")
    config = cfg.load_config(args.config, args.set)
    if args.worker_hosts is not None:
        if args.strategy != "multi_worker":
            raise common.UsageError("--worker-hosts and --task-index need --strategy multi_worker")
        distribute.write_tf_config(args.worker_hosts.split(","), args.task_index)
    strategy = distribute.make_strategy(args.strategy, args.cpu_replicas)
    trainer = loop.Trainer(config, args.model_dir, strategy, args.scratch_dir)
    print(f"strategy {type(strategy).__name__}: {strategy.num_replicas_in_sync} replicas, "
          f"{config.data.batch_size // strategy.num_replicas_in_sync} images each; "
          f"{'chief' if trainer.is_chief else 'worker ' + str(distribute.task(strategy)[1])}", file=stream, flush=True)
    trainer.train()
    print(f"done: step {trainer.step}, checkpoint {trainer.checkpoint_in_model_dir()}, "
          f"weights {loop.weights_digest(trainer.model)}", file=stream)
    return 0


def main(argv=None, stream=None):
    return common.guarded(train, common.parse(build_parser(), argv), stream or sys.stdout)


if __name__ == "__main__":
    sys.exit(main())
