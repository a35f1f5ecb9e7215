"""polarmask-train: trains PolarMask on one device, several local GPUs or several machines.

    polarmask-train --config configs/quickstart.yaml --model-dir runs/quickstart [--set train.total_steps=500]
    polarmask-train --config C --model-dir D --strategy mirrored            # every local GPU
    polarmask-train --config C --model-dir D --strategy multi_worker \\
        --worker-hosts host1:2222,host2:2222 --task-index 0                # on host1; 1 on host2

Writes the resolved config to MODEL_DIR/config.yaml, checkpoints to MODEL_DIR/checkpoints, the
label map to MODEL_DIR/labels.json and TensorBoard scalars to MODEL_DIR/train (the chief only, with
several workers). Running the same command again resumes from the latest checkpoint at the step it
was saved. data.batch_size is the global batch over all replicas. SIGTERM or Ctrl-C saves a
checkpoint and exits with status 130. With several workers, a worker that loses contact with
another (it died or restarted) exits with status 3: restart every worker with the same command,
and they resume from the latest checkpoint. `python train_main.py` is the same command.
"""

import json
import os
import sys

from polarmask_tf.cli import common

PEER_LOST = 3
"""Exit status of a worker whose collectives failed because another worker went away (it died,
or restarted): the whole cluster has to restart (training.distribute, docs/distributed.md)."""


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


def cluster_environment(args):
    """This process's place in a multi-worker cluster, from the parsed arguments: checks that
    --worker-hosts and --task-index come together and with --strategy multi_worker, and then
    writes TF_CONFIG from them (training.distribute.write_tf_config). Returns the TF_CONFIG dict
    --strategy multi_worker will use (written here, or set by a cluster manager), or None for the
    other strategies. Raises UsageError for flags that do not fit together, and ValueError for
    malformed hosts or an index outside them. Starts nothing: TF_CONFIG is only read when the
    strategy is made."""
    from polarmask_tf.training import distribute

    if (args.worker_hosts is None) != (args.task_index is None):
        raise common.UsageError("--worker-hosts and --task-index go together")
    if args.worker_hosts is not None:
        if args.strategy != "multi_worker":
            raise common.UsageError("--worker-hosts and --task-index need --strategy multi_worker")
        distribute.write_tf_config(args.worker_hosts.split(","), args.task_index)
    if args.strategy != "multi_worker":
        return None
    if not os.environ.get("TF_CONFIG"):
        raise common.UsageError("--strategy multi_worker needs TF_CONFIG, or --worker-hosts and --task-index")
    try:
        return json.loads(os.environ["TF_CONFIG"])
    except ValueError as error:
        raise common.UsageError(f"TF_CONFIG is not valid JSON: {error}") from None


def train(args, stream):
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf
    from absl import logging

    from polarmask_tf import config as cfg
    from polarmask_tf.training import distribute, loop

    logging.set_verbosity(logging.WARNING)
    cluster_environment(args)
    config = cfg.load_config(args.config, args.set)
    trainer = None
    try:
        strategy = distribute.make_strategy(args.strategy, args.cpu_replicas)  # waits for every worker
        trainer = loop.Trainer(config, args.model_dir, strategy, args.scratch_dir)
        print(f"strategy {type(strategy).__name__}: {strategy.num_replicas_in_sync} replicas, "
              f"{config.data.batch_size // strategy.num_replicas_in_sync} images each; "
              f"{'chief' if trainer.is_chief else 'worker ' + str(distribute.task(strategy)[1])}",
              file=stream, flush=True)
        trainer.train()
    except tf.errors.UnavailableError as error:
        if args.strategy != "multi_worker":
            raise
        # A peer died or restarted: MultiWorkerMirroredStrategy aborts the collectives, and only a
        # restart of every worker recovers. The model dir keeps the last checkpoint saved.
        where = f" at step {trainer.step}" if trainer is not None else ""
        print(f"error: lost contact with another worker{where} ({_cause(error)}). Restart every worker "
              f"with the same command: they resume from the latest checkpoint in {args.model_dir}", file=sys.stderr)
        return PEER_LOST
    print(f"done: step {trainer.step}, checkpoint {trainer.checkpoint_in_model_dir()}, "
          f"weights {loop.weights_digest(trainer.model)}", file=stream)
    return 0


def _cause(error):
    """The line of a collective's error that says why it failed ("Collective ops is aborted by: ...")."""
    lines = [line.strip() for line in str(error.message).splitlines() if line.strip()]
    return next((line for line in lines if "aborted" in line), lines[0] if lines else type(error).__name__)


def main(argv=None, stream=None):
    return common.guarded(train, common.parse(build_parser(), argv), stream or sys.stdout)


if __name__ == "__main__":
    sys.exit(main())
