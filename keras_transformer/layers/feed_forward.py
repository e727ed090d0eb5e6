"""Position-wise feed-forward block, plain or gated (GEGLU / SwiGLU)."""

import keras

from keras_transformer import validation
from keras_transformer.layers.dropout import Dropout
from keras_transformer.layers.lora import LoRADense
from keras_transformer.layers.stateless_dropout import seeded_dropout

GATED_ACTIVATIONS = {
    "geglu": lambda x: keras.activations.gelu(x, approximate=False),
    "swiglu": keras.activations.silu,
}


def _keras_activation(activation):
    try:
        return keras.activations.get(activation)
    except (ValueError, TypeError):
        raise ValueError(
            "Received an invalid value for argument activation, expected "
            "'geglu', 'swiglu', the name of a Keras activation (such as "
            "'relu', 'gelu', 'silu', 'tanh') or a callable. "
            f"Received: activation={activation!r}"
        ) from None


@keras.saving.register_keras_serializable(package="keras_transformer")
class FeedForward(keras.layers.Layer):
    """Position-wise feed-forward block of a Transformer.

    Projects every position to `intermediate_dim` features, applies the
    activation and dropout, then projects back to the input feature size.
    With `activation="geglu"` or `"swiglu"` the block is gated: a second
    projection `gate` goes through GELU or SiLU and multiplies the
    `intermediate` projection element-wise, as in Shazeer (2020).

    All projections are `LoRADense` layers named `intermediate`, `gate`
    (gated variants only) and `output`, so LoRA can be enabled on them by
    path.

    Args:
        intermediate_dim: int. Hidden size of the block.
        activation: str or callable. Any Keras activation, or `"geglu"`
            (`gelu(x W_gate) * (x W_up)`, exact GELU) or `"swiglu"`
            (`silu(x W_gate) * (x W_up)`). Defaults to `"relu"`.
        dropout: float. Dropout rate on the activations, between the two
            projections. Defaults to `0.0`.
        use_bias: bool. Whether the projections have biases. Defaults to
            `True`.
        kernel_initializer: initializer for the `intermediate` and `gate`
            kernels. Each kernel gets its own copy, so unseeded initializers
            draw different values; a seeded initializer draws the same values
            for both same-shaped kernels. Defaults to `"glorot_uniform"`.
        output_kernel_initializer: initializer for the `output` kernel, for
            schemes that scale it separately (e.g. DeepNet). `None` uses
            `kernel_initializer`. Defaults to `None`.
        bias_initializer: initializer for all biases. Defaults to `"zeros"`.
        **kwargs: other keyword arguments passed to `keras.layers.Layer`,
            including `name` and `dtype`.

    Call arguments:
        inputs: float tensor of shape `(..., hidden_dim)`; `hidden_dim` must
            be known at build time.
        training: bool. Whether dropout is active.
        dropout_seed: optional int tensor `(2,)` that fixes the dropout mask
            (see `stateless_dropout.draw_dropout_seed`); used by blocks with
            `remat=True`.

    Returns:
        A tensor of the same shape as `inputs`.

    Example:

    ```python
    ffn = keras_transformer.layers.FeedForward(64, activation="swiglu")
    outputs = ffn(np.random.rand(2, 8, 16).astype("float32"))  # (2, 8, 16)
    ```

    References:
        - [Vaswani et al., 2017](https://arxiv.org/abs/1706.03762)
        - [Shazeer, 2020](https://arxiv.org/abs/2002.05202)
    """

    def __init__(
        self,
        intermediate_dim,
        activation="relu",
        dropout=0.0,
        use_bias=True,
        kernel_initializer="glorot_uniform",
        output_kernel_initializer=None,
        bias_initializer="zeros",
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.intermediate_dim = validation.check_positive_int(
            "intermediate_dim", intermediate_dim
        )
        self.gated = isinstance(activation, str) and activation in GATED_ACTIVATIONS
        if self.gated:
            self.activation = GATED_ACTIVATIONS[activation]
            self._activation_config = activation
        else:
            self.activation = _keras_activation(activation)
            self._activation_config = keras.activations.serialize(self.activation)
        self.dropout = validation.check_rate("dropout", dropout)
        self.use_bias = validation.check_bool("use_bias", use_bias)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.output_kernel_initializer = (
            None
            if output_kernel_initializer is None
            else keras.initializers.get(output_kernel_initializer)
        )
        self.bias_initializer = keras.initializers.get(bias_initializer)
        self.dropout_layer = Dropout(
            self.dropout, name="dropout", dtype=self.dtype_policy
        )

    def _projection(self, units, kernel_initializer, name):
        return LoRADense(
            units,
            use_bias=self.use_bias,
            kernel_initializer=kernel_initializer,
            bias_initializer=self.bias_initializer,
            name=name,
            dtype=self.dtype_policy,
        )

    def build(self, input_shape):
        hidden_dim = validation.check_last_dim(self.name, "inputs", input_shape, None)
        intermediate_shape = tuple(input_shape[:-1]) + (self.intermediate_dim,)
        self.intermediate_dense = self._projection(
            self.intermediate_dim, self.kernel_initializer, "intermediate"
        )
        self.intermediate_dense.build(input_shape)
        if self.gated:
            self.gate_dense = self._projection(
                self.intermediate_dim, self.kernel_initializer, "gate"
            )
            self.gate_dense.build(input_shape)
        self.output_dense = self._projection(
            hidden_dim,
            self.output_kernel_initializer or self.kernel_initializer,
            "output",
        )
        self.output_dense.build(intermediate_shape)

    def call(self, inputs, training=None, dropout_seed=None):
        hidden = self.intermediate_dense(inputs, training=training)
        if self.gated:
            gate = self.gate_dense(inputs, training=training)
            hidden = self.activation(gate) * hidden
        else:
            hidden = self.activation(hidden)
        hidden = seeded_dropout(
            self.dropout_layer, hidden, training=training, seed=dropout_seed
        )
        return self.output_dense(hidden, training=training)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "intermediate_dim": self.intermediate_dim,
                "activation": self._activation_config,
                "dropout": self.dropout,
                "use_bias": self.use_bias,
                "kernel_initializer": keras.initializers.serialize(
                    self.kernel_initializer
                ),
                "output_kernel_initializer": (
                    None
                    if self.output_kernel_initializer is None
                    else keras.initializers.serialize(self.output_kernel_initializer)
                ),
                "bias_initializer": keras.initializers.serialize(
                    self.bias_initializer
                ),
            }
        )
        return config
