"""Fixed sinusoidal position encoding."""

import keras
import numpy as np
from keras import ops

from keras_transformer import validation


def check_positions_exclude_start(layer_name, start_index):
    """Raises for a call given both explicit `positions` and a
    `start_index`: the positions already say where each step is."""
    if not (isinstance(start_index, int) and start_index == 0):
        raise ValueError(
            f"Layer {layer_name} received both positions and start_index="
            f"{start_index!r}. Pass one: positions give every step's "
            "position, start_index the first of consecutive ones."
        )


@keras.saving.register_keras_serializable(package="keras_transformer")
class SinusoidalPositionEncoding(keras.layers.Layer):
    """Sinusoidal position encoding from "Attention Is All You Need".

    Returns the fixed encoding for the positions of `inputs`, broadcast to the
    shape of `inputs`, so it is added with `inputs + layer(inputs)`. Feature
    `2i` holds `sin(pos / max_wavelength ** (2i / d))` and feature `2i + 1`
    holds `cos` of the same angle (interleaved, as in the paper). With an odd
    feature size the last feature is a `sin` feature. The table is computed on
    the fly in float32 for any length (there is no maximum) and cast to the
    layer's compute dtype. The layer has no weights.

    Angles are float32, so their absolute error grows with the position
    (about `position * 1.2e-7`, e.g. ~1e-4 at position 2048).

    Args:
        max_wavelength: float. The longest wavelength of the sinusoids, the
            paper's 10000.
        **kwargs: other keyword arguments passed to `keras.layers.Layer`,
            e.g. `name` and `dtype`.

    Call arguments:
        inputs: float tensor of shape `(batch_size, sequence_length, d)`.
            Only its shape is used.
        start_index: int or scalar int tensor. Position of the first step,
            for incremental decoding with a cache. Defaults to 0.
        positions: optional int tensor `(batch_size, sequence_length)`.
            The position of every step, for rows that are not one sequence
            from position 0 (packed sequences: `layers.segment_positions`).
            Excludes `start_index`.

    Example:

    ```python
    tokens = keras.random.normal((2, 10, 16))
    encoding = keras_transformer.layers.SinusoidalPositionEncoding()
    outputs = tokens + encoding(tokens)
    ```

    References:
        - [Vaswani et al., 2017](https://arxiv.org/abs/1706.03762)
    """

    def __init__(self, max_wavelength=10000.0, **kwargs):
        super().__init__(**kwargs)
        self.max_wavelength = validation.check_positive_float(
            "max_wavelength", max_wavelength
        )

    def build(self, input_shape):
        validation.check_rank(self.name, "inputs", input_shape, 3)
        validation.check_last_dim(self.name, "inputs", input_shape, None)
        self.built = True

    def call(self, inputs, start_index=0, positions=None):
        feature_size = inputs.shape[-1]
        num_frequencies = (feature_size + 1) // 2
        inverse_frequencies = self.max_wavelength ** (
            -2.0 * np.arange(num_frequencies) / feature_size
        )
        if positions is None:
            positions = ops.arange(ops.shape(inputs)[-2], dtype="int32") + ops.cast(
                start_index, "int32"
            )
        else:
            check_positions_exclude_start(self.name, start_index)
        angles = ops.expand_dims(ops.cast(positions, "float32"), -1) * (
            ops.convert_to_tensor(inverse_frequencies.astype("float32"))
        )
        # Stacking on a new last axis and flattening interleaves sin and cos.
        encoding = ops.reshape(
            ops.stack([ops.sin(angles), ops.cos(angles)], axis=-1),
            tuple(ops.shape(angles)[:-1]) + (2 * num_frequencies,),
        )[..., :feature_size]
        encoding = ops.cast(encoding, self.compute_dtype)
        return ops.broadcast_to(encoding, ops.shape(inputs))

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update({"max_wavelength": self.max_wavelength})
        return config
