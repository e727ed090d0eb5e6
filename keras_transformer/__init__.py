"""Keras 3 Transformer layers that train, save, export and decode."""

__version__ = "0.1.0"

from keras_transformer import data  # noqa: E402,F401
from keras_transformer import decoding  # noqa: E402,F401
from keras_transformer import export  # noqa: E402,F401
from keras_transformer import layers  # noqa: E402,F401
from keras_transformer import losses  # noqa: E402,F401
from keras_transformer import metrics  # noqa: E402,F401
from keras_transformer import models  # noqa: E402,F401
from keras_transformer import schedules  # noqa: E402,F401
