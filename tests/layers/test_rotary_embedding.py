import keras
import numpy as np
import pytest

from keras_transformer import layers
from tests.conftest import random_floats, run_layer_test, to_numpy


def complex_rotation(x, positions, max_wavelength=10000.0, scaling_factor=1.0):
    """Half-split RoPE as complex multiplication: (x_i + j x_{i+D/2}) e^{j angle}.

    `x` is (batch, length, heads, D); `positions` is (length,) or
    (batch, length).
    """
    half = x.shape[-1] // 2
    theta = max_wavelength ** (-2.0 * np.arange(half) / x.shape[-1])
    angles = (np.asarray(positions, "float64") / scaling_factor)[..., None] * theta
    pairs = x[..., :half] + 1j * x[..., half:]
    rotated = pairs * np.exp(1j * angles)[..., None, :]
    return np.concatenate([rotated.real, rotated.imag], axis=-1)


@pytest.mark.parametrize(
    "init_kwargs", [{}, {"max_wavelength": 500.0, "scaling_factor": 2.0}]
)
def test_layer_contract_holds(init_kwargs, tmp_path):
    run_layer_test(
        layers.RotaryEmbedding,
        init_kwargs,
        random_floats(2, 6, 3, 8),
        expected_output_shape=(2, 6, 3, 8),
        run_training=False,
        tmp_path=tmp_path,
    )


def test_layer_contract_holds_with_explicit_batched_positions(tmp_path):
    positions = np.array([[0, 1, 2, 3, 4, 5], [3, 4, 5, 6, 7, 8]], "int32")
    run_layer_test(
        layers.RotaryEmbedding,
        {},
        {"inputs": random_floats(2, 6, 3, 8), "positions": positions},
        expected_output_shape=(2, 6, 3, 8),
        run_training=False,
        tmp_path=tmp_path,
    )


@pytest.mark.parametrize(
    "max_wavelength, scaling_factor", [(10000.0, 1.0), (100.0, 4.0)]
)
def test_rotation_matches_the_complex_number_reference(max_wavelength, scaling_factor):
    x = random_floats(2, 6, 3, 8)
    layer = layers.RotaryEmbedding(
        max_wavelength=max_wavelength, scaling_factor=scaling_factor
    )
    expected = complex_rotation(x, np.arange(6), max_wavelength, scaling_factor)
    np.testing.assert_allclose(to_numpy(layer(x)), expected, atol=1e-5, rtol=0)


def test_dot_product_depends_only_on_the_position_offset():
    layer = layers.RotaryEmbedding()
    query = random_floats(1, 1, 1, 16, seed=1)
    key = random_floats(1, 1, 1, 16, seed=2)

    def score(query_position, key_position):
        rotated_query = to_numpy(layer(query, start_index=query_position))
        rotated_key = to_numpy(layer(key, start_index=key_position))
        return float(np.sum(rotated_query * rotated_key))

    reference = score(5, 2)
    for shift in (1, 7, 30):
        assert score(5 + shift, 2 + shift) == pytest.approx(reference, abs=1e-4)
    assert score(5, 3) != pytest.approx(reference, abs=1e-3)


def test_rotation_preserves_the_norm_of_each_head_vector():
    x = random_floats(2, 6, 3, 8)
    rotated = to_numpy(layers.RotaryEmbedding()(x, start_index=11))
    np.testing.assert_allclose(
        np.linalg.norm(rotated, axis=-1), np.linalg.norm(x, axis=-1), rtol=1e-5
    )


@pytest.mark.parametrize("as_tensor", [False, True])
def test_start_index_equals_slicing_a_longer_sequence(as_tensor):
    layer = layers.RotaryEmbedding()
    x = random_floats(2, 8, 3, 8)
    full = to_numpy(layer(x))
    start_index = keras.ops.convert_to_tensor(3, "int32") if as_tensor else 3
    step = to_numpy(layer(x[:, 3:5], start_index=start_index))
    np.testing.assert_allclose(step, full[:, 3:5], atol=1e-6, rtol=0)


@pytest.mark.parametrize(
    "positions",
    [np.array([4, 2, 9, 0], "int32"), np.array([[0, 1, 2, 3], [5, 6, 7, 8]], "int32")],
)
def test_explicit_positions_rotate_each_step_by_its_own_position(positions):
    x = random_floats(2, 4, 3, 8)
    rotated = to_numpy(layers.RotaryEmbedding()(x, positions=positions))
    np.testing.assert_allclose(
        rotated, complex_rotation(x, positions), atol=1e-5, rtol=0
    )


def test_mixed_precision_output_matches_float32_rotation():
    x = random_floats(2, 6, 3, 8)
    reference = to_numpy(layers.RotaryEmbedding()(x))
    mixed = to_numpy(layers.RotaryEmbedding(dtype="mixed_bfloat16")(x))
    assert keras.backend.standardize_dtype(mixed.dtype) == "bfloat16"
    np.testing.assert_allclose(mixed.astype("float32"), reference, atol=3e-2, rtol=0)


def test_positions_and_start_index_together_are_rejected():
    with pytest.raises(ValueError, match="received both positions and start_index=2"):
        layers.RotaryEmbedding()(
            random_floats(1, 4, 2, 8), start_index=2, positions=np.arange(4)
        )


@pytest.mark.parametrize(
    "positions", [np.arange(3), np.zeros((1, 1, 4), "int32")], ids=["length", "rank"]
)
def test_positions_of_the_wrong_shape_are_rejected(positions):
    with pytest.raises(ValueError, match=r"expected positions of shape \(length,\)"):
        layers.RotaryEmbedding()(random_floats(1, 4, 2, 8), positions=positions)


@pytest.mark.parametrize(
    "shape, message",
    [
        ((2, 4, 8), "expected inputs of rank 4"),
        ((2, 4, 2, 7), "must be even"),
        ((None, 4, 2, None), "needs the last dimension of inputs"),
    ],
)
def test_bad_input_shapes_are_rejected_at_build(shape, message):
    with pytest.raises(ValueError, match=message):
        layers.RotaryEmbedding().build(shape)


@pytest.mark.parametrize("argument", ["max_wavelength", "scaling_factor"])
@pytest.mark.parametrize("value", [0, -2.0, float("inf"), None])
def test_invalid_constructor_arguments_are_rejected(argument, value):
    with pytest.raises(ValueError, match=f"argument {argument}, expected a positive"):
        layers.RotaryEmbedding(**{argument: value})
