import keras
import numpy as np
import pytest

from keras_transformer.layers import Dropout
from keras_transformer.layers.dropout import dropout
from tests.conftest import run_layer_test, to_numpy

# Enough elements that binomial frequencies are known to about 1e-3.
SHAPE = (64, 64, 63)


def dropped_fraction_and_kept_value(rate, shape=SHAPE, seed=0):
    outputs = to_numpy(
        Dropout(rate, seed=seed)(np.ones(shape, "float32"), training=True)
    )
    kept = outputs[outputs != 0]
    assert np.all(kept == kept[0]), "every kept element is scaled the same"
    return float(np.mean(outputs == 0)), float(kept[0]), outputs


def binomial_tolerance(probability, count, sigmas=5):
    return sigmas * np.sqrt(probability * (1 - probability) / count)


@pytest.mark.parametrize("rate", [0.1, 0.3, 0.5])
def test_drops_the_rate_rounded_to_2048ths_and_rescales_the_rest(rate):
    grid_rate = round(rate * 2048) / 2048
    fraction, kept_value, outputs = dropped_fraction_and_kept_value(rate)
    assert abs(fraction - grid_rate) < binomial_tolerance(grid_rate, outputs.size)
    np.testing.assert_allclose(kept_value, 1 / (1 - grid_rate), rtol=1e-6)
    assert abs(outputs.mean() - 1.0) < 5 * binomial_tolerance(grid_rate, outputs.size)


def test_the_two_decisions_drawn_from_one_number_are_independent():
    # Columns j and j + 32 of a 63-wide mask come from the same uniform draw.
    rate = 0.5
    _, _, outputs = dropped_fraction_and_kept_value(rate)
    first, second = outputs[..., :31] == 0, outputs[..., 32:63] == 0
    both = float(np.mean(first & second))
    assert abs(both - rate * rate) < binomial_tolerance(rate * rate, first.size)
    assert abs(np.mean(first) - rate) < binomial_tolerance(rate, first.size)
    assert abs(np.mean(second) - rate) < binomial_tolerance(rate, second.size)


def test_a_rate_far_from_the_grid_uses_the_exact_rate():
    # 0.01 would round to 20/2048 = 0.00977, 2.3% off, so Keras' dropout runs.
    _, kept_value, _ = dropped_fraction_and_kept_value(0.01, shape=(8, 64))
    np.testing.assert_allclose(kept_value, 1 / 0.99, rtol=1e-6)


def test_a_noise_shape_broadcasts_the_mask():
    layer = Dropout(0.5, noise_shape=(4, 1, 16), seed=3)
    outputs = to_numpy(layer(np.ones((4, 6, 16), "float32"), training=True))
    np.testing.assert_array_equal(
        outputs, np.broadcast_to(outputs[:, :1], outputs.shape)
    )


def test_is_the_identity_outside_training_and_at_rate_zero():
    inputs = np.random.default_rng(0).standard_normal((2, 5, 7)).astype("float32")
    np.testing.assert_array_equal(
        to_numpy(Dropout(0.3)(inputs, training=False)), inputs
    )
    np.testing.assert_array_equal(to_numpy(Dropout(0.0)(inputs, training=True)), inputs)


def test_the_same_seed_gives_the_same_mask_and_a_new_call_a_new_one():
    inputs = np.ones((3, 10, 8), "float32")
    first, second = Dropout(0.2, seed=7), Dropout(0.2, seed=7)
    masks_first = [to_numpy(first(inputs, training=True)) for _ in range(2)]
    np.testing.assert_array_equal(
        masks_first[0], to_numpy(second(inputs, training=True))
    )
    assert not np.array_equal(masks_first[0], masks_first[1])


@pytest.mark.parametrize("features", [1, 2, 5])
def test_narrow_and_odd_feature_axes_keep_their_shape(features):
    inputs = np.ones((4, 3, features), "float32")
    outputs = dropout(inputs, 0.25, seed=1)
    assert tuple(outputs.shape) == inputs.shape


def test_layer_contract(tmp_path):
    run_layer_test(
        Dropout,
        {"rate": 0.1, "seed": 1},
        np.ones((2, 4, 6), "float32"),
        expected_output_shape=(2, 4, 6),
        run_training=False,  # no weights to train
        tmp_path=tmp_path,
    )


def test_is_a_keras_dropout_layer():
    assert isinstance(Dropout(0.1), keras.layers.Dropout)
