"""scripts/adapters_demo.py: its flags and its split of Multi30k by topic.

The demonstration itself (minutes of training on the corpus) is run by hand
and reported in docs/adapters.md; these tests check what it is given.
"""

import collections

import pytest

from tests.conftest import load_script
from tests.conftest import usage_error as script_usage_error

SPLITS = ("train", "val", "test_2016_flickr")
TRANSLATIONS = {
    "A dog runs.": "Ein Hund rennt.",
    "A man sits.": "Ein Mann sitzt.",
    "Two puppies play.": "Zwei Welpen spielen.",
    "A woman reads.": "Eine Frau liest.",
}


def usage_error(capsys, *arguments):
    """adapters_demo.py's usage-error line for `arguments`."""
    return script_usage_error(capsys, load_script("adapters_demo").main, arguments)


@pytest.fixture
def corpus(tmp_path):
    """A Multi30k-shaped folder: the 4 pairs in every split, 2 about dogs."""
    for split in SPLITS:
        for side, texts in (("en", TRANSLATIONS), ("de", TRANSLATIONS.values())):
            (tmp_path / f"{split}.{side}").write_text("\n".join(texts) + "\n", encoding="utf-8")
    return tmp_path


@pytest.mark.parametrize(
    "flags, line",
    [
        (["--base-epochs", "0"], "--base-epochs: expected a positive integer"),
        (["--num-test", "-1"], "--num-test: expected a positive integer"),
        (["--ranks", "0", "8"], "--ranks: expected positive integers"),
    ],
)
def test_a_bad_flag_is_one_usage_line_naming_it(corpus, tmp_path, capsys, flags, line):
    arguments = ["--data-dir", corpus, "--output-dir", tmp_path / "out", *flags]
    assert usage_error(capsys, *arguments) == f"adapters_demo.py: error: {line}"
    assert not (tmp_path / "out").exists()


def test_a_missing_corpus_file_is_named(corpus, tmp_path, capsys):
    (corpus / "val.de").unlink()
    line = usage_error(capsys, "--data-dir", corpus, "--output-dir", tmp_path / "out")
    assert line == f"adapters_demo.py: error: --data-dir: no such file: {corpus / 'val.de'}"


def test_the_topic_is_every_pair_about_dogs_and_its_test_pairs_are_held_out(corpus):
    demo = load_script("adapters_demo")
    args = demo.parse_args(["--data-dir", str(corpus), "--output-dir", "unused", "--num-test", "5"])
    splits = demo.split_domains(args)
    topic_test, topic_train = splits["topic_test"][0], splits["topic_train"][0]
    # Each split has two dog pairs: val's and test's four are held out, and
    # one of train's two tops them up to --num-test; the other trains.
    assert len(topic_test) == 5 and len(topic_train) == 1
    assert collections.Counter(topic_test + topic_train) == {"A dog runs.": 3, "Two puppies play.": 3}
    assert sorted(splits["base_train"][0]) == ["A man sits.", "A woman reads."]
    assert sorted(splits["base_test"][0]) == ["A man sits.", "A man sits.", "A woman reads.", "A woman reads."]
    # Pairs stay pairs.
    for sources, targets in splits.values():
        assert all(TRANSLATIONS[source] == target for source, target in zip(sources, targets))
