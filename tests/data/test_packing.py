import numpy as np
import pytest

from keras_transformer import data
from keras_transformer.data import packing, pipeline
from keras_transformer.models.transformer import PACKED_INPUTS


def corpus(num_pairs=300, seed=0):
    """Word pairs with Multi30k-like spread: 2 to 30 words a side."""
    rng = np.random.default_rng(seed)
    words = [f"w{index}" for index in range(50)]
    sources = [" ".join(rng.choice(words, rng.integers(2, 31))) for _ in range(num_pairs)]
    targets = [" ".join(rng.choice(words, rng.integers(2, 31))) for _ in range(num_pairs)]
    return sources, targets


@pytest.fixture(scope="module")
def pairs():
    sources, targets = corpus()
    tokenizer = data.WordTokenizer.from_texts(sources + targets)
    return pipeline.tokenize_pairs(sources, targets, tokenizer, tokenizer)


def unpack(rows):
    """The (source, target ids, labels) of every segment of packed rows."""
    found = []
    for row in range(len(rows["labels"])):
        segments = rows["target_segment_ids"][row]
        for segment in range(1, segments.max() + 1):
            on_source = rows["source_segment_ids"][row] == segment
            on_target = segments == segment
            found.append((
                tuple(rows["source_ids"][row][on_source]),
                tuple(rows["target_ids"][row][on_target]),
                tuple(rows["labels"][row][on_target]),
            ))  # fmt: skip
    return found


def test_every_pair_is_packed_once_with_its_own_target_and_teacher_forcing(pairs):
    rows = packing.pack_rows(pairs, *packing.row_lengths(pairs), seed=3)
    expected = []
    for source, target in zip(pairs.sources.to_list(), pairs.targets.to_list()):
        expected.append((
            tuple(source),
            (data.BOS_ID, *target),
            (*target, data.EOS_ID),
        ))  # fmt: skip
    assert sorted(unpack(rows)) == sorted(expected)


def test_segments_are_contiguous_numbered_from_one_and_padding_only_at_the_end(pairs):
    rows = packing.pack_rows(pairs, *packing.row_lengths(pairs))
    for side in ("source", "target"):
        for segments, ids in zip(rows[f"{side}_segment_ids"], rows[f"{side}_ids"]):
            real = segments[segments > 0]
            assert (np.diff(real) >= 0).all() and (np.diff(np.unique(real)) == 1).all()
            assert real[0] == 1 and (segments[len(real):] == 0).all()
            np.testing.assert_array_equal(ids != data.PAD_ID, segments > 0)


def test_rows_hold_the_longest_pair_and_fill_with_little_padding(pairs):
    source_length, target_length = packing.row_lengths(pairs)
    assert target_length % 8 == 0 and target_length >= max(
        packing.MIN_ROW_LENGTH, pairs.longest_decoder
    )
    assert source_length % 8 == 0 and source_length >= pairs.longest_source
    rows = packing.pack_rows(pairs, source_length, target_length)
    target_fill = (rows["labels"] != 0).mean()
    assert target_fill > 0.9, target_fill


def test_rows_too_short_for_the_longest_pair_are_refused(pairs):
    with pytest.raises(ValueError, match="cannot hold the longest pair"):
        packing.pack_rows(pairs, pairs.longest_source - 1, 200)


def test_packed_batches_have_one_shape_and_the_cardinality_they_yield(pairs):
    source_length, target_length = packing.row_lengths(pairs)
    tokens_per_batch = 5 * target_length
    dataset = packing.packed_dataset(pairs, tokens_per_batch, pad_incomplete_batches=True)
    batches = list(dataset)
    assert len(batches) == int(dataset.cardinality())
    assert {tuple(inputs["source_ids"].shape) for inputs, _ in batches} == {
        (5, source_length)
    }
    assert {tuple(labels.shape) for _, labels in batches} == {(5, target_length)}
    assert set(batches[0][0]) == {"source_ids", "target_ids", *PACKED_INPUTS}
    label_tokens = sum(int((labels.numpy() != 0).sum()) for _, labels in batches)
    assert label_tokens == pairs.label_tokens


def test_rows_are_reshuffled_every_epoch_and_the_same_for_the_same_seed(pairs):
    def epochs(seed):
        dataset = packing.packed_dataset(pairs, 256, seed=seed)
        return [
            np.concatenate([labels.numpy() for _, labels in dataset]) for _ in range(2)
        ]

    first, second = epochs(seed=1)
    assert not np.array_equal(first, second)
    np.testing.assert_array_equal(sorted(map(tuple, first)), sorted(map(tuple, second)))
    np.testing.assert_array_equal(epochs(seed=1)[0], first)


@pytest.mark.parametrize(
    "options, message",
    [
        ({"tokens_per_batch": 8}, "fewer than one packed row"),
        ({"tokens_per_batch": 0}, "tokens_per_batch"),
        ({"tokens_per_batch": 256, "seed": -1}, "seed"),
        (
            {"tokens_per_batch": 256, "drop_remainder": True, "pad_incomplete_batches": True},
            "exclude each other",
        ),
    ],
)
def test_bad_batching_arguments_are_refused(pairs, options, message):
    with pytest.raises(ValueError, match=message):
        packing.packed_dataset(pairs, **options)


def test_packed_dataset_wants_the_pairs_of_tokenize_pairs():
    with pytest.raises(ValueError, match="TokenizedPairs.*Received: pairs=list"):
        packing.packed_dataset([("a", "b")], 256)
