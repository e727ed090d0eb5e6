"""Token-level losses for sequence models."""

import keras
from keras import ops

from keras_transformer import _compat
from keras_transformer.validation import (
    check_bool,
    check_non_negative_int,
    check_rate,
)


@keras.saving.register_keras_serializable(package="keras_transformer")
class MaskedSparseCategoricalCrossentropy(keras.losses.Loss):
    """Label-smoothed token cross-entropy averaged over non-padding tokens.

    For each position with `label != padding_id` the loss is the categorical
    cross-entropy between the predicted distribution and the smoothed one-hot
    label `(1 - label_smoothing) * one_hot + label_smoothing / vocabulary`
    (as in `keras.losses.CategoricalCrossentropy(label_smoothing=...)`),
    computed in float32 whatever the dtype of the predictions. The result is
    the mean over non-padding tokens only: padded positions contribute
    nothing and are not counted, and a batch with no real token gives 0.

    The padding mask is attached to the per-token losses as a Keras mask, the
    mechanism of `keras.losses.SparseCategoricalCrossentropy(ignore_class=...)`,
    so the `"sum_over_batch_size"` reduction divides by the number of real
    tokens. A Keras mask carried by `y_pred` is combined with it. A
    `sample_weight` must be per token (shape `[batch, length]`); the
    weighted sum is still divided by the number of real tokens.

    Args:
        label_smoothing: float in [0, 1). Probability mass spread uniformly
            over the vocabulary.
        padding_id: int. Label id that marks padding.
        from_logits: bool. Whether `y_pred` holds logits (True) or
            probabilities (False).
        name: str. Name of the loss.

    Call arguments:
        y_true: int tensor `[batch, length]` of label ids.
        y_pred: float tensor `[batch, length, vocabulary]`.
        sample_weight: optional float tensor `[batch, length]`.

    Example:

    ```python
    loss = MaskedSparseCategoricalCrossentropy(label_smoothing=0.1)
    labels = np.array([[5, 7, 3, 0]])        # the final 0 is padding
    logits = np.random.randn(1, 4, 10)
    loss(labels, logits)                     # mean over the 3 real tokens
    ```

    References:
        - [Szegedy et al., 2016](https://arxiv.org/abs/1512.00567) (label
          smoothing).
        - [Vaswani et al., 2017](https://arxiv.org/abs/1706.03762).
    """

    def __init__(
        self,
        label_smoothing=0.0,
        padding_id=0,
        from_logits=True,
        name="masked_sparse_categorical_crossentropy",
    ):
        super().__init__(name=name, reduction="sum_over_batch_size", dtype="float32")
        self.label_smoothing = check_rate("label_smoothing", label_smoothing)
        self.padding_id = check_non_negative_int("padding_id", padding_id)
        self.from_logits = check_bool("from_logits", from_logits)

    def call(self, y_true, y_pred):
        labels = ops.cast(y_true, "int32")
        if len(labels.shape) == len(y_pred.shape):
            labels = ops.squeeze(labels, axis=-1)
        is_token = ops.not_equal(labels, self.padding_id)
        # Padding positions may hold any id, even one outside the vocabulary.
        labels = ops.where(is_token, labels, ops.zeros_like(labels))
        if self.from_logits:
            # The fused sparse cross-entropy kernel: gathering the label's
            # log-probability with take_along_axis instead differentiates
            # through a scatter into a dense (batch, length, vocabulary)
            # buffer, ~10% of a training step without XLA.
            losses = ops.sparse_categorical_crossentropy(
                labels, y_pred, from_logits=True
            )
        else:
            probs = y_pred / ops.sum(y_pred, axis=-1, keepdims=True)
            epsilon = keras.config.epsilon()
            log_probs = ops.log(ops.clip(probs, epsilon, 1.0 - epsilon))
            label_log_probs = ops.take_along_axis(
                log_probs, ops.expand_dims(labels, axis=-1), axis=-1
            )
            losses = -ops.squeeze(label_log_probs, axis=-1)
        if self.label_smoothing:
            # Cross-entropy against (1 - e) * one_hot + e / V, split in two:
            # the label's term and the mean negative log-probability, which
            # for logits is logsumexp minus the mean logit.
            if self.from_logits:
                uniform = ops.logsumexp(y_pred, axis=-1) - ops.mean(y_pred, axis=-1)
            else:
                uniform = -ops.mean(log_probs, axis=-1)
            losses = (1.0 - self.label_smoothing) * losses
            losses += self.label_smoothing * uniform
        losses = ops.where(is_token, losses, ops.zeros_like(losses))
        _compat.set_keras_mask(losses, is_token)
        return losses

    def get_config(self):
        return {
            "label_smoothing": self.label_smoothing,
            "padding_id": self.padding_id,
            "from_logits": self.from_logits,
            "name": self.name,
        }
