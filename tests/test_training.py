"""Training: schedule, optimiser, learning on synthetic images, resume after interruption, errors."""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf

from polarmask_tf import checkpoints
from polarmask_tf import config as cfg
from polarmask_tf.training import loop, optimization

from conftest import synthetic_train_records

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEVNULL = open(os.devnull, "w")


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    """4 synthetic images (192-256 px) as one TFRecord shard."""
    return synthetic_train_records(tmp_path_factory.mktemp("train"), 4, seed=5, min_size=192, max_size=256,
                                   num_shards=1)


def tiny_overrides(records, *extra):
    return [
        f"data.train_files={records}/train-*.tfrecord",
        "data.batch_size=4", "data.image_size=[256, 256]", "data.hflip_prob=0", "data.deterministic=true",
        "data.max_instances=8", "data.max_vertices=48",
        "train.warmup_steps=20", "train.decay_steps=[]", "train.log_every=50", "train.checkpoint_every=1000",
        *extra,
    ]


def test_warmup_then_step_decay():
    schedule = optimization.WarmupStepDecay(0.01, 100, 1 / 3, (1000, 2000), 0.1)
    rates = [float(schedule(s)) for s in (0, 50, 100, 999, 1000, 1999, 2000)]
    np.testing.assert_allclose(rates, [0.01 / 3, 0.01 * (1 / 3 + 2 / 3 * 0.5), 0.01, 0.01, 0.001, 0.001, 0.0001],
                               rtol=1e-6)


def test_weight_decay_skips_biases_and_norm_parameters():
    import keras

    optimizer = optimization.build_optimizer(cfg.TrainConfig())
    layers = [keras.layers.Dense(3, name="d"), keras.layers.GroupNormalization(1, name="g")]
    model = keras.Sequential([keras.Input((4,))] + layers, name="probe")
    optimizer.build(model.trainable_variables)
    decayed = {v.path: optimizer._use_weight_decay(v) for v in model.trainable_variables}
    assert decayed == {"probe/d/kernel": True, "probe/d/bias": False, "probe/g/gamma": False,
                       "probe/g/beta": False}


@pytest.mark.slow
def test_tiny_model_learns_on_four_synthetic_images(records, tmp_path):
    config = cfg.load_config(ROOT + "/configs/quickstart.yaml", tiny_overrides(records, "train.total_steps=200"))
    history = loop.Trainer(config, str(tmp_path / "run")).train(stream=DEVNULL)
    assert len(history) == 200
    first = {k: np.mean([h[k] for h in history[:10]]) for k in loop.LOSS_NAMES}
    last = {k: np.mean([h[k] for h in history[-10:]]) for k in loop.LOSS_NAMES}
    assert last["total_loss"] <= 0.4 * first["total_loss"], (first, last)  # 0.31 measured
    for name in loop.LOSS_NAMES:
        assert last[name] < first[name], (name, first[name], last[name])
    assert all(h["positives_per_image"] > 0 for h in history)
    assert os.path.exists(tmp_path / "run" / "checkpoints" / "ckpt-200.index")
    assert tf.io.gfile.glob(str(tmp_path / "run" / "train" / "events.out.tfevents.*"))


@pytest.mark.slow
def test_mixed_float16_training_moves_the_loss_scale_and_learns(records, tmp_path):
    """A real run through the LossScaleOptimizer: the dynamic scale starts at 2**15 and is halved on
    each step whose float16 gradients overflow; such a step is skipped (not counted, run again) and
    the loss still falls. Small images and channels: float16 convolutions are ~90x slower than
    float32 on this CPU (docs/benchmarks.md)."""
    steps = 150
    config = cfg.load_config(ROOT + "/configs/quickstart.yaml", tiny_overrides(
        records, f"train.total_steps={steps}", "train.mixed_precision=mixed_float16", "data.image_size=[64, 64]",
        "data.batch_size=2", "model.fpn_channels=32", "model.head_channels=32", "model.group_norm_groups=8",
        "train.log_every=10"))
    trainer = loop.Trainer(config, str(tmp_path / "run"))
    history = trainer.train(stream=DEVNULL)
    scales = [h["loss_scale"] for h in history]
    skipped = [h for h in history if h["skipped"]]
    assert scales[0] == 2.0**15
    assert skipped and min(scales) < scales[0], "the loss scale never moved"
    pairs = zip(scales[:-1], scales[1:], strict=True)
    assert all(b in (a, a / 2) for a, b in pairs), "a scale changed other than by halving"
    assert [h["step"] for h in history if not h["skipped"]] == list(range(1, steps + 1))
    assert len(history) == steps + len(skipped) and trainer.step == steps
    first, last = (np.mean([h["total_loss"] for h in window]) for window in (history[:20], history[-20:]))
    assert last <= 0.6 * first, (first, last)
    events = tf.io.gfile.glob(str(tmp_path / "run" / "train" / "events.out.tfevents.*"))
    tags = {value.tag for event in tf.compat.v1.train.summary_iterator(events[0]) for value in event.summary.value}
    assert "loss_scale" in tags


def _train_command(config_path, model_dir, *overrides):
    command = [sys.executable, os.path.join(ROOT, "train_main.py"), f"--config={config_path}",
               f"--model-dir={model_dir}"]
    return command + [f"--set={o}" for o in overrides]


def _wait_for_checkpoint(model_dir, process, timeout=240):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if tf.train.latest_checkpoint(os.path.join(model_dir, "checkpoints")):
            return
        if process.poll() is not None:
            raise AssertionError(f"training exited early: {process.communicate()}")
        time.sleep(0.5)
    process.kill()
    raise AssertionError("no checkpoint appeared")


@pytest.mark.slow
@pytest.mark.parametrize("how", ["sigint", "sigkill"])
def test_interrupted_training_resumes_at_the_saved_step(records, tmp_path, how):
    config_path = ROOT + "/configs/quickstart.yaml"
    model_dir = str(tmp_path / "run")
    overrides = tiny_overrides(records, "train.total_steps=100000", "train.checkpoint_every=5")
    process = subprocess.Popen(_train_command(config_path, model_dir, *overrides), stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    try:
        _wait_for_checkpoint(model_dir, process)
        time.sleep(1.0)
        process.send_signal(signal.SIGINT if how == "sigint" else signal.SIGKILL)
        out, err = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
    saved = int(tf.train.latest_checkpoint(os.path.join(model_dir, "checkpoints")).rsplit("-", 1)[1])
    if how == "sigint":
        assert process.returncode == 130
        assert f"interrupted: saved {model_dir}/checkpoints/ckpt-{saved} at step {saved}" in out  # where it stopped
    target = saved + 3
    result = subprocess.run(_train_command(config_path, model_dir,
                                           *tiny_overrides(records, f"train.total_steps={target}")),
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"resumed from {model_dir}/checkpoints/ckpt-{saved} at step {saved}" in result.stdout
    assert f"done: step {target}" in result.stdout


@pytest.mark.slow
def test_a_diverging_run_stops_and_keeps_the_last_good_checkpoint(records, tmp_path):
    model_dir = str(tmp_path / "run")
    config = cfg.load_config(
        ROOT + "/configs/quickstart.yaml",
        tiny_overrides(records, "train.total_steps=60", "train.checkpoint_every=2", "train.warmup_steps=0",
                       "train.base_learning_rate=1e4", "train.clip_norm=0"),
    )
    trainer = loop.Trainer(config, model_dir)
    with pytest.raises(loop.NonFiniteLossError, match="the loss is not finite") as error:
        trainer.train(stream=DEVNULL)
    latest = tf.train.latest_checkpoint(os.path.join(model_dir, "checkpoints"))
    assert latest is not None and str(latest) in str(error.value)
    restored = loop.Trainer(config, model_dir)
    restored.restore()
    assert all(np.all(np.isfinite(v.numpy())) for v in restored.model.weights)
    assert restored.step == int(latest.rsplit("-", 1)[1]) < 60


@pytest.mark.slow
def test_errors_name_the_problem(records, tmp_path):
    with pytest.raises(cfg.ConfigError, match="unknown key 'train.steps'"):
        cfg.load_config(ROOT + "/configs/quickstart.yaml", ["train.steps=5"])
    with pytest.raises(cfg.ConfigError, match="train.total_steps: expected int, got str"):
        cfg.load_config(ROOT + "/configs/quickstart.yaml", ["train.total_steps=many"])
    config = cfg.load_config(
        ROOT + "/configs/polarmask_mnv2_coco_subset.yaml", [f"model.backbone_weights={tmp_path}/missing.weights.h5"]
    )
    with pytest.raises(FileNotFoundError, match="missing.weights.h5"):
        loop.Trainer(config, str(tmp_path / "run_weights"))
    model_dir = str(tmp_path / "run")
    small = cfg.load_config(ROOT + "/configs/quickstart.yaml", tiny_overrides(records, "train.total_steps=1"))
    loop.Trainer(small, model_dir).train(stream=DEVNULL)
    other = cfg.load_config(ROOT + "/configs/quickstart.yaml", tiny_overrides(records, "model.head_channels=32"))
    with pytest.raises(loop.ArchitectureMismatchError, match="model.head_channels: 64 there, 32 here"):
        loop.Trainer(other, model_dir)


@pytest.mark.slow
def test_train_main_reports_errors_with_exit_code_2(tmp_path):
    result = subprocess.run(
        _train_command(ROOT + "/configs/quickstart.yaml", str(tmp_path / "run"), "train.total_steps=abc"),
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 2
    # the last line: TensorFlow may print its own start-up lines to stderr before (oneDNN on some CPUs)
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and "train.total_steps: expected int, got str 'abc'" in last


@pytest.mark.slow
def test_periodic_evaluation_writes_ap_to_tensorboard(records, tmp_path):
    from polarmask_tf.training import curves

    synthetic_dir = records.parent / "synthetic"
    config = cfg.load_config(
        ROOT + "/configs/quickstart.yaml",
        tiny_overrides(records, "train.total_steps=4", "train.eval_every=2", "train.log_every=2",
                       f"train.eval_annotations={synthetic_dir}/annotations/instances_train.json",
                       f"train.eval_images_dir={synthetic_dir}/train"),
    )
    loop.Trainer(config, str(tmp_path / "run")).train(stream=DEVNULL)
    scalars = curves.read_scalars(str(tmp_path / "run"))
    assert [step for step, _ in scalars["eval/segm/AP"]] == [2, 4]
    assert all(0.0 <= value <= 1.0 for _, value in scalars["eval/bbox/AP50"])
    with pytest.raises(cfg.ConfigError, match="train.eval_every: needs train.eval_annotations"):
        cfg.load_config(ROOT + "/configs/quickstart.yaml", tiny_overrides(records, "train.eval_every=5"))


@pytest.mark.slow
def test_a_trained_checkpoint_loads_for_inference_with_identical_outputs(records, tmp_path):
    from polarmask_tf import inference

    config = cfg.load_config(ROOT + "/configs/quickstart.yaml", tiny_overrides(records, "train.total_steps=2"))
    trainer = loop.Trainer(config, str(tmp_path / "run"))
    trainer.train(stream=DEVNULL)
    loaded = inference.load_model(config, str(tmp_path / "run"))
    images = tf.random.uniform([1, 256, 256, 3], -1, 1, seed=1)
    expected, got = trainer.model(images), loaded(images)
    for key in expected:
        np.testing.assert_allclose(got[key], expected[key], rtol=1e-5, atol=1e-5)
    trained = {v.path: v.numpy() for v in trainer.model.weights}
    assert all(np.array_equal(trained[v.path], v.numpy()) for v in loaded.weights)


def test_init_checkpoint_copies_all_but_a_resized_class_conv_and_refuses_another_network(tmp_path):
    """train.init_checkpoint (fine-tuning): num_classes may differ, head_channels may not."""
    base = ["model.backbone=tiny", "model.backbone_weights=null", "model.fpn_channels=16", "model.head_channels=16",
            "model.head_convs=1", "model.group_norm_groups=4", "model.num_classes=5"]
    source_config = cfg.load_config(os.path.join(ROOT, "configs", "quickstart.yaml"), base)
    source, _ = loop.build_training_state(source_config)
    (tmp_path / "source").mkdir()
    cfg.dump_config(source_config, str(tmp_path / "source" / "config.yaml"))
    tf.train.Checkpoint(model=source).save(str(tmp_path / "source" / "checkpoints" / "ckpt"))

    target_config = cfg.apply_overrides(source_config, ["model.num_classes=3"])
    target, _ = loop.build_training_state(target_config)
    fresh = loop.initialize_from(target, target_config, str(tmp_path / "source"))
    assert fresh == ["head/cls_logits/kernel", "head/cls_logits/bias"]
    for mine, theirs in zip(target.weights, source.weights, strict=True):
        if "cls_logits" not in mine.path:
            np.testing.assert_array_equal(mine.numpy(), theirs.numpy(), err_msg=mine.path)
    other = cfg.apply_overrides(source_config, ["model.head_channels=8"])
    with pytest.raises(loop.ArchitectureMismatchError, match="model.head_channels: 16 there, 8 here"):
        loop.initialize_from(loop.build_training_state(other)[0], other, str(tmp_path / "source"))


@pytest.fixture(scope="module")
def three_checkpoints(records, tmp_path_factory):
    """A tiny model trained 3 steps with a checkpoint after each: MODEL_DIR/checkpoints/ckpt-{1,2,3}."""
    model_dir = tmp_path_factory.mktemp("ckpts") / "run"
    config = cfg.load_config(ROOT + "/configs/quickstart.yaml", tiny_overrides(
        records, "train.total_steps=3", "train.checkpoint_every=1", "train.keep_checkpoints=5"))
    loop.Trainer(config, str(model_dir)).train(stream=DEVNULL)
    return config, model_dir


def _copy(three_checkpoints, tmp_path):
    import shutil

    config, model_dir = three_checkpoints
    copy = tmp_path / "run"
    shutil.copytree(model_dir, copy)
    return config, copy


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["index", "data", "truncated", "state"])
def test_a_damaged_newest_checkpoint_resumes_from_the_next_and_deletes_nothing(three_checkpoints, tmp_path, damage):
    config, run = _copy(three_checkpoints, tmp_path)
    ckpts = run / "checkpoints"
    data = next(ckpts.glob("ckpt-3.data-*"))
    if damage == "index":
        (ckpts / "ckpt-3.index").unlink()
    elif damage == "data":
        data.unlink()
    elif damage == "truncated":
        data.write_bytes(data.read_bytes()[: data.stat().st_size // 2])
    else:
        (ckpts / "checkpoint").unlink()
    trainer = loop.Trainer(config, str(run))
    restored = trainer.restore()
    expected = 3 if damage == "state" else 2
    assert restored == str(ckpts / f"ckpt-{expected}") and trainer.step == expected
    if damage in ("data", "truncated"):  # the unreadable one is kept, aside
        assert list((ckpts / "broken").glob("ckpt-3.*")) and not list(ckpts.glob("ckpt-3.*"))
    assert tf.train.latest_checkpoint(str(ckpts)) == restored  # the state file tells the truth again
    assert {p.name for p in ckpts.glob("ckpt-1.*")} and {p.name for p in ckpts.glob("ckpt-2.*")}


@pytest.mark.slow
def test_checkpoints_that_all_fail_stop_training_instead_of_starting_over(three_checkpoints, tmp_path):
    config, run = _copy(three_checkpoints, tmp_path)
    ckpts = run / "checkpoints"
    for index in ckpts.glob("*.index"):
        index.unlink()
    before = sorted(p.name for p in ckpts.iterdir())
    with pytest.raises(checkpoints.CheckpointError, match="holds checkpoints but none can be restored"):
        loop.Trainer(config, str(run)).train(stream=DEVNULL)
    assert sorted(p.name for p in ckpts.iterdir()) == before


@pytest.mark.slow
def test_a_second_training_in_the_same_model_dir_is_refused(three_checkpoints, tmp_path):
    config, run = _copy(three_checkpoints, tmp_path)
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        lock = run / checkpoints.LOCK_FILE
        lock.write_text(json.dumps({"host": socket.gethostname(), "pid": holder.pid, "started": time.time()}))
        config_before = (run / "config.yaml").read_text()
        with pytest.raises(checkpoints.ModelDirLocked, match=f"being trained by process {holder.pid}"):
            loop.Trainer(cfg.apply_overrides(config, ["train.total_steps=9"]), str(run))
        assert (run / "config.yaml").read_text() == config_before  # refused before writing anything
    finally:
        holder.kill()
        holder.wait()
    trainer = loop.Trainer(config, str(run))  # the holder is gone: its lock is stale and taken over
    assert trainer._lock.taken_over["pid"] == holder.pid
    trainer.train(stream=DEVNULL)
    assert not lock.exists()  # released when training ends


def test_fewer_classes_than_the_records_label_is_refused_before_anything_is_written(records, tmp_path):
    config = cfg.load_config(ROOT + "/configs/quickstart.yaml", tiny_overrides(records, "model.num_classes=3"))
    with pytest.raises(cfg.ConfigError, match=r"model.num_classes: 3, but the training records use labels 1..7 "
                                              r"\(.*train-labels.json\): set model.num_classes=7"):
        loop.Trainer(config, str(tmp_path / "run"))
    assert not (tmp_path / "run" / "config.yaml").exists()
