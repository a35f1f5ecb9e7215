"""Trains PolarMask: the same command as `polarmask-train` (polarmask_tf/cli/train.py), for a checkout
without the package installed as commands. `python train_main.py --help` lists the options."""

import sys

from polarmask_tf.cli.train import main

if __name__ == "__main__":
    sys.exit(main())
