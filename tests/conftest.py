"""Shared test fixtures: the spec's test vectors, its synthetic masks and the shared data folder."""

import json
import os
import pathlib

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

TESTS_DIR = pathlib.Path(__file__).resolve().parent
SPEC_VECTORS = TESTS_DIR / "data" / "spec_test_vectors.json"
SHARED_DIR = pathlib.Path(os.environ.get("POLARMASK_SHARED", TESTS_DIR.parent.parent / "shared"))


@pytest.fixture(scope="session")
def spec_vectors():
    """shared/reference/test_vectors.json, copied into tests/data."""
    with open(SPEC_VECTORS) as stream:
        return json.load(stream)


def spec_mask(name, size=100):
    """The spec's section 8 masks, uint8 [size, size]; `size` 400 gives the 4x versions (TV10b)."""
    k = size // 100
    yy, xx = np.mgrid[:size, :size]
    mask = np.zeros((size, size), np.uint8)
    if name == "square":
        mask[20 * k : 60 * k, 30 * k : 70 * k] = 1
    elif name == "circle":
        mask[(xx - 50 * k) ** 2 + (yy - 50 * k) ** 2 <= 625 * k * k] = 1
    elif name == "ellipse":
        mask[((xx - 50 * k) / (40 * k)) ** 2 + ((yy - 50 * k) / (15 * k)) ** 2 <= 1] = 1
    elif name == "donut":
        d = (xx - 50 * k) ** 2 + (yy - 50 * k) ** 2
        mask[(d > 225 * k * k) & (d <= 900 * k * k)] = 1
    elif name == "L":
        mask[20 * k : 80 * k, 20 * k : 40 * k] = 1
        mask[60 * k : 80 * k, 20 * k : 80 * k] = 1
    elif name == "wide_rect":
        mask[30 * k : 50 * k, 10 * k : 90 * k] = 1
    elif name == "U":
        mask[20 * k : 80 * k, 20 * k : 35 * k] = 1
        mask[20 * k : 80 * k, 65 * k : 80 * k] = 1
        mask[65 * k : 80 * k, 20 * k : 80 * k] = 1
    else:
        raise KeyError(name)
    return mask


def shared_path(*parts):
    """A path under ../shared, or a pytest skip naming what is missing."""
    path = SHARED_DIR.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} is absent (tests that use ../shared data skip without it; set POLARMASK_SHARED)")
    return path


def scheme_named_entries(*directories):
    """Entries of local `directories` whose names start like a URI scheme ("ram:", "gs:", "s3:"):
    what code that treats a URI as a local path (os.makedirs("gs://b/x")) leaves behind."""
    return [os.path.join(str(d), name) for d in directories for name in os.listdir(d)
            if name.startswith(("ram:", "gs:", "s3:"))]


def synthetic_train_records(root, num_images, seed, min_size, max_size, num_shards):
    """A synthetic dataset under ROOT/synthetic (all train) as TFRecord shards ROOT/records/train-*;
    returns ROOT/records."""
    from polarmask_tf.data import records_writer, synthetic

    synthetic.generate_dataset(root / "synthetic", num_images=num_images, seed=seed, val_fraction=0.0,
                               min_size=min_size, max_size=max_size)
    with open(os.devnull, "w") as quiet:
        records_writer.convert(
            str(root / "synthetic" / "annotations" / "instances_train.json"), str(root / "synthetic" / "train"),
            str(root / "records" / "train"), num_shards=num_shards, progress_stream=quiet,
        )
    return root / "records"
