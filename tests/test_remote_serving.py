"""The SavedModel export, its warm-up records, server configs, the export command and the client on
a URI filesystem: TensorFlow's in-memory ram://, which tf.io.gfile and SavedModels treat like
gs:// or s3:// (issue 14). The old code wrote these with open / os.makedirs / os.rename, so a
ram:// (or gs://) export dir became a local folder named "ram:" and nothing reached the URI."""

import io
import os
import uuid

import cv2
import numpy as np
import pytest
import tensorflow as tf
from test_serving import MASK_SIZE, TINY, K, N  # the same tiny model

from polarmask_tf import config as cfg
from polarmask_tf import fileio
from polarmask_tf.cli import client as client_command
from polarmask_tf.cli import export as export_command
from polarmask_tf.data import coco, synthetic
from polarmask_tf.modeling.model import build_model
from polarmask_tf.serving import export, warmup

import tf_serving_double
from conftest import scheme_named_entries

pytestmark = pytest.mark.slow  # exports SavedModels; -m "not slow" skips

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VERSION_FILES = ["assets.extra/tf_serving_warmup_requests", "assets/categories.tsv", "fingerprint.pb",
                 "saved_model.pb", "variables/variables.data-00000-of-00001", "variables/variables.index"]


def _label_map(prefix="shape"):
    return coco.LabelMap(tuple(coco.Category(k, 10 * k, f"{prefix} {k}") for k in range(1, 8)))


def _jpeg(seed=0, width=150, height=110):
    image, _ = synthetic.draw_image(np.random.default_rng((11, seed)), width, height)
    ok, data = cv2.imencode(".jpg", np.ascontiguousarray(image[..., ::-1]))
    assert ok
    return data.tobytes()


def _staging_left(base):
    return [name for name in tf.io.gfile.listdir(base) if name.startswith(export.STAGING_PREFIX)]


@pytest.fixture(scope="module")
def remote(tmp_path_factory):
    """The tiny model of test_serving.py exported (with masks) to a local tmp dir as version 1 and
    to ram://exports-<uuid>/polarmask as version 1, then by the polarmask-export command from a
    model dir on ram:// without --version (next_version: 2), with the working directory in a tmp
    dir. Returns a dict of what the tests need."""
    work = tmp_path_factory.mktemp("remote_serving")
    previous = os.getcwd()
    os.chdir(work)
    try:
        config = export.inference_config(cfg.load_config(os.path.join(ROOT, "configs", "quickstart.yaml"), TINY))
        model = build_model(config)
        root = f"ram://exports-{uuid.uuid4().hex}"
        base = root + "/polarmask"
        local = export.export(config, model, _label_map(), str(work / "local"), version=1, mask_size=MASK_SIZE)
        first = export.export(config, model, _label_map(), base, version=1, mask_size=MASK_SIZE)
        model_dir = root + "/run"
        cfg.dump_config(config, model_dir + "/config.yaml")
        coco.write_label_map(_label_map(), model_dir + "/labels.json")
        tf.train.Checkpoint(model=model).save(model_dir + "/checkpoints/ckpt")
        printed = io.StringIO()
        status = export_command.main(["--model-dir", model_dir, "--export-dir", base, "--mask-size", str(MASK_SIZE)],
                                     stream=printed)
        assert not scheme_named_entries(work, work / "local")
    finally:
        os.chdir(previous)
    return {"config": config, "model": model, "base": base, "local": local, "first": first,
            "second": base + "/2", "command": (status, printed.getvalue())}


def _outputs(version_dir, encoded):
    served = tf.saved_model.load(version_dir).signatures["serving_default"]
    return {key: value.numpy() for key, value in served(image_bytes=tf.constant(encoded)).items()}


def test_a_ram_export_serves_a_jpeg_like_the_same_export_on_local_disk(remote):
    assert remote["first"] == remote["base"] + "/1"
    encoded = [_jpeg(0), _jpeg(1, 90, 140)]
    outputs = _outputs(remote["first"], encoded)
    expected = _outputs(remote["local"], encoded)
    shapes = {"num_detections": ((2,), np.int32), "detection_boxes": ((2, K, 4), np.float32),
              "detection_scores": ((2, K), np.float32), "detection_classes": ((2, K), np.int32),
              "detection_class_names": ((2, K), object), "detection_polygons": ((2, K, N, 2), np.float32),
              "detection_masks": ((2, K, MASK_SIZE, MASK_SIZE), np.uint8)}
    assert {key: (value.shape, value.dtype) for key, value in outputs.items()} == shapes
    assert outputs["num_detections"].min() > 0  # prior_prob 0.2: the untrained model detects things
    for key, value in outputs.items():
        if value.dtype == object:
            np.testing.assert_array_equal(value, expected[key])
        else:
            np.testing.assert_allclose(value, expected[key], atol=1e-5, err_msg=key)
    named = outputs["detection_class_names"][0, : outputs["num_detections"][0]]
    assert all(name.startswith(b"shape ") for name in named)


def test_the_ram_version_has_tf_serving_layout_warmup_records_and_configs_and_no_staging(remote):
    base, first = remote["base"], remote["first"]
    names = {name.rstrip("/") for name in tf.io.gfile.listdir(base)}
    assert {"1", "2", "batching_parameters.txt", "models.config"} <= names  # 1, 2: the fixture's
    assert all(name.isdigit() for name in names - {"batching_parameters.txt", "models.config"}), names
    assert [name for name, _ in fileio.list_files(first)] == VERSION_FILES
    assert tf.io.gfile.isdir(first + "/variables")
    categories = fileio.read_text(first + "/assets/" + export.CATEGORIES_ASSET)
    assert categories.splitlines()[:2] == ["10\tshape 1", "20\tshape 2"]
    logs = warmup.read_warmup_requests(first + "/" + "/".join(warmup.WARMUP_FILE))
    assert [len(log.predict_log.request.inputs["image_bytes"].string_val) for log in logs] == [1, 2]
    assert 'base_path: "/models/polarmask"' in fileio.read_text(base + "/models.config")
    assert "max_batch_size { value: 8 }" in fileio.read_text(base + "/batching_parameters.txt")
    assert not _staging_left(base)
    # size_on_disk on a URI; the weights, assets and warm-up records have the local export's sizes
    # exactly, saved_model.pb and fingerprint.pb (hashes as varints) may differ by a few bytes
    remote_files, local_files = dict(fileio.list_files(first)), dict(fileio.list_files(remote["local"]))
    exact = [name for name in VERSION_FILES if not name.endswith(".pb")]
    assert [remote_files[name] for name in exact] == [local_files[name] for name in exact]
    remote_size, local_size = export.size_on_disk(first), export.size_on_disk(remote["local"])
    assert remote_size == sum(remote_files.values()) > 1_000_000
    assert abs(remote_size - local_size) <= 0.01 * local_size


def test_the_export_command_reads_a_ram_model_dir_and_writes_the_next_ram_version(remote):
    """polarmask-export --model-dir ram://.../run --export-dir ram://.../polarmask (no --version):
    config.yaml, labels.json and the checkpoint are read from ram://, next_version listed the
    export dir (version 1 there: 2), and the version and configs are written there."""
    status, text = remote["command"]
    assert status == 0, text
    second = remote["second"]
    assert f"exported {second} in" in text and "MiB" in text and "categories: shape 1, shape 2" in text
    assert f"{remote['base']}/models.config" in text
    assert [name for name, _ in fileio.list_files(second)] == VERSION_FILES
    assert export.next_version(remote["base"]) == 3
    assert export.next_version(remote["base"] + "-nothing-here") == 1
    encoded = [_jpeg(3)]
    outputs, expected = _outputs(second, encoded), _outputs(remote["local"], encoded)
    for key in ("detection_scores", "detection_polygons", "detection_masks"):
        np.testing.assert_allclose(outputs[key], expected[key], atol=1e-5, err_msg=key)
    np.testing.assert_array_equal(outputs["detection_class_names"], expected["detection_class_names"])


def test_an_existing_ram_version_needs_overwrite_and_is_then_replaced(remote, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    base, config, model = remote["base"], remote["config"], remote["model"]
    second = remote["second"]
    with pytest.raises(FileExistsError, match=f"{second} exists"):
        export.export(config, model, _label_map(), base, version=2, mask_size=MASK_SIZE)
    fileio.write_text(second + "/left-over.txt", "from the old version")
    replaced = export.export(config, model, _label_map("renamed"), base, version=2, mask_size=MASK_SIZE,
                             overwrite=True)
    assert replaced == second
    assert [name for name, _ in fileio.list_files(second)] == VERSION_FILES  # the old file is gone
    assert fileio.read_text(second + "/assets/categories.tsv").splitlines()[0] == "10\trenamed 1"
    outputs = _outputs(second, [_jpeg(2)])
    assert outputs["detection_class_names"][0, 0].startswith(b"renamed ")
    assert not _staging_left(base)
    assert not scheme_named_entries(tmp_path)


@pytest.mark.parametrize("where", ["after_the_variables", "at_saved_model_pb"])
def test_an_interrupted_ram_export_publishes_no_loadable_half_version(remote, where, tmp_path, monkeypatch):
    """Interrupted while copying into ram://.../3 (KeyboardInterrupt after the variables were
    copied, or an OSError writing saved_model.pb): ram://.../3 does not exist or has no
    saved_model.pb, the staging prefix is gone, versions 1 and 2 are untouched."""
    monkeypatch.chdir(tmp_path)
    base = remote["base"]
    final = base + "/3"
    copied = []
    if where == "after_the_variables":
        real_copy = tf.io.gfile.copy

        def copy(source, target, overwrite=False):
            if str(target).startswith(final + "/"):
                if copied and not str(target).startswith(final + "/variables/"):
                    raise KeyboardInterrupt
                copied.append(target)
            return real_copy(source, target, overwrite)

        monkeypatch.setattr(tf.io.gfile, "copy", copy)
        raised = KeyboardInterrupt
    else:
        real_copy = fileio.copy

        def copy(source, target):
            if str(target) == final + "/saved_model.pb":
                copied.append(target)
                raise OSError(f"cannot write {target}: quota exceeded")
            return real_copy(source, target)

        monkeypatch.setattr(fileio, "copy", copy)
        raised = OSError
    with pytest.raises(raised):
        export.export(remote["config"], remote["model"], _label_map(), base, version=3, mask_size=MASK_SIZE)
    assert copied  # the export got as far as the copy
    if where == "after_the_variables":
        assert all("/variables/" in target for target in copied)
    assert not tf.io.gfile.exists(final) or not tf.io.gfile.exists(final + "/saved_model.pb")
    assert not fileio.list_files(final)  # what was copied was deleted again
    assert not _staging_left(base)
    for version in (remote["first"], remote["second"]):
        assert fileio.is_file(version + "/saved_model.pb")
    assert not scheme_named_entries(tmp_path)


def test_the_client_reads_images_and_writes_overlays_and_json_on_ram(remote, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    root = f"ram://client-{uuid.uuid4().hex}"
    image = root + "/in/scene.jpg"
    fileio.write_bytes(image, _jpeg(4))
    with tf_serving_double.serve(remote["local"]) as url:  # the server's storage is not what is tested
        status = client_command.main(["--url", url, "--image", image, "--score-threshold", "0.0",
                                      "--output-dir", root + "/overlays", "--json", root + "/out/det.json"])
        assert status == 0, capsys.readouterr().err
        assert client_command.main(["--url", url, "--image", root + "/in/missing.jpg"]) == 1
    assert f"{root}/in/missing.jpg" in capsys.readouterr().err
    overlay = cv2.imdecode(np.frombuffer(fileio.read_bytes(root + "/overlays/scene.png"), np.uint8), cv2.IMREAD_COLOR)
    assert overlay.shape == (110, 150, 3)
    detections = fileio.read_json(root + "/out/det.json")
    expected = _outputs(remote["local"], [_jpeg(4)])
    assert detections[0]["image"] == image
    n = expected["num_detections"][0]
    np.testing.assert_allclose(detections[0]["scores"], expected["detection_scores"][0, :n], atol=1e-5)
    assert not scheme_named_entries(tmp_path)
