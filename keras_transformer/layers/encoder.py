"""Transformer encoder block."""

import keras

from keras_transformer import validation
from keras_transformer.layers._block import TransformerBlockBase


@keras.saving.register_keras_serializable(package="keras_transformer")
class TransformerEncoderBlock(TransformerBlockBase):
    """One Transformer encoder block: self-attention then feed-forward.

    Each sublayer is wrapped in a `Residual` whose `norm_placement` chooses
    post-norm (the original Transformer), pre-norm, sandwich, DeepNorm or
    ReZero. Argument names follow keras-hub's `TransformerEncoder` where one
    exists (`intermediate_dim`, `num_heads`, `dropout`, `activation`,
    `layer_norm_epsilon`). A stack of pre-norm or sandwich blocks needs a final
    normalisation: see `needs_final_norm` and `make_normalization`.

    Args:
        intermediate_dim: int. Hidden size of the feed-forward network.
        num_heads: int. Number of attention heads.
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
        use_rotary: bool. Apply rotary position embeddings to queries and keys.
        position_bias: str. `None`, `"alibi"` or `"relative"` (T5 buckets).
        deepnorm_alpha: float. DeepNorm residual scale (only with
            `norm_placement="deepnorm"`); see `deepnorm_constants`.
        deepnorm_beta: float. DeepNorm initialiser gain for the value, output
            and feed-forward kernels (only with `norm_placement="deepnorm"`).
        kernel_initializer: initializer for the projection kernels.
        bias_initializer: initializer for the projection biases.
        remat: bool. Recompute the block's activations in the backward pass
            instead of keeping them (gradient checkpointing): a stack keeps
            only each block's inputs, for a second forward pass per block.
            Applies to training calls; dropout masks are drawn once per call
            and reused, so gradients equal those of `remat=False`.
        **kwargs: other keyword arguments passed to `keras.layers.Layer`.

    Call arguments:
        inputs: float tensor of shape `(batch, length, hidden_dim)`.
        padding_mask: optional bool tensor `(batch, length)`, True for real
            tokens. Padded positions are never attended to.
        attention_mask: optional bool tensor `(batch, length, length)`.
        training: bool. Whether dropout is active.
        return_attention_scores: bool. Also return the attention
            probabilities `(batch, num_heads, length, length)`.

    Returns:
        `outputs` of the input's shape, or `(outputs, attention_scores)`.

    Example:

    ```python
    import numpy as np
    from keras_transformer import layers

    block = layers.TransformerEncoderBlock(intermediate_dim=64, num_heads=4)
    hidden = np.random.rand(2, 10, 32).astype("float32")
    mask = np.array([[True] * 10, [True] * 6 + [False] * 4])
    outputs = block(hidden, padding_mask=mask)  # (2, 10, 32)
    ```

    References:
        - [Vaswani et al., 2017](https://arxiv.org/abs/1706.03762)
        - [Xiong et al., 2020](https://arxiv.org/abs/2002.04745) (pre-norm)
        - [Wang et al., 2022](https://arxiv.org/abs/2203.00555) (DeepNorm)
    """

    def __init__(self, intermediate_dim, num_heads, **kwargs):
        super().__init__(intermediate_dim, num_heads, **kwargs)
        self.self_attention = self._attention(
            "self_attention",
            use_rotary=self.use_rotary,
            position_bias=self.position_bias,
            bidirectional=True,
        )
        self.feed_forward = self._feed_forward()

    def build(self, inputs_shape):
        validation.check_rank(self.name, "inputs", inputs_shape, 3)
        validation.check_last_dim(self.name, "inputs", inputs_shape, None)
        self._build_residual(self.self_attention, inputs_shape)
        self._build_residual(self.feed_forward, inputs_shape)

    def call(
        self,
        inputs,
        padding_mask=None,
        attention_mask=None,
        training=None,
        return_attention_scores=False,
    ):
        return self._call_block(
            self._forward,
            (inputs,),
            training,
            padding_mask=padding_mask,
            attention_mask=attention_mask,
            return_attention_scores=return_attention_scores,
        )

    def _forward(
        self,
        inputs,
        padding_mask,
        attention_mask,
        training,
        return_attention_scores,
        dropout_seeds,
    ):
        attended, extras = self._run_residual(
            self.self_attention,
            inputs,
            value_mask=padding_mask,
            attention_mask=attention_mask,
            training=training,
            return_attention_scores=return_attention_scores,
            dropout_seeds=dropout_seeds,
        )
        outputs, _ = self._run_residual(
            self.feed_forward,
            attended,
            training=training,
            dropout_seeds=dropout_seeds,
        )
        if return_attention_scores:
            return outputs, extras[0]
        return outputs
