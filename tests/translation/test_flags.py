"""keras_transformer.translation.flags: the training scripts' flags."""

import argparse

import pytest

from keras_transformer.translation import flags, recipes


def parser_with_recipe_flags():
    parser = argparse.ArgumentParser(prog="run.py")
    flags.add_data_flags(parser)
    flags.add_recipe_flags(parser)
    parser.add_argument("--seed", type=int, default=0)
    return parser


def recipe_of(*arguments, recipe=recipes.CORPUS):
    args = parser_with_recipe_flags().parse_args(list(arguments))
    return flags.recipe_from_flags(recipe, args)


def test_flags_left_out_keep_the_recipe():
    assert recipe_of() == recipes.CORPUS


def test_recipe_and_model_flags_change_only_their_fields():
    recipe = recipe_of("--epochs", "2", "--learning-rate", "0.001", "--hidden-dim", "64",
                       "--no-share-embeddings")  # fmt: skip
    assert (recipe.epochs, recipe.learning_rate) == (2, 0.001)
    assert recipe.model == {**recipes.CORPUS.model, "hidden_dim": 64,
                            "share_embeddings": False}  # fmt: skip
    assert recipe.tokens_per_batch == recipes.CORPUS.tokens_per_batch


def test_a_width_flag_alone_moves_the_recipes_learning_rate_to_that_width():
    twice = 2 * recipes.CORPUS.model["hidden_dim"]
    recipe = recipe_of("--hidden-dim", str(twice), "--num-heads", "8")
    assert recipe.learning_rate == pytest.approx(recipes.CORPUS.learning_rate / 2)


def test_epochs_alone_replace_the_recipes_time_budget_and_minutes_set_one():
    assert recipes.CORPUS.minutes == 30
    assert (recipe_of("--epochs", "3").epochs, recipe_of("--epochs", "3").minutes) == (3, None)
    assert recipe_of("--minutes", "5").minutes == 5.0
    # Both: a budget of 5 minutes, at most 3 epochs.
    both = recipe_of("--minutes", "5", "--epochs", "3")
    assert (both.minutes, both.epochs) == (5.0, 3)


def test_batch_size_batches_by_pairs_instead_of_tokens():
    packing = recipes.CORPUS.override(pack=True)
    recipe = recipe_of("--batch-size", "16", recipe=packing)
    assert (recipe.batch_size, recipe.tokens_per_batch, recipe.pack) == (16, None, False)


def test_pack_flags_turn_packing_on_and_off():
    assert recipe_of("--pack", recipe=recipes.CORPUS.override(pack=False)).pack is True
    assert recipe_of("--no-pack", recipe=recipes.CORPUS.override(pack=True)).pack is False


def test_another_tokenizer_drops_the_recipes_tokenizer_options():
    recipe = recipe_of("--tokenizer", "word")
    assert (recipe.tokenizer, dict(recipe.tokenizer_options)) == ("word", {})


@pytest.mark.parametrize(
    "arguments, line",
    [
        (["--hidden-dim", "30"], "--hidden-dim: expected a multiple of num_heads=8, received 30"),
        (["--label-smoothing", "1"], "--label-smoothing: expected a float in the range [0, 1), received 1.0"),
        (["--epochs", "0"], "argument --epochs: expected a positive integer, got 0"),
        (["--minutes", "0"], "argument --minutes: expected a positive number, got 0"),
        (["--warmup-fraction", "1.5"], "--warmup-fraction: expected a float in the range (0, 1), received 1.5"),
        (["--minutes", "inf"], "argument --minutes: expected a positive number, got inf"),
    ],
)  # fmt: skip
def test_a_value_the_recipe_refuses_is_a_usage_line_naming_the_flag(
    capsys, arguments, line
):
    parser = parser_with_recipe_flags()
    with pytest.raises(SystemExit) as error, flags.usage_errors(parser):
        flags.recipe_from_flags(recipes.CORPUS, parser.parse_args(arguments))
    assert error.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == f"run.py: error: {line}"


def test_usage_errors_let_an_error_that_names_no_flag_through():
    with pytest.raises(ValueError, match="nothing to do with flags"):
        with flags.usage_errors(parser_with_recipe_flags()):
            raise ValueError("nothing to do with flags")


def test_the_date_task_is_the_data_without_a_corpus():
    parser = parser_with_recipe_flags()
    args = parser.parse_args(["--num-train", "30", "--num-test", "5"])
    flags.check_data_flags(parser, args)
    train_sources, train_targets, test_sources, test_targets = flags.pairs_from_flags(args)
    assert not args.corpus
    assert (len(train_sources), len(test_targets)) == (30, 5)
    # Held-out dates never appear in training.
    assert not set(test_targets) & set(train_targets)


def test_a_tsv_corpus_is_split_into_training_and_held_out_pairs(tmp_path):
    corpus = tmp_path / "corpus.tsv"
    corpus.write_text("".join(f"s{i}\tt{i}\n" for i in range(20)), encoding="utf-8")
    parser = parser_with_recipe_flags()
    args = parser.parse_args(["--tsv", str(corpus), "--seed", "1"])
    flags.check_data_flags(parser, args)
    flags.check_corpus_files(parser, args)
    train_sources, _, test_sources, test_targets = flags.pairs_from_flags(args)
    assert args.corpus and (len(train_sources), len(test_sources)) == (18, 2)
    assert [target[1:] for target in test_targets] == [s[1:] for s in test_sources]


def test_positive_int_is_an_argparse_type_error_below_one():
    assert flags.positive_int("3") == 3
    with pytest.raises(argparse.ArgumentTypeError, match="expected a positive integer, got 0"):
        flags.positive_int("0")
