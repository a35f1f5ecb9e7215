"""Timing helper shared by the benchmark scripts."""

import statistics
import time


def median_seconds(fn, steps, repeats):
    """Median over `repeats` runs of the mean seconds per call of `fn` over `steps` calls, after one
    warm-up call (tracing, compilation)."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(steps):
            fn()
        times.append((time.perf_counter() - start) / steps)
    return statistics.median(times)
