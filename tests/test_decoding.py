import itertools

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_transformer import decoding
from keras_transformer import models
from tests.conftest import to_numpy

PAD, BOS, EOS = 0, 2, 3
MAX_TARGET_LENGTH = 8
# One batch of sources padded to a common length: 8, 5 and 2 real tokens.
SOURCES = np.array(
    [
        [4, 5, 6, 7, 8, 9, 10, 11],
        [5, 6, 7, 9, 4, 0, 0, 0],
        [9, 8, 0, 0, 0, 0, 0, 0],
    ],
    "int32",
)


def random_model(
    position_encoding="sinusoidal", target_vocabulary_size=12, seed=0, **overrides
):
    """A tiny untrained encoder-decoder whose outputs depend on context.

    The default initialisers make a random model repeat one token forever,
    which would hide a broken cache, so kernels and embeddings are redrawn
    with unit-variance fan-in scaling.
    """
    keras.utils.set_random_seed(seed)
    options = dict(
        source_vocabulary_size=12,
        target_vocabulary_size=target_vocabulary_size,
        num_encoder_layers=1,
        num_decoder_layers=2,
        hidden_dim=16,
        num_heads=2,
        intermediate_dim=32,
        dropout=0.0,
        max_source_length=8,
        max_target_length=MAX_TARGET_LENGTH,
        position_encoding=position_encoding,
        tie_output_projection=False,
    )
    options.update(overrides)
    model = models.build_transformer(models.TransformerConfig(**options))
    rng = np.random.default_rng(seed)
    for weight in model.weights:
        if len(weight.shape) >= 2:
            scale = 1.0 / np.sqrt(weight.shape[0])
            weight.assign(rng.normal(0.0, scale, weight.shape).astype("float32"))
    return model


def full_prefix_log_probs(model, source_ids, target_ids):
    """Log-probs `(batch, length, vocabulary)` from the uncached model, with
    padding forbidden as the decoders do."""
    logits = to_numpy(
        model({"source_ids": source_ids, "target_ids": np.asarray(target_ids, "int32")})
    ).astype("float64")
    log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    log_probs[..., PAD] = -np.inf
    return log_probs


def pad_after_eos(ids, eos_id=EOS):
    ids = np.array(ids)
    for row in ids:
        ends = np.flatnonzero(row == eos_id)
        if ends.size:
            row[ends[0] + 1 :] = PAD
    return ids


def naive_greedy_decode(model, source_ids, max_length, eos_id=EOS):
    """Greedy decoding that reruns the whole prefix through the model."""
    prefix = np.full((len(source_ids), 1), BOS, "int32")
    for _ in range(max_length):
        next_ids = full_prefix_log_probs(model, source_ids, prefix)[:, -1].argmax(-1)
        prefix = np.concatenate([prefix, next_ids[:, None].astype("int32")], axis=1)
    return pad_after_eos(prefix[:, 1:], eos_id)


def hypothesis_lengths(ids, eos_id=EOS):
    return np.array(
        [
            np.flatnonzero(row == eos_id)[0] + 1 if eos_id in row else len(row)
            for row in ids
        ]
    )


def length_normalised_scores(model, source_ids, ids, length_penalty, eos_id=EOS):
    """GNMT score of each row of `ids` under the uncached model."""
    ids = np.asarray(ids)
    lengths = hypothesis_lengths(ids, eos_id)
    targets = np.concatenate([np.full((len(ids), 1), BOS), ids[:, :-1]], axis=1)
    log_probs = full_prefix_log_probs(model, source_ids, targets)
    token_log_probs = np.take_along_axis(log_probs, ids[..., None], axis=-1)[..., 0]
    sums = np.array(
        [row[:length].sum() for row, length in zip(token_log_probs, lengths)]
    )
    return sums / ((5.0 + lengths) / 6.0) ** length_penalty


def assert_padding_exactly_after_eos(ids, eos_id=EOS):
    for row in np.asarray(ids):
        length = hypothesis_lengths(row[None], eos_id)[0]
        assert PAD not in row[:length], row
        assert np.all(row[length:] == PAD), row


@pytest.mark.slow
@pytest.mark.parametrize(
    "position_encoding, overrides",
    [
        ("sinusoidal", {}),
        ("learned", {"norm_placement": "post"}),
        ("rotary", {"num_key_value_heads": 1}),
        ("alibi", {"share_embeddings": True, "target_vocabulary_size": 12}),
        ("relative", {"norm_type": "rms_norm", "tie_output_projection": True}),
    ],
)
def test_cached_greedy_decoding_matches_recomputing_the_whole_prefix(
    position_encoding, overrides
):
    model = random_model(position_encoding, **overrides)
    ids = to_numpy(decoding.greedy_decode(model, SOURCES, MAX_TARGET_LENGTH))
    assert ids.dtype == np.int32 and ids.shape == (3, MAX_TARGET_LENGTH)
    np.testing.assert_array_equal(
        ids, naive_greedy_decode(model, SOURCES, MAX_TARGET_LENGTH)
    )
    assert_padding_exactly_after_eos(ids)


@pytest.mark.slow
@pytest.mark.parametrize("position_encoding", ["sinusoidal", "relative"])
def test_one_beam_is_greedy_and_scores_the_models_log_probability(position_encoding):
    model = random_model(position_encoding, seed=1)
    greedy = to_numpy(decoding.greedy_decode(model, SOURCES, 6))
    ids, scores = decoding.beam_search_decode(
        model, SOURCES, 6, beam_size=1, return_scores=True
    )
    np.testing.assert_array_equal(to_numpy(ids), greedy)
    np.testing.assert_allclose(
        to_numpy(scores),
        length_normalised_scores(model, SOURCES, greedy, 0.6),
        rtol=1e-5,
        atol=1e-5,
    )


def every_hypothesis(tokens, max_length):
    """All outputs of up to `max_length` tokens: ended by EOS, or truncated."""
    hypotheses = []
    for length in range(1, max_length + 1):
        last_tokens = tokens + [EOS] if length == max_length else [EOS]
        for body in itertools.product(tokens, repeat=length - 1):
            for last in last_tokens:
                padding = [PAD] * (max_length - length)
                hypotheses.append(list(body) + [last] + padding)
    return np.array(hypotheses, "int32")


@pytest.mark.slow
@pytest.mark.parametrize(
    "position_encoding, seed, length_penalty",
    [("sinusoidal", 0, 0.6), ("rotary", 1, 1.0), ("relative", 2, 0.0)],
)
def test_exhaustive_beam_search_finds_the_best_length_normalised_hypothesis(
    position_encoding, seed, length_penalty
):
    # Target ids: padding, UNK, BOS, EOS and one word. With 3 non-EOS tokens
    # and 3 steps there are 9 live prefixes and 36 continuations at most, so
    # beam_size 18 (2 * 18 candidates per step) never prunes: beam search
    # must return the brute-force optimum, which can only beat greedy.
    model = random_model(position_encoding, target_vocabulary_size=5, seed=seed)
    sources, max_length = SOURCES[1:], 3
    ids, scores = decoding.beam_search_decode(
        model,
        sources,
        max_length,
        beam_size=18,
        length_penalty=length_penalty,
        return_scores=True,
    )
    hypotheses = every_hypothesis([1, 2, 4], max_length)
    assert len(hypotheses) == 40
    for row, source in enumerate(sources):
        all_scores = length_normalised_scores(
            model,
            np.repeat(source[None], len(hypotheses), axis=0),
            hypotheses,
            length_penalty,
        )
        best = np.argmax(all_scores)
        np.testing.assert_array_equal(to_numpy(ids)[row], hypotheses[best])
        np.testing.assert_allclose(
            to_numpy(scores)[row], all_scores[best], rtol=1e-5, atol=1e-5
        )
    greedy = to_numpy(decoding.greedy_decode(model, sources, max_length))
    greedy_scores = length_normalised_scores(model, sources, greedy, length_penalty)
    assert np.all(to_numpy(scores) >= greedy_scores - 1e-5)


@pytest.mark.slow
def test_designating_a_generated_token_as_eos_stops_there_and_pads():
    model = random_model("rotary")
    free_running = to_numpy(decoding.greedy_decode(model, SOURCES, MAX_TARGET_LENGTH))
    # A token the first row generates at step 2 and not before, without EOS.
    new_eos = int(free_running[0, 2])
    assert new_eos not in free_running[0, :2] and EOS not in free_running[0, :3]

    ids = to_numpy(
        decoding.greedy_decode(model, SOURCES, MAX_TARGET_LENGTH, eos_id=new_eos)
    )
    np.testing.assert_array_equal(ids[0], list(free_running[0, :3]) + [PAD] * 5)
    np.testing.assert_array_equal(
        ids, naive_greedy_decode(model, SOURCES, MAX_TARGET_LENGTH, eos_id=new_eos)
    )

    beam_ids, beam_scores = decoding.beam_search_decode(
        model, SOURCES, MAX_TARGET_LENGTH, eos_id=new_eos, return_scores=True
    )
    beam_ids = to_numpy(beam_ids)
    lengths = hypothesis_lengths(beam_ids, new_eos)
    assert np.any(lengths < MAX_TARGET_LENGTH)
    assert_padding_exactly_after_eos(beam_ids, new_eos)
    np.testing.assert_allclose(
        to_numpy(beam_scores),
        length_normalised_scores(model, SOURCES, beam_ids, 0.6, new_eos),
        rtol=1e-5,
        atol=1e-5,
    )


def test_a_model_that_always_prefers_eos_stops_at_the_first_step():
    model = random_model()
    bias = model.get_layer("output_projection").bias
    bias.assign(np.eye(12, dtype="float32")[EOS] * 100.0)
    expected = np.zeros((3, 5), "int32")
    expected[:, 0] = EOS
    for ids in (
        decoding.greedy_decode(model, SOURCES, 5),
        decoding.beam_search_decode(model, SOURCES, 5, beam_size=3),
    ):
        np.testing.assert_array_equal(to_numpy(ids), expected)


@pytest.mark.slow
@pytest.mark.parametrize("decode", ["greedy", "beam"])
def test_compiled_decoding_matches_eager_decoding(decode):
    model = random_model("relative", seed=3)

    def translate(source_ids):
        if decode == "greedy":
            return decoding.greedy_decode(model, source_ids, 6)
        return decoding.beam_search_decode(model, source_ids, 6, beam_size=3)

    # Batch size and source length stay dynamic, as in an export; autograph
    # is off as when keras.export.ExportArchive traces an endpoint.
    signature = [tf.TensorSpec([None, None], tf.int32)]
    graph = tf.function(translate, autograph=False, input_signature=signature)
    xla = tf.function(translate, jit_compile=True, input_signature=signature)
    for sources in (SOURCES, SOURCES[1:, :5]):
        np.testing.assert_array_equal(
            to_numpy(graph(sources)), to_numpy(translate(sources))
        )
    # One XLA compilation (a few seconds) is enough to show it compiles.
    np.testing.assert_array_equal(to_numpy(xla(SOURCES)), to_numpy(translate(SOURCES)))


@pytest.mark.slow
def test_a_model_reloaded_from_keras_file_decodes_the_same_tokens(tmp_path):
    model = random_model("learned", seed=4)
    path = str(tmp_path / "model.keras")
    model.save(path)
    reloaded = keras.saving.load_model(path)
    for decode in (decoding.greedy_decode, decoding.beam_search_decode):
        np.testing.assert_array_equal(
            to_numpy(decode(reloaded, SOURCES, 6)), to_numpy(decode(model, SOURCES, 6))
        )


@pytest.fixture(scope="module")
def untrained_model():
    """One model for the argument checks: building it is their only cost."""
    return random_model()


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"max_length": 0}, "expected a positive integer. Received: max_length=0"),
        ({"max_length": 9}, "max_length=9.*at most 8 target positions"),
        ({"beam_size": 0}, "expected a positive integer. Received: beam_size=0"),
        ({"length_penalty": -0.5}, "non-negative finite number"),
        ({"bos_id": 12}, "below the target vocabulary size 12. Received: bos_id=12"),
        ({"eos_id": 0}, "eos_id=0, which is the model's padding id"),
        ({"source_ids": SOURCES.astype("float32")}, "integer source_ids.*float32"),
        ({"source_ids": SOURCES[0]}, r"shape \(batch_size, source_length\)"),
    ],
)
def test_bad_arguments_raise_value_errors(untrained_model, kwargs, message):
    model = untrained_model
    arguments = {"source_ids": SOURCES, "max_length": 4, **kwargs}
    with pytest.raises(ValueError, match=message):
        decoding.beam_search_decode(model, **arguments)
    if "beam_size" not in kwargs and "length_penalty" not in kwargs:
        with pytest.raises(ValueError, match=message):
            decoding.greedy_decode(model, **arguments)


class NextTokenSteps:
    """A step model with no Transformer behind it: the token after the last
    one is always the next id, up to `EOS_AT`; its cache counts the steps."""

    source_vocabulary_size = target_vocabulary_size = 8
    max_target_length = None
    padding_id = PAD
    EOS_AT = 7

    def step_model(self):
        return self

    def encode(self, source_ids):
        return keras.ops.cast(source_ids, "float32")

    def start(self, memory, max_length):
        return keras.ops.zeros_like(memory[:, :1]), memory

    def step(self, tokens, index, caches, context):
        next_tokens = keras.ops.minimum(tokens + 1, self.EOS_AT)
        return keras.ops.one_hot(next_tokens, 8) * 10.0, caches + 1.0


@pytest.mark.parametrize(
    "sampler",
    [
        decoding.GreedySampler(),
        decoding.BeamSampler(beam_size=2),
        decoding.RandomSampler(top_k=1),
    ],
    ids=repr,
)
def test_the_samplers_decode_any_step_model_not_only_the_transformer(sampler):
    sources = np.array([[4, 5], [6, 0]], "int32")

    ids = sampler(NextTokenSteps(), sources, 6, bos_id=BOS, eos_id=NextTokenSteps.EOS_AT)

    np.testing.assert_array_equal(to_numpy(ids), [[3, 4, 5, 6, 7, 0]] * 2)


def test_decoding_a_model_that_is_not_an_encoder_decoder_raises():
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    with pytest.raises(ValueError, match="expected a keras_transformer Transformer"):
        decoding.greedy_decode(model, SOURCES, 4)


@pytest.mark.parametrize(
    "method, options, message",
    [
        ("sample", {"temperature": 0}, "argument temperature, expected a positive"),
        ("sample", {"top_k": 0}, "argument top_k, expected a positive integer"),
        ("sample", {"top_p": 1.5}, r"argument top_p, expected a number in \(0, 1\]"),
        ("sample", {"top_p": True}, r"argument top_p, expected a number in \(0, 1\]"),
        ("beam", {"num_results": 5, "beam_size": 4}, "at most beam_size=4"),
        ("beam", {"return_scores": "yes"}, "argument return_scores, expected a bool"),
        ("greedy", {"beam_size": 2}, "unknown option for method='greedy'"),
        ("nucleus", {}, "argument method, expected one of"),
    ],
)
def test_samplers_refuse_bad_settings_at_construction(method, options, message):
    with pytest.raises(ValueError, match=message):
        decoding.get_sampler(method, **options)


def test_sampling_draws_follow_the_temperature_scaled_distribution():
    """Gumbel-max draws with a fixed seed per step have the softmax's
    frequencies: compared with NumPy's probabilities over many rows."""
    sampler = decoding.RandomSampler(temperature=2.0)
    log_probs = np.log(np.array([[0.5, 0.3, 0.15, 0.05]] * 20000, "float32"))
    seed = keras.ops.convert_to_tensor(np.array([3, 0]), decoding._seed_dtype())
    tokens = to_numpy(sampler._choose(keras.ops.convert_to_tensor(log_probs), 0, seed))
    expected = np.exp(log_probs[0] / 2.0) / np.exp(log_probs[0] / 2.0).sum()
    observed = np.bincount(tokens, minlength=4) / len(tokens)
    # 5 binomial standard deviations.
    tolerance = 5 * np.sqrt(expected * (1 - expected) / len(tokens))
    assert np.all(np.abs(observed - expected) < tolerance), (observed, expected)


def test_top_k_and_top_p_exclude_exactly_the_tokens_outside_them():
    log_probs = np.log(np.array([[0.5, 0.3, 0.15, 0.05]] * 4000, "float32"))
    seed = keras.ops.convert_to_tensor(np.array([4, 0]), decoding._seed_dtype())
    for sampler, allowed in (
        (decoding.RandomSampler(top_k=2), {0, 1}),
        # 0.5 < 0.7, 0.5 + 0.3 >= 0.7: the nucleus is the first two tokens.
        (decoding.RandomSampler(top_p=0.7), {0, 1}),
        (decoding.RandomSampler(top_p=0.85), {0, 1, 2}),
    ):
        tokens = to_numpy(
            sampler._choose(keras.ops.convert_to_tensor(log_probs), 0, seed)
        )
        assert set(tokens.tolist()) == allowed
