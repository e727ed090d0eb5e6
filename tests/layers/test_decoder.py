import numpy as np
import pytest
from keras import ops

from keras_transformer import layers
from tests.conftest import (
    compile_function,
    compiled_backends,
    random_floats,
    run_layer_test,
    to_numpy,
)

HIDDEN = 16
BASE = {"intermediate_dim": 32, "num_heads": 4}


def _decoder_inputs(target_length=5, source_length=6):
    return {
        "decoder_sequence": random_floats(2, target_length, HIDDEN, seed=1),
        "encoder_sequence": random_floats(2, source_length, HIDDEN, seed=2),
        "encoder_padding_mask": np.array(
            [[1] * source_length, [1] * (source_length - 2) + [0] * 2], bool
        ),
    }


@pytest.mark.slow
@pytest.mark.parametrize(
    "options",
    [
        {},
        {"norm_placement": "pre", "norm_type": "rms_norm", "activation": "geglu"},
        {"norm_placement": "deepnorm", "deepnorm_alpha": 1.5, "deepnorm_beta": 0.5},
        {"num_key_value_heads": 1, "use_rotary": True, "dropout": 0.1},
        {"position_bias": "relative"},
    ],
    ids=["post", "pre-rms-geglu", "deepnorm", "mqa-rotary", "relative"],
)
def test_decoder_block_passes_the_layer_harness(options, tmp_path):
    run_layer_test(
        layers.TransformerDecoderBlock,
        {**BASE, **options},
        _decoder_inputs(),
        expected_output_shape=(2, 5, HIDDEN),
        tmp_path=tmp_path,
        atol=1e-5,
    )


def test_decoder_only_block_passes_the_layer_harness(tmp_path):
    run_layer_test(
        layers.TransformerDecoderBlock,
        {**BASE, "use_cross_attention": False, "position_bias": "alibi"},
        random_floats(2, 5, HIDDEN),
        expected_output_shape=(2, 5, HIDDEN),
        tmp_path=tmp_path,
        atol=1e-5,
    )


def test_decoder_block_returns_self_and_cross_attention_scores(tmp_path):
    outputs = run_layer_test(
        layers.TransformerDecoderBlock,
        BASE,
        _decoder_inputs(),
        call_kwargs={"return_attention_scores": True},
        expected_output_shape=(2, 5, HIDDEN),
        tmp_path=tmp_path,
        atol=1e-5,
    )
    _, self_scores, cross_scores = outputs
    self_scores, cross_scores = to_numpy(self_scores), to_numpy(cross_scores)
    assert self_scores.shape == (2, 4, 5, 5)
    assert cross_scores.shape == (2, 4, 5, 6)
    # Causal: nothing above the diagonal; padded source tokens get no weight.
    assert np.all(np.triu(self_scores, k=1) == 0)
    assert np.all(cross_scores[1, :, :, -2:] == 0)
    np.testing.assert_allclose(cross_scores.sum(-1), 1.0, atol=1e-5)


def _decode_token_by_token(block, target, source, step_fn=None):
    batch, length, hidden = target.shape
    if not block.built:
        block.build((None, None, hidden), (None, None, source.shape[-1]))
    cache = block.initial_self_attention_cache(batch, length)
    cross_cache = block.compute_cross_attention_cache(source)

    def step(token, cache, cross_cache, index):
        return block(
            token,
            self_attention_cache=cache,
            self_attention_cache_update_index=index,
            cross_attention_cache=cross_cache,
        )

    step_fn = step_fn(step) if step_fn else step
    outputs = []
    for index in range(length):
        output, cache, cross_cache = step_fn(
            target[:, index : index + 1],
            cache,
            cross_cache,
            ops.convert_to_tensor(index, "int32"),
        )
        outputs.append(to_numpy(output))
    return np.concatenate(outputs, axis=1)


@pytest.mark.parametrize(
    "options",
    [{}, {"use_rotary": True}, {"position_bias": "alibi", "num_key_value_heads": 2},
     {"position_bias": "relative", "norm_placement": "pre"}],
    ids=["plain", "rotary", "alibi-gqa", "relative-pre"],
)
def test_decoding_token_by_token_with_caches_equals_one_full_causal_call(options):
    block = layers.TransformerDecoderBlock(**BASE, **options)
    target = random_floats(2, 6, HIDDEN, seed=3)
    source = random_floats(2, 4, HIDDEN, seed=4)
    full = to_numpy(block(target, source))
    stepped = _decode_token_by_token(block, target, source)
    np.testing.assert_allclose(stepped, full, atol=1e-5)


@compiled_backends
def test_a_cached_decode_step_compiles_under_xla_and_matches_eager():
    block = layers.TransformerDecoderBlock(**BASE, use_rotary=True)
    target = random_floats(2, 5, HIDDEN, seed=5)
    source = random_floats(2, 3, HIDDEN, seed=6)
    eager = _decode_token_by_token(block, target, source)
    compiled = _decode_token_by_token(
        block, target, source, step_fn=compile_function
    )
    np.testing.assert_allclose(compiled, eager, atol=1e-5)


def test_padding_the_source_never_changes_decoder_outputs():
    block = layers.TransformerDecoderBlock(**BASE)
    target = random_floats(2, 4, HIDDEN, seed=7)
    source = random_floats(2, 5, HIDDEN, seed=8)
    padded_source = np.concatenate([source, random_floats(2, 3, HIDDEN, seed=9)], 1)
    mask = np.array([[1] * 5 + [0] * 3] * 2, bool)
    short = block(target, source)
    long = block(target, padded_source, encoder_padding_mask=mask)
    np.testing.assert_allclose(to_numpy(long), to_numpy(short), atol=1e-5)


def test_future_target_tokens_never_change_earlier_outputs():
    block = layers.TransformerDecoderBlock(**BASE, use_cross_attention=False)
    target = random_floats(1, 6, HIDDEN)
    changed = target.copy()
    changed[:, 4:] = 50.0
    np.testing.assert_allclose(
        to_numpy(block(changed))[:, :4], to_numpy(block(target))[:, :4], atol=1e-5
    )


def test_an_all_padding_source_gives_finite_outputs():
    block = layers.TransformerDecoderBlock(**BASE)
    outputs = block(
        random_floats(2, 3, HIDDEN),
        random_floats(2, 4, HIDDEN),
        encoder_padding_mask=np.zeros((2, 4), bool),
    )
    assert np.all(np.isfinite(to_numpy(outputs)))


def test_a_cache_without_a_step_index_is_refused():
    block = layers.TransformerDecoderBlock(**BASE, use_cross_attention=False)
    block.build((None, None, HIDDEN))
    cache = block.initial_self_attention_cache(1, 4)
    with pytest.raises(ValueError, match="self_attention_cache_update_index"):
        block(random_floats(1, 1, HIDDEN), self_attention_cache=cache)


def test_cross_attention_without_an_encoder_output_is_refused():
    block = layers.TransformerDecoderBlock(**BASE)
    with pytest.raises(ValueError, match="encoder_sequence or cross_attention_cache"):
        block(random_floats(1, 3, HIDDEN))


def test_a_decoder_only_block_has_no_cross_attention_cache():
    block = layers.TransformerDecoderBlock(**BASE, use_cross_attention=False)
    with pytest.raises(ValueError, match="use_cross_attention=False"):
        block.compute_cross_attention_cache(random_floats(1, 3, HIDDEN))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"num_heads": 0}, "num_heads"),
        ({"dropout": 1.5}, "dropout"),
        ({"norm_placement": "none"}, "norm_placement"),
        ({"deepnorm_beta": 0.5}, "norm_placement='deepnorm'"),
    ],
)
def test_bad_arguments_raise_a_value_error_naming_the_argument(kwargs, message):
    with pytest.raises(ValueError, match=message):
        layers.TransformerDecoderBlock(**{**BASE, **kwargs})
