"""Additive attention biases from relative positions: ALiBi and T5 buckets."""

import math

import keras
import numpy as np
from keras import ops

from keras_transformer import validation


def _check_position_shapes(layer_name, query_positions_shape, key_positions_shape):
    validation.check_rank(layer_name, "query_positions", query_positions_shape, 2)
    validation.check_rank(layer_name, "key_positions", key_positions_shape, 2)
    batch_sizes = {query_positions_shape[0], key_positions_shape[0]} - {None, 1}
    if len(batch_sizes) > 1:
        raise ValueError(
            f"Layer {layer_name} expected query_positions and key_positions "
            "with the same batch size (or a batch size of 1 to share "
            f"positions), but received shapes {tuple(query_positions_shape)} "
            f"and {tuple(key_positions_shape)}."
        )


def _relative_positions(layer_name, query_positions, key_positions):
    """`key_position - query_position`, shape `(batch_size, Lq, Lk)`."""
    for argument, positions in (
        ("query_positions", query_positions),
        ("key_positions", key_positions),
    ):
        dtype = keras.backend.standardize_dtype(positions.dtype)
        if "int" not in dtype:
            raise ValueError(
                f"Layer {layer_name} expected integer {argument}, but received "
                f"dtype {dtype}. Cast positions to int32."
            )
    query_positions = ops.cast(query_positions, "int32")
    key_positions = ops.cast(key_positions, "int32")
    return ops.expand_dims(key_positions, 1) - ops.expand_dims(query_positions, 2)


def _alibi_slopes(num_heads):
    """ALiBi head slopes, as in the reference implementation of the paper.

    For a power of 2 `n` the slopes are `2 ** (-8 * h / n)`, `h = 1..n`.
    Otherwise the slopes of the closest lower power of 2 come first, followed
    by every other slope of the next power of 2.
    """
    closest_power = 2 ** math.floor(math.log2(num_heads))
    slopes = 2.0 ** (-8.0 * np.arange(1, closest_power + 1) / closest_power)
    # Every other slope of 2 * closest_power: exponents -8k / (2c), k odd.
    odd = np.arange(1, 2 * (num_heads - closest_power), 2)
    extra = 2.0 ** (-8.0 * odd / (2 * closest_power))
    return np.concatenate([slopes, extra])


@keras.saving.register_keras_serializable(package="keras_transformer")
class AlibiBias(keras.layers.Layer):
    """Attention with Linear Biases (ALiBi).

    Returns the additive attention bias
    `bias[b, h, i, j] = -slope_h * |query_positions[b, i] -
    key_positions[b, j]|` with the paper's fixed geometric head slopes
    (starting at `2 ** (-8 / num_heads)`; for a head count that is not a
    power of 2, the paper's interleaving rule). The bias is computed in
    float32 and cast to the layer's compute dtype. The layer has no weights.

    Args:
        num_heads: int. Number of attention heads.
        **kwargs: other keyword arguments passed to `keras.layers.Layer`,
            e.g. `name` and `dtype`.

    Call arguments:
        query_positions: int tensor of shape `(batch_size, query_length)`.
        key_positions: int tensor of shape `(batch_size, key_length)`. A
            batch size of 1 in either input is shared across the batch.

    Returns:
        Float tensor of shape `(batch_size, num_heads, query_length,
        key_length)` to add to the attention logits.

    Example:

    ```python
    positions = keras.ops.expand_dims(keras.ops.arange(10), 0)
    alibi = keras_transformer.layers.AlibiBias(num_heads=8)
    bias = alibi(positions, positions)  # (1, 8, 10, 10)
    ```

    References:
        - [Press et al., 2022](https://arxiv.org/abs/2108.12409)
    """

    def __init__(self, num_heads, **kwargs):
        super().__init__(**kwargs)
        self.num_heads = validation.check_positive_int("num_heads", num_heads)

    def build(self, query_positions_shape, key_positions_shape):
        _check_position_shapes(self.name, query_positions_shape, key_positions_shape)
        self.built = True

    def call(self, query_positions, key_positions):
        distance = ops.abs(
            ops.cast(
                _relative_positions(self.name, query_positions, key_positions),
                "float32",
            )
        )
        slopes = ops.convert_to_tensor(_alibi_slopes(self.num_heads).astype("float32"))
        bias = -ops.expand_dims(distance, 1) * ops.reshape(
            slopes, (self.num_heads, 1, 1)
        )
        return ops.cast(bias, self.compute_dtype)

    def get_config(self):
        config = super().get_config()
        config.update({"num_heads": self.num_heads})
        return config


def _relative_position_bucket(
    relative_position, bidirectional=True, num_buckets=32, max_distance=128
):
    """T5's `_relative_position_bucket`, with `keras.ops`.

    Maps `key_position - query_position` to a bucket id in
    `[0, num_buckets)`. When `bidirectional`, half of the buckets are for
    positive offsets. Within a direction, half of the buckets hold the exact
    distances `0 .. max_exact - 1`; the rest cover larger distances
    logarithmically up to `max_distance`, beyond which all distances share
    the last bucket. Unidirectional bucketing maps every positive offset
    (a future key) to bucket 0.
    """
    buckets = 0
    if bidirectional:
        num_buckets //= 2
        buckets = ops.cast(relative_position > 0, "int32") * num_buckets
        distance = ops.abs(relative_position)
    else:
        distance = -ops.minimum(relative_position, 0)
    max_exact = num_buckets // 2
    is_small = distance < max_exact
    # Clamping keeps log(0) out of the discarded branch; T5's float32 order
    # of operations is kept so bucket boundaries match it exactly.
    log_ratio = ops.log(
        ops.cast(ops.maximum(distance, max_exact), "float32") / max_exact
    ) / math.log(max_distance / max_exact)
    large = max_exact + ops.cast(log_ratio * (num_buckets - max_exact), "int32")
    large = ops.minimum(large, num_buckets - 1)
    return buckets + ops.where(is_small, distance, large)


@keras.saving.register_keras_serializable(package="keras_transformer")
class RelativePositionBias(keras.layers.Layer):
    """T5-style learned relative position bias.

    Returns the additive attention bias
    `bias[b, h, i, j] = table[bucket(key_positions[b, j] -
    query_positions[b, i]), h]`, where `bucket` is T5's
    `_relative_position_bucket` and `table` is a trainable
    `(num_buckets, num_heads)` weight. The output is cast to the layer's
    compute dtype.

    Args:
        num_heads: int. Number of attention heads.
        num_buckets: int. Number of buckets (table rows). Must be even and at
            least 4 when `bidirectional`, at least 2 otherwise.
        max_distance: int. Distances from `max_distance` on share the last
            bucket of their direction. Must exceed the number of exact
            buckets per direction (`num_buckets // 4` when `bidirectional`,
            else `num_buckets // 2`).
        bidirectional: bool. Whether positive and negative offsets get
            separate buckets (encoders); `False` for causal decoders, where
            every key after the query shares bucket 0.
        embeddings_initializer: initializer for the bias table. Defaults to
            `"random_normal"` (standard deviation 0.05), a small non-zero
            start so gradients reach the table from the first step.
        **kwargs: other keyword arguments passed to `keras.layers.Layer`,
            e.g. `name` and `dtype`.

    Call arguments:
        query_positions: int tensor of shape `(batch_size, query_length)`.
        key_positions: int tensor of shape `(batch_size, key_length)`. A
            batch size of 1 in either input is shared across the batch.

    Returns:
        Float tensor of shape `(batch_size, num_heads, query_length,
        key_length)` to add to the attention logits.

    Example:

    ```python
    positions = keras.ops.expand_dims(keras.ops.arange(10), 0)
    bias_layer = keras_transformer.layers.RelativePositionBias(num_heads=8)
    bias = bias_layer(positions, positions)  # (1, 8, 10, 10)
    ```

    References:
        - [Raffel et al., 2020](https://arxiv.org/abs/1910.10683)
    """

    def __init__(
        self,
        num_heads,
        num_buckets=32,
        max_distance=128,
        bidirectional=True,
        embeddings_initializer="random_normal",
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.num_heads = validation.check_positive_int("num_heads", num_heads)
        self.bidirectional = validation.check_bool("bidirectional", bidirectional)
        self.num_buckets = validation.check_positive_int("num_buckets", num_buckets)
        if self.bidirectional and (num_buckets < 4 or num_buckets % 2):
            raise ValueError(
                "Received an invalid value for argument num_buckets, expected "
                "an even integer >= 4 when bidirectional=True (half the "
                "buckets per direction, each half split into exact and "
                f"logarithmic buckets). Received: num_buckets={num_buckets!r}"
            )
        if not self.bidirectional and num_buckets < 2:
            raise ValueError(
                "Received an invalid value for argument num_buckets, expected "
                "an integer >= 2 when bidirectional=False (exact and "
                f"logarithmic buckets). Received: num_buckets={num_buckets!r}"
            )
        exact_buckets = (num_buckets // 2 if self.bidirectional else num_buckets) // 2
        self.max_distance = validation.check_positive_int("max_distance", max_distance)
        if self.max_distance <= exact_buckets:
            raise ValueError(
                "Received an invalid value for argument max_distance, expected "
                f"an integer greater than {exact_buckets}, the number of exact "
                f"buckets per direction for num_buckets={num_buckets} and "
                f"bidirectional={self.bidirectional}. Received: "
                f"max_distance={max_distance!r}"
            )
        self.embeddings_initializer = keras.initializers.get(embeddings_initializer)

    def build(self, query_positions_shape, key_positions_shape):
        _check_position_shapes(self.name, query_positions_shape, key_positions_shape)
        self.embeddings = self.add_weight(
            name="embeddings",
            shape=(self.num_buckets, self.num_heads),
            initializer=self.embeddings_initializer,
        )

    def call(self, query_positions, key_positions):
        buckets = _relative_position_bucket(
            _relative_positions(self.name, query_positions, key_positions),
            bidirectional=self.bidirectional,
            num_buckets=self.num_buckets,
            max_distance=self.max_distance,
        )
        bias = ops.take(self.embeddings, buckets, axis=0)
        return ops.cast(ops.transpose(bias, (0, 3, 1, 2)), self.compute_dtype)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "num_heads": self.num_heads,
                "num_buckets": self.num_buckets,
                "max_distance": self.max_distance,
                "bidirectional": self.bidirectional,
                "embeddings_initializer": keras.initializers.serialize(
                    self.embeddings_initializer
                ),
            }
        )
        return config
