"""Transformer decoder block with key/value caches for incremental decoding."""

import keras

from keras_transformer import validation
from keras_transformer.layers._block import TransformerBlockBase


@keras.saving.register_keras_serializable(package="keras_transformer")
class TransformerDecoderBlock(TransformerBlockBase):
    """One Transformer decoder block: causal self-attention, cross-attention
    over the encoder output, then feed-forward.

    Each sublayer is wrapped in a `Residual` with the chosen `norm_placement`.
    With `use_cross_attention=False` it is a decoder-only (GPT-style) block.
    For incremental decoding the block takes a fixed-size self-attention cache
    and a step index, and a cross-attention cache computed once from the
    encoder output (`compute_cross_attention_cache`); every step has the same
    shapes, so a decode loop compiles once under XLA.

    Args:
        intermediate_dim: int. Hidden size of the feed-forward network.
        num_heads: int. Number of attention heads.
        use_cross_attention: bool. Whether the block attends to an encoder
            output. Defaults to `True`.
        num_key_value_heads: int. Key/value heads for grouped-query attention;
            must divide `num_heads`. Defaults to `num_heads`.
        key_dim: int. Size of each attention head. Defaults to
            `hidden_dim // num_heads`.
        dropout: float. Residual dropout rate; also the attention and
            feed-forward dropout rates unless those are given.
        attention_dropout: float. Dropout on the attention probabilities.
        feed_forward_dropout: float. Dropout between the feed-forward
            projections.
        activation: str. Feed-forward activation: a Keras activation name or
            `"geglu"` / `"swiglu"`.
        layer_norm_epsilon: float. Epsilon of every normalisation layer.
        norm_placement: str. One of `"post"`, `"pre"`, `"sandwich"`,
            `"deepnorm"`, `"rezero"`.
        norm_type: str. `"layer_norm"` or `"rms_norm"`.
        use_rotary: bool. Rotary position embeddings in self-attention.
        position_bias: str. `None`, `"alibi"` or `"relative"` (T5 buckets,
            unidirectional) in self-attention.
        deepnorm_alpha: float. DeepNorm residual scale; see
            `deepnorm_constants`.
        deepnorm_beta: float. DeepNorm initialiser gain for the value, output
            and feed-forward kernels.
        kernel_initializer: initializer for the projection kernels.
        bias_initializer: initializer for the projection biases.
        remat: bool. Recompute the block's activations in the backward pass
            instead of keeping them (gradient checkpointing): a stack keeps
            only each block's inputs, for a second forward pass per block.
            Applies to training calls without caches; dropout masks are drawn
            once per call and reused, so gradients equal those of
            `remat=False`.
        **kwargs: other keyword arguments passed to `keras.layers.Layer`.

    Call arguments:
        decoder_sequence: float tensor `(batch, target_length, hidden_dim)`.
        encoder_sequence: float tensor `(batch, source_length, hidden_dim)`;
            required with cross-attention unless `cross_attention_cache` is
            given.
        decoder_padding_mask: optional bool `(batch, target_length)`, True for
            real tokens (with a cache: `(batch, cache_length)`).
        decoder_attention_mask: optional bool
            `(batch, target_length, target_length)`.
        encoder_padding_mask: optional bool `(batch, source_length)`.
        encoder_attention_mask: optional bool
            `(batch, target_length, source_length)`.
        self_attention_cache: optional pair `(keys, values)` of tensors
            `(batch, num_key_value_heads, cache_length, head_dim)`, from
            `initial_self_attention_cache`.
        self_attention_cache_update_index: int or scalar int tensor: the
            position of the first token of `decoder_sequence` in the cache.
        cross_attention_cache: optional pair `(keys, values)` of tensors
            `(batch, num_key_value_heads, source_length, head_dim)`, from
            `compute_cross_attention_cache`.
        use_causal_mask: bool. Mask future positions. Defaults to `True`.
        training: bool. Whether dropout is active.
        return_attention_scores: bool. Also return the attention probabilities
            of every attention sublayer.

    Returns:
        `outputs`, followed, when `self_attention_cache` is given, by the
        updated self-attention cache and (with cross-attention) the
        cross-attention cache, and then, when `return_attention_scores`, by the
        self-attention scores and (with cross-attention) the cross-attention
        scores, each `(batch, num_heads, query_length, key_length)`.

    Example:

    ```python
    import numpy as np
    from keras_transformer import layers

    block = layers.TransformerDecoderBlock(intermediate_dim=64, num_heads=4)
    target = np.random.rand(2, 7, 32).astype("float32")
    source = np.random.rand(2, 9, 32).astype("float32")
    outputs = block(target, source)  # (2, 7, 32)

    # Incremental decoding: one token per step, fixed shapes.
    cache = block.initial_self_attention_cache(batch_size=2, max_length=7)
    cross_cache = block.compute_cross_attention_cache(source)
    step, cache, cross_cache = block(
        target[:, :1],
        self_attention_cache=cache,
        self_attention_cache_update_index=0,
        cross_attention_cache=cross_cache,
    )
    ```

    References:
        - [Vaswani et al., 2017](https://arxiv.org/abs/1706.03762)
    """

    def __init__(
        self, intermediate_dim, num_heads, use_cross_attention=True, **kwargs
    ):
        super().__init__(intermediate_dim, num_heads, **kwargs)
        self.use_cross_attention = validation.check_bool(
            "use_cross_attention", use_cross_attention
        )
        self.self_attention = self._attention(
            "self_attention",
            use_rotary=self.use_rotary,
            position_bias=self.position_bias,
            bidirectional=False,
        )
        # Positions of source and target tokens are unrelated, so the
        # cross-attention carries no position scheme of its own.
        self.cross_attention = (
            self._attention(
                "cross_attention",
                use_rotary=False,
                position_bias=None,
                bidirectional=True,
            )
            if self.use_cross_attention
            else None
        )
        self.feed_forward = self._feed_forward()

    def build(self, decoder_sequence_shape, encoder_sequence_shape=None):
        validation.check_rank(
            self.name, "decoder_sequence", decoder_sequence_shape, 3
        )
        validation.check_last_dim(
            self.name, "decoder_sequence", decoder_sequence_shape, None
        )
        self._build_residual(self.self_attention, decoder_sequence_shape)
        if self.cross_attention is not None:
            self._build_residual(
                self.cross_attention,
                decoder_sequence_shape,
                encoder_sequence_shape or decoder_sequence_shape,
            )
        self._build_residual(self.feed_forward, decoder_sequence_shape)

    def initial_self_attention_cache(self, batch_size, max_length, dtype=None):
        """Zero keys and values, each `(batch, kv_heads, max_length, head_dim)`."""
        return self.self_attention.sublayer.initial_cache(
            batch_size, max_length, dtype=dtype
        )

    def compute_cross_attention_cache(self, encoder_sequence):
        """Projects the encoder output to keys and values once per sequence."""
        if self.cross_attention is None:
            raise ValueError(
                f"Layer {self.name} was built with use_cross_attention=False, "
                "so it has no cross-attention cache. Construct it with "
                "use_cross_attention=True to attend to an encoder output."
            )
        return self.cross_attention.sublayer.compute_key_value_cache(
            encoder_sequence
        )

    def call(
        self,
        decoder_sequence,
        encoder_sequence=None,
        decoder_padding_mask=None,
        decoder_attention_mask=None,
        encoder_padding_mask=None,
        encoder_attention_mask=None,
        self_attention_cache=None,
        self_attention_cache_update_index=None,
        cross_attention_cache=None,
        use_causal_mask=True,
        training=None,
        return_attention_scores=False,
    ):
        caching = self_attention_cache is not None
        if caching and self_attention_cache_update_index is None:
            raise ValueError(
                "Received self_attention_cache without "
                "self_attention_cache_update_index. Pass the cache position of "
                "the first token of decoder_sequence (0 for the first step)."
            )
        if (
            self.cross_attention is not None
            and encoder_sequence is None
            and cross_attention_cache is None
        ):
            raise ValueError(
                f"Layer {self.name} has cross-attention and needs "
                "encoder_sequence or cross_attention_cache. Received neither. "
                "Pass the encoder output, or build the block with "
                "use_cross_attention=False for a decoder-only model."
            )
        tensors = (decoder_sequence,)
        if encoder_sequence is not None:
            tensors += (encoder_sequence,)
        # A decoding step with caches is inference; its cache outputs are
        # state, not activations to recompute.
        uses_cache = caching or cross_attention_cache is not None
        return self._call_block(
            self._forward,
            tensors,
            training,
            allow_remat=not uses_cache,
            decoder_padding_mask=decoder_padding_mask,
            decoder_attention_mask=decoder_attention_mask,
            encoder_padding_mask=encoder_padding_mask,
            encoder_attention_mask=encoder_attention_mask,
            self_attention_cache=self_attention_cache,
            self_attention_cache_update_index=self_attention_cache_update_index,
            cross_attention_cache=cross_attention_cache,
            use_causal_mask=use_causal_mask,
            return_attention_scores=return_attention_scores,
        )

    def _forward(
        self,
        decoder_sequence,
        encoder_sequence=None,
        *,
        decoder_padding_mask,
        decoder_attention_mask,
        encoder_padding_mask,
        encoder_attention_mask,
        self_attention_cache,
        self_attention_cache_update_index,
        cross_attention_cache,
        use_causal_mask,
        training,
        return_attention_scores,
        dropout_seeds,
    ):
        caching = self_attention_cache is not None
        new_caches, scores = [], []

        def collect(extras, has_cache):
            """Sorts an attention call's extra outputs: cache first, then scores."""
            if has_cache:
                new_caches.append(extras.pop(0))
            if return_attention_scores:
                scores.append(extras.pop(0))

        hidden, extras = self._run_residual(
            self.self_attention,
            decoder_sequence,
            value_mask=decoder_padding_mask,
            attention_mask=decoder_attention_mask,
            use_causal_mask=use_causal_mask,
            cache=self_attention_cache,
            cache_update_index=self_attention_cache_update_index,
            training=training,
            return_attention_scores=return_attention_scores,
            dropout_seeds=dropout_seeds,
        )
        collect(extras, has_cache=caching)

        if self.cross_attention is not None:
            if caching and cross_attention_cache is None:
                cross_attention_cache = self.compute_cross_attention_cache(
                    encoder_sequence
                )
            hidden, extras = self._run_residual(
                self.cross_attention,
                hidden,
                encoder_sequence,
                value_mask=encoder_padding_mask,
                attention_mask=encoder_attention_mask,
                cache=cross_attention_cache,
                training=training,
                return_attention_scores=return_attention_scores,
                dropout_seeds=dropout_seeds,
            )
            collect(extras, has_cache=cross_attention_cache is not None)

        outputs, _ = self._run_residual(
            self.feed_forward,
            hidden,
            training=training,
            dropout_seeds=dropout_seeds,
        )
        if not (caching or return_attention_scores):
            return outputs
        # A cross-attention cache passed without a self-attention cache is
        # an input, not decoding state, so it is not returned.
        returned_caches = new_caches if caching else []
        return (outputs, *returned_caches, *scores)

    def get_config(self):
        config = super().get_config()
        config["use_cross_attention"] = self.use_cross_attention
        return config
