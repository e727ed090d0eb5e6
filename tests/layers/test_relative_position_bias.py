import math

import keras
import numpy as np
import pytest

from keras_transformer import layers
from tests.conftest import run_layer_test, to_numpy, value_and_gradients


def paper_alibi_slopes(n):
    """`get_slopes` from the ALiBi authors' reference implementation."""

    def get_slopes_power_of_2(n):
        start = 2 ** (-(2 ** -(math.log2(n) - 3)))
        ratio = start
        return [start * ratio**i for i in range(n)]

    if math.log2(n).is_integer():
        return get_slopes_power_of_2(n)
    closest_power_of_2 = 2 ** math.floor(math.log2(n))
    return (
        get_slopes_power_of_2(closest_power_of_2)
        + paper_alibi_slopes(2 * closest_power_of_2)[0::2][: n - closest_power_of_2]
    )


def t5_relative_position_bucket(
    relative_position, bidirectional=True, num_buckets=32, max_distance=128
):
    """NumPy transcription of T5's `_relative_position_bucket` (float32 log)."""
    relative_buckets = 0
    if bidirectional:
        num_buckets //= 2
        relative_buckets += (relative_position > 0).astype("int64") * num_buckets
        relative_position = np.abs(relative_position)
    else:
        relative_position = -np.minimum(
            relative_position, np.zeros_like(relative_position)
        )
    max_exact = num_buckets // 2
    is_small = relative_position < max_exact
    # log(0) = -inf for distance 0 only reaches the discarded branch.
    with np.errstate(divide="ignore", invalid="ignore"):
        relative_position_if_large = max_exact + (
            np.log(relative_position.astype("float32") / np.float32(max_exact))
            / np.float32(math.log(max_distance / max_exact))
            * np.float32(num_buckets - max_exact)
        ).astype("int64")
    relative_position_if_large = np.minimum(relative_position_if_large, num_buckets - 1)
    relative_buckets += np.where(
        is_small, relative_position, relative_position_if_large
    )
    return relative_buckets


def positions(*rows):
    return np.array(rows, "int32")


# AlibiBias


def test_alibi_layer_contract_holds(tmp_path):
    run_layer_test(
        layers.AlibiBias,
        {"num_heads": 4},
        (positions([0, 1, 2], [5, 6, 7]), positions([0, 1, 2, 3, 4], [4, 5, 6, 7, 8])),
        expected_output_shape=(2, 4, 3, 5),
        run_training=False,
        tmp_path=tmp_path,
    )


@pytest.mark.parametrize("num_heads", [8, 12, 1, 6])
def test_alibi_slopes_follow_the_papers_rule(num_heads):
    bias = to_numpy(
        layers.AlibiBias(num_heads=num_heads)(positions([0]), positions([1]))
    )
    np.testing.assert_allclose(
        -bias[0, :, 0, 0], paper_alibi_slopes(num_heads), rtol=1e-6
    )


def test_alibi_bias_is_minus_slope_times_absolute_distance():
    query_positions = positions([3, 4, 5], [0, 1, 2])
    key_positions = positions([0, 1, 2, 3, 4, 5], [0, 1, 2, 3, 4, 5])
    bias = to_numpy(layers.AlibiBias(num_heads=8)(query_positions, key_positions))
    distance = np.abs(
        query_positions[:, None, :, None] - key_positions[:, None, None, :]
    )
    slopes = np.array(paper_alibi_slopes(8))[None, :, None, None]
    np.testing.assert_allclose(bias, -slopes * distance, rtol=1e-6)


def test_alibi_shares_batch_of_one_positions_across_the_batch():
    bias = to_numpy(
        layers.AlibiBias(num_heads=2)(positions([0, 1, 2]), positions([0, 1], [5, 6]))
    )
    assert bias.shape == (2, 2, 3, 2)


def test_alibi_mixed_precision_output_is_the_float32_bias_cast():
    query_positions, key_positions = positions([0, 1, 2, 3]), positions([0, 1, 2, 3])
    reference = to_numpy(layers.AlibiBias(num_heads=12)(query_positions, key_positions))
    mixed = to_numpy(
        layers.AlibiBias(num_heads=12, dtype="mixed_float16")(
            query_positions, key_positions
        )
    )
    np.testing.assert_array_equal(mixed, reference.astype("float16"))


# RelativePositionBias


@pytest.mark.parametrize("bidirectional", [True, False])
def test_relative_position_bias_layer_contract_holds(bidirectional, tmp_path):
    run_layer_test(
        layers.RelativePositionBias,
        {
            "num_heads": 4,
            "num_buckets": 8,
            "max_distance": 16,
            "bidirectional": bidirectional,
        },
        (positions([0, 1, 2], [5, 6, 7]), positions([0, 1, 2, 3, 4], [4, 5, 6, 7, 8])),
        expected_output_shape=(2, 4, 3, 5),
        tmp_path=tmp_path,
    )


@pytest.mark.parametrize("num_buckets, max_distance", [(32, 128), (8, 20), (6, 5)])
@pytest.mark.parametrize("bidirectional", [True, False])
def test_buckets_match_t5_over_offsets_from_minus_300_to_300(
    bidirectional, num_buckets, max_distance
):
    layer = layers.RelativePositionBias(
        num_heads=1,
        num_buckets=num_buckets,
        max_distance=max_distance,
        bidirectional=bidirectional,
    )
    query_positions, key_positions = positions([300]), positions(list(range(601)))
    layer.build(query_positions.shape, key_positions.shape)
    # A table whose value is its row index turns the bias into the bucket id.
    layer.embeddings.assign(np.arange(num_buckets, dtype="float32")[:, None])
    buckets = to_numpy(layer(query_positions, key_positions))[0, 0, 0]
    expected = t5_relative_position_bucket(
        np.arange(-300, 301), bidirectional, num_buckets, max_distance
    )
    np.testing.assert_array_equal(buckets.astype("int64"), expected)


def test_bias_looks_up_the_table_row_of_each_offsets_bucket_per_head():
    layer = layers.RelativePositionBias(num_heads=3, num_buckets=8, max_distance=16)
    query_positions = positions([0, 1, 2], [7, 8, 9])
    key_positions = positions([0, 1, 2, 3], [0, 4, 8, 12])
    bias = to_numpy(layer(query_positions, key_positions))
    table = to_numpy(layer.embeddings)
    offsets = key_positions[:, None, :] - query_positions[:, :, None]
    expected = table[t5_relative_position_bucket(offsets, True, 8, 16)]
    np.testing.assert_array_equal(bias, np.transpose(expected, (0, 3, 1, 2)))


def test_each_table_row_gets_the_gradient_of_the_offsets_in_its_bucket():
    layer = layers.RelativePositionBias(num_heads=2, num_buckets=8, max_distance=16)
    query_positions = key_positions = positions([0, 1, 2, 3])
    layer.build(query_positions.shape, key_positions.shape)
    _, (gradient,) = value_and_gradients(
        lambda: keras.ops.sum(layer(query_positions, key_positions)),
        [layer.embeddings],
    )
    gradient = to_numpy(gradient)
    offsets = np.arange(4)[None, :] - np.arange(4)[:, None]
    counts = np.bincount(
        t5_relative_position_bucket(offsets, True, 8, 16).ravel(), minlength=8
    )
    assert np.count_nonzero(counts) > 1
    np.testing.assert_array_equal(gradient, np.repeat(counts[:, None], 2, axis=1))


# Shared validation


@pytest.mark.parametrize("layer_cls", [layers.AlibiBias, layers.RelativePositionBias])
@pytest.mark.parametrize(
    "query_positions, key_positions, message",
    [
        (
            np.zeros((2, 3, 1), "int32"),
            np.zeros((2, 3), "int32"),
            "expected query_positions of rank 2",
        ),
        (
            np.zeros((2, 3), "int32"),
            np.zeros((3,), "int32"),
            "expected key_positions of rank 2",
        ),
        (np.zeros((2, 3), "int32"), np.zeros((3, 3), "int32"), "the same batch size"),
        (
            np.zeros((2, 3), "float32"),
            np.zeros((2, 3), "int32"),
            "expected integer query_positions",
        ),
    ],
)
def test_bad_positions_are_rejected(layer_cls, query_positions, key_positions, message):
    with pytest.raises(ValueError, match=message):
        layer_cls(num_heads=2)(query_positions, key_positions)


@pytest.mark.parametrize(
    "layer_cls, kwargs, message",
    [
        (
            layers.AlibiBias,
            {"num_heads": 0},
            "argument num_heads, expected a positive integer",
        ),
        (
            layers.RelativePositionBias,
            {"num_heads": 2.0},
            "argument num_heads, expected a positive integer",
        ),
        (
            layers.RelativePositionBias,
            {"num_heads": 2, "num_buckets": 0},
            "argument num_buckets, expected a positive integer",
        ),
        (
            layers.RelativePositionBias,
            {"num_heads": 2, "num_buckets": 6.0},
            "argument num_buckets, expected a positive integer",
        ),
        (
            layers.RelativePositionBias,
            {"num_heads": 2, "num_buckets": 7},
            "argument num_buckets, expected an even integer >= 4",
        ),
        (
            layers.RelativePositionBias,
            {"num_heads": 2, "num_buckets": 2},
            "argument num_buckets, expected an even integer >= 4",
        ),
        (
            layers.RelativePositionBias,
            {"num_heads": 2, "num_buckets": 1, "bidirectional": False},
            "argument num_buckets, expected an integer >= 2 when bidirectional=False",
        ),
        (
            layers.RelativePositionBias,
            {"num_heads": 2, "max_distance": 0},
            "argument max_distance, expected a positive integer",
        ),
        (
            layers.RelativePositionBias,
            {"num_heads": 2, "num_buckets": 32, "max_distance": 8},
            r"argument max_distance, expected an integer greater than 8.*"
            r"Received: max_distance=8",
        ),
        (
            layers.RelativePositionBias,
            {
                "num_heads": 2,
                "num_buckets": 32,
                "max_distance": 16,
                "bidirectional": False,
            },
            "argument max_distance, expected an integer greater than 16",
        ),
    ],
)
def test_invalid_constructor_arguments_are_rejected(layer_cls, kwargs, message):
    with pytest.raises(ValueError, match=message):
        layer_cls(**kwargs)
