"""Learning-rate schedules: Vaswani et al.'s, and warm-up + cosine decay over
a run whose length `Translator.fit` sets."""

import math

import keras
from keras import ops

from keras_transformer.validation import (
    check_fraction,
    check_non_negative_int,
    check_positive_float,
    check_positive_int,
)


@keras.saving.register_keras_serializable(package="keras_transformer")
class TransformerSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up, then inverse-square-root decay.

    `lr = scale * d_model**-0.5 * min(step**-0.5, step * warmup_steps**-1.5)`
    where `step = iterations + 1`: Keras optimizers call the schedule with
    their `iterations` counter, which is 0 for the first update, and the
    formula is undefined at 0. The rate rises linearly to its peak
    `scale * (d_model * warmup_steps)**-0.5` at `step == warmup_steps`, then
    decays as `step**-0.5`.

    Args:
        d_model: int. Model width; larger models get smaller rates.
        warmup_steps: int. Steps of linear warm-up.
        scale: float. Multiplier of the whole curve.

    Example:

    ```python
    schedule = TransformerSchedule(d_model=128, warmup_steps=400)
    optimizer = keras.optimizers.Adam(schedule, beta_2=0.98, epsilon=1e-9)
    ```

    References:
        - [Vaswani et al., 2017](https://arxiv.org/abs/1706.03762), section 5.3.
    """

    def __init__(self, d_model, warmup_steps=4000, scale=1.0):
        self.d_model = check_positive_int("d_model", d_model)
        self.warmup_steps = check_positive_int("warmup_steps", warmup_steps)
        self.scale = check_positive_float("scale", scale)

    def __call__(self, step):
        step = ops.cast(step, "float32") + 1.0
        warmup = step * self.warmup_steps**-1.5
        decay = ops.rsqrt(step)
        return self.scale * self.d_model**-0.5 * ops.minimum(warmup, decay)

    def get_config(self):
        return {
            "d_model": self.d_model,
            "warmup_steps": self.warmup_steps,
            "scale": self.scale,
        }


def transformer_optimizer(d_model, warmup_steps=4000, scale=1.0):
    """Adam with `TransformerSchedule` and the paper's moments.

    Returns:
        `keras.optimizers.Adam(TransformerSchedule(d_model, warmup_steps,
        scale), beta_1=0.9, beta_2=0.98, epsilon=1e-9)`.
    """
    return keras.optimizers.Adam(
        learning_rate=TransformerSchedule(d_model, warmup_steps, scale),
        beta_1=0.9,
        beta_2=0.98,
        epsilon=1e-9,
    )


# Warm-up of a run whose length is known, as a fraction of it: long enough
# for Adam's second moments to settle (a few dozen steps), short enough that
# a run of a hundred steps spends most of them learning.
DEFAULT_WARMUP_FRACTION = 0.05
# Warm-up when the run's length is unknown (Vaswani et al. used 4000 steps
# with far larger batches).
DEFAULT_WARMUP_STEPS = 1000


@keras.saving.register_keras_serializable(package="keras_transformer")
class WarmupCosineDecay(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up to a peak rate, then a cosine decay to 0 at the run's end.

    A schedule whose run length may be set after the optimizer is made:
    `Translator.fit` calls `set_run` with the number of updates it is about
    to make, so `compile()` followed by `fit` decays to 0 exactly at the
    last step whatever the run's length, and the warm-up is a fraction of
    that run unless `warmup_steps` fixes it. Each `set_run` starts a new run
    at the optimizer's current step (a second `fit` warms up again from
    there).

    With the run's length unknown (`total_steps=None` and no `set_run`),
    the rate rises for `warmup_steps` (default 1000) and then decays as the
    inverse square root of the step, as in Vaswani et al.

    With `s = iterations - first_step`, `w` the warm-up steps and `T` the
    run's steps: `rate = peak * (s + 1) / w` while `s < w`, then
    `peak * (1 + cos(pi * (s - w) / (T - w))) / 2`, and 0 from `s = T` on.

    Args:
        peak_learning_rate: float. The rate at the end of the warm-up.
        total_steps: int or None. Updates in the run (None: set later by
            `set_run`, or unknown).
        warmup_steps: int or None. Steps of warm-up; None takes
            `warmup_fraction` of the run.
        warmup_fraction: float in (0, 1). Warm-up as a fraction of the run
            when `warmup_steps` is None.
        first_step: int. The optimizer step at which the run starts.
        follows_fit: bool or None. Whether `Translator.fit` may set the run;
            None: when `total_steps` is None.

    Example:

    ```python
    schedule = WarmupCosineDecay(2e-3)
    optimizer = keras.optimizers.Adam(schedule)
    schedule.set_run(total_steps=500)     # 25 steps of warm-up, 0 at 500
    ```

    References:
        - [Loshchilov & Hutter, 2017](https://arxiv.org/abs/1608.03983)
          (cosine decay).
        - [Popel & Bojar, 2018](https://arxiv.org/abs/1804.00247) (warm-up
          and learning rate in short Transformer runs).
    """

    def __init__(
        self,
        peak_learning_rate,
        total_steps=None,
        warmup_steps=None,
        warmup_fraction=DEFAULT_WARMUP_FRACTION,
        first_step=0,
        follows_fit=None,
    ):
        self.peak_learning_rate = check_positive_float(
            "peak_learning_rate", peak_learning_rate
        )
        self.warmup_fraction = check_fraction("warmup_fraction", warmup_fraction)
        self.warmup_steps = (
            None
            if warmup_steps is None
            else check_non_negative_int("warmup_steps", warmup_steps)
        )
        self.first_step = check_non_negative_int("first_step", first_step)
        self.total_steps = None
        self._run = None
        if total_steps is not None:
            self.set_run(total_steps, first_step)
        if keras.backend.backend() == "tensorflow":
            # Made here, eagerly and in the optimizer's distribution scope.
            self._run = keras.Variable(
                self._run_values(), trainable=False, dtype="float32", name="run"
            )
        # A schedule made without its run's length takes the length of each
        # run `fit` starts (`follows_fit` is stored, so a reloaded model
        # keeps doing so).
        self.follows_fit = total_steps is None if follows_fit is None else follows_fit

    def set_run(self, total_steps, first_step=0):
        """Fits the schedule to a run of `total_steps` updates from the
        optimizer step `first_step`.

        On TensorFlow the run is held in variables that the compiled train
        step reads, so a new run needs no new trace (nor XLA compilation).

        Raises:
            ValueError: if a fixed `warmup_steps` is longer than the run.
        """
        total_steps = check_positive_int("total_steps", total_steps)
        first_step = check_non_negative_int("first_step", first_step)
        if self.warmup_steps is not None and self.warmup_steps > total_steps:
            raise ValueError(
                "Received an invalid value for argument warmup_steps, expected "
                f"at most total_steps={total_steps} (the warm-up is part of the "
                f"run; it is never shortened). Received: warmup_steps="
                f"{self.warmup_steps}. Pass a shorter warm-up, a longer run, or "
                f"warmup_steps=None for {self.warmup_fraction:g} of the run."
            )
        self.total_steps = total_steps
        self.first_step = first_step
        if self._run is not None:
            self._run.assign(self._run_values())

    def resolved_warmup_steps(self):
        """The warm-up in steps, as the schedule applies it."""
        if self.warmup_steps is not None:
            return max(1, self.warmup_steps)
        if self.total_steps is None:
            return DEFAULT_WARMUP_STEPS
        return max(1, round(self.warmup_fraction * self.total_steps))

    def _run_values(self):
        # (first step, warm-up steps, total steps or 0 when unknown).
        return [
            float(self.first_step),
            float(self.resolved_warmup_steps()),
            float(self.total_steps or 0),
        ]

    def __call__(self, step):
        run = self._run_values() if self._run is None else self._run.value
        first_step, warmup, total = run[0], run[1], run[2]
        step = ops.cast(step, "float32") - first_step
        peak = self.peak_learning_rate
        # One-based, so the first update already moves the weights.
        rising = peak * (step + 1.0) / warmup
        inverse_root = ops.minimum(rising, peak * ops.sqrt(warmup / (step + 1.0)))
        decay_steps = ops.maximum(1.0, total - warmup)
        progress = ops.clip((step - warmup) / decay_steps, 0.0, 1.0)
        cosine = ops.where(
            step < warmup, rising, peak * 0.5 * (1.0 + ops.cos(math.pi * progress))
        )
        return ops.where(total > 0, cosine, inverse_root)

    def get_config(self):
        return {
            "peak_learning_rate": self.peak_learning_rate,
            "total_steps": self.total_steps,
            "warmup_steps": self.warmup_steps,
            "warmup_fraction": self.warmup_fraction,
            "first_step": self.first_step,
            "follows_fit": self.follows_fit,
        }


# Peak rate of a model of width 128 (fairseq's transformer_tiny shape) under
# the library's pre-norm blocks and Adam (0.9, 0.98).
REFERENCE_LEARNING_RATE = 3e-3
REFERENCE_WIDTH = 128


def default_learning_rate(hidden_dim):
    """The peak learning rate `Translator.compile()` uses for a model width.

    `REFERENCE_LEARNING_RATE * sqrt(128 / hidden_dim)`: updates of Adam
    move every weight by about the rate, and a wider model's outputs sum
    more of them, so the rate shrinks with the square root of the width
    (as the `d_model**-0.5` of Vaswani et al.'s schedule does).
    """
    hidden_dim = check_positive_int("hidden_dim", hidden_dim)
    return REFERENCE_LEARNING_RATE * math.sqrt(REFERENCE_WIDTH / hidden_dim)


def learning_rate_for_width(learning_rate, tuned_width, hidden_dim):
    """A peak rate tuned for a model `tuned_width` wide, for one
    `hidden_dim` wide: `learning_rate * tuned_width / hidden_dim`.

    Adam moves every weight by about the rate, and each unit of a layer
    `hidden_dim` wide sums that many of them, so keeping its output's
    change the same takes a rate inversely proportional to the width (the
    rule of muP for hidden weights). Measured with the corpus recipe's
    schedule at the previous recipe's rate (5e-3, tuned for width 128) on a
    word-level Multi30k de->en run of 5 minutes, a 1+1-layer model of width
    256: masked accuracy 0.457 at 5e-3, 0.598 at 2.5e-3 (this rule), 0.584
    at 1e-3. The corpus recipe now takes this rule's 2.5e-3 at width 256.
    """
    learning_rate = check_positive_float("learning_rate", learning_rate)
    tuned_width = check_positive_int("tuned_width", tuned_width)
    hidden_dim = check_positive_int("hidden_dim", hidden_dim)
    return learning_rate * tuned_width / hidden_dim
