import keras
import numpy as np
import pytest

from keras_transformer import layers
from tests.conftest import random_floats, run_layer_test, to_numpy

FLOAT32_EPS = np.finfo("float32").eps


def paper_encoding(length, depth, max_wavelength=10000.0, start_index=0):
    """PE(pos, 2i) = sin(pos / w^(2i/d)), PE(pos, 2i+1) = cos(same), float64."""
    encoding = np.zeros((length, depth))
    for pos in range(start_index, start_index + length):
        for column in range(depth):
            i = column // 2
            angle = pos / max_wavelength ** (2 * i / depth)
            trig = np.sin if column % 2 == 0 else np.cos
            encoding[pos - start_index, column] = trig(angle)
    return encoding


def test_layer_contract_holds(tmp_path):
    run_layer_test(
        layers.SinusoidalPositionEncoding,
        {"max_wavelength": 500.0},
        random_floats(2, 8, 16),
        expected_output_shape=(2, 8, 16),
        run_training=False,
        tmp_path=tmp_path,
    )


@pytest.mark.parametrize("depth", [16, 7])
def test_encoding_matches_the_papers_interleaved_formula(depth):
    inputs = random_floats(2, 8, depth)
    outputs = to_numpy(layers.SinusoidalPositionEncoding()(inputs))
    expected = paper_encoding(8, depth)
    np.testing.assert_allclose(outputs[0], expected, atol=1e-5, rtol=0)
    np.testing.assert_array_equal(outputs[0], outputs[1])


def test_odd_feature_size_ends_with_a_sin_column():
    outputs = to_numpy(layers.SinusoidalPositionEncoding()(np.zeros((1, 4, 5))))
    np.testing.assert_allclose(
        outputs[0, :, -1], np.sin(np.arange(4) / 10000.0 ** (4 / 5)), atol=1e-6
    )


def test_long_sequences_have_no_maximum_and_stay_within_float32_angle_error():
    length = 5000
    outputs = to_numpy(
        layers.SinusoidalPositionEncoding()(np.zeros((1, length, 4), "float32"))
    )
    # Angles are float32: their error is about one ulp of the largest angle.
    np.testing.assert_allclose(
        outputs[0], paper_encoding(length, 4), atol=length * FLOAT32_EPS, rtol=0
    )


@pytest.mark.parametrize("as_tensor", [False, True])
def test_start_index_offsets_positions_for_incremental_decoding(as_tensor):
    layer = layers.SinusoidalPositionEncoding()
    full = to_numpy(layer(np.zeros((1, 8, 6), "float32")))
    start_index = keras.ops.convert_to_tensor(3, "int32") if as_tensor else 3
    step = to_numpy(layer(np.zeros((1, 2, 6), "float32"), start_index=start_index))
    np.testing.assert_allclose(step, full[:, 3:5], atol=1e-6, rtol=0)


def test_explicit_positions_give_each_row_the_encoding_of_its_own_positions():
    layer = layers.SinusoidalPositionEncoding()
    table = to_numpy(layer(np.zeros((1, 8, 6), "float32")))[0]
    positions = np.array([[0, 1, 2, 0, 1], [4, 5, 6, 7, 0]])
    outputs = to_numpy(layer(np.zeros((2, 5, 6), "float32"), positions=positions))
    np.testing.assert_allclose(outputs, table[positions], atol=1e-6, rtol=0)


def test_positions_and_a_start_index_together_are_rejected():
    with pytest.raises(ValueError, match="both positions and start_index=2"):
        layers.SinusoidalPositionEncoding()(
            np.zeros((1, 3, 4), "float32"), start_index=2, positions=np.zeros((1, 3))
        )


def test_mixed_float16_output_is_the_float32_table_cast_to_float16():
    inputs = random_floats(2, 8, 16)
    reference = to_numpy(layers.SinusoidalPositionEncoding()(inputs))
    mixed = to_numpy(layers.SinusoidalPositionEncoding(dtype="mixed_float16")(inputs))
    assert mixed.dtype == np.float16
    np.testing.assert_array_equal(mixed, reference.astype("float16"))


@pytest.mark.parametrize("max_wavelength", [0, -1.0, float("inf"), "10000", None])
def test_invalid_max_wavelength_is_rejected(max_wavelength):
    with pytest.raises(
        ValueError, match="argument max_wavelength, expected a positive"
    ):
        layers.SinusoidalPositionEncoding(max_wavelength=max_wavelength)


@pytest.mark.parametrize(
    "shape, message",
    [
        ((2, 8), "expected inputs of rank 3"),
        ((2, 8, 4, 4), "expected inputs of rank 3"),
    ],
)
def test_inputs_of_the_wrong_rank_are_rejected(shape, message):
    with pytest.raises(ValueError, match=message):
        layers.SinusoidalPositionEncoding()(np.zeros(shape, "float32"))


def test_unknown_feature_size_is_rejected_at_build():
    with pytest.raises(ValueError, match="needs the last dimension of inputs"):
        layers.SinusoidalPositionEncoding().build((None, 8, None))
