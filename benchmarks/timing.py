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


def alternating_rounds(fns, steps, repeats):
    """{name: [mean seconds per call in each of `repeats` rounds]} for a dict of callables, each
    warmed up once (tracing, compilation) and then timed in rounds that call every one of them
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
    return times


def alternating_medians(fns, steps, repeats):
    """{name: median over the rounds of `alternating_rounds`}."""
    return {name: statistics.median(values) for name, values in alternating_rounds(fns, steps, repeats).items()}


def paired_ratio(numerators, denominators):
    """Median over rounds of numerator / denominator seconds timed in the same round: robust to the
    machine's speed drifting between rounds, which the ratio of two medians is not."""
    return statistics.median(a / b for a, b in zip(numerators, denominators, strict=True))
