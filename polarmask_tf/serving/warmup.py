"""TF Serving warm-up records: `assets.extra/tf_serving_warmup_requests`, a TFRecord file of
serialized `tensorflow.serving.PredictionLog` protos that the model server replays before it
reports a new version ready, so the first user request does not pay for graph warm-up.

The message classes are built here from a hand-written descriptor of the few fields needed
(field numbers as in tensorflow_serving/apis/{prediction_log,predict,model}.proto):

    PredictionLog { PredictLog predict_log = 6; }
    PredictLog    { PredictRequest request = 1; }
    PredictRequest{ ModelSpec model_spec = 1; map<string, tensorflow.TensorProto> inputs = 2; }
    ModelSpec     { string name = 1; string signature_name = 3; }

because the `tensorflow-serving-api` package that ships them depends on the full `tensorflow`
wheel, which conflicts with `tensorflow-cpu`. They live in a private descriptor pool, so they do not
clash with that package when it is installed. The wire format is what the server parses; the
records written here parse with tensorflow_serving.apis.prediction_log_pb2 (checked by hand with
tensorflow-serving-api 2.21.0).
"""

import cv2
import numpy as np
import tensorflow as tf
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from tensorflow.core.framework import tensor_pb2

from polarmask_tf import fileio

WARMUP_FILE = ("assets.extra", "tf_serving_warmup_requests")
"""Where TF Serving looks for warm-up records, relative to a version directory."""

_PACKAGE = "tensorflow.serving"


def _add_file_with_dependencies(pool, file_descriptor, added):
    if file_descriptor.name in added:
        return
    for dependency in file_descriptor.dependencies:
        _add_file_with_dependencies(pool, dependency, added)
    proto = descriptor_pb2.FileDescriptorProto()
    file_descriptor.CopyToProto(proto)
    pool.Add(proto)
    added.add(file_descriptor.name)


def _serving_messages():
    pool = descriptor_pool.DescriptorPool()
    _add_file_with_dependencies(pool, tensor_pb2.DESCRIPTOR, set())
    file = descriptor_pb2.FileDescriptorProto(
        name="polarmask_tf/serving/prediction_log_subset.proto",
        package=_PACKAGE,
        syntax="proto3",
        dependency=[tensor_pb2.DESCRIPTOR.name],
    )
    field = descriptor_pb2.FieldDescriptorProto
    optional, repeated = field.LABEL_OPTIONAL, field.LABEL_REPEATED

    def message(name, *fields, nested=()):
        proto = file.message_type.add(name=name) if not nested else nested[0].nested_type.add(name=name)
        for field_name, number, kind, type_name, label in fields:
            proto.field.add(name=field_name, number=number, type=kind, type_name=type_name or None, label=label)
        return proto

    message("ModelSpec", ("name", 1, field.TYPE_STRING, "", optional),
            ("signature_name", 3, field.TYPE_STRING, "", optional))
    request = message(
        "PredictRequest",
        ("model_spec", 1, field.TYPE_MESSAGE, f".{_PACKAGE}.ModelSpec", optional),
        ("inputs", 2, field.TYPE_MESSAGE, f".{_PACKAGE}.PredictRequest.InputsEntry", repeated),
    )
    entry = message(
        "InputsEntry",
        ("key", 1, field.TYPE_STRING, "", optional),
        ("value", 2, field.TYPE_MESSAGE, ".tensorflow.TensorProto", optional),
        nested=(request,),
    )
    entry.options.map_entry = True
    message("PredictLog", ("request", 1, field.TYPE_MESSAGE, f".{_PACKAGE}.PredictRequest", optional))
    message("PredictionLog", ("predict_log", 6, field.TYPE_MESSAGE, f".{_PACKAGE}.PredictLog", optional))
    pool.Add(file)
    return {
        name: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"{_PACKAGE}.{name}"))
        for name in ("ModelSpec", "PredictRequest", "PredictLog", "PredictionLog")
    }


_MESSAGES = _serving_messages()
PredictionLog = _MESSAGES["PredictionLog"]
"""The message class of one warm-up record (a subset of tensorflow.serving.PredictionLog)."""


def prediction_log(model_name, signature_name, inputs):
    """A PredictionLog holding one predict request; inputs: {name: numpy array or bytes list}."""
    log = PredictionLog()
    request = log.predict_log.request
    request.model_spec.name = model_name
    request.model_spec.signature_name = signature_name
    for name, value in inputs.items():
        # The private pool's TensorProto is another class than tensorflow's: copy by wire format.
        request.inputs[name].ParseFromString(tf.make_tensor_proto(value).SerializeToString())
    return log


def sample_images():
    """Two encoded images of different sizes for warm-up: (JPEG bytes, PNG bytes) of synthetic
    scenes (polarmask_tf.data.synthetic), 240 x 320 and 300 x 200 px."""
    from polarmask_tf.data import synthetic

    encoded = []
    for index, (width, height, extension) in enumerate(((320, 240, ".jpg"), (200, 300, ".png"))):
        image, _ = synthetic.draw_image(np.random.default_rng((7, index)), width, height)
        ok, data = cv2.imencode(extension, image[..., ::-1])
        if not ok:
            raise RuntimeError(f"OpenCV could not encode a {extension} warm-up image")
        encoded.append(data.tobytes())
    return encoded


def write_warmup_requests(path, model_name, signature_name="serving_default", input_name="image_bytes"):
    """Writes warm-up records to `path` (local or URI; tf.io.TFRecordWriter, so export writes them
    straight into its staging directory): a request with one image and one with two images of
    different sizes (the two batch shapes a byte-input signature sees). Returns the record count."""
    jpeg, png = sample_images()
    logs = [
        prediction_log(model_name, signature_name, {input_name: np.array([jpeg], dtype=object)}),
        prediction_log(model_name, signature_name, {input_name: np.array([jpeg, png], dtype=object)}),
    ]
    path = str(path)
    fileio.makedirs(fileio.parent(path))
    with tf.io.TFRecordWriter(path) as writer:
        for log in logs:
            writer.write(log.SerializeToString())
    return len(logs)


def read_warmup_requests(path):
    """The PredictionLog records of a warm-up file (local or URI), parsed."""
    logs = []
    for record in tf.data.TFRecordDataset(path):
        log = PredictionLog()
        log.ParseFromString(record.numpy())
        logs.append(log)
    return logs
