"""Distributed training: strategies and roles, Mirrored over 2 logical CPUs equal to one device,
two workers on 127.0.0.1, and SIGTERM to a worker followed by a restart."""

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import tensorflow as tf

from polarmask_tf.training import distribute

from conftest import synthetic_train_records

pytestmark = pytest.mark.slow  # end-to-end: exports, conversions, subprocesses; -m "not slow" skips

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, "configs", "quickstart.yaml")


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    """8 synthetic images as two TFRecord shards (one per worker)."""
    return synthetic_train_records(tmp_path_factory.mktemp("distributed"), 8, seed=9, min_size=128, max_size=160,
                                   num_shards=2)


def overrides(records, *extra):
    """A small deterministic run; frozen batch norm, so that replicas share one normalisation (batch
    statistics are per replica, as in the original's per-GPU BN)."""
    return [
        f"data.train_files={records}/train-*.tfrecord", "data.batch_size=4", "data.image_size=[128, 128]",
        "data.hflip_prob=0", "data.deterministic=true", "data.max_instances=8", "data.max_vertices=48",
        "data.jit_targets=false", "model.freeze_batchnorm=true", "model.fpn_channels=32", "model.head_channels=32",
        "model.group_norm_groups=8", "train.warmup_steps=2", "train.decay_steps=[]", "train.log_every=1",
        "train.checkpoint_every=1000", *extra,
    ]


def _free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def _worker_commands(records, model_dir, scratch, *extra, workers=2):
    hosts = ",".join(f"127.0.0.1:{port}" for port in _free_ports(workers))
    return [
        [sys.executable, os.path.join(ROOT, "train_main.py"), f"--config={CONFIG}", f"--model-dir={model_dir}",
         "--strategy=multi_worker", f"--worker-hosts={hosts}", f"--task-index={index}", f"--scratch-dir={scratch}"]
        + [f"--set={o}" for o in overrides(records, *extra)]
        for index in range(workers)
    ]


def _start(commands, tmp_path, tag):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    logs = [open(tmp_path / f"{tag}-{i}.log", "w+") for i in range(len(commands))]
    return [subprocess.Popen(c, stdout=log, stderr=subprocess.STDOUT, text=True, env=env, cwd=ROOT)
            for c, log in zip(commands, logs, strict=True)], logs


def _finish(processes, logs, timeout=300):
    """Waits for every process (killing all of them on timeout); returns (exit codes, outputs)."""
    deadline = time.monotonic() + timeout
    try:
        for process in processes:
            process.wait(timeout=max(deadline - time.monotonic(), 1))
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
    outputs = []
    for log in logs:
        log.seek(0)
        outputs.append(log.read())
        log.close()
    return [p.returncode for p in processes], outputs


def _summary_steps(model_dir, tag="loss/total_loss"):
    steps = []
    for path in sorted(tf.io.gfile.glob(os.path.join(model_dir, "train", "events.out.tfevents.*"))):
        for event in tf.compat.v1.train.summary_iterator(path):
            steps += [event.step for value in event.summary.value if value.tag == tag]
    return steps


def test_tf_config_strategies_and_roles(monkeypatch):
    config = distribute.tf_config(["10.0.0.1:2222", "10.0.0.2:2222"], 1)
    assert config == {"cluster": {"worker": ["10.0.0.1:2222", "10.0.0.2:2222"]}, "task": {"type": "worker", "index": 1}}
    with pytest.raises(ValueError, match="outside the 2 worker hosts"):
        distribute.tf_config(["a:1", "b:2"], 2)
    with pytest.raises(ValueError, match="host:port"):
        distribute.tf_config(["a:1", "b"], 0)
    with pytest.raises(ValueError, match="unknown strategy 'ps'"):
        distribute.make_strategy("ps")
    monkeypatch.delenv("TF_CONFIG", raising=False)
    with pytest.raises(ValueError, match="needs TF_CONFIG"):
        distribute.make_strategy("multi_worker")
    one = distribute.make_strategy("one_device")
    assert isinstance(distribute.make_strategy("auto"), tf.distribute.OneDeviceStrategy)  # no GPUs here
    assert distribute.is_chief(one) and distribute.task(one) == ("worker", 0)


def test_scratch_dirs_are_fresh_private_and_follow_no_planted_link(tmp_path):
    one = distribute.make_strategy("one_device")
    target = tmp_path / "victim"
    target.mkdir()
    for name in ("polarmask-worker-0-", "polarmask-worker-0-a", "polarmask-worker-0-0"):
        (tmp_path / name).symlink_to(target)  # what an attacker would plant at a guessable name
    made = {distribute.scratch_dir(one, str(tmp_path)) for _ in range(3)}
    assert len(made) == 3
    for path in made:
        assert os.path.basename(path).startswith("polarmask-worker-0-") and not os.path.islink(path)
        assert os.stat(path).st_mode & 0o777 == 0o700
    assert not os.listdir(target)
    assert os.path.dirname(distribute.scratch_dir(one, tmp_path.as_uri())) == str(tmp_path)  # file:// root
    with pytest.raises(ValueError, match="must be a local directory"):
        distribute.scratch_dir(one, "gs://bucket/scratch")


def test_a_file_uri_model_dir_is_locked_like_its_path(tmp_path):
    """A file:// model dir (as in the two-worker test below) is local disk: the chief's lock
    (O_EXCL on MODEL_DIR/.training.lock) applies as it does to the plain path."""
    from polarmask_tf import checkpoints

    lock = tmp_path / checkpoints.LOCK_FILE
    lock.write_text(json.dumps({"host": socket.gethostname(), "pid": os.getppid(), "started": 0}))  # a live holder
    with pytest.raises(checkpoints.ModelDirLocked, match="is being trained by process"):
        checkpoints.ModelDirLock(tmp_path.as_uri()).acquire()
    lock.unlink()
    with checkpoints.ModelDirLock(tmp_path.as_uri()):
        assert json.loads(lock.read_text())["pid"] == os.getpid()
    assert not lock.exists()


def test_mirrored_over_two_cpus_equals_one_device(records, tmp_path):
    """Global batch 4 as 2 replicas x 2 images ends with the weights of one device x 4 images after
    3 steps, with the same per-step losses: the normalisation is global."""
    script = textwrap.dedent(f"""
        import json, sys
        import keras, numpy as np, tensorflow as tf
        from polarmask_tf import config as cfg
        from polarmask_tf.training import distribute, loop
        distribute.split_cpu(2)
        config = cfg.load_config({CONFIG!r}, {overrides(records, "train.total_steps=3")!r})
        keras.utils.set_random_seed(0)
        initial = [w.numpy() for w in loop.build_model(config).weights]
        runs = {{}}
        for name, strategy in (("one_device", tf.distribute.OneDeviceStrategy("/cpu:0")),
                               ("mirrored", distribute.make_strategy("mirrored", 2))):
            keras.utils.set_random_seed(0)
            trainer = loop.Trainer(config, {str(tmp_path)!r} + "/" + name, strategy)
            history = trainer.train(stream=open("/dev/null", "w"))
            runs[name] = ([h["total_loss"] for h in history], [w.numpy() for w in trainer.model.weights],
                          strategy.num_replicas_in_sync)
        (l1, w1, r1), (l2, w2, r2) = runs["one_device"], runs["mirrored"]
        try:
            loop.Trainer(cfg.apply_overrides(config, ["data.batch_size=3"]), {str(tmp_path)!r} + "/odd",
                         distribute.make_strategy("mirrored", 2))
            odd = "accepted"
        except ValueError as error:
            odd = str(error)
        print(json.dumps({{"replicas": [r1, r2], "losses": [l1, l2], "weights": len(w1),
                          "max_weight_diff": max(float(np.abs(a - b).max()) for a, b in zip(w1, w2)),
                          "max_change": max(float(np.abs(a - b).max()) for a, b in zip(w1, initial)),
                          "odd": odd}}))
    """)
    ran = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600, cwd=ROOT,
                         env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
    assert ran.returncode == 0, ran.stderr[-3000:]
    result = json.loads(ran.stdout.strip().splitlines()[-1])
    assert result["replicas"] == [1, 2]
    one, mirrored = result["losses"]
    assert len(one) == 3
    np.testing.assert_allclose(mirrored, one, rtol=1e-5)
    assert result["max_weight_diff"] < 1e-5
    assert result["max_change"] > 1e-3  # the weights did move, so the comparison means something
    assert "does not split evenly over 2 replicas" in result["odd"]


def test_two_workers_on_loopback_train_to_identical_weights_and_only_the_chief_writes(records, tmp_path):
    """The model dir is given as a file:// URI, the form of a bucket path (gs://...): it goes through
    tf.io.gfile like one, while the files land on local disk where the test can look at them. (The
    SIGTERM test below gives the plain path.)"""
    model_dir, scratch = tmp_path / "run", tmp_path / "scratch"
    uri = model_dir.as_uri()  # file:///tmp/.../run
    processes, logs = _start(_worker_commands(records, uri, scratch, "train.total_steps=5"), tmp_path, "w")
    codes, outputs = _finish(processes, logs)
    assert codes == [0, 0], outputs
    digests = [line.rsplit("weights ", 1)[1]
               for out in outputs for line in out.splitlines() if line.startswith("done:")]
    assert len(digests) == 2 and digests[0] == digests[1]
    assert "2 replicas, 2 images each; chief" in outputs[0] and "worker 1" in outputs[1]
    assert f"checkpoint {uri}/checkpoints/ckpt-5," in outputs[0]  # the URI is what the workers were given
    assert sorted(os.listdir(model_dir)) == ["checkpoints", "config.yaml", "labels.json", "train"]
    assert tf.train.latest_checkpoint(str(model_dir / "checkpoints")).endswith("ckpt-5")
    assert len(tf.io.gfile.glob(str(model_dir / "train" / "events.out.tfevents.*"))) == 1
    assert _summary_steps(str(model_dir)) == [1, 2, 3, 4, 5]
    assert not os.listdir(scratch)  # worker 1 saved there and cleaned up


def test_sigterm_to_a_worker_saves_everywhere_and_a_restart_resumes_without_losing_a_step(records, tmp_path):
    model_dir, scratch = tmp_path / "run", tmp_path / "scratch"
    processes, logs = _start(_worker_commands(records, model_dir, scratch, "train.total_steps=100000"), tmp_path, "a")
    try:
        deadline = time.monotonic() + 300
        while len(_summary_steps(str(model_dir))) < 3:
            assert time.monotonic() < deadline and all(p.poll() is None for p in processes), "training did not start"
            time.sleep(1.0)
        processes[1].send_signal(signal.SIGTERM)  # the non-chief worker is preempted
    finally:
        codes, outputs = _finish(processes, logs)
    assert codes == [130, 130], outputs
    saved = int(tf.train.latest_checkpoint(str(model_dir / "checkpoints")).rsplit("-", 1)[1])
    assert f"preempted: saved {model_dir}/checkpoints/ckpt-{saved} at step {saved}" in outputs[0]
    assert _summary_steps(str(model_dir)) == list(range(1, saved + 1))

    target = saved + 2
    processes, logs = _start(_worker_commands(records, model_dir, scratch, f"train.total_steps={target}"),
                             tmp_path, "b")
    codes, outputs = _finish(processes, logs)
    assert codes == [0, 0], outputs
    for out in outputs:
        assert f"resumed from {model_dir}/checkpoints/ckpt-{saved} at step {saved}" in out
        assert f"done: step {target}" in out
    assert _summary_steps(str(model_dir)) == list(range(1, target + 1))  # no step lost or repeated
