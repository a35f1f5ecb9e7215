"""Training: the optimiser and schedule, one custom loop over any tf.distribute strategy."""
