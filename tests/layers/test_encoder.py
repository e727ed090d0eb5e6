import keras
import numpy as np
import pytest

from keras_transformer import layers
from tests.conftest import random_floats, run_layer_test, to_numpy

HIDDEN = 16
BASE = {"intermediate_dim": 32, "num_heads": 4}


@pytest.mark.slow
@pytest.mark.parametrize(
    "options",
    [
        {},
        {"norm_placement": "pre", "norm_type": "rms_norm"},
        {"norm_placement": "sandwich", "activation": "swiglu"},
        {"norm_placement": "deepnorm", "deepnorm_alpha": 1.3, "deepnorm_beta": 0.6},
        {"norm_placement": "rezero"},
        {"num_key_value_heads": 2, "use_rotary": True},
        {"position_bias": "alibi", "dropout": 0.1},
        {"position_bias": "relative", "attention_dropout": 0.2},
    ],
    ids=["post", "pre-rms", "sandwich-swiglu", "deepnorm", "rezero", "gqa-rotary",
         "alibi", "relative"],
)
def test_encoder_block_passes_the_layer_harness(options, tmp_path):
    run_layer_test(
        layers.TransformerEncoderBlock,
        {**BASE, **options},
        {
            "inputs": random_floats(2, 5, HIDDEN),
            "padding_mask": np.array([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]], bool),
        },
        expected_output_shape=(2, 5, HIDDEN),
        tmp_path=tmp_path,
        atol=1e-5,
    )


def test_encoder_block_returns_attention_scores_on_request(tmp_path):
    outputs = run_layer_test(
        layers.TransformerEncoderBlock,
        BASE,
        random_floats(2, 5, HIDDEN),
        call_kwargs={"return_attention_scores": True},
        expected_output_shape=(2, 5, HIDDEN),
        tmp_path=tmp_path,
        atol=1e-5,
    )
    _, scores = outputs
    assert tuple(scores.shape) == (2, 4, 5, 5)
    np.testing.assert_allclose(to_numpy(scores).sum(-1), 1.0, atol=1e-5)


def _copy_attention_weights(source_mha, target_mha, hidden):
    """Copies Keras MHA EinsumDense weights into our Dense projections."""
    for name in ("query", "key", "value"):
        kernel, bias = getattr(source_mha, f"_{name}_dense").get_weights()
        getattr(target_mha, f"{name}_dense").set_weights(
            [kernel.reshape(hidden, -1), bias.reshape(-1)]
        )
    kernel, bias = source_mha._output_dense.get_weights()
    target_mha.output_dense.set_weights([kernel.reshape(-1, hidden), bias])


@pytest.mark.parametrize("norm_placement", ["post", "pre"])
def test_encoder_block_matches_a_block_hand_composed_from_keras_layers(
    norm_placement,
):
    # A backend tensor: NumPy + a PyTorch tensor is NumPy's operation, which fails.
    hidden_states = keras.ops.convert_to_tensor(random_floats(2, 6, HIDDEN))
    mask = np.array([[1] * 6, [1] * 4 + [0] * 2], bool)
    block = layers.TransformerEncoderBlock(
        **BASE, norm_placement=norm_placement, activation="gelu"
    )
    expected_shape_outputs = block(hidden_states, padding_mask=mask)

    mha = keras.layers.MultiHeadAttention(num_heads=4, key_dim=HIDDEN // 4)
    mha(hidden_states, hidden_states)
    _copy_attention_weights(mha, block.self_attention.sublayer, HIDDEN)
    attention_norm = keras.layers.LayerNormalization(epsilon=1e-5)
    ffn_norm = keras.layers.LayerNormalization(epsilon=1e-5)
    attention_norm.build((None, HIDDEN))
    ffn_norm.build((None, HIDDEN))
    attention_norm.set_weights([np.full(HIDDEN, 1.5, "float32"), np.full(HIDDEN, 0.1, "float32")])
    ffn_norm.set_weights([np.full(HIDDEN, 0.5, "float32"), np.full(HIDDEN, -0.2, "float32")])
    block.self_attention.norm.set_weights(attention_norm.get_weights())
    block.feed_forward.norm.set_weights(ffn_norm.get_weights())
    up = keras.layers.Dense(32, activation="gelu")
    down = keras.layers.Dense(HIDDEN)
    up.build((None, HIDDEN))
    down.build((None, 32))
    up.set_weights(block.feed_forward.sublayer.intermediate_dense.get_weights())
    down.set_weights(block.feed_forward.sublayer.output_dense.get_weights())

    attention_mask = np.repeat(mask[:, None, :], 6, axis=1)
    if norm_placement == "post":
        x = attention_norm(hidden_states + mha(hidden_states, hidden_states, attention_mask=attention_mask))
        expected = ffn_norm(x + down(up(x)))
    else:
        normed = attention_norm(hidden_states)
        x = hidden_states + mha(normed, normed, attention_mask=attention_mask)
        expected = x + down(up(ffn_norm(x)))

    actual = block(hidden_states, padding_mask=mask)
    assert actual.shape == expected_shape_outputs.shape
    np.testing.assert_allclose(to_numpy(actual), to_numpy(expected), atol=1e-5)


def test_appending_padding_never_changes_the_outputs_of_real_tokens():
    block = layers.TransformerEncoderBlock(**BASE, position_bias="relative")
    real = random_floats(2, 5, HIDDEN)
    padded = np.concatenate([real, random_floats(2, 3, HIDDEN, seed=9) * 100], axis=1)
    mask = np.array([[1] * 5 + [0] * 3] * 2, bool)
    short = block(real, padding_mask=np.ones((2, 5), bool))
    long = block(padded, padding_mask=mask)
    np.testing.assert_allclose(to_numpy(long)[:, :5], to_numpy(short), atol=1e-5)


def test_an_all_padding_batch_gives_finite_outputs():
    block = layers.TransformerEncoderBlock(**BASE, norm_placement="pre")
    outputs = block(random_floats(2, 4, HIDDEN), padding_mask=np.zeros((2, 4), bool))
    assert np.all(np.isfinite(to_numpy(outputs)))


def test_deepnorm_scales_value_output_and_feed_forward_initialisers_by_beta():
    beta = 0.25
    block = layers.TransformerEncoderBlock(
        intermediate_dim=512, num_heads=4, norm_placement="deepnorm",
        deepnorm_alpha=2.0, deepnorm_beta=beta, kernel_initializer="glorot_normal",
    )
    block.build((None, None, 256))
    attention = block.self_attention.sublayer
    xavier_std = np.sqrt(2.0 / (256 + 256))
    assert np.std(to_numpy(attention.query_dense.kernel)) == pytest.approx(xavier_std, rel=0.05)
    assert np.std(to_numpy(attention.value_dense.kernel)) == pytest.approx(beta * xavier_std, rel=0.05)
    assert np.std(to_numpy(attention.output_dense.kernel)) == pytest.approx(beta * xavier_std, rel=0.05)
    ffn_std = np.sqrt(2.0 / (256 + 512))
    ffn = block.feed_forward.sublayer
    assert np.std(to_numpy(ffn.intermediate_dense.kernel)) == pytest.approx(beta * ffn_std, rel=0.05)
    assert block.self_attention.deepnorm_alpha == 2.0


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"num_heads": 0}, "num_heads"),
        ({"intermediate_dim": -1}, "intermediate_dim"),
        ({"dropout": 1.0}, "dropout"),
        ({"attention_dropout": -0.1}, "attention_dropout"),
        ({"feed_forward_dropout": 2}, "feed_forward_dropout"),
        ({"norm_placement": "middle"}, "norm_placement"),
        ({"layer_norm_epsilon": 0}, "layer_norm_epsilon"),
        ({"deepnorm_alpha": 2.0}, "norm_placement='deepnorm'"),
        ({"norm_type": "batch_norm"}, "norm_type"),
        ({"position_bias": "rope"}, "position_bias"),
        ({"num_key_value_heads": 3}, "num_key_value_heads"),
    ],
)
def test_bad_arguments_raise_a_value_error_naming_the_argument(kwargs, message):
    with pytest.raises(ValueError, match=message):
        block = layers.TransformerEncoderBlock(**{**BASE, **kwargs})
        block(random_floats(1, 3, HIDDEN))


def test_inputs_without_a_sequence_axis_are_refused_at_build():
    block = layers.TransformerEncoderBlock(**BASE)
    with pytest.raises(ValueError, match="rank 3"):
        block.build((None, HIDDEN))
