"""LoRA adapters against full fine-tuning on a topic shift of Multi30k.

The domain shift is made from Multi30k's own pairs: the "topic" is every pair
whose English side mentions a dog (dog, dogs, puppy, puppies: about 7% of the
corpus), the base domain is the rest. A base translator is trained on the
rest only (its SentencePiece vocabulary too), then adapted to the topic on
the topic's training pairs in three ways: full fine-tuning, and named LoRA
adapters at two ranks. Each is scored with sacreBLEU (13a, cased, greedy) on
held-out topic pairs, and on held-out base-domain pairs with no adapter
active, which must be exactly the base's translations.

    python scripts/adapters_demo.py --data-dir path/to/multi30k \\
        --output-dir logs/adapters_demo

Reads train.en/.de, val.en/.de and test_2016_flickr.en/.de from --data-dir.
Writes the base `.keras`, the adapter files and `results.json` (everything
docs/adapters.md reports) to --output-dir; a rerun reuses the saved base.
`--tiny` runs the whole sequence in a minute on a slice of the data (a check
that it works, not a measurement).
"""

import argparse
import json
import os
import random
import re
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402

from keras_transformer import data, evaluation  # noqa: E402
from keras_transformer.translation import adapters, recipes  # noqa: E402

TOPIC = re.compile(r"\b(dogs?|pupp(y|ies))\b", re.IGNORECASE)
TOPIC_NAME = "dogs"
# Every attention's query and value projection and every feed-forward
# projection: the feed-forward layers hold most of what is lexical.
TARGET_LAYERS = ("*query", "*value", "*feed_forward/*")


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="adapters_demo.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", required=True, help="folder of Multi30k files")
    parser.add_argument("--output-dir", required=True)
    # A base trained for 2 epochs is so far from converged that fine-tuning
    # on any pairs improves it: 8 makes the topic, not more training, the gain.
    parser.add_argument("--base-epochs", type=int, default=8)
    parser.add_argument("--finetune-epochs", type=int, default=6)
    parser.add_argument("--ranks", type=int, nargs=2, default=[4, 8])
    parser.add_argument("--num-test", type=int, default=400,
                        help="held-out pairs of each domain")  # fmt: skip
    parser.add_argument("--full-learning-rate", type=float, default=1e-3)
    parser.add_argument("--lora-learning-rate", type=float, default=5e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tiny", action="store_true", help="a one-minute check")
    args = parser.parse_args(argv)
    for flag in ("base_epochs", "finetune_epochs", "num_test"):
        if getattr(args, flag) < 1:
            parser.error(f"--{flag.replace('_', '-')}: expected a positive integer")
    if min(args.ranks) < 1:
        parser.error("--ranks: expected positive integers")
    for name in ("train", "val", "test_2016_flickr"):
        for side in ("en", "de"):
            path = os.path.join(args.data_dir, f"{name}.{side}")
            if not os.path.isfile(path):
                parser.error(f"--data-dir: no such file: {path}")
    return args


def split_domains(args):
    """`{"base_train", "topic_train", "base_test", "topic_test"}` -> pairs.

    The topic's held-out pairs are its validation and test pairs plus
    training pairs up to `num_test`; the base domain's held-out pairs come
    from the validation and test files.
    """
    def read(name):
        sources, targets = data.read_parallel_files(
            os.path.join(args.data_dir, f"{name}.en"),
            os.path.join(args.data_dir, f"{name}.de"),
        )
        return list(zip(sources, targets))

    def by_topic(pairs):
        topic = [pair for pair in pairs if TOPIC.search(pair[0])]
        return topic, [pair for pair in pairs if not TOPIC.search(pair[0])]

    rng = random.Random(args.seed)
    topic_train, base_train = by_topic(read("train"))
    topic_held, base_held = by_topic(read("val") + read("test_2016_flickr"))
    rng.shuffle(topic_train)
    rng.shuffle(base_held)
    needed = max(0, args.num_test - len(topic_held))
    topic_test = (topic_held + topic_train[:needed])[: args.num_test]
    topic_train = topic_train[needed:]
    splits = {
        "base_train": base_train,
        "topic_train": topic_train,
        "base_test": base_held[: args.num_test],
        "topic_test": topic_test,
    }
    if args.tiny:
        sizes = {"base_train": 2000, "topic_train": 200, "base_test": 40, "topic_test": 40}
        splits = {key: pairs[: sizes[key]] for key, pairs in splits.items()}
    return {key: tuple(map(list, zip(*pairs))) for key, pairs in splits.items()}


def base_model(args, sources, targets):
    # The corpus recipe with the model (2+2 layers, d 128, FFN 256; smaller
    # still with --tiny) and the 5% warm-up docs/adapters.md's results were
    # measured with (the recipe's are now d 256 and 15%); the rate follows
    # the width.
    recipe = recipes.CORPUS.override(
        warmup_fraction=None,
        vocabulary_size=1000 if args.tiny else recipes.CORPUS.vocabulary_size,
        model={"num_encoder_layers": 2, "num_decoder_layers": 2, "num_heads": 4,
               **({"hidden_dim": 32, "intermediate_dim": 64} if args.tiny
                  else {"hidden_dim": 128, "intermediate_dim": 256})},
    )  # fmt: skip
    # The schedule follows the run `fit` is given.
    translator = recipe.compile(recipe.translator_from_texts(sources, targets))
    return translator, corpus_batching(translator)


def corpus_batching(translator):
    recipe = recipes.CORPUS
    longest = max(translator.max_source_length, translator.max_target_length)
    return dict(
        # Half the recipe's batch: twice the updates in a run of minutes.
        tokens_per_batch=recipe.tokens_per_batch // 2,
        bucket_boundaries=recipe.bucket_boundaries(longest),
    )


def timed(function, *args, **kwargs):
    wall, cpu = time.perf_counter(), time.process_time()
    result = function(*args, **kwargs)
    return result, time.perf_counter() - wall, time.process_time() - cpu


def bleu(translator, pairs):
    sources, references = pairs
    hypotheses = translator.translate(sources)
    return evaluation.corpus_bleu(hypotheses, references).score, hypotheses


def write(results, args):
    """results.json after every system, so a cut-short run leaves its rows."""
    rows = results["rows"]
    gain = rows[1]["topic_bleu"] - rows[0]["topic_bleu"] if len(rows) > 1 else None
    for row in rows:
        row["trainable_share"] = row["trainable"] / results["parameters"]
        if row["system"].startswith("LoRA"):
            row["share_of_full_gain"] = (
                (row["topic_bleu"] - rows[0]["topic_bleu"]) / gain if gain else None
            )
    results["load_after"] = os.getloadavg()
    with open(os.path.join(args.output_dir, "results.json"), "w") as file:
        json.dump(results, file, indent=1)
    print(rows[-1], flush=True)


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    os.makedirs(args.output_dir, exist_ok=True)
    keras.utils.set_random_seed(args.seed)
    splits = split_domains(args)
    print({key: len(value[0]) for key, value in splits.items()}, flush=True)
    results = {
        "command": "python scripts/adapters_demo.py " + " ".join(
            sys.argv[1:] if argv is None else argv
        ),
        "sizes": {key: len(value[0]) for key, value in splits.items()},
        "load_before": os.getloadavg(),
    }
    base_path = os.path.join(args.output_dir, "base.keras")
    if os.path.exists(base_path):
        base = keras.saving.load_model(base_path)
        results["base_training"] = json.load(
            open(os.path.join(args.output_dir, "base.json"), encoding="utf-8")
        )
    else:
        base, batching = base_model(args, *splits["base_train"])
        _, wall, cpu = timed(
            base.fit, *splits["base_train"], epochs=args.base_epochs, verbose=2,
            **batching,
        )  # fmt: skip
        base.save(base_path)
        results["base_training"] = {
            "seconds": wall, "cpu_seconds": cpu, "epochs": args.base_epochs,
            "parameters": base.count_params(),
        }  # fmt: skip
        with open(os.path.join(args.output_dir, "base.json"), "w") as file:
            json.dump(results["base_training"], file)
    results["parameters"] = base.count_params()
    base_topic, _ = bleu(base, splits["topic_test"])
    base_domain, base_domain_translations = bleu(base, splits["base_test"])
    rows = results["rows"] = []
    rows.append({"system": "base", "topic_bleu": base_topic, "base_bleu": base_domain,
                 "trainable": 0, "seconds": 0.0, "cpu_seconds": 0.0,
                 "file_bytes": os.path.getsize(base_path)})  # fmt: skip
    write(results, args)

    full = keras.saving.load_model(base_path)
    # Warm-up and decay follow the fine-tuning run, as the adapters' do.
    full.compile(learning_rate=args.full_learning_rate)
    trainable = adapters.trainable_parameters(full)
    _, wall, cpu = timed(
        full.fit, *splits["topic_train"], epochs=args.finetune_epochs,
        batch_size=32, verbose=0,
    )  # fmt: skip
    full_path = os.path.join(args.output_dir, "full_finetune.keras")
    full.save(full_path)
    rows.append({
        "system": "full fine-tuning", "topic_bleu": bleu(full, splits["topic_test"])[0],
        "base_bleu": bleu(full, splits["base_test"])[0], "trainable": trainable,
        "seconds": wall, "cpu_seconds": cpu, "file_bytes": os.path.getsize(full_path),
    })  # fmt: skip
    write(results, args)

    # Every adapter goes on one copy of the base, as they would in serving.
    adapted = keras.saving.load_model(base_path)
    for rank in args.ranks:
        name = f"{TOPIC_NAME}_r{rank}"
        (_, _), wall, cpu = timed(
            adapters.train_adapter, adapted, name, *splits["topic_train"],
            rank=rank, alpha=2 * rank, target_layers=TARGET_LAYERS,
            epochs=args.finetune_epochs, batch_size=32,
            learning_rate=args.lora_learning_rate, verbose=0,
        )  # fmt: skip
        trainable = adapters.trainable_parameters(adapted)
        path = os.path.join(args.output_dir, f"{name}.npz")
        adapted.save_adapter(name, path)
        rows.append({
            "system": f"LoRA rank {rank}", "topic_bleu": bleu(adapted, splits["topic_test"])[0],
            "base_bleu": None, "trainable": trainable, "seconds": wall,
            "cpu_seconds": cpu, "file_bytes": os.path.getsize(path),
        })  # fmt: skip
        write(results, args)
    adapted.set_adapter(None)
    base_again, translations = bleu(adapted, splits["base_test"])
    results["base_domain_unchanged"] = translations == base_domain_translations
    results["base_domain_bleu_with_adapters_loaded_none_active"] = base_again
    write(results, args)
    print(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
