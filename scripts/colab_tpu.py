"""Train the date-task Transformer on a Colab TPU, the way XLA on TPUs needs it.

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

What it does, compared with `scripts/train.py`:

- Strategy: `keras_transformer.distribute.make_strategy("tpu", tpu=...)`
  (`--tpu local` on a TPU VM runtime such as Colab's). Without a TPU it says
  so and trains with the default strategy on the CPU or GPU, so the same
  script runs anywhere; `--smoke` makes it a one-minute CPU check.
- Static shapes: batches are padded to their length bucket's upper boundary;
  training drops each bucket's incomplete batch and the held-out set fills
  it with padding rows, so XLA compiles one program per bucket instead of
  one per batch shape. The global batch is split evenly over the replicas.
- `mixed_bfloat16` (the TPU matrix units compute in bfloat16; variables,
  logits, softmax, normalisation statistics and the loss stay float32),
  `jit_compile=True`, and `steps_per_execution` so the host launches many
  steps at a time.
- Decoding and export run on the host: the trained weights are copied into
  a float32 model built outside the strategy, greedy decoding runs as one
  XLA program over batches of a fixed shape, and the SavedModel
  (`keras_transformer.export`) is written from that copy.
"""

import argparse
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

from keras_transformer import data, distribute, export  # noqa: E402
from keras_transformer import losses, metrics, models  # noqa: E402
from keras_transformer import schedules, training  # noqa: E402

# Full run: the date task of scripts/train.py. Smoke run: a tiny model that
# checks the plumbing in about a minute on a CPU.
SETTINGS = {
    "full": {
        "num_train": 20000,
        "num_test": 1000,
        "layers": 2,
        "hidden_dim": 64,
        "heads": 4,
        "ffn_dim": 256,
        "epochs": 8,
        "batch_size": 128,
        "warmup_steps": 300,
        "steps_per_execution": 32,
    },
    "smoke": {
        "num_train": 256,
        "num_test": 16,
        "layers": 1,
        "hidden_dim": 16,
        "heads": 2,
        "ffn_dim": 32,
        "epochs": 1,
        "batch_size": 32,
        "warmup_steps": 2,
        "steps_per_execution": 4,
    },
}
# Length buckets of the date task (sources have 8 to 29 characters, decoder
# sequences 11): three programs to compile.
BUCKET_BOUNDARIES = [16, 24]
DATE_TASK_TARGET = 0.99


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
    parser.add_argument("--epochs", type=int, help="override the epochs")
    parser.add_argument(
        "--batch-size",
        type=int,
        help="global batch, split over the replicas (default 128; smoke 32)",
    )
    parser.add_argument("--seed", type=int, default=0, help="(default 0)")
    parser.add_argument(
        "--output-dir",
        default=os.path.join("saved_models", "dates_tpu"),
        help="where the SavedModel goes (default %(default)s)",
    )
    args = parser.parse_args(argv)
    settings = dict(SETTINGS["smoke" if args.smoke else "full"])
    for name in ("epochs", "batch_size"):
        value = getattr(args, name)
        if value is not None:
            if value < 1:
                parser.error(f"--{name.replace('_', '-')} must be positive")
            settings[name] = value
    args.settings = settings
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
    settings = args.settings
    keras.utils.set_random_seed(args.seed)
    strategy = tpu_or_default_strategy(args.tpu)
    replicas = strategy.num_replicas_in_sync
    # Every replica gets the same number of examples.
    batch_size = -(-settings["batch_size"] // replicas) * replicas

    train, test = data.date_task_splits(
        settings["num_train"], settings["num_test"], seed=args.seed
    )
    train_sources, train_targets = map(list, zip(*train))
    test_sources, test_targets = map(list, zip(*test))
    tokenizers = tuple(
        data.CharacterTokenizer.from_texts(texts)
        for texts in (train_sources, train_targets)
    )
    max_source_length = max(
        int(tokenizers[0].tokenize(texts).row_lengths().numpy().max())
        for texts in (train_sources, test_sources)
    )
    # The decoder reads [BOS] + target.
    max_target_length = 1 + max(
        int(tokenizers[1].tokenize(texts).row_lengths().numpy().max())
        for texts in (train_targets, test_targets)
    )
    options = {
        "source_tokenizer": tokenizers[0],
        "target_tokenizer": tokenizers[1],
        "batch_size": batch_size,
        "max_source_length": max_source_length,
        "max_target_length": max_target_length,
        "bucket_boundaries": BUCKET_BOUNDARIES,
        "pad_to_bucket_boundary": True,
    }
    train_dataset = data.make_translation_dataset(
        train_sources,
        train_targets,
        seed=args.seed,
        repeat=True,
        drop_remainder=True,
        **options,
    )
    test_dataset = data.make_translation_dataset(
        test_sources,
        test_targets,
        shuffle=False,
        pad_incomplete_batches=True,
        **options,
    ).cache()
    num_test_batches = sum(1 for _ in test_dataset)
    test_dataset = test_dataset.apply(
        tf.data.experimental.assert_cardinality(num_test_batches)
    )

    config = models.TransformerConfig(
        source_vocabulary_size=tokenizers[0].vocabulary_size,
        target_vocabulary_size=tokenizers[1].vocabulary_size,
        num_encoder_layers=settings["layers"],
        num_decoder_layers=settings["layers"],
        hidden_dim=settings["hidden_dim"],
        num_heads=settings["heads"],
        intermediate_dim=settings["ffn_dim"],
        max_source_length=max_source_length,
        max_target_length=max_target_length,
    )
    steps_per_epoch = len(train_sources) // batch_size
    with strategy.scope():
        model = models.build_transformer(config, dtype=args.precision, name="dates_tpu")
        model.compile(
            optimizer=schedules.transformer_optimizer(
                settings["hidden_dim"], warmup_steps=settings["warmup_steps"]
            ),
            loss=losses.MaskedSparseCategoricalCrossentropy(),
            metrics=[metrics.MaskedAccuracy(), metrics.SequenceExactMatch()],
            jit_compile=True,
            steps_per_execution=min(settings["steps_per_execution"], steps_per_epoch),
        )
    print(
        f"{len(train_sources)} training and {len(test_sources)} held-out "
        f"pairs; global batch {batch_size} over {replicas} replica(s); "
        f"{settings['epochs']} epoch(s) of {steps_per_epoch} steps; "
        f"{args.precision}; XLA on. Accuracies during training are "
        "teacher-forced."
    )
    fit_started = time.perf_counter()
    model.fit(
        train_dataset,
        epochs=settings["epochs"],
        steps_per_epoch=steps_per_epoch,
        validation_data=test_dataset,
        shuffle=False,
        verbose=2,
    )
    fit_seconds = time.perf_counter() - fit_started

    host_model = models.build_transformer(config, name="dates")
    host_model.set_weights(model.get_weights())
    hypotheses = training.translate_texts(
        host_model, *tokenizers, test_sources, max_target_length, jit_compile=True
    )
    match = training.exact_match(hypotheses, test_targets)
    for source, hypothesis, reference in list(
        zip(test_sources, hypotheses, test_targets)
    )[:3]:
        verdict = "ok" if hypothesis == reference else f"reference: {reference!r}"
        print(f"  {source!r} -> {hypothesis!r}  ({verdict})")
    export.export_translator(host_model, *tokenizers, args.output_dir)

    print(f"Export: {args.output_dir}")
    print(f"held-out exact match (greedy): {match}")
    if match.rate < DATE_TASK_TARGET and not args.smoke:
        print(
            f"WARNING: below the {100 * DATE_TASK_TARGET:.0f}% target; train "
            "longer (--epochs)."
        )
    print(
        f"wall time: {time.perf_counter() - started:.1f} s (training "
        f"{fit_seconds:.1f} s)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
