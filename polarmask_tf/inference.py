"""From a checkpoint to detections: load the model, preprocess, run, post-process.

    model = load_model(config, "runs/quickstart")           # a model dir (latest checkpoint) or a prefix
    predictor = Predictor(config, model)
    detections = predictor.predict([image_a, image_b])      # RGB uint8 arrays of any sizes

Detections per image (numpy): boxes float32 [n, 4] (x1, y1, x2, y2, original pixels, pixel-centre
frame), scores float32 [n], classes int32 [n] (contiguous labels 1..C), polygons float32 [n, N, 2].
"""

import os

import tensorflow as tf

from polarmask_tf import checkpoints, fileio
from polarmask_tf import config as cfg
from polarmask_tf import postprocess as postprocess_lib
from polarmask_tf.modeling import preprocessing
from polarmask_tf.modeling.model import build_model


class CheckpointMismatchError(ValueError):
    """A checkpoint that does not fit the model built from the config."""


def find_checkpoint(path):
    """A checkpoint prefix from a prefix, a model dir or its checkpoints/ dir (its newest ckpt-N
    with an index file, whatever the state file says: checkpoints.latest_checkpoint);
    FileNotFoundError naming the path otherwise."""
    for directory in (path, os.path.join(path, "checkpoints")):
        if tf.io.gfile.isdir(directory):
            latest = checkpoints.latest_checkpoint(directory)
            if latest:
                return latest
    if tf.io.gfile.exists(path + ".index"):
        return path
    raise FileNotFoundError(f"no checkpoint at {path} (give a model dir, its checkpoints/ dir or a ckpt-N prefix)")


LABELS_FILE = "labels.json"
"""The model dir's label map (data.coco.write_label_map): training copies the one beside its shards,
conversion.convert writes COCO's; predict, evaluate and export read it when no --label-map is given."""


def beside_checkpoint(checkpoint, name):
    """The file `name` of the model dir of `checkpoint` (a model dir, its checkpoints/ dir or a
    ckpt-N prefix; see find_checkpoint, whose FileNotFoundError propagates), or None."""
    directory = fileio.parent(fileio.absolute(find_checkpoint(checkpoint)))
    candidates = [directory]
    if os.path.basename(directory) == "checkpoints":
        candidates.append(os.path.dirname(directory))
    for candidate in candidates:
        path = os.path.join(candidate, name)
        if fileio.is_file(path):
            return path
    return None


def config_beside_checkpoint(checkpoint):
    """config.yaml of the model dir of `checkpoint`, or None (see beside_checkpoint)."""
    return beside_checkpoint(checkpoint, "config.yaml")


def checkpoint_config_path(checkpoint, config_path=None):
    """The config file to run `checkpoint` with: `config_path` when given, else the config.yaml of
    its model dir (config_beside_checkpoint); ConfigError when there is neither."""
    path = config_path or config_beside_checkpoint(checkpoint)
    if path is None:
        raise cfg.ConfigError(f"no config: pass --config ({checkpoint} has no config.yaml beside it)")
    return path


def checkpoint_has_box_branch(prefix):
    """Whether the checkpoint at `prefix` holds the head's box branch (its box_pred conv).

    Read from the checkpoint's object graph, not the variable keys: a training checkpoint stores
    each trainable variable under the optimizer's path ("optimizer/_trainable_variables/7/..."),
    so the keys need not name the layers."""
    from tensorflow.core.protobuf import trackable_object_graph_pb2

    graph = trackable_object_graph_pb2.TrackableObjectGraph()
    # NewCheckpointReader, not tf.train.load_checkpoint: that one takes a ram:// prefix for a directory.
    reader = tf.compat.v1.train.NewCheckpointReader(prefix)
    graph.ParseFromString(reader.get_tensor("_CHECKPOINTABLE_OBJECT_GRAPH"))
    return any(child.local_name == "box_pred" for node in graph.nodes for child in node.children)


def check_box_branch(prefix, config):
    """Raises CheckpointMismatchError, naming the checkpoint `prefix`, when it was trained with
    another model.box_branch than `config` has. Needed because a restore into the model without the
    branch would silently skip the checkpoint's box variables, and the reverse fails with a message
    that names one variable path."""
    trained = checkpoint_has_box_branch(prefix)
    if trained != config.model.box_branch:
        def text(value):
            return "true" if value else "false"

        raise CheckpointMismatchError(
            f"{prefix} was trained with model.box_branch={text(trained)}, the config has "
            f"{text(config.model.box_branch)}: set model.box_branch={text(trained)}, or use the config the "
            "checkpoint was trained with (its model dir's config.yaml)"
        )


def load_model(config, checkpoint):
    """The model of `config` with the weights of `checkpoint` (see find_checkpoint).

    Raises CheckpointMismatchError, naming the checkpoint and the first mismatch, when the
    checkpoint was trained with another architecture (backbone, channels, classes, rays, with or
    without the box branch: check_box_branch).
    """
    prefix = find_checkpoint(checkpoint)
    check_box_branch(prefix, config)
    model = build_model(config)
    try:
        tf.train.Checkpoint(model=model).restore(prefix).expect_partial().assert_existing_objects_matched()
    except (AssertionError, ValueError) as error:
        raise CheckpointMismatchError(
            f"{prefix} does not fit the model of this config ({str(error).splitlines()[0]}); use the config "
            "the checkpoint was trained with (its model dir holds it as config.yaml)"
        ) from error
    return model


class Predictor:
    """Batched inference for one config and model; images of any size, in any number."""

    def __init__(self, config, model, batch_size=8):
        self.config = config
        self.model = model
        self.batch_size = batch_size
        padded = preprocessing.padded_image_shape(config.data)

        @tf.function(reduce_retracing=True)
        def run(inputs, resized_size, scale):
            outputs = model(inputs, training=False)
            return postprocess_lib.postprocess(outputs, resized_size, scale, padded, config.polar, config.postprocess)

        @tf.function(reduce_retracing=True)
        def preprocess(image):
            return preprocessing.preprocess_image(image, config)

        self._run = run
        self._preprocess = preprocess

    def predict(self, images):
        """Detections for a list of RGB uint8 images [h, w, 3]: a list of dicts of numpy arrays."""
        results = []
        for start in range(0, len(images), self.batch_size):
            prepared = [self._preprocess(tf.convert_to_tensor(image))
                        for image in images[start : start + self.batch_size]]
            inputs, sizes, scales = (tf.stack(parts) for parts in zip(*prepared, strict=True))
            batch = {k: v.numpy() for k, v in self._run(inputs, sizes, scales).items()}
            for i in range(len(prepared)):
                n = int(batch["num_detections"][i])
                results.append({key: batch[key][i, :n] for key in ("boxes", "scores", "classes", "polygons")})
        return results

