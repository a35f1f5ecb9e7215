"""tf.distribute strategies for training, and each process's role in a multi-worker cluster.

    strategy = make_strategy("auto")            # mirrored over the local GPUs when there are several
    write_tf_config(["10.0.0.1:2222", "10.0.0.2:2222"], task_index=0)
    strategy = make_strategy("multi_worker")    # reads TF_CONFIG

Strategies (train_main --strategy):
  one_device    the first GPU, else the CPU.
  mirrored      every local GPU (NCCL all-reduce); without GPUs, the CPU split into cpu_replicas
                logical devices, which tests the multi-replica path on a laptop (no speed-up).
  multi_worker  MultiWorkerMirroredStrategy over the cluster in TF_CONFIG: every GPU of every
                worker, NCCL collectives on GPUs and ring collectives on CPUs.
  auto          mirrored when more than one GPU is visible, else one_device.
The chief (task "chief", or worker 0 when the cluster has no chief) writes checkpoints, summaries
and config.yaml into the model dir; the other workers write their checkpoints to a scratch
directory, because saving is a collective step every worker takes part in.
"""

import json
import os
import tempfile

import tensorflow as tf

STRATEGIES = ("auto", "one_device", "mirrored", "multi_worker")


def split_cpu(num_devices):
    """Splits the physical CPU into `num_devices` logical devices. Must run before TensorFlow
    initialises its devices (before the first op); RuntimeError otherwise."""
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * num_devices)


def tf_config(worker_hosts, task_index):
    """The TF_CONFIG dict of worker `task_index` in a cluster of `worker_hosts` ("host:port" list)."""
    hosts = [host.strip() for host in worker_hosts]
    malformed = [host for host in hosts if not host or ":" not in host or not host.rsplit(":", 1)[1].isdigit()]
    if not hosts or malformed:
        raise ValueError(f"worker hosts must be host:port, got {worker_hosts!r}")
    if not 0 <= task_index < len(hosts):
        raise ValueError(f"task index {task_index} is outside the {len(hosts)} worker hosts {hosts}")
    return {"cluster": {"worker": hosts}, "task": {"type": "worker", "index": int(task_index)}}


def write_tf_config(worker_hosts, task_index):
    """Sets TF_CONFIG for this process (for users without a cluster manager that sets it)."""
    os.environ["TF_CONFIG"] = json.dumps(tf_config(worker_hosts, task_index))


def make_strategy(name="auto", cpu_replicas=1):
    """The tf.distribute strategy called `name` (see the module docstring)."""
    if name not in STRATEGIES:
        raise ValueError(f"unknown strategy {name!r}: use one of {', '.join(STRATEGIES)}")
    gpus = tf.config.list_physical_devices("GPU")
    if name == "auto":
        name = "mirrored" if len(gpus) > 1 else "one_device"
    if name == "multi_worker":
        if not os.environ.get("TF_CONFIG"):
            raise ValueError("strategy multi_worker needs TF_CONFIG, or --worker_hosts and --task_index to write it")
        implementation = (tf.distribute.experimental.CommunicationImplementation.NCCL if gpus
                          else tf.distribute.experimental.CommunicationImplementation.RING)
        return tf.distribute.MultiWorkerMirroredStrategy(
            communication_options=tf.distribute.experimental.CommunicationOptions(implementation=implementation)
        )
    if not gpus and cpu_replicas > 1 and name == "mirrored":
        split_cpu(cpu_replicas)
    if name == "one_device":
        return tf.distribute.OneDeviceStrategy("/gpu:0" if gpus else "/cpu:0")
    devices = [d.name for d in tf.config.list_logical_devices("GPU")] or [
        d.name for d in tf.config.list_logical_devices("CPU")
    ]
    return tf.distribute.MirroredStrategy(devices)


def task(strategy):
    """(task type, task id) of this process, ("worker", 0) outside a multi-worker cluster."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.cluster_spec().as_dict():
        return "worker", 0
    return resolver.task_type, int(resolver.task_id)


def is_chief(strategy):
    """Whether this process writes the model dir: the chief, or worker 0 of a chief-less cluster."""
    resolver = getattr(strategy, "cluster_resolver", None)
    task_type, task_id = task(strategy)
    if resolver is None or not resolver.cluster_spec().as_dict():
        return True
    has_chief = "chief" in resolver.cluster_spec().as_dict()
    return task_type == "chief" or (not has_chief and task_type == "worker" and task_id == 0)


def is_multi_worker(strategy):
    """Whether `strategy` spans several processes (workers of a cluster)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    spec = resolver.cluster_spec().as_dict() if resolver is not None else {}
    return sum(len(tasks) for tasks in spec.values()) > 1


def scratch_dir(strategy, root=None):
    """A new directory for a non-chief worker's writes: ROOT/polarmask-<task>-<id>-<random>, made
    by tempfile.mkdtemp (mode 0700, a fresh name, so nothing planted at a predictable path, such as
    a symlink in /tmp, is followed). ROOT: the system temp dir by default; a local directory, given
    as a path or a file:// URI (ValueError for other URIs: the scratch dir is the worker's own
    disk, e.g. a pod's emptyDir, never shared storage). The worker deletes it when training ends;
    it never restores from it (every worker restores from the model dir)."""
    task_type, task_id = task(strategy)
    root = local_dir(root) if root else None
    if root:
        os.makedirs(root, exist_ok=True)  # local: tempfile.mkdtemp below needs a local directory
    return tempfile.mkdtemp(prefix=f"polarmask-{task_type}-{task_id}-", dir=root)


def local_dir(path):
    """`path` as a local path: a file:// URI's path ("file:///data/x" -> "/data/x"), a plain path
    unchanged. ValueError for any other URI."""
    path = str(path)
    if path.startswith("file:///"):
        return path[len("file://"):]
    if "://" in path:
        raise ValueError(f"--scratch-dir must be a local directory (a path or a file:/// URI), got {path!r}")
    return path
