"""One custom training loop for every tf.distribute strategy.

A step runs `strategy.run(replica_step)` inside a tf.function:
  1. the loss normalisers (positives, centerness sum, images) are all-reduced first, so each
     replica's losses are its share of the global losses and results do not depend on how a batch
     is split across replicas;
  2. the gradients are all-reduced, unscaled (float16 loss scaling), clipped by their global norm
     and divided by the number of replicas, because the Keras optimiser sums them across replicas
     again (clipping inside Keras would clip each replica's partial gradient);
  3. a step whose loss or gradient norm is not finite applies zero gradients, and the host loop
     then stops.
The host loop shows a progress bar, writes TensorBoard scalars, saves checkpoints periodically, on
Ctrl-C and at the end, resumes from the latest checkpoint, and stops with NonFiniteLossError
(keeping the last good checkpoint) when the loss is NaN or infinite.

Several workers (training.distribute): data.batch_size is the global batch, split evenly over
all replicas. Only the chief writes the model dir (config.yaml, checkpoints/, train/); the others
save into a scratch directory (saving is collective) and delete it when training ends. Every
worker restores from the model dir, which must therefore be on storage all workers can read.
SIGTERM (preemption) sets a flag that the next step all-reduces, so every worker saves at the same
step and stops with TrainingPreempted; a restart resumes there, no step lost or repeated.
"""

import hashlib
import os
import shutil  # local: the non-chief scratch dir only
import signal
import time

import keras
import tensorflow as tf
from absl import logging

from polarmask_tf import checkpoints, fileio, inference, losses
from polarmask_tf import config as cfg
from polarmask_tf.data import coco, pipeline
from polarmask_tf.modeling.model import build_model
from polarmask_tf.progress import ProgressBar
from polarmask_tf.training import distribute
from polarmask_tf.training.optimization import build_optimizer

LOSS_NAMES = ("cls_loss", "ray_loss", "box_loss", "centerness_loss", "total_loss")
ARCHITECTURE_KEYS = (
    "model.backbone", "model.num_classes", "model.fpn_channels", "model.head_channels", "model.head_convs",
    "model.group_norm_groups", "model.box_branch", "model.freeze_stem", "model.freeze_batchnorm",
    "polar.num_rays",
)
"""Config keys that change the network's variables or which of them the optimiser tracks (its
momentum slots follow the trainable variables), so a checkpoint made with other values cannot load."""


def loss_names(config):
    """LOSS_NAMES of a config's losses: without "box_loss" when model.box_branch is false (the
    progress bar, the finiteness check and the loss/* summaries follow it)."""
    return tuple(name for name in LOSS_NAMES if name != "box_loss" or config.model.box_branch)


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; the model dir keeps the last good checkpoint."""


class ArchitectureMismatchError(ValueError):
    """The model dir holds a checkpoint of a different architecture."""


class NoTrainingDataError(ValueError):
    """A whole pass over the training shards yielded no usable example (every record skipped)."""


class TrainingPreempted(KeyboardInterrupt):
    """A worker got SIGTERM; every worker saved a checkpoint at the same step and stopped."""


def _flatten(data, prefix=""):
    """{"a": {"b": 1}} -> {"a.b": 1}."""
    flat = {}
    for key, value in data.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _architecture_differences(there, here, ignore=()):
    """["key: value there, value here"] for the ARCHITECTURE_KEYS (but `ignore`) two configs disagree on."""
    old, new = _flatten(cfg.to_dict(there)), _flatten(cfg.to_dict(here))
    return [f"{key}: {old[key]!r} there, {new[key]!r} here" for key in ARCHITECTURE_KEYS
            if key not in ignore and old[key] != new[key]]


def check_model_dir(config, model_dir):
    """Raises ArchitectureMismatchError when model_dir's config.yaml describes another network than
    `config` (any of ARCHITECTURE_KEYS differs) while it holds checkpoints."""
    saved = os.path.join(model_dir, "config.yaml")
    if not (tf.io.gfile.exists(saved) and checkpoints.holds_checkpoints(os.path.join(model_dir, "checkpoints"))):
        return
    try:
        previous = cfg.load_config(saved)
    except cfg.ConfigError as error:
        raise ArchitectureMismatchError(
            f"{model_dir} holds checkpoints but its config.yaml cannot be read ({error}); use a new --model-dir"
        ) from error
    differences = _architecture_differences(previous, config)
    if differences:
        raise ArchitectureMismatchError(
            f"{model_dir} holds checkpoints of a different architecture ({'; '.join(differences)}). "
            "Use a new --model-dir, or the same model and polar settings to resume."
        )


def check_label_map(config):
    """Raises ConfigError when the label map create_tfrecords wrote beside the training shards has
    more classes than model.num_classes (their labels would be trained as background)."""
    path = coco.labels_beside_shards(config.data.train_files)
    if path is None or not tf.io.gfile.exists(path):
        return
    found = coco.read_label_map(path).num_classes
    if found > config.model.num_classes:
        raise cfg.ConfigError(
            f"model.num_classes: {config.model.num_classes}, but the training records use labels 1..{found} "
            f"({path}): set model.num_classes={found} (with train.init_checkpoint, the class layer is re-initialised)")


def build_training_state(config):
    """(model, optimizer) of `config`, built, in the current strategy scope and dtype policy: what a
    training checkpoint holds (tf.train.Checkpoint(model=..., optimizer=...)), so that tools writing
    a model dir (conversion.convert) write checkpoints training resumes from."""
    model = build_model(config)
    optimizer = build_optimizer(config.train)
    if config.train.mixed_precision == "mixed_float16":
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
    optimizer.build(model.trainable_variables)
    return model, optimizer


class Trainer:
    """Builds the model, optimiser, input and checkpointing for `config` under `strategy`."""

    def __init__(self, config, model_dir, strategy=None, scratch_root=None):
        """scratch_root: where a non-chief worker's scratch directory goes (default: the system
        temp dir; training.distribute.scratch_dir)."""
        self.config = config
        self.model_dir = model_dir
        self.strategy = strategy or tf.distribute.get_strategy()
        self.is_chief = distribute.is_chief(self.strategy)
        replicas = self.strategy.num_replicas_in_sync
        if config.data.batch_size % replicas:
            raise ValueError(
                f"data.batch_size={config.data.batch_size} (the global batch) does not split evenly over "
                f"{replicas} replicas: use a multiple of {replicas}"
            )
        check_label_map(config)
        self._lock = checkpoints.ModelDirLock(model_dir) if self.is_chief else None
        if self._lock:
            fileio.makedirs(model_dir)
            self._lock.acquire()  # before anything in the model dir is written
            if self._lock.taken_over:
                logging.warning("took over the lock of a training that no longer runs: %s", self._lock.taken_over)
        try:
            check_model_dir(config, model_dir)
            self.write_dir = model_dir if self.is_chief else distribute.scratch_dir(self.strategy, scratch_root)
            fileio.makedirs(self.write_dir)
            if self.is_chief:
                cfg.dump_config(config, os.path.join(model_dir, "config.yaml"))
                labels = coco.labels_beside_shards(config.data.train_files)
                if labels is not None and tf.io.gfile.exists(labels):
                    fileio.copy(labels, os.path.join(model_dir, inference.LABELS_FILE))
            train = config.train
            keras.mixed_precision.set_global_policy(train.mixed_precision or "float32")
            with self.strategy.scope():
                self.model, self.optimizer = build_training_state(config)
            self.evaluator = None
            if train.eval_every and self.is_chief:
                from polarmask_tf import evaluation

                self.evaluator = evaluation.Evaluator(
                    config, train.eval_annotations, train.eval_images_dir, max_images=train.eval_max_images
                )
            self.checkpoint = tf.train.Checkpoint(model=self.model, optimizer=self.optimizer)
            self.manager = tf.train.CheckpointManager(
                self.checkpoint, os.path.join(self.write_dir, "checkpoints"),
                max_to_keep=train.keep_checkpoints if self.is_chief else 1,
            )
        except BaseException:
            if self._lock:
                self._lock.release()
            raise
        self._step_fn = None
        self._stop_requested = False
        self._quiet = None if self.is_chief else open(os.devnull, "w")  # local: non-chief progress output

    @property
    def step(self):
        """Completed optimisation steps (int)."""
        return int(self.optimizer.iterations.numpy())

    def restore(self):
        """Restores the newest checkpoint of the model dir that can be read, if any; returns its
        path or None (no checkpoint at all).

        A newer checkpoint that cannot be read (its .index or .data missing or truncated) is moved
        into checkpoints/broken/, with a warning, and the next older one is tried; the state file
        is rewritten to list what remains. Raises CheckpointError when the directory holds
        checkpoint files but none can be restored (training would otherwise start again from step
        0), and ArchitectureMismatchError when a readable checkpoint belongs to another network.
        """
        directory = os.path.join(self.model_dir, "checkpoints")
        found = checkpoints.list_checkpoints(directory)
        broken = []
        for index, (_, prefix) in enumerate(found):
            try:
                self.checkpoint.restore(prefix).assert_existing_objects_matched()
                inference.check_box_branch(prefix, self.config)
            except (AssertionError, ValueError) as error:
                raise ArchitectureMismatchError(
                    f"{prefix} does not fit this model ({str(error).splitlines()[0]}). "
                    "Use a new --model-dir, or the configuration the checkpoint was trained with."
                ) from error
            except (tf.errors.OpError, OSError, IndexError) as error:  # IndexError: a truncated .data file
                broken.append((prefix, str(error).strip().splitlines()[0] or type(error).__name__))
                continue
            if broken and self.is_chief:
                for bad, reason in broken:
                    moved = checkpoints.set_aside(bad)
                    logging.warning("checkpoint %s cannot be read (%s): moved to %s; resuming from %s",
                                    bad, reason, moved, prefix)
            if self.is_chief and (broken or tf.train.latest_checkpoint(directory) != prefix):
                checkpoints.write_state(directory, [p for _, p in reversed(found[index:])])
                self.manager = tf.train.CheckpointManager(self.checkpoint, directory,
                                                          max_to_keep=self.config.train.keep_checkpoints)
            return prefix
        stray = checkpoints.stray_checkpoint_files(directory)
        if broken or stray:
            details = "; ".join(f"{prefix}: {reason}" for prefix, reason in broken) or (
                f"data files without an index, e.g. {stray[0]}")
            raise checkpoints.CheckpointError(
                f"{directory} holds checkpoints but none can be restored ({details}). Training would start "
                "again from step 0, so it stops here: restore the missing files, or move the checkpoints away "
                "(or use a new --model-dir) to start from scratch."
            )
        return None

    def _replica_step(self, images, targets, stop):
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
        if not scaled:  # the LossScaleOptimizer skips non-finite gradients itself and lowers the scale
            # Zero gradients rather than a tf.cond around apply_gradients: a cond whose branch
            # reaches the optimiser's cross-replica merge_call fails under MirroredStrategy.
            finite = tf.math.is_finite(total) & tf.math.is_finite(norm)
            gradients = [tf.where(finite, g, tf.zeros_like(g)) for g in gradients]
        self.optimizer.apply_gradients(zip(gradients, variables, strict=True))
        values["grad_norm"] = norm / replicas  # summed across replicas below
        values["positives_per_image"] = normalizers["num_positives"] / normalizers["num_images"] / replicas
        if scaled:  # the scale this step's loss was multiplied by; the optimizer has updated it since
            values["loss_scale"] = scale / replicas
        # identity: a tensor from outside strategy.run has no replica device to reduce onto
        values["stop_requests"] = context.all_reduce(tf.distribute.ReduceOp.SUM, tf.identity(stop))
        return values

    def _make_step_fn(self):
        strategy = self.strategy

        @tf.function
        def step_fn(iterator, stop):
            images, targets = next(iterator)
            per_replica = strategy.run(self._replica_step, (images, targets, stop))
            return {k: strategy.reduce(tf.distribute.ReduceOp.SUM, v, axis=None) for k, v in per_replica.items()}

        return step_fn

    def dataset(self):
        return self.strategy.distribute_datasets_from_function(
            lambda context: pipeline.build_dataset(self.config, training=True, input_context=context)
        )

    def train(self, total_steps=None, stream=None):
        """Trains up to `total_steps` (default config.train.total_steps), resuming from the newest
        readable checkpoint, holding the model dir's lock (checkpoints.ModelDirLock) meanwhile.
        Returns the per-step history: a list of dicts of floats, one per step run, with "step" (the
        optimizer's count after it) and "skipped" (True for a step the LossScaleOptimizer skipped
        because its float16 gradients overflowed; such a step is run again, so under mixed_float16
        the history can be longer than the steps trained)."""
        if self._lock:
            self._lock.acquire()
        try:
            return self._train(self.config.train.total_steps if total_steps is None else total_steps, stream)
        finally:
            if self._lock:
                self._lock.release()

    def _train(self, total_steps, stream):
        resumed = self.restore()
        start = self.step
        if resumed:
            print(f"resumed from {resumed} at step {start}", file=stream)
        elif self.config.train.init_checkpoint:
            fresh = initialize_from(self.model, self.config, self.config.train.init_checkpoint)
            print(f"initialised from {self.config.train.init_checkpoint}"
                  + (f"; kept the fresh initialisation of {', '.join(fresh)}" if fresh else ""), file=stream)
        else:
            model = self.config.model
            if model.backbone_weights is None and (model.freeze_stem or model.freeze_batchnorm):
                logging.warning(
                    "training from scratch: backbone %s has random weights but freeze_stem=%s, freeze_batchnorm=%s, so "
                    "frozen layers keep their random initialisation (set both to false, or give model.backbone_weights "
                    "or train.init_checkpoint)", model.backbone, model.freeze_stem, model.freeze_batchnorm,
                )
        if start >= total_steps:
            return []
        self._step_fn = self._step_fn or self._make_step_fn()
        iterator = iter(self.dataset())
        if self.is_chief:
            writer = tf.summary.create_file_writer(os.path.join(self.model_dir, "train"))
        else:
            writer = tf.summary.create_noop_writer()
            stream = self._quiet
        bar = ProgressBar(total_steps - start, desc="train", stream=stream)
        history = []
        batch_size = self.config.data.batch_size
        last_time, last_step, previous_step, window_start = time.perf_counter(), start, start, 0
        previous_sigterm = signal.getsignal(signal.SIGTERM)
        self._stop_requested = False
        signal.signal(signal.SIGTERM, self._request_stop)
        try:
            while self.step < total_steps:
                stop = tf.constant(1.0 if self._stop_requested else 0.0)
                values = {k: float(v) for k, v in self._step_fn(iterator, stop).items()}
                step = self.step
                if not all(map(_is_finite, (values[name] for name in loss_names(self.config)))):
                    raise NonFiniteLossError(
                        f"step {step}: the loss is not finite ({_format(values)}); training stopped without "
                        f"saving. The last good checkpoint is {self.manager.latest_checkpoint}. Lower "
                        "train.base_learning_rate, check the data, or use float32 / mixed_bfloat16."
                    )
                # Under mixed_float16 the LossScaleOptimizer skips a step whose gradients overflowed
                # (and halves the scale) without counting it: the same step is then run again.
                advanced = step > previous_step
                previous_step = step
                history.append(dict(values, step=step, skipped=not advanced))
                shown = {name.replace("_loss", ""): values[name] for name in loss_names(self.config)}
                bar.update(int(advanced), **shown)
                if advanced and (step % self.config.train.log_every == 0 or step == total_steps):
                    now = time.perf_counter()
                    images_per_second = (step - last_step) * batch_size / max(now - last_time, 1e-9)
                    window = [h for h in history[window_start:] if not h["skipped"]]  # skipped: inf grad_norm
                    means = {k: sum(h[k] for h in window) / len(window) for k in values}
                    last_time, last_step, window_start = now, step, len(history)
                    self._write_summaries(writer, step, means, images_per_second)
                if advanced and step % self.config.train.checkpoint_every == 0:
                    self.manager.save(checkpoint_number=step)
                if advanced and self.evaluator is not None and step % self.config.train.eval_every == 0:
                    with writer.as_default(step=step):
                        for name, value in self.evaluator(self.model).items():
                            tf.summary.scalar(f"eval/{name}", value)
                if values["stop_requests"] > 0 and step < total_steps:
                    raise TrainingPreempted("SIGTERM")
        except KeyboardInterrupt as interrupt:
            self._save_final()
            bar.close()
            how = "preempted" if isinstance(interrupt, TrainingPreempted) else "interrupted"
            print(f"\n{how}: saved {self.checkpoint_in_model_dir()} at step {self.step}", file=stream)
            raise
        except (tf.errors.OpError, OSError) as error:
            # An input or I/O failure between steps: the weights are those of the last completed
            # step, so keep them. Saving is collective with several workers, and a failure on one of
            # them would hang the others in it, so only a single worker saves here.
            if not distribute.is_multi_worker(self.strategy):
                bar.close()
                self._save_final()
                print(f"\nstopped by an error at step {self.step}: saved {self.checkpoint_in_model_dir()}",
                      file=stream)
            if isinstance(error, tf.errors.OutOfRangeError):
                raise NoTrainingDataError(
                    f"a whole pass over {self.config.data.train_files} gave no usable example: every record was "
                    "skipped (the warnings above say why: corrupt records, images that do not decode, labels beyond "
                    "model.num_classes)") from error
            raise
        finally:
            signal.signal(signal.SIGTERM, previous_sigterm)
            writer.flush()
        bar.close()
        self._save_final()
        if not self.is_chief:
            shutil.rmtree(self.write_dir, ignore_errors=True)  # local: distribute.scratch_dir
        return history

    def _request_stop(self, signum, frame):
        self._stop_requested = True

    def _save_final(self):
        if self.manager.latest_checkpoint is None or not self.manager.latest_checkpoint.endswith(f"-{self.step}"):
            self.manager.save(checkpoint_number=self.step)

    def checkpoint_in_model_dir(self):
        """The model dir's checkpoint prefix for the current step (the chief writes it)."""
        return os.path.join(self.model_dir, "checkpoints", f"ckpt-{self.step}")

    def _write_summaries(self, writer, step, values, images_per_second):
        """Scalars at `step`; `values` are the means over the steps since the previous write."""
        learning_rate = self.optimizer.learning_rate
        with writer.as_default(step=step):
            for name in loss_names(self.config):
                tf.summary.scalar(f"loss/{name}", values[name])
            tf.summary.scalar("learning_rate", float(learning_rate))
            tf.summary.scalar("positives_per_image", values["positives_per_image"])
            tf.summary.scalar("grad_norm", values["grad_norm"])
            if "loss_scale" in values:
                tf.summary.scalar("loss_scale", values["loss_scale"])
            tf.summary.scalar("images_per_second", images_per_second)


FINE_TUNING_KEYS = ("model.num_classes", "model.freeze_stem", "model.freeze_batchnorm")
"""Architecture keys an init_checkpoint may differ in (a new num_classes re-initialises the class-logit conv)."""


def initialize_from(model, config, checkpoint):
    """Copies the weights of `checkpoint` (a model dir or a ckpt-N prefix with config.yaml beside
    it) into `model` (built from `config`). Returns the paths of the variables left at their fresh
    initialisation: the class-logit conv's kernel and bias when model.num_classes differs, else none.
    Raises inference.CheckpointMismatchError when the checkpoint has a box branch and `config` not
    (model.box_branch), or the reverse; ArchitectureMismatchError when the networks differ otherwise;
    FileNotFoundError / ConfigError for a missing checkpoint or config."""
    source_config = cfg.load_config(inference.checkpoint_config_path(checkpoint))
    inference.check_box_branch(inference.find_checkpoint(checkpoint), config)
    differences = _architecture_differences(source_config, config, ignore=FINE_TUNING_KEYS)
    if differences:
        raise ArchitectureMismatchError(
            f"train.init_checkpoint {checkpoint} is another network ({'; '.join(differences)}): only "
            f"{', '.join(FINE_TUNING_KEYS)} may differ"
        )
    source = inference.load_model(source_config, checkpoint)
    fresh = []
    for target, value in zip(model.weights, source.weights, strict=True):
        if tuple(target.shape) == tuple(value.shape):
            target.assign(value)
        elif "cls_logits" in target.path:
            fresh.append(target.path)
        else:
            raise ArchitectureMismatchError(f"{target.path}: shape {tuple(target.shape)} here, {tuple(value.shape)} "
                                            f"in {checkpoint}")
    return fresh


def weights_digest(model):
    """SHA-256 (hex, first 16 digits) of the model's variables in order: equal digests mean
    bit-identical weights (used to check that workers agree)."""
    digest = hashlib.sha256()
    for variable in model.weights:
        digest.update(variable.numpy().tobytes())
    return digest.hexdigest()[:16]


def _is_finite(value):
    return value == value and abs(value) != float("inf")


def _format(values):
    return ", ".join(f"{k}={v:.4g}" for k, v in values.items())
