import math

import keras
import numpy as np
import pytest

from keras_transformer import layers
from tests.conftest import (
    compile_function,
    compiled_backends,
    random_floats,
    random_token_ids,
    run_layer_test,
    to_numpy,
)

VOCAB, LENGTH, DIM = 20, 8, 16


def token_and_position(**overrides):
    kwargs = {
        "vocabulary_size": VOCAB,
        "sequence_length": LENGTH,
        "embedding_dim": DIM,
        **overrides,
    }
    return layers.TokenAndPositionEmbedding(**kwargs)


# PositionEmbedding


def test_position_embedding_layer_contract_holds(tmp_path):
    run_layer_test(
        layers.PositionEmbedding,
        {"sequence_length": LENGTH},
        random_floats(2, 6, DIM),
        expected_output_shape=(2, 6, DIM),
        tmp_path=tmp_path,
    )


def test_position_embedding_returns_table_rows_broadcast_over_the_batch():
    layer = layers.PositionEmbedding(sequence_length=LENGTH)
    outputs = to_numpy(layer(random_floats(2, 5, DIM)))
    table = to_numpy(layer.embeddings)
    assert table.shape == (LENGTH, DIM)
    np.testing.assert_array_equal(outputs, np.broadcast_to(table[:5], (2, 5, DIM)))


@pytest.mark.parametrize("as_tensor", [False, True])
def test_start_index_selects_the_following_rows(as_tensor):
    layer = layers.PositionEmbedding(sequence_length=LENGTH)
    full = to_numpy(layer(random_floats(1, LENGTH, DIM)))
    start_index = keras.ops.convert_to_tensor(3, "int32") if as_tensor else 3
    step = to_numpy(layer(random_floats(1, 2, DIM), start_index=start_index))
    np.testing.assert_array_equal(step, full[:, 3:5])


def test_inputs_longer_than_the_table_are_rejected_at_build():
    with pytest.raises(
        ValueError,
        match=r"positions up to 9 .*sequence_length=8.*Increase sequence_length",
    ):
        layers.PositionEmbedding(sequence_length=LENGTH)(random_floats(1, 9, DIM))


def test_start_index_past_the_table_is_rejected_at_call():
    layer = layers.PositionEmbedding(sequence_length=LENGTH)
    layer(random_floats(1, 4, DIM))
    with pytest.raises(
        ValueError, match=r"positions up to 10 \(start_index=7, length 3\)"
    ):
        layer(random_floats(1, 3, DIM), start_index=7)


def test_start_index_past_the_table_is_rejected_on_symbolic_inputs():
    layer = layers.PositionEmbedding(sequence_length=LENGTH)
    with pytest.raises(ValueError, match="Increase sequence_length"):
        layer(keras.Input((4, DIM)), start_index=5)


def test_eager_tensor_start_index_past_the_table_is_rejected_on_every_backend():
    layer = layers.PositionEmbedding(sequence_length=LENGTH)
    layer(random_floats(1, 4, DIM))
    with pytest.raises(ValueError, match=r"positions up to 10 \(start_index=6"):
        layer(random_floats(1, 4, DIM), start_index=keras.ops.convert_to_tensor(6))


@compiled_backends
def test_compiled_start_index_past_the_table_gives_nan_rows_instead_of_clipping():
    layer = layers.PositionEmbedding(sequence_length=LENGTH)
    layer(random_floats(1, 4, DIM))
    table = to_numpy(layer.embeddings)
    step = compile_function(lambda start: layer(random_floats(1, 4, DIM), start))
    rows = to_numpy(step(keras.ops.convert_to_tensor(6, "int32")))[0]
    # Positions 6 and 7 exist; 8 and 9 are past the table, and a compiled
    # program cannot raise.
    np.testing.assert_array_equal(rows[:2], table[6:])
    assert np.isnan(rows[2:]).all()


def test_explicit_positions_select_their_rows_even_in_rows_longer_than_the_table():
    layer = layers.PositionEmbedding(sequence_length=LENGTH)
    layer(random_floats(1, 4, DIM))
    table = to_numpy(layer.embeddings)
    # Packed rows: each segment restarts at 0, so a row may outrun the table.
    positions = np.tile(np.arange(LENGTH), 2)[None]
    rows = to_numpy(layer(random_floats(1, 2 * LENGTH, DIM), positions=positions))
    np.testing.assert_array_equal(rows[0], table[positions[0]])


def test_explicit_positions_past_the_table_are_rejected():
    layer = layers.PositionEmbedding(sequence_length=LENGTH)
    with pytest.raises(ValueError, match=f"positions from 0 to {LENGTH}"):
        layer(random_floats(1, 2, DIM), positions=np.array([[0, LENGTH]]))


def test_learned_positions_build_a_functional_model_of_unknown_length():
    # Keras infers shapes with a placeholder length on JAX (a symbolic
    # dimension) and PyTorch (83, longer than the table).
    token_ids = keras.Input((None,), dtype="int32")
    embedded = token_and_position()(token_ids)
    hidden = keras.layers.Dense(DIM)(embedded)
    positions = layers.PositionEmbedding(sequence_length=LENGTH)(hidden)
    model = keras.Model(token_ids, [embedded, positions])
    assert tuple(embedded.shape) == (None, None, DIM)
    token_ids = random_token_ids(2, 5, VOCAB)
    outputs, rows = model.predict(token_ids, verbose=0)
    assert outputs.shape == rows.shape == (2, 5, DIM)


def test_symbolic_token_ids_longer_than_the_table_are_rejected():
    with pytest.raises(ValueError, match=r"positions up to 9 .*sequence_length=8"):
        token_and_position()(keras.Input((9,), dtype="int32"))


def test_negative_start_index_is_rejected():
    with pytest.raises(ValueError, match="negative start_index"):
        layers.PositionEmbedding(sequence_length=LENGTH)(
            random_floats(1, 2, DIM), start_index=-1
        )


@pytest.mark.parametrize("sequence_length", [0, -3, 2.5, None, "8", True])
def test_invalid_sequence_length_is_rejected(sequence_length):
    with pytest.raises(
        ValueError, match="argument sequence_length, expected a positive integer"
    ):
        layers.PositionEmbedding(sequence_length=sequence_length)


@pytest.mark.parametrize(
    "shape, message",
    [
        ((2, 8), "expected inputs of rank 3"),
        ((None, 8, None), "needs the last dimension of inputs"),
    ],
)
def test_position_embedding_rejects_bad_input_shapes(shape, message):
    with pytest.raises(ValueError, match=message):
        layers.PositionEmbedding(sequence_length=LENGTH).build(shape)


# TokenAndPositionEmbedding


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"position_encoding": "sinusoidal", "sequence_length": None},
        {"mask_zero": True, "scale_embedding": False},
        {"position_encoding": "none", "sequence_length": None},
    ],
    ids=["learned", "sinusoidal", "masked_unscaled", "no_positions"],
)
def test_token_and_position_layer_contract_holds(overrides, tmp_path):
    run_layer_test(
        layers.TokenAndPositionEmbedding,
        {
            "vocabulary_size": VOCAB,
            "sequence_length": LENGTH,
            "embedding_dim": DIM,
            **overrides,
        },
        random_token_ids(2, 6, VOCAB),
        expected_output_shape=(2, 6, DIM),
        tmp_path=tmp_path,
    )


# Reverse mode reads only the token table, so the position table gets no
# gradient in the fit step.
@pytest.mark.filterwarnings("ignore:Gradients do not exist")
def test_reverse_mode_layer_contract_holds(tmp_path):
    run_layer_test(
        layers.TokenAndPositionEmbedding,
        {"vocabulary_size": VOCAB, "sequence_length": LENGTH, "embedding_dim": DIM},
        random_floats(2, 6, DIM),
        call_kwargs={"reverse": True},
        expected_output_shape=(2, 6, VOCAB),
        tmp_path=tmp_path,
    )


@pytest.mark.parametrize("scale_embedding", [True, False])
def test_forward_adds_scaled_token_embeddings_to_learned_positions(scale_embedding):
    layer = token_and_position(scale_embedding=scale_embedding)
    token_ids = random_token_ids(2, 6, VOCAB)
    outputs = to_numpy(layer(token_ids))
    tokens = to_numpy(layer.token_embedding.embeddings)
    positions = to_numpy(layer.position_embedding.embeddings)
    scale = math.sqrt(DIM) if scale_embedding else 1.0
    expected = tokens[token_ids] * scale + positions[:6]
    np.testing.assert_allclose(outputs, expected, atol=1e-6, rtol=0)


def test_sinusoidal_positions_match_the_standalone_encoding_and_add_no_weights():
    layer = token_and_position(position_encoding="sinusoidal", sequence_length=None)
    token_ids = random_token_ids(2, 6, VOCAB)
    outputs = to_numpy(layer(token_ids, start_index=2))
    assert [w.path for w in layer.weights] == [layer.token_embedding.embeddings.path]
    tokens = to_numpy(layer.token_embedding.embeddings)
    encoding = to_numpy(
        layers.SinusoidalPositionEncoding()(np.zeros((1, 8, DIM), "float32"))
    )
    expected = tokens[token_ids] * math.sqrt(DIM) + encoding[:, 2:]
    np.testing.assert_allclose(outputs, expected, atol=1e-6, rtol=0)


@pytest.mark.parametrize("position_encoding", ["learned", "sinusoidal"])
def test_explicit_positions_add_the_rows_of_those_positions(position_encoding):
    layer = token_and_position(position_encoding=position_encoding)
    ids = random_token_ids(1, 6, VOCAB)
    positions = np.array([[0, 1, 2, 0, 1, 2]])
    # Two segments [a b c][a b c] embed as the first three tokens do alone.
    repeated = np.concatenate([ids[:, :3], ids[:, :3]], axis=1)
    outputs = to_numpy(layer(repeated, positions=positions))
    alone = to_numpy(layer(ids[:, :3]))
    np.testing.assert_allclose(outputs[:, 3:], alone, atol=1e-6, rtol=0)
    np.testing.assert_allclose(outputs[:, :3], alone, atol=1e-6, rtol=0)


@compiled_backends
def test_compiled_positions_past_the_table_give_nan_instead_of_wrong_rows():
    layer = token_and_position()
    layer(random_token_ids(1, 4, VOCAB))
    embed = compile_function(
        lambda positions: layer(random_token_ids(1, 2, VOCAB), positions=positions)
    )
    outputs = to_numpy(embed(keras.ops.convert_to_tensor([[0, LENGTH]], "int32")))
    assert np.isnan(outputs).all()


def test_positions_without_a_position_table_are_rejected():
    layer = token_and_position(position_encoding="none")
    with pytest.raises(ValueError, match="adds no positions"):
        layer(random_token_ids(1, 3, VOCAB), positions=np.array([[0, 1, 0]]))


def test_no_position_encoding_returns_scaled_token_embeddings_only():
    layer = token_and_position(position_encoding="none", sequence_length=None)
    token_ids = random_token_ids(2, 6, VOCAB)
    outputs = to_numpy(layer(token_ids, start_index=3))
    tokens = to_numpy(layer.token_embedding.embeddings)
    np.testing.assert_allclose(outputs, tokens[token_ids] * math.sqrt(DIM), atol=1e-6)
    assert len(layer.weights) == 1


def test_reverse_mode_returns_tied_logits_without_new_weights():
    layer = token_and_position()
    layer(random_token_ids(2, 6, VOCAB))
    weights_before = len(layer.weights)
    hidden = random_floats(2, 6, DIM)
    logits = to_numpy(layer(hidden, reverse=True))
    tokens = to_numpy(layer.token_embedding.embeddings)
    np.testing.assert_allclose(logits, hidden @ tokens.T, atol=1e-6, rtol=0)
    assert len(layer.weights) == weights_before


def test_mask_zero_marks_padding_tokens():
    layer = token_and_position(mask_zero=True)
    token_ids = random_token_ids(2, 6, VOCAB)
    token_ids[:, 4:] = 0
    mask = to_numpy(layer.compute_mask(token_ids))
    np.testing.assert_array_equal(mask, token_ids != 0)
    outputs = layer(token_ids)
    np.testing.assert_array_equal(to_numpy(outputs._keras_mask), token_ids != 0)


def test_no_mask_without_mask_zero():
    assert token_and_position().compute_mask(random_token_ids(2, 6, VOCAB)) is None


@pytest.mark.parametrize("position_encoding", ["learned", "sinusoidal"])
def test_token_ids_longer_than_sequence_length_are_rejected(position_encoding):
    layer = token_and_position(position_encoding=position_encoding)
    with pytest.raises(
        ValueError, match=r"positions up to 9 .*Increase sequence_length"
    ):
        layer(random_token_ids(2, 9, VOCAB))


@pytest.mark.parametrize("position_encoding", ["learned", "sinusoidal"])
def test_start_index_past_sequence_length_is_rejected(position_encoding):
    layer = token_and_position(position_encoding=position_encoding)
    layer(random_token_ids(2, 4, VOCAB))
    with pytest.raises(
        ValueError, match=r"positions up to 9 .*Increase sequence_length"
    ):
        layer(random_token_ids(2, 2, VOCAB), start_index=7)


def test_sinusoidal_without_maximum_accepts_any_length():
    layer = token_and_position(position_encoding="sinusoidal", sequence_length=None)
    assert to_numpy(layer(random_token_ids(1, 50, VOCAB))).shape == (1, 50, DIM)


def test_reverse_mode_rejects_hidden_states_of_the_wrong_width():
    layer = token_and_position()
    with pytest.raises(
        ValueError, match="expected the last dimension of inputs to be 16"
    ):
        layer(random_floats(2, 6, DIM + 1), reverse=True)


def test_forward_mode_rejects_float_hidden_states():
    layer = token_and_position()
    layer(random_token_ids(2, 6, VOCAB))
    with pytest.raises(ValueError, match="Pass reverse=True"):
        layer(random_floats(2, 6, DIM))


def test_inputs_of_the_wrong_rank_are_rejected():
    with pytest.raises(ValueError, match="expected inputs of rank 2 or 3"):
        token_and_position()(np.zeros((2,), "int32"))


@pytest.mark.parametrize(
    "overrides, message",
    [
        (
            {"vocabulary_size": 0},
            "argument vocabulary_size, expected a positive integer",
        ),
        ({"embedding_dim": -1}, "argument embedding_dim, expected a positive integer"),
        ({"embedding_dim": 4.0}, "argument embedding_dim, expected a positive integer"),
        (
            {"sequence_length": 0},
            "argument sequence_length, expected a positive integer",
        ),
        ({"sequence_length": None}, "position_encoding='learned'. A learned position"),
        (
            {"position_encoding": "rotary"},
            "argument position_encoding, expected one of 'learned', 'sinusoidal'",
        ),
    ],
)
def test_invalid_constructor_arguments_are_rejected(overrides, message):
    with pytest.raises(ValueError, match=message):
        token_and_position(**overrides)
