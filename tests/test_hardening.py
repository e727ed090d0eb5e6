"""Bad input thrown at the public API: each case must be refused early with a
`ValueError` (or the documented error) whose message names the argument or
file, or give a correct finite result. Never a silent wrong answer, a NaN, a
hang or a lost file.

The parametrized tables are the library's own bad-input battery; the
`hypothesis` tests at the end draw further arguments, shapes and ids.
"""

import dataclasses
import io
import json
import re
import zipfile

import hypothesis
import hypothesis.extra.numpy
import keras
import numpy as np
import pytest
import tensorflow as tf
from hypothesis import strategies as st

from keras_transformer import decoding, layers, models, validation
from keras_transformer.translation import export

VOCAB = dict(source_vocabulary_size=10, target_vocabulary_size=10)
TINY = dict(
    **VOCAB,
    num_encoder_layers=1,
    num_decoder_layers=1,
    hidden_dim=8,
    num_heads=2,
    intermediate_dim=16,
    dropout=0.0,
    max_source_length=6,
    max_target_length=6,
)
FAST = hypothesis.settings(max_examples=15, deadline=None, derandomize=True)


def refused(call, name, error=ValueError):
    """Asserts `call()` raises `error` with a message naming `name`."""
    with pytest.raises(error) as info:
        call()
    assert re.search(re.escape(str(name)), str(info.value)), str(info.value)
    return info.value


# --- TransformerConfig: every field checked at construction -----------------

BAD_CONFIG_FIELDS = [
    ("source_vocabulary_size", 0),
    ("source_vocabulary_size", 2.5),
    ("source_vocabulary_size", "10"),
    ("target_vocabulary_size", -1),
    ("target_vocabulary_size", None),
    ("num_encoder_layers", 0),
    ("num_encoder_layers", True),
    ("num_decoder_layers", 1.0),
    ("hidden_dim", 0),
    ("hidden_dim", 10),  # not divisible by the 4 heads
    ("num_heads", 0),
    ("num_heads", 3),  # 128 is not a multiple of 3
    ("num_key_value_heads", 3),  # does not divide 4 heads
    ("num_key_value_heads", 0),
    ("num_key_value_heads", "2"),
    ("intermediate_dim", -4),
    ("activation", "nope"),
    ("activation", None),
    ("activation", 3),
    ("dropout", 1.0),
    ("dropout", -0.1),
    ("dropout", float("nan")),
    ("dropout", "0.1"),
    ("attention_dropout", 1.5),
    ("feed_forward_dropout", -1e-9),
    ("norm_placement", "middle"),
    ("norm_placement", None),
    ("norm_type", "batch_norm"),
    ("layer_norm_epsilon", 0),
    ("layer_norm_epsilon", -1e-5),
    ("layer_norm_epsilon", float("inf")),
    ("layer_norm_epsilon", float("nan")),
    ("position_encoding", "absolute"),
    ("max_source_length", 0),
    ("max_target_length", 1.5),
    ("share_embeddings", "False"),
    ("share_embeddings", 1),
    ("tie_output_projection", "False"),
    ("tie_output_projection", None),
    ("remat", "yes"),
    ("padding_id", -1),
    ("padding_id", 10),  # outside the vocabulary
]


@pytest.mark.parametrize("field, value", BAD_CONFIG_FIELDS)
def test_a_config_field_out_of_its_domain_is_refused_under_its_own_name(field, value):
    refused(lambda: models.TransformerConfig(**{**VOCAB, field: value}), field)


def test_an_odd_head_size_with_rotary_is_refused_at_construction():
    refused(
        lambda: models.TransformerConfig(
            **VOCAB, hidden_dim=12, num_heads=4, position_encoding="rotary"
        ),
        "hidden_dim",
    )


def test_a_config_dict_missing_required_fields_names_them():
    error = refused(lambda: models.TransformerConfig.from_dict({"hidden_dim": 8}), "config")
    assert "source_vocabulary_size" in str(error)
    assert "target_vocabulary_size" in str(error)


@pytest.mark.parametrize("record", [None, [1, 2], "config"])
def test_a_config_that_is_not_a_dict_is_refused(record):
    refused(lambda: models.TransformerConfig.from_dict(record), "config")


def test_numpy_scalars_are_accepted_and_stored_as_python_values():
    config = models.TransformerConfig(
        source_vocabulary_size=np.int64(10),
        target_vocabulary_size=10,
        share_embeddings=np.bool_(False),
    )
    assert type(config.source_vocabulary_size) is int
    assert config.share_embeddings is False
    assert models.TransformerConfig.from_dict(config.to_dict()) == config


@pytest.mark.parametrize(
    "check, value",
    [
        (validation.check_bool, "False"),
        (validation.check_bool, 0),
        (validation.check_bool, None),
        (validation.check_string, ""),
        (validation.check_string, b"relu"),
        (lambda name, value: validation.check_rate(name, value, allow_none=False), None),
    ],
)
def test_validation_helpers_are_strict_about_types(check, value):
    refused(lambda: check("argument_x", value), "argument_x")


@hypothesis.settings(max_examples=8, deadline=None, derandomize=True)
@hypothesis.given(
    hidden_dim=st.integers(1, 64),
    num_heads=st.integers(1, 8),
    num_key_value_heads=st.one_of(st.none(), st.integers(1, 8)),
    position_encoding=st.sampled_from(models.transformer.POSITION_ENCODINGS),
)
def test_a_config_either_refuses_the_head_layout_or_builds_a_model(
    hidden_dim, num_heads, num_key_value_heads, position_encoding
):
    fields = dict(
        TINY,
        hidden_dim=hidden_dim,
        num_heads=num_heads,
        num_key_value_heads=num_key_value_heads,
        position_encoding=position_encoding,
    )
    valid = (
        hidden_dim % num_heads == 0
        and (num_key_value_heads is None or num_heads % num_key_value_heads == 0)
        and not (position_encoding == "rotary" and (hidden_dim // num_heads) % 2)
    )
    if not valid:
        with pytest.raises(ValueError, match="Received an invalid value for argument"):
            models.TransformerConfig(**fields)
        return
    config = models.TransformerConfig(**fields)
    model = models.build_transformer(config)
    logits = model(
        {"source_ids": np.array([[4, 5, 0]]), "target_ids": np.array([[2, 6]])}
    )
    assert np.isfinite(np.asarray(logits)).all()


# --- Token ids: range and dtype checked where ids enter ---------------------


def tiny_embedding(**overrides):
    return layers.TokenAndPositionEmbedding(
        **{"vocabulary_size": 10, "sequence_length": 8, "embedding_dim": 4, **overrides}
    )


BAD_IDS = [
    ([[1, -1]], "token id -1"),
    ([[-5, 3]], "token id -5"),
    ([[1, 10]], "token id 10"),
    ([[1, 2**30]], f"token id {2**30}"),
]


@pytest.mark.parametrize("position_encoding", ["learned", "sinusoidal", "none"])
@pytest.mark.parametrize("ids, offending", BAD_IDS)
def test_an_out_of_range_id_names_the_vocabulary_and_the_value_eagerly(
    position_encoding, ids, offending
):
    embedding = tiny_embedding(position_encoding=position_encoding)
    error = refused(lambda: embedding(np.array(ids, "int32")), "vocabulary_size=10")
    assert offending in str(error)


@pytest.mark.parametrize("dtype", ["float32", "float64", "float16", "bool"])
def test_ids_of_a_non_integer_dtype_are_refused_not_truncated(dtype):
    embedding = tiny_embedding()
    refused(lambda: embedding(np.array([[1.7, 2.0]]).astype(dtype)), "inputs")


def test_float_ids_are_refused_symbolically():
    embedding = tiny_embedding()
    refused(lambda: embedding(keras.Input((None,), dtype="float32")), "inputs")


@pytest.mark.parametrize("ids", [[[1, -1]], [[1, 12]]])
def test_an_out_of_range_id_inside_a_compiled_graph_raises_invalid_argument(ids):
    embedding = tiny_embedding()
    run = tf.function(lambda x: embedding(x))
    refused(
        lambda: run(tf.constant(ids, "int32")),
        "vocabulary_size=10",
        error=tf.errors.InvalidArgumentError,
    )


def test_an_out_of_range_id_under_xla_poisons_the_batch_with_nan_not_wrong_numbers():
    embedding = tiny_embedding()
    run = tf.function(lambda x: embedding(x), jit_compile=True)
    assert np.isnan(run(tf.constant([[1, 12]], "int32")).numpy()).all()
    assert np.isfinite(run(tf.constant([[1, 9]], "int32")).numpy()).all()


def test_the_in_graph_check_leaves_valid_embeddings_unchanged():
    embedding = tiny_embedding()
    ids = np.array([[0, 3, 9]], "int32")
    eager = np.asarray(embedding(ids))
    graph = tf.function(lambda x: embedding(x))(tf.constant(ids)).numpy()
    np.testing.assert_allclose(graph, eager, rtol=1e-6)


def any_length_graph(embedding, jit_compile=False):
    """The embedding in a graph taking ids of any length, as an export does."""
    return tf.function(
        lambda ids, start: embedding(ids, start_index=start),
        input_signature=[tf.TensorSpec([None, None], tf.int32), tf.TensorSpec([], tf.int32)],
        jit_compile=jit_compile,
    )


@pytest.mark.parametrize("position_encoding", ["learned", "sinusoidal"])
@pytest.mark.parametrize("length, start", [(9, 0), (4, 5), (2, -1)])
def test_positions_past_the_maximum_in_a_graph_of_any_length_raise_naming_it(
    position_encoding, length, start
):
    # The sinusoidal table has no end of its own: without this check the
    # graph would accept a source longer than max_source_length.
    run = any_length_graph(tiny_embedding(position_encoding=position_encoding))
    refused(
        lambda: run(tf.ones((1, length), tf.int32), tf.constant(start)),
        "maximum sequence_length=8",
        error=tf.errors.InvalidArgumentError,
    )


@pytest.mark.parametrize("position_encoding", ["learned", "sinusoidal"])
def test_positions_that_fit_in_a_graph_of_any_length_embed_as_eagerly(
    position_encoding,
):
    embedding = tiny_embedding(position_encoding=position_encoding)
    ids = np.array([[1, 3, 9]], "int32")
    eager = np.asarray(embedding(ids, start_index=5))
    graph = any_length_graph(embedding)(tf.constant(ids), tf.constant(5)).numpy()
    np.testing.assert_allclose(graph, eager, rtol=1e-6)


def test_positions_past_the_maximum_under_xla_poison_the_batch_with_nan():
    run = any_length_graph(tiny_embedding(position_encoding="sinusoidal"), True)
    assert np.isnan(run(tf.ones((1, 4), tf.int32), tf.constant(5)).numpy()).all()
    assert np.isfinite(run(tf.ones((1, 4), tf.int32), tf.constant(4)).numpy()).all()


@pytest.fixture(scope="module")
def tiny_model():
    return models.build_transformer(models.TransformerConfig(**TINY))


@pytest.mark.parametrize(
    "source, target, name",
    [
        ([[1, -1]], [[2, 3]], "vocabulary_size=10"),
        ([[1, 10]], [[2, 3]], "vocabulary_size=10"),
        ([[1, 2]], [[2, -3]], "vocabulary_size=10"),
        ([[1, 2]], [[2, 30]], "vocabulary_size=10"),
        ([[1.5, 2]], [[2, 3]], "source_ids"),
        ([[1, 2]], [[2.0, 3.5]], "target_ids"),
    ],
)
def test_the_model_refuses_bad_ids_in_either_input(tiny_model, source, target, name):
    refused(
        lambda: tiny_model({"source_ids": np.array(source), "target_ids": np.array(target)}),
        name,
    )


def test_predict_refuses_an_out_of_range_id_with_the_vocabulary_named(tiny_model):
    refused(
        lambda: tiny_model.predict(
            {"source_ids": np.array([[1, 11]]), "target_ids": np.array([[2, 3]])},
            verbose=0,
        ),
        "vocabulary_size=10",
        error=tf.errors.InvalidArgumentError,
    )


@FAST
@hypothesis.given(
    ids=hypothesis.extra.numpy.arrays(
        np.int32,
        st.tuples(st.integers(1, 3), st.integers(1, 8)),
        elements=st.integers(-20, 30),
    )
)
def test_any_id_batch_is_embedded_finitely_or_refused_naming_the_vocabulary(ids):
    embedding = tiny_embedding()
    if ids.min() < 0 or ids.max() >= 10:
        refused(lambda: embedding(ids), "vocabulary_size=10")
    else:
        assert np.isfinite(np.asarray(embedding(ids))).all()


# --- Attention: masked positions and huge activations -----------------------


def test_a_nan_at_a_masked_key_never_reaches_the_unmasked_rows():
    attention = layers.MultiHeadAttention(num_heads=2, key_dim=4)
    query = np.random.default_rng(0).random((2, 4, 8)).astype("float32")
    value = query.copy()
    value[:, 3] = np.nan
    value[1, 2] = np.inf
    mask = np.array([[True, True, True, False], [True, True, False, False]])
    clean = query.copy()
    clean[:, 3] = 0.0
    clean[1, 2] = 0.0
    poisoned = np.asarray(attention(query, value, value_mask=mask))
    expected = np.asarray(attention(query, clean, value_mask=mask))
    np.testing.assert_allclose(poisoned, expected, rtol=1e-6)


@pytest.mark.parametrize("magnitude", [1e19, 1e25, 1e30, 1e34])
def test_finite_but_huge_activations_give_finite_attention(magnitude):
    attention = layers.MultiHeadAttention(num_heads=2, key_dim=4)
    signs = np.where(np.random.default_rng(1).random((1, 3, 8)) > 0.5, 1.0, -1.0)
    inputs = (signs * magnitude).astype("float32")
    _, scores = attention(inputs, inputs, return_attention_scores=True)
    scores = np.asarray(scores)
    assert np.isfinite(scores).all()
    np.testing.assert_allclose(scores.sum(-1), 1.0, rtol=1e-5)


def test_huge_logits_softmax_to_the_largest_key_like_numpy():
    """Against the NumPy formula with the row maximum subtracted first."""
    attention = layers.MultiHeadAttention(num_heads=1, key_dim=2, use_bias=False)
    attention.build((1, 2, 2))
    for kernel in (attention.query_dense, attention.key_dense):
        kernel.kernel.assign(np.eye(2, dtype="float32").reshape(kernel.kernel.shape))
    inputs = np.array([[[1e20, 0.0], [-1e20, 0.0]]], "float32")
    _, scores = attention(inputs, inputs, return_attention_scores=True)
    logits = np.array([[1e40, -1e40], [-1e40, 1e40]]) / np.sqrt(2)
    logits = np.clip(logits, -1e30, 1e30)
    expected = np.exp(logits - logits.max(-1, keepdims=True))
    expected /= expected.sum(-1, keepdims=True)
    np.testing.assert_allclose(np.asarray(scores)[0, 0], expected, atol=1e-6)


@FAST
@hypothesis.given(
    scale=st.floats(1e-3, 1e30),
    masked=st.integers(0, 3),
    poison=st.sampled_from([np.nan, np.inf, -np.inf, 1e38]),
)
def test_attention_is_finite_for_finite_visible_inputs_whatever_hides_behind_the_mask(
    scale, masked, poison
):
    attention = layers.MultiHeadAttention(num_heads=2, key_dim=4)
    query = (np.random.default_rng(2).standard_normal((1, 4, 8)) * scale).astype("float32")
    value = query.copy()
    value[0, masked] = poison
    mask = np.arange(4)[None] != masked
    assert np.isfinite(np.asarray(attention(query, value, value_mask=mask))).all()


# --- Decoding entry points ---------------------------------------------------


@pytest.mark.parametrize(
    "source, message",
    [
        (np.array([[4, -1, 0]]), "source_ids with token id -1"),
        (np.array([[4, 10, 0]]), "source_ids with token id 10"),
        (np.array([[4, 2**33 + 4, 0]], "int64"), f"token id {2**33 + 4}"),
        (np.array([[4.0, 5.0]]), "source_ids"),
    ],
)
@pytest.mark.parametrize("decode", ["greedy", "beam"])
def test_decoders_check_source_ids_against_the_vocabulary(
    tiny_model, source, message, decode
):
    if decode == "greedy":
        call = lambda: decoding.greedy_decode(tiny_model, source, 3)
    else:
        call = lambda: decoding.beam_search_decode(tiny_model, source, 3, beam_size=2)
    refused(call, message)


@pytest.mark.parametrize(
    "method, options, name",
    [
        ("sample", {"temperature": -1.0}, "temperature"),
        ("sample", {"temperature": float("nan")}, "temperature"),
        ("sample", {"temperature": float("inf")}, "temperature"),
        ("sample", {"top_k": 2.5}, "top_k"),
        ("sample", {"top_k": True}, "top_k"),
        ("sample", {"top_p": 0.0}, "top_p"),
        ("sample", {"top_p": float("nan")}, "top_p"),
        ("beam", {"beam_size": -2}, "beam_size"),
        ("beam", {"beam_size": "4"}, "beam_size"),
        ("beam", {"length_penalty": float("inf")}, "length_penalty"),
        ("beam", {"length_penalty": "0.6"}, "length_penalty"),
        ("beam", {"num_results": 0}, "num_results"),
        ("beam", {"return_scores": "False"}, "return_scores"),
        ("greedy", {"temperature": 1.0}, "temperature"),
        (None, {}, "method"),
        ("Greedy", {}, "method"),
    ],
)
def test_samplers_refuse_bad_options_naming_them(method, options, name):
    refused(lambda: decoding.get_sampler(method, **options), name)


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"max_length": 0}, "max_length"),
        ({"max_length": 2.0}, "max_length"),
        ({"max_length": 99}, "max_length"),
        ({"bos_id": -1}, "bos_id"),
        ({"bos_id": 10}, "bos_id"),
        ({"eos_id": 10}, "eos_id"),
        ({"eos_id": 0}, "eos_id"),
        ({"source_ids": np.array([1, 2])}, "source_ids"),
        ({"source_ids": np.zeros((1, 2, 3), "int32")}, "source_ids"),
    ],
)
def test_greedy_decode_refuses_bad_arguments_naming_them(tiny_model, kwargs, name):
    arguments = {"source_ids": np.array([[4, 5]]), "max_length": 3, **kwargs}
    refused(lambda: decoding.greedy_decode(tiny_model, **arguments), name)


def test_decoding_a_foreign_model_names_the_model_argument():
    refused(lambda: decoding.greedy_decode(object(), np.array([[4]]), 2), "model")


# --- Files: corrupt .keras archives and export destinations -----------------


@pytest.fixture(scope="module")
def saved_model_bytes(tmp_path_factory, tiny_model):
    path = tmp_path_factory.mktemp("good") / "model.keras"
    tiny_model.save(path)
    return path.read_bytes()


def rewrite_member(blob, member, content):
    """`blob` (a zip archive) with `member` replaced, or removed when None."""
    source = zipfile.ZipFile(io.BytesIO(blob))
    output = io.BytesIO()
    with zipfile.ZipFile(output, "w") as archive:
        for name in source.namelist():
            if name != member:
                archive.writestr(name, source.read(name))
            elif content is not None:
                archive.writestr(name, content)
    return output.getvalue()


def bad_config(blob):
    config = json.loads(zipfile.ZipFile(io.BytesIO(blob)).read("config.json"))
    config["config"]["config"]["hidden_dim"] = 9  # not a multiple of 2 heads
    return rewrite_member(blob, "config.json", json.dumps(config))


CORRUPTIONS = {
    "empty": lambda blob: b"",
    "garbage": lambda blob: b"not a zip archive at all",
    "truncated": lambda blob: blob[: len(blob) // 2],
    "last byte cut": lambda blob: blob[:-1],
    "no config": lambda blob: rewrite_member(blob, "config.json", None),
    "no weights": lambda blob: rewrite_member(blob, "model.weights.h5", None),
    "config not json": lambda blob: rewrite_member(blob, "config.json", "{oops"),
    "config not an object": lambda blob: rewrite_member(blob, "config.json", "[1, 2]"),
    "weights garbage": lambda blob: rewrite_member(blob, "model.weights.h5", b"junk"),
    "weights truncated": lambda blob: rewrite_member(
        blob,
        "model.weights.h5",
        zipfile.ZipFile(io.BytesIO(blob)).read("model.weights.h5")[:300],
    ),
    "invalid model config": bad_config,
}


@pytest.mark.parametrize("corruption", sorted(CORRUPTIONS))
def test_a_corrupt_keras_file_raises_a_value_error_naming_it_and_is_left_alone(
    saved_model_bytes, tmp_path, corruption
):
    path = tmp_path / "broken.keras"
    content = CORRUPTIONS[corruption](saved_model_bytes)
    path.write_bytes(content)
    refused(lambda: models.load_model(path), "broken.keras")
    assert path.read_bytes() == content


def test_the_intact_file_loads_and_computes_the_same_logits(
    saved_model_bytes, tmp_path, tiny_model
):
    path = tmp_path / "intact.keras"
    path.write_bytes(saved_model_bytes)
    inputs = {"source_ids": np.array([[4, 5, 0]]), "target_ids": np.array([[2, 6]])}
    np.testing.assert_allclose(
        np.asarray(models.load_model(path)(inputs)), np.asarray(tiny_model(inputs))
    )


@pytest.mark.parametrize(
    "make, name",
    [
        (lambda folder: folder / "missing.keras", "missing.keras"),
        (lambda folder: folder, "filepath"),
        (lambda folder: None, "filepath"),
        (lambda folder: 42, "filepath"),
    ],
)
def test_load_model_refuses_what_is_not_a_keras_file(tmp_path, make, name):
    refused(lambda: models.load_model(make(tmp_path)), name)


def test_a_folder_named_like_a_keras_file_is_refused_by_name(tmp_path):
    (tmp_path / "folder.keras").mkdir()
    refused(lambda: models.load_model(tmp_path / "folder.keras"), "folder.keras")


@pytest.fixture(scope="module")
def tiny_translator():
    from keras_transformer.translation import Translator

    keras.utils.set_random_seed(3)
    return Translator.from_texts(
        ["5 March 2021", "17 May 2020"],
        ["2021-03-05", "2020-05-17"],
        tokenizer="character",
        num_encoder_layers=1,
        num_decoder_layers=1,
        hidden_dim=8,
        num_heads=2,
        intermediate_dim=16,
        dropout=0.0,
    )


def test_export_under_a_parent_that_is_a_file_fails_before_tracing(
    tiny_translator, tmp_path, monkeypatch
):
    (tmp_path / "file").write_text("not a folder")

    def traced(*args, **kwargs):
        raise AssertionError("the endpoints were traced")

    monkeypatch.setattr(export, "_build_archive", traced)
    refused(
        lambda: export.export_translator(
            tiny_translator,
            tiny_translator.source_tokenizer,
            tiny_translator.target_tokenizer,
            tmp_path / "file" / "export",
        ),
        "file",
    )
    refused(lambda: tiny_translator.export(tmp_path / "file" / "base"), "file")
    assert (tmp_path / "file").read_text() == "not a folder"


def test_export_into_an_unwritable_parent_fails_before_tracing(
    tiny_translator, tmp_path, monkeypatch
):
    def unwritable(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    def traced(*args, **kwargs):
        raise AssertionError("the endpoints were traced")

    from keras_transformer import _files

    monkeypatch.setattr(_files.tempfile, "mkdtemp", unwritable)
    monkeypatch.setattr(export, "_build_archive", traced)
    refused(lambda: tiny_translator.export(tmp_path / "base"), "Permission denied")


@pytest.mark.parametrize(
    "source, name",
    [
        ([[4, -1]], "token id -1"),
        ([[4, 10_000]], "token id 10000"),
        ([[4.0, 5.0]], "source_ids"),
        (np.array([[4, 2**40]], "int64"), f"token id {2**40}"),
    ],
)
def test_translator_generate_checks_source_ids_before_decoding(
    tiny_translator, source, name
):
    refused(lambda: tiny_translator.generate(np.array(source)), name)


# --- Layer constructors: a bool is a bool -----------------------------------

LAYER_BOOLS = [
    (lambda v: layers.MultiHeadAttention(2, 4, use_bias=v), "use_bias"),
    (lambda v: layers.MultiHeadAttention(2, 4, use_rotary=v), "use_rotary"),
    (
        lambda v: layers.MultiHeadAttention(
            2, 4, position_bias="relative", relative_bidirectional=v
        ),
        "relative_bidirectional",
    ),
    (lambda v: layers.TokenAndPositionEmbedding(10, 4, 4, mask_zero=v), "mask_zero"),
    (
        lambda v: layers.TokenAndPositionEmbedding(10, 4, 4, scale_embedding=v),
        "scale_embedding",
    ),
    (lambda v: layers.FeedForward(8, use_bias=v), "use_bias"),
    (lambda v: layers.TransformerEncoderBlock(8, 2, remat=v), "remat"),
    (lambda v: layers.TransformerEncoderBlock(8, 2, use_rotary=v), "use_rotary"),
    (
        lambda v: layers.TransformerDecoderBlock(8, 2, use_cross_attention=v),
        "use_cross_attention",
    ),
    (lambda v: layers.RelativePositionBias(2, bidirectional=v), "bidirectional"),
    (lambda v: layers.LoRADense(4, use_bias=v), "use_bias"),
]


@pytest.mark.parametrize("value", ["False", 0, None])
@pytest.mark.parametrize("make, name", LAYER_BOOLS)
def test_layer_flags_refuse_anything_but_a_bool(make, name, value):
    refused(lambda: make(value), f"{name}={value!r}")


@pytest.mark.parametrize("make, name", LAYER_BOOLS)
def test_layer_flags_accept_numpy_bools(make, name):
    make(np.bool_(False))


@pytest.mark.parametrize("key_dim", [1, 3, 5])
def test_rotary_attention_refuses_an_odd_key_dim_at_construction(key_dim):
    refused(
        lambda: layers.MultiHeadAttention(2, key_dim, use_rotary=True), "key_dim"
    )


# --- Second round: the Translator, recipes and adapters ---------------------


@FAST
@hypothesis.given(
    hidden_dim=st.integers(1, 48),
    num_heads=st.integers(1, 6),
    dropout=st.floats(-0.5, 1.5),
)
def test_a_recipe_refuses_exactly_the_model_fields_a_config_refuses(
    hidden_dim, num_heads, dropout
):
    from keras_transformer.translation import recipes

    model = dict(hidden_dim=hidden_dim, num_heads=num_heads, dropout=dropout)
    try:
        models.TransformerConfig(**VOCAB, **model)
    except ValueError as error:
        with pytest.raises(ValueError) as info:
            dataclasses.replace(recipes.DATE_TASK, model=model)
        assert str(info.value) == str(error)
    else:
        assert dict(dataclasses.replace(recipes.DATE_TASK, model=model).model) == model


CONFIG_FIELDS = [field.name for field in dataclasses.fields(models.TransformerConfig)]


@FAST
@hypothesis.given(field=st.sampled_from(CONFIG_FIELDS), data=st.data())
def test_a_config_field_with_one_letter_dropped_is_refused_suggesting_it(field, data):
    cut = data.draw(st.integers(0, len(field) - 1))
    misspelt = field[:cut] + field[cut + 1 :]
    hypothesis.assume(misspelt not in CONFIG_FIELDS)
    error = refused(lambda: models.TransformerConfig(**VOCAB, **{misspelt: 1}), misspelt)
    assert f"Did you mean {field!r}?" in str(error)
    assert "Expected one of " + ", ".join(sorted(CONFIG_FIELDS)) in str(error)


@FAST
@hypothesis.given(
    shape=st.lists(st.integers(0, 3), min_size=1, max_size=3),
    method=st.sampled_from(["greedy", "beam"]),
)
def test_generate_refuses_any_shape_but_a_matrix_and_decodes_any_matrix(
    tiny_translator, shape, method
):
    ids = np.full(shape, 4, "int32")
    if len(shape) != 2:
        refused(lambda: tiny_translator.generate(ids, method=method), "source_ids")
        return
    result = tiny_translator.generate(ids, method=method, max_length=3)
    assert result.shape == (shape[0], 3)


@FAST
@hypothesis.given(
    units=st.integers(1, 6), input_dim=st.integers(1, 6), rank=st.integers(1, 8)
)
def test_a_lora_rank_is_refused_exactly_when_it_exceeds_the_kernels(
    units, input_dim, rank
):
    layer = layers.LoRADense(units, rank=rank)
    if rank > min(units, input_dim):
        refused(lambda: layer.build((None, input_dim)), f"rank={rank}")
    else:
        layer.build((None, input_dim))
        assert layer.lora_kernel_a.shape == (input_dim, rank)


@FAST
@hypothesis.given(query_batch=st.integers(0, 3), value_batch=st.integers(0, 3))
def test_attention_refuses_mismatched_batches_and_attends_any_equal_ones(
    query_batch, value_batch
):
    attention = layers.MultiHeadAttention(num_heads=2, key_dim=4)
    query = np.ones((query_batch, 3, 8), "float32")
    value = np.ones((value_batch, 2, 8), "float32")
    if query_batch != value_batch:
        refused(lambda: attention(query, value), "same batch size")
    else:
        output = np.asarray(attention(query, value))
        assert output.shape == (query_batch, 3, 8) and np.isfinite(output).all()


@FAST
@hypothesis.given(
    epochs=st.one_of(st.integers(max_value=0), st.floats(allow_nan=True), st.text(max_size=3))
)
def test_fit_refuses_any_epochs_but_a_positive_integer_or_none(tiny_translator, epochs):
    refused(
        lambda: tiny_translator.fit(["5 May"], ["2020-05-05"], epochs=epochs, verbose=0),
        "argument epochs",
    )


@FAST
@hypothesis.given(
    minutes=st.one_of(
        st.floats(max_value=0.0),
        st.just(float("nan")),
        st.just(float("inf")),
        st.text(max_size=3),
    )
)
def test_fit_refuses_any_minutes_but_a_positive_finite_number(tiny_translator, minutes):
    refused(
        lambda: tiny_translator.fit(["5 May"], ["2020-05-05"], minutes=minutes, verbose=0),
        "argument minutes",
    )


def test_fit_before_compile_is_refused_saying_to_compile(tiny_translator):
    # epochs=None is one epoch (or, with minutes, as many as the budget
    # holds); uncompiled, the translator has no optimizer to train with.
    refused(
        lambda: tiny_translator.fit(["5 May"], ["2020-05-05"], epochs=None, verbose=0),
        "Call compile() before fit",
    )


@FAST
@hypothesis.given(warmup_steps=st.integers(0, 50), total_steps=st.integers(1, 50))
def test_compile_refuses_a_warm_up_past_the_run_and_peaks_at_its_end_otherwise(
    tiny_translator, warmup_steps, total_steps
):
    if warmup_steps > total_steps:
        refused(
            lambda: tiny_translator.compile(warmup_steps=warmup_steps, total_steps=total_steps),
            f"total_steps={total_steps}",
        )
        return
    tiny_translator.compile(learning_rate=1e-2, warmup_steps=warmup_steps, total_steps=total_steps)
    schedule = keras.saving.deserialize_keras_object(
        tiny_translator.optimizer.get_config()["learning_rate"]
    )
    # The warm-up is kept as given: the peak rate is reached at its last step.
    assert float(schedule(warmup_steps)) == pytest.approx(1e-2, rel=1e-5)
