"""SavedModel export for TensorFlow Serving: encoded images in, detections with polygons out, with
decoding, preprocessing, the model and post-processing all in the graph (no py_function, no XLA).

    path = export(config, model, label_map, "exports/polarmask", version=1, mask_size=28)

The serving contract. B images per request, K = postprocess.max_detections, N = polar.num_rays.
Inputs:
  serving_default  image_bytes  string [B]            JPEG, PNG, BMP or GIF (first frame), any size
                                                      up to max_image_pixels, sizes may differ
  serve_images     images       uint8  [B, H, W, 3]   RGB, one size per request
Outputs (both signatures), batch first:
  num_detections         int32   [B]
  detection_boxes        float32 [B, K, 4]     x1, y1, x2, y2 in original image pixels (the polygon
                                               extents with postprocess.box_source polygon, which
                                               "auto" is for a model without the box branch)
  detection_scores       float32 [B, K]        descending
  detection_classes      int32   [B, K]        the training dataset's category ids
  detection_class_names  string  [B, K]        their names (from the categories.tsv asset)
  detection_polygons     float32 [B, K, N, 2]  (x, y) vertices, ray k at angle 2*pi*k/N
  detection_masks        uint8   [B, K, M, M]  only when exported with mask_size M: 1 inside the
                                               polygon, 0 outside, over the detection's box
Padding: entries at index >= num_detections have score 0, class PADDED_CLASS (-1), name "", and
all-zero boxes, polygons and masks.
Coordinates: pixel (row i, column j) of the original image has its centre at (x=j, y=i), as in
OpenCV drawing; add 0.5 for COCO's frame, where pixel edges fall on integers.
Errors: an empty string, bytes that are not one of the four formats, a corrupt image or one with
more than max_image_pixels pixels fail the request with InvalidArgument naming the image's index.
Messages never embed the raw bytes (the first bytes of an unknown format are shown in hex), so
they are always valid UTF-8. The size is read from the image's header BEFORE decoding (JPEG:
tf.io.extract_jpeg_shape; PNG: IHDR width and height, big-endian at bytes 16..24; GIF: the logical
screen, little-endian uint16 at bytes 6..10; BMP: int32 little-endian at bytes 18..26, the height's
sign dropped), so a 1 MB PNG claiming 20000 x 20000 pixels is rejected without allocating the
1.2 GB its decoding would; the decoded size is checked again. The resize works on the uint8 image
directly, without a float32 copy at full size.
Zero images (a batch of 0): every output is empty along the batch axis (num_detections [0],
detection_boxes [0, K, 4], ...), with the dtypes above; the model does not run.

Publication (export_dir local or a URI: gs://, s3://, hdfs://, ram://; every file goes through
polarmask_tf.fileio, tf.io.gfile or TensorFlow's own writers). The version is first written
whole to EXPORT_DIR/.staging-VERSION-<random>/ (SavedModel, assets/categories.tsv,
assets.extra/tf_serving_warmup_requests) and checked (check_saved_model). Then:
  local: renamed to EXPORT_DIR/VERSION (atomic on POSIX: a watcher sees no version or all of it);
  URI:   copied file by file to EXPORT_DIR/VERSION, variables first, saved_model.pb LAST (after
         the sizes of the other files are checked), and the staging prefix deleted. No rename:
         object stores have none (tf.io.gfile copies and deletes), and ram:// renames a
         directory's entry without its files.
Why this is safe, from tensorflow/serving (commit 9d981c5c):
  sources/storage_path/file_system_storage_path_source.cc, PollFileSystemForServable: the base
  path is listed with Env::GetChildren, each child cut at its first '/' (GCS lists every
  descendant), and every child whose name parses as an integer (ParseVersionNumber,
  absl::SimpleAtoi) is a version, with no check that its files are complete. ".staging-..."
  never parses, so the staging prefix is ignored; EXPORT_DIR/VERSION becomes a version as soon as
  its first object exists.
  Loading it runs TensorFlow's LoadSavedModel, which fails with NotFound "Could not find
  SavedModel .pb or .pbtxt at supplied export directory path" while saved_model.pb is missing.
  core/loader_harness.cc (Load) retries through util/retrier.cc: max_num_load_retries times
  (default 5, model_servers/server.h, flag --max_num_load_retries), load_retry_interval_micros
  apart (default 1 minute). Once saved_model.pb exists every other file is already complete, so
  the next retry loads the whole version. After the last retry the version stays in kError:
  core/aspired_versions_manager.cc reloads an errored version only with ServerCore's
  enable_reload_servables_with_error (default false, no model-server flag). So the copy before
  saved_model.pb must take less than the retry budget (about 5 minutes by default; copies within
  a bucket are server-side); meanwhile core/availability_preserving_policy.cc keeps the previous
  version serving.
Failures: an error or interrupt during the copy deletes what was copied (best effort), so
EXPORT_DIR/VERSION does not exist or lacks saved_model.pb; the staging directory is deleted in
every case. overwrite=True on a URI deletes the old version just before the copy: a watcher that
polls in between sees the version disappear and reappear (with no other version, the model is
unavailable until the new one loads). On any filesystem a server that never saw the version gone
keeps the old one in memory: TF Serving does not reload a version number it has loaded, so roll
out a new model under a new version.
File modes: chmod to 0755 / 0644 locally only; URIs have no POSIX modes (use the bucket's access
control).
"""

import os
import re
import tempfile
import uuid

import keras
import tensorflow as tf
from tensorflow.core.protobuf import saved_model_pb2

from polarmask_tf import config as cfg
from polarmask_tf import fileio, geometry
from polarmask_tf import postprocess as postprocess_lib
from polarmask_tf.modeling import preprocessing
from polarmask_tf.serving import warmup

DEFAULT_MAX_IMAGE_PIXELS = 10000 * 10000
PADDED_CLASS = postprocess_lib.PADDED_CLASS
"""detection_classes of padding entries (category ids are never negative), as everywhere."""
CATEGORIES_ASSET = "categories.tsv"
"""Asset with one line per label 1..C: "<category id>\\t<name>"."""
INPUT_SIGNATURES = {
    "serving_default": tf.TensorSpec([None], tf.string, name="image_bytes"),
    "serve_images": tf.TensorSpec([None, None, None, 3], tf.uint8, name="images"),
}
OUTPUT_KEYS = (
    "num_detections", "detection_boxes", "detection_scores", "detection_classes",
    "detection_class_names", "detection_polygons",
)
"""Outputs of every export; "detection_masks" is added when a mask size is given."""

_FORMATS = ((b"\xff\xd8\xff", "JPEG"), (b"\x89PNG", "PNG"), (b"GIF8", "GIF"), (b"BM", "BMP"))


def inference_config(config, max_detections=None, score_threshold=None, input_size=None):
    """The config an export runs: training-only padding for scale jitter dropped
    (data.scale_range = null), and the optional overrides of the export flags."""
    overrides = ["data.scale_range=null"]
    if max_detections is not None:
        overrides.append(f"postprocess.max_detections={int(max_detections)}")
    if score_threshold is not None:
        overrides.append(f"postprocess.score_threshold={float(score_threshold)}")
    if input_size is not None:
        overrides.append(f"data.image_size=[{int(input_size)}, {int(input_size)}]")
    return cfg.apply_overrides(config, overrides)


def write_categories(label_map, path):
    """The categories asset for a data.coco.LabelMap (tabs and newlines in names become spaces),
    written through fileio (`path` may be a URI)."""
    lines = []
    for category in label_map.categories:
        name = re.sub(r"[\t\r\n]", " ", category.name)
        lines.append(f"{category.category_id}\t{name}\n")
    fileio.write_text(path, "".join(lines))


def _category_tables(path):
    """Lookup tables label - 1 -> category id (int64) and -> name (string), from the asset."""

    def table(value_dtype, value_column, default):
        initializer = tf.lookup.TextFileInitializer(
            path, tf.int64, tf.lookup.TextFileIndex.LINE_NUMBER, value_dtype, value_column, delimiter="\t"
        )
        return tf.lookup.StaticHashTable(initializer, default)

    return table(tf.int64, 0, PADDED_CLASS), table(tf.string, 1, "")


def _fail_unless(condition, message):
    """An op raising InvalidArgument with `message` (a string tensor) when condition is false."""
    return tf.debugging.Assert(condition, [message], summarize=1)


_HEX = [f"{value:02x}" for value in range(256)]
_HEADER_BYTES = 26


def _hex(data):
    """Space-separated hex of a (short) string tensor's bytes: never raw bytes in a message."""
    codes = tf.cast(tf.io.decode_raw(data, tf.uint8), tf.int32)
    return tf.strings.reduce_join(tf.gather(tf.constant(_HEX), codes), separator=" ")


def _header(encoded):
    """The first _HEADER_BYTES bytes of `encoded`, zero-padded to that length (a string tensor).
    Only substr at position 0 touches `encoded`: substr past its end would fail with a message
    holding the raw bytes."""
    padded = tf.strings.join([tf.strings.substr(encoded, 0, _HEADER_BYTES), tf.constant(b"\0" * _HEADER_BYTES)])
    return tf.strings.substr(padded, 0, _HEADER_BYTES)


def header_size(encoded):
    """(height, width) int64 of an encoded image from its header, without decoding it; (0, 0)
    for an unknown format or a header too short to say (the decoder then reports the problem).
    JPEG: tf.io.extract_jpeg_shape (InvalidArgument when its header is corrupt); PNG: IHDR
    big-endian uint32 width, height at bytes 16..24; GIF: the logical screen, little-endian uint16
    width, height at bytes 6..10; BMP: little-endian int32 width, height at bytes 18..26 (a
    negative height means top-down rows), as TensorFlow's decoders read them."""
    header = _header(encoded)
    b = tf.cast(tf.io.decode_raw(header, tf.uint8), tf.int64)

    def big_endian(start, count):
        return sum(b[start + i] * (256 ** (count - 1 - i)) for i in range(count))

    def little_endian(start, count):
        return sum(b[start + i] * (256 ** i) for i in range(count))

    def int32(unsigned):
        return tf.abs(tf.where(unsigned >= 2**31, unsigned - 2**32, unsigned))

    head = tf.strings.substr(encoded, 0, 4)
    is_jpeg, is_png, is_gif, is_bmp = (tf.strings.substr(head, 0, len(magic)) == magic for magic, _ in _FORMATS)
    png = tf.where(tf.strings.substr(header, 12, 4) == b"IHDR",
                   tf.stack([big_endian(20, 4), big_endian(16, 4)]), tf.zeros([2], tf.int64))
    gif = tf.stack([little_endian(8, 2), little_endian(6, 2)])
    bmp = tf.stack([int32(little_endian(22, 4)), int32(little_endian(18, 4))])
    jpeg = tf.cond(is_jpeg, lambda: tf.cast(tf.io.extract_jpeg_shape(encoded)[:2], tf.int64),
                   lambda: tf.zeros([2], tf.int64))
    size = tf.where(is_png, png, tf.where(is_gif, gif, tf.where(is_bmp, bmp, jpeg)))
    return size[0], size[1]


def _size_message(input_name, index, height, width, max_pixels, where=""):
    return tf.strings.format(
        input_name + "[{}] is {} x {} pixels" + where + ": images must be non-empty and at most {} pixels "
        "(export_saved_model --max_image_pixels)", (index, height, width, max_pixels))


def _decode(encoded, index, max_pixels):
    """image_bytes[index] -> RGB uint8 [h, w, 3], or InvalidArgument naming the index and problem.
    The format and the header's size are checked before the decoder runs."""
    head = tf.strings.substr(encoded, 0, 4)
    known = tf.reduce_any(tf.stack([tf.strings.substr(head, 0, len(magic)) == magic for magic, _ in _FORMATS]))
    checks = [
        _fail_unless(tf.strings.length(encoded) > 0,
                     tf.strings.format("image_bytes[{}] is an empty string, not an encoded image", index)),
        _fail_unless(known | (tf.strings.length(encoded) == 0), tf.strings.format(
            "image_bytes[{}] is not a JPEG, PNG, GIF or BMP image (its first bytes are {} in hex)",
            (index, _hex(head)))),
    ]
    with tf.control_dependencies(checks):
        height, width = header_size(encoded)
    size_check = _fail_unless(height * width <= max_pixels,
                              _size_message("image_bytes", index, height, width, max_pixels,
                                            " by its header (not decoded)"))
    with tf.control_dependencies([size_check]):
        image = tf.io.decode_image(encoded, channels=3, dtype=tf.uint8, expand_animations=False)
    image = tf.ensure_shape(image, [None, None, 3])
    return _checked_size(image, "image_bytes", index, max_pixels)


def _checked_size(image, input_name, index, max_pixels):
    """The image [h, w, 3], or InvalidArgument when it is empty or has more than max_pixels pixels."""
    height, width = tf.unstack(tf.shape(image, out_type=tf.int64)[:2])
    check = _fail_unless((height > 0) & (width > 0) & (height * width <= max_pixels),
                         _size_message(input_name, index, height, width, max_pixels))
    with tf.control_dependencies([check]):
        return tf.identity(image)


def build_archive(config, model, categories_path, mask_size=None, max_image_pixels=DEFAULT_MAX_IMAGE_PIXELS):
    """A keras.export.ExportArchive with the two signatures of the module docstring.

    config: the config.Config to serve (see inference_config); model: its Keras model with trained
    weights; categories_path: a file written by write_categories (copied into the SavedModel's
    assets when the archive is written); mask_size: M for detection_masks, or None for none.
    """
    padded = preprocessing.padded_image_shape(config.data)
    category_ids, category_names = _category_tables(categories_path)
    prepared_spec = (
        tf.TensorSpec([*padded, 3], tf.float32), tf.TensorSpec([2], tf.int32), tf.TensorSpec([2], tf.float32)
    )

    def detect(inputs, resized_size, scale):
        found = postprocess_lib.postprocess(
            model(inputs, training=False), resized_size, scale, padded, config.polar, config.postprocess
        )
        keys = tf.cast(found["classes"], tf.int64) - 1  # negative for padding: the tables' default
        outputs = {
            "num_detections": found["num_detections"],
            "detection_boxes": found["boxes"],
            "detection_scores": found["scores"],
            "detection_classes": tf.cast(category_ids.lookup(keys), tf.int32),
            "detection_class_names": category_names.lookup(keys),
            "detection_polygons": found["polygons"],
        }
        if mask_size:
            masks = geometry.box_masks(found["polygons"], found["boxes"], mask_size)
            outputs["detection_masks"] = tf.cast(masks, tf.uint8)
        return outputs

    k, n = config.postprocess.max_detections, config.polar.num_rays

    def empty():
        """The outputs of a request with zero images: empty along the batch axis."""
        outputs = {
            "num_detections": tf.zeros([0], tf.int32),
            "detection_boxes": tf.zeros([0, k, 4], tf.float32),
            "detection_scores": tf.zeros([0, k], tf.float32),
            "detection_classes": tf.zeros([0, k], tf.int32),
            "detection_class_names": tf.fill([0, k], ""),
            "detection_polygons": tf.zeros([0, k, n, 2], tf.float32),
        }
        if mask_size:
            outputs["detection_masks"] = tf.zeros([0, k, mask_size, mask_size], tf.uint8)
        return outputs

    def serve_bytes(image_bytes):
        def prepare(args):
            index, encoded = args
            return preprocessing.preprocess_image(_decode(encoded, index, max_image_pixels), config)

        indices = tf.range(tf.size(image_bytes))
        return tf.cond(tf.size(image_bytes) > 0, lambda: detect(
            *tf.map_fn(prepare, (indices, image_bytes), fn_output_signature=prepared_spec)), empty)

    def serve_images(images):
        def prepare(args):
            index, image = args
            return preprocessing.preprocess_image(_checked_size(image, "images", index, max_image_pixels), config)

        indices = tf.range(tf.shape(images)[0])
        return tf.cond(tf.shape(images)[0] > 0, lambda: detect(
            *tf.map_fn(prepare, (indices, images), fn_output_signature=prepared_spec)), empty)

    archive = keras.export.ExportArchive()
    for resource in (model, category_ids, category_names):
        archive.track(resource)
    archive.add_endpoint("serving_default", serve_bytes, input_signature=[INPUT_SIGNATURES["serving_default"]])
    archive.add_endpoint("serve_images", serve_images, input_signature=[INPUT_SIGNATURES["serve_images"]])
    return archive


def size_on_disk(path):
    """Bytes of all files under `path` (local or URI: tf.io.gfile.walk and stat)."""
    return sum(size for _, size in fileio.list_files(path))


def next_version(export_dir):
    """1 + the largest integer version directory under export_dir (local or URI; 1 when there is
    none). Names are listed with tf.io.gfile.listdir (GCS lists directories with a trailing '/')."""
    export_dir = str(export_dir)
    names = tf.io.gfile.listdir(export_dir) if tf.io.gfile.isdir(export_dir) else []
    versions = [int(name.rstrip("/")) for name in names if name.rstrip("/").isdigit()]
    return max(versions, default=0) + 1


def write_server_configs(export_dir, model_name, max_batch_size=8):
    """Example TF Serving configs beside the versions: models.config (the model at
    /models/<model_name>, where the README's docker command mounts export_dir) and
    batching_parameters.txt (server-side batching of concurrent requests up to max_batch_size).
    Written through fileio (export_dir may be a URI). Returns their paths."""
    models = os.path.join(str(export_dir), "models.config")
    fileio.write_text(models, (
        "model_config_list {\n"
        "  config {\n"
        f'    name: "{model_name}"\n'
        f'    base_path: "/models/{model_name}"\n'
        '    model_platform: "tensorflow"\n'
        "  }\n"
        "}\n"
    ))
    batching = os.path.join(str(export_dir), "batching_parameters.txt")
    sizes = sorted({1, 2, 4, max_batch_size} & set(range(1, max_batch_size + 1)))
    fileio.write_text(batching, (
        f"max_batch_size {{ value: {max_batch_size} }}\n"
        "batch_timeout_micros { value: 5000 }\n"
        "max_enqueued_batches { value: 64 }\n"
        "num_batch_threads { value: 2 }\n"
        + "".join(f"allowed_batch_sizes: {size}\n" for size in sizes)
    ))
    return models, batching


def make_readable(path, dir_mode=0o755, file_mode=0o644):
    """chmod of the local directory `path` and everything under it: directories dir_mode, files
    file_mode, so a model server running as another user can read an export (tempfile.mkdtemp
    creates 0700). Does nothing on a URI: object stores and ram:// have no POSIX modes (access
    is the bucket's IAM / ACLs)."""
    path = str(path)
    if fileio.is_remote(path):
        return
    os.chmod(path, dir_mode)  # local: POSIX modes exist only on local files
    for root, dirs, files in os.walk(path):  # local: as above
        for name in dirs:
            os.chmod(os.path.join(root, name), dir_mode)  # local: as above
        for name in files:
            os.chmod(os.path.join(root, name), file_mode)  # local: as above


SAVED_MODEL_FILE = "saved_model.pb"
"""The file TF Serving's loader needs first; published last on URI filesystems."""
STAGING_PREFIX = ".staging-"
"""Staging directories EXPORT_DIR/.staging-<version>-<random>: not integers, so TF Serving ignores them."""


def check_saved_model(path):
    """Raises OSError naming `path` unless it holds a SavedModel with both signatures and its
    variables index (what a model server needs to load it)."""
    for name in (SAVED_MODEL_FILE, "variables/variables.index"):
        if not fileio.is_file(os.path.join(path, name)):
            raise OSError(f"the SavedModel written to {path} has no {name}")
    saved_model = saved_model_pb2.SavedModel.FromString(fileio.read_bytes(os.path.join(path, SAVED_MODEL_FILE)))
    signatures = set(saved_model.meta_graphs[0].signature_def) if saved_model.meta_graphs else set()
    missing = sorted(set(INPUT_SIGNATURES) - signatures)
    if missing:
        raise OSError(f"the SavedModel written to {path} lacks the signatures {', '.join(missing)}")


def _remove_quietly(path):
    try:
        fileio.remove_tree(path)
    except OSError:
        pass  # best effort: the error that got us here matters more


def _publish_by_copy(staging, final):
    """Copies the verified version in `staging` to `final` file by file, saved_model.pb last
    (through fileio.copy: atomic on every filesystem, see fileio); the other files are checked
    (names and sizes) before it. On any error, KeyboardInterrupt included, what was copied is
    deleted again, so `final` lacks saved_model.pb or does not exist."""
    files = fileio.list_files(staging)
    rest = [(name, size) for name, size in files if name != SAVED_MODEL_FILE]
    rest.sort(key=lambda item: (not item[0].startswith("variables/"), item[0]))  # the bulk first
    made = set()
    try:
        for name, _ in rest:
            target = os.path.join(final, name)
            if fileio.parent(target) not in made:
                fileio.makedirs(fileio.parent(target))
                made.add(fileio.parent(target))
            tf.io.gfile.copy(os.path.join(staging, name), target, overwrite=True)  # server-side on GCS
        copied = dict(fileio.list_files(final))
        for name, size in rest:
            if copied.get(name) != size:
                raise OSError(f"copying {os.path.join(staging, name)} to {final} gave {copied.get(name)} bytes, "
                              f"not {size}")
        fileio.copy(os.path.join(staging, SAVED_MODEL_FILE), os.path.join(final, SAVED_MODEL_FILE))
    except BaseException:
        _remove_quietly(final)
        raise


def export(config, model, label_map, export_dir, version=None, mask_size=None,
           max_image_pixels=DEFAULT_MAX_IMAGE_PIXELS, model_name="polarmask", overwrite=False):
    """Writes EXPORT_DIR/VERSION (TF Serving's layout: a SavedModel with its assets, the
    categories asset and assets.extra/tf_serving_warmup_requests), plus models.config and
    batching_parameters.txt in EXPORT_DIR. Returns the version directory. EXPORT_DIR may be local
    or a URI (gs://, s3://, hdfs://, ram://). Locally every directory of the version is mode 0755
    and every file 0644, whatever the umask, so the model server may run as another user (no modes
    on URIs).

    The version is written to EXPORT_DIR/.staging-VERSION-<random>, checked (check_saved_model)
    and published so that a server watching EXPORT_DIR never loads half a version: locally by a
    rename; on a URI by a copy with saved_model.pb last (see "Publication" in the module
    docstring). The staging directory is deleted in every case. version: an int, default
    next_version(). Raises FileExistsError when the version exists and overwrite is false; with
    overwrite the old version is deleted just before the new one is published.
    """
    export_dir = str(export_dir)
    remote = fileio.is_remote(export_dir)
    fileio.makedirs(export_dir)
    version = next_version(export_dir) if version is None else int(version)
    final = os.path.join(export_dir, str(version))
    if tf.io.gfile.exists(final) and not overwrite:
        raise FileExistsError(f"{final} exists: pick another --version or pass --overwrite")
    if remote:
        staging = os.path.join(export_dir, f"{STAGING_PREFIX}{version}-{uuid.uuid4().hex[:12]}")
        fileio.makedirs(staging)
    else:
        staging = tempfile.mkdtemp(prefix=f"{STAGING_PREFIX}{version}-", dir=export_dir)  # local: renamed into place
    try:
        with tempfile.TemporaryDirectory() as scratch:  # local: the asset's source, copied into the SavedModel
            categories = os.path.join(scratch, CATEGORIES_ASSET)
            write_categories(label_map, categories)
            archive = build_archive(config, model, categories, mask_size, max_image_pixels)
            archive.write_out(staging, verbose=False)
        warmup.write_warmup_requests(os.path.join(staging, *warmup.WARMUP_FILE), model_name)
        check_saved_model(staging)
        if remote:
            fileio.remove_tree(final)  # overwrite: the old version disappears until the copy is done
            _publish_by_copy(staging, final)
        else:
            make_readable(staging)
            fileio.remove_tree(final)
            os.rename(staging, final)  # local: atomic on POSIX, a watcher sees no version or all of it
    finally:
        _remove_quietly(staging)
    for path in write_server_configs(export_dir, model_name):
        if not remote:
            os.chmod(path, 0o644)  # local: POSIX modes exist only on local files
    return final
