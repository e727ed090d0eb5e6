"""What a layer can know about a length or an index before it runs.

Keras infers symbolic shapes differently on each backend: TensorFlow leaves
an unknown length `None`, JAX makes it a symbolic dimension, and PyTorch
fills it with a placeholder integer (83, then 89). Checks against a maximum
length must only use values that are really known, or a placeholder would
be rejected as too long.
"""

import numbers

import keras
from keras import ops

from keras_transformer import _compat


def known_length(dimension):
    """`dimension` as an int when it is the real length, else None.

    Args:
        dimension: an entry of a tensor's `.shape`.

    Returns:
        The int, or None for an unknown (`None`), symbolic (JAX) or
        placeholder (any backend's shape inference) dimension.
    """
    if _compat.in_symbolic_scope() or not isinstance(dimension, numbers.Integral):
        return None
    return int(dimension)


def known_int(value):
    """A scalar int as a Python int when its value is known now, else None.

    Args:
        value: a Python int or a scalar int tensor.

    Returns:
        The int for a Python int or an eager tensor on any backend (one
        device-to-host copy), None for a Keras symbolic tensor or a tensor
        traced by `tf.function` or `jax.jit`, whose value exists only when
        the compiled function runs.
    """
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, keras.KerasTensor) or _compat.in_symbolic_scope():
        return None
    try:
        return int(ops.convert_to_numpy(value))
    # A traced tensor refuses conversion: TypeError from a JAX tracer,
    # NotImplementedError from a TensorFlow graph tensor.
    except (TypeError, NotImplementedError):
        return None


def guard_in_graph(valid, tensor, message, details, dtype):
    """A check of values that only exist when a compiled graph runs.

    Returns `(tensor, factor)`. On TensorFlow outside XLA the returned
    `tensor` depends on an assertion that raises `InvalidArgumentError` with
    `message` and `details` (tensors printed after it) when `valid` is
    false. A program that cannot raise (XLA, `jax.jit`) gets `factor` NaN
    instead of 1, which the caller multiplies into its output, so a bad batch
    shows as NaN rather than as silently wrong numbers.

    Args:
        valid: scalar bool tensor.
        tensor: the tensor the caller goes on with.
        message: str.
        details: list of str and tensors printed after the message.
        dtype: the dtype of `factor`.
    """
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        # XLA compiles Assert to a no-op; the NaN factor covers that case.
        check = tf.debugging.Assert(valid, [message, *details])
        with tf.control_dependencies([check]):
            tensor = tf.identity(tensor)
    factor = ops.where(valid, ops.cast(1.0, dtype), ops.cast(float("nan"), dtype))
    return tensor, factor
