import logging

import numpy as np
import pytest
import tensorflow as tf

from keras_transformer import data
from tests.conftest import mean_real_tokens

SOURCES = [
    "one",
    "one two",
    "one two three",
    "four five six seven",
    "five",
    "six seven eight nine ten eleven",
    "two three",
    "seven eight nine ten eleven twelve one two three",
]
TARGETS = [
    "a",
    "a b",
    "a b c",
    "d e f g",
    "e",
    "f g h i j k",
    "b c",
    "g h i j k l a b c",
]


@pytest.fixture(scope="module")
def tokenizers():
    return (
        data.WordTokenizer.from_texts(SOURCES),
        data.CharacterTokenizer.from_texts(TARGETS),
    )


def make(tokenizers, **kwargs):
    options = {"batch_size": 2, **kwargs}
    return data.make_translation_dataset(SOURCES, TARGETS, *tokenizers, **options)


def batches(dataset):
    return [
        (x["source_ids"].numpy(), x["target_ids"].numpy(), y.numpy())
        for x, y in dataset
    ]


def test_batches_hold_int32_ids_with_documented_shapes(tokenizers):
    dataset = make(tokenizers, batch_size=3, bucket_boundaries=[])
    inputs_spec, labels_spec = dataset.element_spec
    assert set(inputs_spec) == {"source_ids", "target_ids"}
    for spec in (inputs_spec["source_ids"], inputs_spec["target_ids"], labels_spec):
        assert spec.dtype == tf.int32 and spec.shape.as_list() == [None, None]
    results = batches(dataset)
    assert [len(labels) for _, _, labels in results] == [3, 3, 2]
    for source_ids, target_ids, labels in results:
        assert target_ids.shape == labels.shape
        assert source_ids.shape[0] == labels.shape[0]


def test_labels_are_target_ids_shifted_left_with_eos(tokenizers):
    for _, target_ids, labels in batches(make(tokenizers, shuffle=False)):
        for target_row, label_row in zip(target_ids, labels):
            length = int((label_row != data.PAD_ID).sum())
            assert target_row[0] == data.BOS_ID
            assert label_row[length - 1] == data.EOS_ID
            np.testing.assert_array_equal(label_row[: length - 1], target_row[1:length])
            assert (target_row[length:] == data.PAD_ID).all()
            assert (label_row[length:] == data.PAD_ID).all()


def test_every_example_appears_once_and_decodes_to_its_texts(tokenizers):
    source_tokenizer, target_tokenizer = tokenizers
    pairs = []
    for source_ids, target_ids, labels in batches(make(tokenizers)):
        sources = source_tokenizer.detokenize(source_ids).numpy()
        targets = target_tokenizer.detokenize(labels).numpy()
        pairs += [(s.decode(), t.decode()) for s, t in zip(sources, targets)]
    assert sorted(pairs) == sorted(zip(SOURCES, TARGETS))


def test_padding_is_zero_beyond_each_sequence(tokenizers):
    source_tokenizer, _ = tokenizers
    lengths = {
        text: len(ids)
        for text, ids in zip(SOURCES, source_tokenizer.tokenize(SOURCES).numpy())
    }
    for source_ids, _, _ in batches(make(tokenizers, bucket_boundaries=[])):
        for row in source_ids:
            text = source_tokenizer.detokenize(row[None]).numpy()[0].decode()
            assert (row[lengths[text] :] == data.PAD_ID).all()
            assert (row[: lengths[text]] != data.PAD_ID).all()


def order(dataset):
    return [tuple(labels[:, 0].tolist()) for _, _, labels in batches(dataset)]


def test_same_seed_gives_same_order_and_other_seeds_differ(tokenizers):
    first = order(make(tokenizers, seed=7, bucket_boundaries=[]))
    assert order(make(tokenizers, seed=7, bucket_boundaries=[])) == first
    others = {
        tuple(order(make(tokenizers, seed=seed, bucket_boundaries=[])))
        for seed in range(1, 6)
    }
    assert len(others - {tuple(first)}) >= 1


def test_bucketing_groups_examples_of_similar_length(tokenizers):
    dataset = make(tokenizers, batch_size=8, bucket_boundaries=[3, 6])
    for source_ids, target_ids, _ in batches(dataset):
        lengths = np.maximum(
            (source_ids != 0).sum(axis=1), (target_ids != 0).sum(axis=1)
        )
        buckets = np.searchsorted([3, 6], lengths, side="right")
        assert len(set(buckets.tolist())) == 1, lengths


def test_automatic_buckets_come_from_the_length_limits(tokenizers):
    dataset = make(tokenizers, batch_size=8, max_source_length=16, max_target_length=16)
    for source_ids, target_ids, _ in batches(dataset):
        lengths = np.maximum(
            (source_ids != 0).sum(axis=1), (target_ids != 0).sum(axis=1)
        )
        # Eight buckets of width 2 over [1, 16].
        assert len(set(((lengths - 1) // 2).tolist())) == 1, lengths


def test_overlong_examples_are_dropped_with_a_warning(tokenizers, caplog):
    with caplog.at_level(logging.WARNING, logger="keras_transformer.data.pipeline"):
        dataset = make(tokenizers, max_source_length=3, max_target_length=5)
    assert "Dropped 4 of 8 examples" in caplog.text
    assert "3 with more than max_source_length=3" in caplog.text
    assert "4 with more than max_target_length=5" in caplog.text
    results = batches(dataset)
    assert sum(len(labels) for _, _, labels in results) == 4
    for source_ids, target_ids, _ in results:
        assert source_ids.shape[1] <= 3 and target_ids.shape[1] <= 5


def test_empty_sources_are_dropped_with_a_warning(tokenizers, caplog):
    with caplog.at_level(logging.WARNING, logger="keras_transformer.data.pipeline"):
        dataset = data.make_translation_dataset(
            ["one", "  "], ["a", "b"], *tokenizers, batch_size=2
        )
    assert "Dropped 1 of 2 examples (1 with an empty source)" in caplog.text
    assert [len(labels) for _, _, labels in batches(dataset)] == [1]


def test_repeat_and_drop_remainder_give_full_batches_forever(tokenizers):
    dataset = make(tokenizers, batch_size=3, repeat=True, drop_remainder=True)
    sizes = [len(labels) for _, _, labels in batches(dataset.take(10))]
    assert sizes == [3] * 10


def widths(batch):
    return [ids.shape[1] for ids in batch]


def test_token_batches_stay_within_the_budget_with_bucket_batch_sizes(tokenizers):
    # Decoder lengths (the longer side here) are 2, 4, 6, 8, 2, 12, 4, 18.
    boundaries, budget = [4, 8, 13], 24
    tops = [3, 7, 12, 18]
    dataset = make(
        tokenizers,
        batch_size=None,
        tokens_per_batch=budget,
        bucket_boundaries=boundaries,
        shuffle=False,
    )
    results = batches(dataset)
    for batch in results:
        rows = len(batch[0])
        assert all(rows * width <= budget for width in widths(batch))
        bucket = int(np.searchsorted(boundaries, max(widths(batch)), side="right"))
        assert rows <= budget // tops[bucket]
    # Batch sizes 8, 3, 2 and 1 for buckets holding 2, 3, 2 and 1 examples.
    assert sorted(len(batch[0]) for batch in results) == [1, 2, 2, 3]
    decoded_sources = sorted(
        text.decode()
        for source_ids, _, _ in results
        for text in tokenizers[0].detokenize(source_ids).numpy()
    )
    assert decoded_sources == sorted(SOURCES)


def test_token_batches_padded_to_bucket_tops_have_one_shape_per_bucket(tokenizers):
    dataset = make(
        tokenizers,
        batch_size=None,
        tokens_per_batch=24,
        bucket_boundaries=[4, 8, 13],
        pad_to_bucket_boundary=True,
        pad_incomplete_batches=True,
        shuffle=False,
    )
    shapes = {batch[2].shape for batch in batches(dataset)}
    # (24 // top, top) for the buckets that hold examples; the last bucket's
    # top is the longest decoder sequence, 18.
    assert shapes == {(8, 3), (3, 7), (2, 12), (1, 18)}


@pytest.mark.parametrize(
    "options",
    [
        {"batch_size": 3},
        {"batch_size": 3, "drop_remainder": True},
        {"batch_size": None, "tokens_per_batch": 24, "bucket_boundaries": [4, 8]},
        {
            "batch_size": None,
            "tokens_per_batch": 40,
            "bucket_boundaries": [3, 5, 13],
            "drop_remainder": True,
        },
    ],
)
def test_the_dataset_knows_how_many_batches_one_pass_makes(tokenizers, options):
    dataset = make(tokenizers, **options)
    assert len(dataset) == len(batches(dataset))


@pytest.mark.parametrize(
    "options",
    [
        {"batch_size": 3, "shuffle": False},
        {"batch_size": None, "tokens_per_batch": 24, "bucket_boundaries": [4, 8],
         "pad_to_bucket_boundary": True, "seed": 3},
    ],
)  # fmt: skip
def test_pairs_tokenized_once_batch_exactly_as_their_texts_do(tokenizers, options):
    pairs = data.pipeline.tokenize_pairs(
        SOURCES, TARGETS, *tokenizers, max_source_length=8, max_target_length=12
    )
    dataset = make(tokenizers, max_source_length=8, max_target_length=12, **options)
    expected = batches(dataset)
    for _ in range(2):  # one TokenizedPairs serves any number of datasets
        got = data.pipeline.batch_pairs(pairs, **{"batch_size": 2, **options})
        assert len(got) == len(dataset) == len(expected)
        for (x, _, y), (x_ref, _, y_ref) in zip(batches(got), expected):
            np.testing.assert_array_equal(x, x_ref)
            np.testing.assert_array_equal(y, y_ref)


def test_tokenized_pairs_count_the_tokens_of_the_pairs_they_keep(tokenizers):
    source_tokenizer, target_tokenizer = tokenizers
    pairs = data.pipeline.tokenize_pairs(
        SOURCES, TARGETS, *tokenizers, max_source_length=5
    )
    # Counted text by text: the sources of at most 5 words, their targets'
    # characters plus one [EOS] each.
    kept = [i for i, source in enumerate(SOURCES) if len(source.split()) <= 5]
    assert pairs.source_tokens == sum(len(SOURCES[i].split()) for i in kept)
    assert pairs.label_tokens == sum(
        len(target_tokenizer.tokenize([TARGETS[i]]).flat_values) + 1 for i in kept
    )


@pytest.mark.parametrize(
    "options", [{"batch_size": 3}, {"tokens_per_batch": 24, "bucket_boundaries": [4]}]
)
def test_the_streams_tokens_per_batch_are_what_its_batches_hold(tokenizers, options):
    pairs = data.pipeline.tokenize_pairs(SOURCES, TARGETS, *tokenizers)
    per_pass = len(data.pipeline.batch_pairs(pairs, **options))
    stream = data.pipeline.batch_pairs(pairs, repeat=True, drop_remainder=True, **options)
    credited = data.pipeline.stream_tokens_per_batch(pairs, **options)
    # Counted on 600 batches of the stream (over 100 passes): within 1%.
    np.testing.assert_allclose(credited, mean_real_tokens(stream, 600), rtol=0.01)
    # `per_pass` batches of the stream hold more than one pass: every batch
    # is full.
    assert credited[1] * per_pass > pairs.label_tokens


def test_batch_pairs_wants_the_pairs_of_tokenize_pairs(tokenizers):
    with pytest.raises(ValueError, match="TokenizedPairs of tokenize_pairs.*Received: pairs=list"):
        data.pipeline.batch_pairs([SOURCES, TARGETS], batch_size=2)


def test_read_tsv_returns_chosen_columns_and_skips_empty_lines(tmp_path):
    path = tmp_path / "pairs.tsv"
    path.write_text("id1\tbonjour\thello\r\n\nid2\tmerci\tthanks\n", encoding="utf-8")
    assert data.read_tsv(path, source_column=2, target_column=1) == (
        ["hello", "thanks"],
        ["bonjour", "merci"],
    )


def test_read_tsv_names_the_malformed_line(tmp_path):
    path = tmp_path / "pairs.tsv"
    path.write_text("a\tb\nno tab here\n", encoding="utf-8")
    with pytest.raises(ValueError, match="Malformed TSV line 2"):
        data.read_tsv(path)
    path.write_bytes(b"a\tb\n\xff\tc\n")
    with pytest.raises(ValueError, match="line 2 is not valid UTF-8"):
        data.read_tsv(path)


def test_read_parallel_files_pairs_lines_and_checks_counts(tmp_path):
    (tmp_path / "src.txt").write_text("a\n\nc\n", encoding="utf-8")
    (tmp_path / "tgt.txt").write_text("x\ny\nz", encoding="utf-8")
    assert data.read_parallel_files(tmp_path / "src.txt", tmp_path / "tgt.txt") == (
        ["a", "", "c"],
        ["x", "y", "z"],
    )
    (tmp_path / "short.txt").write_text("x\ny\n", encoding="utf-8")
    with pytest.raises(ValueError, match="has 3 and .* has 2"):
        data.read_parallel_files(tmp_path / "src.txt", tmp_path / "short.txt")


@pytest.mark.parametrize("reader", ["tsv", "parallel"])
def test_readers_report_missing_files(reader, tmp_path):
    missing = tmp_path / "missing.txt"
    with pytest.raises(ValueError, match="File not found"):
        if reader == "tsv":
            data.read_tsv(missing)
        else:
            data.read_parallel_files(missing, missing)


def test_read_tsv_rejects_bad_columns(tmp_path):
    with pytest.raises(ValueError, match="must differ"):
        data.read_tsv(tmp_path / "x.tsv", source_column=1, target_column=1)
    with pytest.raises(ValueError, match="source_column"):
        data.read_tsv(tmp_path / "x.tsv", source_column=-1)


@pytest.mark.parametrize(
    "overrides, match",
    [
        ({"target_texts": TARGETS[:-1]}, "8 source texts and 7 target texts"),
        ({"source_texts": "one"}, "not a single string"),
        ({"source_texts": [], "target_texts": []}, "at least one example"),
        ({"source_tokenizer": "words"}, "source_tokenizer"),
        ({"batch_size": 0}, "batch_size"),
        ({"max_source_length": 0}, "max_source_length"),
        ({"max_target_length": 1.5}, "max_target_length"),
        ({"seed": -1}, "seed"),
        ({"bucket_boundaries": [4, 2]}, "bucket_boundaries"),
        ({"bucket_boundaries": 5}, "bucket_boundaries"),
        ({"max_source_length": 1, "max_target_length": 1}, "No example is left"),
        ({"batch_size": None}, "exactly one of batch_size"),
        ({"tokens_per_batch": 64}, "exactly one of batch_size"),
        ({"batch_size": None, "tokens_per_batch": 0}, "tokens_per_batch"),
        (
            {"batch_size": None, "tokens_per_batch": 17},
            r"argument tokens_per_batch, expected at least 18",
        ),
    ],
)
def test_make_translation_dataset_rejects_bad_arguments(tokenizers, overrides, match):
    arguments = {
        "source_texts": SOURCES,
        "target_texts": TARGETS,
        "source_tokenizer": tokenizers[0],
        "target_tokenizer": tokenizers[1],
        "batch_size": 2,
        **overrides,
    }
    with pytest.raises(ValueError, match=match):
        data.make_translation_dataset(**arguments)


def test_a_corpus_of_empty_sources_says_so_not_to_raise_the_limits():
    tokenizer = data.CharacterTokenizer.from_texts(["ab"])
    with pytest.raises(ValueError) as info:
        data.make_translation_dataset(["", ""], ["a", "b"], tokenizer, tokenizer, batch_size=2)
    message = str(info.value)
    assert "2 with an empty source" in message
    assert "give sources of at least one token" in message
    assert "max_source_length" not in message


def test_split_corpus_holds_out_a_tenth_drawn_by_the_seed():
    sources = [f"s{i}" for i in range(50)]
    targets = [f"t{i}" for i in range(50)]
    train_sources, train_targets, test_sources, test_targets = data.split_corpus(
        sources, targets, seed=3
    )
    assert (len(train_sources), len(test_sources)) == (45, 5)
    # Pairs stay pairs, and every pair is in exactly one split.
    assert [s[1:] for s in train_sources + test_sources] == [
        t[1:] for t in train_targets + test_targets
    ]
    assert sorted(train_sources + test_sources) == sorted(sources)
    again = data.split_corpus(sources, targets, seed=3)
    assert again[2] == test_sources
    assert data.split_corpus(sources, targets, seed=4)[2] != test_sources


def test_split_corpus_keeps_given_held_out_pairs_and_the_first_pairs_asked_for():
    train_sources, train_targets, test_sources, test_targets = data.split_corpus(
        SOURCES, TARGETS, held_out=(["x", "y", "z"], ["X", "Y", "Z"]),
        num_train=5, num_test=2,
    )  # fmt: skip
    assert (train_sources, train_targets) == (SOURCES[:5], TARGETS[:5])
    assert (test_sources, test_targets) == (["x", "y"], ["X", "Y"])


@pytest.mark.parametrize(
    "arguments, message",
    [
        (dict(sources=["a"], targets=["b"]), "0 training and 1 held-out pairs"),
        (dict(sources=["a", "b"], targets=["c"]), "2 sources and 1 targets"),
        (dict(sources=["a"], targets=["b"], held_out=(["c"], [])), "1 held-out sources"),
        (dict(sources=SOURCES, targets=TARGETS, num_test=0), "argument num_test"),
    ],
)
def test_split_corpus_refuses_what_makes_no_split(arguments, message):
    with pytest.raises(ValueError, match=message):
        data.split_corpus(**arguments)
