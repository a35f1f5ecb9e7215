"""Geometry throughput: exact ray casting (origins x rays per second) and the upper-bound CLI's wall time.

    python benchmarks/geometry.py [--repeats 20] [--cli-repeats 1] [--annotations PATH]

Polygon: a 300-vertex star-shaped polygon; 100 origins inside it; 36 rays. Variants: eager, inside
tf.function, inside tf.function(jit_compile=True), and the original's vertex-binning rule
(method="reference", numpy) as the baseline for the ratio column. Then the upper-bound CLI on a
COCO file (default: ../shared/data/coco_mini/annotations/instances_val2017.json) with
18/36/72 rays, both methods, mass centre, timed end to end in a subprocess.
"""

import argparse
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from polarmask_tf import geometry  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parent.parent
DEFAULT_ANNOTATIONS = ROOT.parent / "shared" / "data" / "coco_mini" / "annotations" / "instances_val2017.json"


def _median_seconds(fn, repeats):
    fn()  # warm-up (tracing, compilation)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def ray_casting_table(repeats, num_vertices=300, num_origins=100, num_rays=36):
    rng = np.random.default_rng(0)
    angles = np.sort(rng.uniform(0, 2 * np.pi, num_vertices))
    radii = rng.uniform(60, 120, num_vertices)
    polygon = np.stack([200 + radii * np.cos(angles), 200 + radii * np.sin(angles)], -1).astype(np.float32)
    origins = (200 + rng.uniform(-40, 40, (num_origins, 2))).astype(np.float32)
    poly_t, origins_t = tf.constant(polygon), tf.constant(origins)
    graph = tf.function(lambda p, o: geometry.ray_distances(p, o, num_rays))
    xla = tf.function(lambda p, o: geometry.ray_distances(p, o, num_rays), jit_compile=True)
    variants = [
        ("reference rule (numpy, baseline)",
         lambda: geometry.ray_distances(polygon, origins, num_rays, method="reference")),
        ("exact, eager", lambda: geometry.ray_distances(poly_t, origins_t, num_rays).numpy()),
        ("exact, tf.function", lambda: graph(poly_t, origins_t).numpy()),
        ("exact, tf.function + XLA", lambda: xla(poly_t, origins_t).numpy()),
    ]
    work = num_origins * num_rays
    rows = []
    for name, fn in variants:
        seconds = _median_seconds(fn, repeats)
        rows.append((name, seconds * 1e3, work / seconds))
    base = rows[0][2]
    print(f"\nRay casting: {num_vertices}-vertex polygon, {num_origins} origins x {num_rays} rays, median of {repeats}")
    print(f"{'variant':<34} {'ms/call':>9} {'origin-rays/s':>15} {'vs baseline':>12}")
    for name, ms, rate in rows:
        print(f"{name:<34} {ms:>9.3f} {rate:>15,.0f} {rate / base:>11.2f}x")


def cli_table(annotations, repeats):
    if not annotations.exists():
        print(f"\nUpper-bound CLI: skipped, {annotations} is absent")
        return
    times = []
    with tempfile.TemporaryDirectory() as tmp:
        command = [
            sys.executable, "-m", "polarmask_tf.cli.upper_bound", "--annotations", str(annotations),
            "--num-rays", "18", "36", "72", "--method", "exact", "reference", "--center", "mass",
            "--output", os.path.join(tmp, "report.json"),
        ]
        for _ in range(repeats):
            start = time.perf_counter()
            subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            times.append(time.perf_counter() - start)
    print(f"\nUpper-bound CLI on {annotations.name} (18/36/72 rays, exact + reference, mass centre)")
    print(f"{'runs':>5} {'median wall s':>14} {'min s':>8}")
    print(f"{repeats:>5} {statistics.median(times):>14.1f} {min(times):>8.1f}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--cli-repeats", type=int, default=1)
    parser.add_argument("--annotations", type=pathlib.Path, default=DEFAULT_ANNOTATIONS)
    args = parser.parse_args()
    print(f"TensorFlow {tf.__version__}, {os.cpu_count()} CPUs")
    ray_casting_table(args.repeats)
    if args.cli_repeats > 0:
        cli_table(args.annotations, args.cli_repeats)


if __name__ == "__main__":
    main()
