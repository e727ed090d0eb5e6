"""keras_transformer.Translator: text in, text out, saved and exported."""

import json
import os
import re
import zipfile

import keras
import numpy as np
import pytest

tf = pytest.importorskip("tensorflow", reason="the Translator's tokenizers run in TF")

import keras_transformer  # noqa: E402
from keras_transformer import data, decoding, losses, metrics, models  # noqa: E402
from keras_transformer import distribute, schedules  # noqa: E402
from keras_transformer.data import packing  # noqa: E402
from keras_transformer.models import transformer  # noqa: E402
from keras_transformer.translation import training as training_module  # noqa: E402
from keras_transformer.translation.translator import Translator  # noqa: E402
from tests.conftest import run_python, save_then_fail_a_second_save  # noqa: E402
from tests.translation.conftest import assert_translates_as_the_first_layout_did  # noqa: E402

pytestmark = pytest.mark.skipif(
    keras.backend.backend() != "tensorflow",
    reason="the Translator's text pipeline and export are TensorFlow programs",
)

SOURCES = ["5 March 2021", "17 May 2020", "1 June 1999", "3 April 2000"]
TARGETS = ["2021-03-05", "2020-05-17", "1999-06-01", "2000-04-03"]
TINY = dict(
    num_encoder_layers=1,
    num_decoder_layers=2,
    hidden_dim=16,
    num_heads=2,
    intermediate_dim=32,
    dropout=0.0,
)


def make_translator(**config):
    keras.utils.set_random_seed(3)
    return Translator.from_texts(
        SOURCES, TARGETS, tokenizer="character", **{**TINY, **config}
    )


@pytest.fixture(scope="module")
def translator():
    return make_translator()


def source_ids_of(translator, texts):
    return translator.source_tokenizer.tokenize(texts).to_tensor().numpy()


def test_translator_is_exported_at_the_package_root_and_under_models():
    assert keras_transformer.Translator is Translator
    assert keras_transformer.translation.Translator is Translator
    # Where it lived before the text task moved to translation/.
    assert models.Translator is Translator


def test_from_texts_trains_tokenizers_and_sizes_the_model_from_them(translator):
    config = translator.config
    assert config.source_vocabulary_size == translator.source_tokenizer.vocabulary_size
    assert config.target_vocabulary_size == translator.target_tokenizer.vocabulary_size
    # 1.5 times the longest training text (12 characters; 10 + BOS).
    assert (config.max_source_length, config.max_target_length) == (18, 17)
    assert config.hidden_dim == 16
    assert isinstance(translator.transformer_layers, models.TransformerLayers)


def test_from_texts_with_a_joint_vocabulary_shares_one_tokenizer_and_embedding():
    joint = Translator.from_texts(
        SOURCES, TARGETS, tokenizer="word", joint_vocabulary=True, **TINY
    )
    assert joint.source_tokenizer is joint.target_tokenizer
    assert joint.config.share_embeddings
    parts = joint.transformer_layers
    assert parts.source_embedding is parts.target_embedding


def test_from_texts_refuses_vocabulary_sizes_and_unpaired_texts():
    with pytest.raises(ValueError, match="from_texts takes the vocabulary sizes"):
        Translator.from_texts(
            SOURCES, TARGETS, tokenizer="character", source_vocabulary_size=10
        )
    with pytest.raises(ValueError, match="4 sources and 3 targets"):
        Translator.from_texts(SOURCES, TARGETS[:3], tokenizer="character")
    with pytest.raises(ValueError, match="argument tokenizer, expected one of"):
        Translator.from_texts(SOURCES, TARGETS, tokenizer="bytes")
    with pytest.raises(ValueError, match="argument sources, expected a list of"):
        Translator.from_texts("5 March 2021", TARGETS, tokenizer="character")


def test_constructor_refuses_a_tokenizer_larger_than_the_model():
    small = data.CharacterTokenizer.from_texts(["ab"])
    large = data.CharacterTokenizer.from_texts(["abcdefghij"])
    config = models.TransformerConfig(
        source_vocabulary_size=small.vocabulary_size,
        target_vocabulary_size=small.vocabulary_size,
        **TINY,
    )
    with pytest.raises(ValueError, match="target_tokenizer with 14 tokens"):
        Translator(config, small, large)
    with pytest.raises(ValueError, match="argument source_tokenizer, expected a"):
        Translator(config, None, small)


def learning_rate_schedule(optimizer):
    return keras.saving.deserialize_keras_object(optimizer.get_config()["learning_rate"])


def test_compile_defaults_are_the_library_recipe(translator):
    translator.compile()
    assert isinstance(translator.loss, losses.MaskedSparseCategoricalCrossentropy)
    assert translator.loss.label_smoothing == 0.1
    assert isinstance(translator.optimizer, keras.optimizers.Adam)
    assert translator.optimizer.beta_2 == 0.98
    # Warm-up then cosine decay, peaking at the width's default rate, over
    # a run that fit sets; until then an inverse-square-root decay.
    schedule = learning_rate_schedule(translator.optimizer)
    assert isinstance(schedule, schedules.WarmupCosineDecay)
    assert schedule.follows_fit and schedule.total_steps is None
    peak = schedules.default_learning_rate(translator.config.hidden_dim)
    assert schedule.peak_learning_rate == pytest.approx(peak)
    np.testing.assert_allclose(float(schedule(999)), peak, rtol=1e-5)
    np.testing.assert_allclose(float(schedule(3999)), peak * 0.5, rtol=1e-5)
    assert not translator.jit_compile


@pytest.mark.slow
def test_fit_fits_the_default_schedule_to_the_run_it_makes():
    translator = make_translator()
    translator.compile(learning_rate=1e-2)
    translator.fit(SOURCES, TARGETS, batch_size=2, epochs=2, verbose=0)
    steps = int(translator.optimizer.iterations)
    schedule = training_module.schedule_following_fit(translator.optimizer)
    # 5% warm-up (at least a step), then 0 exactly at the last step.
    assert (schedule.total_steps, schedule.first_step) == (steps, 0)
    assert schedule.resolved_warmup_steps() == max(1, round(0.05 * steps))
    assert float(schedule(steps)) == pytest.approx(0.0, abs=1e-9)
    # Each epoch is one pass over the pairs, though fit streams them
    # endlessly (one iterator for the run).
    pass_length = len(translator.make_dataset(SOURCES, TARGETS, batch_size=2))
    assert steps == 2 * pass_length
    # A second fit is a new run from where the first ended; steps_per_epoch
    # sets the epoch's length and the run's.
    translator.fit(SOURCES, TARGETS, batch_size=2, epochs=2, steps_per_epoch=3, verbose=0)
    assert schedule.first_step == steps
    assert schedule.total_steps == int(translator.optimizer.iterations) - steps == 6


@pytest.mark.slow
def test_fit_for_minutes_stops_at_the_budget_with_the_rate_decayed_to_zero():
    translator = make_translator()
    translator.compile(learning_rate=1e-2)
    # 16-step epochs, so that three seconds hold several.
    sources, targets = SOURCES * 8, TARGETS * 8
    # Traced first, so the budget's seconds are all steps.
    translator.fit(sources, targets, batch_size=2, verbose=0)
    first_step = int(translator.optimizer.iterations)
    history = translator.fit(sources, targets, batch_size=2, minutes=0.05, verbose=0)
    steps = int(translator.optimizer.iterations) - first_step
    # Three seconds hold several epochs (hundreds of steps on an idle
    # machine; the schedule is first fitted at step 30), far fewer than the
    # unbounded run's.
    assert 3 < len(history.history["loss"]) < training_module.EPOCHS_OF_A_TIME_BUDGET
    schedule = training_module.schedule_following_fit(translator.optimizer)
    # The schedule was fitted to the run as it went (not left at the
    # unbounded run's 20,000 steps): it ends about where the run ended, the
    # rate decayed. (How closely depends on the machine's steadiness; the
    # exact arithmetic is tested on a fake clock in tests/test_callbacks.py.)
    assert schedule.first_step == first_step
    assert steps / 2 <= schedule.total_steps <= 2 * steps
    assert float(schedule(first_step + steps - 1)) < 0.5 * 1e-2
    # Three seconds do not repay XLA's compilations.
    assert translator.jit_compile is False


@pytest.mark.slow
def test_fit_on_texts_tokenizes_once_and_logs_tokens_per_second_and_compile_time(
    monkeypatch,
):
    translator = make_translator()
    translator.compile()
    tokenized = []
    for side in ("source_tokenizer", "target_tokenizer"):
        tokenizer = getattr(translator, side)
        monkeypatch.setattr(
            tokenizer,
            "tokenize",
            lambda texts, tokenize=tokenizer.tokenize, side=side: (
                tokenized.append(side) or tokenize(texts)
            ),
        )
    history = translator.fit(SOURCES, TARGETS, batch_size=1, epochs=2, verbose=0)
    # Counting the steps, choosing XLA, the two epochs and the token count
    # all read one tokenization of the corpus.
    assert sorted(tokenized) == ["source_tokenizer", "target_tokenizer"]
    for key in ("source_tokens_per_second", "target_tokens_per_second"):
        assert len(history.history[key]) == 2
        assert all(value > 0 for value in history.history[key])
    # The first epoch traces the train step; its steps are not all alike.
    assert history.history["compile_seconds"][0] > 0


def test_fit_on_packed_rows_learns_and_validates_on_packed_rows():
    translator = make_translator()
    translator.compile(learning_rate=1e-2)
    sources, targets = SOURCES * 8, TARGETS * 8
    history = translator.fit(
        sources, targets, tokens_per_batch=64, pack=True, epochs=8,
        validation_data=(SOURCES, TARGETS), verbose=0,
    )  # fmt: skip
    losses_by_epoch = history.history["loss"]
    assert losses_by_epoch[-1] < 0.7 * losses_by_epoch[0], losses_by_epoch
    assert history.history["val_loss"][-1] < history.history["val_loss"][0]
    # 32 pairs of 11-12 decoder tokens fill rows of 24 positions (two median
    # pairs) two at a time, two rows to a batch of 64 positions: 8 batches.
    assert int(translator.optimizer.iterations) == 8 * 8
    assert all(value > 0 for value in history.history["target_tokens_per_second"])


def test_xla_auto_counts_two_programs_for_packed_rows():
    translator = make_translator()
    translator.compile()
    steps = training_module.XLA_STEPS_PER_PROGRAM
    # Packed rows come in two shapes: one program's steps are too few.
    assert not training_module.use_xla_for_run(translator, steps, None, pack=True)
    # Enough steps for two programs, not for the pipeline's 8 buckets.
    assert not training_module.use_xla_for_run(translator, 2 * steps, None)
    assert training_module.use_xla_for_run(translator, 2 * steps, None, pack=True)
    assert translator.jit_compile is True


@pytest.mark.parametrize("dtype, bfloat16_cpus, xla", [
    ("mixed_bfloat16", True, False),  # oneDNN's bfloat16 kernels outrun XLA
    ("mixed_bfloat16", False, True),
    ("float32", True, True),
])  # fmt: skip
def test_xla_auto_leaves_bfloat16_on_cpus_that_multiply_it_to_onednn(
    dtype, bfloat16_cpus, xla, monkeypatch
):
    monkeypatch.setattr(
        distribute, "trains_on_bfloat16_cpus", lambda strategy=None: bfloat16_cpus
    )
    translator = make_translator(dtype=dtype)
    translator.compile()
    steps = packing.MAX_ROW_SHAPES * training_module.XLA_STEPS_PER_PROGRAM
    assert training_module.use_xla_for_run(translator, steps, None, pack=True) is xla
    assert translator.jit_compile is xla


def test_packing_batches_of_ids_is_refused_rather_than_ignored(translator):
    batches = translator.make_dataset(SOURCES, TARGETS, batch_size=2)
    with pytest.raises(ValueError, match="pack=True with batches of ids"):
        translator.fit(batches, pack=True, verbose=0)


def test_packing_is_refused_for_a_model_whose_positions_enter_inside_attention():
    translator = make_translator(position_encoding="rotary")
    translator.compile()
    with pytest.raises(ValueError, match="positions inside attention"):
        translator.fit(SOURCES, TARGETS, tokens_per_batch=64, pack=True, verbose=0)


def test_compile_with_total_steps_decays_to_zero_and_takes_keras_overrides():
    translator = make_translator()
    translator.compile(learning_rate=5e-3, warmup_steps=10, total_steps=100)
    schedule = learning_rate_schedule(translator.optimizer)
    assert not schedule.follows_fit
    assert float(schedule(9)) == pytest.approx(5e-3)
    assert float(schedule(100)) == pytest.approx(0.0, abs=1e-9)
    with pytest.raises(ValueError, match="expected at most total_steps="):
        translator.compile(warmup_steps=100, total_steps=10)

    translator.compile(optimizer="sgd", metrics=[metrics.MaskedAccuracy()])
    assert isinstance(translator.optimizer, keras.optimizers.SGD)
    with pytest.raises(ValueError, match="argument jit_compile, expected 'auto'"):
        translator.compile(jit_compile="yes")


@pytest.mark.slow
def test_compile_with_no_arguments_then_a_short_fit_translates():
    """141 updates (3,000 pairs, 3 epochs): the schedule follows the run, so
    the rate peaks early instead of never leaving a 1,000-step warm-up."""
    keras.utils.set_random_seed(0)
    train, held_out = data.date_task_splits(num_train=3000, num_test=50, seed=0)
    sources, targets = map(list, zip(*train))
    translator = Translator.from_texts(sources, targets, tokenizer="character")
    translator.compile()
    translator.fit(sources, targets, epochs=3, verbose=0)
    outputs = translator.translate([source for source, _ in held_out])
    references = [target for _, target in held_out]
    iso_dates = [re.fullmatch(r"\d{4}-\d{2}-\d{2}", text) for text in outputs]
    assert sum(map(bool, iso_dates)) >= 0.9 * len(outputs), outputs[:5]
    assert len(set(outputs)) >= 0.5 * len(outputs), outputs[:5]
    correct = sum(
        a == b for output, reference in zip(outputs, references)
        for a, b in zip(output, reference)
    )
    assert correct >= 0.6 * sum(map(len, references)), outputs[:5]


@pytest.mark.slow
def test_fit_on_texts_a_string_dataset_and_ids_trains_the_same_model():
    translator = make_translator()
    translator.compile(learning_rate=1e-2, warmup_steps=1)
    before = translator.evaluate(SOURCES, TARGETS, verbose=0, return_dict=True)

    history = translator.fit(SOURCES, TARGETS, batch_size=2, epochs=3, verbose=0)
    pairs = tf.data.Dataset.from_tensor_slices((SOURCES, TARGETS))
    translator.fit(pairs, batch_size=4, epochs=1, verbose=0, validation_data=pairs)
    ids = translator.make_dataset(SOURCES, TARGETS, batch_size=4, shuffle=False)
    translator.fit(ids, epochs=1, verbose=0)

    after = translator.evaluate(SOURCES, TARGETS, verbose=0, return_dict=True)
    assert len(history.history["loss"]) == 3
    assert after["loss"] < before["loss"]


def test_fit_refuses_texts_without_targets_and_a_checkpoint_on_ids(tmp_path):
    translator = make_translator()
    translator.compile()
    with pytest.raises(ValueError, match="argument y, expected a list of strings"):
        translator.fit(SOURCES, None, epochs=1, verbose=0)
    ids = translator.make_dataset(SOURCES, TARGETS, batch_size=4)
    with pytest.raises(ValueError, match="checkpoint_dir works with texts"):
        translator.fit(ids, checkpoint_dir=str(tmp_path), verbose=0)


@pytest.mark.slow
def test_fit_with_a_checkpoint_dir_resumes_where_it_stopped(tmp_path):
    translator = make_translator()
    translator.compile(learning_rate=1e-2, warmup_steps=1)
    checkpoints = str(tmp_path / "checkpoints")
    translator.fit(
        SOURCES, TARGETS, batch_size=2, epochs=2, checkpoint_dir=checkpoints, verbose=0
    )
    steps = int(translator.optimizer.iterations)
    # Everything is done: running again only restores the final state.
    translator.fit(
        SOURCES, TARGETS, batch_size=2, epochs=2, checkpoint_dir=checkpoints, verbose=0
    )
    assert steps == 4
    assert int(translator.optimizer.iterations) == steps


@pytest.mark.slow
def test_translate_equals_generate_then_detokenize_and_blanks_empty_texts(translator):
    texts = ["5 March 2021", "", "1 May", "17 May 2020"]
    ids = translator.generate(source_ids_of(translator, texts))
    expected = [
        text.decode("utf-8")
        for text in translator.target_tokenizer.detokenize(ids).numpy()
    ]
    expected[1] = ""
    assert translator.translate(texts) == expected
    assert translator.translate(texts, batch_size=3) == expected


@pytest.mark.slow
def test_beam_of_one_and_sampling_from_the_top_token_are_greedy(translator):
    texts = ["5 March 2021", "1 June 1999", "3 April"]
    greedy = translator.translate(texts)
    assert translator.translate(texts, method="beam", beam_size=1) == greedy
    assert translator.translate(texts, method="sample", top_k=1, seed=5) == greedy


def test_seeded_sampling_is_reproducible_and_the_seed_matters(translator):
    texts = ["5 March 2021", "1 June 1999"] * 4
    hot = dict(method="sample", temperature=3.0)
    first = translator.translate(texts, seed=11, **hot)
    assert translator.translate(texts, seed=11, **hot) == first
    others = [translator.translate(texts, seed=seed, **hot) for seed in (12, 13)]
    assert any(other != first for other in others)


@pytest.mark.slow
def test_the_decoding_function_is_traced_once_across_calls(monkeypatch):
    translator = make_translator()
    traces = []
    original = decoding.GreedySampler.__call__

    def counting(self, *args, **kwargs):
        traces.append(1)  # Python runs here only while tracing.
        return original(self, *args, **kwargs)

    monkeypatch.setattr(decoding.GreedySampler, "__call__", counting)
    for texts in (["5 March 2021"], ["1 May", "17 May 2020"], ["3 April 2000"] * 5):
        translator.translate(texts)
    assert len(traces) == 1
    translator.translate(["1 May"], method="beam", beam_size=2)
    translator.translate(["1 May"], method="beam", beam_size=2)
    assert len(traces) == 1


@pytest.mark.slow
def test_translate_under_xla_matches_the_dynamic_path(translator):
    texts = ["5 March 2021", "", "1 May", "17 May 2020", "3 April"]
    assert translator.translate(texts, jit_compile=True, batch_size=2) == (
        translator.translate(texts)
    )


def test_translate_refuses_a_text_longer_than_the_model_and_bad_options(translator):
    with pytest.raises(ValueError, match="maximum source length of 18 tokens"):
        translator.translate(["1 May", "x" * 19])
    with pytest.raises(ValueError, match="argument texts, expected a list"):
        translator.translate("5 March 2021")
    with pytest.raises(ValueError, match="argument method, expected one of"):
        translator.translate(["1 May"], method="nucleus")
    with pytest.raises(ValueError, match="unknown option for method='greedy'"):
        translator.translate(["1 May"], beam_size=4)
    with pytest.raises(ValueError, match="num_results is for generate"):
        translator.translate(["1 May"], method="beam", num_results=2)


@pytest.mark.slow
def test_generate_returns_the_n_best_beams_with_descending_scores(translator):
    source_ids = source_ids_of(translator, ["5 March 2021", "1 June 1999"])
    ids, scores = translator.generate(
        source_ids, method="beam", beam_size=4, num_results=3, return_scores=True
    )
    best = translator.generate(source_ids, method="beam", beam_size=4)
    assert ids.shape == (2, 3, translator.max_target_length)
    np.testing.assert_array_equal(ids[:, 0], best)
    assert np.all(np.diff(scores, axis=1) <= 0)


def naive_sample(translator, source_ids, max_length, seed, sampler):
    """Sampling by recomputing the whole prefix at every step (no cache),
    with the uniform numbers the sampler draws at each step."""
    from keras_transformer.layers.stateless_dropout import _FixedSeed

    bos, eos = translator.target_tokenizer.bos_id, translator.target_tokenizer.eos_id
    rows = []
    for row in source_ids:
        prefix = [bos]
        generated = []
        for index in range(max_length):
            logits = translator(
                {"source_ids": row[None], "target_ids": np.array([prefix])}
            )
            log_probs = np.array(keras.ops.log_softmax(logits[:, -1]), "float32")
            log_probs[:, translator.padding_id] = decoding.IMPOSSIBLE_LOG_PROB
            scaled = log_probs / sampler.temperature
            kth = np.sort(scaled, axis=-1)[:, -sampler.top_k][:, None]
            scaled = np.where(scaled < kth, decoding.IMPOSSIBLE_LOG_PROB, scaled)
            step_seed = tf.constant([seed, index], tf.int64)
            uniform = keras.random.uniform(
                scaled.shape, minval=1e-20, maxval=1.0, seed=_FixedSeed(step_seed)
            )
            token = int(np.argmax(scaled - np.log(-np.log(np.asarray(uniform)))))
            generated.append(token)
            prefix.append(token)
            if token == eos:
                break
        rows.append(generated + [translator.padding_id] * (max_length - len(generated)))
    return np.array(rows)


@pytest.mark.slow
def test_cached_sampling_equals_recomputing_every_prefix(translator):
    texts = ["5 March 2021", "1 June 1999"]
    source_ids = source_ids_of(translator, texts)
    options = dict(temperature=2.0, top_k=5)
    sampled = [
        translator.generate(source_ids[i : i + 1], method="sample", seed=21, **options)
        for i in range(2)
    ]
    naive = [
        naive_sample(
            translator, source_ids[i : i + 1], translator.max_target_length, 21,
            decoding.RandomSampler(**options),
        )
        for i in range(2)
    ]
    np.testing.assert_array_equal(np.concatenate(sampled), np.concatenate(naive))


def test_attention_scores_are_distributions_over_the_source_tokens(translator):
    (attention,) = translator.attention_scores(["1 May"], layer=1)
    assert attention.source_tokens == ["1", "\u2423", "M", "a", "y"]
    assert attention.target_tokens[-1] in ("[EOS]",) or len(
        attention.target_tokens
    ) == translator.max_target_length
    assert attention.scores.shape == (2, len(attention.target_tokens), 5)
    np.testing.assert_allclose(attention.scores.sum(axis=-1), 1.0, atol=1e-5)
    with pytest.raises(ValueError, match="argument layer, expected a decoder"):
        translator.attention_scores(["1 May"], layer=2)


@pytest.mark.slow
def test_keras_file_round_trip_translates_identically_and_keeps_the_recipe(tmp_path):
    translator = make_translator()
    translator.compile(learning_rate=1e-2, warmup_steps=1)
    translator.fit(SOURCES, TARGETS, batch_size=2, epochs=1, verbose=0)
    path = str(tmp_path / "dates.keras")
    translator.save(path)

    loaded = keras.saving.load_model(path, safe_mode=True)

    assert isinstance(loaded, Translator)
    assert loaded.config == translator.config
    assert loaded.source_tokenizer.vocabulary == translator.source_tokenizer.vocabulary
    texts = ["5 March 2021", "1 June 1999", "3 April"]
    assert loaded.translate(texts) == translator.translate(texts)
    assert loaded.translate(texts, method="beam") == translator.translate(
        texts, method="beam"
    )
    assert isinstance(loaded.loss, losses.MaskedSparseCategoricalCrossentropy)
    assert int(loaded.optimizer.iterations) == int(translator.optimizer.iterations)
    loaded.fit(SOURCES, TARGETS, batch_size=2, epochs=1, verbose=0)


def test_a_save_that_fails_mid_write_leaves_the_previous_file(tmp_path, monkeypatch):
    path = save_then_fail_a_second_save(make_translator(), tmp_path, monkeypatch)
    assert isinstance(models.load_model(path), Translator)


KILLED_MID_SAVE = r"""
import os, sys, zipfile
import keras
path = sys.argv[1]
model = keras.saving.load_model(path)
from keras_transformer.models import transformer
def die(self, store):
    os._exit(9)  # as if killed after the config, before the weights
transformer.PaddingMask.save_own_variables = die
model.save(path)
"""


@pytest.mark.slow
def test_a_save_killed_mid_write_leaves_the_previous_file_loadable(tmp_path):
    translator = make_translator()
    path = str(tmp_path / "model.keras")
    translator.save(path)
    before = open(path, "rb").read()

    result = run_python("import keras_transformer\n" + KILLED_MID_SAVE, path)

    assert result.returncode == 9, result.stderr[-2000:]
    assert open(path, "rb").read() == before
    assert keras.saving.load_model(path).translate(["1 May"]) == translator.translate(
        ["1 May"]
    )
    (leftover,) = [name for name in os.listdir(tmp_path) if name != "model.keras"]
    assert leftover.startswith(".model.keras.tmp-") and leftover.endswith(".keras")

    translator.save(path)
    assert os.listdir(tmp_path) == ["model.keras"]


def test_save_refuses_a_missing_folder_and_a_wrong_suffix(tmp_path, translator):
    with pytest.raises(ValueError, match="does not exist"):
        translator.save(str(tmp_path / "missing" / "model.keras"))
    with pytest.raises(ValueError, match="path ending in .keras"):
        translator.save(str(tmp_path / "model.h5"))


@pytest.fixture
def keras_writes(monkeypatch):
    """Records every write Keras' own `Model.save` is asked for."""
    calls = []
    monkeypatch.setattr(keras.Model, "save", lambda self, *a, **k: calls.append(a))
    return calls


def test_save_onto_an_existing_folder_is_refused_before_writing(
    tmp_path, translator, keras_writes
):
    (tmp_path / "model.keras").mkdir()
    with pytest.raises(ValueError, match="it is a folder"):
        translator.save(str(tmp_path / "model.keras"))
    assert keras_writes == []
    assert os.listdir(tmp_path) == ["model.keras"]


def test_save_into_a_folder_that_cannot_be_written_is_refused_before_writing(
    tmp_path, translator, keras_writes, monkeypatch
):
    from keras_transformer import _files

    def read_only(**kwargs):
        raise PermissionError(13, "Read-only file system")

    # A read-only mount refuses the temporary even to root; chmod would not.
    monkeypatch.setattr(_files.tempfile, "mkstemp", read_only)
    with pytest.raises(ValueError, match="cannot be written .*Read-only"):
        translator.save(str(tmp_path / "model.keras"))
    assert keras_writes == []
    assert os.listdir(tmp_path) == []


# One process serves the export and runs `saved_model_cli show` on it (the
# module the command runs, found through this Python rather than PATH).
SERVE_WITH_TENSORFLOW_ONLY = r"""
import contextlib, io, json, sys
import tensorflow as tf
from tensorflow.python.tools import saved_model_cli
export = tf.saved_model.load(sys.argv[1])
texts = tf.constant(json.loads(sys.argv[2]))
result = {
    "default": [t.decode() for t in
                export.signatures["serving_default"](texts=texts)["translations"].numpy()],
    "beam": [t.decode() for t in export.translate_beam(texts).numpy()],
}
sys.argv = ["saved_model_cli", "show", "--dir", sys.argv[1], "--tag_set", "serve",
            "--signature_def", "serving_default"]
shown = io.StringIO()
with contextlib.redirect_stdout(shown):
    try:
        saved_model_cli.main()
    except SystemExit as exit:
        assert exit.code in (None, 0), exit.code
result["saved_model_cli_show"] = shown.getvalue()
assert not [m for m in sys.modules if m.startswith("keras_transformer")]
print(json.dumps(result))
"""


@pytest.mark.slow
def test_export_writes_numbered_versions_that_serve_with_tensorflow_alone(tmp_path):
    translator = make_translator()
    base = tmp_path / "serving" / "dates"
    # A version an earlier export wrote (what is in it is not read; the
    # rule is tested on folders alone below).
    (base / "1").mkdir(parents=True)
    texts = ["5 March 2021", "1 June 1999", ""]

    second = translator.export(str(base), beam_size=3)

    assert second == os.path.join(base, "2")
    with pytest.raises(ValueError, match="versions are never overwritten"):
        translator.export(str(base), version=2)
    result = run_python(SERVE_WITH_TENSORFLOW_ONLY, second, json.dumps(texts))
    assert result.returncode == 0, result.stderr[-3000:]
    served = json.loads(result.stdout.strip().splitlines()[-1])
    assert served["default"] == translator.translate(texts)
    assert served["beam"] == translator.translate(texts, method="beam", beam_size=3)
    assert "dtype: DT_STRING" in served["saved_model_cli_show"]
    assert "shape: (-1)" in served["saved_model_cli_show"]


def test_an_export_takes_the_next_version_and_never_overwrites_one(tmp_path):
    from keras_transformer.translation import export

    base = tmp_path / "dates"
    assert export.new_version_folder(base) == os.path.join(base, "1")
    for name in ("1", "3", "assets", "10.bak"):
        (base / name).mkdir(parents=True)
    assert export.new_version_folder(base) == os.path.join(base, "4")
    assert export.new_version_folder(base, version=2) == os.path.join(base, "2")
    with pytest.raises(ValueError, match=r"version=3, but .* already exists"):
        export.new_version_folder(base, version=3)
    (tmp_path / "file").write_text("")
    with pytest.raises(ValueError, match="it exists and is not a folder"):
        export.new_version_folder(tmp_path / "file")


@pytest.mark.slow
def test_a_translator_composed_from_the_librarys_blocks_decodes_saves_and_exports(
    tmp_path,
):
    from keras_transformer import layers

    source_tokenizer = data.CharacterTokenizer.from_texts(SOURCES)
    target_tokenizer = data.CharacterTokenizer.from_texts(TARGETS)

    def embedding(tokenizer, name):
        return layers.TokenAndPositionEmbedding(
            tokenizer.vocabulary_size, 16, 16, position_encoding="learned", name=name
        )

    keras.utils.set_random_seed(5)
    composed = models.TransformerLayers(
        source_embedding=embedding(source_tokenizer, "my_source_embedding"),
        target_embedding=embedding(target_tokenizer, "my_target_embedding"),
        embedding_dropout=keras.layers.Dropout(0.0, name="my_dropout"),
        encoder_blocks=[layers.TransformerEncoderBlock(32, 2, name="my_encoder")],
        encoder_norm=keras.layers.LayerNormalization(name="my_encoder_norm"),
        decoder_blocks=[layers.TransformerDecoderBlock(32, 2, name="my_decoder")],
        decoder_norm=keras.layers.LayerNormalization(name="my_decoder_norm"),
        output_projection=keras.layers.Dense(target_tokenizer.vocabulary_size),
        padding_mask=transformer.PaddingMask(0, name="my_mask"),
        logits=keras.layers.Activation("linear", dtype="float32", name="my_logits"),
    )
    translator = Translator(
        source_tokenizer=source_tokenizer,
        target_tokenizer=target_tokenizer,
        transformer_layers=composed,
    )
    texts = ["5 March 2021", "1 June 1999"]
    greedy = translator.translate(texts)
    assert translator.translate(texts, method="beam", beam_size=1) == greedy

    path = str(tmp_path / "composed.keras")
    translator.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    assert loaded.translate(texts) == greedy
    assert loaded.config is None

    export_dir = translator.export(str(tmp_path / "composed_export"))
    served = tf.saved_model.load(export_dir)
    translations = served.translate(tf.constant(texts)).numpy()
    assert [text.decode() for text in translations] == greedy


# --- The backbone it holds, and files of the first layout -------------------


def test_the_backbone_is_a_transformer_giving_the_translators_logits(translator):
    inputs = {
        "source_ids": source_ids_of(translator, SOURCES[:2]),
        "target_ids": np.array([[2, 5, 6, 7], [2, 8, 0, 0]], "int32"),
    }

    assert type(translator.backbone) is models.Transformer
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(translator.backbone(inputs)),
        keras.ops.convert_to_numpy(translator(inputs)),
    )
    assert translator.config is translator.backbone.config
    assert translator.transformer_layers is translator.backbone.transformer_layers
    # The translator holds no variable of its own: all are the backbone's.
    assert [id(v) for v in translator.weights] == [
        id(v) for v in translator.backbone.weights
    ]


def test_a_translator_holds_a_given_backbone_and_saves_it(tmp_path):
    made = make_translator()
    backbone = models.Transformer(made.config)
    held = Translator(
        backbone=backbone,
        source_tokenizer=made.source_tokenizer,
        target_tokenizer=made.target_tokenizer,
    )
    assert held.backbone is backbone
    path = str(tmp_path / "held.keras")
    held.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    assert loaded.config == made.config
    assert loaded.translate(SOURCES) == held.translate(SOURCES)


def test_the_constructor_takes_exactly_one_description_of_the_backbone(translator):
    tokenizers = {
        "source_tokenizer": translator.source_tokenizer,
        "target_tokenizer": translator.target_tokenizer,
    }
    one_of = "Pass exactly one of config .* and backbone"
    with pytest.raises(ValueError, match=one_of):
        Translator(**tokenizers)
    with pytest.raises(ValueError, match=one_of):
        Translator(config=translator.config, backbone=translator.backbone, **tokenizers)
    with pytest.raises(ValueError, match="argument backbone, expected a keras_transformer"):
        Translator(backbone="a model", **tokenizers)
    with pytest.raises(ValueError, match="Received dtype='mixed_bfloat16' with a backbone"):
        Translator(backbone=translator.backbone, dtype="mixed_bfloat16", **tokenizers)


def test_a_keras_file_of_the_first_layout_loads_and_translates_as_it_did(
    first_layout,
):
    before = open(first_layout.keras_path, "rb").read()

    loaded = models.load_model(first_layout.keras_path)

    assert type(loaded.backbone) is models.Transformer
    assert loaded.adapters == ["dogs"] and loaded.active_adapter is None
    assert loaded.compiled
    assert_translates_as_the_first_layout_did(loaded, first_layout, None)
    assert_translates_as_the_first_layout_did(loaded, first_layout, "dogs")
    assert open(first_layout.keras_path, "rb").read() == before


def test_a_first_layout_file_saved_again_is_of_the_current_layout(
    first_layout, tmp_path
):
    path = str(tmp_path / "again.keras")
    models.load_model(first_layout.keras_path).save(path)

    with zipfile.ZipFile(path) as archive:
        assert "backbone" in json.loads(archive.read("config.json"))["config"]
    loaded = keras.saving.load_model(path, safe_mode=True)
    assert_translates_as_the_first_layout_did(loaded, first_layout, None)
    assert_translates_as_the_first_layout_did(loaded, first_layout, "dogs")


LOAD_BEFORE_THE_TRANSLATOR_IS_IMPORTED = r"""
import json, sys
from keras_transformer import models
assert "keras_transformer.translation.translator" not in sys.modules
model = models.load_model(sys.argv[1])
print(json.dumps(model.translate(json.loads(sys.argv[2]))))
"""


@pytest.mark.slow
def test_a_first_layout_file_loads_before_the_translator_class_is_imported(
    first_layout,
):
    # Keras' registry holds the Translator's stand-in then (models/__init__.py),
    # which must pass the upgrade on too.
    result = run_python(
        LOAD_BEFORE_THE_TRANSLATOR_IS_IMPORTED,
        first_layout.keras_path,
        json.dumps(first_layout.texts),
    )

    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads(result.stdout.splitlines()[-1]) == first_layout.base_translations


def test_keras_load_model_of_a_first_layout_file_says_to_load_it_with_the_librarys(
    first_layout,
):
    with pytest.raises(ValueError, match=r"keras_transformer\.models\.load_model\(path\)"):
        keras.saving.load_model(first_layout.keras_path)


# --- Bad input: refused before any work, naming the argument ----------------

FROM_TEXTS_REFUSALS = [
    (dict(sources=["", ""], targets=["a", "b"]), "all 2 sources are empty"),
    (dict(sources=["a", "b"], targets=["", ""]), "all 2 targets are empty"),
    (dict(tokenizer="sentencepiece"), "SentencePiece model has a fixed number"),
    (dict(tokenizer="sentencepiece", vocabulary_size=None), "vocabulary_size=4000"),
    (dict(vocabulary_size=4), "more than the 4 special tokens"),
    (dict(hidden_size=16), "unknown TransformerConfig field 'hidden_size'. Did you mean 'hidden_dim'"),
    (dict(num_head=2), "Did you mean 'num_heads'"),
    (dict(dropuot=0.1), "Did you mean 'dropout'"),
    (dict(padding_id=0), "padding_id=0: from_texts takes"),
    (dict(target_vocabulary_size=9), "from_texts takes the vocabulary sizes"),
    (dict(hidden_dim=30, num_heads=4), "expected a multiple of num_heads=4"),
    (dict(dropout=1.5), "argument dropout"),
    (dict(joint_vocabulary="yes"), "argument joint_vocabulary"),
    (dict(joint_vocabulary=1), "argument joint_vocabulary"),
    (dict(tokenizer_options={"lower": True}), "unknown CharacterTokenizer.from_texts option 'lower'"),
    (dict(tokenizer="word", tokenizer_options={"lower": True}), "Did you mean 'lowercase'"),
    (dict(tokenizer="word", tokenizer_options={"lowercase": "no"}), "argument lowercase"),
    (dict(tokenizer_options={"min_frequency": 0}), "argument min_frequency"),
    (dict(tokenizer_options={"max_vocabulary_size": 9}), "Pass vocabulary_size= instead"),
    (dict(tokenizer_options=[("min_frequency", 1)]), "argument tokenizer_options"),
    (
        dict(tokenizer="sentencepiece", vocabulary_size=30, tokenizer_options={"model_type": "word"}),
        "argument model_type",
    ),
    (
        dict(tokenizer="sentencepiece", vocabulary_size=30, tokenizer_options={"model_typ": "bpe"}),
        "Did you mean 'model_type'",
    ),
    (
        dict(tokenizer="sentencepiece", vocabulary_size=30,
             tokenizer_options={"character_coverage": 0.0}),
        "argument character_coverage",
    ),
]  # fmt: skip


@pytest.mark.parametrize("overrides, message", FROM_TEXTS_REFUSALS)
def test_from_texts_refuses_bad_arguments_before_training_a_tokenizer(
    overrides, message, monkeypatch
):
    def trained(*args, **kwargs):
        raise AssertionError("a tokenizer was trained")

    from keras_transformer.translation import vocabulary

    monkeypatch.setattr(vocabulary, "train_tokenizer", trained)
    arguments = dict(sources=SOURCES, targets=TARGETS, tokenizer="character")
    arguments.update(overrides)
    with pytest.raises(ValueError, match=re.escape(message)):
        Translator.from_texts(**arguments)


COMPILE_REFUSALS = [
    (dict(warmup_steps=100, total_steps=10), "expected at most total_steps=10"),
    (dict(warmup_steps=11, total_steps=10), "Received: warmup_steps=11"),
    (dict(warmup_steps=-1), "argument warmup_steps"),
    (dict(warmup_steps=2.5), "argument warmup_steps"),
    (dict(total_steps=0), "argument total_steps"),
    (dict(learning_rate=0.0), "argument learning_rate"),
    (dict(learning_rate=float("nan")), "argument learning_rate"),
    (dict(label_smoothing=1.0), "argument label_smoothing"),
    (dict(jit_compile="on"), "argument jit_compile"),
]


@pytest.mark.parametrize("arguments, message", COMPILE_REFUSALS)
def test_compile_refuses_bad_recipe_arguments(translator, arguments, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        translator.compile(**arguments)


def test_compile_keeps_a_warm_up_as_long_as_the_run():
    translator = make_translator()
    translator.compile(learning_rate=1e-2, warmup_steps=10, total_steps=10)
    schedule = learning_rate_schedule(translator.optimizer)
    # Not shortened: the rate rises (one-based) to its peak at the last step.
    assert float(schedule(4)) == pytest.approx(5e-3)
    assert float(schedule(9)) == pytest.approx(1e-2)


FIT_REFUSALS = [
    (dict(epochs=-1), "Received: epochs=-1"),
    (dict(epochs=0), "Received: epochs=0"),
    (dict(epochs=1.5), "Received: epochs=1.5"),
    (dict(minutes=0), "Received: minutes=0"),
    (dict(minutes=float("inf")), "argument minutes"),
    (dict(minutes="5"), "argument minutes"),
    (dict(minutes=1, checkpoint_dir="unused"), "minutes and checkpoint_dir exclude"),
    (dict(checkpoint_every=0, checkpoint_dir="unused"), "Received: checkpoint_every=0"),
    (dict(checkpoint_every=-3, checkpoint_dir="unused"), "argument checkpoint_every"),
    (dict(checkpoint_every=2), "checkpoint_every=2 without checkpoint_dir"),
    (dict(tokens_per_batch=0), "Received: tokens_per_batch=0"),
    (dict(steps_per_epoch=0), "Received: steps_per_epoch=0"),
    (dict(tokens_per_batch=-5), "argument tokens_per_batch"),
    (dict(batch_size=0), "argument batch_size"),
    (dict(shuffle="no"), "argument shuffle"),
    (dict(static_shapes=1), "argument static_shapes"),
    (dict(pack="yes"), "argument pack"),
    (dict(pack=True), "needs tokens_per_batch and takes no bucket_boundaries"),
    (dict(pack=True, tokens_per_batch=64, bucket_boundaries=[4]), "bucket_boundaries=[4]"),
    (dict(pack=True, tokens_per_batch=8), "fewer than one packed row of 24"),
    (dict(x=None, y=None), "argument x, expected texts"),
    (dict(x=42, y=None), "Received: x=42"),
    (dict(x="5 March 2021", y="2021-03-05"), "argument x, expected texts"),
    (dict(x=["5 March 2021", 3], y=TARGETS[:2]), "argument x, expected texts"),
    (dict(y=None), "argument y, expected a list of strings"),
    (dict(y=TARGETS[:3]), "4 sources and 3 targets"),
    (dict(validation_data=(SOURCES,)), "argument validation_data"),
    (dict(validation_data=42), "argument validation_data"),
    (dict(validation_data=(SOURCES, TARGETS[:1])), "4 sources and 1 targets"),
]


@pytest.mark.parametrize("arguments, message", FIT_REFUSALS)
def test_fit_refuses_bad_arguments_before_training(translator, arguments, message):
    call = dict(x=SOURCES, y=TARGETS, verbose=0)
    call.update(arguments)
    with pytest.raises(ValueError, match=re.escape(message)):
        translator.fit(**call)


@pytest.mark.parametrize(
    "arguments, message",
    [
        (dict(x=None), "argument x, expected texts"),
        (dict(x=3.5), "Received: x=3.5"),
        (dict(x=SOURCES, y=None), "argument y"),
        (dict(x=[], y=[]), "at least one example"),
    ],
)
def test_evaluate_refuses_what_is_neither_texts_nor_batches(translator, arguments, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        translator.evaluate(**arguments)


@pytest.mark.parametrize(
    "arguments, message",
    [
        (dict(tokens_per_batch=0), "Received: tokens_per_batch=0"),
        (dict(tokens_per_batch=2.5), "argument tokens_per_batch"),
        (dict(shuffle="yes"), "argument shuffle"),
        (dict(static_shapes=None), "argument static_shapes"),
        (dict(pack=True), "needs tokens_per_batch"),
        (dict(sources=["", ""], targets=["a", "b"]), "give sources of at least one token"),
    ],
)
def test_make_dataset_refuses_bad_arguments_naming_them(translator, arguments, message):
    call = dict(sources=SOURCES, targets=TARGETS)
    call.update(arguments)
    with pytest.raises(ValueError, match=re.escape(message)):
        translator.make_dataset(**call)


GENERATE_REFUSALS = [
    (np.array([4, 5]), "shape (batch, source_length), padded with padding_id=0. Received shape (2,): wrap"),
    ([[4, 5], [4]], "received rows of different lengths"),
    (np.zeros((1, 2, 3), "int32"), "Received shape (1, 2, 3)"),
    (np.int32(4), "Received shape ()"),
    (None, "argument source_ids"),
    ("5 March", "argument source_ids"),
    (np.full((1, 19), 4), "length 19, more than the model's maximum source length of 18"),
    (np.array([[4.0, 5.0]]), "expected integer token ids"),
]  # fmt: skip


@pytest.mark.parametrize("source_ids, message", GENERATE_REFUSALS)
@pytest.mark.parametrize("method", ["greedy", "beam"])
def test_generate_refuses_ids_of_the_wrong_shape_naming_source_ids(
    translator, source_ids, message, method
):
    with pytest.raises(ValueError, match=re.escape(message)):
        translator.generate(source_ids, method=method)


@pytest.mark.slow
@pytest.mark.parametrize("method", ["greedy", "beam", "sample"])
def test_an_empty_batch_gives_an_empty_result(translator, method):
    ids = translator.generate(np.zeros((0, 5), "int32"), method=method, max_length=4)
    assert ids.shape == (0, 4) and ids.dtype == np.int32
    assert translator.translate([], method=method) == []


def test_an_empty_batch_decodes_eagerly_too(translator):
    empty = np.zeros((0, 3), "int32")
    assert decoding.greedy_decode(translator, empty, 4).shape == (0, 4)
    beams = decoding.beam_search_decode(translator, empty, 4, beam_size=2)
    assert np.asarray(beams).shape == (0, 4)
    assert translator.attention_scores([]) == []


def test_length_zero_sources_decode_like_empty_texts(translator):
    # A source of only padding, like the empty text, decodes finitely.
    ids = translator.generate(np.zeros((2, 0), "int32"), max_length=3)
    assert ids.shape == (2, 3)
    assert translator.translate(["", "1 May"])[0] == ""


def test_attention_scores_refuse_a_text_longer_than_the_model(translator):
    with pytest.raises(ValueError, match="19 tokens, more than the model's maximum"):
        translator.attention_scores(["x" * 19])


def test_a_text_too_long_to_translate_is_named_without_tensorflows_trace(translator):
    with pytest.raises(ValueError) as info:
        translator.translate(["x" * 30])
    assert str(info.value) == (
        "Cannot translate texts 0..0: A text to translate has more tokens than "
        "the model's maximum source length of 18 tokens. Texts are never "
        "truncated: split long texts before translating."
    )
