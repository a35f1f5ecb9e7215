"""Trains PolarMask.

    python train_main.py --config configs/quickstart.yaml --model_dir runs/quickstart [--set train.total_steps=500]

Writes the resolved config to MODEL_DIR/config.yaml, checkpoints to MODEL_DIR/checkpoints and
TensorBoard scalars to MODEL_DIR/train. Running the same command again resumes from the latest
checkpoint at the step it was saved.
"""

import sys

from absl import app, flags, logging

flags.DEFINE_string("config", None, "YAML config file (configs/*.yaml)", required=True)
flags.DEFINE_string("model_dir", None, "where checkpoints, summaries and config.yaml go", required=True)
flags.DEFINE_multi_string("set", [], "dotted override, e.g. --set train.total_steps=500 (repeatable)")


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)
    from polarmask_tf import config as cfg
    from polarmask_tf.training import loop

    try:
        config = cfg.load_config(flags.FLAGS.config, flags.FLAGS.set)
        trainer = loop.Trainer(config, flags.FLAGS.model_dir)
        trainer.train()
    except (cfg.ConfigError, loop.ArchitectureMismatchError, loop.NonFiniteLossError, FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    print(f"done: step {trainer.step}, checkpoint {trainer.manager.latest_checkpoint}")
    return 0


if __name__ == "__main__":
    app.run(main)
