"""Train the date-task Translator on a Colab TPU, the way XLA on TPUs needs it.

In Colab choose Runtime > Change runtime type > TPU, then run in a cell:

    !git clone <this repository's URL> keras_transformer  # or upload a copy
    !pip install -e keras_transformer
    !python keras_transformer/scripts/colab_tpu.py

TensorFlow must be a build with TPU support. If the script reports "No TPU"
on a TPU runtime, install the TPU build of the TensorFlow version pinned in
setup.cfg as the Cloud TPU documentation for TensorFlow describes (`pip
install tensorflow-tpu==<version> -f
https://storage.googleapis.com/libtpu-tf-releases/index.html`), restart the
runtime and run the script again.

The model and its training are
`keras_transformer.translation.recipes.DATE_TASK`, as in `scripts/train.py`;
what differs is what TPUs need:

- Strategy: `keras_transformer.distribute.make_strategy("tpu", tpu=...)`
  (`--tpu local` on a TPU VM runtime such as Colab's). Without a TPU it says
  so and trains with the default strategy on the CPU or GPU, so the same
  script runs anywhere; `--smoke` makes it a one-minute CPU check.
- Static shapes (`Translator.fit(..., static_shapes=True)`): every batch is
  padded to its length bucket's upper bound and incomplete batches are
  filled with padding rows, so XLA compiles one program per bucket instead
  of one per batch shape. The global batch is split evenly over the
  replicas.
- `mixed_bfloat16` (the TPU matrix units compute in bfloat16; variables,
  logits, softmax, normalisation statistics and the loss stay float32),
  `jit_compile=True`, and `steps_per_execution` so the host launches many
  steps at a time.
- Decoding and export run on the host: the trained weights are copied into
  a float32 Translator built outside the strategy, which translates as one
  XLA program over batches of a fixed shape (`translate(...,
  jit_compile=True)`) and writes the SavedModel version folder.
"""

import argparse
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

from keras_transformer import distribute, evaluation  # noqa: E402
from keras_transformer.translation import Translator, flags, recipes  # noqa: E402

# Smoke run: a tiny model that checks the plumbing in under a minute on a
# CPU; one length bucket (the dates are shorter than 64 characters), so XLA
# compiles one training program, not one per bucket.
SMOKE_RECIPE = recipes.DATE_TASK.override(
    model={
        "num_encoder_layers": 1,
        "num_decoder_layers": 1,
        "hidden_dim": 16,
        "num_heads": 2,
        "intermediate_dim": 32,
    },
    warmup_steps=2,
    epochs=1,
    batch_size=32,
    bucket_width=32,
)
# (training pairs, held-out pairs, steps per host launch)
FULL_SIZES = (flags.DATE_TASK_NUM_TRAIN, flags.DATE_TASK_NUM_TEST, 32)
SMOKE_SIZES = (64, 4, 2)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--tpu",
        default="local",
        help="TPU name or grpc:// address; 'local' on a TPU VM such as "
        "Colab's (default %(default)s)",
    )
    parser.add_argument(
        "--smoke", action="store_true", help="tiny settings: a quick CPU check"
    )
    parser.add_argument(
        "--precision",
        choices=("mixed_bfloat16", "float32"),
        default="mixed_bfloat16",
        help="(default %(default)s; TPUs have no float16)",
    )
    parser.add_argument("--epochs", type=flags.positive_int, help="(default: the recipe's)")
    parser.add_argument(
        "--batch-size",
        type=flags.positive_int,
        help="global batch, split over the replicas (default: the recipe's; "
        "the learning-rate schedule was tuned for its number of steps)",
    )
    parser.add_argument("--seed", type=int, default=0, help="(default 0)")
    parser.add_argument(
        "--output-dir",
        default=os.path.join("saved_models", "dates_tpu"),
        help="SavedModel base folder; each run adds a version folder "
        "(default %(default)s)",
    )
    args = parser.parse_args(argv)
    # The date task only, with the recipe's settings that the flags change
    # (here --batch-size is the global batch, split in `main`).
    args.corpus = False
    args.recipe = flags.recipe_from_flags(
        SMOKE_RECIPE if args.smoke else recipes.DATE_TASK, args
    )
    args.num_train, args.num_test, args.steps_per_execution = (
        SMOKE_SIZES if args.smoke else FULL_SIZES
    )
    return args


def tpu_or_default_strategy(tpu):
    try:
        strategy = distribute.make_strategy("tpu", tpu=tpu)
    except ValueError as error:
        devices = [device.name for device in tf.config.list_logical_devices()]
        reason = str(error).splitlines()[0]
        print(
            f"No TPU ({reason}).\nTraining with the default strategy on "
            f"{devices} instead."
        )
        return tf.distribute.get_strategy()
    print(f"TPU found: {strategy.num_replicas_in_sync} replicas.")
    return strategy


def main(argv=None):
    started = time.perf_counter()
    args = parse_args(argv)
    keras.utils.set_random_seed(args.seed)
    strategy = tpu_or_default_strategy(args.tpu)
    replicas = strategy.num_replicas_in_sync
    # Every replica gets the same number of examples.
    recipe = args.recipe.override(batch_size=-(-args.recipe.batch_size // replicas))
    batch_size = recipe.batch_size * replicas
    train_sources, train_targets, test_sources, test_targets = flags.pairs_from_flags(args)

    steps_per_epoch = -(-len(train_sources) // batch_size)
    with strategy.scope():
        translator = recipe.translator_from_texts(
            train_sources, train_targets, dtype=args.precision, name="dates_tpu"
        )
        recipe.compile(
            translator,
            total_steps=recipe.epochs * steps_per_epoch,
            jit_compile=True,
            steps_per_execution=min(args.steps_per_execution, steps_per_epoch),
        )
    print(
        f"{len(train_sources)} training and {len(test_sources)} held-out "
        f"pairs; global batch {batch_size} over {replicas} replica(s); "
        f"{recipe.epochs} epoch(s) of about {steps_per_epoch} steps; "
        f"{args.precision}; XLA on. Accuracies during training are "
        "teacher-forced."
    )
    fit_started = time.perf_counter()
    translator.fit(
        train_sources,
        train_targets,
        validation_data=(test_sources, test_targets),
        seed=args.seed,
        static_shapes=True,
        verbose=2,
        **recipe.fit_options(translator),
    )
    fit_seconds = time.perf_counter() - fit_started

    # Built outside the strategy: a float32 copy on the host.
    host = Translator(
        translator.config,
        translator.source_tokenizer,
        translator.target_tokenizer,
        name="dates",
    )
    host.set_weights(translator.get_weights())
    hypotheses = host.translate(test_sources, jit_compile=True)
    match = evaluation.exact_match(hypotheses, test_targets)
    for source, hypothesis, reference in list(
        zip(test_sources, hypotheses, test_targets)
    )[:3]:
        verdict = "ok" if hypothesis == reference else f"reference: {reference!r}"
        print(f"  {source!r} -> {hypothesis!r}  ({verdict})")
    export_dir = host.export(args.output_dir)

    print(f"Export: {export_dir}")
    print(f"held-out exact match (greedy): {match}")
    if match.rate < recipes.DATE_TASK_TARGET and not args.smoke:
        print(
            f"WARNING: below the {100 * recipes.DATE_TASK_TARGET:.0f}% target; train "
            "longer (--epochs)."
        )
    print(
        f"wall time: {time.perf_counter() - started:.1f} s (training "
        f"{fit_seconds:.1f} s)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
