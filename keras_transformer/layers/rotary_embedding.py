"""Rotary position embedding (RoPE)."""

import numbers

import keras
import numpy as np
from keras import ops

from keras_transformer import validation


@keras.saving.register_keras_serializable(package="keras_transformer")
class RotaryEmbedding(keras.layers.Layer):
    """Rotary position embedding applied to per-head queries or keys.

    Rotates each pair of features `(x[..., i], x[..., i + D/2])` (the
    half-split convention of GPT-NeoX and keras-hub) by the angle
    `(position / scaling_factor) * max_wavelength ** (-2i / D)`. The dot
    product of a rotated query at position `m` and a rotated key at position
    `n` then depends on the positions only through `m - n`. The rotation is
    computed in float32 and the result cast to the layer's compute dtype. The
    layer has no weights.

    Args:
        max_wavelength: float. Base of the rotation frequencies.
        scaling_factor: float. Positions are divided by this factor (linear
            position interpolation for longer contexts); 1.0 leaves them.
        **kwargs: other keyword arguments passed to `keras.layers.Layer`,
            e.g. `name` and `dtype`.

    Call arguments:
        inputs: float tensor of shape `(batch_size, length, num_heads,
            head_dim)`; `head_dim` must be even.
        start_index: int or scalar int tensor. Position of the first step,
            for incremental decoding with a cache. Defaults to 0.
        positions: optional int tensor of shape `(length,)` or
            `(batch_size, length)` giving each step's position explicitly
            (e.g. for left-padded batches). Replaces `start_index`, so pass
            only one of the two.

    Example:

    ```python
    query = keras.random.normal((2, 10, 4, 16))
    rotary = keras_transformer.layers.RotaryEmbedding()
    rotated_query = rotary(query)
    ```

    References:
        - [Su et al., 2021](https://arxiv.org/abs/2104.09864)
        - [Chen et al., 2023](https://arxiv.org/abs/2306.15595)
    """

    def __init__(self, max_wavelength=10000.0, scaling_factor=1.0, **kwargs):
        super().__init__(**kwargs)
        self.max_wavelength = validation.check_positive_float(
            "max_wavelength", max_wavelength
        )
        self.scaling_factor = validation.check_positive_float(
            "scaling_factor", scaling_factor
        )

    def build(self, input_shape):
        validation.check_rank(self.name, "inputs", input_shape, 4)
        head_dim = validation.check_last_dim(self.name, "inputs", input_shape, None)
        if head_dim % 2:
            raise ValueError(
                f"Layer {self.name} rotates pairs of features, so the last "
                f"dimension of inputs must be even, but received shape "
                f"{tuple(input_shape)}. Use an even head size."
            )
        self.built = True

    # No `compute_output_shape`: symbolic calls then trace `call`, so the
    # `positions` checks also run on Keras tensors.
    def call(self, inputs, start_index=0, positions=None):
        positions = self._positions(inputs, start_index, positions)
        half = inputs.shape[-1] // 2
        frequencies = (
            self.max_wavelength ** (-2.0 * np.arange(half) / inputs.shape[-1])
            / self.scaling_factor
        )
        angles = ops.expand_dims(positions, -1) * ops.convert_to_tensor(
            frequencies.astype("float32")
        )
        # Insert the heads axis: (..., length, 1, half) broadcasts against
        # (batch_size, length, num_heads, half).
        angles = ops.expand_dims(angles, -2)
        cos, sin = ops.cos(angles), ops.sin(angles)
        inputs = ops.cast(inputs, "float32")
        first, second = inputs[..., :half], inputs[..., half:]
        rotated = ops.concatenate(
            [first * cos - second * sin, second * cos + first * sin], axis=-1
        )
        return ops.cast(rotated, self.compute_dtype)

    def _positions(self, inputs, start_index, positions):
        """Float32 positions of shape `(length,)` or `(batch_size, length)`."""
        if positions is None:
            return ops.cast(ops.arange(ops.shape(inputs)[1]), "float32") + ops.cast(
                start_index, "float32"
            )
        if not (isinstance(start_index, numbers.Integral) and start_index == 0):
            raise ValueError(
                f"Layer {self.name} received both positions and "
                f"start_index={start_index}. Pass only one: positions already "
                "give every step's position."
            )
        length = inputs.shape[1]
        if len(positions.shape) not in (1, 2) or (
            None not in (length, positions.shape[-1]) and positions.shape[-1] != length
        ):
            raise ValueError(
                f"Layer {self.name} expected positions of shape (length,) or "
                f"(batch_size, length) with length={length} as in inputs, but "
                f"received positions of shape {tuple(positions.shape)}."
            )
        return ops.cast(positions, "float32")

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "max_wavelength": self.max_wavelength,
                "scaling_factor": self.scaling_factor,
            }
        )
        return config
