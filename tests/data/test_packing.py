import numpy as np
import pytest

from keras_transformer import data
from keras_transformer.data import packing, pipeline
from keras_transformer.models.transformer import PACKED_INPUTS
from tests.conftest import mean_real_tokens


def corpus(num_pairs=300, seed=0):
    """Word pairs with a long tail, as Multi30k's: mostly 2 to 15 words a
    side, one in ten 20 to 39; a target about as long as its source."""
    rng = np.random.default_rng(seed)
    words = [f"w{index}" for index in range(50)]
    lengths = np.where(
        rng.random(num_pairs) < 0.1,
        rng.integers(20, 40, num_pairs),
        rng.integers(2, 16, num_pairs),
    )
    sources = [" ".join(rng.choice(words, length)) for length in lengths]
    targets = [
        " ".join(rng.choice(words, max(2, length + rng.integers(-2, 3))))
        for length in lengths
    ]
    return sources, targets


@pytest.fixture(scope="module")
def pairs():
    sources, targets = corpus()
    tokenizer = data.WordTokenizer.from_texts(sources + targets)
    return pipeline.tokenize_pairs(sources, targets, tokenizer, tokenizer)


def decoder_sizes(pairs):
    return np.array([len(target) + 1 for target in pairs.targets.to_list()])


def source_sizes(pairs):
    return np.array([len(source) for source in pairs.sources.to_list()])


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
    packed = packing.pack_rows(pairs, packing.row_shapes(pairs), seed=3)
    expected = []
    for source, target in zip(pairs.sources.to_list(), pairs.targets.to_list()):
        expected.append((
            tuple(source),
            (data.BOS_ID, *target),
            (*target, data.EOS_ID),
        ))  # fmt: skip
    assert sorted(pair for rows in packed for pair in unpack(rows)) == sorted(expected)


def test_segments_are_contiguous_numbered_from_one_and_padding_only_at_the_end(pairs):
    for rows in packing.pack_rows(pairs, packing.row_shapes(pairs)):
        for side in ("source", "target"):
            for segments, ids in zip(rows[f"{side}_segment_ids"], rows[f"{side}_ids"]):
                real = segments[segments > 0]
                assert (np.diff(real) >= 0).all() and (np.diff(np.unique(real)) == 1).all()
                assert real[0] == 1 and (segments[len(real):] == 0).all()
                np.testing.assert_array_equal(ids != data.PAD_ID, segments > 0)


def test_short_rows_hold_two_median_pairs_and_long_rows_the_longest_pair(pairs):
    (short_source, short_target), (long_source, long_target) = packing.row_shapes(pairs)
    median = np.median(decoder_sizes(pairs))
    assert short_target % 8 == 0 and abs(short_target - 2 * median) <= 4
    assert long_target % 8 == 0 and long_target - 8 < pairs.longest_decoder <= long_target
    assert long_source % 8 == 0 and long_source >= pairs.longest_source
    ratio = pairs.source_tokens / pairs.label_tokens
    assert short_source == 8 * np.ceil(packing.SOURCE_ROOM * ratio * short_target / 8)


def test_a_corpus_without_long_pairs_packs_into_one_shape_of_two_median_pairs():
    rng = np.random.default_rng(0)
    sources, targets = (
        [" ".join(["w"] * length) for length in rng.integers(6, 11, 100)]
        for _ in range(2)
    )
    tokenizer = data.WordTokenizer.from_texts(sources + targets)
    pairs = pipeline.tokenize_pairs(sources, targets, tokenizer, tokenizer)
    ((source_length, target_length),) = packing.row_shapes(pairs)
    assert target_length == 8 * round(2 * np.median(decoder_sizes(pairs)) / 8)
    assert target_length >= pairs.longest_decoder
    assert source_length >= pairs.longest_source


def test_only_pairs_too_long_for_short_rows_open_long_rows_and_rows_fill_well(pairs):
    shapes = packing.row_shapes(pairs)
    (short_source, short_target), _ = shapes
    short_rows, long_rows = packing.pack_rows(pairs, shapes)
    too_long = {
        tuple(source)
        for source, source_size, decoder_size in zip(
            pairs.sources.to_list(), source_sizes(pairs), decoder_sizes(pairs)
        )
        if source_size > short_source or decoder_size > short_target
    }
    # A row's first pair opened it.
    openers = {
        tuple(row[segments == 1]) for row, segments in zip(
            long_rows["source_ids"], long_rows["source_segment_ids"]
        )
    }  # fmt: skip
    assert openers and openers <= too_long
    for rows in (short_rows, long_rows):
        assert (rows["labels"] != data.PAD_ID).mean() > 0.85


def test_a_pair_opens_a_row_only_when_no_earlier_row_has_room_for_it(pairs):
    """Best fit decreasing: rows only lose room, so every earlier row of a
    shape still lacks the room its later rows' first pairs needed."""
    for rows in packing.pack_rows(pairs, packing.row_shapes(pairs), seed=5):
        source_room = (rows["source_segment_ids"] == 0).sum(axis=1)
        target_room = (rows["target_segment_ids"] == 0).sum(axis=1)
        for row in range(1, len(rows["labels"])):
            opener_source = (rows["source_segment_ids"][row] == 1).sum()
            opener_decoder = (rows["target_segment_ids"][row] == 1).sum()
            fits = (source_room[:row] >= opener_source) & (
                target_room[:row] >= opener_decoder
            )
            assert not fits.any()


def test_pairs_go_in_longest_target_first(pairs):
    """So the rows' first pairs, in the order the rows opened, never grow."""
    for rows in packing.pack_rows(pairs, packing.row_shapes(pairs), seed=5):
        openers = (rows["target_segment_ids"] == 1).sum(axis=1)
        assert (np.diff(openers) <= 0).all()


def test_rows_too_short_for_the_longest_pair_are_refused(pairs):
    with pytest.raises(ValueError, match="cannot hold the longest pair"):
        packing.pack_rows(pairs, [(pairs.longest_source - 1, 200)])


def test_packed_batches_have_the_row_shapes_and_the_cardinality_they_yield(pairs):
    shapes = packing.row_shapes(pairs)
    tokens_per_batch = 5 * shapes[-1][1]
    dataset = packing.packed_dataset(pairs, tokens_per_batch, pad_incomplete_batches=True)
    batches = list(dataset)
    assert len(batches) == int(dataset.cardinality())
    expected = {
        (tokens_per_batch // target_length, source_length, target_length)
        for source_length, target_length in shapes
    }
    assert {
        (*inputs["source_ids"].shape, labels.shape[1]) for inputs, labels in batches
    } == expected
    assert set(batches[0][0]) == {"source_ids", "target_ids", *PACKED_INPUTS}
    label_tokens = sum(int((labels.numpy() != 0).sum()) for _, labels in batches)
    assert label_tokens == pairs.label_tokens


def test_rows_and_shapes_are_reshuffled_every_epoch_and_the_same_for_the_same_seed(pairs):
    def epochs(seed):
        dataset = packing.packed_dataset(pairs, 256, seed=seed)
        return [[labels.numpy() for _, labels in dataset] for _ in range(2)]

    def shapes(epoch):
        return [tuple(batch.shape) for batch in epoch]

    def sorted_rows(epoch):
        return sorted(tuple(row) for batch in epoch for row in batch)

    first, second = epochs(seed=1)
    assert shapes(first) != shapes(second)
    assert sorted(shapes(first)) == sorted(shapes(second))
    assert sorted_rows(first) == sorted_rows(second)
    again = epochs(seed=1)[0]
    assert shapes(again) == shapes(first)
    for batch, same in zip(first, again):
        np.testing.assert_array_equal(batch, same)


def test_an_endless_stream_gives_each_shape_its_batches_of_an_epoch_every_epoch(pairs):
    finite = list(packing.packed_dataset(pairs, 256, pad_incomplete_batches=True))
    endless = packing.packed_dataset(pairs, 256, repeat=True, drop_remainder=True)
    per_epoch = len(finite)
    stream = [tuple(labels.shape) for _, labels in endless.take(3 * per_epoch)]
    for epoch in range(3):
        shapes = stream[epoch * per_epoch : (epoch + 1) * per_epoch]
        assert sorted(shapes) == sorted(tuple(labels.shape) for _, labels in finite)


def test_the_streams_tokens_per_batch_are_what_its_batches_hold(pairs):
    per_epoch = len(packing.packed_dataset(pairs, 256, seed=3))
    stream = packing.packed_dataset(pairs, 256, seed=3, repeat=True, drop_remainder=True)
    credited = packing.stream_tokens_per_batch(pairs, 256, seed=3)
    # Counted on 30 epochs of the stream: within 1%.
    np.testing.assert_allclose(credited, mean_real_tokens(stream, 30 * per_epoch), rtol=0.01)
    # An epoch of the stream holds more than one pass: every batch is full.
    assert credited[0] * per_epoch > pairs.source_tokens
    assert credited[1] * per_epoch > pairs.label_tokens


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
