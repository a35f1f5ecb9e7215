"""REST client for a PolarMask model on TensorFlow Serving.

    python -m polarmask_tf.serving.client --url http://HOST:8501/v1/models/polarmask --image x.jpg \\
        [--image y.png ...] [--output overlay.png] [--score-threshold 0.3] [--json detections.json]

Sends one predict request with all images ({"instances": [{"b64": ...}, ...]} to the
serving_default signature), prints each image's detections and, with --output (one image) or
--output-dir (several), draws them. Only the standard library, numpy and OpenCV are needed to
talk to the server; drawing imports polarmask_tf.visualize (and with it TensorFlow).

gRPC: TF Serving's gRPC API needs the `tensorflow-serving-api` package, which depends on the full
`tensorflow` wheel (it conflicts with tensorflow-cpu), so this client speaks REST only.
"""

import argparse
import base64
import json
import os
import sys
import urllib.error
import urllib.request

import numpy as np

DETECTION_FIELDS = {
    "detection_boxes": "boxes",
    "detection_scores": "scores",
    "detection_classes": "classes",
    "detection_class_names": "class_names",
    "detection_polygons": "polygons",
    "detection_masks": "masks",
}
"""Serving output -> key of the detections dicts parse_predictions returns."""


class ServingError(RuntimeError):
    """The server answered with an error (its message), or could not be reached."""


def predict_url(url):
    """The :predict endpoint for a model URL (http://HOST:8501/v1/models/NAME[/versions/V])."""
    url = url.rstrip("/")
    return url if url.endswith(":predict") else url + ":predict"


def predict_request(encoded_images, signature_name="serving_default"):
    """The REST predict body for encoded image bytes, in TF Serving's row ("instances") format."""
    return {
        "signature_name": signature_name,
        "instances": [{"b64": base64.b64encode(data).decode("ascii")} for data in encoded_images],
    }


def post_json(url, body, timeout=60.0):
    """POSTs `body` as JSON and returns the decoded JSON answer; ServingError with the server's
    "error" message on an HTTP error, or the reason when the server cannot be reached."""
    request = urllib.request.Request(
        url, data=json.dumps(body).encode("utf-8"), headers={"Content-Type": "application/json"}, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return json.loads(response.read().decode("utf-8"))
    except urllib.error.HTTPError as error:
        text = error.read().decode("utf-8", "replace")
        try:
            message = json.loads(text).get("error", text)
        except (ValueError, AttributeError):
            message = text
        raise ServingError(f"{url}: HTTP {error.code}: {message}") from None
    except (urllib.error.URLError, OSError) as error:
        raise ServingError(f"{url}: {getattr(error, 'reason', error)}") from None


def parse_predictions(answer):
    """TF Serving's row-format answer -> one dict per image with numpy arrays trimmed to
    num_detections: boxes float32 [n, 4], scores [n], classes int32 [n] (category ids),
    class_names [n] str, polygons float32 [n, N, 2], masks uint8 [n, M, M] (when exported)."""
    if "predictions" not in answer:
        raise ServingError(f"the answer has no 'predictions': {str(answer)[:200]}")
    detections = []
    for row in answer["predictions"]:
        n = int(row["num_detections"])
        found = {}
        for output, key in DETECTION_FIELDS.items():
            if output not in row:
                continue
            values = row[output][:n]
            if key == "class_names":
                found[key] = [str(name) for name in values]
            else:
                dtype = {"classes": np.int32, "masks": np.uint8}.get(key, np.float32)
                found[key] = np.asarray(values, dtype).reshape((n,) + np.shape(row[output])[1:])
        detections.append(found)
    return detections


def predict(url, encoded_images, timeout=60.0):
    """Detections (parse_predictions) for a list of encoded images, in one request."""
    return parse_predictions(post_json(predict_url(url), predict_request(encoded_images), timeout))


def _draw(encoded, found, path, score_threshold):
    import cv2

    from polarmask_tf import visualize

    image = cv2.imdecode(np.frombuffer(encoded, np.uint8), cv2.IMREAD_COLOR)
    names = {int(c): name for c, name in zip(found["classes"], found["class_names"])}
    drawn = visualize.draw_detections(image[..., ::-1], found, names, score_threshold=score_threshold)
    if not cv2.imwrite(path, drawn[..., ::-1]):
        raise OSError(f"cannot write {path}")


def main(argv=None, stream=None):
    stream = stream or sys.stdout
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", required=True, help="http://HOST:8501/v1/models/NAME[/versions/V]")
    parser.add_argument("--image", action="append", required=True, help="image file (repeatable: one request)")
    parser.add_argument("--output", help="overlay PNG (one --image)")
    parser.add_argument("--output-dir", help="overlays <stem>.png for several images")
    parser.add_argument("--json", help="write the detections (all, with polygons) as JSON")
    parser.add_argument("--score-threshold", type=float, default=0.3, help="printed and drawn above this")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds")
    args = parser.parse_args(argv)
    if args.output and len(args.image) > 1:
        parser.error("--output takes one --image; use --output-dir for several")
    try:
        encoded = []
        for path in args.image:
            with open(path, "rb") as file:
                encoded.append(file.read())
    except OSError as error:
        print(f"error: cannot read {error.filename}: {error.strerror}", file=sys.stderr)
        return 1
    try:
        results = predict(args.url, encoded, args.timeout)
    except ServingError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    for path, data, found in zip(args.image, encoded, results):
        shown = [i for i, score in enumerate(found["scores"]) if score >= args.score_threshold]
        print(f"{path}: {len(found['scores'])} detections, {len(shown)} with score >= {args.score_threshold}",
              file=stream)
        for i in shown:
            box = ", ".join(f"{v:.1f}" for v in found["boxes"][i])
            print(f"  {found['class_names'][i]:<16} {found['scores'][i]:.3f}  box [{box}]", file=stream)
        target = args.output or (
            os.path.join(args.output_dir, os.path.splitext(os.path.basename(path))[0] + ".png") if args.output_dir else None
        )
        if target:
            os.makedirs(os.path.dirname(os.path.abspath(target)), exist_ok=True)
            _draw(data, found, target, args.score_threshold)
            print(f"  overlay: {target}", file=stream)
    if args.json:
        with open(args.json, "w") as file:
            json.dump([{key: (value.tolist() if isinstance(value, np.ndarray) else value) for key, value in found.items()}
                       | {"image": path} for path, found in zip(args.image, results)], file)
        print(f"detections: {args.json}", file=stream)
    return 0


if __name__ == "__main__":
    sys.exit(main())
