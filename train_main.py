"""Trains PolarMask, on one device, several local GPUs or several machines.

    python train_main.py --config configs/quickstart.yaml --model_dir runs/quickstart [--set train.total_steps=500]
    python train_main.py --config C --model_dir D --strategy mirrored            # every local GPU
    python train_main.py --config C --model_dir D --strategy multi_worker \
        --worker_hosts host1:2222,host2:2222 --task_index 0                     # on host1; 1 on host2

Writes the resolved config to MODEL_DIR/config.yaml, checkpoints to MODEL_DIR/checkpoints and
TensorBoard scalars to MODEL_DIR/train (the chief only, with several workers). Running the same
command again resumes from the latest checkpoint at the step it was saved. data.batch_size is the
global batch over all replicas. SIGTERM or Ctrl-C saves a checkpoint and exits with status 130.
"""

import sys

from absl import app, flags, logging

flags.DEFINE_string("config", None, "YAML config file (configs/*.yaml)", required=True)
flags.DEFINE_string("model_dir", None, "where checkpoints, summaries and config.yaml go", required=True)
flags.DEFINE_multi_string("set", [], "dotted override, e.g. --set train.total_steps=500 (repeatable)")
flags.DEFINE_enum("strategy", "auto", ["auto", "one_device", "mirrored", "multi_worker"],
                  "auto: mirrored when more than one GPU is visible, else one_device")
flags.DEFINE_list("worker_hosts", None, "multi_worker without TF_CONFIG: host:port of every worker, in order")
flags.DEFINE_integer("task_index", None, "multi_worker without TF_CONFIG: this worker's index in --worker_hosts")
flags.DEFINE_integer("cpu_replicas", 1, "mirrored without GPUs: split the CPU into this many replicas (testing)",
                     lower_bound=1)
flags.DEFINE_string("scratch_dir", None, "where non-chief workers save (default: the system temp dir)")


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)
    from polarmask_tf import config as cfg
    from polarmask_tf.training import distribute, loop

    f = flags.FLAGS
    try:
        config = cfg.load_config(f.config, f.set)
        if (f.worker_hosts is None) != (f.task_index is None):
            raise ValueError("--worker_hosts and --task_index go together")
        if f.worker_hosts is not None:
            if f.strategy != "multi_worker":
                raise ValueError("--worker_hosts and --task_index need --strategy multi_worker")
            distribute.write_tf_config(f.worker_hosts, f.task_index)
        strategy = distribute.make_strategy(f.strategy, f.cpu_replicas)
        trainer = loop.Trainer(config, f.model_dir, strategy, f.scratch_dir)
        print(f"strategy {type(strategy).__name__}: {strategy.num_replicas_in_sync} replicas, "
              f"{config.data.batch_size // strategy.num_replicas_in_sync} images each; "
              f"{'chief' if trainer.is_chief else 'worker ' + str(distribute.task(strategy)[1])}", flush=True)
        trainer.train()
    except (cfg.ConfigError, loop.ArchitectureMismatchError, loop.NonFiniteLossError, FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    print(f"done: step {trainer.step}, checkpoint {trainer.checkpoint_in_model_dir()}, "
          f"weights {loop.weights_digest(trainer.model)}")
    return 0


if __name__ == "__main__":
    app.run(main)
