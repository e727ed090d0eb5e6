"""Sequence packing: several translation pairs to a row, no padding between.

Length buckets (`pipeline.batch_pairs`) pad every pair to the top of its
bucket and make one batch shape per bucket, each one XLA program to
compile. Packing writes pairs one after another into rows instead, the
pairs of a row told apart by segment ids (1, 2, ...; 0 marks the padding
at the end of the row), so nearly every position is a real token and
there are at most two batch shapes. The model sees each pair as it would
alone: attention stays inside its segment and positions restart at each
pair (`models.transformer.packed_logits`).

Rows come in two lengths (`row_shapes`). Attention spans a whole row, so
its cost per token grows with the row's length: most pairs go into short
rows of about two pairs of the corpus's median length, and the few too
long for them into rows that hold the longest pair, which shorter pairs
top up. On Multi30k (the corpus recipe's model in mixed_bfloat16 on 2
CPU cores, 2,048 target positions a batch), a `fit` step on 64 x 32 rows
took 411 ms and one on 28 x 72 rows 463 ms, 11% more per real token; rows
of 32 and 72 fill 96% and 98% of their target positions, and 91% of the
batches are of short rows.

Rows are packed once (best fit decreasing, `pack_rows`), and the rows are
reshuffled every epoch: a batch draws different rows each epoch, while the
pairs sharing a row (which never see each other) stay together.
"""

import math

import numpy as np

from keras_transformer._tensorflow import import_tensorflow
from keras_transformer.data.pipeline import (
    check_remainder_options,
    check_tokenized_pairs,
)
from keras_transformer.data.tokenizers import BOS_ID, EOS_ID, PAD_ID
from keras_transformer.models.transformer import PACKED_INPUTS
from keras_transformer.validation import check_non_negative_int, check_positive_int

tf = import_tensorflow(__name__)

# Short rows hold about this many pairs of the corpus's median length: the
# space left at a row's end is then a small share of it (Multi30k, median
# 17 decoder tokens, rows of 32: 96% of the target positions are real
# tokens), and attention spans few positions. Lengths are multiples of 8.
PAIRS_PER_SHORT_ROW = 2
MIN_ROW_LENGTH = 16
# The batch shapes of a packed dataset, at most: one XLA program each.
MAX_ROW_SHAPES = 2
# Source rows are longer than the corpus's mean source-to-target ratio asks
# by this factor, so the source side rarely closes a row first.
SOURCE_ROOM = 1.1


def _rounded_length(length):
    return 8 * math.ceil(length / 8)


def row_shapes(pairs):
    """The `(source_length, target_length)` of the packed rows of `pairs`,
    short rows first: one shape, or two.

    Short target rows hold `PAIRS_PER_SHORT_ROW` decoder sequences ([BOS] +
    target) of the median length (rounded to a multiple of 8, at least
    `MIN_ROW_LENGTH`); when the longest pair needs more, long rows hold
    the longest decoder sequence. Source rows are the target row's length
    times the corpus's source-to-target token ratio (with `SOURCE_ROOM` to
    spare), and the last shape's at least the longest source. Rows may be
    longer than the model's position limits: positions restart at every
    pair, and no pair is longer than the limits (`tokenize_pairs` dropped
    those).
    """
    median_decoder = float(np.median(pairs.targets.row_lengths().numpy())) + 1
    short_target = max(
        MIN_ROW_LENGTH, 8 * round(PAIRS_PER_SHORT_ROW * median_decoder / 8)
    )
    target_lengths = [short_target]
    if pairs.longest_decoder > short_target:
        target_lengths.append(_rounded_length(pairs.longest_decoder))
    ratio = pairs.source_tokens / pairs.label_tokens
    shapes = [
        (_rounded_length(SOURCE_ROOM * ratio * length), length)
        for length in target_lengths
    ]
    source_length, target_length = shapes[-1]
    shapes[-1] = (max(source_length, _rounded_length(pairs.longest_source)), target_length)
    return tuple(shapes)


def pack_rows(pairs, shapes, shuffle=True, seed=0):
    """Packs every pair into rows of the given shapes, best fit decreasing.

    Pairs go in from the longest target to the shortest, each into the row
    (of any shape) with the least target room left that holds it, source
    included; when none does, it opens a row of the first shape that holds
    it. Short pairs thus fill the gaps that long ones leave: on Multi30k,
    rows of 32 and 72 target positions are 96.2% real tokens, where
    putting each pair of a shuffled order into the first of 256 recent rows
    with room filled 95.0%.

    Args:
        pairs: `TokenizedPairs`.
        shapes: sequence of `(source_length, target_length)`, shortest
            first (`row_shapes`); the last holds every pair (its source,
            and its target with [BOS]).
        shuffle: bool. Order the pairs of one target length in a seeded
            shuffle (else in corpus order).
        seed: int. The shuffle's seed.

    Returns:
        A list with a dict of int32 arrays per shape, one row each:
        `source_ids`, `source_segment_ids` (`(rows, source_length)`),
        `target_ids` ([BOS] + target per pair), `labels` (target + [EOS]
        per pair) and `target_segment_ids` (`(rows, target_length)`).
    """
    source_splits = pairs.sources.row_splits.numpy()
    target_splits = pairs.targets.row_splits.numpy()
    source_values = pairs.sources.flat_values.numpy()
    target_values = pairs.targets.flat_values.numpy()
    source_sizes = np.diff(source_splits)
    decoder_sizes = np.diff(target_splits) + 1
    source_lengths, target_lengths = (np.array(side) for side in zip(*shapes))
    if source_sizes.max() > source_lengths[-1] or decoder_sizes.max() > target_lengths[-1]:
        raise ValueError(
            f"Rows of {source_lengths[-1]} source and {target_lengths[-1]} "
            f"target positions cannot hold the longest pair ({source_sizes.max()} "
            f"source tokens, {decoder_sizes.max()} with [BOS] on the target "
            "side). Use longer rows (see row_shapes)."
        )
    # The shape of the row each pair opens: the first that holds it.
    opens = np.full(len(source_sizes), len(shapes) - 1)
    for shape in reversed(range(len(shapes) - 1)):
        fits = (source_sizes <= source_lengths[shape]) & (
            decoder_sizes <= target_lengths[shape]
        )
        opens[fits] = shape
    count = len(source_sizes)
    order = np.random.default_rng(seed).permutation(count) if shuffle else np.arange(count)
    order = order[np.argsort(-decoder_sizes[order], kind="stable")]

    rows = []  # the (shape, pair indices) of every row
    source_room, target_room = [], []
    # The rows with room left, by their target room: rows_with_room[n] lists
    # the rows with n target positions free.
    rows_with_room = [[] for _ in range(target_lengths[-1] + 1)]
    for pair in order:
        source_size, decoder_size = source_sizes[pair], decoder_sizes[pair]
        row = _best_fit(rows_with_room, source_room, source_size, decoder_size)
        if row is None:
            shape = opens[pair]
            row = len(rows)
            rows.append((shape, []))
            source_room.append(source_lengths[shape])
            target_room.append(target_lengths[shape])
        rows[row][1].append(pair)
        source_room[row] -= source_size
        target_room[row] -= decoder_size
        rows_with_room[target_room[row]].append(row)

    def write(members_of_rows, source_length, target_length):
        def zeros(length):
            return np.full((len(members_of_rows), length), PAD_ID, dtype="int32")

        packed = {
            "source_ids": zeros(source_length),
            "source_segment_ids": zeros(source_length),
            "target_ids": zeros(target_length),
            "labels": zeros(target_length),
            "target_segment_ids": zeros(target_length),
        }
        for row, members in enumerate(members_of_rows):
            source_at = target_at = 0
            for segment, pair in enumerate(members, start=1):
                source = source_values[source_splits[pair] : source_splits[pair + 1]]
                target = target_values[target_splits[pair] : target_splits[pair + 1]]
                end = source_at + len(source)
                packed["source_ids"][row, source_at:end] = source
                packed["source_segment_ids"][row, source_at:end] = segment
                source_at = end
                end = target_at + len(target) + 1
                packed["target_ids"][row, target_at] = BOS_ID
                packed["target_ids"][row, target_at + 1 : end] = target
                packed["labels"][row, target_at : end - 1] = target
                packed["labels"][row, end - 1] = EOS_ID
                packed["target_segment_ids"][row, target_at:end] = segment
                target_at = end
        return packed

    return [
        write([members for of_shape, members in rows if of_shape == shape], *lengths)
        for shape, lengths in enumerate(shapes)
    ]


def _best_fit(rows_with_room, source_room, source_size, decoder_size):
    """Takes from `rows_with_room` the row with the least target room that
    holds `decoder_size` and has `source_size` source positions free (the
    latest of equals); None when no row does."""
    for room in range(decoder_size, len(rows_with_room)):
        candidates = rows_with_room[room]
        for at in range(len(candidates) - 1, -1, -1):
            if source_room[candidates[at]] >= source_size:
                return candidates.pop(at)
    return None


def packed_dataset(
    pairs,
    tokens_per_batch,
    shuffle=True,
    seed=0,
    repeat=False,
    drop_remainder=False,
    pad_incomplete_batches=False,
):
    """Batches of packed rows, for `Translator.fit(pack=True)`.

    A batch holds rows of one shape (`row_shapes`): one or two batch shapes
    in all. With two, the batches of both are interleaved in a seeded
    order, reshuffled every epoch, each shape's batches of an epoch the
    same in number every epoch.

    Args:
        pairs: `TokenizedPairs` (`pipeline.tokenize_pairs`).
        tokens_per_batch: int. Target positions per batch, padding
            included: `tokens_per_batch // target_length` rows of a shape.
        shuffle: bool. Pack in a seeded shuffled order and reshuffle the
            rows (and the order of the batch shapes) every epoch.
        seed: int. Seed of the shuffles.
        repeat: bool. Repeat without end.
        drop_remainder: bool. Drop an incomplete last batch of each shape.
        pad_incomplete_batches: bool. Fill an incomplete last batch with
            empty rows (all padding, which the masked loss ignores), so
            every batch of a shape has the same shape.

    Returns:
        A `tf.data.Dataset` of `(inputs, labels)`: `inputs` holds
        `source_ids`, `target_ids` and the segment ids
        (`models.transformer.PACKED_INPUTS`); unless it repeats, its
        cardinality is set.
    """
    check_remainder_options(drop_remainder, pad_incomplete_batches)
    rounding = math.floor if drop_remainder and not repeat else math.ceil
    datasets, batches_per_epoch = [], []
    for rows, rows_per_batch in _rows_of_each_shape(
        pairs, tokens_per_batch, shuffle, seed
    ):
        batches = rounding(len(rows["labels"]) / rows_per_batch)
        if batches:
            datasets.append(
                _batched_rows(
                    rows, rows_per_batch, shuffle=shuffle, seed=seed, repeat=repeat,
                    drop_remainder=drop_remainder,
                    pad_incomplete_batches=pad_incomplete_batches,
                )  # fmt: skip
            )
            batches_per_epoch.append(batches)
    if len(datasets) == 1:
        dataset = datasets[0]
    else:
        # Which shape each batch of an epoch has: each shape's count, in an
        # order shuffled every epoch.
        shape_of_batch = tf.data.Dataset.from_tensor_slices(
            np.repeat(np.arange(len(datasets), dtype="int64"), batches_per_epoch)
        )
        if shuffle:
            shape_of_batch = shape_of_batch.shuffle(
                sum(batches_per_epoch), seed=seed, reshuffle_each_iteration=True
            )
        if repeat:
            shape_of_batch = shape_of_batch.repeat()
        dataset = tf.data.Dataset.choose_from_datasets(datasets, shape_of_batch)

    def inputs_and_labels(batch):
        inputs = {name: batch[name] for name in ("source_ids", "target_ids")}
        inputs.update({name: batch[name] for name in PACKED_INPUTS})
        return inputs, batch["labels"]

    dataset = dataset.map(inputs_and_labels)
    if not repeat:
        dataset = dataset.apply(
            tf.data.experimental.assert_cardinality(sum(batches_per_epoch))
        )
    return dataset.prefetch(tf.data.AUTOTUNE)


def _rows_of_each_shape(pairs, tokens_per_batch, shuffle, seed):
    """`(rows, rows_per_batch)` of each row shape (`pack_rows`), after
    checking `packed_dataset`'s arguments."""
    check_tokenized_pairs(pairs)
    check_positive_int("tokens_per_batch", tokens_per_batch)
    check_non_negative_int("seed", seed)
    shapes = row_shapes(pairs)
    longest_row = shapes[-1][1]
    if tokens_per_batch < longest_row:
        raise ValueError(
            f"Received tokens_per_batch={tokens_per_batch}, fewer than one "
            f"packed row of {longest_row} target positions (the longest "
            f"pair needs {pairs.longest_decoder}). Pass tokens_per_batch >= "
            f"{longest_row}."
        )
    return [
        (rows, tokens_per_batch // target_length)
        for (_, target_length), rows in zip(
            shapes, pack_rows(pairs, shapes, shuffle=shuffle, seed=seed)
        )
    ]


def stream_tokens_per_batch(pairs, tokens_per_batch, shuffle=True, seed=0):
    """Real tokens in a batch of `packed_dataset(..., repeat=True)`, on average.

    An epoch of that endless stream holds as many batches of each row shape
    as one pass of the finite dataset (the last one of a shape counted
    whole), and every one of them full of rows, where the finite dataset's
    last batch of a shape is not: so an epoch of the stream holds more
    tokens than one pass (what tokens per second must count; 2.9% more on
    4,000 synthetic pairs).

    Args:
        pairs: `TokenizedPairs`.
        tokens_per_batch, shuffle, seed: as given to `packed_dataset`.

    Returns:
        `(source_tokens, label_tokens)`: floats, padding excluded.
    """
    source_tokens = label_tokens = batches = 0
    for rows, rows_per_batch in _rows_of_each_shape(
        pairs, tokens_per_batch, shuffle, seed
    ):
        if not len(rows["labels"]):
            continue
        rows_in_epoch = math.ceil(len(rows["labels"]) / rows_per_batch) * rows_per_batch
        share_of_rows = rows_in_epoch / len(rows["labels"])
        source_tokens += share_of_rows * np.count_nonzero(rows["source_ids"] != PAD_ID)
        label_tokens += share_of_rows * np.count_nonzero(rows["labels"] != PAD_ID)
        batches += rows_in_epoch // rows_per_batch
    return source_tokens / batches, label_tokens / batches


def _batched_rows(
    rows, rows_per_batch, *, shuffle, seed, repeat, drop_remainder, pad_incomplete_batches
):
    """The batches of one shape's packed rows (`packed_dataset`)."""
    dataset = tf.data.Dataset.from_tensor_slices(rows)
    if shuffle:
        dataset = dataset.shuffle(
            len(rows["labels"]), seed=seed, reshuffle_each_iteration=True
        )
    if repeat:
        dataset = dataset.repeat()
    dataset = dataset.batch(rows_per_batch, drop_remainder=drop_remainder)
    if pad_incomplete_batches:

        def fill(batch):
            missing = rows_per_batch - tf.shape(batch["labels"])[0]
            return {
                name: tf.pad(values, [[0, missing], [0, 0]], constant_values=PAD_ID)
                for name, values in batch.items()
            }

        dataset = dataset.map(fill)
    return dataset
