"""A model dir's checkpoints: finding the ones that can be read, and one training at a time.

    candidates = list_checkpoints("runs/x/checkpoints")      # [(step, prefix)], newest first
    with ModelDirLock("runs/x"):                              # refuses while another training runs
        ...

Why not just `tf.train.latest_checkpoint`: it reads only the `checkpoint` state file, so a missing
state file or a newest checkpoint whose `.index` is gone reads as "no checkpoint", and a training
would start again from step 0 (then rotate away the intact older checkpoints). Here every
`ckpt-N.index` in the directory is a candidate, whatever the state file says, and files that look
like checkpoint data without any index are reported, never ignored.

Nothing here deletes a checkpoint: broken ones are moved into `checkpoints/broken/`.
"""

import json
import os
import re
import socket
import time

import tensorflow as tf

_PREFIX = re.compile(r"^ckpt-(\d+)\.index$")
BROKEN_DIR = "broken"
LOCK_FILE = ".training.lock"


class CheckpointError(RuntimeError):
    """The model dir holds checkpoint files but none that can be restored."""


class ModelDirLocked(RuntimeError):
    """Another training holds the model dir."""


def list_checkpoints(directory):
    """[(step, prefix)] of every checkpoint with an index file in `directory`, newest first."""
    if not tf.io.gfile.isdir(directory):
        return []
    found = []
    for name in tf.io.gfile.listdir(directory):
        match = _PREFIX.match(name)
        if match:
            found.append((int(match.group(1)), os.path.join(directory, name[: -len(".index")])))
    return sorted(found, reverse=True)


def stray_checkpoint_files(directory):
    """Checkpoint data files (`*.data-*`) in `directory` whose prefix has no index file."""
    if not tf.io.gfile.isdir(directory):
        return []
    indexed = {prefix for _, prefix in list_checkpoints(directory)}
    return sorted(os.path.join(directory, name) for name in tf.io.gfile.listdir(directory)
                  if ".data-" in name and os.path.join(directory, name.split(".data-")[0]) not in indexed)


def holds_checkpoints(directory):
    """Whether `directory` holds anything that looks like a checkpoint (indexed or not)."""
    return bool(list_checkpoints(directory) or stray_checkpoint_files(directory))


def latest_checkpoint(directory):
    """The newest checkpoint prefix with an index file, or None (see the module docstring)."""
    found = list_checkpoints(directory)
    return found[0][1] if found else None


def set_aside(prefix):
    """Moves every file of checkpoint `prefix` into <its dir>/broken/ (kept, not deleted); returns
    the new prefix."""
    directory, name = os.path.split(prefix)
    target = os.path.join(directory, BROKEN_DIR)
    tf.io.gfile.makedirs(target)
    for path in tf.io.gfile.glob(prefix + ".*"):
        tf.io.gfile.rename(path, os.path.join(target, os.path.basename(path)), overwrite=True)
    return os.path.join(target, name)


def write_state(directory, prefixes):
    """Rewrites `directory`/checkpoint so that it lists `prefixes` (oldest first), the way
    tf.train.CheckpointManager reads it."""
    if prefixes:
        tf.compat.v1.train.update_checkpoint_state(directory, prefixes[-1], all_model_checkpoint_paths=prefixes)


def _pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by someone else
        return True
    return True


class ModelDirLock:
    """An exclusive lock on a model dir for one training: MODEL_DIR/.training.lock, created with
    O_EXCL and holding {"host", "pid", "started"}. This process may take it again (re-entrant); a
    lock left by a process of this host that no longer runs (kill -9) is taken over (`taken_over`
    holds the old record); any other held lock raises ModelDirLocked,
    naming the holder and the file to delete if it is stale. Local and network file systems with
    O_EXCL only (an object store gives no exclusive create: there the lock is advisory)."""

    def __init__(self, model_dir):
        model_dir = str(model_dir)
        if model_dir.startswith("file:///"):  # a local directory as a URI: locked like its path
            model_dir = model_dir[len("file://"):]
        self.path = os.path.join(model_dir, LOCK_FILE)
        self.taken_over = None

    def _holder(self):
        try:
            with open(self.path) as stream:  # local: the lock is skipped for URIs
                return json.load(stream)
        except (OSError, ValueError):
            return None

    def acquire(self):
        if "://" in self.path:  # object stores and remote file systems: no exclusive create
            return self
        record = json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "started": time.time()})
        for _ in range(2):
            try:
                descriptor = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)  # local: O_EXCL
            except FileExistsError:
                holder = self._holder()
                here = holder is not None and holder.get("host") == socket.gethostname()
                pid = holder.get("pid") if holder else None
                if here and pid == os.getpid():  # this process already holds it
                    return self
                stale = here and isinstance(pid, int) and not _pid_alive(pid)
                if not stale:
                    who = (f"process {holder.get('pid')} on {holder.get('host')} since "
                           f"{time.ctime(holder.get('started', 0))}" if holder else "an unreadable lock")
                    raise ModelDirLocked(
                        f"{os.path.dirname(self.path)} is being trained by {who}: two trainings in one model dir "
                        f"would overwrite each other's checkpoints. Wait for it, use another --model-dir, or, if "
                        f"that training is not running any more, delete {self.path}"
                    ) from None
                self.taken_over = holder
                os.remove(self.path)  # local: as above
                continue
            with os.fdopen(descriptor, "w") as stream:
                stream.write(record)
            return self
        raise ModelDirLocked(f"could not take {self.path}")

    def release(self):
        if "://" in self.path:
            return
        holder = self._holder()
        if holder and holder.get("pid") == os.getpid() and holder.get("host") == socket.gethostname():
            os.remove(self.path)  # local: as above

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()
        return False
