"""Train an encoder-decoder Transformer, evaluate it, export it and reload it.

With no arguments it learns the built-in synthetic date task ("the 5th of
March, 2021" -> "2021-03-05") and should reach at least 99% exact match on
held-out dates in a few minutes on a laptop CPU:

    python scripts/train.py

On a real parallel corpus (word tokenizers, BLEU on the validation set):

    python scripts/train.py --source train.en --target train.de \\
        --valid-source val.en --valid-target val.de --name en_de \\
        --hidden-dim 256 --ffn-dim 1024 --heads 8 --dropout 0.1 --epochs 10

Writes TensorBoard logs and a PNG of the curves under `<log-dir>/<name>/`,
the SavedModel under `<output-dir>/<name>/` (see
`keras_transformer.export`), reloads that export and prints some of its
translations of held-out inputs.
"""

import argparse
import contextlib
import datetime
import math
import os
import random
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

from keras_transformer import data, export, losses, metrics, models  # noqa: E402
from keras_transformer import training  # noqa: E402
from keras_transformer import distribute  # noqa: E402
from keras_transformer import checkpointing  # noqa: E402
from keras_transformer.layers.residual import NORM_PLACEMENTS  # noqa: E402
from keras_transformer.models.transformer import POSITION_ENCODINGS  # noqa: E402

# The default run must reach this held-out exact match on the date task.
DATE_TASK_TARGET = 0.99
DATE_TASK_NUM_TRAIN = 20000
DATE_TASK_NUM_TEST = 1000
# Held out of a corpus given without validation files (at most a tenth).
CORPUS_NUM_TEST = 1000


def positive_int(text):
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
    return value


def non_negative_int(text):
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {text}")
    return value


def rate(text):
    value = float(text)
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1), got {text}")
    return value


def positive_float(text):
    value = float(text)
    if not 0.0 < value < math.inf:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text}")
    return value


def build_parser():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    corpus = parser.add_argument_group(
        "data", "the synthetic date task unless a corpus is given"
    )
    corpus.add_argument(
        "--tsv", metavar="PATH", help="training pairs, one 'source<TAB>target' a line"
    )
    corpus.add_argument(
        "--source", metavar="PATH", help="training sources, one per line"
    )
    corpus.add_argument(
        "--target", metavar="PATH", help="training targets, line-aligned with --source"
    )
    corpus.add_argument("--valid-tsv", metavar="PATH", help="validation pairs as TSV")
    corpus.add_argument("--valid-source", metavar="PATH", help="validation sources")
    corpus.add_argument("--valid-target", metavar="PATH", help="validation targets")
    corpus.add_argument(
        "--num-train",
        type=positive_int,
        help=f"training pairs (date task: {DATE_TASK_NUM_TRAIN}; corpus: the first "
        "N, default all)",
    )
    corpus.add_argument(
        "--num-test",
        type=positive_int,
        help=f"held-out pairs (date task: {DATE_TASK_NUM_TEST}; corpus: the first N "
        "validation pairs, default all; without validation files, N random "
        f"pairs held out of the corpus, default {CORPUS_NUM_TEST} or a tenth)",
    )
    corpus.add_argument(
        "--tokenizer",
        choices=("character", "word"),
        help="default: character for the date task, word for a corpus",
    )
    corpus.add_argument(
        "--min-frequency",
        type=positive_int,
        help="drop rarer training tokens (default: 1 for character, 2 for word)",
    )
    corpus.add_argument(
        "--max-vocabulary-size", type=positive_int, help="cap each vocabulary"
    )
    corpus.add_argument(
        "--max-length",
        type=positive_int,
        help="longest source and decoder sequence (target + 1) in tokens; longer "
        "training pairs are dropped (default: the longest pair in the data)",
    )

    model = parser.add_argument_group("model")
    model.add_argument(
        "--layers",
        type=positive_int,
        default=2,
        help="encoder and decoder blocks each (default %(default)s)",
    )
    model.add_argument(
        "--hidden-dim", type=positive_int, default=64, help="d_model (default 64)"
    )
    model.add_argument(
        "--heads", type=positive_int, default=4, help="attention heads (default 4)"
    )
    model.add_argument(
        "--ffn-dim",
        type=positive_int,
        default=256,
        help="feed-forward hidden size (default 256)",
    )
    model.add_argument("--dropout", type=rate, default=0.0, help="(default 0)")
    model.add_argument(
        "--norm-placement", choices=NORM_PLACEMENTS, default="pre", help="(default pre)"
    )
    model.add_argument(
        "--position-encoding",
        choices=POSITION_ENCODINGS,
        default="sinusoidal",
        help="(default sinusoidal)",
    )

    fit = parser.add_argument_group("training")
    fit.add_argument("--epochs", type=positive_int, default=5, help="(default 5)")
    fit.add_argument(
        "--batch-size",
        type=positive_int,
        default=64,
        help="examples per replica and step: each step takes a global batch of "
        "this times the number of replicas of --strategy (default 64)",
    )
    fit.add_argument(
        "--learning-rate",
        type=positive_float,
        default=5e-3,
        help="peak Adam learning rate, reached after the warm-up and then "
        "cosine-decayed to 0 at the last step (default %(default)s)",
    )
    fit.add_argument(
        "--warmup-steps",
        type=non_negative_int,
        default=300,
        help="linear warm-up steps, at most half of all steps (default %(default)s)",
    )
    fit.add_argument("--label-smoothing", type=rate, default=0.0, help="(default 0)")
    fit.add_argument(
        "--seed",
        type=non_negative_int,
        default=0,
        help="seeds the weights, the shuffling and the date task (default 0)",
    )
    add_precision_and_compilation_flags(parser)
    add_distribution_flags(parser)
    add_checkpoint_flags(parser)

    output = parser.add_argument_group("output")
    output.add_argument(
        "--output-dir",
        default="saved_models",
        help="the export goes to OUTPUT_DIR/NAME (default %(default)s)",
    )
    output.add_argument(
        "--name", help="export and log folder name (default: dates or translator)"
    )
    output.add_argument(
        "--log-dir",
        default="logs",
        help="TensorBoard logs and curves go to LOG_DIR/NAME (default %(default)s)",
    )
    output.add_argument(
        "--num-examples",
        type=non_negative_int,
        default=5,
        help="held-out inputs translated by the reloaded export (default 5)",
    )
    output.add_argument(
        "--attention-plot",
        metavar="PATH",
        help="write a PNG heat-map of the cross-attention on the first "
        "non-empty held-out source",
    )
    output.add_argument(
        "--attention-layer",
        type=non_negative_int,
        help="decoder block of --attention-plot (default: the last)",
    )
    output.add_argument(
        "--attention-head",
        type=non_negative_int,
        default=0,
        help="head of --attention-plot (default 0)",
    )
    return parser


PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16")


def add_precision_and_compilation_flags(parser):
    group = parser.add_argument_group("precision and compilation")
    group.add_argument(
        "--precision",
        choices=PRECISIONS,
        default="float32",
        help="dtype policy of the model: mixed_* computes in float16/bfloat16 "
        "with float32 variables, float32 logits, softmax, normalisation "
        "statistics and loss; mixed_float16 adds dynamic loss scaling. "
        "bfloat16 is the one for TPUs (default %(default)s)",
    )
    group.add_argument(
        "--jit-compile",
        nargs="?",
        const="on",
        choices=("auto", "on", "off"),
        default="auto",
        help="XLA-compile the train and evaluation steps. auto: on with a "
        "TPU (which compiles everything with XLA anyway) and on GPUs with "
        "--static-shapes; off with dynamic shapes, where XLA compiles again "
        "for every new batch shape and bucketed batches have dozens, and off "
        "on a CPU, where compiling costs more than XLA saves even with "
        "static shapes (default %(default)s; --jit-compile alone means on)",
    )
    group.add_argument(
        "--no-xla",
        dest="jit_compile",
        action="store_const",
        const="off",
        help="same as --jit-compile off",
    )
    group.add_argument(
        "--static-shapes",
        action="store_true",
        help="pad every batch to its length bucket's upper boundary, drop the "
        "last incomplete training batch of each bucket and fill the held-out "
        "ones with padding rows, so batches come in a handful of fixed "
        "shapes and XLA compiles each once (what TPUs need)",
    )


def resolve_jit_compile(setting, strategy, static_shapes):
    """Whether to XLA-compile the steps for `--jit-compile SETTING`.

    "auto" is on with a TPU, and on GPUs with static shapes, where each of a
    handful of programs compiles once. It is off on a CPU: training the date
    task with --static-shapes took about 40% more CPU time with XLA than
    without (compiling each bucket's shape cost more than the fused kernels
    saved).
    """
    if setting != "auto":
        return setting == "on"
    if isinstance(strategy, tf.distribute.TPUStrategy):
        return True
    return static_shapes and runs_on_gpus(strategy)


def runs_on_gpus(strategy):
    try:
        devices = strategy.extended.worker_devices
    except RuntimeError:
        # The default strategy has no device list: it runs where TensorFlow
        # places ops, a GPU when there is one.
        return bool(tf.config.list_logical_devices("GPU"))
    return any("GPU" in device for device in devices)


def add_distribution_flags(parser):
    group = parser.add_argument_group("distribution")
    group.add_argument(
        "--strategy",
        choices=distribute.STRATEGY_NAMES,
        default="default",
        help="default: one device; mirrored: every local GPU; multi-worker: "
        "the cluster in TF_CONFIG (start this script once per worker, same "
        "flags; only the chief, worker 0, keeps its files); tpu: the TPU of "
        "--tpu; auto: a TPU if one is found, else mirrored with several "
        "GPUs, else default (default %(default)s)",
    )
    group.add_argument(
        "--tpu",
        help="for --strategy tpu/auto: TPU name, grpc:// address or 'local' on "
        "a TPU VM (default: the TPU_NAME environment variable)",
    )


def add_checkpoint_flags(parser):
    group = parser.add_argument_group("checkpoints")
    group.add_argument(
        "--checkpoint-dir",
        metavar="PATH",
        help="checkpoint the training (weights, optimizer, random states, "
        "data position) into PATH; when PATH already holds a checkpoint, "
        "resume from it at the same step, so after a crash the same command "
        "continues the run (see keras_transformer.checkpointing)",
    )
    group.add_argument(
        "--checkpoint-every",
        type=positive_int,
        metavar="N",
        help="training steps between checkpoints (default: one epoch)",
    )


def fit_with_checkpoints(args, model, train_dataset, make_train_dataset, **fit_kwargs):
    """`model.fit`, or with --checkpoint-dir `checkpointing.fit_resumable`.

    `make_train_dataset` builds the training stream anew: a resumed run
    reads it afresh from the start and skips to its step.
    """
    if args.checkpoint_dir is None:
        return model.fit(train_dataset, **fit_kwargs)
    if isinstance(model.distribute_strategy, tf.distribute.MultiWorkerMirroredStrategy):
        raise SystemExit(
            "error: --checkpoint-dir does not work with --strategy multi-worker: "
            "every worker would write the same checkpoint folders"
        )
    return checkpointing.fit_resumable(
        model,
        make_train_dataset,
        directory=args.checkpoint_dir,
        save_every_steps=args.checkpoint_every or fit_kwargs["steps_per_epoch"],
        **fit_kwargs,
    )


def setup_distribution(args):
    """Makes the --strategy; sets args.global_batch_size and the XLA setting."""
    strategy = distribute.make_strategy(args.strategy, tpu=args.tpu)
    replicas = strategy.num_replicas_in_sync
    args.global_batch_size = distribute.global_batch_size(args.batch_size, strategy)
    if not distribute.jit_compile_works(strategy):
        if args.jit_compile == "on":
            raise SystemExit(
                f"error: --jit-compile on fails under --strategy {args.strategy} "
                f"with {replicas} replicas: Keras 3 compiles the step of all "
                "replicas as one XLA program, which fails there (see "
                "keras_transformer.distribute.jit_compile_works). Use "
                "--jit-compile off."
            )
        args.jit_compile = "off"
    print(
        f"strategy {args.strategy}: {replicas} replica(s), global batch "
        f"{args.global_batch_size} ({args.batch_size} per replica)."
    )
    return strategy


@contextlib.contextmanager
def chief_writes_outputs(args, strategy):
    """Sends a non-chief worker's exports, logs and plots to scratch space.

    Every worker of a multi-worker run runs the whole script, as in
    TensorFlow's multi-worker tutorial; only the chief's files are kept, the
    others' are deleted when the run ends.
    """
    if not distribute.is_chief(strategy):
        print("Not the chief: exports, logs and plots go to scratch, then deleted.")
    with contextlib.ExitStack() as stack:
        for flag in ("output_dir", "log_dir", "attention_plot"):
            path = getattr(args, flag)
            if path is not None:
                scratch = distribute.chief_output_dir(path, strategy)
                setattr(args, flag, stack.enter_context(scratch))
        yield


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
    for flag in (
        "tsv",
        "source",
        "target",
        "valid_tsv",
        "valid_source",
        "valid_target",
    ):
        path = getattr(args, flag)
        if path is not None and not os.path.isfile(path):
            parser.error(f"--{flag.replace('_', '-')}: no such file: {path}")
    if args.hidden_dim % args.heads:
        parser.error(
            f"--hidden-dim {args.hidden_dim} must be divisible by --heads {args.heads}"
        )
    if args.attention_layer is not None and args.attention_layer >= args.layers:
        parser.error(
            f"--attention-layer {args.attention_layer} is out of range: the "
            f"decoder has --layers {args.layers} blocks (0-based)"
        )
    if args.attention_head >= args.heads:
        parser.error(
            f"--attention-head {args.attention_head} is out of range: there are "
            f"--heads {args.heads} heads (0-based)"
        )
    args.tokenizer = args.tokenizer or ("word" if args.corpus else "character")
    if args.min_frequency is None:
        args.min_frequency = 2 if args.tokenizer == "word" else 1
    args.name = args.name or ("translator" if args.corpus else "dates")
    needed = {"matplotlib": "the curve plots", "tensorboard": "TensorBoard logs"}
    if args.corpus:
        needed["sacrebleu"] = "BLEU on a corpus"
    # Checked up front, so a missing package never wastes a training run.
    for module, needed_for in needed.items():
        try:
            __import__(module)
        except ImportError:
            parser.error(f"{module} is needed for {needed_for}: pip install {module}")
    return args


def load_pairs(args):
    """Returns (train_sources, train_targets, test_sources, test_targets)."""
    if not args.corpus:
        train, test = data.date_task_splits(
            args.num_train or DATE_TASK_NUM_TRAIN,
            args.num_test or DATE_TASK_NUM_TEST,
            seed=args.seed,
        )
        return (*zip(*train), *zip(*test))

    if args.tsv:
        sources, targets = data.read_tsv(args.tsv)
    else:
        sources, targets = data.read_parallel_files(args.source, args.target)
    pairs = list(zip(sources, targets))
    if args.valid_tsv or args.valid_source:
        if args.valid_tsv:
            test = list(zip(*data.read_tsv(args.valid_tsv)))
        else:
            test = list(
                zip(*data.read_parallel_files(args.valid_source, args.valid_target))
            )
        train = pairs
    else:
        if len(pairs) < 2:
            raise SystemExit("error: the corpus needs at least 2 pairs to hold one out")
        random.Random(args.seed).shuffle(pairs)
        held_out = args.num_test or min(CORPUS_NUM_TEST, max(1, len(pairs) // 10))
        if held_out >= len(pairs):
            raise SystemExit(
                f"error: --num-test {held_out} leaves no training pairs out of "
                f"{len(pairs)}"
            )
        test, train = pairs[:held_out], pairs[held_out:]
    train = train[: args.num_train] if args.num_train else train
    test = test[: args.num_test] if args.num_test else test
    if not train or not test:
        raise SystemExit("error: no training or no held-out pairs")
    return (*zip(*train), *zip(*test))


def longest(tokenizer, texts):
    return int(tokenizer.tokenize(list(texts)).row_lengths().numpy().max())


def make_optimizer(args, total_steps):
    warmup_steps = min(args.warmup_steps, total_steps // 2)
    # Decaying to 0 at the last step leaves the final weights settled, which
    # matters for exact match after a short run.
    schedule = keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=0.0,
        decay_steps=max(1, total_steps - warmup_steps),
        warmup_target=args.learning_rate,
        warmup_steps=warmup_steps,
    )
    optimizer = keras.optimizers.Adam(schedule, beta_1=0.9, beta_2=0.98, epsilon=1e-9)
    if args.precision == "mixed_float16":
        # compile() wraps the optimizer only when the functional model's own
        # policy is mixed_float16, and build_transformer sets the layers'.
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
    return optimizer


def make_tokenizers(args, train_sources, train_targets):
    tokenizer_class = {
        "character": data.CharacterTokenizer,
        "word": data.WordTokenizer,
    }[args.tokenizer]
    return tuple(
        tokenizer_class.from_texts(
            texts,
            max_vocabulary_size=args.max_vocabulary_size,
            min_frequency=args.min_frequency,
        )
        for texts in (train_sources, train_targets)
    )


def make_datasets(args, pairs, tokenizers, max_lengths):
    train_sources, train_targets, test_sources, test_targets = pairs
    options = dict(
        source_tokenizer=tokenizers[0],
        target_tokenizer=tokenizers[1],
        batch_size=args.global_batch_size,
        max_source_length=max_lengths[0],
        max_target_length=max_lengths[1],
        pad_to_bucket_boundary=args.static_shapes,
    )
    train_dataset = data.make_translation_dataset(
        list(train_sources),
        list(train_targets),
        seed=args.seed,
        repeat=True,
        drop_remainder=args.static_shapes,
        **options,
    )
    test_dataset = data.make_translation_dataset(
        list(test_sources),
        list(test_targets),
        shuffle=False,
        pad_incomplete_batches=args.static_shapes,
        **options,
    ).cache()
    # Bucketing hides the number of batches; Keras warns about running out of
    # data on every validation pass unless it is told.
    num_test_batches = sum(1 for _ in test_dataset)
    test_dataset = test_dataset.apply(
        tf.data.experimental.assert_cardinality(num_test_batches)
    )
    shard = distribute.shard_dataset
    return shard(train_dataset), shard(test_dataset)


def make_model(args, tokenizers, max_lengths, total_steps):
    config = models.TransformerConfig(
        source_vocabulary_size=tokenizers[0].vocabulary_size,
        target_vocabulary_size=tokenizers[1].vocabulary_size,
        num_encoder_layers=args.layers,
        num_decoder_layers=args.layers,
        hidden_dim=args.hidden_dim,
        num_heads=args.heads,
        intermediate_dim=args.ffn_dim,
        dropout=args.dropout,
        norm_placement=args.norm_placement,
        position_encoding=args.position_encoding,
        max_source_length=max_lengths[0],
        max_target_length=max_lengths[1],
    )
    model = models.build_transformer(config, dtype=args.precision, name=args.name)
    jit_compile = resolve_jit_compile(
        args.jit_compile, model.distribute_strategy, args.static_shapes
    )
    print(f"precision {args.precision}; XLA {'on' if jit_compile else 'off'}.")
    model.compile(
        optimizer=make_optimizer(args, total_steps),
        loss=losses.MaskedSparseCategoricalCrossentropy(
            label_smoothing=args.label_smoothing, padding_id=config.padding_id
        ),
        metrics=[
            metrics.MaskedAccuracy(padding_id=config.padding_id),
            metrics.SequenceExactMatch(padding_id=config.padding_id),
        ],
        jit_compile=jit_compile,
    )
    return model


def score(args, hypotheses, references, target_tokenizer):
    """Returns (the line to print, whether the date task missed its target)."""
    if args.corpus:
        lowercase = getattr(target_tokenizer, "lowercase", False)
        bleu = training.corpus_bleu(hypotheses, references, lowercase=lowercase)
        cased = ", lowercased" if lowercase else ""
        return f"held-out BLEU (greedy, sacrebleu{cased}): {bleu.score:.2f}", False
    match = training.exact_match(hypotheses, references)
    line = f"held-out exact match (greedy): {match}"
    return line, match.rate < DATE_TASK_TARGET


def show_reloaded_translations(export_dir, sources, references, hypotheses):
    """Translates with the reloaded SavedModel, as a server would."""
    reloaded = tf.saved_model.load(export_dir)
    if not sources:
        return
    print(f"Translations by the reloaded export {export_dir}:")
    translations = [
        text.decode("utf-8")
        for text in reloaded.translate(tf.constant(sources)).numpy()
    ]
    for source, translation, reference in zip(sources, translations, references):
        verdict = "ok" if translation == reference else f"reference: {reference!r}"
        print(f"  {source!r} -> {translation!r}  ({verdict})")
    disagreements = sum(t != h for t, h in zip(translations, hypotheses))
    if disagreements:
        print(
            f"WARNING: the reloaded export and the trained model disagree on "
            f"{disagreements} of these {len(sources)} translations."
        )


def main(argv=None):
    started = time.perf_counter()
    args = parse_args(argv)
    # Before any TensorFlow op: a multi-worker strategy configures the runtime.
    strategy = setup_distribution(args)
    with chief_writes_outputs(args, strategy):
        return train_and_export(args, strategy, started)


def train_and_export(args, strategy, started):
    keras.utils.set_random_seed(args.seed)

    train_sources, train_targets, test_sources, test_targets = load_pairs(args)
    tokenizers = make_tokenizers(args, train_sources, train_targets)
    if args.max_length:
        max_lengths = (args.max_length, args.max_length)
    else:
        max_lengths = (
            longest(tokenizers[0], train_sources + test_sources),
            # The decoder reads [BOS] + target and predicts target + [EOS].
            longest(tokenizers[1], train_targets + test_targets) + 1,
        )
    test_lengths = tokenizers[0].tokenize(list(test_sources)).row_lengths().numpy()
    fits = test_lengths <= max_lengths[0]
    if not fits.all():
        print(
            f"Skipping {int((~fits).sum())} held-out pairs whose source is longer "
            f"than --max-length {max_lengths[0]}."
        )
        test_sources = [s for s, keep in zip(test_sources, fits) if keep]
        test_targets = [t for t, keep in zip(test_targets, fits) if keep]
    task = "corpus" if args.corpus else "synthetic date task"
    print(
        f"{task}: {len(train_sources)} training and {len(test_sources)} held-out "
        f"pairs; {args.tokenizer} vocabularies of {tokenizers[0].vocabulary_size} "
        f"(source) and {tokenizers[1].vocabulary_size} (target) tokens; max "
        f"lengths {max_lengths[0]} (source) and {max_lengths[1]} (decoder)."
    )

    train_dataset, test_dataset = make_datasets(
        args,
        (train_sources, train_targets, test_sources, test_targets),
        tokenizers,
        max_lengths,
    )
    steps_per_epoch = math.ceil(len(train_sources) / args.global_batch_size)
    with strategy.scope():
        model = make_model(args, tokenizers, max_lengths, args.epochs * steps_per_epoch)
    print(
        f"model: {args.layers}+{args.layers} blocks, hidden {args.hidden_dim}, "
        f"{args.heads} heads, feed-forward {args.ffn_dim}, "
        f"{model.count_params():,} parameters; {args.epochs} epoch(s) of "
        f"{steps_per_epoch} steps. Accuracies during training are teacher-forced."
    )

    run_dir = os.path.join(args.log_dir, args.name)
    tensorboard_dir = os.path.join(
        run_dir, "tensorboard", datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    )
    fit_started = time.perf_counter()
    history = fit_with_checkpoints(
        args,
        model,
        train_dataset,
        lambda: make_datasets(
            args,
            (train_sources, train_targets, test_sources, test_targets),
            tokenizers,
            max_lengths,
        )[0],
        epochs=args.epochs,
        steps_per_epoch=steps_per_epoch,
        validation_data=test_dataset,
        callbacks=[keras.callbacks.TensorBoard(log_dir=tensorboard_dir)],
        # The dataset shuffles itself.
        shuffle=False,
        verbose=1,
    )
    fit_seconds = time.perf_counter() - fit_started
    curves_path = os.path.join(run_dir, "curves.png")
    training.plot_history(
        history.history, curves_path, title=f"{args.name}: training and held-out"
    )

    hypotheses = training.translate_texts(
        model, *tokenizers, list(test_sources), max_length=max_lengths[1]
    )
    score_line, missed_target = score(args, hypotheses, test_targets, tokenizers[1])

    export_started = time.perf_counter()
    export_dir = os.path.join(args.output_dir, args.name)
    export.export_translator(model, *tokenizers, export_dir)
    show_reloaded_translations(
        export_dir,
        list(test_sources[: args.num_examples]),
        test_targets,
        hypotheses,
    )
    export_seconds = time.perf_counter() - export_started

    if args.attention_plot:
        layer = (
            args.layers - 1 if args.attention_layer is None else args.attention_layer
        )
        example = next((text for text in test_sources if text.strip()), None)
        if example is None:
            print("No attention heat-map: every held-out source is empty.")
        else:
            training.plot_cross_attention(
                model,
                *tokenizers,
                example,
                max_lengths[1],
                layer=layer,
                head=args.attention_head,
                path=args.attention_plot,
            )
            print(f"Cross-attention heat-map: {args.attention_plot}")

    print(f"TensorBoard logs: {tensorboard_dir}")
    print(f"Curves: {curves_path}")
    print(f"Export: {export_dir}")
    print(score_line)
    if missed_target:
        print(
            f"WARNING: below the {100 * DATE_TASK_TARGET:.0f}% target of the date "
            "task; train longer (--epochs) or on more pairs (--num-train)."
        )
    print(
        f"wall time: {time.perf_counter() - started:.1f} s (training "
        f"{fit_seconds:.1f} s, export, reload and examples {export_seconds:.1f} s)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
