"""REST and gRPC client for a PolarMask model on TensorFlow Serving; the command is
polarmask-client (cli/client.py).

    detections = predict("http://HOST:8501/v1/models/polarmask", [jpeg_bytes, png_bytes])
    detections = predict_grpc("HOST:8500", [jpeg_bytes, png_bytes], model_name="polarmask")

One predict request carries all images, to the serving_default signature: REST
{"instances": [{"b64": ...}, ...]} (only the standard library and numpy are needed), or gRPC
PredictionService.Predict with a PredictRequest whose "image_bytes" input is a DT_STRING tensor [B]
(needs grpcio and the `tensorflow-serving-api` protos; that package declares a dependency on the
full `tensorflow` wheel, so install it beside tensorflow-cpu with
`pip install --no-deps tensorflow-serving-api==2.21.*`; its protos import TensorFlow).
Errors of either transport are ServingError with the server's message, decoded as UTF-8 with
invalid bytes replaced, so a message is always printable.
"""

import base64
import http.client
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
    "error" message on an HTTP error, or the reason when the server cannot be reached. Answers are
    decoded as UTF-8 with invalid bytes replaced."""
    request = urllib.request.Request(
        url, data=json.dumps(body).encode("utf-8"), headers={"Content-Type": "application/json"}, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            text = response.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as error:
        text = error.read().decode("utf-8", "replace")
        try:
            message = json.loads(text).get("error", text)
        except (ValueError, AttributeError):
            message = text
        raise ServingError(f"{url}: HTTP {error.code}: {message}") from None
    except (urllib.error.URLError, OSError, http.client.HTTPException) as error:
        raise ServingError(f"{url}: {getattr(error, 'reason', error)}") from None
    try:
        return json.loads(text)
    except ValueError:
        raise ServingError(f"{url}: the answer is not JSON: {text[:200]!r}") from None


def parse_outputs(outputs):
    """Columnar outputs {name: numpy array, batch first} (gRPC, or the in-process signature) ->
    the per-image dicts of parse_predictions."""
    if "num_detections" not in outputs:
        raise ServingError(f"the answer has no 'num_detections' output: {sorted(outputs)}")
    detections = []
    for index, n in enumerate(np.asarray(outputs["num_detections"]).astype(int).tolist()):
        found = {}
        for output, key in DETECTION_FIELDS.items():
            if output not in outputs:
                continue
            values = np.asarray(outputs[output])[index, :n]
            if key == "class_names":
                found[key] = [v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v) for v in values]
            else:
                found[key] = values.astype({"classes": np.int32, "masks": np.uint8}.get(key, np.float32))
        detections.append(found)
    return detections


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


def grpc_request(encoded_images, model_name="polarmask", signature_name="serving_default", version=None):
    """A tensorflow.serving PredictRequest: the encoded images as the DT_STRING [B] input
    "image_bytes" of `signature_name`."""
    from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2
    from tensorflow_serving.apis import predict_pb2

    request = predict_pb2.PredictRequest()
    request.model_spec.name = model_name
    request.model_spec.signature_name = signature_name
    if version is not None:
        request.model_spec.version.value = int(version)
    shape = tensor_shape_pb2.TensorShapeProto(dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=len(encoded_images))])
    request.inputs["image_bytes"].CopyFrom(
        tensor_pb2.TensorProto(dtype=types_pb2.DT_STRING, tensor_shape=shape, string_val=list(encoded_images)))
    return request


def predict_grpc_outputs(target, request, timeout=60.0, channel=None):
    """Sends a PredictRequest to HOST:PORT (TF Serving's gRPC port, 8500) and returns its outputs
    as numpy arrays; ServingError "HOST:PORT: gRPC <CODE>: <details>" when the call fails.
    channel: an open grpc channel to reuse (else one is opened and closed for this call)."""
    import grpc
    from tensorflow.python.framework import tensor_util
    from tensorflow_serving.apis import prediction_service_pb2_grpc

    own = channel is None
    channel = grpc.insecure_channel(target, options=GRPC_OPTIONS) if own else channel
    try:
        response = prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request, timeout=timeout)
    except grpc.RpcError as error:
        raise ServingError(f"{target}: gRPC {error.code().name}: {error.details()}") from None
    finally:
        if own:
            channel.close()
    return {name: tensor_util.MakeNdarray(proto) for name, proto in response.outputs.items()}


GRPC_OPTIONS = [("grpc.max_send_message_length", 256 * 2**20), ("grpc.max_receive_message_length", 256 * 2**20)]
"""Channel options: messages up to 256 MiB each way (gRPC's default receive limit is 4 MiB)."""


def predict_grpc(target, encoded_images, model_name="polarmask", timeout=60.0, version=None, channel=None):
    """Detections (parse_predictions) for a list of encoded images, in one gRPC Predict call to
    HOST:PORT."""
    request = grpc_request(encoded_images, model_name, version=version)
    return parse_outputs(predict_grpc_outputs(target, request, timeout, channel))
