"""LiteRT (TFLite) files next to the SavedModel: latency per image, size on disk and held-out AP.

    python benchmarks/tflite.py [--model-dir runs/quickstart] [--mobilenet-sizes 320 512]
        [--images 8] [--repeats 5] [--representative-images 100]

For the quickstart model (a trained model dir; run polarmask-quickstart first) and for MobileNetV2
PolarMask at each --mobilenet-sizes input (random weights, 80 classes: latency and size only), in
one process: the SavedModel export (serve_images) and the three .tflite files of
polarmask_tf.serving.tflite (float32, float16 weights, int8 network with float decoding), each
converted in a child process; int8 calibrates on --representative-images training images (the
quickstart's synthetic TFRecords, letterboxed to each input size).
- latency: ms per image, RGB uint8 image in -> detections out, resize included (the SavedModel
  resizes inside; the .tflite files after polarmask_tf.serving.tflite.letterbox, the LiteRT
  interpreter with XNNPACK on 2 threads), --images held-out images per round, rounds alternating
  over the four, median of --repeats rounds;
- size: MiB on disk (the SavedModel directory; each .tflite file);
- AP (quickstart model only): COCO segm AP and AP50 on the quickstart's held-out split (120 images)
  through polarmask_tf.evaluation, the same evaluation polarmask-quickstart prints.
The target is int8 within 2 segm AP points of float32.
"""

import argparse
import os
import pathlib
import shutil
import sys
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from timing import alternating_medians  # noqa: E402

from polarmask_tf import config as cfg  # noqa: E402
from polarmask_tf import evaluation, inference  # noqa: E402
from polarmask_tf.data import coco  # noqa: E402
from polarmask_tf.modeling import model as modeling  # noqa: E402
from polarmask_tf.serving import export, tflite, tflite_runner  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parent.parent
MOBILENET_CONFIG = ROOT / "configs" / "polarmask_mnv2_coco_subset.yaml"
SYNTHETIC = ROOT / "data" / "synthetic"


class SavedModelPredictor:
    """serve_images of a SavedModel export behind inference.Predictor's predict interface."""

    def __init__(self, version_dir, label_map):
        self._serve = tf.saved_model.load(version_dir).signatures["serve_images"]
        self._label_of = {c.category_id: c.label for c in label_map.categories}

    def predict(self, images):
        results = []
        for image in images:
            found = {key: value.numpy()[0] for key, value in self._serve(images=tf.constant(image[None])).items()}
            n = int(found["num_detections"])
            results.append({"boxes": found["detection_boxes"][:n], "scores": found["detection_scores"][:n],
                            "classes": np.array([self._label_of[int(c)] for c in found["detection_classes"][:n]],
                                                np.int32),
                            "polygons": found["detection_polygons"][:n]})
        return results


def _mib(path):
    return export.size_on_disk(path) / 2**20


def measure(name, config, model, label_map, images, repeats, representative_count, workdir, evaluator=None):
    """Rows (format, size MiB, ms per image, segm AP, segm AP50) for one model."""
    out = os.path.join(workdir, name)
    version = export.export(config, model, label_map, os.path.join(out, "saved_model"), version=1)
    representative = tflite.representative_inputs(config, str(SYNTHETIC / "tfrecords" / "train-*.tfrecord"),
                                                  representative_count)
    paths = tflite.export_tflite(config, model, label_map, os.path.join(out, "tflite"), tflite.QUANTIZATIONS,
                                 representative)
    predictors = {"SavedModel": SavedModelPredictor(version, label_map)}
    sizes = {"SavedModel": _mib(version)}
    for quantization, path in paths.items():
        predictors[f"tflite {quantization}"] = tflite_runner.TFLiteDetector(path, config, num_threads=2)
        sizes[f"tflite {quantization}"] = os.path.getsize(path) / 2**20
    seconds = alternating_medians({key: (lambda p=p: p.predict(images)) for key, p in predictors.items()},
                                  1, repeats)
    rows = []
    for key, predictor in predictors.items():
        ap = ap50 = None
        if evaluator is not None:
            with open(os.devnull, "w") as quiet:
                metrics, _ = evaluator.evaluate(predictor=predictor, stream=quiet)
            ap, ap50 = metrics["segm"]["AP"], metrics["segm"]["AP50"]
        rows.append((key, sizes[key], seconds[key] / len(images) * 1e3, ap, ap50))
    return rows


def _held_out_images(count):
    files = sorted((SYNTHETIC / "val").glob("*.jpg"))[:count]
    if not files:
        raise SystemExit(f"no held-out images in {SYNTHETIC / 'val'}: run polarmask-quickstart first")
    return [evaluation.load_image(str(path)) for path in files]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-dir", default=str(ROOT / "runs" / "quickstart"))
    parser.add_argument("--mobilenet-sizes", type=int, nargs="*", default=[320, 512])
    parser.add_argument("--images", type=int, default=8, help="held-out images per round")
    parser.add_argument("--repeats", type=int, default=5, help="rounds; the median round is reported")
    parser.add_argument("--representative-images", type=int, default=100)
    args = parser.parse_args()
    images = _held_out_images(args.images)
    workdir = tempfile.mkdtemp(prefix="tflite-bench-")
    tables = []
    try:
        config = export.inference_config(cfg.load_config(inference.checkpoint_config_path(args.model_dir)))
        label_map = coco.read_label_map(os.path.join(args.model_dir, inference.LABELS_FILE))
        evaluator = evaluation.Evaluator(config, str(SYNTHETIC / "annotations" / "instances_val.json"),
                                         str(SYNTHETIC / "val"), label_map=label_map)
        model = inference.load_model(config, args.model_dir)
        size = tflite.input_shape(config)[0]
        tables.append((f"quickstart model ({args.model_dir}), {size} x {size}",
                       measure("quickstart", config, model, label_map, images, args.repeats,
                               args.representative_images, workdir, evaluator)))
        for size in args.mobilenet_sizes:
            config = export.inference_config(
                cfg.load_config(MOBILENET_CONFIG, ["model.backbone_weights=null"]), input_size=size)
            label_map = coco.LabelMap(tuple(coco.Category(k, k, f"class {k}") for k in range(1, 81)))
            tables.append((f"MobileNetV2 PolarMask, random weights, {size} x {size}",
                           measure(f"mnv2_{size}", config, modeling.build_model(config), label_map, images,
                                   args.repeats, args.representative_images, workdir)))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print(f"TensorFlow {tf.__version__}, {tflite_runner.interpreter_class().__module__}, {os.cpu_count()} CPUs; "
          f"median of {args.repeats} alternating rounds of {len(images)} held-out images")
    for title, rows in tables:
        print(f"\n{title}")
        print(f"{'format':<16} {'MiB':>7} {'ms/image':>9} {'vs SM':>6} {'segm AP':>8} {'AP50':>6}")
        baseline = rows[0][2]
        for key, mib, ms, ap, ap50 in rows:
            scores = f"{ap * 100:>8.1f} {ap50 * 100:>6.1f}" if ap is not None else f"{'-':>8} {'-':>6}"
            print(f"{key:<16} {mib:>7.2f} {ms:>9.1f} {ms / baseline:>6.2f} {scores}")


if __name__ == "__main__":
    main()
