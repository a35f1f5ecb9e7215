"""PolarMask losses: spec TV7 values, the jitted Polar IoU loss, empty batches, mixed precision,
batch-split invariance under global normalisers and properties of the Polar IoU loss."""

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow as tf
from hypothesis import given, settings
from hypothesis import strategies as st

from polarmask_tf import geometry, losses

LOSS_KEYS = ("cls_loss", "ray_loss", "box_loss", "centerness_loss", "total_loss")
POSITIVE_ONLY = ("ray_loss", "box_loss", "centerness_loss")


def random_batch(seed, batch=2, points=30, classes=3, rays=8, positive_fraction=0.3, positives=True):
    """Random head outputs and pipeline-like targets (zeros at negatives), numpy float32."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(1, classes + 1, (batch, points)).astype(np.int32)
    if positives:
        labels[rng.random((batch, points)) >= positive_fraction] = 0
        labels[:, 0] = 1  # at least one positive per image
    else:
        labels[:] = 0
    positive = labels > 0
    target_rays = rng.uniform(1.0, 60.0, (batch, points, rays)).astype(np.float32)
    target_rays[rng.random(target_rays.shape) < 0.05] = 1e-6  # the encoder's minimum ray
    target_rays[~positive] = 0.0
    target_boxes = np.where(positive[..., None], rng.uniform(0.0, 60.0, (batch, points, 4)), 0.0).astype(np.float32)
    centerness = geometry.polar_centerness(target_rays).numpy()
    targets = {"labels": labels, "rays": target_rays, "boxes": target_boxes, "centerness": centerness}
    outputs = {
        "cls_logits": rng.normal(-2.0, 2.0, (batch, points, classes)).astype(np.float32),
        "centerness": rng.normal(0.0, 2.0, (batch, points)).astype(np.float32),
        "boxes": np.exp(rng.normal(2.5, 1.0, (batch, points, 4))).astype(np.float32),
        "rays": np.exp(rng.normal(2.5, 1.0, (batch, points, rays))).astype(np.float32),
    }
    return outputs, targets


def as_floats(result):
    return {k: float(v) for k, v in result.items()}


# ------------------------------------------------------------------ spec TV7


@pytest.mark.parametrize("jit", [True, False])
def test_polar_iou_loss_tv7(spec_vectors, jit):
    tv = spec_vectors["losses"]["polar_iou"]
    centerness = geometry.polar_centerness(np.array(tv["targets"], np.float32)).numpy()
    np.testing.assert_allclose(centerness, tv["centerness_targets"], atol=1e-6)
    per_sample = losses.polar_iou_per_sample(tv["preds"], tv["targets"]).numpy()
    np.testing.assert_allclose(per_sample, tv["per_sample"], atol=1e-5)
    loss = losses.polar_iou_loss(tv["preds"], tv["targets"], centerness, centerness.sum(), jit=jit)
    assert loss.dtype == tf.float32
    assert float(loss) == pytest.approx(tv["loss"], abs=1e-5)


@pytest.mark.parametrize("jit", [True, False])
def test_polar_iou_loss_with_minimum_target_rays_tv7(jit):
    target = np.array([[1e-6] * 18 + [20.0] * 18], np.float32)
    pred = np.full([1, 36], 10.0, np.float32)
    centerness = geometry.polar_centerness(target).numpy()
    assert centerness[0] == pytest.approx(2.236068e-4, rel=1e-5)
    assert float(losses.polar_iou_per_sample(pred, target)[0]) == pytest.approx(1.098612, abs=1e-5)
    # weight 1 and normaliser 1: the loss is the per-sample value.
    assert float(losses.polar_iou_loss(pred, target, [1.0], 1.0, jit=jit)) == pytest.approx(1.098612, abs=1e-5)


def test_focal_loss_tv7(spec_vectors):
    tv = spec_vectors["losses"]["focal"]
    labels = np.array([tv["labels_1_based_0_bg"]], np.int32)  # one image, 3 locations, C = 2
    logits = np.array([tv["logits"]], np.float32)
    assert logits.shape == (1, 3, 2)
    total = losses.sigmoid_focal_loss(logits, labels, 1.0, tv["alpha"], tv["gamma"])
    assert float(total) == pytest.approx(tv["sum"], abs=1e-5)

    norm = losses.loss_normalizers({"labels": labels, "centerness": np.zeros([1, 3], np.float32)})
    assert float(norm["num_positives"]) == tv["num_pos"] and float(norm["num_images"]) == tv["num_images"]
    loss = losses.sigmoid_focal_loss(logits, labels, norm["num_positives"] + norm["num_images"])
    assert float(loss) == pytest.approx(tv["loss"], abs=1e-5)


def test_focal_loss_matches_the_textbook_formula_at_extreme_logits():
    rng = np.random.default_rng(0)
    logits = rng.normal(0.0, 8.0, (40, 5)).astype(np.float32)
    logits[0, :] = [-30.0, 30.0, -80.0, 80.0, 0.0]
    labels = rng.integers(0, 6, 40).astype(np.int32)
    labels[0] = 2
    one_hot = np.eye(6)[labels][:, 1:]
    x = logits.astype(np.float64)
    # log p and log(1 - p) in float64, stable: the float32 implementation must agree with them.
    log_p, log_1mp = -np.logaddexp(0.0, -x), -np.logaddexp(0.0, x)
    p = np.exp(log_p)
    log_pt = np.where(one_hot == 1, log_p, log_1mp)
    pt = np.where(one_hot == 1, p, 1.0 - p)
    alpha_t = np.where(one_hot == 1, 0.25, 0.75)
    want = np.sum(-alpha_t * (1.0 - pt) ** 2 * log_pt) / 7.0
    got = losses.sigmoid_focal_loss(logits, labels, 7.0)
    assert np.isfinite(float(got))
    assert float(got) == pytest.approx(want, rel=1e-5)


def test_centerness_bce_tv7(spec_vectors):
    tv = spec_vectors["losses"]["centerness_bce"]
    # A third, masked-out location with a huge logit must not count.
    logits = tv["logits"] + [50.0]
    targets = tv["targets"] + [0.0]
    loss = losses.centerness_loss(logits, targets, [True, True, False], 2.0)
    assert float(loss) == pytest.approx(tv["mean"], abs=1e-5)


def test_box_iou_loss_tv7(spec_vectors):
    tv = spec_vectors["losses"]["box_iou"]
    iou = losses.box_iou(tv["pred_ltrb"], tv["target_ltrb"]).numpy()
    np.testing.assert_allclose(iou, tv["iou_plus1_convention"], atol=1e-6)
    loss = losses.box_iou_loss(tv["pred_ltrb"], tv["target_ltrb"], tv["weights"], sum(tv["weights"]))
    assert float(loss) == pytest.approx(tv["loss"], abs=1e-5)


def test_box_iou_equals_the_iou_of_boxes_decoded_from_the_point(spec_vectors):
    points = np.array(spec_vectors["losses"]["box_iou"]["points"] * 50, np.float64)
    rng = np.random.default_rng(1)
    pred, target = rng.uniform(0.0, 40.0, (2, len(points), 4))

    def decode(ltrb):
        return np.concatenate([points - ltrb[:, :2], points + ltrb[:, 2:]], axis=1)

    p, t = decode(pred), decode(target)
    w = np.clip(np.minimum(p[:, 2], t[:, 2]) - np.maximum(p[:, 0], t[:, 0]) + 1, 0, None)
    h = np.clip(np.minimum(p[:, 3], t[:, 3]) - np.maximum(p[:, 1], t[:, 1]) + 1, 0, None)
    area = lambda b: (b[:, 2] - b[:, 0] + 1) * (b[:, 3] - b[:, 1] + 1)  # noqa: E731
    want = w * h / (area(p) + area(t) - w * h)
    np.testing.assert_allclose(losses.box_iou(pred, target).numpy(), want, rtol=1e-5)


# ------------------------------------------------------------------ XLA


def test_jitted_polar_iou_loss_equals_eager_in_value_and_gradient():
    outputs, targets = random_batch(3, batch=3, points=200, rays=36)
    pred = tf.Variable(outputs["rays"])
    weights = np.where(targets["labels"] > 0, targets["centerness"], 0.0).astype(np.float32)
    normalizer = weights.sum()
    results = {}
    for jit in (True, False):
        with tf.GradientTape() as tape:
            loss = losses.polar_iou_loss(pred, targets["rays"], weights, normalizer, jit=jit)
        results[jit] = (loss.numpy(), tape.gradient(loss, pred).numpy())
    (value_xla, grad_xla), (value_eager, grad_eager) = results[True], results[False]
    assert value_eager > 0
    np.testing.assert_allclose(value_xla, value_eager, rtol=1e-6)
    assert np.all(np.isfinite(grad_xla))
    scale = np.abs(grad_eager).max()
    np.testing.assert_allclose(grad_xla, grad_eager, rtol=1e-6, atol=1e-6 * scale)
    negative = targets["labels"] == 0
    assert np.all(grad_xla[negative] == 0.0) and np.all(grad_eager[negative] == 0.0)


# ------------------------------------------------------------------ empty batches


def tiny_model_outputs(theta, classes, rays):
    """A "model output" dict computed from one variable theta [B, P, classes + 5 + rays]."""
    return {
        "cls_logits": theta[..., :classes],
        "centerness": theta[..., classes],
        "boxes": tf.exp(theta[..., classes + 1 : classes + 5]),
        "rays": tf.exp(theta[..., classes + 5 :]),
    }


@pytest.mark.parametrize("jit", [True, False])
def test_batch_without_positives_gives_zero_losses_and_finite_gradients(jit):
    _, targets = random_batch(4, batch=2, points=25, classes=3, rays=8, positives=False)
    theta = tf.Variable(np.random.default_rng(5).normal(0.0, 1.0, (2, 25, 3 + 5 + 8)).astype(np.float32))
    normalizers = losses.loss_normalizers(targets)
    assert as_floats(normalizers) == {"num_positives": 0.0, "centerness_sum": 0.0, "num_images": 2.0}

    with tf.GradientTape(persistent=True) as tape:
        result = losses.polarmask_losses(tiny_model_outputs(theta, 3, 8), targets, normalizers, jit=jit)
        positive_only = tf.add_n([result[k] for k in POSITIVE_ONLY])
    for key in POSITIVE_ONLY:
        assert float(result[key]) == 0.0, key
    cls_sum = losses.sigmoid_focal_loss(theta[..., :3], targets["labels"], 1.0)
    assert float(result["cls_loss"]) == pytest.approx(float(cls_sum) / 2.0, rel=1e-6)

    grad_positive_only = tape.gradient(positive_only, theta)
    grad_total = tape.gradient(result["total_loss"], theta)
    assert grad_positive_only is not None and np.all(grad_positive_only.numpy() == 0.0)
    assert np.all(np.isfinite(grad_total.numpy())) and np.any(grad_total.numpy() != 0.0)


def test_negatives_never_leak_nan_into_gradients_of_a_mixed_batch():
    # Negatives have zero target rays and boxes (sum min = 0): their loss is masked, not 0 * inf.
    outputs, targets = random_batch(6, batch=2, points=40, classes=2, rays=12)
    theta = tf.Variable(np.random.default_rng(6).normal(0.0, 3.0, (2, 40, 2 + 5 + 12)).astype(np.float32))
    with tf.GradientTape() as tape:
        result = losses.polarmask_losses(tiny_model_outputs(theta, 2, 12), targets)
    grad = tape.gradient(result["total_loss"], theta).numpy()
    assert all(np.isfinite(v) for v in as_floats(result).values())
    assert np.all(np.isfinite(grad))
    negative = targets["labels"] == 0
    np.testing.assert_array_equal(grad[negative][:, 2:], 0.0)  # only the class logits of negatives learn


# ------------------------------------------------------------------ dtypes and distribution


def test_float16_outputs_give_float32_losses():
    outputs, targets = random_batch(7, batch=2, points=50, classes=4, rays=36)
    half = {k: tf.constant(v, tf.float16) for k, v in outputs.items()}
    rounded = {k: tf.cast(v, tf.float32) for k, v in half.items()}
    from_half = losses.polarmask_losses(half, targets)
    from_rounded = losses.polarmask_losses(rounded, targets)
    from_full = losses.polarmask_losses(outputs, targets)
    for key in LOSS_KEYS:
        assert from_half[key].dtype == tf.float32, key
        # float32 from the first operation: exactly the float32 losses of the rounded outputs.
        assert float(from_half[key]) == pytest.approx(float(from_rounded[key]), rel=1e-6), key
        assert float(from_half[key]) == pytest.approx(float(from_full[key]), rel=2e-3, abs=1e-4), key


def test_losses_do_not_depend_on_the_batch_split_under_global_normalizers():
    outputs, targets = random_batch(8, batch=4, points=60, classes=3, rays=36)
    global_norm = losses.loss_normalizers(targets)
    whole = losses.polarmask_losses(outputs, targets, global_norm)
    halves = [
        losses.polarmask_losses(
            {k: v[s] for k, v in outputs.items()}, {k: v[s] for k, v in targets.items()}, global_norm
        )
        for s in (slice(0, 2), slice(2, 4))
    ]
    local = [losses.loss_normalizers({k: v[s] for k, v in targets.items()}) for s in (slice(0, 2), slice(2, 4))]
    for key in global_norm:  # the all-reduce of the local normalisers gives the global ones
        assert float(local[0][key] + local[1][key]) == pytest.approx(float(global_norm[key]), rel=1e-6)
    for key in LOSS_KEYS:
        assert float(whole[key]) > 0
        assert float(halves[0][key] + halves[1][key]) == pytest.approx(float(whole[key]), rel=1e-6), key


def test_all_reduce_normalizers_is_the_identity_on_one_device():
    _, targets = random_batch(9)
    local = losses.loss_normalizers(targets)
    assert as_floats(losses.all_reduce_normalizers(local)) == as_floats(local)


@pytest.mark.slow
def test_jitted_loss_under_a_two_replica_mirrored_strategy():
    # Needs two logical CPU devices, configured before TensorFlow starts: a fresh process.
    script = textwrap.dedent(
        """
        import numpy as np, tensorflow as tf
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
        from polarmask_tf import losses
        from test_losses import random_batch

        outputs, targets = random_batch(10, batch=4, points=40, classes=3, rays=36)
        whole = losses.polarmask_losses(outputs, targets, jit=False)
        strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
        data = tf.data.Dataset.from_tensors((outputs, targets)).unbatch().batch(4)
        batch = next(iter(strategy.experimental_distribute_dataset(data)))

        @tf.function
        def step(batch):
            def replica_fn(outputs, targets):
                norm = losses.all_reduce_normalizers(losses.loss_normalizers(targets))
                return losses.polarmask_losses(outputs, targets, norm)
            per_replica = strategy.run(replica_fn, args=batch)
            return {k: strategy.reduce("SUM", v, axis=None) for k, v in per_replica.items()}

        summed = step(batch)
        for key, value in whole.items():
            np.testing.assert_allclose(float(summed[key]), float(value), rtol=1e-6, err_msg=key)
        print("OK")
        """
    )
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    env["PYTHONPATH"] = os.pathsep.join([os.path.dirname(__file__), os.path.dirname(os.path.dirname(__file__))])
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "OK" in result.stdout, result.stderr[-3000:]


# ------------------------------------------------------------------ Polar IoU properties


ray_lists = st.lists(st.floats(1.0, 100.0, width=32), min_size=4, max_size=36)


@settings(max_examples=60, deadline=None)
@given(data=st.data(), target=ray_lists)
def test_polar_iou_loss_is_zero_at_the_target_and_grows_with_a_perturbed_ray(data, target):
    n = len(target)
    target = np.array([target], np.float32)
    pred = np.array([data.draw(st.lists(st.floats(1.0, 100.0, width=32), min_size=n, max_size=n))], np.float32)
    k = data.draw(st.integers(0, n - 1))
    factor = data.draw(st.floats(1.05, 3.0))

    def loss(p):
        return float(losses.polar_iou_loss(p, target, [1.0], 1.0, jit=False))

    assert loss(target) == 0.0
    base = loss(pred)
    assert base >= 0.0
    farther = pred.copy()
    # Away from the target: up when already at or above it, down when below.
    farther[0, k] = pred[0, k] * factor if pred[0, k] >= target[0, k] else pred[0, k] / factor
    assert loss(farther) > base
