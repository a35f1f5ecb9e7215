"""TEST FIXTURE, not a server to deploy: a loopback HTTP stand-in for TensorFlow Serving's REST
predict API, because tensorflow_model_server cannot be installed on the test machines.

It serves one SavedModel version directory (loaded with tf.saved_model.load) at
http://127.0.0.1:<free port>/v1/models/<name>[/versions/<v>]:predict and applies the rules of TF
Serving's REST API documentation:
- the body is {"signature_name"?: str, "instances": [...]} (row format) or {"inputs": ...}
  (columnar); signature_name defaults to serving_default;
- row format: with one input, an instance is the value itself or {"<input>": value}; with several,
  an object naming every input;
- a binary value is {"b64": "<base64>"}; string inputs also take plain JSON strings;
- values are converted to the signature's dtype, and any mismatch or model error is HTTP 400
  with {"error": "<message>"};
- the answer is {"predictions": [...]}: per instance the value of the only output, or an object
  with every output; string outputs are UTF-8 strings, or {"b64": ...} when the output name ends in
  "_bytes"; {"outputs": {...}} for columnar requests.
GET /v1/models/<name> answers the model status.
Malformed requests never drop the connection: bad JSON, a wrong type or shape, an unknown
signature or bad base64 are HTTP 400 {"error": ...}; an unknown path 404; a body longer than
max_body_bytes 413 (without reading it); a body shorter than its Content-Length 400 once the socket
read times out (read_timeout seconds); a missing or invalid Content-Length 411 / 400. Error texts
are valid UTF-8 (undecodable bytes replaced).

serve_grpc() is the gRPC counterpart (TF Serving's port 8500): PredictionService.Predict on the
same reloaded SavedModel, tensorflow errors mapped to their gRPC status codes (InvalidArgument ->
INVALID_ARGUMENT), an unknown model NOT_FOUND.
"""

import base64
import concurrent.futures
import contextlib
import http.server
import json
import re
import socket
import threading

import numpy as np
import tensorflow as tf

_PREDICT = re.compile(r"^/v1/models/(?P<name>[^/:]+)(/versions/(?P<version>\d+))?:predict$")
_STATUS = re.compile(r"^/v1/models/(?P<name>[^/:]+)/?$")


class RequestError(ValueError):
    """A request TF Serving would answer with HTTP 400."""


def _to_array(values, spec, input_name):
    if spec.dtype == tf.string:
        def convert(value):
            if isinstance(value, dict) and set(value) == {"b64"} and isinstance(value["b64"], str):
                try:
                    return base64.b64decode(value["b64"], validate=True)
                except ValueError:
                    raise RequestError(
                        f"Invalid argument: Unable to base64 decode the value of '{input_name}'"
                    ) from None
            if isinstance(value, str):
                return value.encode("utf-8")
            if isinstance(value, list):
                return [convert(v) for v in value]
            raise RequestError(
                f"Invalid argument: JSON Value: {json.dumps(value)[:80]} not formatted correctly for "
                f"base64 data or a string, the type of '{input_name}' (DT_STRING)"
            )

        if not isinstance(values, list):
            raise RequestError(f"Invalid argument: '{input_name}' has shape [], the signature {spec.shape}")
        array = np.empty(len(values), dtype=object)
        for index, value in enumerate(values):
            array[index] = convert(value)
            if not isinstance(array[index], bytes):
                raise RequestError(f"Invalid argument: '{input_name}' has shape [{len(values)}, ...], "
                                   f"the signature {spec.shape}")
        return array

    def check(value):
        if isinstance(value, list):
            for v in value:
                check(v)
        elif isinstance(value, (dict, str)) or value is None:
            raise RequestError(
                f"Invalid argument: JSON Value: {json.dumps(value)[:80]} is not of the type of '{input_name}' "
                f"({spec.dtype.name})"
            )

    try:
        check(values)
        array = np.array(values, dtype=spec.dtype.as_numpy_dtype)
    except (ValueError, OverflowError, TypeError, RecursionError) as error:
        raise RequestError(f"Invalid argument: '{input_name}': {error}") from None
    if not spec.shape.is_compatible_with(array.shape):
        raise RequestError(f"Invalid argument: '{input_name}' has shape {list(array.shape)}, "
                           f"the signature {spec.shape}")
    return array


def _row_inputs(instances, specs):
    if not isinstance(instances, list) or not instances:
        raise RequestError("Invalid argument: 'instances' must be a non-empty list")
    names = list(specs)
    columns = {name: [] for name in names}
    for index, instance in enumerate(instances):
        named = isinstance(instance, dict) and set(instance) == set(names) and instance.keys() != {"b64"}
        if not named and len(names) == 1:
            instance = {names[0]: instance}
        elif not named:
            raise RequestError(f"Failed to process element: {index} of 'instances' list. Error: Invalid argument: "
                               f"expected an object with the inputs {names}")
        for name in names:
            columns[name].append(instance[name])
    return columns


def _json_value(name, array):
    if array.dtype == object:
        if name.endswith("_bytes"):
            return np.vectorize(lambda b: {"b64": base64.b64encode(b).decode("ascii")}, otypes=[object])(array).tolist()
        return np.vectorize(lambda b: b.decode("utf-8", "replace"), otypes=[object])(array).tolist()
    return array.tolist()


def call(function, tensors, lock):
    """{name: numpy array} of function(**tensors); RequestError with the error's message."""
    with lock:
        try:
            return {k: v.numpy() for k, v in function(**tensors).items()}
        except tf.errors.OpError as error:
            raise RequestError(f"{type(error).__name__}: {error.message}") from None
        except (TypeError, ValueError) as error:
            raise RequestError(f"Invalid argument: {error}") from None


class _Model:
    def __init__(self, version_dir, name, version, loaded=None):
        self.name, self.version = name, version
        self.loaded = tf.saved_model.load(version_dir) if loaded is None else loaded
        self.lock = threading.Lock()

    def predict(self, body):
        if not isinstance(body, dict) or ("instances" in body) == ("inputs" in body):
            raise RequestError("Invalid argument: the body must have exactly one of 'instances' or 'inputs'")
        signature_name = body.get("signature_name", "serving_default")
        if not isinstance(signature_name, str) or signature_name not in self.loaded.signatures:
            raise RequestError(f"Invalid argument: Serving signature name: \"{str(signature_name)[:80]}\" "
                               "not found in signature def")
        function = self.loaded.signatures[signature_name]
        specs = function.structured_input_signature[1]
        if "instances" in body:
            columns = _row_inputs(body["instances"], specs)
        else:
            inputs = body["inputs"]
            columns = inputs if isinstance(inputs, dict) and "b64" not in inputs else {next(iter(specs)): inputs}
            if set(columns) != set(specs):
                raise RequestError(f"Invalid argument: 'inputs' must name {sorted(specs)}")
        tensors = {}
        for name, spec in specs.items():
            array = _to_array(columns[name], spec, name)
            tensors[name] = tf.constant(list(array) if spec.dtype == tf.string else array, spec.dtype,
                                        shape=array.shape)
        return self.answer(body, call(function, tensors, self.lock))

    def answer(self, body, outputs):
        if "inputs" in body:
            return {"outputs": {k: _json_value(k, v) for k, v in outputs.items()}}
        batch = {len(v) for v in outputs.values()}
        if len(batch) != 1:
            raise RequestError("Invalid argument: outputs of different batch sizes cannot be returned in row format")
        rows = [{k: _json_value(k, v[i]) if v.ndim else v[i].item() for k, v in outputs.items()}
                for i in range(batch.pop())]
        if len(outputs) == 1:
            rows = [next(iter(row.values())) for row in rows]
        return {"predictions": rows}


def _handler(model, max_body_bytes, read_timeout):
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as TF Serving
        timeout = read_timeout  # socket reads: a short body is an error, not a hang

        def log_message(self, *args):
            pass

        def _answer(self, status, payload, close=False):
            data = json.dumps(payload).encode("utf-8")
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            if close:
                self.send_header("Connection", "close")
                self.close_connection = True
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):
            match = _STATUS.match(self.path)
            if not match or match["name"] != model.name:
                return self._answer(404, {"error": f"Servable not found for request: {self.path}"})
            self._answer(200, {"model_version_status": [
                {"version": str(model.version), "state": "AVAILABLE",
                 "status": {"error_code": "OK", "error_message": ""}}
            ]})

        def _body(self):
            """The request body, or None after answering the error."""
            length = self.headers.get("Content-Length")
            if length is None:
                self._answer(411, {"error": "a Content-Length header is required"}, close=True)
                return None
            if not length.strip().isdigit():
                self._answer(400, {"error": f"invalid Content-Length: {length[:40]!r}"}, close=True)
                return None
            if int(length) > max_body_bytes:
                self._answer(413, {"error": f"the body is {int(length)} bytes, more than the limit of "
                                            f"{max_body_bytes}"}, close=True)
                return None
            try:
                data = self.rfile.read(int(length))
            except (TimeoutError, socket.timeout, OSError):
                data = b""
            if len(data) < int(length):
                self._answer(400, {"error": f"the body ended after {len(data)} of its {int(length)} bytes "
                                            f"(Content-Length)"}, close=True)
                return None
            return data

        def do_POST(self):
            match = _PREDICT.match(self.path)
            data = self._body()
            if data is None:
                return
            if (not match or match["name"] != model.name
                    or (match["version"] and int(match["version"]) != model.version)):
                return self._answer(404, {"error": f"Servable not found for request: {self.path[:200]}"})
            try:
                body = json.loads(data.decode("utf-8", "replace") or "null")
            except ValueError as error:
                return self._answer(400, {"error": f"JSON Parse error: {error}"})
            try:
                self._answer(200, model.predict(body))
            except RequestError as error:
                self._answer(400, {"error": str(error)})
            except Exception as error:  # never drop the connection: a bug is a 500 with its message
                self._answer(500, {"error": f"Internal: {type(error).__name__}: {error}"})

    return Handler


@contextlib.contextmanager
def serve(version_dir, name="polarmask", version=1, max_body_bytes=64 * 2**20, read_timeout=10.0, loaded=None):
    """Serves the SavedModel in `version_dir` on 127.0.0.1 at a free port; yields the model URL
    http://127.0.0.1:PORT/v1/models/NAME and stops the server on exit. loaded: an already
    tf.saved_model.load-ed version to serve instead of loading it again."""
    model = _Model(version_dir, name, version, loaded)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _handler(model, max_body_bytes, read_timeout))
    server.daemon_threads = True
    server.timeout = 30
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1/models/{name}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


_GRPC_CODES = {}


def _grpc_code(error):
    """The grpc.StatusCode of a tf.errors.OpError (both use the canonical codes)."""
    import grpc

    if not _GRPC_CODES:
        _GRPC_CODES.update({code.value[0]: code for code in grpc.StatusCode})
    return _GRPC_CODES.get(error.error_code, grpc.StatusCode.UNKNOWN)


def _grpc_servicer(model):
    import grpc
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    class Servicer(prediction_service_pb2_grpc.PredictionServiceServicer):
        def Predict(self, request, context):  # noqa: N802 (the gRPC method name)
            spec = request.model_spec
            if spec.name != model.name or (spec.HasField("version") and spec.version.value != model.version):
                context.abort(grpc.StatusCode.NOT_FOUND,
                              f"Servable not found for request: Specific({spec.name[:80]}, {spec.version.value})")
            signature_name = spec.signature_name or "serving_default"
            if signature_name not in model.loaded.signatures:
                context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                              f"Serving signature name: \"{signature_name[:80]}\" not found in signature def")
            function = model.loaded.signatures[signature_name]
            specs = function.structured_input_signature[1]
            if set(request.inputs) != set(specs):
                context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                              f"the request's inputs {sorted(request.inputs)[:8]} are not the signature's "
                              f"{sorted(specs)}")
            tensors = {}
            for name, input_spec in specs.items():
                proto = request.inputs[name]
                try:
                    array = tf.make_ndarray(proto)
                    tensor = tf.constant(array, input_spec.dtype)
                except (TypeError, ValueError) as error:
                    context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"input '{name}': {error}")
                if not input_spec.shape.is_compatible_with(tensor.shape):
                    context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                  f"input '{name}' has shape {tensor.shape}, the signature {input_spec.shape}")
                tensors[name] = tensor
            with model.lock:
                try:
                    outputs = function(**tensors)
                except tf.errors.OpError as error:
                    context.abort(_grpc_code(error), error.message)
                except (TypeError, ValueError) as error:
                    context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(error))
            wanted = set(request.output_filter) or set(outputs)
            response = predict_pb2.PredictResponse()
            response.model_spec.CopyFrom(spec)
            response.model_spec.signature_name = signature_name
            response.model_spec.version.value = model.version
            for key in sorted(wanted & set(outputs)):
                response.outputs[key].CopyFrom(tf.make_tensor_proto(outputs[key].numpy()))
            return response

    return Servicer()


@contextlib.contextmanager
def serve_grpc(version_dir, name="polarmask", version=1, loaded=None, workers=8):
    """Serves the SavedModel in `version_dir` over gRPC (tensorflow.serving.PredictionService) on
    127.0.0.1 at a free port; yields "127.0.0.1:PORT" and stops the server on exit."""
    import grpc
    from tensorflow_serving.apis import prediction_service_pb2_grpc

    model = _Model(version_dir, name, version, loaded)
    options = [("grpc.max_send_message_length", 256 * 2**20), ("grpc.max_receive_message_length", 256 * 2**20)]
    server = grpc.server(concurrent.futures.ThreadPoolExecutor(max_workers=workers), options=options)
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(_grpc_servicer(model), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.stop(grace=None).wait(10)
