import numpy as np
import pytest
from keras import ops

from keras_transformer import layers
from tests.conftest import to_numpy

PADDING = np.array([[True, True, True, False, False], [True, True, True, True, True]])


def _numpy_causal(query_length, key_length, offset):
    return np.array(
        [[j <= i + offset for j in range(key_length)] for i in range(query_length)]
    )


@pytest.mark.parametrize("padding_id", [0, 7])
def test_padding_mask_marks_every_token_except_the_padding_id(padding_id):
    token_ids = np.array([[4, 2, padding_id, padding_id], [padding_id, 1, 3, 5]])
    mask = to_numpy(layers.padding_mask(token_ids, padding_id=padding_id))
    assert mask.dtype == bool
    np.testing.assert_array_equal(mask, token_ids != padding_id)


@pytest.mark.parametrize(
    "query_length, key_length, offset",
    [(4, None, 0), (3, 5, 0), (2, 6, 3), (1, 8, 5)],
)
def test_causal_mask_allows_keys_up_to_the_query_position_plus_offset(
    query_length, key_length, offset
):
    mask = to_numpy(layers.causal_mask(query_length, key_length, offset=offset))
    expected = _numpy_causal(query_length, key_length or query_length, offset)
    assert mask.dtype == bool
    np.testing.assert_array_equal(mask, expected)


def test_causal_mask_accepts_a_scalar_tensor_offset_for_cached_decoding():
    offset = ops.convert_to_tensor(2, dtype="int64")
    mask = to_numpy(layers.causal_mask(1, 4, offset=offset))
    np.testing.assert_array_equal(mask, _numpy_causal(1, 4, 2))


def test_causal_mask_without_offset_is_lower_triangular():
    np.testing.assert_array_equal(
        to_numpy(layers.causal_mask(5)), np.tril(np.ones((5, 5), dtype=bool))
    )


def test_encoder_self_attention_mask_masks_padded_keys_and_padded_queries():
    mask = to_numpy(layers.encoder_self_attention_mask(PADDING))
    expected = PADDING[:, :, None] & PADDING[:, None, :]
    assert mask.shape == (2, 5, 5)
    np.testing.assert_array_equal(mask, expected)


@pytest.mark.parametrize("offset", [0, 2])
def test_decoder_self_attention_mask_is_padding_and_causal(offset):
    mask = to_numpy(layers.decoder_self_attention_mask(PADDING, offset=offset))
    expected = (
        PADDING[:, :, None] & PADDING[:, None, :] & _numpy_causal(5, 5, offset)[None]
    )
    np.testing.assert_array_equal(mask, expected)


def test_cross_attention_mask_combines_decoder_rows_and_encoder_columns():
    decoder_padding = np.array([[True, True, False], [True, False, False]])
    mask = to_numpy(layers.cross_attention_mask(decoder_padding, PADDING))
    expected = decoder_padding[:, :, None] & PADDING[:, None, :]
    assert mask.shape == (2, 3, 5)
    np.testing.assert_array_equal(mask, expected)


def test_mask_helpers_accept_integer_padding_masks():
    as_ints = PADDING.astype("int32")
    np.testing.assert_array_equal(
        to_numpy(layers.encoder_self_attention_mask(as_ints)),
        to_numpy(layers.encoder_self_attention_mask(PADDING)),
    )


def test_segment_mask_lets_queries_see_only_the_real_keys_of_their_own_segment():
    queries = np.array([[1, 1, 2, 2, 0]])
    keys = np.array([[1, 2, 2, 0]])
    expected = (queries[0][:, None] == keys[0][None, :]) & (keys[0] != 0)[None, :]
    np.testing.assert_array_equal(
        to_numpy(layers.segment_mask(queries, keys)), expected[None]
    )


def test_segment_positions_restart_at_every_segment_and_pad_at_zero():
    segments = np.array([[1, 1, 1, 2, 2, 3, 0, 0], [1, 1, 1, 1, 1, 1, 1, 1]])
    np.testing.assert_array_equal(
        to_numpy(layers.segment_positions(segments)),
        [[0, 1, 2, 0, 1, 0, 0, 0], [0, 1, 2, 3, 4, 5, 6, 7]],
    )
