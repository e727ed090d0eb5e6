"""keras_transformer.translation.run_record: a training run as JSON."""

import json
import os

from keras_transformer import callbacks
from keras_transformer.translation import run_record


def test_the_recipe_summary_names_the_model_and_its_training(tiny_recipe, date_texts):
    translator = tiny_recipe.translator_from_texts(*date_texts)
    vocabulary = translator.source_tokenizer.vocabulary_size
    assert run_record.recipe_summary(tiny_recipe, translator) == (
        f"character {vocabulary}; 1+1 layers, d 16, FFN 32, 2 heads, dropout 0.0, "
        "float32; "
        "1 epochs, lr 0.002 (warm-up 2 steps), label smoothing 0.1, 16 pairs a "
        "batch, average of 1 snapshots"
    )
    budget = tiny_recipe.override(minutes=2.5, warmup_steps=None)
    assert "; 2.5 minutes (at most 1 epochs), lr 0.002 (warm-up 5% of the run)," in (
        run_record.recipe_summary(budget, translator)
    )
    by_tokens = tiny_recipe.override(tokens_per_batch=512, joint_vocabulary=True)
    assert "character" in run_record.recipe_summary(by_tokens, translator)
    assert " joint; " in run_record.recipe_summary(by_tokens, translator)
    assert "512 tokens a batch" in run_record.recipe_summary(by_tokens, translator)
    packed = by_tokens.override(pack=True)
    assert "512 tokens a batch (packed rows)," in run_record.recipe_summary(packed, translator)
    own_rates = tiny_recipe.override(
        model={"dropout": 0.1, "attention_dropout": 0.0, "feed_forward_dropout": 0.1}
    )
    assert ", dropout 0.1 (attention 0.0), " in run_record.recipe_summary(
        own_rates, own_rates.translator_from_texts(*date_texts)
    )


def test_a_run_is_recorded_with_its_bleu_speed_and_time(tiny_recipe, date_texts, tmp_path):
    sources, targets = date_texts
    recipe = tiny_recipe.override(bleu_every_n_epochs=1)
    translator = recipe.compile(recipe.translator_from_texts(sources, targets))
    options = recipe.fit_options(translator, sources[:3], targets[:3])
    history = translator.fit(sources, targets, verbose=0, **options)
    record = run_record.training_record(
        translator, recipe, history, options["callbacks"], seconds=1.5,
        cpu_seconds=2.5, name="tiny", corpus="date task",
    )  # fmt: skip
    (bleu,) = [c for c in options["callbacks"] if isinstance(c, callbacks.BleuEvaluation)]
    assert list(record)[:4] == ["name", "corpus", "training_seconds", "cpu_seconds"]
    assert record["val_bleu"] == [
        {key: bleu.scores[0][key] for key in ("epoch", "bleu", "training_seconds")}
    ]
    assert record["parameters"] == translator.count_params()
    assert record["recipe_summary"] == run_record.recipe_summary(recipe, translator)
    assert record["tokens_per_second"][0]["epoch"] == 1
    assert record["tokens_per_second"][0]["source"] > 0
    assert record["xla"] is False

    path = tmp_path / "logs" / "tiny" / "run.json"
    run_record.write(str(path), record)
    assert json.loads(path.read_text(encoding="utf-8")) == record
    # Written whole: nothing but the record in its new folder.
    assert os.listdir(path.parent) == ["run.json"]


def test_the_machine_names_tensorflow_and_keras():
    assert "TensorFlow" in run_record.machine() and "Keras" in run_record.machine()
    assert len(run_record.load().split()) == 3
