"""polarmask-client: sends images to a PolarMask model on TF Serving (REST or gRPC), prints or draws the detections.

    polarmask-client --url http://HOST:8501/v1/models/polarmask --image x.jpg [--image y.png ...] \\
        [--output overlay.png | --output-dir overlays] [--score-threshold 0.3] [--json detections.json]
    polarmask-client --grpc HOST:8500 [--model-name polarmask] --image x.jpg ...

Sends one predict request with all images to the serving_default signature
(polarmask_tf.serving.client): REST with --url, gRPC PredictionService.Predict with --grpc (needs
grpcio and tensorflow-serving-api, see docs/serving.md). Prints each image's detections and, with
--output (one image) or --output-dir (several), draws them (drawing imports polarmask_tf.visualize,
and with it TensorFlow). Images, overlays and the json may be local paths or URIs (gs://, s3://,
hdfs://): overlays, the json and images on URIs go through polarmask_tf.fileio (and import
TensorFlow); local images are read directly, so a REST request alone needs no TensorFlow.
Exit status 1 when an image cannot be read or the server answers with an error.
"""

import os
import sys

from polarmask_tf.cli import common


def build_parser():
    parser = common.parser(__doc__)
    transport = parser.add_mutually_exclusive_group(required=True)
    transport.add_argument("--url", help="REST: http://HOST:8501/v1/models/NAME[/versions/V]")
    transport.add_argument("--grpc", metavar="HOST:PORT", help="gRPC: TF Serving's gRPC address, e.g. localhost:8500")
    parser.add_argument("--model-name", default="polarmask", help="model name of a --grpc request (default polarmask)")
    parser.add_argument("--model-version", type=common.positive_int,
                        help="a specific version for --grpc (default: the server's latest)")
    parser.add_argument("--image", action="append", required=True, help="image file (repeatable: one request)")
    parser.add_argument("--output", help="overlay PNG (one --image)")
    parser.add_argument("--output-dir", help="overlays <stem>.png for several images")
    parser.add_argument("--json", help="write the detections (all, with polygons) as JSON")
    common.add_score_threshold(parser, 0.3)
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds")
    return parser


def _read_image(path):
    """The bytes of the image file `path`: a URI through polarmask_tf.fileio (which imports
    TensorFlow), a local path directly, so the REST client needs no TensorFlow. OSError naming
    the path when it cannot be read."""
    if "://" in path:
        from polarmask_tf import fileio

        return fileio.read_bytes(path)
    try:
        with open(path, "rb") as file:  # local: a local path the user gave (URIs take the branch above)
            return file.read()
    except OSError as error:
        raise OSError(f"cannot read {path}: {error.strerror}") from None


def _draw(encoded, found, path, score_threshold):
    """Draws the detections over the image and writes it as PNG to `path` (local or URI)."""
    import cv2
    import numpy as np

    from polarmask_tf import fileio, visualize

    image = cv2.imdecode(np.frombuffer(encoded, np.uint8), cv2.IMREAD_COLOR)
    names = {int(c): name for c, name in zip(found["classes"], found["class_names"], strict=True)}
    drawn = visualize.draw_detections(image[..., ::-1], found, names, score_threshold=score_threshold)
    ok, png = cv2.imencode(".png", np.ascontiguousarray(drawn[..., ::-1]))
    if not ok:
        raise OSError(f"OpenCV cannot encode the overlay for {path}")
    fileio.write_bytes(path, png.tobytes())


def request(args, stream):
    import numpy as np

    from polarmask_tf.serving import client

    if args.output and len(args.image) > 1:
        raise common.UsageError("--output takes one --image; use --output-dir for several")
    try:
        encoded = [_read_image(path) for path in args.image]
    except OSError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    try:
        if args.grpc:
            results = client.predict_grpc(args.grpc, encoded, args.model_name, args.timeout, args.model_version)
        else:
            results = client.predict(args.url, encoded, args.timeout)
    except client.ServingError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    for path, data, found in zip(args.image, encoded, results, strict=True):
        shown = [i for i, score in enumerate(found["scores"]) if score >= args.score_threshold]
        print(f"{path}: {len(found['scores'])} detections, {len(shown)} with score >= {args.score_threshold}",
              file=stream)
        for i in shown:
            box = ", ".join(f"{v:.1f}" for v in found["boxes"][i])
            print(f"  {found['class_names'][i]:<16} {found['scores'][i]:.3f}  box [{box}]", file=stream)
        target = args.output or (
            os.path.join(args.output_dir, os.path.splitext(os.path.basename(path))[0] + ".png")
            if args.output_dir else None
        )
        if target:
            _draw(data, found, target, args.score_threshold)  # fileio.write_bytes makes the directory
            print(f"  overlay: {target}", file=stream)
    if args.json:
        from polarmask_tf import fileio

        fileio.write_json(args.json, [{key: (value.tolist() if isinstance(value, np.ndarray) else value)
                                       for key, value in found.items()}
                                      | {"image": path} for path, found in zip(args.image, results, strict=True)],
                          indent=None)
        print(f"detections: {args.json}", file=stream)
    return 0


def main(argv=None, stream=None):
    return common.guarded(request, common.parse(build_parser(), argv), stream or sys.stdout)


if __name__ == "__main__":
    sys.exit(main())
