import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_transformer import losses
from tests.conftest import random_floats, to_numpy

VOCABULARY = 7
LABELS = np.array([[4, 2, 6, 3, 0, 0], [5, 3, 0, 0, 0, 0]], dtype="int32")


def reference_loss(labels, logits, label_smoothing):
    """Keras's dense cross-entropy per token, averaged over real tokens."""
    dense = keras.losses.CategoricalCrossentropy(
        from_logits=True, label_smoothing=label_smoothing, reduction=None
    )
    per_token = to_numpy(dense(np.eye(VOCABULARY)[labels], logits))
    return per_token[labels != 0].mean()


@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
def test_loss_is_the_smoothed_cross_entropy_mean_over_real_tokens(label_smoothing):
    logits = random_floats(2, 6, VOCABULARY, seed=1, scale=3.0)
    loss = losses.MaskedSparseCategoricalCrossentropy(label_smoothing=label_smoothing)
    np.testing.assert_allclose(
        to_numpy(loss(LABELS, logits)),
        reference_loss(LABELS, logits, label_smoothing),
        rtol=1e-5,
    )


def test_probabilities_give_the_same_loss_as_logits():
    logits = random_floats(2, 6, VOCABULARY, seed=2)
    probabilities = to_numpy(keras.ops.softmax(logits))
    from_logits = losses.MaskedSparseCategoricalCrossentropy(label_smoothing=0.1)
    from_probs = losses.MaskedSparseCategoricalCrossentropy(
        label_smoothing=0.1, from_logits=False
    )
    np.testing.assert_allclose(
        to_numpy(from_probs(LABELS, probabilities)),
        to_numpy(from_logits(LABELS, logits)),
        rtol=1e-5,
    )


def test_logits_at_padded_positions_have_no_effect():
    logits = random_floats(2, 6, VOCABULARY, seed=3)
    changed = logits.copy()
    changed[LABELS == 0] = (
        random_floats(int((LABELS == 0).sum()), VOCABULARY, seed=9) * 50
    )
    loss = losses.MaskedSparseCategoricalCrossentropy(label_smoothing=0.1)
    assert to_numpy(loss(LABELS, logits)) == to_numpy(loss(LABELS, changed))


def test_a_batch_of_only_padding_gives_zero_not_nan():
    loss = losses.MaskedSparseCategoricalCrossentropy()
    value = to_numpy(loss(np.zeros((2, 3), "int32"), random_floats(2, 3, VOCABULARY)))
    assert value == 0.0


def test_other_padding_ids_are_respected():
    logits = random_floats(2, 6, VOCABULARY, seed=4)
    shifted = np.where(LABELS == 0, 6, np.where(LABELS == 6, 0, LABELS))
    permuted = logits[..., [6, 1, 2, 3, 4, 5, 0]]
    loss = losses.MaskedSparseCategoricalCrossentropy(padding_id=6)
    np.testing.assert_allclose(
        to_numpy(loss(shifted, permuted)),
        reference_loss(LABELS, logits, 0.0),
        rtol=1e-5,
    )


def test_a_padding_id_outside_the_vocabulary_is_masked_not_looked_up():
    logits = random_floats(2, 6, VOCABULARY, seed=5)
    outside = np.where(LABELS == 0, VOCABULARY, LABELS)
    loss = losses.MaskedSparseCategoricalCrossentropy(padding_id=VOCABULARY)
    np.testing.assert_allclose(
        to_numpy(loss(outside, logits)),
        reference_loss(LABELS, logits, 0.0),
        rtol=1e-5,
    )


@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
def test_gradient_is_softmax_minus_smoothed_target_over_real_tokens(label_smoothing):
    logits = random_floats(2, 6, VOCABULARY, seed=6, scale=3.0)
    loss = losses.MaskedSparseCategoricalCrossentropy(label_smoothing=label_smoothing)
    tensor = tf.constant(logits)
    with tf.GradientTape() as tape:
        tape.watch(tensor)
        value = loss(LABELS, tensor)
    gradient = to_numpy(tape.gradient(value, tensor))
    shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
    softmax = shifted / shifted.sum(axis=-1, keepdims=True)
    target = (1 - label_smoothing) * np.eye(VOCABULARY)[LABELS]
    target += label_smoothing / VOCABULARY
    is_token = (LABELS != 0)[..., None]
    expected = np.where(is_token, (softmax - target) / is_token.sum(), 0.0)
    np.testing.assert_allclose(gradient, expected, atol=1e-6)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_precision_logits_are_scored_in_float32(dtype):
    logits = random_floats(2, 6, VOCABULARY, seed=5, scale=4.0)
    half = keras.ops.cast(logits, dtype)
    value = losses.MaskedSparseCategoricalCrossentropy(label_smoothing=0.1)(
        LABELS, half
    )
    assert keras.backend.standardize_dtype(value.dtype) == "float32"
    rounded = to_numpy(keras.ops.cast(half, "float32"))
    np.testing.assert_allclose(
        to_numpy(value), reference_loss(LABELS, rounded, 0.1), rtol=1e-5
    )


def test_keras_mask_on_predictions_does_not_double_count():
    # Embedding(mask_zero=True) -> Dense carries the labels' padding mask.
    hidden = keras.layers.Embedding(VOCABULARY, 4, mask_zero=True)(LABELS)
    logits = keras.layers.Dense(VOCABULARY)(hidden)
    assert logits._keras_mask is not None
    loss = losses.MaskedSparseCategoricalCrossentropy()
    np.testing.assert_allclose(
        to_numpy(loss(LABELS, logits)),
        reference_loss(LABELS, to_numpy(logits), 0.0),
        rtol=1e-5,
    )


def test_config_round_trip_and_serialization():
    loss = losses.MaskedSparseCategoricalCrossentropy(
        label_smoothing=0.2, padding_id=1, from_logits=False, name="tokens"
    )
    config = loss.get_config()
    assert config == {
        "label_smoothing": 0.2,
        "padding_id": 1,
        "from_logits": False,
        "name": "tokens",
    }
    assert (
        losses.MaskedSparseCategoricalCrossentropy.from_config(config).get_config()
        == config
    )
    restored = keras.saving.deserialize_keras_object(
        keras.saving.serialize_keras_object(loss)
    )
    assert type(restored) is losses.MaskedSparseCategoricalCrossentropy
    assert restored.get_config() == config


def test_one_fit_step_trains_a_tiny_model_and_reloads(tmp_path):
    inputs = keras.Input((6,), dtype="int32")
    hidden = keras.layers.Embedding(VOCABULARY, 8, mask_zero=True)(inputs)
    model = keras.Model(inputs, keras.layers.Dense(VOCABULARY)(hidden))
    model.compile(
        optimizer="adam",
        loss=losses.MaskedSparseCategoricalCrossentropy(label_smoothing=0.1),
    )
    history = model.fit(LABELS, LABELS, batch_size=2, epochs=2, verbose=0)
    assert all(np.isfinite(history.history["loss"]))
    assert history.history["loss"][1] < history.history["loss"][0]
    expected = reference_loss(LABELS, model.predict(LABELS, verbose=0), 0.1)
    np.testing.assert_allclose(
        model.evaluate(LABELS, LABELS, verbose=0), expected, rtol=1e-5
    )
    path = str(tmp_path / "model.keras")
    model.save(path)
    reloaded = keras.saving.load_model(path)
    assert isinstance(reloaded.loss, losses.MaskedSparseCategoricalCrossentropy)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"label_smoothing": 1.0}, "label_smoothing"),
        ({"label_smoothing": -0.1}, "label_smoothing"),
        ({"padding_id": -1}, "padding_id"),
        ({"from_logits": "yes"}, "from_logits"),
    ],
)
def test_bad_arguments_raise_value_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        losses.MaskedSparseCategoricalCrossentropy(**kwargs)
