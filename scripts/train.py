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
import datetime
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

from keras_transformer import distribute, evaluation, plotting  # noqa: E402
from keras_transformer.translation import adapter_training, flags, recipes  # noqa: E402
from keras_transformer.translation import run_record, text  # noqa: E402

REPOSITORY = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def build_parser():
    parser = argparse.ArgumentParser(prog="train.py", description=__doc__.split("\n\n")[0])
    flags.add_data_flags(parser)
    flags.add_recipe_flags(parser)
    fit = parser.add_argument_group("training")
    fit.add_argument("--seed", type=int, default=0)
    fit.add_argument(
        "--precision", choices=recipes.PRECISIONS,
        help="the layers' dtype policy (default: the recipe's; auto: "
        "mixed_bfloat16 on CPUs that multiply bfloat16 natively)",
    )  # fmt: skip
    fit.add_argument(
        "--jit-compile", choices=("auto", "on", "off"), default="auto",
        help="XLA for the train step; auto: on under a TPU, and for runs "
        "long enough to repay compiling one program per length bucket (packed "
        "rows: one per row length, two at most)",
    )  # fmt: skip
    fit.add_argument(
        "--static-shapes", action=argparse.BooleanOptionalAction,
        help="pad batches to their length bucket's top (few shapes, for XLA; "
        "default: when XLA is on)",
    )  # fmt: skip
    fit.add_argument("--strategy", choices=distribute.STRATEGY_NAMES, default="default")
    fit.add_argument("--tpu", help="TPU name or address for --strategy tpu/auto")
    fit.add_argument("--checkpoint-dir", help="checkpoint here; resume when present")
    fit.add_argument("--checkpoint-every", type=flags.positive_int, help="steps (default: epoch)")
    adapter_training.add_flags(parser)
    decode = parser.add_argument_group("output")
    decode.add_argument("--output-dir", default="saved_models")
    decode.add_argument("--name", help="output and log folder (dates or translator)")
    decode.add_argument("--log-dir", default="logs")
    decode.add_argument("--num-examples", type=int, default=5)
    decode.add_argument("--attention-plot", help="PNG of one head's cross-attention")
    decode.add_argument("--attention-layer", type=int, default=-1)
    decode.add_argument("--attention-head", type=int, default=0)
    return parser


def parse_args(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    flags.check_data_flags(parser, args)
    if args.base or args.adapter:
        adapter_training.check_flags(parser, args)
    args.name = args.name or args.adapter or ("translator" if args.corpus else "dates")
    check_arguments(parser, args)
    return args


def check_arguments(parser, args):
    """Refuses bad flags and unreadable corpora before anything is trained,
    argparse-style: the recipe the flags make is built and the files read."""
    try:
        base = recipes.CORPUS if args.corpus else recipes.DATE_TASK
        args.recipe = flags.recipe_from_flags(base, args)
    except ValueError as error:
        flags.usage_error(parser, error)
    for flag in ("checkpoint_dir", "output_dir", "log_dir"):
        path = getattr(args, flag)
        if path is not None and os.path.exists(path) and not os.path.isdir(path):
            parser.error(
                f"--{flag.replace('_', '-')}: {path} is a file; expected a folder "
                "(created when missing)"
            )
    if args.num_examples < 0:
        parser.error(f"--num-examples: expected 0 or more, received {args.num_examples}")
    flags.check_corpus_files(parser, args)


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


def main(argv=None):
    started = time.perf_counter()
    args = parse_args(argv)
    args.command = evaluation.portable_paths(
        "python scripts/train.py " + " ".join(sys.argv[1:] if argv is None else argv),
        REPOSITORY,
    )
    # Before any TensorFlow op: a multi-worker strategy configures the runtime.
    strategy = distribute.make_strategy(args.strategy, tpu=args.tpu)
    if args.adapter:
        return adapter_training.train(args, flags.pairs_from_flags(args), started)
    # A flag's value refused only once the data is read (a warm-up longer
    # than the whole run) is answered like any bad flag.
    try:
        with flags.usage_errors(build_parser()), chief_writes_outputs(args, strategy):
            code = train_and_export(args, strategy, started)
        # Every worker waits for the others, so none logs a coordination error.
        distribute.finish(strategy)
    except distribute.WorkerLostError as error:
        raise SystemExit(f"error: {error}") from None
    return code


def make_translator(args, train_sources, train_targets, strategy):
    """The recipe's translator, compiled, in the strategy's scope."""
    with strategy.scope():
        translator = args.recipe.translator_from_texts(
            train_sources, train_targets, name=args.name
        )
        # `fit` counts the run's steps and fits the schedule to them (a
        # warm-up longer than the run is refused before the first step); with
        # jit_compile="auto" it turns XLA on when the run repays it.
        jit = {"auto": "auto", "on": True, "off": False}[args.jit_compile]
        works = distribute.jit_compile_works(strategy)
        return args.recipe.compile(translator, jit_compile=jit if works else False)


def train_and_export(args, strategy, started):
    keras.utils.set_random_seed(args.seed)
    train_sources, train_targets, test_sources, test_targets = flags.pairs_from_flags(args)
    recipe = args.recipe
    translator = make_translator(args, train_sources, train_targets, strategy)
    tokenizers = (translator.source_tokenizer, translator.target_tokenizer)
    print(
        f"{'corpus' if args.corpus else 'date task'}: {len(train_sources)} training "
        f"and {len(test_sources)} held-out pairs; {type(tokenizers[0]).__name__} "
        f"vocabularies of {tokenizers[0].vocabulary_size} and "
        f"{tokenizers[1].vocabulary_size} tokens; {translator.count_params():,} "
        f"parameters; {strategy.num_replicas_in_sync} replica(s); "
        f"{run_record.run_length(recipe)} of training."
    )
    run_dir = os.path.join(args.log_dir, args.name)
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    # Batches, buckets, validation BLEU and checkpoint averaging: the recipe's.
    options = recipe.fit_options(translator, test_sources, test_targets)
    tensorboard = keras.callbacks.TensorBoard(os.path.join(run_dir, "tensorboard", stamp))
    fit_started, fit_cpu_started = time.perf_counter(), time.process_time()
    history = translator.fit(
        train_sources,
        train_targets,
        # A corpus is validated by BLEU (the recipe's callback); a loss on
        # the held-out pairs would compile one more program per bucket.
        validation_data=None if args.corpus else (test_sources, test_targets),
        seed=args.seed,
        checkpoint_dir=args.checkpoint_dir,
        checkpoint_every=args.checkpoint_every,
        static_shapes=args.static_shapes,
        verbose=2 if args.corpus else 1,
        **{**options, "callbacks": options["callbacks"] + [tensorboard]},
    )
    fit_seconds = time.perf_counter() - fit_started
    if distribute.is_chief(strategy):
        corpus = args.tsv or f"{args.source} -> {args.target}" if args.corpus else "date task"
        record = run_record.training_record(
            translator, recipe, history, options["callbacks"], seconds=fit_seconds,
            cpu_seconds=time.process_time() - fit_cpu_started, name=args.name,
            corpus=evaluation.portable_paths(corpus, REPOSITORY), command=args.command,
        )  # fmt: skip
        run_record.write(os.path.join(run_dir, "run.json"), record)
    curves = os.path.join(run_dir, "curves.png")
    plotting.plot_history(history.history, curves, title=f"{args.name}: training")

    held_out = len(test_sources)
    test_sources, test_targets = text.pairs_that_fit(translator, test_sources, test_targets)
    if len(test_sources) < held_out:
        print(f"Not scoring {held_out - len(test_sources)} held-out pairs longer than the model.")
    metric = "sacrebleu" if args.corpus else "exact_match"
    hypotheses = translator.translate(test_sources, **recipe.translate_options())
    if recipe.beam_size > 1 and args.corpus:
        greedy = translator.translate(test_sources)
        print(f"held-out {evaluation.score_summary(greedy, test_targets, metric)} (greedy)")

    output = os.path.join(args.output_dir, args.name)
    os.makedirs(output, exist_ok=True)
    translator.save(os.path.join(output, f"{args.name}.keras"))
    export_dir = translator.export(os.path.join(output, "serving"))
    reloaded = tf.saved_model.load(export_dir)
    examples = test_sources[: args.num_examples]
    served = reloaded.translate(tf.constant(examples or [""])).numpy()
    print(f"Translations by the reloaded export {export_dir}:")
    for source, translation, reference in zip(examples, served, test_targets):
        translation = translation.decode("utf-8")
        verdict = "ok" if translation == reference else f"reference: {reference!r}"
        print(f"  {source!r} -> {translation!r}  ({verdict})")
    if args.attention_plot and examples:
        (attention,) = translator.attention_scores(examples[:1], layer=args.attention_layer)
        plotting.plot_attention_map(attention, args.attention_head, args.attention_plot)
        print(f"Cross-attention heat-map: {args.attention_plot}")
    print(f"Curves: {curves}\nExport: {export_dir}")
    decoding = f"beam {recipe.beam_size}" if recipe.beam_size > 1 else "greedy"
    print(f"held-out {evaluation.score_summary(hypotheses, test_targets, metric)} ({decoding})")
    target = recipes.DATE_TASK_TARGET
    if not args.corpus and evaluation.exact_match(hypotheses, test_targets).rate < target:
        print(f"WARNING: below the {100 * target:.0f}% target of the date task.")
    print(
        f"wall time: {time.perf_counter() - started:.1f} s (training {fit_seconds:.1f} s)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
