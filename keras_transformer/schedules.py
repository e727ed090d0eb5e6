"""The learning-rate schedule and optimizer of "Attention Is All You Need"."""

import keras
from keras import ops

from keras_transformer.validation import (
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
