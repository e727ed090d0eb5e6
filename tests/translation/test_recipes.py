import dataclasses
import re

import pytest

from keras_transformer import callbacks, distribute
from keras_transformer.translation import recipes, training
from keras_transformer.models import TransformerConfig
from tests.translation.conftest import TINY_MODEL


def test_the_date_task_recipe_keeps_the_train_script_defaults():
    recipe = recipes.DATE_TASK
    assert (recipe.tokenizer, recipe.vocabulary_size, recipe.joint_vocabulary) == (
        "character",
        None,
        False,
    )
    assert dict(recipe.model) == {
        "num_encoder_layers": 2,
        "num_decoder_layers": 2,
        "hidden_dim": 64,
        "num_heads": 4,
        "intermediate_dim": 256,
        "dropout": 0.0,
    }
    assert (recipe.batch_size, recipe.epochs, recipe.learning_rate) == (64, 5, 5e-3)
    # The warm-up is a fraction of whatever run the epochs make.
    assert (recipe.warmup_steps, recipe.label_smoothing) == (None, 0.0)
    assert recipe.tokens_per_batch is None and recipe.checkpoints_averaged == 1
    assert recipe.callbacks(lambda texts: texts, ["a"], ["a"]) == []
    assert recipe.translate_options() == {"method": "greedy"}


@pytest.mark.parametrize("recipe", [recipes.DATE_TASK, recipes.CORPUS])
def test_model_fields_build_a_transformer_config(recipe):
    config = TransformerConfig(
        source_vocabulary_size=100, target_vocabulary_size=100, **recipe.model
    )
    for field, value in recipe.model.items():
        assert getattr(config, field) == value


def test_the_corpus_recipe_batches_by_tokens_and_averages_checkpoints():
    recipe = recipes.CORPUS
    assert recipe.tokenizer == "sentencepiece" and recipe.joint_vocabulary
    assert recipe.tokens_per_batch
    assert recipe.checkpoints_averaged > 1 and recipe.label_smoothing == 0.1
    assert recipe.translate_options() == {
        "method": "beam",
        "beam_size": recipe.beam_size,
        "length_penalty": recipe.length_penalty,
    }


def test_callbacks_evaluate_bleu_then_average():
    recipe = recipes.CORPUS

    def decode(texts):
        return texts

    bleu, averaging = recipe.callbacks(decode, ["ein Hund"], ["a dog"])
    assert isinstance(bleu, callbacks.BleuEvaluation)
    assert bleu.decode_fn is decode
    assert bleu.every_n_epochs == recipe.bleu_every_n_epochs
    assert isinstance(averaging, callbacks.CheckpointAveraging)
    assert averaging.num_checkpoints == recipe.checkpoints_averaged
    assert averaging.every_n_steps == recipe.average_every_n_steps
    # Without held-out texts there is nothing to score.
    (only,) = recipe.callbacks(decode)
    assert isinstance(only, callbacks.CheckpointAveraging)


def test_bucket_boundaries_widen_with_length_and_stop_at_eight_buckets():
    recipe = dataclasses.replace(recipes.CORPUS, bucket_width=4)
    # Tops 8, 12, 16, 20 (4 apart), then a quarter wider: 25, 32, 40.
    assert recipe.bucket_boundaries(14) == [9, 13]
    assert recipe.bucket_boundaries(107) == [9, 13, 17, 21, 26, 33, 41]
    assert len(recipe.bucket_boundaries(10_000)) == recipes.MAX_BUCKETS - 1
    assert recipe.bucket_boundaries(8) == []
    assert recipes.DATE_TASK.bucket_boundaries(14) is None


def test_recipes_are_frozen_down_to_their_mappings():
    with pytest.raises(dataclasses.FrozenInstanceError):
        recipes.CORPUS.epochs = 1
    with pytest.raises(TypeError):
        recipes.CORPUS.model["dropout"] = 0.5
    with pytest.raises(TypeError):
        recipes.CORPUS.tokenizer_options["model_type"] = "bpe"


@pytest.mark.parametrize(
    "changes, match",
    [
        ({"tokenizer": "bytes"}, "argument tokenizer"),
        ({"vocabulary_size": 0}, "argument vocabulary_size"),
        ({"learning_rate": 0.0}, "argument learning_rate"),
        ({"warmup_steps": -1}, "argument warmup_steps"),
        ({"label_smoothing": 1.0}, "argument label_smoothing"),
        ({"epochs": 0}, "argument epochs"),
        ({"minutes": 0}, "argument minutes"),
        ({"warmup_fraction": 0.0}, "argument warmup_fraction"),
        ({"minutes": float("nan")}, "argument minutes"),
        ({"minutes": None, "epochs": None}, "epochs or minutes"),
        ({"tokens_per_batch": 0}, "argument tokens_per_batch"),
        ({"tokens_per_batch": None, "batch_size": None}, "batch_size or tokens"),
        ({"bucket_width": 0}, "argument bucket_width"),
        ({"pack": "yes"}, "argument pack"),
        ({"pack": True, "tokens_per_batch": None}, "pack=True, tokens_per_batch=None"),
        ({"checkpoints_averaged": 0}, "argument checkpoints_averaged"),
        ({"average_every_n_steps": 0}, "argument average_every_n_steps"),
        ({"bleu_every_n_epochs": 0}, "argument bleu_every_n_epochs"),
        ({"beam_size": 0}, "argument beam_size"),
        ({"length_penalty": -1.0}, "argument length_penalty"),
        ({"precision": "bfloat16"}, "argument precision, expected one of None, 'auto', 'float32',"),
    ],
)
def test_bad_recipe_values_are_refused_naming_the_field(changes, match):
    with pytest.raises(ValueError, match=match):
        dataclasses.replace(recipes.CORPUS, **changes)


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"model": {"hidden_dim": 30, "num_heads": 4}}, "expected a multiple of num_heads=4. Received: hidden_dim=30"),
        ({"model": {"hidden_size": 128}}, "unknown TransformerConfig field 'hidden_size'. Did you mean 'hidden_dim'?"),
        ({"model": {"num_layers": 2}}, "Expected one of activation"),
        ({"model": {"dropout": 1.0}}, "argument dropout"),
        ({"model": {"activation": "relux"}}, "argument activation"),
        ({"model": {"position_encoding": "rotary", "hidden_dim": 12, "num_heads": 4}}, "to be even"),
        ({"model": {"num_key_value_heads": 3}}, "multiple of num_key_value_heads=3"),
        ({"model": {"share_embeddings": "yes"}}, "argument share_embeddings"),
        ({"model": {"source_vocabulary_size": 100}}, "from_texts takes the vocabulary sizes"),
        ({"model": {"padding_id": 0}}, "padding_id=0: from_texts takes"),
        ({"model": [("hidden_dim", 64)]}, "expected a dict of TransformerConfig fields"),
        ({"joint_vocabulary": "yes"}, "argument joint_vocabulary"),
        ({"joint_vocabulary": 1}, "argument joint_vocabulary"),
        ({"joint_vocabulary": None}, "argument joint_vocabulary"),
        ({"vocabulary_size": None}, "SentencePiece model has a fixed number of pieces"),
        ({"vocabulary_size": 4}, "more than the 4 special tokens"),
        ({"tokenizer_options": {"model_type": "word"}}, "argument model_type, expected one of 'unigram', 'bpe'"),
        ({"tokenizer_options": {"model_typ": "bpe"}}, "Did you mean 'model_type'?"),
        ({"tokenizer_options": {"character_coverage": 1.5}}, "argument character_coverage"),
        ({"tokenizer_options": {"byte_fallback": "no"}}, "argument byte_fallback"),
        ({"tokenizer_options": {"normalization": "nfd"}}, "argument normalization"),
        ({"tokenizer_options": {"lowercase": True}}, "unknown SentencePieceTokenizer.from_texts option 'lowercase'"),
        ({"tokenizer_options": {"vocabulary_size": 10}}, "Pass vocabulary_size= instead"),
        ({"tokenizer_options": "unigram"}, "argument tokenizer_options"),
        ({"tokenizer": "word", "tokenizer_options": {"model_type": "bpe"}}, "unknown WordTokenizer.from_texts option 'model_type'"),
        ({"tokenizer": "character", "tokenizer_options": {"min_frequency": 0}}, "argument min_frequency"),
        ({"tokenizer": "word", "tokenizer_options": {"lowercase": "yes"}}, "argument lowercase"),
    ],
)  # fmt: skip
def test_a_recipe_is_checked_against_the_config_and_tokenizer_when_made(changes, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        dataclasses.replace(recipes.CORPUS, **changes)


def test_a_recipe_check_accepts_what_from_texts_accepts():
    recipe = dataclasses.replace(
        recipes.DATE_TASK,
        tokenizer="word",
        tokenizer_options={"lowercase": False, "min_frequency": 2},
        model={**recipes.DATE_TASK.model, "position_encoding": "rotary"},
    )
    assert recipe.tokenizer_options["lowercase"] is False


@pytest.mark.parametrize(
    "sources, targets", [(["a"], None), (None, ["a"])]
)
def test_callbacks_refuse_held_out_sources_without_references(sources, targets):
    with pytest.raises(ValueError, match="valid_sources and valid_targets go together"):
        recipes.CORPUS.callbacks(lambda texts: texts, sources, targets)


def test_override_updates_model_fields_and_keeps_the_others():
    recipe = recipes.CORPUS.override(model={"hidden_dim": 64}, epochs=2)
    assert recipe.model == {**recipes.CORPUS.model, "hidden_dim": 64}
    assert recipe.epochs == 2 and recipes.CORPUS.epochs is None
    # dataclasses.replace, by contrast, replaces the whole mapping.
    assert dict(dataclasses.replace(recipes.CORPUS, model={"hidden_dim": 64}).model) == {
        "hidden_dim": 64
    }


def test_override_of_the_width_moves_the_learning_rate_unless_one_is_given():
    corpus_rate, width = recipes.CORPUS.learning_rate, recipes.CORPUS.model["hidden_dim"]
    wide = recipes.CORPUS.override(model={"hidden_dim": 2 * width, "num_heads": 8})
    # Half the rate at twice the width the recipe was tuned at.
    assert wide.learning_rate == pytest.approx(corpus_rate / 2)
    assert wide.override(model={"hidden_dim": width}).learning_rate == pytest.approx(corpus_rate)
    assert recipes.CORPUS.override(model={"num_encoder_layers": 1}).learning_rate == corpus_rate
    given = recipes.CORPUS.override(model={"hidden_dim": 2 * width}, learning_rate=1e-3)
    assert given.learning_rate == 1e-3
    # No rate: compile() takes the default of whatever width the model has.
    unset = recipes.CORPUS.override(learning_rate=None)
    assert unset.override(model={"hidden_dim": 2 * width}).learning_rate is None


def test_override_with_another_tokenizer_drops_the_recipes_tokenizer_options():
    assert recipes.CORPUS.override(tokenizer="word").tokenizer_options == {}
    same = recipes.CORPUS.override(tokenizer="sentencepiece")
    assert same.tokenizer_options == recipes.CORPUS.tokenizer_options
    chosen = recipes.CORPUS.override(tokenizer="word", tokenizer_options={"lowercase": True})
    assert chosen.tokenizer_options == {"lowercase": True}


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"model": {"hidden_dim": 30}}, "expected a multiple of num_heads=8. Received: hidden_dim=30"),
        ({"model": [("hidden_dim", 64)]}, "expected a dict of TransformerConfig fields"),
        ({"epochs": 0}, "argument epochs"),
        ({"vocabulary_size": 3}, "more than the 4 special tokens"),
    ],
)  # fmt: skip
def test_override_checks_the_new_recipe(changes, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        recipes.CORPUS.override(**changes)


def test_a_translator_from_the_recipe_has_its_tokenizer_and_model(tiny_recipe, date_texts):
    from keras_transformer import data

    translator = tiny_recipe.translator_from_texts(*date_texts, name="dates")
    assert translator.name == "dates"
    assert isinstance(translator.source_tokenizer, data.CharacterTokenizer)
    assert translator.source_tokenizer is not translator.target_tokenizer
    for field, value in TINY_MODEL.items():
        assert getattr(translator.config, field) == value
    assert translator.config.dropout == recipes.DATE_TASK.model["dropout"]
    assert not translator.compiled


@pytest.mark.parametrize("bfloat16_cpus", [True, False])
def test_auto_precision_is_mixed_bfloat16_only_on_cpus_that_multiply_it_natively(
    bfloat16_cpus, monkeypatch, tiny_recipe, date_texts
):
    monkeypatch.setattr(
        distribute, "trains_on_bfloat16_cpus", lambda strategy=None: bfloat16_cpus
    )
    auto = tiny_recipe.override(precision="auto")
    expected = "mixed_bfloat16" if bfloat16_cpus else None
    assert auto.dtype_policy() == expected
    translator = auto.translator_from_texts(*date_texts)
    assert training.layers_policy_name(translator) == (expected or "float32")
    # A policy the recipe or the caller names is taken as it is.
    assert tiny_recipe.override(precision="mixed_float16").dtype_policy() == "mixed_float16"
    assert tiny_recipe.dtype_policy() is None
    named = auto.translator_from_texts(*date_texts, dtype="float32")
    assert training.layers_policy_name(named) == "float32"


def test_only_the_corpus_recipe_chooses_its_precision_by_machine():
    assert recipes.CORPUS.precision == "auto"
    assert recipes.DATE_TASK.precision is None


def test_a_joint_vocabulary_recipe_shares_one_tokenizer(tiny_recipe, date_texts):
    joint = tiny_recipe.override(joint_vocabulary=True, vocabulary_size=30)
    translator = joint.translator_from_texts(*date_texts)
    assert translator.source_tokenizer is translator.target_tokenizer
    assert translator.source_tokenizer.vocabulary_size <= 30
    assert translator.config.share_embeddings


def test_compile_uses_the_recipes_schedule_and_label_smoothing(tiny_recipe, date_texts):
    from keras_transformer import _compat, schedules

    translator = tiny_recipe.translator_from_texts(*date_texts)
    assert tiny_recipe.compile(translator, total_steps=10) is translator
    schedule = _compat.learning_rate_schedule(translator.optimizer)
    assert isinstance(schedule, schedules.WarmupCosineDecay)
    assert schedule.peak_learning_rate == tiny_recipe.learning_rate
    assert (schedule.warmup_steps, schedule.total_steps) == (2, 10)
    # Two updates of linear warm-up to the peak, then half a cosine to 0
    # over the 8 remaining steps (step 0 is the first update).
    peak = tiny_recipe.learning_rate
    for step, rate in ((0, peak / 2), (1, peak), (6, peak / 2), (10, 0.0)):
        assert float(schedule(step)) == pytest.approx(rate, abs=1e-9), step
    assert translator.loss.label_smoothing == tiny_recipe.label_smoothing


def test_compile_passes_other_options_to_the_translator(tiny_recipe, date_texts):
    translator = tiny_recipe.translator_from_texts(*date_texts)
    tiny_recipe.compile(translator, jit_compile=False, steps_per_execution=3)
    assert translator.jit_compile is False and translator.steps_per_execution == 3


def test_fit_options_train_a_translator_as_the_recipe_says(tiny_recipe, date_texts):
    from keras_transformer import _compat

    sources, targets = date_texts
    translator = tiny_recipe.compile(tiny_recipe.translator_from_texts(sources, targets))
    options = tiny_recipe.fit_options(translator)
    assert options == {
        "epochs": 1,
        "minutes": None,
        "batch_size": 16,
        "tokens_per_batch": None,
        "pack": False,
        "bucket_boundaries": None,
        "callbacks": [],
    }
    history = translator.fit(sources, targets, verbose=0, **options)
    # 48 pairs in batches of at most 16 pairs: at least 3 steps, one epoch.
    assert len(history.history["loss"]) == 1
    assert int(translator.optimizer.iterations) >= 3
    # The schedule was fitted to the run: it decays to 0 at its last step.
    schedule = _compat.learning_rate_schedule(translator.optimizer)
    assert schedule.total_steps == int(translator.optimizer.iterations)


def test_fit_options_give_the_recipes_buckets_and_callbacks(tiny_recipe, date_texts):
    recipe = tiny_recipe.override(
        tokens_per_batch=256, bucket_width=4, bleu_every_n_epochs=1, checkpoints_averaged=2
    )
    sources, targets = date_texts
    translator = recipe.translator_from_texts(sources, targets)
    options = recipe.fit_options(translator, sources[:2], targets[:2])
    longest = max(translator.max_source_length, translator.max_target_length)
    assert options["bucket_boundaries"] == recipe.bucket_boundaries(longest) != None
    assert options["tokens_per_batch"] == 256 and options["pack"] is False
    # A packing recipe fills rows instead of buckets.
    packed = recipe.override(pack=True).fit_options(translator)
    assert (packed["pack"], packed["bucket_boundaries"]) == (True, None)
    bleu, averaging = options["callbacks"]
    assert isinstance(bleu, callbacks.BleuEvaluation)
    assert bleu.references == targets[:2] and bleu.every_n_epochs == 1
    # The validation BLEU decodes with the translator, as one XLA program.
    assert bleu.decode_fn.func == translator.translate
    assert bleu.decode_fn.keywords == {"jit_compile": True}
    assert isinstance(averaging, callbacks.CheckpointAveraging)
    assert averaging.num_checkpoints == 2


def test_fit_options_batch_per_replica():
    import types

    two_replicas = types.SimpleNamespace(
        distribute_strategy=types.SimpleNamespace(num_replicas_in_sync=2),
        max_source_length=30,
        max_target_length=12,
        translate=lambda texts: texts,
    )
    options = recipes.CORPUS.fit_options(two_replicas)
    assert options["batch_size"] == 2 * recipes.CORPUS.batch_size
    assert options["tokens_per_batch"] == 2 * recipes.CORPUS.tokens_per_batch
    assert (options["epochs"], options["minutes"]) == (None, recipes.CORPUS.minutes)


def test_the_recipes_warm_up_fraction_is_the_schedules(tiny_recipe, date_texts):
    from keras_transformer import _compat

    recipe = tiny_recipe.override(warmup_steps=None, warmup_fraction=0.2)
    translator = recipe.compile(recipe.translator_from_texts(*date_texts))
    schedule = _compat.learning_rate_schedule(translator.optimizer)
    schedule.set_run(total_steps=100)
    assert schedule.resolved_warmup_steps() == 20
