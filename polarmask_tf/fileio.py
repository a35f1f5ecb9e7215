"""Files on user-given paths: local, or remote (gs://, s3://, hdfs://, TensorFlow's in-memory ram://)
through tf.io.gfile. Everything the package reads or writes on a path a user gave goes through
here or through a TensorFlow API that takes such paths (checkpoints, summaries, SavedModels,
TFRecords); local temporary files made with `tempfile` are the only exception.

Atomic replacement (write_bytes and the helpers built on it): the new content is written beside
the target and renamed over it, so a reader sees the old file or the new one, never half. Object
stores (gs://, s3://) have no rename (tf.io.gfile copies and deletes), but publish an object only
when its upload completes: there the target is written in place, with the same guarantee for a
single object and none across several objects (see serving.export for how a version directory is
published).
"""

import json
import os
import uuid

import tensorflow as tf

OBJECT_STORES = ("gs://", "s3://")


def is_remote(path):
    """Whether `path` is a URI (scheme://...) rather than a local path."""
    return "://" in str(path)


def absolute(path):
    """os.path.abspath for local paths; URIs unchanged (abspath would turn gs://b into ./gs:/b)."""
    path = str(path)
    return path if is_remote(path) else os.path.abspath(path)


def parent(path):
    """The directory holding `path` (local or URI), '' for a bare local file name."""
    return os.path.dirname(str(path).rstrip("/"))


def is_file(path):
    """Whether `path` (local or URI) is an existing file (not a directory)."""
    path = str(path)
    return tf.io.gfile.exists(path) and not tf.io.gfile.isdir(path)


def makedirs(path):
    """Creates the directory `path` and its parents (no error if it exists). Raises
    NotADirectoryError naming the path when it, or a parent, is a file."""
    path = str(path)
    if not path:
        return
    try:
        tf.io.gfile.makedirs(path)
    except tf.errors.OpError as error:
        raise NotADirectoryError(f"cannot create the directory {path}: {error.message}") from error
    if not tf.io.gfile.isdir(path):
        raise NotADirectoryError(f"cannot create the directory {path}: a file of that name exists")


def read_bytes(path):
    """The content of the file `path` (bytes). FileNotFoundError naming it when it does not exist."""
    path = str(path)
    try:
        with tf.io.gfile.GFile(path, "rb") as stream:
            return stream.read()
    except tf.errors.NotFoundError as error:
        raise FileNotFoundError(f"{path}: no such file") from error
    except tf.errors.OpError as error:
        raise OSError(f"cannot read {path}: {error.message}") from error


def read_text(path):
    return read_bytes(path).decode("utf-8")


def read_json(path):
    """The json document in `path`; ValueError naming the file when it is not valid json."""
    try:
        return json.loads(read_bytes(path))
    except ValueError as error:
        raise ValueError(f"{path}: not valid json ({error})") from error


def write_bytes(path, data):
    """Writes `data` (bytes) to `path`, replacing it atomically (see the module docstring);
    creates the parent directory. Raises OSError naming the path when it cannot be written."""
    path = str(path)
    makedirs(parent(path))
    in_place = path.startswith(OBJECT_STORES)
    partial = path if in_place else f"{path}.partial-{uuid.uuid4().hex[:12]}"
    try:
        with tf.io.gfile.GFile(partial, "wb") as stream:
            stream.write(data)
        if not in_place:
            tf.io.gfile.rename(partial, path, overwrite=True)
    except tf.errors.OpError as error:
        raise OSError(f"cannot write {path}: {error.message}") from error
    finally:  # also on KeyboardInterrupt / SIGTERM: never leave the partial file behind
        if not in_place and tf.io.gfile.exists(partial):
            tf.io.gfile.remove(partial)


def write_text(path, text):
    write_bytes(path, text.encode("utf-8"))


def write_json(path, document, indent=1):
    write_text(path, json.dumps(document, indent=indent) + "\n")


def copy(source, target):
    """Copies the file `source` to `target` (either may be remote), replacing it atomically."""
    write_bytes(target, read_bytes(source))
