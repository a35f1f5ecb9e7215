"""REST client for a PolarMask model on TensorFlow Serving; the command is polarmask-client
(cli/client.py).

    detections = predict("http://HOST:8501/v1/models/polarmask", [jpeg_bytes, png_bytes])

One predict request carries all images ({"instances": [{"b64": ...}, ...]} to the serving_default
signature). Only the standard library and numpy are needed to talk to the server.

gRPC: TF Serving's gRPC API needs the `tensorflow-serving-api` package, which depends on the full
`tensorflow` wheel (it conflicts with tensorflow-cpu), so this client speaks REST only.
"""

import base64
import json
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
