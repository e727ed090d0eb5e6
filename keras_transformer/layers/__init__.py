"""Public layers: `keras_transformer.layers.<Name>`."""

from keras_transformer.layers.lora import LoRADense
