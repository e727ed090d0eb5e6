"""LoRA dense layer. (Dense part only; adapters are being added.)"""

import keras
from keras import ops

from keras_transformer.layers import _validation


@keras.saving.register_keras_serializable(package="keras_transformer")
class LoRADense(keras.layers.Layer):
    """A dense projection `x @ kernel + bias` that can carry a LoRA adapter.

    Args:
        units: int. Output feature size.
        activation: optional activation applied to the output.
        use_bias: bool. Whether to add a bias.
        kernel_initializer: initializer for the base kernel.
        bias_initializer: initializer for the bias.
        **kwargs: other keyword arguments passed to `keras.layers.Layer`.
    """

    def __init__(
        self,
        units,
        activation=None,
        use_bias=True,
        kernel_initializer="glorot_uniform",
        bias_initializer="zeros",
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.units = _validation.check_positive_int("units", units)
        self.activation = keras.activations.get(activation)
        self.use_bias = bool(use_bias)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.bias_initializer = keras.initializers.get(bias_initializer)

    def build(self, input_shape):
        input_dim = _validation.check_last_dim(
            self.name, "inputs", input_shape, None
        )
        self.kernel = self.add_weight(
            name="kernel",
            shape=(input_dim, self.units),
            initializer=self.kernel_initializer,
        )
        self.bias = (
            self.add_weight(
                name="bias", shape=(self.units,), initializer=self.bias_initializer
            )
            if self.use_bias
            else None
        )

    def call(self, inputs, training=None):
        outputs = ops.matmul(inputs, self.kernel)
        if self.bias is not None:
            outputs = outputs + self.bias
        return self.activation(outputs)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (self.units,)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "units": self.units,
                "activation": keras.activations.serialize(self.activation),
                "use_bias": self.use_bias,
                "kernel_initializer": keras.initializers.serialize(
                    self.kernel_initializer
                ),
                "bias_initializer": keras.initializers.serialize(
                    self.bias_initializer
                ),
            }
        )
        return config
