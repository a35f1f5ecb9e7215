"""Remote paths: model dirs and files on TensorFlow's in-memory ram:// filesystem, which behaves
for tf.io.gfile, checkpoints and summaries as gs:// or s3:// do, and never a local folder named
after a scheme."""

import io
import os
import uuid

import pytest
import tensorflow as tf

from polarmask_tf import config as cfg
from polarmask_tf import fileio
from polarmask_tf.cli import evaluate as evaluate_cli
from polarmask_tf.data import coco, pipeline, records_writer, synthetic
from polarmask_tf.training import loop

from conftest import scheme_named_entries, synthetic_train_records

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEVNULL = open(os.devnull, "w")


def ram(name):
    return f"ram://{uuid.uuid4().hex[:8]}/{name}"


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
    assert not scheme_named_entries(os.getcwd(), str(tmp_path))


def test_fileio_errors_name_the_path_and_the_missing_filesystem(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotADirectoryError, match=r"file/below: it or a parent is a file"):
        fileio.makedirs(str(tmp_path / "file" / "below"))
    with pytest.raises(OSError, match=r"s3://bucket/run: this TensorFlow has no filesystem for s3://"):
        fileio.write_text("s3://bucket/run/config.yaml", "")
    with pytest.raises(ValueError, match=r"bad.json is not valid JSON"):
        fileio.write_text(str(tmp_path / "bad.json"), "{")
        fileio.read_json(str(tmp_path / "bad.json"))


@pytest.fixture(scope="module")
def ram_dataset():
    """A synthetic COCO dataset (5 train + 2 val images) generated straight onto ram://."""
    root = ram("synthetic")
    written = synthetic.generate_dataset(root, num_images=7, seed=3, val_fraction=0.3, min_size=160, max_size=224)
    return root, written


def test_conversion_reads_and_writes_ram_and_the_pipeline_reads_it_back(ram_dataset, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    root, written = ram_dataset
    prefix = ram("records") + "/train"
    report = records_writer.convert(f"{root}/annotations/instances_train.json", f"{root}/train", prefix,
                                    num_shards=2, num_workers=0, progress_stream=DEVNULL)
    assert report["images"]["written"] == written["num_images"]["train"] == 5
    assert sorted(tf.io.gfile.listdir(fileio.parent(prefix))) == [
        "train-00000-of-00002.tfrecord", "train-00001-of-00002.tfrecord", "train-labels.json", "train-report.json"]
    assert fileio.read_json(prefix + "-report.json") == report
    assert coco.read_label_map(prefix + "-labels.json").num_classes == report["num_classes"]
    with pytest.raises(records_writer.OutputExistsError, match=r"ram://.*train-00000-of-00002.tfrecord"):
        records_writer.convert(f"{root}/annotations/instances_train.json", f"{root}/train", prefix, num_shards=2,
                               num_workers=0, progress_stream=DEVNULL)
    records_writer.convert(f"{root}/annotations/instances_train.json", f"{root}/train", prefix, num_shards=1,
                           num_workers=0, progress_stream=DEVNULL, overwrite=True)  # old shard count removed
    assert pipeline.list_shards(prefix + "-*.tfrecord") == [prefix + "-00000-of-00001.tfrecord"]
    config = cfg.load_config(ROOT + "/configs/quickstart.yaml", [
        f"data.val_files={prefix}-*.tfrecord", "data.batch_size=1", "data.image_size=[256, 256]"])
    batches = list(pipeline.build_dataset(config, training=False))
    assert len(batches) == 5
    assert sorted(int(targets["image_id"][0]) for _, targets in batches) == [1, 2, 3, 4, 5]
    assert not scheme_named_entries(os.getcwd(), ROOT)


@pytest.mark.slow
def test_training_with_its_model_dir_on_ram_resumes_and_evaluates_there(ram_dataset, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    root, _ = ram_dataset
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
    out = io.StringIO()
    status = evaluate_cli.main(["--model-dir", model_dir, "--annotations", f"{root}/annotations/instances_val.json",
                                "--images-dir", f"{root}/val", "--output-dir", f"{model_dir}/eval"], stream=out)
    assert status == 0, out.getvalue()
    metrics = fileio.read_json(f"{model_dir}/eval/metrics.json")
    assert metrics["num_images"] == 2 and metrics["checkpoint"].startswith("ram://")
    assert metrics["config"] == os.path.join(model_dir, "config.yaml")
    assert isinstance(fileio.read_json(f"{model_dir}/eval/results.json"), list)
    assert not scheme_named_entries(os.getcwd(), ROOT)
