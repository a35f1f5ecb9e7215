"""The quickstart end to end on a few images and steps."""

import json
import os

import pytest

from polarmask_tf.cli import quickstart

pytestmark = pytest.mark.slow  # end-to-end: exports, conversions, subprocesses; -m "not slow" skips


def test_quickstart_makes_data_trains_and_resumes(tmp_path, capsys):
    data, model_dir = tmp_path / "synthetic", tmp_path / "run"
    overrides = ["--set", f"synthetic.output_dir={data}", "--set", "synthetic.num_images=6", "--set",
                 "synthetic.max_size=256", "--set", "train.total_steps=3", "--set", "data.batch_size=2"]
    assert quickstart.main(["--model-dir", str(model_dir)] + overrides) == 0
    out = capsys.readouterr().out
    assert f"checkpoint: {model_dir}/checkpoints/ckpt-3" in out and "total loss" in out
    labels = json.loads((data / "tfrecords" / "train-labels.json").read_text())
    assert len(labels["categories"]) == 7
    assert sorted(os.listdir(data / "tfrecords")) == [
        "train-00000-of-00002.tfrecord", "train-00001-of-00002.tfrecord", "train-labels.json", "train-report.json",
        "val-00000-of-00002.tfrecord", "val-00001-of-00002.tfrecord", "val-labels.json", "val-report.json",
    ]
    assert quickstart.main(["--model-dir", str(model_dir)] + overrides[:-4]
                           + ["--set", "train.total_steps=4", "--set", "data.batch_size=2"]) == 0
    out = capsys.readouterr().out
    assert "making the synthetic dataset" not in out and "ckpt-4" in out
