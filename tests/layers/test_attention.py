import keras
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
    value_and_gradients,
)

BATCH, LENGTH, FEATURES = 2, 6, 8


def _bool_mask(*shape, seed=0):
    mask = np.random.default_rng(seed).random(shape) > 0.3
    mask[..., 0] = True
    return mask


def _copy_weights(ours, reference):
    """Copies our (d, H*D) kernels into Keras's per-head EinsumDense kernels."""
    for mine, theirs in (
        (ours.query_dense, reference._query_dense),
        (ours.key_dense, reference._key_dense),
        (ours.value_dense, reference._value_dense),
        (ours.output_dense, reference._output_dense),
    ):
        theirs.kernel.assign(ops.reshape(mine.kernel, theirs.kernel.shape))
        theirs.bias.assign(ops.reshape(mine.bias, theirs.bias.shape))


def _assert_close(actual, expected, atol=1e-5):
    np.testing.assert_allclose(to_numpy(actual), to_numpy(expected), atol=atol, rtol=0)


# -- the layer harness ---------------------------------------------------


@pytest.mark.parametrize(
    "init_kwargs, input_data, call_kwargs, expected_shape",
    [
        pytest.param(
            {"num_heads": 2},
            random_floats(BATCH, 4, FEATURES),
            {},
            (BATCH, 4, FEATURES),
            id="self_attention",
        ),
        pytest.param(
            {"num_heads": 2, "key_dim": 3, "value_dim": 5, "output_dim": 7},
            {
                "query": random_floats(BATCH, 4, FEATURES),
                "value": random_floats(BATCH, 5, 12, seed=1),
                "value_mask": _bool_mask(BATCH, 5),
            },
            {},
            (BATCH, 4, 7),
            id="cross_attention",
        ),
        pytest.param(
            {"num_heads": 4, "num_key_value_heads": 2, "use_rotary": True},
            random_floats(BATCH, 4, FEATURES),
            {"use_causal_mask": True},
            (BATCH, 4, FEATURES),
            id="grouped_query_rotary",
        ),
        pytest.param(
            {"num_heads": 2, "position_bias": "alibi"},
            random_floats(BATCH, 4, FEATURES),
            {"use_causal_mask": True},
            (BATCH, 4, FEATURES),
            id="alibi",
        ),
        pytest.param(
            {"num_heads": 2, "position_bias": "relative", "relative_num_buckets": 8},
            random_floats(BATCH, 4, FEATURES),
            {"return_attention_scores": True},
            (BATCH, 4, FEATURES),
            id="relative_with_scores",
        ),
    ],
)
def test_layer_harness(init_kwargs, input_data, call_kwargs, expected_shape, tmp_path):
    run_layer_test(
        layers.MultiHeadAttention,
        init_kwargs,
        input_data,
        call_kwargs=call_kwargs,
        expected_output_shape=expected_shape,
        tmp_path=tmp_path,
    )


# -- agreement with Keras's attention layers ------------------------------


def _query_value_key(case):
    query = random_floats(BATCH, LENGTH, FEATURES)
    if case == "cross":
        return (
            query,
            random_floats(BATCH, 4, 12, seed=1),
            random_floats(BATCH, 4, 10, seed=2),
        )
    return query, query, None


@pytest.mark.parametrize("case", ["padding", "causal", "cross", "explicit"])
def test_outputs_and_scores_match_keras_multi_head_attention(case):
    query, value, key = _query_value_key(case)
    key_length = value.shape[1]
    query_mask = _bool_mask(BATCH, LENGTH, seed=3)
    value_mask = _bool_mask(BATCH, key_length, seed=4)
    value_mask[1, -2:] = False
    ours_kwargs, keras_kwargs = {}, {}
    if case == "padding":
        ours_kwargs = {"query_mask": query_mask, "value_mask": value_mask}
        keras_kwargs = {
            "attention_mask": query_mask[:, :, None] & value_mask[:, None, :]
        }
    elif case == "causal":
        ours_kwargs = keras_kwargs = {"use_causal_mask": True}
    elif case == "cross":
        ours_kwargs = {"value_mask": value_mask}
        keras_kwargs = {"value_mask": value_mask}
    else:
        attention_mask = _bool_mask(BATCH, LENGTH, key_length, seed=5)
        ours_kwargs = keras_kwargs = {"attention_mask": attention_mask}

    ours = layers.MultiHeadAttention(
        num_heads=2, key_dim=4, value_dim=3, bias_initializer="random_normal"
    )
    reference = keras.layers.MultiHeadAttention(num_heads=2, key_dim=4, value_dim=3)
    ours(query, value, key)
    # Built, not called: Keras's own fused path fails on JAX when key_dim !=
    # value_dim (jax.nn.dot_product_attention needs one head size).
    reference.build(query.shape, value.shape, None if key is None else key.shape)
    _copy_weights(ours, reference)

    outputs, scores = ours(
        query, value, key, return_attention_scores=True, **ours_kwargs
    )
    expected, expected_scores = reference(
        query, value, key, return_attention_scores=True, **keras_kwargs
    )
    # Keras zeroes the weights of a query whose keys are all masked; ours
    # are uniform there (see the fully masked test), so compare the rest.
    attended = to_numpy(expected_scores).sum(axis=(1, 3)) > 0
    _assert_close(to_numpy(outputs)[attended], to_numpy(expected)[attended])
    _assert_close(
        to_numpy(scores).transpose(0, 2, 1, 3)[attended],
        to_numpy(expected_scores).transpose(0, 2, 1, 3)[attended],
    )


def test_grouped_query_attention_matches_keras_group_query_attention():
    query = random_floats(BATCH, LENGTH, FEATURES)
    value_mask = _bool_mask(BATCH, LENGTH, seed=1)
    ours = layers.MultiHeadAttention(
        num_heads=4, num_key_value_heads=2, key_dim=3, bias_initializer="random_normal"
    )
    reference = keras.layers.GroupQueryAttention(
        head_dim=3, num_query_heads=4, num_key_value_heads=2
    )
    ours(query)
    reference(query, query)
    _copy_weights(ours, reference)

    kwargs = {"value_mask": value_mask, "use_causal_mask": True}
    outputs, scores = ours(query, return_attention_scores=True, **kwargs)
    expected, expected_scores = reference(
        query, query, return_attention_scores=True, **kwargs
    )
    _assert_close(outputs, expected)
    _assert_close(scores, expected_scores)


def test_gradients_match_keras_multi_head_attention():
    """The backward pass, against Keras's own layer given the same weights."""
    query = random_floats(BATCH, LENGTH, FEATURES)
    value_mask = _bool_mask(BATCH, LENGTH, seed=1)
    weights = ops.convert_to_tensor(random_floats(BATCH, LENGTH, FEATURES, seed=2))
    ours = layers.MultiHeadAttention(
        num_heads=2, key_dim=4, bias_initializer="random_normal"
    )
    reference = keras.layers.MultiHeadAttention(num_heads=2, key_dim=4)
    ours(query)
    reference(query, query)
    _copy_weights(ours, reference)

    def loss_of(layer, **kwargs):
        def loss(query):
            outputs = layer(query, query, use_causal_mask=True, **kwargs)
            return ops.sum(outputs * weights)

        return loss

    gradients = [
        value_and_gradients(loss, [], [query])[1][0]
        for loss in (
            loss_of(ours, value_mask=value_mask),
            loss_of(reference, attention_mask=value_mask[:, None, :]),
        )
    ]
    _assert_close(*gradients)


# -- caches -------------------------------------------------------------

DECODING_CONFIGS = {
    "plain": {"num_heads": 2},
    "rotary": {"num_heads": 2, "use_rotary": True},
    "alibi": {"num_heads": 2, "position_bias": "alibi"},
    "relative": {
        "num_heads": 2,
        "position_bias": "relative",
        "relative_num_buckets": 8,
        "relative_bidirectional": False,
    },
    "grouped_query_rotary_alibi": {
        "num_heads": 4,
        "num_key_value_heads": 2,
        "use_rotary": True,
        "position_bias": "alibi",
    },
    "multi_query": {"num_heads": 4, "num_key_value_heads": 1},
    "value_heads_wider_than_keys": {"num_heads": 2, "key_dim": 3, "value_dim": 5},
}


@pytest.mark.parametrize("config", list(DECODING_CONFIGS), ids=str)
def test_token_by_token_decoding_with_a_cache_equals_one_causal_call(config):
    layer = layers.MultiHeadAttention(**DECODING_CONFIGS[config])
    sequence = random_floats(BATCH, LENGTH, FEATURES)
    full = layer(sequence, use_causal_mask=True)

    cache = layer.initial_cache(BATCH, max_length=LENGTH + 2)
    steps = []
    for index in range(LENGTH):
        step, cache = layer(
            sequence[:, index : index + 1],
            cache=cache,
            cache_update_index=index,
            use_causal_mask=True,
        )
        steps.append(step)
    _assert_close(ops.concatenate(steps, axis=1), full)


def test_prefill_then_single_steps_equals_one_causal_call():
    layer = layers.MultiHeadAttention(num_heads=2, use_rotary=True)
    sequence = random_floats(BATCH, LENGTH, FEATURES)
    full = layer(sequence, use_causal_mask=True)

    cache = layer.initial_cache(BATCH, max_length=LENGTH)
    prefill, cache = layer(
        sequence[:, :4], cache=cache, cache_update_index=0, use_causal_mask=True
    )
    steps = [prefill]
    for index in range(4, LENGTH):
        step, cache = layer(
            sequence[:, index : index + 1],
            cache=cache,
            cache_update_index=index,
            use_causal_mask=True,
        )
        steps.append(step)
    _assert_close(ops.concatenate(steps, axis=1), full)


@compiled_backends
def test_a_decoding_step_compiles_under_xla_and_matches_eager():
    layer = layers.MultiHeadAttention(**DECODING_CONFIGS["grouped_query_rotary_alibi"])
    sequence = random_floats(BATCH, 4, FEATURES)
    layer(sequence)
    traces = []

    @compile_function
    def compiled_step(token, cache, index):
        traces.append(index)
        return layer(token, cache=cache, cache_update_index=index, use_causal_mask=True)

    eager_cache = compiled_cache = layer.initial_cache(BATCH, max_length=4)
    for index in range(4):
        token = sequence[:, index : index + 1]
        eager, eager_cache = layer(
            token, cache=eager_cache, cache_update_index=index, use_causal_mask=True
        )
        compiled, compiled_cache = compiled_step(
            token, compiled_cache, ops.convert_to_tensor(index, "int32")
        )
        _assert_close(compiled, eager)
        for compiled_part, eager_part in zip(compiled_cache, eager_cache):
            _assert_close(compiled_part, eager_part)
    assert len(traces) == 1


@pytest.mark.parametrize("use_rotary", [False, True])
def test_precomputed_cross_attention_cache_equals_plain_cross_attention(use_rotary):
    layer = layers.MultiHeadAttention(num_heads=2, use_rotary=use_rotary)
    query = random_floats(BATCH, 3, FEATURES)
    encoder_outputs = random_floats(BATCH, 5, 12, seed=1)
    value_mask = _bool_mask(BATCH, 5)
    expected, expected_scores = layer(
        query, encoder_outputs, value_mask=value_mask, return_attention_scores=True
    )

    cache = layer.compute_key_value_cache(encoder_outputs)
    assert [tuple(part.shape) for part in cache] == [(BATCH, 2, 5, 4)] * 2
    outputs, returned_cache, scores = layer(
        query, cache=cache, value_mask=value_mask, return_attention_scores=True
    )
    _assert_close(outputs, expected)
    _assert_close(scores, expected_scores)
    for returned, computed in zip(returned_cache, cache):
        _assert_close(returned, computed, atol=0)


def test_initial_cache_is_zeros_in_the_compute_dtype():
    layer = layers.MultiHeadAttention(
        num_heads=4, num_key_value_heads=2, dtype="mixed_float16"
    )
    layer.build((None, None, FEATURES))
    for part in layer.initial_cache(3, 7):
        assert tuple(part.shape) == (3, 2, 7, 2)
        assert keras.backend.standardize_dtype(part.dtype) == "float16"
        assert not np.any(to_numpy(part))


def test_symbolic_calls_return_every_output_form():
    layer = layers.MultiHeadAttention(num_heads=2)
    query = keras.Input((1, FEATURES))
    cache = (keras.Input((2, 6, 4)), keras.Input((2, 6, 4)))
    index = keras.Input((), dtype="int32", batch_size=1)
    outputs = layer(query, return_attention_scores=True)
    assert [tuple(t.shape) for t in outputs] == [
        (None, 1, FEATURES),
        (None, 2, 1, 1),
    ]
    outputs = layer(
        query,
        cache=cache,
        cache_update_index=index[0],
        use_causal_mask=True,
        return_attention_scores=True,
    )
    assert [tuple(t.shape) for t in keras.tree.flatten(outputs)] == [
        (None, 1, FEATURES),
        (None, 2, 6, 4),
        (None, 2, 6, 4),
        (None, 2, 1, 6),
    ]
    output, new_cache = layer(query, cache=cache)
    assert tuple(output.shape) == (None, 1, FEATURES)
    assert [tuple(part.shape) for part in new_cache] == [(None, 2, 6, 4)] * 2


# -- masking --------------------------------------------------------------


def test_appended_padding_keys_never_change_the_outputs():
    layer = layers.MultiHeadAttention(num_heads=2, position_bias="relative")
    query = random_floats(BATCH, 3, FEATURES)
    value = random_floats(BATCH, 4, FEATURES, seed=1)
    expected = layer(query, value)

    junk = random_floats(BATCH, 3, FEATURES, seed=2, scale=100.0)
    padded = np.concatenate([value, junk], axis=1)
    value_mask = np.arange(7)[None, :].repeat(BATCH, 0) < 4
    _assert_close(layer(query, padded, value_mask=value_mask), expected)


def test_padded_self_attention_leaves_the_real_positions_unchanged():
    layer = layers.MultiHeadAttention(num_heads=2, use_rotary=True)
    sequence = random_floats(BATCH, 4, FEATURES)
    expected = layer(sequence, use_causal_mask=True)
    padded = np.concatenate([sequence, random_floats(BATCH, 2, FEATURES, seed=3)], 1)
    padding = layers.padding_mask(np.array([[1, 1, 1, 1, 0, 0]] * BATCH))
    outputs = layer(
        padded, query_mask=padding, value_mask=padding, use_causal_mask=True
    )
    _assert_close(outputs[:, :4], expected)


def test_a_fully_masked_batch_gives_finite_outputs_uniform_weights_and_gradients():
    layer = layers.MultiHeadAttention(num_heads=2)
    query = random_floats(BATCH, 3, FEATURES)
    no_keys = np.zeros((BATCH, 3), dtype=bool)
    layer(query)

    def loss(query):
        outputs, scores = layer(query, value_mask=no_keys, return_attention_scores=True)
        return ops.sum(outputs), (outputs, scores)

    (outputs, scores), gradients = value_and_gradients(
        loss, layer.trainable_weights, [query]
    )
    assert np.all(np.isfinite(to_numpy(outputs)))
    _assert_close(scores, np.full((BATCH, 2, 3, 3), 1.0 / 3.0))
    assert all(np.all(np.isfinite(to_numpy(g))) for g in gradients)


def test_an_additive_bias_equals_the_matching_mask():
    layer = layers.MultiHeadAttention(num_heads=2)
    query = random_floats(BATCH, 4, FEATURES)
    attention_mask = _bool_mask(BATCH, 4, 4)
    expected = layer(query, attention_mask=attention_mask)
    # A (batch, 1, Lq, Lk) bias broadcasts over the heads.
    bias = np.where(attention_mask, 0.0, -1e9).astype("float32")[:, None]
    _assert_close(layer(query, attention_bias=bias), expected)


def test_alibi_position_bias_equals_passing_the_alibi_bias_explicitly():
    query = random_floats(BATCH, 4, FEATURES)
    with_alibi = layers.MultiHeadAttention(num_heads=2, position_bias="alibi")
    plain = layers.MultiHeadAttention(num_heads=2)
    with_alibi(query)
    plain(query)
    plain.set_weights(with_alibi.get_weights())
    positions = np.arange(4, dtype="int32")[None]
    bias = layers.AlibiBias(num_heads=2)(positions, positions)
    _assert_close(with_alibi(query), plain(query, attention_bias=bias))


@pytest.mark.parametrize("scale", [1.0, 150.0])
def test_mixed_float16_probabilities_stay_float32_accurate(scale):
    # With identity query/key kernels the logits reach |x|^2 / 4 = 90000 at
    # scale 150: beyond float16's range, so float16 logits would overflow.
    query = random_floats(BATCH, 4, 16, scale=scale)
    reference = layers.MultiHeadAttention(num_heads=1, use_bias=False)
    mixed = layers.MultiHeadAttention(
        num_heads=1, use_bias=False, dtype="mixed_float16"
    )
    reference(query)
    mixed(query)
    for projection in (reference.query_dense, reference.key_dense):
        projection.kernel.assign(np.eye(16, dtype="float32"))
    mixed.set_weights(reference.get_weights())

    _, expected_scores = reference(query, return_attention_scores=True)
    outputs, scores = mixed(query, return_attention_scores=True)
    assert keras.backend.standardize_dtype(outputs.dtype) == "float16"
    assert np.all(np.isfinite(to_numpy(ops.cast(outputs, "float32"))))
    scores = to_numpy(ops.cast(scores, "float32"))
    _assert_close(scores, expected_scores, atol=1e-2)
    np.testing.assert_allclose(scores.sum(-1), 1.0, atol=2e-3)


def test_attention_dropout_changes_outputs_only_in_training():
    layer = layers.MultiHeadAttention(num_heads=2, dropout=0.5)
    without_dropout = layers.MultiHeadAttention(num_heads=2)
    query = random_floats(BATCH, LENGTH, FEATURES)
    layer(query)
    without_dropout(query)
    without_dropout.set_weights(layer.get_weights())
    expected = without_dropout(query)
    _assert_close(layer(query, training=False), expected)
    _assert_close(layer(query), expected)
    assert not np.allclose(to_numpy(layer(query, training=True)), to_numpy(expected))


# -- configuration --------------------------------------------------------


def test_value_and_output_kernel_initializers_default_to_the_kernel_initializer():
    layer = layers.MultiHeadAttention(
        num_heads=2,
        kernel_initializer="zeros",
        output_kernel_initializer="ones",
    )
    layer.build((None, None, FEATURES))
    assert not np.any(to_numpy(layer.value_dense.kernel))
    assert np.all(to_numpy(layer.output_dense.kernel) == 1.0)
    config = layer.get_config()
    assert config["value_kernel_initializer"]["class_name"] == "Zeros"
    revived = layers.MultiHeadAttention.from_config(config)
    assert revived.get_config() == config


def test_sublayers_have_explicit_names_for_lora_paths():
    layer = layers.MultiHeadAttention(
        num_heads=2, use_rotary=True, position_bias="relative"
    )
    layer.build((None, None, FEATURES))
    names = {sublayer.name for sublayer in layer._layers}
    assert {
        "query",
        "key",
        "value",
        "output",
        "attention_dropout",
        "rotary_embedding",
        "position_bias",
    } <= names
    assert all(
        isinstance(dense, layers.LoRADense)
        for dense in (layer.query_dense, layer.key_dense, layer.value_dense)
    )


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"num_heads": 0}, "num_heads, expected a positive integer"),
        ({"num_heads": 2, "key_dim": 0}, "key_dim, expected a positive integer"),
        (
            {"num_heads": 4, "num_key_value_heads": 3},
            "num_heads, expected a multiple of num_key_value_heads=3",
        ),
        ({"num_heads": 2, "dropout": 1.0}, r"dropout, expected a float in the range"),
        ({"num_heads": 2, "position_bias": "rope"}, "position_bias, expected one of"),
        (
            {"num_heads": 2, "rotary_max_wavelength": 0},
            "rotary_max_wavelength, expected a positive finite number",
        ),
        (
            {"num_heads": 2, "position_bias": "relative", "relative_num_buckets": 3},
            "num_buckets",
        ),
    ],
)
def test_bad_arguments_are_rejected(kwargs, match):
    with pytest.raises(ValueError, match=match):
        layers.MultiHeadAttention(**kwargs)


@pytest.mark.parametrize(
    "kwargs, shapes, match",
    [
        ({"num_heads": 3}, ((2, 4, 8),), "cannot infer key_dim"),
        ({"num_heads": 2}, ((4, 8),), "expected query of rank 3"),
        ({"num_heads": 2}, ((2, 4, 8), (2, 5, 8), (2, 6, 8)), "same length"),
        ({"num_heads": 2}, ((2, 4, None),), "last dimension of query"),
        # key_dim inferred as 6 / 2 = 3.
        ({"num_heads": 2, "use_rotary": True}, ((2, 4, 6),), "odd"),
    ],
)
def test_bad_input_shapes_are_rejected_at_build(kwargs, shapes, match):
    layer = layers.MultiHeadAttention(**kwargs)
    with pytest.raises(ValueError, match=match):
        layer.build(*shapes)


def test_an_odd_key_dim_with_rotary_is_rejected_at_construction():
    with pytest.raises(ValueError, match="key_dim, expected an even number"):
        layers.MultiHeadAttention(num_heads=2, key_dim=3, use_rotary=True)


def _built_layer(**kwargs):
    layer = layers.MultiHeadAttention(num_heads=2, **kwargs)
    layer.build((None, None, FEATURES))
    return layer


QUERY = random_floats(BATCH, 3, FEATURES)


@pytest.mark.parametrize(
    "call_kwargs, match",
    [
        ({"cache": np.zeros((BATCH, 2, 2, 5, 4), "float32")}, "expected a cache"),
        ({"cache": (np.zeros((BATCH, 3, 5, 4), "float32"),) * 2}, "expected a cache"),
        ({"cache": np.zeros((BATCH, 5, 2, 4), "float32")}, "expected a cache"),
        ({"cache_update_index": 0}, "but no cache"),
        (
            {
                "cache": (np.zeros((BATCH, 2, 4, 4), "float32"),) * 2,
                "cache_update_index": 2,
            },
            "cannot write 3 positions",
        ),
        ({"value_mask": np.ones((BATCH, 4), bool)}, "expected value_mask of shape"),
        ({"query_mask": np.ones((BATCH, 3, 1), bool)}, "expected query_mask"),
        ({"attention_mask": np.ones((BATCH, 3, 4), bool)}, "expected attention_mask"),
        (
            {"attention_bias": np.zeros((BATCH, 3, 3, 3), "float32")},
            "expected attention_bias of shape broadcastable",
        ),
    ],
)
def test_bad_call_arguments_are_rejected(call_kwargs, match):
    with pytest.raises(ValueError, match=match):
        _built_layer()(QUERY, **call_kwargs)


def test_an_eager_tensor_cache_index_past_the_cache_is_rejected_on_every_backend():
    # JAX's dynamic_update_slice would move the write back inside the cache.
    cache = (np.zeros((BATCH, 2, 4, 4), "float32"),) * 2
    with pytest.raises(ValueError, match="cannot write 3 positions at cache_update_"):
        _built_layer()(
            QUERY, cache=cache, cache_update_index=ops.convert_to_tensor(2, "int32")
        )


def test_keys_and_values_are_cached_with_their_own_head_sizes():
    keys, values = _built_layer(value_dim=3).initial_cache(BATCH, 4)
    assert (tuple(keys.shape), tuple(values.shape)) == (
        (BATCH, 2, 4, 4),
        (BATCH, 2, 4, 3),
    )


def test_caches_need_a_built_layer():
    layer = layers.MultiHeadAttention(num_heads=2)
    with pytest.raises(ValueError, match="must be built"):
        layer.compute_key_value_cache(QUERY)


def test_query_key_and_value_kernels_start_independent():
    attention = layers.MultiHeadAttention(num_heads=2)
    attention.build((None, 4, 8))
    kernels = [
        to_numpy(dense.kernel)
        for dense in (attention.query_dense, attention.key_dense, attention.value_dense)
    ]
    assert not np.allclose(kernels[0], kernels[1])
    assert not np.allclose(kernels[1], kernels[2])


def test_query_and_value_of_different_batch_sizes_are_refused_at_build():
    attention = layers.MultiHeadAttention(num_heads=2, key_dim=4)
    with pytest.raises(ValueError, match=r"same batch size, but received query shape \(1, 3, 8\), value shape \(2, 4, 8\)"):
        attention(random_floats(1, 3, 8), random_floats(2, 4, 8))


def test_a_key_of_another_batch_size_is_refused_at_build():
    attention = layers.MultiHeadAttention(num_heads=2, key_dim=4)
    with pytest.raises(ValueError, match=r"key shape \(3, 4, 8\)"):
        attention(random_floats(2, 3, 8), random_floats(2, 4, 8), random_floats(3, 4, 8))


def test_a_batch_size_mismatch_after_build_is_refused_at_call():
    attention = layers.MultiHeadAttention(num_heads=2, key_dim=4)
    attention(random_floats(2, 3, 8), random_floats(2, 4, 8))
    with pytest.raises(ValueError, match="same batch size"):
        attention(random_floats(2, 3, 8), random_floats(1, 4, 8))


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda layer: layer(random_floats(1, 3, 6)), r"built for query with 8 features, but received query of shape \(1, 3, 6\)"),
        (lambda layer: layer(random_floats(1, 3, 8), random_floats(1, 3, 6)), r"built for value with 8 features, but received value of shape \(1, 3, 6\)"),
        (lambda layer: layer(random_floats(1, 3, 8), random_floats(1, 3, 8), random_floats(1, 3, 5)), r"built for key with 8 features"),
        (lambda layer: layer(random_floats(3, 8)), r"expected query of rank 3, but received a tensor of shape \(3, 8\)"),
    ],
)  # fmt: skip
def test_inputs_unlike_those_built_for_are_refused_naming_their_shapes(call, message):
    attention = layers.MultiHeadAttention(num_heads=2, key_dim=4)
    attention(random_floats(1, 3, 8))
    with pytest.raises(ValueError, match=message):
        call(attention)


def test_value_and_key_may_be_narrower_than_the_query_when_built_so():
    attention = layers.MultiHeadAttention(num_heads=2, key_dim=4)
    output = attention(random_floats(2, 3, 8), random_floats(2, 5, 6), random_floats(2, 5, 4))
    assert tuple(output.shape) == (2, 3, 8)


@pytest.mark.parametrize(
    "compiled", [False, pytest.param(True, marks=compiled_backends)]
)
def test_an_empty_batch_attends_to_an_empty_result(compiled):
    attention = layers.MultiHeadAttention(num_heads=2, key_dim=4)
    attention(random_floats(1, 3, 8))

    def attend(query, value_mask):
        return attention(query, value_mask=value_mask, return_attention_scores=True)

    call = compile_function(attend) if compiled else attend
    output, scores = call(random_floats(0, 3, 8), np.ones((0, 3), bool))
    assert tuple(output.shape) == (0, 3, 8) and tuple(scores.shape) == (0, 2, 3, 3)
