"""Learned position embeddings and the token + position input embedding."""

import math

import keras
from keras import ops

from keras_transformer import validation
from keras_transformer.layers import _static
from keras_transformer.layers import _token_ids
from keras_transformer.layers.position_encoding import (
    SinusoidalPositionEncoding,
    check_positions_exclude_start,
)


def _check_fits(layer_name, length, start_index, sequence_length):
    """Raises when positions `[start_index, start_index + length)` overflow.

    Checks what is known before the layer runs: a real static length (not
    `None`, a JAX symbolic dimension or a shape-inference placeholder) and a
    Python int or eager tensor `start_index`. A length or `start_index`
    traced by `tf.function` or `jax.jit` is unknown here; the caller then
    checks in the graph (`_positions_in_graph`).

    Returns:
        True when the positions were checked (or there is no maximum), False
        when they are only known once a compiled graph runs.
    """
    if sequence_length is None:
        return True
    known_start = _static.known_int(start_index)
    if known_start is not None and known_start < 0:
        raise ValueError(
            f"Layer {layer_name} received a negative start_index. Received: "
            f"start_index={known_start}"
        )
    length = _static.known_length(length)
    if length is None or (known_start is None and start_index is not None):
        return False
    start_index = known_start or 0
    if start_index + length > sequence_length:
        raise ValueError(
            f"Layer {layer_name} received positions up to "
            f"{start_index + length} (start_index={start_index}, length "
            f"{length}), but its maximum is sequence_length={sequence_length}. "
            "Increase sequence_length or pass shorter inputs."
        )
    return True


def _check_positions_fit(layer_name, positions, sequence_length):
    """`_check_fits` for explicit `positions`: raises when their values are
    known now and some lie outside `[0, sequence_length)`.

    Returns:
        True when checked (or there is no maximum), False when the values
        are only known once a compiled graph runs.
    """
    if sequence_length is None:
        return True
    lowest = _static.known_int(ops.min(positions))
    highest = _static.known_int(ops.max(positions))
    if lowest is None or highest is None:
        return False
    if lowest < 0 or highest >= sequence_length:
        raise ValueError(
            f"Layer {layer_name} received positions from {lowest} to "
            f"{highest}, but they must lie in [0, sequence_length) with "
            f"sequence_length={sequence_length}. Increase sequence_length "
            "or pass shorter sequences."
        )
    return True


def _positions_in_graph(
    layer_name, inputs, start_index, sequence_length, dtype, positions=None
):
    """The in-graph form of `_check_fits` (or, given `positions`, of
    `_check_positions_fit`) for ids `inputs`: `(inputs, factor)` (see
    `_static.guard_in_graph`)."""
    if positions is None:
        end = ops.shape(inputs)[-1] + ops.cast(start_index, "int32")
        start = ops.cast(start_index, "int32")
    else:
        end = ops.max(positions) + 1
        start = ops.min(positions)
    return _static.guard_in_graph(
        ops.logical_and(
            ops.less_equal(end, sequence_length),
            ops.greater_equal(start, 0),
        ),
        inputs,
        f"Layer {layer_name} received positions past its maximum "
        f"sequence_length={sequence_length}: pass shorter inputs or increase "
        "sequence_length.",
        ["positions up to:", end],
        dtype,
    )


@keras.saving.register_keras_serializable(package="keras_transformer")
class PositionEmbedding(keras.layers.Layer):
    """A learned position embedding table of a fixed maximum length.

    Holds a trainable table of shape `(sequence_length, d)` and returns its
    rows `[start_index, start_index + length)` broadcast to the shape of
    `inputs`, so it is added with `inputs + layer(inputs)`. Positions past
    the table are never clipped to its last row. They raise a `ValueError`
    on every backend when they are known before the call runs: a static
    length at build time, and at call time a static length with an int or
    eager-tensor `start_index`. Inside a compiled function (`tf.function`,
    `jax.jit`) a tensor `start_index` has no value yet and a compiled JAX or
    XLA program cannot raise: the rows past the table come out as NaN there
    (and TensorFlow without XLA fails at run time).

    Args:
        sequence_length: int. Maximum number of positions.
        initializer: initializer for the table. Defaults to
            `"glorot_uniform"`.
        **kwargs: other keyword arguments passed to `keras.layers.Layer`,
            e.g. `name` and `dtype`.

    Call arguments:
        inputs: float tensor of shape `(batch_size, length, d)`. Only its
            shape is used.
        start_index: int or scalar int tensor. Position of the first step,
            for incremental decoding with a cache. Defaults to 0.
        positions: optional int tensor `(batch_size, length)`. The
            position of every step, for rows that are not one sequence from
            position 0 (packed sequences: `layers.segment_positions`); rows
            past the table are NaN as above. Excludes `start_index`.

    Example:

    ```python
    tokens = keras.random.normal((2, 10, 16))
    positions = keras_transformer.layers.PositionEmbedding(sequence_length=64)
    outputs = tokens + positions(tokens)
    ```
    """

    def __init__(self, sequence_length, initializer="glorot_uniform", **kwargs):
        super().__init__(**kwargs)
        self.sequence_length = validation.check_positive_int(
            "sequence_length", sequence_length
        )
        self.initializer = keras.initializers.get(initializer)

    def build(self, input_shape):
        validation.check_rank(self.name, "inputs", input_shape, 3)
        feature_size = validation.check_last_dim(
            self.name, "inputs", input_shape, None
        )
        _check_fits(self.name, input_shape[-2], 0, self.sequence_length)
        self.embeddings = self.add_weight(
            name="embeddings",
            shape=(self.sequence_length, feature_size),
            initializer=self.initializer,
        )

    def call(self, inputs, start_index=0, positions=None):
        if positions is None:
            _check_fits(self.name, inputs.shape[-2], start_index, self.sequence_length)
            positions = ops.arange(ops.shape(inputs)[-2], dtype="int32") + ops.cast(
                start_index, "int32"
            )
        else:
            check_positions_exclude_start(self.name, start_index)
            positions = ops.cast(positions, "int32")
            _check_positions_fit(self.name, positions, self.sequence_length)
        # A gather, not a slice: its output has `length` rows whatever the
        # values, where JAX's dynamic slice would shift the window back
        # inside the table. Reading the variable as a tensor first is what
        # JAX accepts.
        rows = ops.take(ops.convert_to_tensor(self.embeddings), positions, axis=0)
        # Rows past the table are NaN on every backend (gathers differ:
        # JAX fills NaN, XLA clamps, TensorFlow on GPU returns zeros).
        inside = ops.logical_and(positions >= 0, positions < self.sequence_length)
        rows = ops.where(ops.expand_dims(inside, -1), rows, float("nan"))
        return ops.broadcast_to(ops.cast(rows, self.compute_dtype), ops.shape(inputs))

    # Symbolic calls infer the shape here instead of tracing `call` with a
    # placeholder length (an int such as 83 on PyTorch) that would fail the
    # overflow check; a real static length and an int start_index are
    # checked here.
    def compute_output_spec(self, inputs, start_index=0, positions=None):
        if positions is None:
            _check_fits(self.name, inputs.shape[-2], start_index, self.sequence_length)
        return keras.KerasTensor(inputs.shape, dtype=self.compute_dtype)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "sequence_length": self.sequence_length,
                "initializer": keras.initializers.serialize(self.initializer),
            }
        )
        return config


@keras.saving.register_keras_serializable(package="keras_transformer")
class TokenAndPositionEmbedding(keras.layers.Layer):
    """Token embedding plus position information, with tied output logits.

    The forward call maps token ids to
    `token_embedding * sqrt(embedding_dim) + position`, where the position
    part is a learned `PositionEmbedding` or a fixed
    `SinusoidalPositionEncoding`. With `reverse=True` the layer maps hidden
    states back to vocabulary logits with the transposed token embedding
    matrix (weight tying), adding no weights.

    Args:
        vocabulary_size: int. Number of token ids.
        sequence_length: int or None. Maximum number of positions; longer
            inputs raise a `ValueError`. Required for `"learned"`; `None` is
            allowed for `"sinusoidal"` and means no maximum.
        embedding_dim: int. Size of the token and position embeddings.
        position_encoding: str. `"learned"`, `"sinusoidal"`, or `"none"` when
            positions enter inside attention instead (rotary, ALiBi or
            relative bias).
        mask_zero: bool. Whether token id 0 is padding; the layer then
            returns the mask `token_ids != 0`.
        scale_embedding: bool. Whether to multiply the token embeddings by
            `sqrt(embedding_dim)` before adding positions.
        embeddings_initializer: initializer for the token table and, when
            `position_encoding="learned"`, the position table.
        **kwargs: other keyword arguments passed to `keras.layers.Layer`,
            e.g. `name` and `dtype`.

    Call arguments:
        inputs: int tensor of token ids `(batch_size, length)`, or with
            `reverse=True` float hidden states
            `(batch_size, length, embedding_dim)`.
        start_index: int or scalar int tensor. Position of the first token,
            for incremental decoding with a cache. Defaults to 0.
        positions: optional int tensor `(batch_size, length)`. The position
            of every token, for packed rows (`layers.segment_positions`);
            needs a position table (`position_encoding` other than
            `"none"`). Excludes `start_index`.
        reverse: bool. Whether to return tied logits
            `(batch_size, length, vocabulary_size)` instead of embeddings.

    Example:

    ```python
    embedding = keras_transformer.layers.TokenAndPositionEmbedding(
        vocabulary_size=1000, sequence_length=64, embedding_dim=32
    )
    hidden = embedding(keras.ops.ones((2, 10), "int32"))
    logits = embedding(hidden, reverse=True)
    ```

    References:
        - [Vaswani et al., 2017](https://arxiv.org/abs/1706.03762)
        - [Press and Wolf, 2017](https://arxiv.org/abs/1608.05859)
    """

    def __init__(
        self,
        vocabulary_size,
        sequence_length,
        embedding_dim,
        position_encoding="learned",
        mask_zero=False,
        scale_embedding=True,
        embeddings_initializer="uniform",
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.vocabulary_size = validation.check_positive_int(
            "vocabulary_size", vocabulary_size
        )
        self.embedding_dim = validation.check_positive_int(
            "embedding_dim", embedding_dim
        )
        self.position_encoding = validation.check_choice(
            "position_encoding", position_encoding, ("learned", "sinusoidal", "none")
        )
        if position_encoding == "learned" and sequence_length is None:
            raise ValueError(
                "Received sequence_length=None with position_encoding="
                "'learned'. A learned position table needs a maximum length: "
                "pass a positive integer sequence_length, or use "
                "position_encoding='sinusoidal' for no maximum."
            )
        self.sequence_length = validation.check_positive_int(
            "sequence_length", sequence_length, allow_none=True
        )
        self.mask_zero = validation.check_bool("mask_zero", mask_zero)
        self.scale_embedding = validation.check_bool(
            "scale_embedding", scale_embedding
        )
        self.embeddings_initializer = keras.initializers.get(embeddings_initializer)

        self.token_embedding = keras.layers.Embedding(
            self.vocabulary_size,
            self.embedding_dim,
            # A fresh initializer instance per table, from the same config.
            embeddings_initializer=self._initializer_config(),
            name="token_embedding",
            dtype=self.dtype_policy,
        )
        if self.position_encoding == "learned":
            self.position_embedding = PositionEmbedding(
                self.sequence_length,
                initializer=self._initializer_config(),
                name="position_embedding",
                dtype=self.dtype_policy,
            )
        elif self.position_encoding == "sinusoidal":
            self.position_embedding = SinusoidalPositionEncoding(
                name="position_embedding", dtype=self.dtype_policy
            )
        else:
            self.position_embedding = None

    def _initializer_config(self):
        return keras.initializers.serialize(self.embeddings_initializer)

    def build(self, input_shape):
        # Token ids (rank 2) and reverse-mode hidden states (rank 3) share
        # the leading (batch, length) axes.
        validation.check_rank(self.name, "inputs", input_shape, (2, 3))
        batch_and_length = tuple(input_shape[:2])
        _check_fits(self.name, batch_and_length[1], 0, self.sequence_length)
        self.token_embedding.build(batch_and_length)
        if self.position_embedding is not None:
            self.position_embedding.build(batch_and_length + (self.embedding_dim,))
        self.built = True

    def _check_token_ids(self, inputs, start_index, positions=None):
        if len(inputs.shape) != 2:
            raise ValueError(
                f"Layer {self.name} expected token ids of shape "
                f"(batch_size, length), but received shape {inputs.shape}. "
                "Pass reverse=True to map hidden states to logits."
            )
        _token_ids.check_dtype("inputs", inputs, layer_name=self.name)
        if positions is not None:
            check_positions_exclude_start(self.name, start_index)
            return _check_positions_fit(self.name, positions, self.sequence_length)
        return _check_fits(
            self.name, inputs.shape[-1], start_index, self.sequence_length
        )

    def call(self, inputs, start_index=0, reverse=False, positions=None):
        if reverse:
            return self._logits(inputs)
        if positions is not None and self.position_embedding is None:
            raise ValueError(
                f"Layer {self.name} received positions, but it adds no "
                "positions (position_encoding='none': they enter inside "
                "attention). Pass positions only with position_encoding="
                "'learned' or 'sinusoidal'."
            )
        positions_fit = self._check_token_ids(inputs, start_index, positions)
        known = _token_ids.check_values(
            "inputs", inputs, self.vocabulary_size, layer_name=self.name
        )
        scale = math.sqrt(self.embedding_dim) if self.scale_embedding else 1.0
        scale = ops.cast(scale, self.compute_dtype)
        if not positions_fit:
            # A length or start index known only when the graph runs, as in
            # an exported endpoint taking any length: a sinusoidal table has
            # no end and a learned one would fail in the gather, so the
            # maximum is checked here, folded into the scale.
            inputs, factor = _positions_in_graph(
                self.name,
                inputs,
                start_index,
                self.sequence_length,
                self.compute_dtype,
                positions,
            )
            scale = scale * factor
        if not known:
            # Compiled graph: the id check folds into the scale (see _token_ids).
            inputs, factor = _token_ids.check_in_graph(
                "inputs",
                inputs,
                self.vocabulary_size,
                self.compute_dtype,
                layer_name=self.name,
            )
            scale = scale * factor
        embedded = self.token_embedding(inputs)
        if self.scale_embedding or not known or not positions_fit:
            embedded = embedded * scale
        if self.position_embedding is None:
            return embedded
        return embedded + self.position_embedding(
            embedded, start_index=start_index, positions=positions
        )

    def _logits(self, hidden_states):
        validation.check_last_dim(
            self.name, "inputs", hidden_states.shape, self.embedding_dim
        )
        token_table = ops.cast(self.token_embedding.embeddings, self.compute_dtype)
        return ops.matmul(hidden_states, ops.transpose(token_table))

    # Symbolic calls infer the shape here rather than by tracing `call`
    # with a placeholder length (see `PositionEmbedding`).
    def compute_output_spec(self, inputs, start_index=0, reverse=False, positions=None):
        if reverse:
            validation.check_last_dim(
                self.name, "inputs", inputs.shape, self.embedding_dim
            )
            shape = tuple(inputs.shape[:-1]) + (self.vocabulary_size,)
        else:
            self._check_token_ids(inputs, start_index, positions)
            shape = tuple(inputs.shape) + (self.embedding_dim,)
        return keras.KerasTensor(shape, dtype=self.compute_dtype)

    def compute_mask(self, inputs, mask=None):
        # Reverse mode receives hidden states: pass any incoming mask along.
        if not self.mask_zero or len(inputs.shape) != 2:
            return mask
        return ops.not_equal(inputs, 0)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "vocabulary_size": self.vocabulary_size,
                "sequence_length": self.sequence_length,
                "embedding_dim": self.embedding_dim,
                "position_encoding": self.position_encoding,
                "mask_zero": self.mask_zero,
                "scale_embedding": self.scale_embedding,
                "embeddings_initializer": self._initializer_config(),
            }
        )
        return config
