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


def lowbias32(values):
    """Wellons' lowbias32 in NumPy's uint32 arithmetic: the reference."""
    values = np.asarray(values, dtype=np.uint32)
    values ^= values >> np.uint32(16)
    values *= np.uint32(0x7FEB352D)
    values ^= values >> np.uint32(15)
    values *= np.uint32(0x846CA68B)
    values ^= values >> np.uint32(16)
    return values


def reference_mask(shape, rate, seed):
    """The documented mask of `dropout(..., seed=int)`, computed in NumPy:
    row r of the flattened input starts at h(h(r ^ key) + seed), where
    key = h(h(seed) ^ 0), and its column pair j is decided by h(start + j),
    low 16 bits for column j, high 16 bits for column j + pairs."""
    with np.errstate(over="ignore"):
        rows, features = int(np.prod(shape[:-1])), shape[-1]
        pairs = (features + 1) // 2
        key = lowbias32(lowbias32(seed) ^ np.uint32(0))
        starts = lowbias32(
            lowbias32(np.arange(rows, dtype=np.uint32) ^ key) + np.uint32(seed)
        )
        bits = lowbias32(starts[:, None] + np.arange(pairs, dtype=np.uint32)[None, :])
    threshold = round(rate * 65536)
    keep = np.concatenate(
        [(bits & 0xFFFF) >= threshold, (bits >> 16) >= threshold], axis=-1
    )
    return keep[:, :features].reshape(shape)


@pytest.mark.parametrize("rate", [0.1, 0.3, 0.5])
def test_drops_the_rate_rounded_to_65536ths_and_rescales_the_rest(rate):
    grid_rate = round(rate * 65536) / 65536
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


@pytest.mark.parametrize("shape", [(3, 5, 8), (4, 7), (6, 1)])
def test_the_mask_is_the_documented_hash_of_the_seed(shape):
    inputs = np.ones(shape, "float32")
    outputs = to_numpy(dropout(inputs, 0.3, seed=12345))
    np.testing.assert_array_equal(outputs != 0, reference_mask(shape, 0.3, 12345))


def test_masks_of_other_rows_and_other_calls_are_uncorrelated():
    rate = 0.5
    layer = Dropout(rate, seed=11)
    inputs = np.ones(SHAPE, "float32")
    first, second = (to_numpy(layer(inputs, training=True)) == 0 for _ in range(2))
    pairs = {
        "the next call": (first, second),
        "the next row": (first[:, :-1], first[:, 1:]),
        "the next column": (first[..., :-1], first[..., 1:]),
    }
    for name, (one, other) in pairs.items():
        both = float(np.mean(one & other))
        tolerance = binomial_tolerance(rate * rate, one.size)
        assert abs(both - rate * rate) < tolerance, f"{name}: {both}"


def test_a_rate_far_from_the_grid_uses_the_exact_rate():
    # 1e-4 would round to 7/65536 = 1.07e-4, 6.8% off, so Keras' dropout runs.
    _, kept_value, _ = dropped_fraction_and_kept_value(1e-4, shape=(8, 64))
    np.testing.assert_allclose(kept_value, 1 / (1 - 1e-4), rtol=1e-6)


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
