"""The adapter path of `scripts/train.py`: a named LoRA adapter of a trained
translator, fine-tuned on a corpus, written as a small file with a run record.

    python scripts/train.py --base saved_models/en_de/en_de.keras \\
        --adapter medical --adapter-rank 8 --source med.en --target med.de

The base model is loaded from `--base` and left as it is; the adapter file
(`keras_transformer.translation.adapters`) goes to
`<output-dir>/<name>/<adapter>.npz` and the run record to
`<log-dir>/<name>/run.json`, `<name>` defaulting to the adapter's name.
"""

import dataclasses
import os
import time

import keras

from keras_transformer import evaluation
from keras_transformer.models.transformer import TransformerConfig
from keras_transformer.translation import adapters, flags, run_record, text

# Fine-tuning defaults of the adapter path (each a flag of train.py): a few
# thousand pairs, a few minutes; LoRA takes a higher rate than full training.
# warmup_steps None: 5% of the run, whatever the corpus' size.
DEFAULTS = {"epochs": 5, "batch_size": 32, "learning_rate": 5e-3, "warmup_steps": None}
# Flags that make a new model, which --base already is; and flags of the
# normal path whose defaults the adapter path keeps.
_MODEL_FLAGS = tuple(
    field.name for field in dataclasses.fields(TransformerConfig)
) + ("tokenizer", "vocabulary_size", "joint_vocabulary", "checkpoint_dir",
     "attention_plot")  # fmt: skip
# Flag values the adapter path honours (static_shapes: None, the default,
# lets fit decide; an adapter trains for --epochs, by its own schedule).
_FIXED_FLAGS = {
    "precision": None,
    "strategy": "default",
    "static_shapes": None,
    "minutes": None,
    "warmup_fraction": None,
}


def add_flags(parser):
    """Adds the adapter path's flags to train.py's `parser`."""
    adapter = parser.add_argument_group("LoRA adapter (fine-tune a trained model)")
    adapter.add_argument("--base", help="the trained translator (.keras) to adapt")
    adapter.add_argument("--adapter", help="name of the adapter to train")
    adapter.add_argument("--adapter-rank", type=flags.positive_int, default=8)
    adapter.add_argument("--adapter-alpha", type=float, help="default: 2 * rank")
    adapter.add_argument(
        "--adapter-target", action="append",
        help="layer path pattern (repeatable); default: attention query/value",
    )  # fmt: skip


def check_flags(parser, args):
    """Refuses flags the adapter path cannot honour, argparse-style."""
    if bool(args.base) != bool(args.adapter):
        parser.error("--base and --adapter go together")
    if not os.path.isfile(args.base) or not args.base.endswith(".keras"):
        parser.error(f"--base: expected a .keras file of a Translator, got {args.base}")
    if not adapters.is_valid_name(args.adapter):
        parser.error(
            "--adapter: expected a name of letters, digits, '_' and '-', got "
            f"{args.adapter!r}"
        )
    if args.adapter_alpha is not None and not args.adapter_alpha > 0:
        parser.error(f"--adapter-alpha: expected a positive number, got {args.adapter_alpha}")
    for name in _MODEL_FLAGS:
        if getattr(args, name, None) is not None:
            parser.error(
                f"--{name.replace('_', '-')}: the model comes from --base; this "
                "flag does not apply with --adapter"
            )
    for name, default in _FIXED_FLAGS.items():
        if getattr(args, name) != default:
            parser.error(f"--{name.replace('_', '-')}: not available with --adapter")


def _setting(args, name):
    value = getattr(args, name, None)
    return DEFAULTS[name] if value is None else value


def train(args, pairs, started):
    """Fine-tunes `args.adapter` on `pairs`; prints held-out scores.

    Args:
        args: train.py's parsed flags.
        pairs: `(train_sources, train_targets, test_sources, test_targets)`.
        started: `time.perf_counter()` at the start of the script.

    Returns:
        0, the exit code.
    """
    train_sources, train_targets, test_sources, test_targets = pairs
    translator = keras.saving.load_model(args.base)
    if not hasattr(translator, "add_adapter"):
        raise SystemExit(f"error: --base: {args.base} holds no Translator")
    if args.adapter in translator.adapters:
        raise SystemExit(
            f"error: --adapter: {args.base} already has an adapter named "
            f"{args.adapter!r}; pick another name"
        )
    test_sources, test_targets = text.pairs_that_fit(translator, test_sources, test_targets)
    metric = "sacrebleu" if args.corpus else "exact_match"

    def held_out_scores():
        hypotheses = translator.translate(test_sources)
        return [f"held-out {evaluation.score_summary(hypotheses, test_targets, metric)}"]

    base_lines = held_out_scores()
    rank = args.adapter_rank
    alpha = args.adapter_alpha or 2.0 * rank
    cpu_started = time.process_time()
    _, seconds = adapters.train_adapter(
        translator,
        args.adapter,
        train_sources,
        train_targets,
        rank=rank,
        alpha=alpha,
        target_layers=args.adapter_target,
        epochs=_setting(args, "epochs"),
        batch_size=_setting(args, "batch_size"),
        learning_rate=_setting(args, "learning_rate"),
        warmup_steps=_setting(args, "warmup_steps"),
        seed=args.seed,
        validation_data=(test_sources, test_targets),
        verbose=2 if args.corpus else 1,
    )
    cpu_seconds = time.process_time() - cpu_started
    lines = held_out_scores()
    output = os.path.join(args.output_dir, args.name)
    os.makedirs(output, exist_ok=True)
    path = os.path.join(output, f"{args.adapter}.npz")
    translator.save_adapter(args.adapter, path)
    trainable = adapters.trainable_parameters(translator)
    record = {
        "name": args.name,
        "corpus": (args.tsv or f"{args.source} -> {args.target}")
        if args.corpus
        else "date task",
        "command": args.command,
        "base": args.base,
        "adapter": {
            "name": args.adapter, "rank": rank, "alpha": alpha, "file": path,
            "file_bytes": os.path.getsize(path),
            "layers": translator._adapter_bank.specs[args.adapter].paths,
        },  # fmt: skip
        "training_seconds": seconds,
        "cpu_seconds": cpu_seconds,
        "parameters": translator.count_params() - trainable,
        "trainable_parameters": trainable,
        "settings": {name: _setting(args, name) for name in DEFAULTS},
        "held_out": {"base": base_lines, "adapter": lines},
        "load": run_record.load(),
        "machine": run_record.machine(),
    }
    run_record.write(os.path.join(args.log_dir, args.name, "run.json"), record)
    print(f"Adapter {args.adapter!r}: {path} ({os.path.getsize(path):,} bytes, "
          f"{trainable:,} trainable parameters)")  # fmt: skip
    print("\n".join(f"base: {line}" for line in base_lines))
    print("\n".join(f"adapter: {line}" for line in lines))
    print(
        f"wall time: {time.perf_counter() - started:.1f} s (training {seconds:.1f} s)"
    )
    return 0
