"""The SavedModel export for TF Serving, its command line, warm-up records and the REST client
(against tests/tf_serving_double.py, a loopback stand-in for the model server)."""

import base64
import io
import json
import os
import socket
import stat
import struct
import subprocess
import sys
import textwrap
import zlib

import cv2
import numpy as np
import pytest
import tensorflow as tf

from polarmask_tf import config as cfg
from polarmask_tf import geometry, inference
from polarmask_tf.cli import client as client_command
from polarmask_tf.data import coco, synthetic
from polarmask_tf.modeling.model import build_model
from polarmask_tf.serving import client, export, warmup

import tf_serving_double

pytestmark = pytest.mark.slow  # end-to-end: exports, conversions, subprocesses; -m "not slow" skips

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["data.image_size=[128, 128]", "model.prior_prob=0.2", "postprocess.max_detections=12",
        "model.fpn_channels=16", "model.head_channels=16", "model.head_convs=1", "model.group_norm_groups=4"]
MASK_SIZE = 8
K = 12
N = 36


def _encode(image, extension):
    ok, data = cv2.imencode(extension, np.ascontiguousarray(image[..., ::-1]))
    assert ok
    return data.tobytes()


@pytest.fixture(scope="module")
def images():
    """Three synthetic scenes of different sizes, RGB uint8, and their PNG and JPEG bytes."""
    scenes = [synthetic.draw_image(np.random.default_rng((3, i)), w, h)[0]
              for i, (w, h) in enumerate(((160, 120), (90, 200), (128, 128)))]
    return scenes, [_encode(s, ".png") for s in scenes], [_encode(s, ".jpg") for s in scenes]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """An untrained tiny model (prior_prob 0.2, so it detects things) saved as a model dir and
    exported with masks; returns (model dir, config, in-memory model, version dir)."""
    root = tmp_path_factory.mktemp("serving")
    config = export.inference_config(cfg.load_config(os.path.join(ROOT, "configs", "quickstart.yaml"), TINY))
    model = build_model(config)
    model_dir = root / "run"
    model_dir.mkdir()
    cfg.dump_config(config, str(model_dir / "config.yaml"))
    tf.train.Checkpoint(model=model).save(str(model_dir / "checkpoints" / "ckpt"))
    label_map = coco.LabelMap(tuple(coco.Category(k, 10 * k, f"shape {k}") for k in range(1, 8)))
    version = export.export(config, model, label_map, str(root / "export"), version=3, mask_size=MASK_SIZE)
    return model_dir, config, model, version


@pytest.fixture(scope="module")
def loaded(exported):
    return tf.saved_model.load(exported[3])


def _in_memory(config, model, images_rgb):
    """Predictor outputs for RGB images, as the reference for the export."""
    return inference.Predictor(config, model).predict(images_rgb)


def _decoded(encoded):
    return [tf.io.decode_image(data, channels=3, expand_animations=False).numpy() for data in encoded]


def _run(args, timeout=180, env_extra=None):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", **(env_extra or {}))
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT)


def _assert_matches(outputs, expected, index):
    n = int(outputs["num_detections"][index])
    assert n == len(expected["scores"])
    np.testing.assert_allclose(outputs["detection_scores"][index, :n], expected["scores"], atol=1e-4)
    np.testing.assert_allclose(outputs["detection_boxes"][index, :n], expected["boxes"], atol=1e-4)
    np.testing.assert_allclose(outputs["detection_polygons"][index, :n], expected["polygons"], atol=1e-4)
    np.testing.assert_array_equal(outputs["detection_classes"][index, :n], 10 * expected["classes"])


def test_version_directory_has_tf_serving_layout(exported):
    version = exported[3]
    assert os.path.basename(version) == "3"
    base = os.path.dirname(version)
    assert sorted(os.listdir(base)) == ["3", "batching_parameters.txt", "models.config"]
    assert {"saved_model.pb", "variables", "assets", "assets.extra"} <= set(os.listdir(version))
    with open(os.path.join(version, "assets", export.CATEGORIES_ASSET)) as stream:
        assert stream.read().splitlines()[:2] == ["10\tshape 1", "20\tshape 2"]
    models = open(os.path.join(base, "models.config")).read()
    assert 'name: "polarmask"' in models and 'base_path: "/models/polarmask"' in models
    batching = open(os.path.join(base, "batching_parameters.txt")).read()
    assert "max_batch_size { value: 8 }" in batching and "allowed_batch_sizes: 8" in batching
    assert export.next_version(base) == 4


def test_saved_model_cli_show_lists_both_signatures_with_their_shapes(exported):
    shown = _run([sys.executable, "-m", "tensorflow.python.tools.saved_model_cli", "show",
                  "--dir", exported[3], "--all"])
    assert shown.returncode == 0, shown.stderr
    text = shown.stdout
    blocks = {name: text.split(f"signature_def['{name}']:")[1].split("signature_def[")[0]
              for name in ("serving_default", "serve_images")}
    assert "name: serving_default_image_bytes:0" in blocks["serving_default"]
    assert "dtype: DT_STRING" in blocks["serving_default"] and "shape: (-1)" in blocks["serving_default"]
    assert "dtype: DT_UINT8" in blocks["serve_images"] and "shape: (-1, -1, -1, 3)" in blocks["serve_images"]
    expected = {
        "num_detections": ("DT_INT32", "(-1)"),
        "detection_boxes": ("DT_FLOAT", f"(-1, {K}, 4)"),
        "detection_scores": ("DT_FLOAT", f"(-1, {K})"),
        "detection_classes": ("DT_INT32", f"(-1, {K})"),
        "detection_class_names": ("DT_STRING", f"(-1, {K})"),
        "detection_polygons": ("DT_FLOAT", f"(-1, {K}, {N}, 2)"),
        "detection_masks": ("DT_UINT8", f"(-1, {K}, {MASK_SIZE}, {MASK_SIZE})"),
    }
    for block in blocks.values():
        outputs = block.split("output(s):")[1].split("Method name")[0]
        for key, (dtype, shape) in expected.items():
            entry = outputs.split(f"outputs['{key}'] tensor_info:")[1].split("name:")[0]
            assert f"dtype: {dtype}" in entry and f"shape: {shape}" in entry, (key, entry)


def test_saved_model_cli_run_on_a_npy_input_matches_the_model_in_memory(exported, images, tmp_path):
    _, config, model, version = exported
    batch = np.stack([images[0][2], images[0][2][::-1]])  # two 128 x 128 scenes
    np.save(tmp_path / "images.npy", batch)
    ran = _run([sys.executable, "-m", "tensorflow.python.tools.saved_model_cli", "run", "--dir", version,
                "--tag_set", "serve", "--signature_def", "serve_images",
                "--inputs", f"images={tmp_path / 'images.npy'}", "--outdir", str(tmp_path / "out")])
    assert ran.returncode == 0, ran.stderr
    outputs = {p[:-4]: np.load(tmp_path / "out" / p, allow_pickle=True) for p in os.listdir(tmp_path / "out")}
    assert set(outputs) == set(export.OUTPUT_KEYS) | {"detection_masks"}
    for index, expected in enumerate(_in_memory(config, model, list(batch))):
        _assert_matches(outputs, expected, index)


def test_a_wrong_dtype_is_invalid_argument_and_the_next_request_works(loaded, images):
    with pytest.raises(tf.errors.InvalidArgumentError, match="expected to be a uint8 tensor but is a float"):
        loaded.signatures["serve_images"](images=tf.zeros([1, 32, 32, 3]))
    with pytest.raises(tf.errors.InvalidArgumentError, match="expected to be a string tensor but is a float"):
        loaded.signatures["serving_default"](image_bytes=tf.zeros([1]))
    assert loaded.signatures["serving_default"](image_bytes=tf.constant(images[1][:1]))["num_detections"][0] > 0


def test_a_fresh_process_with_only_tensorflow_reproduces_the_in_memory_detections(exported, images, tmp_path):
    """Encoded images of three sizes in one request, through serving_default in a process that
    never imports polarmask_tf."""
    _, config, model, version = exported
    encoded = [images[1][0], images[2][1], images[1][2]]  # PNG, JPEG, PNG
    np.save(tmp_path / "bytes.npy", np.array(encoded, dtype=object), allow_pickle=True)
    script = textwrap.dedent(f"""
        import sys
        import numpy as np
        import tensorflow as tf
        served = tf.saved_model.load({version!r}).signatures["serving_default"]
        encoded = np.load({str(tmp_path / 'bytes.npy')!r}, allow_pickle=True)
        outputs = served(image_bytes=tf.constant(list(encoded), tf.string))
        np.savez({str(tmp_path / 'outputs.npz')!r}, **{{k: v.numpy() for k, v in outputs.items()}})
        assert not any(name.startswith("polarmask_tf") for name in sys.modules)
    """)
    ran = _run([sys.executable, "-c", script], env_extra={"PYTHONPATH": ""})
    assert ran.returncode == 0, ran.stderr
    outputs = dict(np.load(tmp_path / "outputs.npz", allow_pickle=True))
    assert outputs["detection_boxes"].shape == (3, K, 4) and outputs["detection_masks"].shape == (3, K, 8, 8)
    for index, expected in enumerate(_in_memory(config, model, _decoded(encoded))):
        _assert_matches(outputs, expected, index)


def test_outputs_are_consistent_and_masks_follow_the_polygons(loaded, images):
    outputs = {k: v.numpy()
               for k, v in loaded.signatures["serving_default"](image_bytes=tf.constant(images[1])).items()}
    n = outputs["num_detections"]
    assert (n > 0).all()
    names = outputs["detection_class_names"]
    for i in range(len(n)):
        classes = outputs["detection_classes"][i, : n[i]]
        assert set(classes) <= set(range(10, 80, 10))
        assert [name.decode() for name in names[i, : n[i]]] == [f"shape {c // 10}" for c in classes]
        assert (np.diff(outputs["detection_scores"][i, : n[i]]) <= 0).all()
    expected = geometry.box_masks(outputs["detection_polygons"], outputs["detection_boxes"], MASK_SIZE).numpy()
    np.testing.assert_array_equal(outputs["detection_masks"], expected.astype(np.uint8))


def test_padding_semantics_and_an_image_without_detections(exported, images, tmp_path, capsys):
    """export_saved_model.py end to end: a threshold no probability exceeds leaves every slot padding."""
    model_dir = exported[0]
    args = [sys.executable, os.path.join(ROOT, "export_saved_model.py"), "--model-dir", str(model_dir),
            "--export-dir", str(tmp_path / "export"), "--score-threshold", "1.0", "--mask-size", "4",
            "--max-image-pixels", "40000", "--max-detections", "5"]
    ran = _run(args)
    assert ran.returncode == 0, ran.stderr
    assert "exported" in ran.stdout and os.path.join(str(tmp_path / "export"), "1") in ran.stdout
    again = _run(args + ["--version", "1"])
    assert again.returncode == 2 and "exists" in again.stderr
    served = tf.saved_model.load(str(tmp_path / "export" / "1")).signatures["serving_default"]
    outputs = {k: v.numpy() for k, v in served(image_bytes=tf.constant(images[1][:2])).items()}
    assert outputs["num_detections"].tolist() == [0, 0]
    assert (outputs["detection_classes"] == export.PADDED_CLASS).all() and outputs["detection_classes"].shape == (2, 5)
    assert (outputs["detection_class_names"] == b"").all()
    for key in ("detection_scores", "detection_boxes", "detection_polygons", "detection_masks"):
        assert not outputs[key].any(), key
    big = _encode(np.zeros((250, 170, 3), np.uint8), ".png")  # 42500 px > 40000
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"image_bytes\[1\] is 250 x 170 pixels.*at most 40000"):
        served(image_bytes=tf.constant([images[1][0], big]))


@pytest.mark.parametrize("bad, message", [
    (b"", r"image_bytes\[1\] is an empty string"),
    (b"just some text, not an image\n", r"image_bytes\[1\] is not a JPEG, PNG, GIF or BMP image"),
    ("truncated", r"Invalid JPEG data|Invalid PNG data|Premature end"),
    ("corrupt_png", r"PNG"),
])
def test_bad_bytes_fail_with_invalid_argument_and_the_next_request_works(loaded, images, bad, message):
    served = loaded.signatures["serving_default"]
    if bad == "truncated":
        bad = images[2][0][: len(images[2][0]) // 2]
    elif bad == "corrupt_png":
        bad = images[1][0][:40] + b"\x00" * 200
    with pytest.raises(tf.errors.InvalidArgumentError, match=message):
        served(image_bytes=tf.constant([images[1][0], bad]))
    assert served(image_bytes=tf.constant(images[1][:1]))["num_detections"].numpy()[0] > 0


def test_gif_bmp_and_a_10000_pixel_square_image(loaded, images):
    """GIF (first frame), BMP and a 10000 x 10000 PNG (the default limit) are served."""
    served = loaded.signatures["serving_default"]
    scene = images[0][0]
    from PIL import Image  # Pillow comes with matplotlib

    buffer = io.BytesIO()
    Image.fromarray(scene).save(buffer, format="GIF", save_all=True, append_images=[Image.fromarray(255 - scene)])
    gif = buffer.getvalue()
    bmp = _encode(scene, ".bmp")
    outputs = served(image_bytes=tf.constant([gif, bmp]))
    frames = tf.io.decode_gif(gif)
    assert frames.shape[0] == 2
    for index, pixels in enumerate((frames[0].numpy(), scene)):  # the GIF's first frame; BMP is lossless
        reference = loaded.signatures["serve_images"](images=tf.constant(pixels[None]))
        for key in ("detection_scores", "detection_polygons"):
            np.testing.assert_allclose(outputs[key][index], reference[key][0], atol=1e-4)
    huge = np.zeros((10000, 10000, 3), np.uint8)
    huge[2000:8000, 3000:7000] = (200, 40, 40)
    encoded = _encode(huge, ".png")
    del huge
    outputs = served(image_bytes=tf.constant([encoded]))
    boxes = outputs["detection_boxes"].numpy()[0, : outputs["num_detections"].numpy()[0]]
    assert boxes.size and boxes.min() >= 0 and boxes.max() <= 9999


def test_warmup_records_are_predict_requests_the_export_answers(exported, loaded):
    logs = warmup.read_warmup_requests(os.path.join(exported[3], *warmup.WARMUP_FILE))
    assert [len(log.predict_log.request.inputs["image_bytes"].string_val) for log in logs] == [1, 2]
    for log in logs:
        request = log.predict_log.request
        assert request.model_spec.name == "polarmask" and request.model_spec.signature_name == "serving_default"
        tensor = tf.make_ndarray(tf.make_tensor_proto(list(request.inputs["image_bytes"].string_val)))
        outputs = loaded.signatures["serving_default"](image_bytes=tf.constant(tensor))
        assert outputs["detection_polygons"].shape == (len(tensor), K, N, 2)


def test_client_end_to_end_against_the_rest_double(exported, images, tmp_path, capsys):
    _, config, model, version = exported
    paths = []
    for name, data in (("a.png", images[1][0]), ("b.jpg", images[2][1])):
        (tmp_path / name).write_bytes(data)
        paths.append(str(tmp_path / name))
    (tmp_path / "notes.txt").write_text("not an image")
    with tf_serving_double.serve(version) as url:
        status = client_command.main(["--url", url, "--image", paths[0], "--image", paths[1],
                                      "--score-threshold", "0.0", "--output-dir", str(tmp_path / "overlays"),
                                      "--json", str(tmp_path / "det.json")])
        printed = capsys.readouterr().out
        assert status == 0
        assert f"{paths[0]}: " in printed and "shape " in printed
        bad = client_command.main(["--url", url, "--image", str(tmp_path / "notes.txt")])
        assert bad == 1 and "HTTP 400" in capsys.readouterr().err
        status = client_command.main(["--url", url, "--image", paths[0], "--output", str(tmp_path / "one.png")])
        assert status == 0
        with pytest.raises(client.ServingError, match="not formatted correctly"):
            client.post_json(client.predict_url(url), {"instances": [[1.5, 2.5]]})
    detections = json.load(open(tmp_path / "det.json"))
    expected = _in_memory(config, model, _decoded([images[1][0], images[2][1]]))
    for found, reference in zip(detections, expected, strict=True):
        np.testing.assert_allclose(found["scores"], reference["scores"], atol=1e-4)
        np.testing.assert_allclose(found["polygons"], reference["polygons"], atol=1e-4)
        assert found["classes"] == (10 * reference["classes"]).tolist()
        assert np.array(found["masks"]).shape == (len(reference["scores"]), MASK_SIZE, MASK_SIZE)
    for path, name in zip(paths, ("a.png", "b.png"), strict=True):
        overlay = cv2.imread(str(tmp_path / "overlays" / name))
        assert overlay.shape == cv2.imread(path).shape
    assert cv2.imread(str(tmp_path / "one.png")).shape == cv2.imread(paths[0]).shape


def test_rest_double_applies_tf_serving_request_rules(exported, images):
    with tf_serving_double.serve(exported[3]) as url:
        predict = client.predict_url(url)
        b64 = base64.b64encode(images[1][0]).decode()
        named = client.post_json(predict, {"instances": [{"image_bytes": {"b64": b64}}]})
        bare = client.post_json(predict, {"instances": [{"b64": b64}]})
        columnar = client.post_json(predict, {"inputs": {"image_bytes": [{"b64": b64}]}})
        assert named == bare
        assert columnar["outputs"]["detection_scores"] == [named["predictions"][0]["detection_scores"]]
        arrays = client.post_json(predict, {"signature_name": "serve_images", "instances": images[0][2][None].tolist()})
        assert arrays["predictions"][0]["detection_polygons"] and len(arrays["predictions"]) == 1
        for body, message in (({"instances": []}, "non-empty"), ({"signature_name": "nope", "instances": [1]}, "nope"),
                              ({"instances": [{"b64": "%%%"}]}, "base64"), ({"foo": 1}, "exactly one")):
            with pytest.raises(client.ServingError, match=message):
                client.post_json(predict, body)
        with pytest.raises(client.ServingError, match="HTTP 404"):
            client.post_json(url.replace("polarmask", "other") + ":predict", {"instances": [{"b64": b64}]})


# Issue 13 (serving): readable errors, zero images, file modes, header size checks, a robust REST
# double and gRPC.


def _huge_png(width, height):
    """A valid 8-bit grayscale PNG of width x height zeros, a few hundred KB for 20000 x 20000."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    compressor = zlib.compressobj(6)
    row = bytes(width + 1)  # filter byte 0 + zeros
    idat = b"".join([compressor.compress(row) for _ in range(height)] + [compressor.flush()])
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", idat) + chunk(b"IEND", b""))


def _peak_rss_reset():
    """Resets the process's peak RSS (VmHWM); False when the kernel does not allow it."""
    try:
        with open("/proc/self/clear_refs", "w") as stream:
            stream.write("5")
        return True
    except OSError:
        return False


def _status_kib(field):
    with open("/proc/self/status") as stream:
        return next(int(line.split()[1]) for line in stream if line.startswith(field + ":"))


def _outputs(signature, **inputs):
    return {k: v.numpy() for k, v in signature(**inputs).items()}


def _assert_same(outputs, reference):
    assert set(outputs) == set(reference)
    for key, value in reference.items():
        got = np.asarray(outputs[key])
        if value.dtype == object:
            got = np.vectorize(lambda v: v.encode() if isinstance(v, str) else v, otypes=[object])(got)
            np.testing.assert_array_equal(got, value, err_msg=key)
        else:
            np.testing.assert_array_equal(got.astype(value.dtype), value, err_msg=key)


def _rest_columns(answer):
    """A row-format answer -> {output: numpy array, batch first}."""
    rows = answer["predictions"]
    return {key: np.array([row[key] for row in rows], dtype=object if key == "detection_class_names" else None)
            for key in rows[0]}


def test_random_bytes_give_invalid_argument_with_a_readable_message(loaded, images, exported):
    """Old code: the message embedded the first 4 raw bytes and TF's error conversion raised
    UnicodeDecodeError; now they are shown in hex."""
    served = loaded.signatures["serving_default"]
    junk = bytes([0x5F, 0x82, 0xC2, 0xD9]) + np.random.default_rng(0).bytes(200)
    with pytest.raises(tf.errors.InvalidArgumentError) as raised:
        served(image_bytes=tf.constant([images[1][0], junk]))
    assert r'image_bytes[1] is not a JPEG, PNG, GIF or BMP image (its first bytes are \"5f 82 c2 d9\" in hex)' \
        in raised.value.message
    good = _outputs(served, image_bytes=tf.constant(images[1][:1]))
    with tf_serving_double.serve(exported[3], loaded=loaded) as url:
        with pytest.raises(client.ServingError, match=r"(?s)HTTP 400: InvalidArgumentError: .*5f 82 c2 d9"):
            client.predict(url, [junk])
        _assert_same(_rest_columns(client.post_json(client.predict_url(url), client.predict_request(images[1][:1]))),
                     good)


def test_zero_images_give_empty_outputs_of_the_signature_dtypes(loaded, exported):
    """Old code: InvalidArgument from inside batch normalisation ("Incompatible shapes")."""
    shapes = {"num_detections": (0,), "detection_boxes": (0, K, 4), "detection_scores": (0, K),
              "detection_classes": (0, K), "detection_class_names": (0, K), "detection_polygons": (0, K, N, 2),
              "detection_masks": (0, K, MASK_SIZE, MASK_SIZE)}
    for name, inputs in (("serving_default", {"image_bytes": tf.constant([], tf.string)}),
                         ("serve_images", {"images": tf.zeros([0, 64, 48, 3], tf.uint8)})):
        signature = loaded.signatures[name]
        outputs = signature(**inputs)
        assert {k: tuple(v.shape) for k, v in outputs.items()} == shapes
        assert {k: v.dtype for k, v in outputs.items()} == {k: v.dtype for k, v in signature.structured_outputs.items()}
    with tf_serving_double.serve(exported[3], loaded=loaded) as url:
        answer = client.post_json(client.predict_url(url), {"inputs": {"image_bytes": []}})
        assert answer == {"outputs": {key: [] for key in shapes}}
    with tf_serving_double.serve_grpc(exported[3], loaded=loaded) as target:
        outputs = client.predict_grpc_outputs(target, client.grpc_request([]))
        assert {k: v.shape for k, v in outputs.items()} == shapes
        assert client.predict_grpc(target, []) == []


def test_the_export_is_readable_by_other_users(exported):
    """Old code: the version directory kept tempfile.mkdtemp's mode 0700."""
    version = exported[3]
    modes = {}
    for root, dirs, files in os.walk(version):
        for name in dirs + files + ([""] if root == version else []):
            path = os.path.join(root, name)
            modes[os.path.relpath(path, version)] = stat.S_IMODE(os.stat(path).st_mode)
    assert modes["."] == 0o755 and modes["variables"] == 0o755 and modes["saved_model.pb"] == 0o644
    assert {mode for path, mode in modes.items() if os.path.isdir(os.path.join(version, path))} == {0o755}
    assert {mode for path, mode in modes.items() if not os.path.isdir(os.path.join(version, path))} == {0o644}
    base = os.path.dirname(version)
    assert stat.S_IMODE(os.stat(os.path.join(base, "models.config")).st_mode) == 0o644


def _patched(data, offset, packed):
    return data[:offset] + packed + data[offset + len(packed):]


def test_image_sizes_are_read_from_the_header_before_decoding(loaded, images):
    """header_size agrees with the decoders on all four formats; a 20000 x 20000 PNG of a few
    hundred KB is rejected by its header without being decoded (old code: decoded 1.2 GB first)."""
    from PIL import Image

    scene = images[0][0]  # 120 x 160
    buffer = io.BytesIO()
    Image.fromarray(scene).save(buffer, format="GIF")
    encoded = {"png": images[1][0], "jpeg": images[2][0], "gif": buffer.getvalue(), "bmp": _encode(scene, ".bmp")}
    for kind, data in encoded.items():
        assert [int(v) for v in export.header_size(tf.constant(data))] == [120, 160], kind
    top_down = _patched(encoded["bmp"], 22, struct.pack("<i", -120))
    assert [int(v) for v in export.header_size(tf.constant(top_down))] == [120, 160]
    assert [int(v) for v in export.header_size(tf.constant(b"not an image"))] == [0, 0]
    assert [int(v) for v in export.header_size(tf.constant(b"\x89PNG"))] == [0, 0]

    huge = _huge_png(20000, 20000)
    assert len(huge) < 2**20
    sof = encoded["jpeg"].index(b"\xff\xc0")
    claims = {
        "PNG": huge,
        "JPEG": _patched(encoded["jpeg"], sof + 5, struct.pack(">HH", 30000, 20000)),
        "GIF": _patched(encoded["gif"], 6, struct.pack("<HH", 20000, 30000)),
        "BMP": _patched(encoded["bmp"], 18, struct.pack("<ii", 20000, -30000)),
    }
    served = loaded.signatures["serving_default"]
    served(image_bytes=tf.constant(images[1][:1]))  # warm: the peak below is the rejection's only
    measured = _peak_rss_reset()
    before = _status_kib("VmRSS")
    for kind, data in claims.items():
        size = "20000 x 20000" if kind == "PNG" else "30000 x 20000"  # height x width
        with pytest.raises(tf.errors.InvalidArgumentError) as raised:
            served(image_bytes=tf.constant([images[1][0], data]))
        assert (f"image_bytes[1] is {size} pixels by its header (not decoded): images must be non-empty and at most "
                f"{export.DEFAULT_MAX_IMAGE_PIXELS} pixels") in raised.value.message, kind
    if measured:
        assert _status_kib("VmHWM") - before < 200 * 1024  # KiB: far below the 1.2 GB a decode allocates
    assert served(image_bytes=tf.constant(images[1][:1]))["num_detections"].numpy()[0] > 0


def _reply(stream):
    """(status, parsed JSON body, whether the server closes the connection) of one HTTP answer."""
    status = int(stream.readline().split()[1])
    headers = {}
    while (line := stream.readline().strip()):
        key, _, value = line.decode().partition(":")
        headers[key.strip().lower()] = value.strip()
    return status, json.loads(stream.read(int(headers["content-length"]))), headers.get("connection") == "close"


def _raw_http(port, data, timeout=10.0):
    """Sends raw bytes to the double on a new connection; returns its _reply."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        return _reply(sock.makefile("rb"))


def _post(path, body, extra=b""):
    return (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {len(body)}\r\n".encode() + extra
            + b"\r\n" + body)


def test_the_rest_double_answers_every_malformed_request_with_a_json_error(loaded, exported, images):
    """Old double: an invalid Content-Length, undecodable JSON, a non-list 'inputs' or a nested
    string dropped the connection; a short body hung it."""
    good_body = json.dumps(client.predict_request(images[1][:1])).encode()
    predict = "/v1/models/polarmask:predict"
    cases = [
        (_post(predict, b"{not json"), 400, "JSON Parse error"),
        (_post(predict, b"\xff\xfe\x00{"), 400, "JSON Parse error"),
        (_post(predict, b'{"signature_name": "serving_default"}'), 400, "exactly one of 'instances' or 'inputs'"),
        (_post(predict, b'[1, 2]'), 400, "exactly one of 'instances' or 'inputs'"),
        (_post(predict, b'{"instances": "abc"}'), 400, "'instances' must be a non-empty list"),
        (_post(predict, b'{"inputs": 5}'), 400, "'image_bytes' has shape [], the signature (None,)"),
        (_post(predict, b'{"instances": [[["nested"]]]}'), 400, "'image_bytes' has shape [1, ...]"),
        (_post(predict, b'{"instances": [3.5]}'), 400, "not formatted correctly for base64 data"),
        (_post(predict, b'{"signature_name": ["x"], "instances": [1]}'), 400, "signature name: \"['x']\" not found"),
        (_post(predict, b'{"signature_name": "nope", "instances": [1]}'), 400, 'signature name: "nope" not found'),
        (_post(predict, b'{"instances": [{"b64": "%%%"}]}'), 400, "Unable to base64 decode"),
        (_post(predict, b'{"signature_name": "serve_images", "instances": [[[1, 2]]]}'), 400, "has shape [1, 1, 2]"),
        (_post(predict, b'{"signature_name": "serve_images", "instances": [[[[1, "a", 3]]]]}'), 400,
         "is not of the type"),
        (_post("/v1/models/other:predict", b"{}"), 404, "Servable not found for request: /v1/models/other"),
        (_post("/v2/nothing", b"{}"), 404, "Servable not found"),
        (_post(predict, b"x" * 2000), 413, "the body is 2000 bytes, more than the limit of 1024"),
        (f"POST {predict} HTTP/1.1\r\nContent-Length: 10**9\r\n\r\n".encode(), 400, "invalid Content-Length"),
        (f"POST {predict} HTTP/1.1\r\nContent-Length: -5\r\n\r\n".encode(), 400, "invalid Content-Length"),
        (f"POST {predict} HTTP/1.1\r\n\r\n".encode(), 411, "Content-Length header is required"),
        (f"POST {predict} HTTP/1.1\r\nContent-Length: 100\r\n\r\n{{\"inst".encode(), 400,
         "the body ended after 0 of its 100 bytes"),
    ]
    reference = _outputs(loaded.signatures["serving_default"], image_bytes=tf.constant(images[1][:1]))
    with tf_serving_double.serve(exported[3], loaded=loaded, max_body_bytes=1024, read_timeout=0.5) as url:
        port = int(url.split(":")[2].split("/")[0])
        for data, status, message in cases:
            got_status, body, _ = _raw_http(port, data)
            assert (got_status, set(body)) == (status, {"error"}), (data[:80], body)
            assert message in body["error"], (data[:80], body)
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:  # errors keep the connection
            sock.sendall(_post(predict, b"{bad") + _post(predict, b'{"inputs": 5}'))
            stream = sock.makefile("rb")
            assert [_reply(stream)[0::2] for _ in range(2)] == [(400, False), (400, False)]
    with tf_serving_double.serve(exported[3], loaded=loaded) as url:
        port = int(url.split(":")[2].split("/")[0])
        status, body, _ = _raw_http(port, _post(predict, good_body))
        assert status == 200
        _assert_same(_rest_columns(body), reference)


def test_grpc_client_and_double_match_the_in_process_signature(loaded, exported, images, tmp_path, capsys):
    served = loaded.signatures["serving_default"]
    encoded = [images[1][0], images[2][1]]
    reference = _outputs(served, image_bytes=tf.constant(encoded))
    with tf_serving_double.serve_grpc(exported[3], loaded=loaded) as target:
        _assert_same(client.predict_grpc_outputs(target, client.grpc_request(encoded)), reference)
        for bad, message in ((np.random.default_rng(1).bytes(300), "is not a JPEG, PNG, GIF or BMP image"),
                             (_huge_png(20000, 20000), "is 20000 x 20000 pixels by its header"),
                             (images[2][0][:300], "Invalid JPEG data")):
            with pytest.raises(client.ServingError, match=f"(?s){target}: gRPC INVALID_ARGUMENT: .*{message}"):
                client.predict_grpc(target, [images[1][0], bad])
            _assert_same(client.predict_grpc_outputs(target, client.grpc_request(encoded)), reference)
        with pytest.raises(client.ServingError, match="gRPC NOT_FOUND: Servable not found"):
            client.predict_grpc(target, encoded, model_name="other")
        request = client.grpc_request(encoded)
        request.model_spec.signature_name = "nope"
        with pytest.raises(client.ServingError, match='gRPC INVALID_ARGUMENT: Serving signature name: "nope"'):
            client.predict_grpc_outputs(target, request)
        found = client.predict_grpc(target, encoded)
        assert [len(f["scores"]) for f in found] == reference["num_detections"].tolist()
        n = len(found[0]["scores"])
        np.testing.assert_array_equal(found[0]["polygons"], reference["detection_polygons"][0, :n])
        path = tmp_path / "a.png"
        path.write_bytes(encoded[0])
        assert client_command.main(["--grpc", target, "--image", str(path), "--score-threshold", "0.0"]) == 0
        assert f"{path}: {reference['num_detections'][0]} detections" in capsys.readouterr().out
        (tmp_path / "junk.png").write_bytes(b"\x00" * 50)
        assert client_command.main(["--grpc", target, "--image", str(tmp_path / "junk.png")]) == 1
        assert "gRPC INVALID_ARGUMENT" in capsys.readouterr().err
