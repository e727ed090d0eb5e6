"""The run record: what a training run did, as JSON.

`scripts/train.py` writes one for each run (`<log-dir>/<name>/run.json`);
`scripts/evaluate.py --run-record` records it beside the test scores, and
`scripts/quality_page.py` writes it into the run's section of
docs/quality.md (its recipe, training time, machine and validation BLEU).
"""

import json
import os
import platform

import keras

from keras_transformer import _files, callbacks, schedules
from keras_transformer._tensorflow import import_tensorflow
from keras_transformer.translation import training

tf = import_tensorflow(__name__)


def machine():
    """This machine and the versions it trains with, in a few words."""
    return (
        f"{platform.machine()} {os.cpu_count()} CPU cores, "
        f"TensorFlow {tf.__version__}, Keras {keras.__version__}"
    )


def load():
    """The load averages (1, 5 and 15 minutes) while the run ended."""
    return " ".join(f"{value:.2f}" for value in os.getloadavg())


def recipe_summary(recipe, translator):
    """The recipe of a run in one line (a section of docs/quality.md).

    Args:
        recipe: the `Recipe` the translator was made and trained with.
        translator: the trained `Translator`.

    Returns:
        A str such as `"sentencepiece 4000 joint; 2+2 layers, d 256, FFN
        1024, 8 heads, dropout 0.1 (attention 0.0), mixed_bfloat16; 30
        minutes, lr 0.0025 (warm-up 15% of the run), label smoothing 0.1,
        2048 tokens a batch (packed rows), average of 5 snapshots"`.
    """
    config = translator.config
    fraction = recipe.warmup_fraction or schedules.DEFAULT_WARMUP_FRACTION
    warmup = (
        f"{fraction:.0%} of the run"
        if recipe.warmup_steps is None
        else f"{recipe.warmup_steps} steps"
    )
    batches = (
        f"{recipe.tokens_per_batch} tokens a batch"
        if recipe.tokens_per_batch
        else f"{recipe.batch_size} pairs a batch"
    )
    if recipe.pack:
        batches += " (packed rows)"
    dropout = f"dropout {config.dropout}"
    own_rates = [
        f"{part} {rate}"
        for part, rate in (
            ("attention", config.attention_dropout),
            ("feed-forward", config.feed_forward_dropout),
        )
        if rate is not None and rate != config.dropout
    ]
    if own_rates:
        dropout += f" ({', '.join(own_rates)})"
    return (
        f"{recipe.tokenizer} {translator.source_tokenizer.vocabulary_size}"
        f"{' joint' if recipe.joint_vocabulary else ''}; "
        f"{config.num_encoder_layers}+{config.num_decoder_layers} layers, d "
        f"{config.hidden_dim}, FFN {config.intermediate_dim}, {config.num_heads} "
        f"heads, {dropout}, {training.layers_policy_name(translator)}; "
        f"{run_length(recipe)}, lr "
        f"{recipe.learning_rate} (warm-up {warmup}), label "
        f"smoothing {recipe.label_smoothing}, {batches}, average of "
        f"{recipe.checkpoints_averaged} snapshots"
    )


def run_length(recipe):
    """The length of the recipe's run: `"11 epochs"` or `"30 minutes"`."""
    if recipe.minutes is None:
        return f"{recipe.epochs} epochs"
    bound = "" if recipe.epochs is None else f" (at most {recipe.epochs} epochs)"
    return f"{recipe.minutes:g} minutes{bound}"


def training_record(
    translator, recipe, history, fit_callbacks, seconds, cpu_seconds, **fields
):
    """The record of a run that trained `translator` as `recipe` says.

    Args:
        translator: the trained `Translator`.
        recipe: its `Recipe`.
        history: the `keras.callbacks.History` its `fit` returned.
        fit_callbacks: the callbacks `fit` was given; the validation BLEU
            of a `BleuEvaluation` among them is recorded.
        seconds: float. Wall-clock seconds of `fit`.
        cpu_seconds: float. CPU seconds of `fit`.
        **fields: further entries (e.g. `name`, `corpus`, `command`: what
            was trained on, and how).

    Returns:
        A dict to `write`.

    Example:

    ```python
    options = recipe.fit_options(translator, valid_sources, valid_targets)
    history = translator.fit(sources, targets, **options)
    write("logs/run.json", training_record(
        translator, recipe, history, options["callbacks"], seconds=..., cpu_seconds=...,
        name="en_de"))
    ```
    """
    history = history.history
    bleu = [
        {key: score[key] for key in ("epoch", "bleu", "training_seconds")}
        for callback in fit_callbacks
        if isinstance(callback, callbacks.BleuEvaluation)
        for score in callback.scores
    ]
    speeds = zip(
        history.get("source_tokens_per_second", []),
        history.get("target_tokens_per_second", []),
    )
    return {
        **fields,
        "training_seconds": seconds,
        "cpu_seconds": cpu_seconds,
        "parameters": translator.count_params(),
        "recipe_summary": recipe_summary(recipe, translator),
        "load": load(),
        "machine": machine(),
        "val_bleu": bleu,
        "xla": bool(translator.jit_compile),
        "compile_seconds": sum(history.get("compile_seconds", [])),
        "tokens_per_second": [
            {"epoch": epoch, "source": source, "target": target}
            for epoch, (source, target) in enumerate(speeds, start=1)
        ],
    }


def write(path, record):
    """Writes `record` as JSON to `path` whole or not at all (its folder is
    made when missing) and says where."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with _files.atomic_write(path, "w", "the run record") as file:
        json.dump(record, file, indent=1)
    print(f"Run record: {path}")
