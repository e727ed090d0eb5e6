"""Token ids checked against the vocabulary where they enter the model.

A gather with an id outside `[0, vocabulary_size)` is never an answer: a
negative id wraps around to the end of the table on some paths, a too-large
id raises an error that does not mention the vocabulary (TensorFlow on CPU)
or is clamped to the last row (XLA, JAX, GPU kernels). Float ids would be
truncated to ints. So every id tensor is checked before it is looked up:

- dtype: a float or bool dtype raises `ValueError`, eagerly and symbolically.
- values known now (eager tensors, NumPy arrays): `ValueError` naming the
  vocabulary size and the offending value.
- values inside a compiled graph (`fit`, `predict`, exported endpoints):
  one min and one max reduction per batch. TensorFlow without XLA raises
  `InvalidArgumentError` with the same words; a program that cannot raise
  (XLA, `jax.jit`) gets the factor NaN instead of 1, which the caller
  multiplies into its embeddings, so a bad batch shows as a NaN loss rather
  than as silently wrong numbers.
"""

import numpy as np

import keras
from keras import ops

from keras_transformer import _compat
from keras_transformer.layers import _static


def _message(name, vocabulary_size, layer_name=None):
    prefix = f"Layer {layer_name}: " if layer_name else ""
    return (
        f"{prefix}Received an invalid value for argument {name}, expected "
        f"token ids in [0, vocabulary_size) with vocabulary_size="
        f"{vocabulary_size}"
    )


def check_dtype(name, token_ids, layer_name=None):
    """Raises `ValueError` unless `token_ids` has an integer dtype.

    Args:
        name: str, the argument named in the message.
        token_ids: NumPy array, tensor or nested list of ids.
        layer_name: optional str, the layer named in the message.
    """
    dtype = getattr(token_ids, "dtype", None)
    if dtype is None:
        dtype = np.asarray(token_ids).dtype
    dtype = keras.backend.standardize_dtype(dtype)
    if "int" not in dtype:
        prefix = f"Layer {layer_name}: " if layer_name else ""
        raise ValueError(
            f"{prefix}Received an invalid value for argument {name}, expected "
            f"integer token ids. Received: {name} of dtype {dtype}. Ids are "
            "never rounded or truncated: cast them yourself if the values are "
            "whole numbers."
        )


def check_values(name, token_ids, vocabulary_size, layer_name=None):
    """Raises `ValueError` for out-of-range ids whose values are known.

    Args:
        name: str, the argument named in the message.
        token_ids: NumPy array or tensor of ids.
        vocabulary_size: int. Valid ids are `[0, vocabulary_size)`.
        layer_name: optional str, the layer named in the message.

    Returns:
        True when the values were known and checked, False when they live in
        a compiled graph (the caller then uses `graph_factor`).
    """
    if isinstance(token_ids, keras.KerasTensor) or _compat.in_symbolic_scope():
        return False
    try:
        values = np.asarray(ops.convert_to_numpy(token_ids))
    # Traced tensors refuse conversion (TypeError from a JAX tracer,
    # NotImplementedError from a TensorFlow graph tensor).
    except (TypeError, NotImplementedError):
        return False
    if values.size == 0:
        return True
    low, high = values.min(), values.max()
    if low < 0 or high >= vocabulary_size:
        bad = low if low < 0 else high
        raise ValueError(
            f"{_message(name, vocabulary_size, layer_name)}. Received: {name} "
            f"with token id {bad} (smallest {low}, largest {high})"
        )
    return True


def check_in_graph(name, token_ids, vocabulary_size, dtype, layer_name=None):
    """The in-graph check: returns `(token_ids, factor)`.

    One min and one max reduction per call. `factor` is 1 when every id is in
    range and NaN otherwise. On TensorFlow outside XLA a failed check raises
    `InvalidArgumentError` when the graph runs, before the lookup: the
    returned ids depend on the assertion.
    """
    low = ops.min(token_ids)
    high = ops.max(token_ids)
    valid = ops.logical_and(
        ops.greater_equal(low, 0), ops.less(high, vocabulary_size)
    )
    return _static.guard_in_graph(
        valid,
        token_ids,
        _message(name, vocabulary_size, layer_name),
        ["smallest:", low, "largest:", high],
        dtype,
    )
