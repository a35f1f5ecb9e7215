"""The warm-up records of an export, parsed with the real TF Serving protos of the
`tensorflow-serving-api` package, and polarmask_tf.serving.warmup's hand-made descriptor checked
against them (field numbers, wire bytes, round trips).

The package cannot be installed with its dependencies beside tensorflow-cpu (it pins the full
`tensorflow` wheel), so it is optional: the file skips without it. To run it:

    pip install --no-deps tensorflow-serving-api==2.21.0
"""

import os

import numpy as np
import pytest
import tensorflow as tf

INSTALL = "pip install --no-deps tensorflow-serving-api==2.21.0"
prediction_log_pb2 = pytest.importorskip(
    "tensorflow_serving.apis.prediction_log_pb2",
    reason=f"checking the warm-up records against the real TF Serving protos needs tensorflow-serving-api "
           f"(its metadata pins the full tensorflow wheel, so install it without dependencies): "
           f"install with: {INSTALL}",
)
from tensorflow.core.framework import tensor_pb2, types_pb2  # noqa: E402
from tensorflow.core.protobuf import saved_model_pb2  # noqa: E402
from tensorflow_serving.apis import predict_pb2  # noqa: E402  (after the skip)

from polarmask_tf import config as cfg  # noqa: E402
from polarmask_tf.data import coco, synthetic  # noqa: E402
from polarmask_tf.modeling.model import build_model  # noqa: E402
from polarmask_tf.serving import export, warmup  # noqa: E402

pytestmark = pytest.mark.slow  # end-to-end: exports, conversions, subprocesses; -m "not slow" skips

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["data.image_size=[128, 128]", "postprocess.max_detections=4", "model.fpn_channels=8",
        "model.head_channels=8", "model.head_convs=1", "model.group_norm_groups=2"]
MODEL_NAME = "polarmask"  # export.export's default model_name
SIGNATURE = "serving_default"
INPUT = "image_bytes"


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """The version directory of one export of an untrained tiny model (the only export here)."""
    root = tmp_path_factory.mktemp("serving_protos")
    config = export.inference_config(cfg.load_config(os.path.join(ROOT, "configs", "quickstart.yaml"), TINY))
    label_map = coco.LabelMap(tuple(coco.Category(k, k, f"shape {k}") for k in range(1, 8)))
    return export.export(config, build_model(config), label_map, str(root / "export"), version=1)


@pytest.fixture(scope="module")
def records(exported):
    """The raw records of the export's assets.extra/tf_serving_warmup_requests."""
    path = os.path.join(exported, *warmup.WARMUP_FILE)
    assert os.path.isfile(path)
    return [record.numpy() for record in tf.data.TFRecordDataset(path)]


@pytest.fixture(scope="module")
def real_logs(records):
    """The records parsed with the real tensorflow.serving.PredictionLog."""
    logs = []
    for record in records:
        log = prediction_log_pb2.PredictionLog()
        log.ParseFromString(record)
        logs.append(log)
    return logs


@pytest.fixture(scope="module")
def samples():
    """warmup.sample_images(): (JPEG bytes, PNG bytes), deterministic."""
    return warmup.sample_images()


def _set_fields(message):
    return [field.name for field, _ in message.ListFields()]


def _message_types(descriptor, seen=None):
    """descriptor and every message type reachable from its fields, by full name."""
    seen = {} if seen is None else seen
    if descriptor.full_name not in seen:
        seen[descriptor.full_name] = descriptor
        for field in descriptor.fields:
            if field.message_type is not None:
                _message_types(field.message_type, seen)
    return seen


def _full_name(type_descriptor):
    return type_descriptor.full_name if type_descriptor is not None else None


def test_every_field_of_the_hand_made_descriptor_is_the_real_field():
    """Name, number, wire type, repetition, message/enum type and map-entry option of every field
    reachable from warmup.PredictionLog (tensorflow.TensorProto and what it uses included) equal
    those of the message of the same name in the real protos."""
    real_pool = prediction_log_pb2.DESCRIPTOR.pool
    ours = _message_types(warmup.PredictionLog.DESCRIPTOR)
    assert {"tensorflow.serving.PredictionLog", "tensorflow.serving.PredictLog", "tensorflow.serving.PredictRequest",
            "tensorflow.serving.PredictRequest.InputsEntry", "tensorflow.serving.ModelSpec",
            "tensorflow.TensorProto"} <= set(ours)
    for name, descriptor in ours.items():
        real = real_pool.FindMessageTypeByName(name)
        assert descriptor.GetOptions().map_entry == real.GetOptions().map_entry, name
        for field in descriptor.fields:
            assert field.name in real.fields_by_name, f"{name}.{field.name} is not in the real proto"
            twin = real.fields_by_name[field.name]
            assert (field.number, field.type, field.is_repeated, _full_name(field.message_type),
                    _full_name(field.enum_type)) == (twin.number, twin.type, twin.is_repeated,
                                                    _full_name(twin.message_type), _full_name(twin.enum_type)), \
                f"{name}.{field.name}"
    # The subset: exactly these fields of the serving messages (the rest are unknown to it, see below).
    assert [f.name for f in ours["tensorflow.serving.PredictionLog"].fields] == ["predict_log"]
    assert [f.name for f in ours["tensorflow.serving.PredictLog"].fields] == ["request"]
    assert [f.name for f in ours["tensorflow.serving.PredictRequest"].fields] == ["model_spec", "inputs"]
    assert [f.name for f in ours["tensorflow.serving.ModelSpec"].fields] == ["name", "signature_name"]


def test_the_export_writes_two_predict_logs_the_real_protos_parse_exactly(records, real_logs, samples):
    jpeg, png = samples
    assert len(records) == 2
    for record, log, expected in zip(records, real_logs, ([jpeg], [jpeg, png]), strict=True):
        assert log.WhichOneof("log_type") == "predict_log"
        assert _set_fields(log) == ["predict_log"]  # no log_metadata
        assert _set_fields(log.predict_log) == ["request"]  # no response
        request = log.predict_log.request
        assert isinstance(request, predict_pb2.PredictRequest)
        assert _set_fields(request) == ["model_spec", "inputs"]  # no output_filter, options or client id
        assert request.model_spec.name == MODEL_NAME
        assert request.model_spec.signature_name == SIGNATURE
        assert request.model_spec.WhichOneof("version_choice") is None  # the server's latest version
        assert list(request.inputs) == [INPUT]
        tensor = request.inputs[INPUT]
        assert tensor.dtype == types_pb2.DT_STRING
        assert not tensor.tensor_shape.unknown_rank
        assert [dim.size for dim in tensor.tensor_shape.dim] == [len(expected)]
        assert [dim.name for dim in tensor.tensor_shape.dim] == [""]
        assert tensor.tensor_content == b"" and tensor.version_number == 0
        assert list(tensor.string_val) == expected
        assert _set_fields(tensor) == ["dtype", "tensor_shape", "string_val"]
        np.testing.assert_array_equal(tf.make_ndarray(tensor), np.array(expected, dtype=object))
        # Nothing in the record is unknown to the real protos, nothing is lost re-serialising it.
        assert log.SerializeToString(deterministic=True) == record


def test_the_warmup_image_bytes_are_the_sample_jpeg_and_png(real_logs, samples):
    jpeg, png = samples
    assert jpeg[:3] == b"\xff\xd8\xff" and png[:8] == b"\x89PNG\r\n\x1a\n"
    values = list(real_logs[1].predict_log.request.inputs[INPUT].string_val)
    shapes = [tuple(tf.io.decode_image(value, channels=3, expand_animations=False).shape) for value in values]
    assert shapes == [(240, 320, 3), (300, 200, 3)]
    lossless = tf.io.decode_png(values[1]).numpy()
    scene, _ = synthetic.draw_image(np.random.default_rng((7, 1)), 200, 300)
    np.testing.assert_array_equal(lossless, scene)


def test_the_warmup_inputs_fit_the_exported_signature(exported, real_logs):
    """Keys, dtype and shape of the records' inputs against the SavedModel's SignatureDef."""
    saved_model = saved_model_pb2.SavedModel()
    with open(os.path.join(exported, "saved_model.pb"), "rb") as stream:
        saved_model.ParseFromString(stream.read())
    (meta_graph,) = saved_model.meta_graphs
    signature = meta_graph.signature_def[SIGNATURE]
    for log in real_logs:
        inputs = log.predict_log.request.inputs
        assert set(inputs) == set(signature.inputs) == {INPUT}
        info = signature.inputs[INPUT]
        assert inputs[INPUT].dtype == info.dtype == types_pb2.DT_STRING
        assert [dim.size for dim in info.tensor_shape.dim] == [-1]
        assert len(inputs[INPUT].tensor_shape.dim) == len(info.tensor_shape.dim)


def _real_log(signature_name, inputs):
    log = prediction_log_pb2.PredictionLog()
    request = log.predict_log.request
    request.model_spec.name = MODEL_NAME
    request.model_spec.signature_name = signature_name
    for name, value in inputs.items():
        request.inputs[name].CopyFrom(tf.make_tensor_proto(value))
    return log


@pytest.mark.parametrize("signature_name, input_name", [("serving_default", "image_bytes"),
                                                        ("serve_images", "images")])
def test_the_hand_made_descriptor_writes_and_reads_the_real_bytes(samples, signature_name, input_name):
    """For the same content, warmup.prediction_log serialises to the bytes of the real protos, and
    the real protos' bytes parse with warmup.PredictionLog to the same message and values: an
    image_bytes string batch and a uint8 [2, 80, 64, 3] image batch (tensor_content)."""
    if input_name == "image_bytes":
        value = np.array(samples, dtype=object)
    else:
        value = np.stack([synthetic.draw_image(np.random.default_rng((5, i)), 64, 80)[0] for i in range(2)])
        assert value.dtype == np.uint8 and value.shape == (2, 80, 64, 3)
    real = _real_log(signature_name, {input_name: value})
    ours = warmup.prediction_log(MODEL_NAME, signature_name, {input_name: value})
    real_bytes = real.SerializeToString(deterministic=True)
    assert ours.SerializeToString(deterministic=True) == real_bytes
    assert ours.SerializeToString() == real.SerializeToString()

    parsed = warmup.PredictionLog.FromString(real_bytes)
    assert parsed == ours
    request = parsed.predict_log.request
    assert (request.model_spec.name, request.model_spec.signature_name) == (MODEL_NAME, signature_name)
    assert list(request.inputs) == [input_name]
    tensor = tensor_pb2.TensorProto.FromString(request.inputs[input_name].SerializeToString())
    assert tensor == real.predict_log.request.inputs[input_name]
    expected_dtype = types_pb2.DT_STRING if input_name == "image_bytes" else types_pb2.DT_UINT8
    assert tensor.dtype == expected_dtype
    assert [dim.size for dim in tensor.tensor_shape.dim] == list(value.shape)
    decoded = tf.make_ndarray(tensor)
    assert decoded.dtype == value.dtype
    np.testing.assert_array_equal(decoded, value)
    if input_name == "images":
        assert tensor.tensor_content == value.tobytes()


def test_fields_outside_the_subset_survive_a_pass_through_the_hand_made_descriptor(samples):
    """A full PredictionLog (metadata, model version, output filter, response) parses with
    warmup.PredictionLog, its known fields read right, and re-serialised it parses with the real
    protos to the original message (the unknown fields are kept)."""
    real = _real_log(SIGNATURE, {INPUT: np.array(samples[:1], dtype=object)})
    real.log_metadata.model_spec.name = MODEL_NAME
    real.log_metadata.model_spec.version.value = 3
    real.log_metadata.sampling_config.sampling_rate = 0.5
    request = real.predict_log.request
    request.model_spec.version.value = 3
    request.output_filter.extend(["num_detections", "detection_boxes"])
    response = real.predict_log.response
    response.model_spec.name = MODEL_NAME
    response.outputs["num_detections"].CopyFrom(tf.make_tensor_proto(np.array([2], np.int32)))

    ours = warmup.PredictionLog.FromString(real.SerializeToString())
    assert ours.predict_log.request.model_spec.name == MODEL_NAME
    assert ours.predict_log.request.model_spec.signature_name == SIGNATURE
    assert list(ours.predict_log.request.inputs[INPUT].string_val) == samples[:1]
    back = prediction_log_pb2.PredictionLog.FromString(ours.SerializeToString())
    assert back == real
    assert back.predict_log.request.model_spec.version.value == 3
    assert list(back.predict_log.request.output_filter) == ["num_detections", "detection_boxes"]
