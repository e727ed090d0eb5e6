"""What the encoder and decoder blocks share: arguments, validation, sublayers."""

import keras

from keras_transformer import _compat, validation
from keras_transformer.layers.attention import MultiHeadAttention
from keras_transformer.layers.feed_forward import FeedForward
from keras_transformer.layers.residual import (
    NORM_PLACEMENTS,
    Residual,
    deepnorm_initializer,
)
from keras_transformer.layers.stateless_dropout import draw_dropout_seed


class TransformerBlockBase(keras.layers.Layer):
    """Base class of `TransformerEncoderBlock` and `TransformerDecoderBlock`.

    Holds the constructor arguments both blocks take and builds their
    residual-wrapped attention and feed-forward sublayers. Not public: use the
    encoder or decoder block.
    """

    def __init__(
        self,
        intermediate_dim,
        num_heads,
        num_key_value_heads=None,
        key_dim=None,
        dropout=0.0,
        attention_dropout=None,
        feed_forward_dropout=None,
        activation="relu",
        layer_norm_epsilon=1e-5,
        norm_placement="post",
        norm_type="layer_norm",
        use_rotary=False,
        position_bias=None,
        deepnorm_alpha=1.0,
        deepnorm_beta=1.0,
        kernel_initializer="glorot_uniform",
        bias_initializer="zeros",
        remat=False,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.intermediate_dim = validation.check_positive_int(
            "intermediate_dim", intermediate_dim
        )
        self.num_heads = validation.check_positive_int("num_heads", num_heads)
        self.num_key_value_heads = validation.check_positive_int(
            "num_key_value_heads", num_key_value_heads, allow_none=True
        )
        self.key_dim = validation.check_positive_int(
            "key_dim", key_dim, allow_none=True
        )
        self.dropout = validation.check_rate("dropout", dropout)
        # Unset rates follow `dropout`, so a single rate behaves like keras-hub.
        self.attention_dropout = validation.check_rate(
            "attention_dropout",
            self.dropout if attention_dropout is None else attention_dropout,
        )
        self.feed_forward_dropout = validation.check_rate(
            "feed_forward_dropout",
            self.dropout if feed_forward_dropout is None else feed_forward_dropout,
        )
        self.activation = activation
        self.layer_norm_epsilon = validation.check_positive_float(
            "layer_norm_epsilon", layer_norm_epsilon
        )
        self.norm_placement = validation.check_choice(
            "norm_placement", norm_placement, NORM_PLACEMENTS
        )
        self.norm_type = norm_type
        self.use_rotary = validation.check_bool("use_rotary", use_rotary)
        self.position_bias = position_bias
        self.deepnorm_alpha = validation.check_positive_float(
            "deepnorm_alpha", deepnorm_alpha
        )
        self.deepnorm_beta = validation.check_positive_float(
            "deepnorm_beta", deepnorm_beta
        )
        if norm_placement != "deepnorm" and (deepnorm_alpha, deepnorm_beta) != (
            1.0,
            1.0,
        ):
            raise ValueError(
                "Received deepnorm_alpha and deepnorm_beta with "
                f"norm_placement={norm_placement!r}, expected them only with "
                "norm_placement='deepnorm'. Received: "
                f"deepnorm_alpha={deepnorm_alpha}, deepnorm_beta={deepnorm_beta}. "
                "Use norm_placement='deepnorm' or leave both at 1.0."
            )
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.bias_initializer = keras.initializers.get(bias_initializer)
        self.remat = validation.check_bool("remat", remat)

    def _scaled_initializer(self):
        """DeepNorm scales the value, output and feed-forward kernels by beta."""
        if self.norm_placement == "deepnorm":
            return deepnorm_initializer(self.deepnorm_beta)
        return self.kernel_initializer

    def _residual(self, sublayer, name):
        return Residual(
            sublayer,
            norm_placement=self.norm_placement,
            norm_type=self.norm_type,
            epsilon=self.layer_norm_epsilon,
            dropout=self.dropout,
            deepnorm_alpha=self.deepnorm_alpha,
            name=name,
            dtype=self.dtype_policy,
        )

    def _attention(self, name, use_rotary, position_bias, bidirectional):
        scaled = self._scaled_initializer()
        attention = MultiHeadAttention(
            num_heads=self.num_heads,
            key_dim=self.key_dim,
            num_key_value_heads=self.num_key_value_heads,
            dropout=self.attention_dropout,
            use_rotary=use_rotary,
            position_bias=position_bias,
            relative_bidirectional=bidirectional,
            kernel_initializer=self.kernel_initializer,
            value_kernel_initializer=scaled,
            output_kernel_initializer=scaled,
            bias_initializer=self.bias_initializer,
            name=name,
            dtype=self.dtype_policy,
        )
        return self._residual(attention, name=f"{name}_residual")

    @staticmethod
    def _build_residual(residual, inputs_shape, *sublayer_shapes):
        """Builds a residual and its sublayer, so weights exist after build."""
        residual.build(inputs_shape)
        residual.sublayer.build(inputs_shape, *sublayer_shapes)

    @staticmethod
    def _run_residual(
        residual, inputs, *args, training=None, dropout_seeds=None, **kwargs
    ):
        """Calls `residual.sublayer` directly with its own arguments.

        `dropout_seeds` is `_draw_dropout_seeds`' result (or `None`): the
        seeds of this residual's two dropouts are looked up by its name.
        Returns the residual output and the sublayer's extra outputs (caches,
        attention scores) as a list.
        """
        sublayer_seed, residual_seed = (dropout_seeds or {}).get(
            residual.name, (None, None)
        )
        outputs = residual.sublayer(
            residual.normalize_inputs(inputs),
            *args,
            training=training,
            dropout_seed=sublayer_seed,
            **kwargs,
        )
        extras = []
        if isinstance(outputs, (tuple, list)):
            outputs, *extras = outputs
        outputs = residual.add_residual(
            inputs, outputs, training=training, dropout_seed=residual_seed
        )
        return outputs, extras

    def _residuals(self):
        return [
            layer
            for layer in _compat.child_layers(self)
            if isinstance(layer, Residual)
        ]

    @staticmethod
    def _sublayer_dropout(residual):
        """The dropout inside an attention or feed-forward sublayer."""
        sublayer = residual.sublayer
        if isinstance(sublayer, MultiHeadAttention):
            return sublayer.attention_dropout
        return sublayer.dropout_layer

    def _draw_dropout_seeds(self, training):
        """Draws every dropout seed of one call, outside the recomputed region.

        Each seed comes from its own dropout layer's generator, as that
        layer's call would draw it, so the masks equal those of `remat=False`
        and the recomputation in the backward pass reuses them.

        Returns:
            `{residual name: (sublayer dropout seed, residual dropout seed)}`,
            a seed being `None` where that dropout is inactive.
        """
        seeds = {}
        for residual in self._residuals():
            dropouts = (self._sublayer_dropout(residual), residual.dropout_layer)
            seeds[residual.name] = tuple(
                draw_dropout_seed(dropout, training) for dropout in dropouts
            )
            self._check_no_unseeded_dropout(residual, dropouts)
        return seeds

    def _check_no_unseeded_dropout(self, residual, seeded):
        """Raises if a dropout without a seed (LoRA's) would be recomputed."""
        for layer in _compat.child_layers(residual, recursive=True):
            if (
                isinstance(layer, keras.layers.Dropout)
                and layer.rate > 0
                and all(layer is not dropout for dropout in seeded)
            ):
                raise ValueError(
                    f"Layer {self.name} has remat=True, but dropout layer "
                    f"{layer.name!r} in {residual.name} (rate {layer.rate}) "
                    "cannot replay its mask when the block is recomputed, so "
                    "its gradients would be wrong. Use remat=False, or rate 0 "
                    "for that layer (for LoRA: lora_dropout=0.0)."
                )

    def _call_block(self, forward, tensors, training, allow_remat=True, **options):
        """Returns `forward(*tensors, training=..., dropout_seeds=..., **options)`.

        With `remat=True`, in training and when `allow_remat`, the call runs
        under `keras.remat`, so its activations are recomputed in the backward
        pass instead of kept. Inference is never recomputed: it has no backward
        pass, and its graphs (exports) stay free of custom gradients.

        `tensors` are the float inputs that gradients flow to, passed
        positionally: in graphs `tf.recompute_grad` rejects keyword arguments
        (keras#21207) and adds zero to each positional argument, which fails
        on booleans. Flags, masks and dropout seeds take no gradient, so they
        are bound in a closure instead.
        """
        remat = self.remat and bool(training) and allow_remat
        dropout_seeds = self._draw_dropout_seeds(training) if remat else None

        def run(*values):
            return forward(
                *values, training=training, dropout_seeds=dropout_seeds, **options
            )

        return (keras.remat(run) if remat else run)(*tensors)

    def _feed_forward(self):
        feed_forward = FeedForward(
            intermediate_dim=self.intermediate_dim,
            activation=self.activation,
            dropout=self.feed_forward_dropout,
            kernel_initializer=self._scaled_initializer(),
            bias_initializer=self.bias_initializer,
            name="feed_forward",
            dtype=self.dtype_policy,
        )
        return self._residual(feed_forward, name="feed_forward_residual")

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "intermediate_dim": self.intermediate_dim,
                "num_heads": self.num_heads,
                "num_key_value_heads": self.num_key_value_heads,
                "key_dim": self.key_dim,
                "dropout": self.dropout,
                "attention_dropout": self.attention_dropout,
                "feed_forward_dropout": self.feed_forward_dropout,
                "activation": self.activation,
                "layer_norm_epsilon": self.layer_norm_epsilon,
                "norm_placement": self.norm_placement,
                "norm_type": self.norm_type,
                "use_rotary": self.use_rotary,
                "position_bias": self.position_bias,
                "deepnorm_alpha": self.deepnorm_alpha,
                "deepnorm_beta": self.deepnorm_beta,
                "kernel_initializer": keras.initializers.serialize(
                    self.kernel_initializer
                ),
                "bias_initializer": keras.initializers.serialize(
                    self.bias_initializer
                ),
                "remat": self.remat,
            }
        )
        return config
