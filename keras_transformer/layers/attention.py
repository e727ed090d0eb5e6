"""Masked multi-head attention with grouped key/value heads, position schemes
and a fixed-size key/value cache for incremental decoding."""

import functools

import keras
from keras import ops

from keras_transformer import validation
from keras_transformer.layers import _static, masks
from keras_transformer.layers.dropout import Dropout
from keras_transformer.layers.lora import LoRADense
from keras_transformer.layers.relative_position_bias import (
    AlibiBias,
    RelativePositionBias,
)
from keras_transformer.layers.rotary_embedding import RotaryEmbedding
from keras_transformer.layers.stateless_dropout import seeded_dropout

POSITION_BIASES = (None, "alibi", "relative")

# Masked logits are set to this finite value rather than -inf: a row whose
# keys are all masked then softmaxes to uniform weights instead of NaN, and
# exp(MASKED_LOGIT - max) underflows to exactly 0 in float32 for every other
# row, so masked keys contribute nothing. Unmasked logits are first clipped
# to +-LOGIT_LIMIT, far above MASKED_LOGIT: finite but huge activations whose
# dot product overflows to +-inf then stay finite (inf - inf in the softmax
# would be NaN), and a masked key can never outweigh an unmasked one.
LOGIT_LIMIT = 1e30
MASKED_LOGIT = -3e38


# Vectors whose largest entry exceeds this are divided by it before the dot
# product; smaller ones (every trained model's) are left bit-for-bit as is.
HUGE_ACTIVATION = 2.0**40


def _shrink_huge(vectors):
    """`(scale, vectors / scale)` with scale 1 unless a vector is huge."""
    if 0 in tuple(vectors.shape):
        # An empty batch known to be empty (eager, JAX, PyTorch): Keras
        # refuses the max of an empty tensor, and PyTorch's max with
        # `initial` returns the wrong shape for one (Keras 3.15).
        return ops.ones_like(vectors[..., :1]), vectors
    # `initial=0` (a no-op: absolute values) lets a batch that turns out
    # empty only when a TensorFlow graph runs through.
    largest = ops.max(ops.abs(vectors), axis=-1, keepdims=True, initial=0.0)
    scale = ops.where(largest > HUGE_ACTIVATION, largest, ops.ones_like(largest))
    # The logits do not depend on the scale (divided out here, multiplied
    # back after the dot product), so its exact gradient is zero. Stopping
    # it spares the backward pass two reductions over the whole logits
    # tensor and a pass over every activation: about a tenth of a training
    # step of the corpus recipe's model on a CPU.
    scale = ops.stop_gradient(scale)
    return scale, vectors / scale


@keras.saving.register_keras_serializable(package="keras_transformer")
class MultiHeadAttention(keras.layers.Layer):
    """Multi-head scaled dot-product attention with masks and a KV cache.

    Projects `query`, `key` and `value` with `LoRADense` layers, attends with
    `softmax(q k^T / sqrt(key_dim) + bias)` over the allowed keys and projects
    the concatenated heads back with an output `LoRADense`. Attention logits,
    masking and the softmax are computed in float32 under every dtype policy.

    With `num_key_value_heads < num_heads` the layer is grouped-query
    attention: query head `h` uses key/value head
    `h // (num_heads // num_key_value_heads)` (`num_key_value_heads=1` is
    multi-query attention). `use_rotary=True` rotates queries and keys by
    their positions (RoPE); `position_bias="alibi"` or `"relative"` adds a
    per-head bias computed from query and key positions. Both position
    schemes count query positions from `cache_update_index` (0 without a
    cache) and key positions from 0, which is what self-attention needs.

    Masks are booleans, `True` meaning "may attend". `query_mask`,
    `value_mask`, `attention_mask` and the causal mask are combined with a
    logical AND. A query whose keys are all masked (e.g. a padded query row)
    gets uniform attention weights, so its output is finite but meaningless.

    Key/value cache: a pair `(keys, values)` of tensors of shapes
    `(batch_size, num_key_value_heads, max_length, key_dim)` and
    `(batch_size, num_key_value_heads, max_length, value_dim)` holding the
    projected (and, with rotary, rotated) keys and the projected values.
    Their shapes never change, so a decoding step compiles once under XLA.
    They are two tensors in the heads-major layout the attention products
    read: one `(batch, 2, length, heads, dim)` tensor (keras-hub's layout)
    made XLA copy every cache into that layout, cross-attention caches
    included, at every decoding step.
    - Self-attention decoding: pass `cache=layer.initial_cache(...)`,
      `cache_update_index=t` and `use_causal_mask=True`. The new tokens'
      keys/values are written at positions `t, t+1, ...` and the queries
      attend over the whole cache; the causal mask (offset `t`) hides the
      positions not written yet. Writes past `max_length` are not checked
      when `cache_update_index` is a tensor.
    - Cross-attention: pass `cache=layer.compute_key_value_cache(value)` and
      no `cache_update_index`; the cached keys/values are used as they are
      and `value`/`key` (if passed) are ignored.

    Args:
        num_heads: int. Number of attention (query) heads.
        key_dim: int. Size of each query/key head. Defaults to the query
            feature size divided by `num_heads`.
        value_dim: int. Size of each value head. Defaults to `key_dim`.
        num_key_value_heads: int. Number of key/value heads; must divide
            `num_heads`. Defaults to `num_heads`.
        dropout: float. Dropout rate on the attention probabilities.
        use_bias: bool. Whether the projections have biases.
        output_dim: int. Output feature size. Defaults to the query feature
            size.
        use_rotary: bool. Whether to apply rotary position embeddings to
            queries and keys. Requires an even `key_dim`.
        rotary_max_wavelength: float. Maximum wavelength of the rotary
            embedding.
        position_bias: `None`, `"alibi"` or `"relative"`. Additive position
            bias on the attention logits.
        relative_num_buckets: int. Buckets of the relative position bias.
        relative_max_distance: int. Largest distance the relative position
            bias distinguishes.
        relative_bidirectional: bool. Whether the relative position bias
            tells earlier and later keys apart (False for causal decoders).
        kernel_initializer: initializer for the query and key kernels (and
            the value/output kernels unless given below).
        value_kernel_initializer: initializer for the value kernel. Defaults
            to `kernel_initializer`.
        output_kernel_initializer: initializer for the output kernel.
            Defaults to `kernel_initializer`.
        bias_initializer: initializer for the projection biases.
        **kwargs: other keyword arguments passed to `keras.layers.Layer`,
            e.g. `name` and `dtype`.

    Call arguments:
        query: tensor `(batch_size, query_length, query_dim)`.
        value: tensor `(batch_size, key_length, value_dim_in)`. Defaults to
            `query` (self-attention).
        key: tensor `(batch_size, key_length, key_dim_in)`. Defaults to
            `value`.
        query_mask: bool `(batch_size, query_length)`. False rows are masked.
        value_mask: bool `(batch_size, key_length)` (with a cache:
            `(batch_size, max_length)`). False keys are masked.
        attention_mask: bool `(batch_size, query_length, key_length)`.
        use_causal_mask: bool. Mask keys after each query's position.
        attention_bias: float tensor broadcastable to
            `(batch_size, num_heads, query_length, key_length)`, added to
            the logits.
        cache: optional key/value cache (see above).
        cache_update_index: int or scalar int tensor. Where the new keys and
            values are written in `cache`.
        training: bool. Whether attention dropout is active.
        return_attention_scores: bool. Also return the attention
            probabilities `(batch_size, num_heads, query_length, key_length)`.
        dropout_seed: optional int tensor `(2,)` that fixes the attention
            dropout mask (see `stateless_dropout.draw_dropout_seed`); used by
            blocks with `remat=True`.

    Returns:
        `outputs` of shape `(batch_size, query_length, output_dim)`; when a
        cache is passed `(outputs, cache)`; when `return_attention_scores`
        the scores are appended last: `(outputs, scores)` or
        `(outputs, cache, scores)`.

    Example:

    ```python
    layer = keras_transformer.layers.MultiHeadAttention(
        num_heads=4, num_key_value_heads=2
    )
    x = np.random.rand(2, 5, 16).astype("float32")
    y = layer(x, use_causal_mask=True)  # (2, 5, 16)

    # Token-by-token decoding with a cache.
    cache = layer.initial_cache(batch_size=2, max_length=5)
    for t in range(5):
        y_t, cache = layer(
            x[:, t : t + 1], cache=cache, cache_update_index=t,
            use_causal_mask=True,
        )
    ```

    References:
        - [Vaswani et al., 2017](https://arxiv.org/abs/1706.03762)
        - [Ainslie et al., 2023](https://arxiv.org/abs/2305.13245)
          (grouped-query attention)
    """

    def __init__(
        self,
        num_heads,
        key_dim=None,
        value_dim=None,
        num_key_value_heads=None,
        dropout=0.0,
        use_bias=True,
        output_dim=None,
        use_rotary=False,
        rotary_max_wavelength=10000.0,
        position_bias=None,
        relative_num_buckets=32,
        relative_max_distance=128,
        relative_bidirectional=True,
        kernel_initializer="glorot_uniform",
        value_kernel_initializer=None,
        output_kernel_initializer=None,
        bias_initializer="zeros",
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.num_heads = validation.check_positive_int("num_heads", num_heads)
        self.key_dim = validation.check_positive_int(
            "key_dim", key_dim, allow_none=True
        )
        self.value_dim = validation.check_positive_int(
            "value_dim", value_dim, allow_none=True
        )
        self.num_key_value_heads = validation.check_positive_int(
            "num_key_value_heads", num_key_value_heads, allow_none=True
        )
        if self.num_key_value_heads is not None:
            validation.check_divisible(
                "num_heads",
                self.num_heads,
                "num_key_value_heads",
                self.num_key_value_heads,
            )
        self.dropout = validation.check_rate("dropout", dropout)
        self.use_bias = validation.check_bool("use_bias", use_bias)
        self.output_dim = validation.check_positive_int(
            "output_dim", output_dim, allow_none=True
        )
        self.use_rotary = validation.check_bool("use_rotary", use_rotary)
        if self.use_rotary and self.key_dim is not None and self.key_dim % 2:
            raise ValueError(
                "Received an invalid value for argument key_dim, expected an "
                "even number with use_rotary=True (rotary embeddings rotate "
                f"pairs of features). Received: key_dim={self.key_dim}"
            )
        self.rotary_max_wavelength = validation.check_positive_float(
            "rotary_max_wavelength", rotary_max_wavelength
        )
        self.position_bias = validation.check_choice(
            "position_bias", position_bias, POSITION_BIASES
        )
        self.relative_num_buckets = validation.check_positive_int(
            "relative_num_buckets", relative_num_buckets
        )
        self.relative_max_distance = validation.check_positive_int(
            "relative_max_distance", relative_max_distance
        )
        self.relative_bidirectional = validation.check_bool(
            "relative_bidirectional", relative_bidirectional
        )
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.value_kernel_initializer = keras.initializers.get(
            value_kernel_initializer or kernel_initializer
        )
        self.output_kernel_initializer = keras.initializers.get(
            output_kernel_initializer or kernel_initializer
        )
        self.bias_initializer = keras.initializers.get(bias_initializer)

        self._num_kv_heads = self.num_key_value_heads or self.num_heads
        self.attention_dropout = Dropout(
            self.dropout, name="attention_dropout", dtype=self.dtype_policy
        )
        self.rotary_embedding = (
            RotaryEmbedding(
                max_wavelength=self.rotary_max_wavelength,
                name="rotary_embedding",
                dtype=self.dtype_policy,
            )
            if self.use_rotary
            else None
        )
        if self.position_bias == "alibi":
            self.position_bias_layer = AlibiBias(
                self.num_heads, name="position_bias", dtype=self.dtype_policy
            )
        elif self.position_bias == "relative":
            self.position_bias_layer = RelativePositionBias(
                self.num_heads,
                num_buckets=self.relative_num_buckets,
                max_distance=self.relative_max_distance,
                bidirectional=self.relative_bidirectional,
                name="position_bias",
                dtype=self.dtype_policy,
            )
        else:
            self.position_bias_layer = None

    def build(self, query_shape, value_shape=None, key_shape=None):
        value_shape = query_shape if value_shape is None else value_shape
        key_shape = value_shape if key_shape is None else key_shape
        for argument, shape in (
            ("query", query_shape),
            ("value", value_shape),
            ("key", key_shape),
        ):
            validation.check_rank(self.name, argument, shape, 3)
        query_features = validation.check_last_dim(
            self.name, "query", query_shape, None
        )
        value_features = validation.check_last_dim(
            self.name, "value", value_shape, None
        )
        key_features = validation.check_last_dim(self.name, "key", key_shape, None)
        self._check_batch_sizes(query_shape, value_shape, key_shape)
        # What `call` checks its inputs against: the projections' kernels
        # are this wide.
        self._input_features = {
            "query": query_features,
            "value": value_features,
            "key": key_features,
        }
        if None not in (key_shape[1], value_shape[1]) and (
            key_shape[1] != value_shape[1]
        ):
            raise ValueError(
                f"Layer {self.name} expected key and value of the same length, "
                f"but received key shape {tuple(key_shape)} and value shape "
                f"{tuple(value_shape)}. Pass one key per value."
            )
        if self.key_dim is None and query_features % self.num_heads != 0:
            raise ValueError(
                f"Layer {self.name} cannot infer key_dim: the query feature "
                f"size {query_features} is not divisible by "
                f"num_heads={self.num_heads}. Pass key_dim explicitly or use "
                "a feature size that is a multiple of num_heads."
            )
        self._key_dim = self.key_dim or query_features // self.num_heads
        self._value_dim = self.value_dim or self._key_dim
        self._output_dim = self.output_dim or query_features
        if self.use_rotary and self._key_dim % 2 != 0:
            raise ValueError(
                f"Layer {self.name} uses rotary embeddings, which rotate pairs "
                f"of features, but key_dim={self._key_dim} is odd. Use an even "
                "key_dim."
            )

        def projection(name, units, kernel_initializer):
            return LoRADense(
                units,
                use_bias=self.use_bias,
                kernel_initializer=kernel_initializer,
                bias_initializer=self.bias_initializer,
                name=name,
                dtype=self.dtype_policy,
            )

        self.query_dense = projection(
            "query", self.num_heads * self._key_dim, self.kernel_initializer
        )
        self.key_dense = projection(
            "key", self._num_kv_heads * self._key_dim, self.kernel_initializer
        )
        self.value_dense = projection(
            "value",
            self._num_kv_heads * self._value_dim,
            self.value_kernel_initializer,
        )
        self.output_dense = projection(
            "output", self._output_dim, self.output_kernel_initializer
        )
        self.query_dense.build((None, None, query_features))
        self.key_dense.build((None, None, key_features))
        self.value_dense.build((None, None, value_features))
        self.output_dense.build((None, None, self.num_heads * self._value_dim))
        if self.rotary_embedding is not None:
            self.rotary_embedding.build((None, None, self.num_heads, self._key_dim))
        if self.position_bias_layer is not None:
            self.position_bias_layer.build((None, None), (None, None))

    # -- caches ---------------------------------------------------------

    def _check_batch_sizes(self, query_shape, value_shape, key_shape):
        batch_sizes = {
            shape[0] for shape in (query_shape, value_shape, key_shape)
        } - {None}
        if len(batch_sizes) > 1:
            raise ValueError(
                f"Layer {self.name} expected query, value and key of the same "
                f"batch size, but received query shape {tuple(query_shape)}, "
                f"value shape {tuple(value_shape)} and key shape "
                f"{tuple(key_shape)}."
            )

    def _check_call_shapes(self, query, value, key):
        """Refuses inputs unlike those the layer was built for, naming their
        shapes (the projections would fail with a raw MatMul error)."""
        shapes = {"query": tuple(query.shape)}
        if value is not None:
            shapes["value"] = tuple(value.shape)
            shapes["key"] = tuple(value.shape if key is None else key.shape)
        for argument, shape in shapes.items():
            validation.check_rank(self.name, argument, shape, 3)
            features = self._input_features[argument]
            if shape[-1] is not None and shape[-1] != features:
                raise ValueError(
                    f"Layer {self.name} was built for {argument} with {features} "
                    f"features, but received {argument} of shape {shape}. Call "
                    f"it on inputs of {features} features, or use a new layer."
                )
        if value is not None:
            self._check_batch_sizes(shapes["query"], shapes["value"], shapes["key"])

    def initial_cache(self, batch_size, max_length, dtype=None):
        """Returns an empty self-attention key/value cache.

        Args:
            batch_size: int. Batch size of the decoded sequences.
            max_length: int. Number of positions the cache holds.
            dtype: dtype of the cache. Defaults to the compute dtype.

        Returns:
            A pair of zero tensors: keys
            `(batch_size, num_key_value_heads, max_length, key_dim)` and
            values `(batch_size, num_key_value_heads, max_length, value_dim)`.
        """
        self._check_built("initial_cache")
        return tuple(
            ops.zeros(
                (batch_size, self._num_kv_heads, max_length, head_dim),
                dtype=dtype or self.compute_dtype,
            )
            for head_dim in (self._key_dim, self._value_dim)
        )

    def compute_key_value_cache(self, value, key=None):
        """Projects `value` (and `key`) once, for cached cross-attention.

        Args:
            value: tensor `(batch_size, key_length, value_dim_in)`.
            key: tensor `(batch_size, key_length, key_dim_in)`. Defaults to
                `value`.

        Returns:
            The pair `(keys, values)`, each
            `(batch_size, num_key_value_heads, key_length, head_dim)`, to
            pass as `cache` (without `cache_update_index`).
        """
        self._check_built("compute_key_value_cache")
        key = value if key is None else key
        return self._project_key_value(key, value, 0, None)

    def _check_built(self, method):
        if not self.built:
            raise ValueError(
                f"Layer {self.name} must be built before calling {method}(). "
                "Call the layer once or call `layer.build(query_shape, "
                "value_shape)` first."
            )

    def _check_cache(self, cache, cache_update_index, new_length):
        self._check_built("call() with a cache")
        expected = [
            (self._num_kv_heads, head_dim)
            for head_dim in (self._key_dim, self._value_dim)
        ]
        shapes = (
            [tuple(part.shape) for part in cache]
            if isinstance(cache, (tuple, list))
            else None
        )
        if (
            shapes is None
            or len(shapes) != 2
            or any(len(shape) != 4 for shape in shapes)
            or [(shape[1], shape[3]) for shape in shapes] != expected
            or shapes[0][2] != shapes[1][2]
        ):
            received = shapes if shapes is not None else tuple(cache.shape)
            raise ValueError(
                f"Layer {self.name} expected a cache (keys, values) of shapes "
                f"(batch_size, {self._num_kv_heads}, max_length, "
                f"{self._key_dim}) and (batch_size, {self._num_kv_heads}, "
                f"max_length, {self._value_dim}), but received {received}. "
                "Create it with `layer.initial_cache(batch_size, max_length)` "
                "or `layer.compute_key_value_cache(value)`."
            )
        # Known values only: a traced index, or a placeholder length of
        # shape inference, cannot be checked here.
        max_length = _static.known_length(shapes[0][2])
        new_length = _static.known_length(new_length)
        cache_update_index = _static.known_int(cache_update_index)
        if (
            cache_update_index is not None
            and max_length is not None
            and new_length is not None
            and cache_update_index + new_length > max_length
        ):
            raise ValueError(
                f"Layer {self.name} cannot write {new_length} positions at "
                f"cache_update_index={cache_update_index} into a cache of "
                f"max_length={max_length}. Use a longer cache."
            )

    # -- forward pass ---------------------------------------------------

    def _split_heads(self, projected, num_heads, head_dim):
        batch_size, length = ops.shape(projected)[0], ops.shape(projected)[1]
        return ops.reshape(projected, (batch_size, length, num_heads, head_dim))

    def _project_key_value(self, key, value, start_index, training):
        key_heads = self._split_heads(
            self.key_dense(key, training=training),
            self._num_kv_heads,
            self._key_dim,
        )
        value_heads = self._split_heads(
            self.value_dense(value, training=training),
            self._num_kv_heads,
            self._value_dim,
        )
        if self.rotary_embedding is not None:
            key_heads = self.rotary_embedding(key_heads, start_index=start_index)
        # Heads-major, as caches store them and the attention products read.
        return (
            ops.transpose(key_heads, (0, 2, 1, 3)),
            ops.transpose(value_heads, (0, 2, 1, 3)),
        )


    def _check_shape(self, argument, tensor, expected_shape, broadcastable=False):
        """Checks the static shape of an optional mask or bias tensor."""
        shape = tuple(tensor.shape)

        def matches(got, want):
            return None in (got, want) or got == want or (broadcastable and got == 1)

        if len(shape) != len(expected_shape) or not all(
            matches(got, want) for got, want in zip(shape, expected_shape)
        ):
            expected = "broadcastable to " if broadcastable else ""
            raise ValueError(
                f"Layer {self.name} expected {argument} of shape {expected}"
                f"{tuple(expected_shape)}, but received shape {shape}."
            )

    def _combined_mask(
        self,
        query_heads,
        key_heads,
        query_mask,
        value_mask,
        attention_mask,
        use_causal_mask,
        start_index,
    ):
        """ANDs every mask into one boolean of shape `(B or 1, 1, Lq, Lk)`."""
        batch_size, query_length = query_heads.shape[0], query_heads.shape[1]
        key_length = key_heads.shape[2]
        parts = []
        if query_mask is not None:
            self._check_shape("query_mask", query_mask, (batch_size, query_length))
            parts.append(ops.cast(query_mask, "bool")[:, :, None])
        if value_mask is not None:
            self._check_shape("value_mask", value_mask, (batch_size, key_length))
            parts.append(ops.cast(value_mask, "bool")[:, None, :])
        if attention_mask is not None:
            self._check_shape(
                "attention_mask",
                attention_mask,
                (batch_size, query_length, key_length),
            )
            parts.append(ops.cast(attention_mask, "bool"))
        if use_causal_mask:
            causal = masks.causal_mask(
                ops.shape(query_heads)[1], ops.shape(key_heads)[2], start_index
            )
            parts.append(causal[None])
        if not parts:
            return None
        return functools.reduce(ops.logical_and, parts)[:, None]

    def _combined_bias(self, query_heads, key_heads, attention_bias, start_index):
        """Sums the caller's bias and the position bias, in float32."""
        biases = []
        if attention_bias is not None:
            expected_shape = (
                query_heads.shape[0],
                self.num_heads,
                query_heads.shape[1],
                key_heads.shape[2],
            )
            self._check_shape(
                "attention_bias", attention_bias, expected_shape, broadcastable=True
            )
            biases.append(ops.cast(attention_bias, "float32"))
        if self.position_bias_layer is not None:
            query_positions = ops.arange(
                ops.shape(query_heads)[1], dtype="int32"
            ) + ops.cast(start_index, "int32")
            key_positions = ops.arange(ops.shape(key_heads)[2], dtype="int32")
            position_bias = self.position_bias_layer(
                query_positions[None], key_positions[None]
            )
            biases.append(ops.cast(position_bias, "float32"))
        if not biases:
            return None
        return functools.reduce(ops.add, biases)

    def _attend(
        self, query_heads, key_heads, value_heads, mask, bias, training, dropout_seed
    ):
        """Returns the concatenated heads and the attention probabilities.

        Queries are `(batch, length, heads, dim)`; keys and values are
        heads-major, `(batch, kv_heads, length, dim)`.
        """
        batch_size = ops.shape(query_heads)[0]
        query_length = ops.shape(query_heads)[1]
        key_length = ops.shape(key_heads)[2]
        groups = self.num_heads // self._num_kv_heads
        # Logits in float32: a float16 dot product can overflow, and the
        # softmax needs float32 precision to stay normalised.
        scaled_query = ops.cast(query_heads, "float32") * (self._key_dim**-0.5)
        query_scale, scaled_query = _shrink_huge(scaled_query)
        key_scale, key_heads = _shrink_huge(ops.cast(key_heads, "float32"))
        grouped_query = ops.reshape(
            scaled_query,
            (batch_size, query_length, self._num_kv_heads, groups, self._key_dim),
        )
        logits = ops.einsum("bqngd,bnkd->bngqk", grouped_query, key_heads)
        # Scale back one factor at a time: each product of finite numbers is
        # finite or +-inf, never NaN (which inf - inf inside the dot would be).
        query_scale = ops.reshape(
            query_scale, (batch_size, query_length, self._num_kv_heads, groups)
        )
        logits = logits * ops.transpose(query_scale, (0, 2, 3, 1))[..., None]
        logits = logits * key_scale[:, :, None, None, :, 0]
        logits = ops.reshape(
            logits, (batch_size, self.num_heads, query_length, key_length)
        )
        if bias is not None:
            logits = logits + bias
        logits = ops.clip(logits, -LOGIT_LIMIT, LOGIT_LIMIT)
        if mask is not None:
            logits = ops.where(mask, logits, MASKED_LOGIT)
            # A weight of 0 times a NaN or inf value is NaN: zero the values
            # of keys no query may see (padding), so non-finite numbers there
            # cannot leak into the unmasked rows.
            visible = ops.any(mask, axis=(1, 2))[:, None, :, None]
            value_heads = ops.where(visible, value_heads, ops.zeros_like(value_heads))
        probabilities = ops.cast(ops.softmax(logits, axis=-1), self.compute_dtype)
        weights = seeded_dropout(
            self.attention_dropout, probabilities, training=training, seed=dropout_seed
        )
        weights = ops.reshape(
            weights,
            (batch_size, self._num_kv_heads, groups, query_length, key_length),
        )
        context = ops.einsum(
            "bngqk,bnkd->bqngd", weights, ops.cast(value_heads, self.compute_dtype)
        )
        context = ops.reshape(
            context, (batch_size, query_length, self.num_heads * self._value_dim)
        )
        return context, probabilities

    def call(
        self,
        query,
        value=None,
        key=None,
        query_mask=None,
        value_mask=None,
        attention_mask=None,
        use_causal_mask=False,
        attention_bias=None,
        cache=None,
        cache_update_index=None,
        training=None,
        return_attention_scores=False,
        dropout_seed=None,
    ):
        if cache_update_index is not None and cache is None:
            raise ValueError(
                f"Layer {self.name} received cache_update_index="
                f"{cache_update_index!r} but no cache. Pass "
                "cache=layer.initial_cache(batch_size, max_length) as well."
            )
        start_index = 0 if cache_update_index is None else cache_update_index
        uses_cache_only = cache is not None and cache_update_index is None
        self._check_call_shapes(
            query,
            None if uses_cache_only else (query if value is None else value),
            None if uses_cache_only else key,
        )
        query_heads = self._split_heads(
            self.query_dense(query, training=training),
            self.num_heads,
            self._key_dim,
        )
        if cache is not None and cache_update_index is None:
            self._check_cache(cache, None, None)
            key_heads, value_heads = cache
        else:
            value = query if value is None else value
            key = value if key is None else key
            if cache is not None:
                self._check_cache(cache, cache_update_index, key.shape[1])
            key_heads, value_heads = self._project_key_value(
                key, value, start_index, training
            )
            if cache is not None:
                start = [0, 0, ops.cast(start_index, "int32"), 0]
                cache = tuple(
                    ops.slice_update(cached, start, ops.cast(new, cached.dtype))
                    for cached, new in zip(cache, (key_heads, value_heads))
                )
                key_heads, value_heads = cache
        if self.rotary_embedding is not None:
            query_heads = self.rotary_embedding(query_heads, start_index=start_index)

        mask = self._combined_mask(
            query_heads,
            key_heads,
            query_mask,
            value_mask,
            attention_mask,
            use_causal_mask,
            start_index,
        )
        bias = self._combined_bias(
            query_heads, key_heads, attention_bias, start_index
        )
        context, scores = self._attend(
            query_heads, key_heads, value_heads, mask, bias, training, dropout_seed
        )
        outputs = self.output_dense(context, training=training)
        return self._pack(outputs, cache, scores, return_attention_scores)

    @staticmethod
    def _pack(outputs, cache, scores, return_attention_scores):
        results = [outputs]
        if cache is not None:
            results.append(cache)
        if return_attention_scores:
            results.append(scores)
        return results[0] if len(results) == 1 else tuple(results)

    def compute_output_shape(self, query_shape, value_shape=None, key_shape=None):
        output_dim = self.output_dim or query_shape[-1]
        return tuple(query_shape[:-1]) + (output_dim,)

    def compute_output_spec(
        self,
        query,
        value=None,
        key=None,
        query_mask=None,
        value_mask=None,
        attention_mask=None,
        use_causal_mask=False,
        attention_bias=None,
        cache=None,
        cache_update_index=None,
        training=None,
        return_attention_scores=False,
        dropout_seed=None,
    ):
        outputs = keras.KerasTensor(
            self.compute_output_shape(query.shape), dtype=self.compute_dtype
        )
        if cache is not None:
            key_length = cache[0].shape[2]
            cache = tuple(keras.KerasTensor(c.shape, dtype=c.dtype) for c in cache)
        else:
            attended = next(t for t in (key, value, query) if t is not None)
            key_length = attended.shape[1]
        scores = keras.KerasTensor(
            (query.shape[0], self.num_heads, query.shape[1], key_length),
            dtype=self.compute_dtype,
        )
        return self._pack(outputs, cache, scores, return_attention_scores)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "num_heads": self.num_heads,
                "key_dim": self.key_dim,
                "value_dim": self.value_dim,
                "num_key_value_heads": self.num_key_value_heads,
                "dropout": self.dropout,
                "use_bias": self.use_bias,
                "output_dim": self.output_dim,
                "use_rotary": self.use_rotary,
                "rotary_max_wavelength": self.rotary_max_wavelength,
                "position_bias": self.position_bias,
                "relative_num_buckets": self.relative_num_buckets,
                "relative_max_distance": self.relative_max_distance,
                "relative_bidirectional": self.relative_bidirectional,
                "kernel_initializer": keras.initializers.serialize(
                    self.kernel_initializer
                ),
                "value_kernel_initializer": keras.initializers.serialize(
                    self.value_kernel_initializer
                ),
                "output_kernel_initializer": keras.initializers.serialize(
                    self.output_kernel_initializer
                ),
                "bias_initializer": keras.initializers.serialize(
                    self.bias_initializer
                ),
            }
        )
        return config
