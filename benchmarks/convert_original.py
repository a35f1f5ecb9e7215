"""Converting an original PolarMask checkpoint, and the converted model's speed on this CPU.

    python benchmarks/convert_original.py [--backbone resnet50] [--repeats 3] [--forward-repeats 5]

1. Conversion time: a randomly initialised PyTorch PolarMask with exactly the original's layout
   (tests/original_torch.py; R-50: 388 tensors, 34,739,651 parameters; the released files cannot be
   downloaded here) is saved with torch.save in the legacy format, then converted by
   conversion.convert into a new model dir, `--repeats` times; the median is printed.
2. Forward time at the original's test size, 768 x 1280, batch 1: the converted Keras model (one
   tf.function, float32) against the same network in PyTorch (tests/original_torch.py, written
   from the facts document, eval mode, no_grad), both with the converted weights, in this process,
   alternating rounds; and the post-processed Predictor call (forward + decoding + NMS).
Needs torch (pip install -e '.[convert]').
"""

import argparse
import io
import os
import pathlib
import statistics
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import torch  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benchmarks"))
from timing import median_seconds  # noqa: E402

from polarmask_tf import config as cfg  # noqa: E402
from polarmask_tf import inference  # noqa: E402
from polarmask_tf.conversion import convert as convert_original  # noqa: E402

import original_torch  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backbone", default="resnet50", choices=sorted(original_torch.DEPTHS))
    parser.add_argument("--repeats", type=int, default=3, help="conversions to time")
    parser.add_argument("--forward-repeats", type=int, default=5, help="rounds of forward timing per framework")
    args = parser.parse_args()
    torch.set_num_threads(os.cpu_count())

    with tempfile.TemporaryDirectory() as directory:
        directory = pathlib.Path(directory)
        net = original_torch.randomize(original_torch.OriginalPolarMask(args.backbone, "fcos"), seed=0)
        path = directory / "original.pth"
        torch.save({"meta": {"mmdet_version": "1.0rc0"}, "state_dict": net.state_dict()}, str(path),
                   _use_new_zipfile_serialization=False)
        size_mb = path.stat().st_size / 2**20

        seconds = []
        for i in range(args.repeats):
            start = time.perf_counter()
            convert_original.convert(str(path), str(directory / f"model{i}"), stream=io.StringIO())
            seconds.append(time.perf_counter() - start)
        model_dir = str(directory / "model0")

        config = cfg.load_config(os.path.join(model_dir, "config.yaml"))
        model = inference.load_model(config, model_dir)
        height, width = config.data.image_size
        inputs = np.random.default_rng(0).normal(0, 50, (1, height, width, 3)).astype(np.float32)
        keras_forward = tf.function(lambda x: model(x, training=False))
        tensor = tf.constant(inputs)
        torch_input = torch.from_numpy(inputs.transpose(0, 3, 1, 2).copy())

        def torch_forward():
            with torch.no_grad():
                net(torch_input)

        def keras_call():
            keras_forward(tensor)["rays"].numpy()

        keras_call(), torch_forward()  # warm-up: tracing, first-call allocations
        keras_times, torch_times = [], []
        for _ in range(args.forward_repeats):  # alternating rounds of one call each
            for fn, times in ((keras_call, keras_times), (torch_forward, torch_times)):
                start = time.perf_counter()
                fn()
                times.append(time.perf_counter() - start)
        image = np.random.default_rng(1).integers(0, 256, (480, 640, 3), dtype=np.uint8)
        predictor = inference.Predictor(config, model, batch_size=1)
        predict_seconds = median_seconds(lambda: predictor.predict([image]), 1, args.forward_repeats)

    keras_median, torch_median = statistics.median(keras_times), statistics.median(torch_times)
    print(f"{args.backbone}: {sum(p.numel() for p in net.parameters()):,} parameters, a {size_mb:.0f} MB legacy-format "
          f".pth; TF {tf.__version__}, torch {torch.__version__}, {os.cpu_count()} CPU threads")
    print()
    print("| measurement | median | ratio |")
    print("|---|---|---|")
    print(f"| conversion (read, check, build, assign, write model dir), {args.repeats} runs | "
          f"{statistics.median(seconds):.1f} s | |")
    print(f"| forward {height}x{width}, batch 1, PyTorch original (baseline) | {torch_median:.2f} s | 1.00 |")
    print(f"| forward {height}x{width}, batch 1, converted Keras model | {keras_median:.2f} s | "
          f"{keras_median / torch_median:.2f} |")
    print(f"| Predictor: 640x480 photo -> detections (resize, forward, post-processing) | {predict_seconds:.2f} s | "
          f"{predict_seconds / torch_median:.2f} |")


if __name__ == "__main__":
    main()
