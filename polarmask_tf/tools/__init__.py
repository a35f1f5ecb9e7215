"""Command-line tools (`python -m polarmask_tf.tools.<name>`)."""
