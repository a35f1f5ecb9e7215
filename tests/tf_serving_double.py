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
"""

import base64
import contextlib
import http.server
import json
import re
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

        return np.array([convert(v) for v in values], dtype=object)

    def check(value):
        if isinstance(value, list):
            for v in value:
                check(v)
        elif isinstance(value, (dict, str)) or value is None:
            raise RequestError(
                f"Invalid argument: JSON Value: {json.dumps(value)[:80]} is not of the type of '{input_name}' "
                f"({spec.dtype.name})"
            )

    check(values)
    try:
        array = np.array(values, dtype=spec.dtype.as_numpy_dtype)
    except (ValueError, OverflowError) as error:
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
        return np.vectorize(lambda b: b.decode("utf-8"), otypes=[object])(array).tolist()
    return array.tolist()


class _Model:
    def __init__(self, version_dir, name, version):
        self.name, self.version = name, version
        self.loaded = tf.saved_model.load(version_dir)
        self.lock = threading.Lock()

    def predict(self, body):
        if not isinstance(body, dict) or ("instances" in body) == ("inputs" in body):
            raise RequestError("Invalid argument: the body must have exactly one of 'instances' or 'inputs'")
        signature_name = body.get("signature_name", "serving_default")
        if signature_name not in self.loaded.signatures:
            raise RequestError(f"Invalid argument: Serving signature name: \"{signature_name}\" "
                               "not found in signature def")
        function = self.loaded.signatures[signature_name]
        specs = function.structured_input_signature[1]
        if "instances" in body:
            columns = _row_inputs(body["instances"], specs)
        else:
            inputs = body["inputs"]
            columns = inputs if isinstance(inputs, dict) else {next(iter(specs)): inputs}
            if set(columns) != set(specs):
                raise RequestError(f"Invalid argument: 'inputs' must name {sorted(specs)}")
        tensors = {name: tf.constant(_to_array(columns[name], spec, name), spec.dtype) for name, spec in specs.items()}
        with self.lock:
            try:
                outputs = {k: v.numpy() for k, v in function(**tensors).items()}
            except tf.errors.OpError as error:
                raise RequestError(f"{type(error).__name__}: {error.message}") from None
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


def _handler(model):
    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def _answer(self, status, payload):
            data = json.dumps(payload).encode("utf-8")
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
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

        def do_POST(self):
            match = _PREDICT.match(self.path)
            if (not match or match["name"] != model.name
                    or (match["version"] and int(match["version"]) != model.version)):
                return self._answer(404, {"error": f"Servable not found for request: {self.path}"})
            try:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"null")
                self._answer(200, model.predict(body))
            except json.JSONDecodeError as error:
                self._answer(400, {"error": f"JSON Parse error: {error}"})
            except RequestError as error:
                self._answer(400, {"error": str(error)})

    return Handler


@contextlib.contextmanager
def serve(version_dir, name="polarmask", version=1):
    """Serves the SavedModel in `version_dir` on 127.0.0.1 at a free port; yields the model URL
    http://127.0.0.1:PORT/v1/models/NAME and stops the server on exit."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _handler(_Model(version_dir, name, version)))
    server.timeout = 30
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1/models/{name}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
