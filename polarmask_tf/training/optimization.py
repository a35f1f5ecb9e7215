"""The optimiser: SGD with momentum, decoupled weight decay, warm-up then step decay."""

import keras

NO_WEIGHT_DECAY = ("bias", "gamma", "beta")
"""Variable-name fragments excluded from weight decay: biases and normalisation parameters."""


@keras.saving.register_keras_serializable(package="polarmask_tf")
class WarmupStepDecay(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up from base * warmup_factor to base over warmup_steps, then base multiplied
    by decay_factor at each of decay_steps (the original's mmdet v1 schedule)."""

    def __init__(self, base, warmup_steps, warmup_factor, decay_steps, decay_factor):
        self.base = float(base)
        self.warmup_steps = int(warmup_steps)
        self.warmup_factor = float(warmup_factor)
        self.decay_steps = tuple(int(s) for s in decay_steps)
        self.decay_factor = float(decay_factor)

    def __call__(self, step):
        step = keras.ops.cast(step, "float32")
        decays = sum(keras.ops.cast(step >= boundary, "float32") for boundary in self.decay_steps)
        rate = self.base * keras.ops.power(self.decay_factor, decays) if self.decay_steps else self.base
        if self.warmup_steps > 0:
            progress = keras.ops.minimum(step / self.warmup_steps, 1.0)
            rate = rate * (self.warmup_factor + (1.0 - self.warmup_factor) * progress)
        return rate

    def get_config(self):
        return {
            "base": self.base,
            "warmup_steps": self.warmup_steps,
            "warmup_factor": self.warmup_factor,
            "decay_steps": list(self.decay_steps),
            "decay_factor": self.decay_factor,
        }


def build_optimizer(train):
    """keras SGD for a config.TrainConfig. Gradient clipping is done by the training step on the
    all-reduced gradients (Keras would clip each replica's partial gradient), so none is set here."""
    schedule = WarmupStepDecay(
        train.base_learning_rate, train.warmup_steps, train.warmup_factor, train.decay_steps, train.decay_factor
    )
    optimizer = keras.optimizers.SGD(
        learning_rate=schedule, momentum=train.momentum, weight_decay=train.weight_decay or None
    )
    if train.weight_decay:
        optimizer.exclude_from_weight_decay(var_names=list(NO_WEIGHT_DECAY))
    return optimizer
