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


def alternating_medians(fns, steps, repeats):
    """{name: median over `repeats` rounds of the mean seconds per call} for a dict of callables,
    each warmed up once (tracing, compilation) and then timed in rounds that call every one of them
    `steps` times in turn, so that a slow period of the machine is shared by all of them."""
    for fn in fns.values():
        fn()
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            for _ in range(steps):
                fn()
            times[name].append((time.perf_counter() - start) / steps)
    return {name: statistics.median(values) for name, values in times.items()}
