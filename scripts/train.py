"""Train a Translator, score it, save it, export it and reload the export.

With no arguments it learns the built-in synthetic date task ("the 5th of
March, 2021" -> "2021-03-05") and reaches at least 99% exact match on
held-out dates in about a minute and a half on a 2-core CPU:

    python scripts/train.py

On a real parallel corpus it uses the library's corpus recipe (SentencePiece
subwords, see keras_transformer.translation.recipes) and reports sacreBLEU:

    python scripts/train.py --source train.en --target train.de \\
        --valid-source val.en --valid-target val.de --name en_de

With --base and --adapter it fine-tunes a named LoRA adapter of a trained
translator on the corpus instead (the base stays as it is) and writes the
adapter file, `<output-dir>/<name>/<adapter>.npz`, and a run record:

    python scripts/train.py --base saved_models/en_de/en_de.keras \
        --adapter medical --adapter-rank 8 --source med.en --target med.de

Every TransformerConfig field is a flag of the same name (--hidden-dim,
--num-encoder-layers, --remat, ...). Writes TensorBoard logs and a PNG of
the curves under `<log-dir>/<name>/`, the `.keras` file and the SavedModel
versions under `<output-dir>/<name>/`, then reloads the export and prints
some of its translations.
"""

import argparse
import contextlib
import dataclasses
import datetime
import functools
import json
import os
import platform
import random
import re
import sys
import time
import typing

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

from keras_transformer import _files, callbacks, data, distribute  # noqa: E402
from keras_transformer import evaluation, plotting  # noqa: E402
from keras_transformer.models import TransformerConfig  # noqa: E402
from keras_transformer.translation import Translator, adapter_training, recipes  # noqa: E402

REPOSITORY = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The default run must reach this held-out exact match on the date task.
DATE_TASK_TARGET = 0.99
DATE_TASK_NUM_TRAIN = 20000
DATE_TASK_NUM_TEST = 1000
# Held out of a corpus given without validation files (at most a tenth).
CORPUS_NUM_TEST = 1000
PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16")
# Set from the data, not by flags.
DERIVED_FIELDS = ("source_vocabulary_size", "target_vocabulary_size", "padding_id")


def add_config_flags(parser):
    """One flag per TransformerConfig field, named like it; unset flags
    leave the recipe's value."""
    group = parser.add_argument_group("model (TransformerConfig fields)")
    hints = typing.get_type_hints(TransformerConfig)
    for field in dataclasses.fields(TransformerConfig):
        if field.name in DERIVED_FIELDS:
            continue
        kind = typing.get_args(hints[field.name]) or (hints[field.name],)
        flag = "--" + field.name.replace("_", "-")
        if kind[0] is bool:
            group.add_argument(flag, action=argparse.BooleanOptionalAction)
        else:
            group.add_argument(flag, type=kind[0], metavar=kind[0].__name__.upper())


def build_parser():
    parser = argparse.ArgumentParser(prog="train.py", description=__doc__.split("\n\n")[0])
    corpus = parser.add_argument_group("data (the date task unless a corpus is given)")
    corpus.add_argument("--tsv", help="training pairs, 'source<TAB>target' a line")
    corpus.add_argument("--source", help="training sources, one per line")
    corpus.add_argument("--target", help="training targets, aligned with --source")
    corpus.add_argument("--valid-tsv", help="validation pairs as TSV")
    corpus.add_argument("--valid-source", help="validation sources")
    corpus.add_argument("--valid-target", help="validation targets")
    corpus.add_argument("--num-train", type=positive_int, help="first N training pairs")
    corpus.add_argument("--num-test", type=positive_int, help="held-out pairs")
    corpus.add_argument("--tokenizer", choices=recipes.TOKENIZERS)
    corpus.add_argument("--vocabulary-size", type=positive_int)
    corpus.add_argument("--joint-vocabulary", action=argparse.BooleanOptionalAction)
    add_config_flags(parser)
    fit = parser.add_argument_group("training (defaults: the recipe's)")
    fit.add_argument("--epochs", type=positive_int)
    fit.add_argument("--batch-size", type=positive_int, help="pairs per replica")
    fit.add_argument("--learning-rate", type=float, help="peak Adam learning rate")
    fit.add_argument("--warmup-steps", type=int)
    fit.add_argument("--label-smoothing", type=float)
    fit.add_argument("--seed", type=int, default=0)
    fit.add_argument("--precision", choices=PRECISIONS, default="float32")
    fit.add_argument(
        "--jit-compile", choices=("auto", "on", "off"), default="auto",
        help="XLA for the train step; auto: on under a TPU, and for runs "
        "long enough to repay compiling one program per length bucket",
    )  # fmt: skip
    fit.add_argument(
        "--static-shapes", action=argparse.BooleanOptionalAction,
        help="pad batches to their length bucket's top (few shapes, for XLA; "
        "default: when XLA is on)",
    )  # fmt: skip
    fit.add_argument("--strategy", choices=distribute.STRATEGY_NAMES, default="default")
    fit.add_argument("--tpu", help="TPU name or address for --strategy tpu/auto")
    fit.add_argument("--checkpoint-dir", help="checkpoint here; resume when present")
    fit.add_argument("--checkpoint-every", type=positive_int, help="steps (default: epoch)")
    adapter = parser.add_argument_group("LoRA adapter (fine-tune a trained model)")
    adapter.add_argument("--base", help="the trained translator (.keras) to adapt")
    adapter.add_argument("--adapter", help="name of the adapter to train")
    adapter.add_argument("--adapter-rank", type=positive_int, default=8)
    adapter.add_argument("--adapter-alpha", type=float, help="default: 2 * rank")
    adapter.add_argument(
        "--adapter-target", action="append",
        help="layer path pattern (repeatable); default: attention query/value",
    )  # fmt: skip
    decode = parser.add_argument_group("decoding and output")
    decode.add_argument("--beam-size", type=positive_int, help="score with beam search")
    decode.add_argument("--length-penalty", type=float)
    decode.add_argument("--output-dir", default="saved_models")
    decode.add_argument("--name", help="output and log folder (dates or translator)")
    decode.add_argument("--log-dir", default="logs")
    decode.add_argument("--num-examples", type=int, default=5)
    decode.add_argument("--attention-plot", help="PNG of one head's cross-attention")
    decode.add_argument("--attention-layer", type=int, default=-1)
    decode.add_argument("--attention-head", type=int, default=0)
    return parser


def positive_int(text):
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
    return value


def parse_args(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.tsv and (args.source or args.target):
        parser.error("give either --tsv or --source/--target, not both")
    if bool(args.source) != bool(args.target):
        parser.error("--source and --target go together")
    if bool(args.valid_source) != bool(args.valid_target):
        parser.error("--valid-source and --valid-target go together")
    if args.valid_tsv and args.valid_source:
        parser.error("give either --valid-tsv or --valid-source/--valid-target")
    args.corpus = bool(args.tsv or args.source)
    if not args.corpus and (args.valid_tsv or args.valid_source):
        parser.error("validation files need a training corpus (--tsv or --source)")
    for flag in ("tsv", "source", "target", "valid_tsv", "valid_source", "valid_target"):
        path = getattr(args, flag)
        if path is not None and not os.path.isfile(path):
            parser.error(f"--{flag.replace('_', '-')}: no such file: {path}")
    args.recipe = recipes.CORPUS if args.corpus else recipes.DATE_TASK
    if args.base or args.adapter:
        adapter_training.check_flags(parser, args)
    args.name = args.name or args.adapter or ("translator" if args.corpus else "dates")
    check_arguments(parser, args)
    return args


# Recipe fields that are flags of the same name.
RECIPE_FLAGS = ("tokenizer", "vocabulary_size", "joint_vocabulary", "learning_rate",
                "warmup_steps", "label_smoothing", "epochs", "batch_size",
                "beam_size", "length_penalty")  # fmt: skip


def flag_message(parser, error):
    """The library's `ValueError` as `--flag: expected ..., received ...`
    for the flag of the argument it names; None when it names no flag."""
    message = str(error)
    flags = {option for action in parser._actions for option in action.option_strings}
    match = re.match(
        r"Received an invalid value for argument (\w+), expected (.*?)\. "
        r"Received: \1=(.*?)(?:\. (.*))?$",
        message,
        re.DOTALL,
    )
    if match:
        name, expected, received, hint = match.groups()
        message = f"expected {expected}, received {received}" + (
            f". {hint}" if hint else ""
        )
        names = [name]
    else:
        names = re.findall(r"(\w+)=", message)
    for name in names:
        flag = "--" + name.replace("_", "-")
        if flag in flags:
            return f"{flag}: {message}"
    return None


def flag_error(parser, error):
    """Exits argparse-style (status 2, one line) with the library's error."""
    parser.error(flag_message(parser, error) or str(error))


def check_arguments(parser, args):
    """Refuses bad flags and unreadable corpora before anything is trained,
    argparse-style: the recipe the flags make is built and the files read."""
    overrides = {name: getattr(args, name) for name in RECIPE_FLAGS
                 if getattr(args, name, None) is not None}  # fmt: skip
    model = {
        field.name: getattr(args, field.name)
        for field in dataclasses.fields(TransformerConfig)
        if getattr(args, field.name, None) is not None
    }
    tokenizer = overrides.get("tokenizer", args.recipe.tokenizer)
    try:
        dataclasses.replace(
            args.recipe,
            **overrides,
            model={**args.recipe.model, **model},
            # The recipe's tokenizer options fit the recipe's tokenizer only.
            tokenizer_options=(
                args.recipe.tokenizer_options if tokenizer == args.recipe.tokenizer else {}
            ),
        )
    except ValueError as error:
        flag_error(parser, error)
    for flag in ("checkpoint_dir", "output_dir", "log_dir"):
        path = getattr(args, flag)
        if path is not None and os.path.exists(path) and not os.path.isdir(path):
            parser.error(
                f"--{flag.replace('_', '-')}: {path} is a file; expected a folder "
                "(created when missing)"
            )
    if args.num_examples < 0:
        parser.error(f"--num-examples: expected 0 or more, received {args.num_examples}")
    corpora = [("--tsv", args.tsv, None), ("--valid-tsv", args.valid_tsv, None),
               ("--source/--target", args.source, args.target),
               ("--valid-source/--valid-target", args.valid_source, args.valid_target)]  # fmt: skip
    for flags, path, target_path in corpora:
        if path is None:
            continue
        try:
            if target_path is None:
                sources, _ = data.read_tsv(path)
            else:
                sources, _ = data.read_parallel_files(path, target_path)
        except ValueError as error:
            parser.error(f"{flags}: {error}")
        if not any(sources):
            parser.error(f"{flags}: {path} holds no {'pairs' if target_path is None else 'text'}")


def recipe_value(args, name):
    """The flag's value when given, else the recipe's."""
    value = getattr(args, name, None)
    return getattr(args.recipe, name) if value is None else value


def load_pairs(args):
    """Returns (train_sources, train_targets, test_sources, test_targets)."""
    if not args.corpus:
        train, test = data.date_task_splits(
            args.num_train or DATE_TASK_NUM_TRAIN,
            args.num_test or DATE_TASK_NUM_TEST,
            seed=args.seed,
        )
        return (*map(list, zip(*train)), *map(list, zip(*test)))
    read = data.read_parallel_files
    train = data.read_tsv(args.tsv) if args.tsv else read(args.source, args.target)
    pairs = list(zip(*train))
    if args.valid_tsv or args.valid_source:
        valid = (
            data.read_tsv(args.valid_tsv)
            if args.valid_tsv
            else read(args.valid_source, args.valid_target)
        )
        test = list(zip(*valid))
    else:
        random.Random(args.seed).shuffle(pairs)
        held_out = args.num_test or min(CORPUS_NUM_TEST, max(1, len(pairs) // 10))
        test, pairs = pairs[:held_out], pairs[held_out:]
    pairs = pairs[: args.num_train] if args.num_train else pairs
    test = test[: args.num_test] if args.num_test else test
    if not pairs or not test:
        raise SystemExit("error: no training or no held-out pairs")
    return (*map(list, zip(*pairs)), *map(list, zip(*test)))


@contextlib.contextmanager
def chief_writes_outputs(args, strategy):
    """Sends a non-chief worker's outputs to scratch space, deleted at the end
    (every worker runs the whole script, as in TensorFlow's tutorial)."""
    with contextlib.ExitStack() as stack:
        for flag in ("output_dir", "log_dir", "attention_plot"):
            path = getattr(args, flag)
            if path is not None:
                scratch = distribute.chief_output_dir(path, strategy)
                setattr(args, flag, stack.enter_context(scratch))
        yield


def make_translator(args, train_sources, train_targets, strategy):
    config = {
        field.name: getattr(args, field.name)
        for field in dataclasses.fields(TransformerConfig)
        if getattr(args, field.name, None) is not None
    }
    with strategy.scope():
        translator = Translator.from_texts(
            train_sources,
            train_targets,
            tokenizer=recipe_value(args, "tokenizer"),
            vocabulary_size=recipe_value(args, "vocabulary_size"),
            joint_vocabulary=recipe_value(args, "joint_vocabulary"),
            # The recipe's tokenizer options fit the recipe's tokenizer only.
            tokenizer_options=(
                dict(args.recipe.tokenizer_options)
                if recipe_value(args, "tokenizer") == args.recipe.tokenizer
                else None
            ),
            dtype=args.precision,
            name=args.name,
            **{**args.recipe.model, **config},
        )
        # `fit` counts the run's steps and fits the schedule to them (a
        # warm-up longer than the run is refused before the first step); with
        # jit_compile="auto" it turns XLA on when the run repays it.
        jit = {"auto": "auto", "on": True, "off": False}[args.jit_compile]
        translator.compile(
            learning_rate=recipe_value(args, "learning_rate"),
            warmup_steps=recipe_value(args, "warmup_steps"),
            label_smoothing=recipe_value(args, "label_smoothing"),
            jit_compile=jit if distribute.jit_compile_works(strategy) else False,
        )
    return translator


def batching(args, translator):
    """How batches are made: pairs per batch given with --batch-size, else
    the recipe's (tokens per batch for a corpus), in its length buckets."""
    longest = max(translator.max_source_length, translator.max_target_length)
    tokens = None if args.batch_size else args.recipe.tokens_per_batch
    return dict(
        batch_size=args.global_batch_size,
        tokens_per_batch=tokens and tokens * args.replicas,
        bucket_boundaries=args.recipe.bucket_boundaries(longest),
        static_shapes=args.static_shapes,
    )


def score(args, hypotheses, references):
    """Returns (lines to print, whether the date task missed its target)."""
    if not args.corpus:
        match = evaluation.exact_match(hypotheses, references)
        return [f"held-out exact match: {match}"], match.rate < DATE_TASK_TARGET
    cased = evaluation.corpus_bleu(hypotheses, references)
    lower = evaluation.corpus_bleu(hypotheses, references, lowercase=True)
    chrf = evaluation.corpus_chrf(hypotheses, references)
    return [
        f"held-out sacreBLEU (13a): {cased.score:.2f} cased, {lower.score:.2f} "
        f"lowercased; chrF {chrf.score:.2f}"
    ], False


def main(argv=None):
    started = time.perf_counter()
    args = parse_args(argv)
    args.command = evaluation.portable_paths(
        "python scripts/train.py " + " ".join(sys.argv[1:] if argv is None else argv),
        REPOSITORY,
    )
    # Before any TensorFlow op: a multi-worker strategy configures the runtime.
    strategy = distribute.make_strategy(args.strategy, tpu=args.tpu)
    batch_size = recipe_value(args, "batch_size")
    args.global_batch_size = distribute.global_batch_size(batch_size, strategy)
    args.replicas = strategy.num_replicas_in_sync
    if args.adapter:
        return adapter_training.train(args, load_pairs(args), score, started)
    try:
        with chief_writes_outputs(args, strategy):
            code = train_and_export(args, strategy, started)
        # Every worker waits for the others, so none logs a coordination error.
        distribute.finish(strategy)
    except distribute.WorkerLostError as error:
        raise SystemExit(f"error: {error}") from None
    except ValueError as error:
        # A flag's value refused only once the data is read (a warm-up
        # longer than the whole run): answered like any bad flag.
        parser = build_parser()
        if flag_message(parser, error) is None:
            raise
        flag_error(parser, error)
    return code


def write_run_record(
    path, args, translator, fit_seconds, fit_cpu_seconds, bleu_scores, history
):
    """The JSON `scripts/evaluate.py --run-record` reads for docs/quality.md."""
    corpus = evaluation.portable_paths(
        args.tsv or f"{args.source} -> {args.target}" if args.corpus else "date task",
        REPOSITORY,
    )
    recipe = args.recipe
    record = {
        "name": args.name,
        "corpus": corpus,
        "command": args.command,
        "training_seconds": fit_seconds,
        "cpu_seconds": fit_cpu_seconds,
        "parameters": translator.count_params(),
        "recipe_summary": (
            f"{recipe_value(args, 'tokenizer')} "
            f"{translator.source_tokenizer.vocabulary_size}"
            f"{' joint' if recipe_value(args, 'joint_vocabulary') else ''}; "
            f"{translator.config.num_encoder_layers}+"
            f"{translator.config.num_decoder_layers} layers, d "
            f"{translator.config.hidden_dim}, FFN "
            f"{translator.config.intermediate_dim}, {translator.config.num_heads} "
            f"heads, dropout {translator.config.dropout}; "
            f"{recipe_value(args, 'epochs')} epochs, lr "
            f"{recipe_value(args, 'learning_rate')} (warm-up "
            f"{recipe_value(args, 'warmup_steps')}), label smoothing "
            f"{recipe_value(args, 'label_smoothing')}, "
            + (
                f"{args.batch_size} pairs a batch"
                if args.batch_size
                else f"{recipe.tokens_per_batch} tokens a batch"
            )
            + f", average of {recipe.checkpoints_averaged} snapshots"
        ),
        "load": " ".join(f"{value:.2f}" for value in os.getloadavg()),
        "machine": f"{platform.machine()} {os.cpu_count()} CPU cores, "
        f"TensorFlow {tf.__version__}, Keras {keras.__version__}",
        "val_bleu": [
            {key: score[key] for key in ("epoch", "bleu", "training_seconds")}
            for score in bleu_scores
        ],
        "xla": bool(translator.jit_compile),
        "compile_seconds": sum(history.get("compile_seconds", [])),
        "tokens_per_second": [
            {"epoch": epoch, "source": source, "target": target}
            for epoch, (source, target) in enumerate(
                zip(
                    history.get("source_tokens_per_second", []),
                    history.get("target_tokens_per_second", []),
                ),
                start=1,
            )
        ],
    }
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with _files.atomic_write(path, "w", "the run record") as file:
        json.dump(record, file, indent=1)
    print(f"Run record: {path}")


def train_and_export(args, strategy, started):
    keras.utils.set_random_seed(args.seed)
    train_sources, train_targets, test_sources, test_targets = load_pairs(args)
    translator = make_translator(args, train_sources, train_targets, strategy)
    tokenizers = (translator.source_tokenizer, translator.target_tokenizer)
    print(
        f"{'corpus' if args.corpus else 'date task'}: {len(train_sources)} training "
        f"and {len(test_sources)} held-out pairs; {type(tokenizers[0]).__name__} "
        f"vocabularies of {tokenizers[0].vocabulary_size} and "
        f"{tokenizers[1].vocabulary_size} tokens; {translator.count_params():,} "
        f"parameters; {strategy.num_replicas_in_sync} replica(s)."
    )
    run_dir = os.path.join(args.log_dir, args.name)
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    # Validation BLEU (greedy) and checkpoint averaging as the recipe says.
    # Decoded as one XLA program: once compiled, several times faster than
    # the traced loop, which matters for a BLEU score every epoch.
    recipe_callbacks = args.recipe.callbacks(
        functools.partial(translator.translate, jit_compile=True),
        test_sources,
        test_targets,
    )
    fit_started, fit_cpu_started = time.perf_counter(), time.process_time()
    history = translator.fit(
        train_sources,
        train_targets,
        epochs=recipe_value(args, "epochs"),
        # A corpus is validated by BLEU (the recipe's callback); a loss on
        # the held-out pairs would compile one more program per bucket.
        validation_data=None if args.corpus else (test_sources, test_targets),
        seed=args.seed,
        checkpoint_dir=args.checkpoint_dir,
        checkpoint_every=args.checkpoint_every,
        callbacks=recipe_callbacks
        + [keras.callbacks.TensorBoard(os.path.join(run_dir, "tensorboard", stamp))],
        **batching(args, translator),
        verbose=2 if args.corpus else 1,
    )
    fit_seconds = time.perf_counter() - fit_started
    if distribute.is_chief(strategy):
        write_run_record(
            os.path.join(run_dir, "run.json"),
            args,
            translator,
            fit_seconds=fit_seconds,
            fit_cpu_seconds=time.process_time() - fit_cpu_started,
            bleu_scores=[
                score
                for callback in recipe_callbacks
                if isinstance(callback, callbacks.BleuEvaluation)
                for score in callback.scores
            ],
            history=history.history,
        )
    curves = os.path.join(run_dir, "curves.png")
    plotting.plot_history(history.history, curves, title=f"{args.name}: training")

    fits = [len(ids) <= translator.max_source_length
            for ids in tokenizers[0].tokenize(test_sources).to_list()]  # fmt: skip
    if not all(fits):
        print(f"Not scoring {fits.count(False)} held-out pairs longer than the model.")
    test_sources = [text for text, ok in zip(test_sources, fits) if ok]
    test_targets = [text for text, ok in zip(test_targets, fits) if ok]
    beam = recipe_value(args, "beam_size")
    penalty = recipe_value(args, "length_penalty")
    options = dict(method="beam", beam_size=beam, length_penalty=penalty)
    hypotheses = translator.translate(test_sources, **(options if beam > 1 else {}))
    if beam > 1 and args.corpus:
        greedy_lines, _ = score(args, translator.translate(test_sources), test_targets)
        print("\n".join(greedy_lines) + " (greedy)")
    lines, missed_target = score(args, hypotheses, test_targets)

    output = os.path.join(args.output_dir, args.name)
    os.makedirs(output, exist_ok=True)
    translator.save(os.path.join(output, f"{args.name}.keras"))
    export_dir = translator.export(os.path.join(output, "serving"))
    reloaded = tf.saved_model.load(export_dir)
    examples = test_sources[: args.num_examples]
    served = reloaded.translate(tf.constant(examples or [""])).numpy()
    print(f"Translations by the reloaded export {export_dir}:")
    for source, text, reference in zip(examples, served, test_targets):
        text = text.decode("utf-8")
        verdict = "ok" if text == reference else f"reference: {reference!r}"
        print(f"  {source!r} -> {text!r}  ({verdict})")
    if args.attention_plot and examples:
        (attention,) = translator.attention_scores(examples[:1], layer=args.attention_layer)
        plotting.plot_attention_map(attention, args.attention_head, args.attention_plot)
        print(f"Cross-attention heat-map: {args.attention_plot}")
    print(f"Curves: {curves}\nExport: {export_dir}")
    print("\n".join(lines) + f" ({'beam ' + str(beam) if beam > 1 else 'greedy'})")
    if missed_target:
        print(f"WARNING: below the {100 * DATE_TASK_TARGET:.0f}% target of the date task.")
    print(
        f"wall time: {time.perf_counter() - started:.1f} s (training {fit_seconds:.1f} s)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
