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

import io
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


def os_error(path, action, error):
    """The OSError subclass for a tf.errors.OpError raised while `action` (e.g. "read") on `path`:
    FileNotFoundError, PermissionError, or OSError; the message names the path. A scheme this
    TensorFlow has no filesystem for says so (s3:// and hdfs:// left TensorFlow for tensorflow-io,
    whose import registers them; this package does not import it)."""
    if isinstance(error, tf.errors.NotFoundError):
        return FileNotFoundError(f"cannot {action} {path}: no such file or directory")
    if isinstance(error, tf.errors.PermissionDeniedError):
        return PermissionError(f"cannot {action} {path}: permission denied")
    if isinstance(error, tf.errors.UnimplementedError):
        scheme = str(path).split("://", 1)[0]
        return OSError(f"cannot {action} {path}: this TensorFlow has no filesystem for {scheme}:// "
                       f"({error.message}; s3:// and hdfs:// are registered by importing tensorflow_io)")
    return OSError(f"cannot {action} {path}: {error.message}")


def makedirs(path):
    """Creates the directory `path` and its parents (no error if it exists). Raises
    NotADirectoryError naming the path when it, or a parent, is a file; PermissionError or OSError
    (see os_error) when it cannot be created otherwise."""
    path = str(path)
    if not path:
        return
    try:
        tf.io.gfile.makedirs(path)
    except (tf.errors.PermissionDeniedError, tf.errors.UnimplementedError) as error:
        raise os_error(path, "create the directory", error) from None
    except tf.errors.OpError as error:
        if not _a_file_in_the_way(path):
            raise os_error(path, "create the directory", error) from None
        raise NotADirectoryError(f"cannot create the directory {path}: it or a parent is a file") from None
    if not tf.io.gfile.isdir(path):
        raise NotADirectoryError(f"cannot create the directory {path}: a file of that name exists")


def _a_file_in_the_way(path):
    """Whether `path` or one of its parents exists and is not a directory."""
    while path and path != parent(path):
        if tf.io.gfile.exists(path):
            return not tf.io.gfile.isdir(path)
        path = parent(path)
    return False


def read_bytes(path):
    """The content of the file `path` (bytes). FileNotFoundError naming it when it does not exist."""
    path = str(path)
    try:
        with tf.io.gfile.GFile(path, "rb") as stream:
            return stream.read()
    except tf.errors.NotFoundError:
        raise FileNotFoundError(f"{path}: no such file") from None
    except tf.errors.OpError as error:
        raise os_error(path, "read", error) from None


def read_text(path):
    return read_bytes(path).decode("utf-8")


def read_json(path):
    """The json document in `path`; ValueError naming the file when it is not valid JSON."""
    try:
        return json.loads(read_bytes(path))
    except ValueError as error:  # JSONDecodeError and UnicodeDecodeError
        raise ValueError(f"{path} is not valid JSON: {error}") from None


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
        raise os_error(path, "write", error) from None
    finally:  # also on KeyboardInterrupt / SIGTERM: never leave the partial file behind
        if not in_place and tf.io.gfile.exists(partial):
            tf.io.gfile.remove(partial)


def write_text(path, text):
    write_bytes(path, text.encode("utf-8"))


def write_json(path, document, indent=1):
    write_text(path, json.dumps(document, indent=indent) + "\n")


def write_figure(path, figure):
    """Saves a matplotlib figure as a PNG at `path` (local or URI) through bytes."""
    png = io.BytesIO()
    figure.savefig(png, format="png")
    write_bytes(path, png.getvalue())


def copy(source, target):
    """Copies the file `source` to `target` (either may be remote), replacing it atomically."""
    write_bytes(target, read_bytes(source))


def list_files(path):
    """(relative path, size in bytes) of every file under the directory `path` (local or URI),
    sorted, the relative paths '/'-separated; [] when `path` does not exist. Through
    tf.io.gfile.walk and stat, so it works on gs://, s3://, hdfs:// and ram:// alike. Listed names
    that do not exist are skipped: ram:// lists children by name prefix (a directory "assets"
    beside "assets.extra/x" lists a phantom ".extra")."""
    top = str(path)
    top = top.rstrip("/") or top
    found = []
    for root, _, names in tf.io.gfile.walk(top):
        relative = str(root)[len(top):].strip("/")
        for name in names:
            name = str(name).rstrip("/")
            try:
                size = tf.io.gfile.stat(os.path.join(str(root), name)).length
            except tf.errors.NotFoundError:
                continue
            found.append((f"{relative}/{name}" if relative else name, size))
    return sorted(found)


def remove_tree(path):
    """Deletes `path` (local or URI) and, when it is a directory, everything under it; nothing to
    do when it does not exist. Raises OSError (see os_error) naming the path when it cannot.
    Where tf.io.gfile.rmtree trips over a listed name that does not exist (ram://, see
    list_files), the entries are deleted one by one, longest path first."""
    path = str(path)
    try:
        if not tf.io.gfile.exists(path):
            return
        if not tf.io.gfile.isdir(path):
            tf.io.gfile.remove(path)
            return
        try:
            tf.io.gfile.rmtree(path)
        except tf.errors.NotFoundError:
            _remove_entries(path)
    except tf.errors.NotFoundError:
        pass
    except tf.errors.OpError as error:
        raise os_error(path, "delete", error) from None


def _remove_entries(path):
    """remove_tree's fallback: every existing file and directory under `path`, and `path`, deleted
    in reverse name order (so "a.b" goes before "a", and children before their parent)."""
    entries = {path.rstrip("/") or path}
    for root, dirs, names in tf.io.gfile.walk(path):
        entries.update(os.path.join(str(root), str(name).rstrip("/")) for name in list(dirs) + list(names))
    for entry in sorted(entries, reverse=True):
        if not tf.io.gfile.exists(entry):
            continue
        if tf.io.gfile.isdir(entry):
            try:
                tf.io.gfile.rmtree(entry)
            except tf.errors.NotFoundError:  # still a phantom child listed: delete the entry alone
                tf.io.gfile.remove(entry)
        else:
            tf.io.gfile.remove(entry)
