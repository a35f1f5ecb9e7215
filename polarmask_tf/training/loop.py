"""One custom training loop for every tf.distribute strategy.

A step runs `strategy.run(replica_step)` inside a tf.function:
  1. the loss normalisers (positives, centerness sum, images) are all-reduced first, so each
     replica's losses are its share of the global losses and results do not depend on how a batch
     is split across replicas;
  2. the gradients are all-reduced, unscaled (float16 loss scaling), clipped by their global norm
     and divided by the number of replicas, because the Keras optimiser sums them across replicas
     again (clipping inside Keras would clip each replica's partial gradient);
  3. the update is applied only when the loss and gradients are finite.
The host loop shows a progress bar, writes TensorBoard scalars, saves checkpoints periodically, on
Ctrl-C and at the end, resumes from the latest checkpoint, and stops with NonFiniteLossError
(keeping the last good checkpoint) when the loss is NaN or infinite.
"""

import os
import signal
import time

import keras
import tensorflow as tf

from polarmask_tf import config as cfg
from polarmask_tf import losses
from polarmask_tf.data import pipeline
from polarmask_tf.modeling.model import build_model
from polarmask_tf.progress import ProgressBar
from polarmask_tf.training.optimization import build_optimizer

LOSS_NAMES = ("cls_loss", "ray_loss", "box_loss", "centerness_loss", "total_loss")
ARCHITECTURE_KEYS = (
    "model.backbone", "model.num_classes", "model.fpn_channels", "model.head_channels", "model.head_convs",
    "model.group_norm_groups", "model.freeze_stem", "model.freeze_batchnorm", "polar.num_rays", "polar.strides",
)
"""Config keys that change the network's variables or which of them the optimiser tracks (its
momentum slots follow the trainable variables), so a checkpoint made with other values cannot load."""


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; the model dir keeps the last good checkpoint."""


class ArchitectureMismatchError(ValueError):
    """The model dir holds a checkpoint of a different architecture."""


def _flatten(data, prefix=""):
    """{"a": {"b": 1}} -> {"a.b": 1}."""
    flat = {}
    for key, value in data.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def check_model_dir(config, model_dir):
    """Raises ArchitectureMismatchError when model_dir's config.yaml describes another network than
    `config` (any of ARCHITECTURE_KEYS differs) while it holds checkpoints."""
    saved = os.path.join(model_dir, "config.yaml")
    if not (os.path.exists(saved) and tf.train.latest_checkpoint(os.path.join(model_dir, "checkpoints"))):
        return
    try:
        previous = cfg.load_config(saved)
    except cfg.ConfigError as error:
        raise ArchitectureMismatchError(
            f"{model_dir} holds checkpoints but its config.yaml cannot be read ({error}); use a new --model_dir"
        ) from error
    old, new = _flatten(cfg.to_dict(previous)), _flatten(cfg.to_dict(config))
    differences = [f"{key}: {old[key]!r} there, {new[key]!r} here" for key in ARCHITECTURE_KEYS if old[key] != new[key]]
    if differences:
        raise ArchitectureMismatchError(
            f"{model_dir} holds checkpoints of a different architecture ({'; '.join(differences)}). "
            "Use a new --model_dir, or the same model and polar settings to resume."
        )


class Trainer:
    """Builds the model, optimiser, input and checkpointing for `config` under `strategy`."""

    def __init__(self, config, model_dir, strategy=None):
        self.config = config
        self.model_dir = model_dir
        self.strategy = strategy or tf.distribute.get_strategy()
        check_model_dir(config, model_dir)
        os.makedirs(model_dir, exist_ok=True)
        cfg.dump_config(config, os.path.join(model_dir, "config.yaml"))
        train = config.train
        keras.mixed_precision.set_global_policy(train.mixed_precision or "float32")
        with self.strategy.scope():
            self.model = build_model(config)
            optimizer = build_optimizer(train)
            if train.mixed_precision == "mixed_float16":
                optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
            self.optimizer = optimizer
            self.optimizer.build(self.model.trainable_variables)
        self.evaluator = None
        if train.eval_every:
            if not (train.eval_annotations and train.eval_images_dir):
                raise ValueError("train.eval_every needs train.eval_annotations and train.eval_images_dir")
            from polarmask_tf import evaluation

            self.evaluator = evaluation.Evaluator(
                config, train.eval_annotations, train.eval_images_dir, max_images=train.eval_max_images
            )
        self.checkpoint = tf.train.Checkpoint(model=self.model, optimizer=self.optimizer)
        self.manager = tf.train.CheckpointManager(
            self.checkpoint, os.path.join(model_dir, "checkpoints"), max_to_keep=train.keep_checkpoints
        )
        self._step_fn = None

    @property
    def step(self):
        """Completed optimisation steps (int)."""
        return int(self.optimizer.iterations.numpy())

    def restore(self):
        """Restores the latest checkpoint of the model dir, if any; returns its path or None."""
        latest = self.manager.latest_checkpoint
        if latest:
            try:
                self.checkpoint.restore(latest).assert_existing_objects_matched()
            except (AssertionError, ValueError) as error:
                raise ArchitectureMismatchError(
                    f"{latest} does not fit this model ({str(error).splitlines()[0]}). "
                    "Use a new --model_dir, or the configuration the checkpoint was trained with."
                ) from error
        return latest

    def _replica_step(self, images, targets):
        context = tf.distribute.get_replica_context()
        normalizers = context.all_reduce(tf.distribute.ReduceOp.SUM, losses.loss_normalizers(targets))
        variables = self.model.trainable_variables
        scaled = isinstance(self.optimizer, keras.optimizers.LossScaleOptimizer)
        with tf.GradientTape() as tape:
            outputs = self.model(images, training=True)
            values = losses.polarmask_losses(outputs, targets, normalizers, jit=self.config.train.jit_polar_iou)
            loss = self.optimizer.scale_loss(values["total_loss"]) if scaled else values["total_loss"]
        gradients = context.all_reduce(tf.distribute.ReduceOp.SUM, tape.gradient(loss, variables))
        scale = tf.cast(self.optimizer.dynamic_scale, tf.float32) if scaled else 1.0
        gradients = [g / scale for g in gradients]
        norm = tf.linalg.global_norm(gradients)
        if self.config.train.clip_norm > 0:
            gradients, _ = tf.clip_by_global_norm(gradients, self.config.train.clip_norm, use_norm=norm)
        replicas = tf.cast(context.num_replicas_in_sync, tf.float32)
        gradients = [g * (scale / replicas) for g in gradients]
        total = context.all_reduce(tf.distribute.ReduceOp.SUM, values["total_loss"])
        finite = tf.math.is_finite(total) & tf.math.is_finite(norm)
        if scaled:  # the LossScaleOptimizer skips non-finite gradients itself and lowers the scale
            self.optimizer.apply_gradients(zip(gradients, variables))
        else:

            def apply():
                self.optimizer.apply_gradients(zip(gradients, variables))
                return tf.constant(True)

            tf.cond(finite, apply, lambda: tf.constant(False))
        values["grad_norm"] = norm / replicas  # summed across replicas below
        values["positives_per_image"] = normalizers["num_positives"] / normalizers["num_images"] / replicas
        return values

    def _make_step_fn(self):
        strategy = self.strategy

        @tf.function
        def step_fn(iterator):
            images, targets = next(iterator)
            per_replica = strategy.run(self._replica_step, (images, targets))
            return {k: strategy.reduce(tf.distribute.ReduceOp.SUM, v, axis=None) for k, v in per_replica.items()}

        return step_fn

    def dataset(self):
        return self.strategy.distribute_datasets_from_function(
            lambda context: pipeline.build_dataset(self.config, training=True, input_context=context)
        )

    def train(self, total_steps=None, stream=None):
        """Trains up to `total_steps` (default config.train.total_steps), resuming from the latest
        checkpoint. Returns the per-step history: a list of dicts of floats."""
        total_steps = self.config.train.total_steps if total_steps is None else total_steps
        resumed = self.restore()
        start = self.step
        if resumed:
            print(f"resumed from {resumed} at step {start}", file=stream)
        if start >= total_steps:
            return []
        self._step_fn = self._step_fn or self._make_step_fn()
        iterator = iter(self.dataset())
        writer = tf.summary.create_file_writer(os.path.join(self.model_dir, "train"))
        bar = ProgressBar(total_steps - start, desc="train", stream=stream)
        history = []
        batch_size = self.config.data.batch_size
        last_time, last_step = time.perf_counter(), start
        previous_sigterm = signal.getsignal(signal.SIGTERM)
        signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
        try:
            while self.step < total_steps:
                values = {k: float(v) for k, v in self._step_fn(iterator).items()}
                step = self.step
                if not all(map(_is_finite, (values[name] for name in LOSS_NAMES))):
                    raise NonFiniteLossError(
                        f"step {step}: the loss is not finite ({_format(values)}); training stopped without "
                        f"saving. The last good checkpoint is {self.manager.latest_checkpoint}. Lower "
                        "train.base_learning_rate, check the data, or use float32 / mixed_bfloat16."
                    )
                history.append(dict(values, step=step))
                bar.update(1, **{name.replace("_loss", ""): values[name] for name in LOSS_NAMES})
                if step % self.config.train.log_every == 0 or step == total_steps:
                    now = time.perf_counter()
                    images_per_second = (step - last_step) * batch_size / max(now - last_time, 1e-9)
                    window = history[-(step - last_step):]
                    means = {k: sum(h[k] for h in window) / len(window) for k in values}
                    last_time, last_step = now, step
                    self._write_summaries(writer, step, means, images_per_second)
                if step % self.config.train.checkpoint_every == 0:
                    self.manager.save(checkpoint_number=step)
                if self.evaluator is not None and step % self.config.train.eval_every == 0:
                    with writer.as_default(step=step):
                        for name, value in self.evaluator(self.model).items():
                            tf.summary.scalar(f"eval/{name}", value)
        except KeyboardInterrupt:
            self.manager.save(checkpoint_number=self.step)
            bar.close()
            print(f"\ninterrupted: saved {self.manager.latest_checkpoint} at step {self.step}", file=stream)
            raise
        finally:
            signal.signal(signal.SIGTERM, previous_sigterm)
            writer.flush()
        bar.close()
        if self.manager.latest_checkpoint is None or not self.manager.latest_checkpoint.endswith(f"-{self.step}"):
            self.manager.save(checkpoint_number=self.step)
        return history

    def _write_summaries(self, writer, step, values, images_per_second):
        """Scalars at `step`; `values` are the means over the steps since the previous write."""
        learning_rate = self.optimizer.learning_rate
        with writer.as_default(step=step):
            for name in LOSS_NAMES:
                tf.summary.scalar(f"loss/{name}", values[name])
            tf.summary.scalar("learning_rate", float(learning_rate))
            tf.summary.scalar("positives_per_image", values["positives_per_image"])
            tf.summary.scalar("grad_norm", values["grad_norm"])
            tf.summary.scalar("images_per_second", images_per_second)


def _raise_keyboard_interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def _is_finite(value):
    return value == value and abs(value) != float("inf")


def _format(values):
    return ", ".join(f"{k}={v:.4g}" for k, v in values.items())
