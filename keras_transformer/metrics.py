"""Token and sequence accuracies that ignore padding."""

import keras
from keras import ops

from keras_transformer.validation import check_non_negative_int


def _labels_and_predictions(y_true, y_pred):
    labels = ops.cast(y_true, "int32")
    if len(labels.shape) == len(y_pred.shape):
        labels = ops.squeeze(labels, axis=-1)
    predictions = ops.cast(ops.argmax(y_pred, axis=-1), "int32")
    return labels, predictions


class _PaddingAwareMetric(keras.metrics.Metric):
    """Holds a numerator and a denominator; the result is their ratio."""

    def __init__(self, padding_id=0, name=None, dtype=None):
        super().__init__(name=name, dtype=dtype)
        self.padding_id = check_non_negative_int("padding_id", padding_id)
        self.matched = self.add_variable(
            shape=(), initializer="zeros", dtype="float32", name="matched"
        )
        self.counted = self.add_variable(
            shape=(), initializer="zeros", dtype="float32", name="counted"
        )

    def _accumulate(self, matched, counted, sample_weight):
        """Adds weighted per-item hits and counts (item = token or sequence)."""
        matched = ops.cast(matched, "float32")
        counted = ops.cast(counted, "float32")
        if sample_weight is not None:
            sample_weight = ops.cast(sample_weight, "float32")
            while len(sample_weight.shape) < len(counted.shape):
                sample_weight = ops.expand_dims(sample_weight, axis=-1)
            matched = matched * sample_weight
            counted = counted * sample_weight
        self.matched.assign_add(ops.sum(matched))
        self.counted.assign_add(ops.sum(counted))

    def result(self):
        return ops.cast(ops.divide_no_nan(self.matched, self.counted), self.dtype)

    def get_config(self):
        return {**super().get_config(), "padding_id": self.padding_id}


@keras.saving.register_keras_serializable(package="keras_transformer")
class MaskedAccuracy(_PaddingAwareMetric):
    """Fraction of non-padding tokens whose arg-max prediction is right.

    Counts accumulate over batches: the result is correct real tokens over
    real tokens seen since the last `reset_state`, not a mean of batch
    accuracies. Positions with `label == padding_id` are ignored.

    Args:
        padding_id: int. Label id that marks padding.
        name: str. Name of the metric.
        dtype: dtype of the result.

    Call arguments:
        y_true: int tensor `[batch, length]` of label ids.
        y_pred: float tensor `[batch, length, vocabulary]` (logits or
            probabilities).
        sample_weight: optional tensor `[batch]` or `[batch, length]`.

    Example:

    ```python
    metric = MaskedAccuracy()
    metric.update_state([[4, 5, 0]], keras.ops.one_hot([[4, 6, 1]], 8))
    metric.result()  # 0.5: one of the two real tokens is right
    ```
    """

    def __init__(self, padding_id=0, name="masked_accuracy", dtype=None):
        super().__init__(padding_id=padding_id, name=name, dtype=dtype)

    def update_state(self, y_true, y_pred, sample_weight=None):
        labels, predictions = _labels_and_predictions(y_true, y_pred)
        is_token = ops.not_equal(labels, self.padding_id)
        correct = ops.logical_and(is_token, ops.equal(labels, predictions))
        self._accumulate(correct, is_token, sample_weight)


@keras.saving.register_keras_serializable(package="keras_transformer")
class SequenceExactMatch(_PaddingAwareMetric):
    """Fraction of sequences whose every non-padding token is right.

    A sequence matches when the arg-max prediction equals the label at every
    position where `label != padding_id`; what is predicted at padded
    positions does not matter. Rows made only of padding are not counted.
    Counts accumulate over batches until `reset_state`.

    Args:
        padding_id: int. Label id that marks padding.
        name: str. Name of the metric.
        dtype: dtype of the result.

    Call arguments:
        y_true: int tensor `[batch, length]` of label ids.
        y_pred: float tensor `[batch, length, vocabulary]`.
        sample_weight: optional tensor `[batch]` (one weight per sequence).

    Example:

    ```python
    metric = SequenceExactMatch()
    metric.update_state(
        [[4, 5, 0], [4, 5, 0]], keras.ops.one_hot([[4, 5, 7], [4, 6, 0]], 8)
    )
    metric.result()  # 0.5: the first sequence matches, the second does not
    ```
    """

    def __init__(self, padding_id=0, name="sequence_exact_match", dtype=None):
        super().__init__(padding_id=padding_id, name=name, dtype=dtype)

    def update_state(self, y_true, y_pred, sample_weight=None):
        labels, predictions = _labels_and_predictions(y_true, y_pred)
        is_token = ops.not_equal(labels, self.padding_id)
        wrong = ops.logical_and(is_token, ops.not_equal(labels, predictions))
        has_tokens = ops.any(is_token, axis=-1)
        matched = ops.logical_and(has_tokens, ops.logical_not(ops.any(wrong, axis=-1)))
        self._accumulate(matched, has_tokens, sample_weight)
