"""Remote paths: model dirs and files on TensorFlow's in-memory ram:// filesystem, which behaves
for tf.io.gfile, checkpoints and summaries as gs:// or s3:// do, and never a local folder named
after a scheme."""

import os
import uuid

import pytest
import tensorflow as tf

from polarmask_tf import config as cfg
from polarmask_tf import fileio
from polarmask_tf.training import loop

from conftest import synthetic_train_records

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEVNULL = open(os.devnull, "w")


def ram(name):
    return f"ram://{uuid.uuid4().hex[:8]}/{name}"


def no_scheme_folders(*roots):
    return not any(os.path.exists(os.path.join(root, scheme)) for root in roots for scheme in ("ram:", "gs:", "s3:"))


def test_fileio_writes_atomically_and_names_paths(tmp_path):
    for base in (str(tmp_path), ram("files")):
        path = os.path.join(base, "deep", "report.json")
        fileio.write_json(path, {"a": 1})
        fileio.write_json(path, {"a": 2})
        assert fileio.read_json(path) == {"a": 2}
        assert tf.io.gfile.listdir(os.path.join(base, "deep")) == ["report.json"]  # no partial left
        assert fileio.is_file(path) and not fileio.is_file(os.path.join(base, "deep"))
        with pytest.raises(FileNotFoundError, match=r"missing.json: no such file"):
            fileio.read_bytes(os.path.join(base, "missing.json"))
    with pytest.raises(NotADirectoryError, match=r"report.json"):  # ram:// has no such check
        fileio.makedirs(os.path.join(str(tmp_path), "deep", "report.json", "below"))
    assert fileio.absolute("gs://bucket/run") == "gs://bucket/run"
    assert fileio.parent("gs://bucket/run/") == "gs://bucket"
    assert no_scheme_folders(os.getcwd(), str(tmp_path))


@pytest.mark.slow
def test_training_with_its_model_dir_on_ram_resumes_there(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    records = synthetic_train_records(tmp_path, 4, seed=5, min_size=192, max_size=256, num_shards=1)
    overrides = [
        f"data.train_files={records}/train-*.tfrecord", "data.batch_size=2", "data.image_size=[256, 256]",
        "data.max_instances=8", "data.max_vertices=48", "train.warmup_steps=2", "train.decay_steps=[]",
        "train.log_every=1", "train.checkpoint_every=2", "train.total_steps=2",
    ]
    config = cfg.load_config(ROOT + "/configs/quickstart.yaml", overrides)
    model_dir = ram("run")
    loop.Trainer(config, model_dir).train(stream=DEVNULL)
    assert sorted(tf.io.gfile.listdir(model_dir)) >= ["checkpoints", "config.yaml", "labels.json", "train"]
    assert cfg.load_config(os.path.join(model_dir, "config.yaml")) == config
    assert tf.io.gfile.glob(os.path.join(model_dir, "train", "events.out.tfevents.*"))
    resumed = loop.Trainer(cfg.apply_overrides(config, ["train.total_steps=3"]), model_dir)
    history = resumed.train(stream=DEVNULL)
    assert [h["step"] for h in history] == [3]
    assert tf.train.latest_checkpoint(os.path.join(model_dir, "checkpoints")).endswith("ckpt-3")
    assert no_scheme_folders(os.getcwd(), ROOT)
