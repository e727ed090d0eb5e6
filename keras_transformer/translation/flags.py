"""Command-line flags for recipes, as the training scripts take them.

`scripts/train.py` and `scripts/colab_tpu.py` share these: the argparse
type of a positive count; the flags of the training data (a corpus or the
date task: `add_data_flags`, `pairs_from_flags`); the flags of a recipe's
fields, one per `TransformerConfig` field among them (`add_recipe_flags`),
and the recipe they make (`recipe_from_flags`); and the library's
`ValueError` as argparse's one usage line naming the flag (`usage_error`,
`usage_errors`).

```python
parser = argparse.ArgumentParser(prog="train.py")
flags.add_recipe_flags(parser)
args = parser.parse_args()
with flags.usage_errors(parser):  # train.py: error: --hidden-dim: ...
    recipe = flags.recipe_from_flags(recipes.DATE_TASK, args)
```
"""

import argparse
import contextlib
import dataclasses
import os
import re
import typing

from keras_transformer import data
from keras_transformer.models.transformer import TransformerConfig
from keras_transformer.translation import recipes

# The date task's pairs unless --num-train / --num-test say otherwise.
DATE_TASK_NUM_TRAIN = 20000
DATE_TASK_NUM_TEST = 1000
# TransformerConfig fields set from the data (the tokenizers), not by flags.
DERIVED_FIELDS = ("source_vocabulary_size", "target_vocabulary_size", "padding_id")


def positive_int(text):
    """argparse type of a count: an int of 1 or more."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
    return value


def positive_float(text):
    """argparse type of a duration: a finite number above 0."""
    value = float(text)
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text}")
    return value


def add_data_flags(parser):
    """Adds the flags of the training data: a corpus (`--tsv`, or
    `--source` and `--target`, and optionally held-out pairs) or, without
    one, the built-in date task; `--num-train`, `--num-test` sizes."""
    corpus = parser.add_argument_group("data (the date task unless a corpus is given)")
    corpus.add_argument("--tsv", help="training pairs, 'source<TAB>target' a line")
    corpus.add_argument("--source", help="training sources, one per line")
    corpus.add_argument("--target", help="training targets, aligned with --source")
    corpus.add_argument("--valid-tsv", help="validation pairs as TSV")
    corpus.add_argument("--valid-source", help="validation sources")
    corpus.add_argument("--valid-target", help="validation targets")
    corpus.add_argument("--num-train", type=positive_int, help="first N training pairs")
    corpus.add_argument("--num-test", type=positive_int, help="held-out pairs")


def check_data_flags(parser, args):
    """Refuses data flags that do not go together and files that cannot be
    read as pairs, argparse-style; sets `args.corpus` (whether a corpus is
    given rather than the date task)."""
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


def check_corpus_files(parser, args):
    """Reads the corpus files the flags name; one that is not pairs of
    UTF-8 text is a usage error naming its flags."""
    corpora = [("--tsv", args.tsv, None), ("--valid-tsv", args.valid_tsv, None),
               ("--source/--target", args.source, args.target),
               ("--valid-source/--valid-target", args.valid_source, args.valid_target)]  # fmt: skip
    for names, path, target_path in corpora:
        if path is None:
            continue
        try:
            sources, _ = _read_pairs(path, target_path)
        except ValueError as error:
            parser.error(f"{names}: {error}")
        if not any(sources):
            kind = "pairs" if target_path is None else "text"
            parser.error(f"{names}: {path} holds no {kind}")


def _read_pairs(path, target_path=None):
    if target_path is None:
        return data.read_tsv(path)
    return data.read_parallel_files(path, target_path)


def pairs_from_flags(args):
    """The training and held-out texts the data flags name.

    Returns:
        `(train_sources, train_targets, test_sources, test_targets)`: the
        date task's splits, or the corpus and its held-out pairs (a
        validation file's, or drawn from the corpus: `data.split_corpus`).
        Exits with an error when either is empty.
    """
    if not args.corpus:
        train, test = data.date_task_splits(
            args.num_train or DATE_TASK_NUM_TRAIN,
            args.num_test or DATE_TASK_NUM_TEST,
            seed=args.seed,
        )
        return (*map(list, zip(*train)), *map(list, zip(*test)))
    held_out = None
    if args.valid_tsv or args.valid_source:
        held_out = _read_pairs(args.valid_tsv or args.valid_source, args.valid_target)
    try:
        return data.split_corpus(
            *_read_pairs(args.tsv or args.source, args.target),
            held_out,
            num_train=args.num_train,
            num_test=args.num_test,
            seed=args.seed,
        )
    except ValueError as error:
        raise SystemExit(f"error: {error}") from None


def add_recipe_flags(parser):
    """Adds the flags of the `Recipe` fields a run may change, named like
    them (`--epochs`, `--learning-rate`, ...), and `add_config_flags`; a
    flag left out is None in the parsed arguments (the recipe's value)."""
    group = parser.add_argument_group("recipe (defaults: the recipe's)")
    group.add_argument("--tokenizer", choices=recipes.TOKENIZERS)
    group.add_argument("--vocabulary-size", type=positive_int)
    group.add_argument("--joint-vocabulary", action=argparse.BooleanOptionalAction)
    group.add_argument(
        "--epochs", type=positive_int, help="passes over the corpus (replaces --minutes)"
    )
    group.add_argument(
        "--minutes",
        type=positive_float,
        help="wall time of training, validation included; the schedule fits it",
    )
    group.add_argument("--batch-size", type=positive_int, help="pairs per replica")
    group.add_argument(
        "--pack",
        action=argparse.BooleanOptionalAction,
        help="several pairs to a row instead of length buckets",
    )
    group.add_argument("--learning-rate", type=float, help="peak Adam learning rate")
    group.add_argument("--warmup-steps", type=int)
    group.add_argument(
        "--warmup-fraction", type=float, help="warm-up's share of the run (no --warmup-steps)"
    )
    group.add_argument("--label-smoothing", type=float)
    group.add_argument("--beam-size", type=positive_int, help="score with beam search")
    group.add_argument("--length-penalty", type=float)
    add_config_flags(parser)


def add_config_flags(parser):
    """Adds one flag per `TransformerConfig` field, named like it
    (`--hidden-dim`, `--remat`/`--no-remat`, ...), in a group of its own;
    a flag left out is None in the parsed arguments (the recipe's value)."""
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


def recipe_from_flags(recipe, args):
    """`recipe` with the fields the parsed flags set (`Recipe.override`).

    A flag named like a `Recipe` field (`--epochs`, `--learning-rate`, ...)
    sets it and one named like a `TransformerConfig` field sets that model
    field; a flag left out (None) keeps the recipe's value. `--batch-size`
    batches by pairs, so it also clears the recipe's `tokens_per_batch`
    (and `pack`, unless `--pack` is given);
    `--epochs` without `--minutes` clears the recipe's time budget;
    `--hidden-dim` without `--learning-rate` moves the recipe's rate to
    that width.

    Args:
        recipe: a `Recipe`.
        args: an `argparse.Namespace`.

    Returns:
        A `Recipe`. Raises `ValueError` (see `usage_error`) for a value the
        recipe refuses.
    """
    names = [field.name for field in dataclasses.fields(recipes.Recipe)]
    changes = {name: getattr(args, name) for name in names
               if getattr(args, name, None) is not None}  # fmt: skip
    changes["model"] = {
        field.name: getattr(args, field.name)
        for field in dataclasses.fields(TransformerConfig)
        if getattr(args, field.name, None) is not None
    }
    if "batch_size" in changes:
        changes["tokens_per_batch"] = None
        # Packed rows are sized by tokens.
        changes.setdefault("pack", False)
    # An epoch count alone is a run of that many epochs, not a bound on a
    # time budget.
    if "epochs" in changes and "minutes" not in changes:
        changes["minutes"] = None
    return recipe.override(**changes)


def flag_message(parser, error):
    """The library's `ValueError` as `--flag: expected ..., received ...`
    for the flag of the argument it names; None when it names no flag of
    `parser`."""
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


def usage_error(parser, error):
    """Exits argparse-style (status 2, one line on stderr) with the
    library's `error`, naming the flag it is about where there is one."""
    parser.error(flag_message(parser, error) or str(error))


@contextlib.contextmanager
def usage_errors(parser):
    """Answers a library `ValueError` that names a flag of `parser` (e.g.
    a warm-up longer than the run, found once the data is read) with that
    flag's usage line; any other error goes on as it is."""
    try:
        yield
    except ValueError as error:
        if flag_message(parser, error) is None:
            raise
        usage_error(parser, error)
