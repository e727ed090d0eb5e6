import keras
import numpy as np
import pytest

from keras_transformer import losses, metrics
from tests.conftest import random_floats, to_numpy

VOCABULARY = 5


def random_batch(seed):
    rng = np.random.default_rng(seed)
    labels = rng.integers(1, VOCABULARY, size=(3, 6)).astype("int32")
    for row, length in enumerate(rng.integers(1, 7, size=3)):
        labels[row, length:] = 0
    logits = random_floats(3, 6, VOCABULARY, seed=seed)
    # Make about half of the real tokens right, and some whole rows right.
    hits = rng.random((3, 6)) < 0.6
    hits[0] = True
    np.put_along_axis(
        logits, labels[..., None], np.where(hits, 10.0, -10.0)[..., None], -1
    )
    return labels, logits


def numpy_token_accuracy(batches):
    correct = total = 0
    for labels, logits in batches:
        real = labels != 0
        correct += ((logits.argmax(-1) == labels) & real).sum()
        total += real.sum()
    return correct / total


def numpy_exact_match(batches):
    matched = counted = 0
    for labels, logits in batches:
        real = labels != 0
        right = (logits.argmax(-1) == labels) | ~real
        has_tokens = real.any(-1)
        matched += (right.all(-1) & has_tokens).sum()
        counted += has_tokens.sum()
    return matched / counted


@pytest.mark.parametrize(
    "metric_cls, reference",
    [
        (metrics.MaskedAccuracy, numpy_token_accuracy),
        (metrics.SequenceExactMatch, numpy_exact_match),
    ],
)
def test_metrics_accumulate_over_batches_like_numpy(metric_cls, reference):
    batches = [random_batch(seed) for seed in range(3)]
    metric = metric_cls()
    for labels, logits in batches:
        metric.update_state(labels, logits)
    np.testing.assert_allclose(to_numpy(metric.result()), reference(batches), rtol=1e-6)
    metric.reset_state()
    assert to_numpy(metric.result()) == 0.0
    metric.update_state(*batches[0])
    np.testing.assert_allclose(
        to_numpy(metric.result()), reference(batches[:1]), rtol=1e-6
    )


def test_masked_accuracy_ignores_predictions_at_padding():
    labels = np.array([[1, 2, 0, 0]])
    metric = metrics.MaskedAccuracy()
    metric.update_state(labels, keras.ops.one_hot([[1, 3, 4, 4]], VOCABULARY))
    assert to_numpy(metric.result()) == 0.5


def test_exact_match_requires_every_real_token_and_skips_empty_rows():
    labels = np.array([[1, 2, 0], [1, 2, 0], [0, 0, 0]])
    predictions = keras.ops.one_hot([[1, 2, 4], [1, 3, 0], [4, 4, 4]], VOCABULARY)
    metric = metrics.SequenceExactMatch()
    metric.update_state(labels, predictions)
    assert to_numpy(metric.result()) == 0.5


def test_sample_weights_scale_tokens_and_sequences():
    labels = np.array([[1, 2, 0], [1, 2, 0]])
    predictions = keras.ops.one_hot([[1, 2, 0], [1, 3, 0]], VOCABULARY)
    accuracy = metrics.MaskedAccuracy()
    accuracy.update_state(labels, predictions, sample_weight=np.array([3.0, 1.0]))
    np.testing.assert_allclose(to_numpy(accuracy.result()), 7 / 8)
    exact = metrics.SequenceExactMatch()
    exact.update_state(labels, predictions, sample_weight=np.array([3.0, 1.0]))
    np.testing.assert_allclose(to_numpy(exact.result()), 3 / 4)


def test_other_padding_ids_are_respected():
    labels = np.array([[1, 2, 4, 4]])
    predictions = keras.ops.one_hot([[1, 3, 0, 0]], VOCABULARY)
    metric = metrics.MaskedAccuracy(padding_id=4)
    metric.update_state(labels, predictions)
    assert to_numpy(metric.result()) == 0.5


@pytest.mark.parametrize(
    "metric_cls", [metrics.MaskedAccuracy, metrics.SequenceExactMatch]
)
def test_config_round_trip_and_serialization(metric_cls):
    metric = metric_cls(padding_id=3, name="custom")
    config = metric.get_config()
    assert config["padding_id"] == 3 and config["name"] == "custom"
    assert metric_cls.from_config(config).get_config() == config
    restored = keras.saving.deserialize_keras_object(
        keras.saving.serialize_keras_object(metric)
    )
    assert type(restored) is metric_cls and restored.get_config() == config


@pytest.mark.parametrize(
    "metric_cls", [metrics.MaskedAccuracy, metrics.SequenceExactMatch]
)
def test_bad_padding_id_raises(metric_cls):
    with pytest.raises(ValueError, match="padding_id"):
        metric_cls(padding_id=-1)


def test_metrics_report_during_fit_and_evaluate():
    labels, _ = random_batch(0)
    inputs = keras.Input((6,), dtype="int32")
    hidden = keras.layers.Embedding(VOCABULARY, 8)(inputs)
    model = keras.Model(inputs, keras.layers.Dense(VOCABULARY)(hidden))
    model.compile(
        optimizer="adam",
        loss=losses.MaskedSparseCategoricalCrossentropy(),
        metrics=[metrics.MaskedAccuracy(), metrics.SequenceExactMatch()],
    )
    history = model.fit(labels, labels, epochs=1, verbose=0)
    assert {"masked_accuracy", "sequence_exact_match"} <= set(history.history)
    results = model.evaluate(labels, labels, return_dict=True, verbose=0)
    logits = model.predict(labels, verbose=0)
    np.testing.assert_allclose(
        results["masked_accuracy"], numpy_token_accuracy([(labels, logits)]), rtol=1e-6
    )
    np.testing.assert_allclose(
        results["sequence_exact_match"],
        numpy_exact_match([(labels, logits)]),
        rtol=1e-6,
    )
