"""Exports a trained PolarMask as a SavedModel for TF Serving: the same command as `polarmask-export`
(polarmask_tf/cli/export.py), for a checkout without the package installed as commands.
`python export_saved_model.py --help` lists the options."""

import sys

from polarmask_tf.cli.export import main

if __name__ == "__main__":
    sys.exit(main())
