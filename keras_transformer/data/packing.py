"""Sequence packing: several translation pairs to a row, no padding between.

Length buckets (`pipeline.batch_pairs`) pad every pair to the top of its
bucket and make one batch shape per bucket, each one XLA program to
compile. Packing writes pairs one after another into rows of one fixed
length instead, the pairs of a row told apart by segment ids (1, 2, ...; 0
marks the padding at the end of the row), so every batch has one shape
and nearly every position is a real token. The model sees each pair as it
would alone: attention stays inside its segment and positions restart at
each pair (`models.transformer.packed_logits`).

Rows are packed once, from a seeded shuffle of the pairs, and the rows are
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

# Rows are at least this long: room for several pairs of a corpus of
# sentences (Multi30k: about 4 a row), so the space left at a row's end is
# a small share of it. Lengths are rounded up to a multiple of 8.
MIN_ROW_LENGTH = 64
# A pair goes into the first of the last this many rows with room for it;
# more open rows fill rows better (Multi30k-like lengths in rows of 64: 92.8%
# of the target positions with 32, 94.1% with 256) and cost a longer scan.
OPEN_ROWS = 256
# Source rows are longer than the corpus's mean source-to-target ratio asks
# by this factor, so the source side rarely closes a row first.
SOURCE_ROOM = 1.1


def _rounded_length(length):
    return 8 * math.ceil(length / 8)


def row_lengths(pairs):
    """The `(source_length, target_length)` of the packed rows of `pairs`.

    Target rows hold the longest decoder sequence and at least
    `MIN_ROW_LENGTH` positions; source rows the longest source and the
    target row's length times the corpus's source-to-target token ratio
    (with `SOURCE_ROOM` to spare). Rows may be longer than the model's
    position limits: positions restart at every pair, and no pair is
    longer than the limits (`tokenize_pairs` dropped those).
    """
    target_length = _rounded_length(max(pairs.longest_decoder, MIN_ROW_LENGTH))
    ratio = pairs.source_tokens / pairs.label_tokens
    source_length = _rounded_length(
        max(pairs.longest_source, SOURCE_ROOM * ratio * target_length)
    )
    return source_length, target_length


def pack_rows(pairs, source_length, target_length, shuffle=True, seed=0):
    """Packs every pair into rows, in a seeded shuffled order.

    Args:
        pairs: `TokenizedPairs`.
        source_length, target_length: int. The rows' lengths; every pair
            fits (its source, and its target with [BOS]).
        shuffle: bool. Pack in a shuffled order (else in corpus order).
        seed: int. The shuffle's seed.

    Returns:
        A dict of int32 arrays, one row each: `source_ids`,
        `source_segment_ids` (`(rows, source_length)`), `target_ids`
        ([BOS] + target per pair), `labels` (target + [EOS] per pair) and
        `target_segment_ids` (`(rows, target_length)`).
    """
    source_splits = pairs.sources.row_splits.numpy()
    target_splits = pairs.targets.row_splits.numpy()
    source_values = pairs.sources.flat_values.numpy()
    target_values = pairs.targets.flat_values.numpy()
    source_sizes = np.diff(source_splits)
    decoder_sizes = np.diff(target_splits) + 1
    if source_sizes.max() > source_length or decoder_sizes.max() > target_length:
        raise ValueError(
            f"Rows of {source_length} source and {target_length} target "
            f"positions cannot hold the longest pair ({source_sizes.max()} "
            f"source tokens, {decoder_sizes.max()} with [BOS] on the target "
            "side). Use longer rows (see row_lengths)."
        )
    count = len(source_sizes)
    order = np.random.default_rng(seed).permutation(count) if shuffle else range(count)

    rows = []  # the pair indices of every row
    # The rows that still take pairs: their indices and the room left.
    open_rows = np.zeros(0, dtype="int64")
    source_room = np.zeros(0, dtype="int64")
    target_room = np.zeros(0, dtype="int64")
    for pair in order:
        source_size, decoder_size = source_sizes[pair], decoder_sizes[pair]
        fits = np.flatnonzero((source_room >= source_size) & (target_room >= decoder_size))
        if len(fits):
            slot = fits[0]
        else:
            if len(open_rows) == OPEN_ROWS:
                # The oldest open row is closed (it is the fullest, mostly).
                open_rows, source_room, target_room = (
                    open_rows[1:], source_room[1:], target_room[1:]
                )
            rows.append([])
            open_rows = np.append(open_rows, len(rows) - 1)
            source_room = np.append(source_room, source_length)
            target_room = np.append(target_room, target_length)
            slot = len(open_rows) - 1
        rows[open_rows[slot]].append(pair)
        source_room[slot] -= source_size
        target_room[slot] -= decoder_size

    def zeros(length):
        return np.full((len(rows), length), PAD_ID, dtype="int32")

    packed = {
        "source_ids": zeros(source_length),
        "source_segment_ids": zeros(source_length),
        "target_ids": zeros(target_length),
        "labels": zeros(target_length),
        "target_segment_ids": zeros(target_length),
    }
    for row, members in enumerate(rows):
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


def packed_dataset(
    pairs,
    tokens_per_batch,
    shuffle=True,
    seed=0,
    repeat=False,
    drop_remainder=False,
    pad_incomplete_batches=False,
):
    """Batches of packed rows of one shape, for `Translator.fit(pack=True)`.

    Args:
        pairs: `TokenizedPairs` (`pipeline.tokenize_pairs`).
        tokens_per_batch: int. Target positions per batch, padding
            included: `tokens_per_batch // target_length` rows (see
            `row_lengths`).
        shuffle: bool. Pack in a seeded shuffled order and reshuffle the
            rows every epoch.
        seed: int. Seed of both shuffles.
        repeat: bool. Repeat without end.
        drop_remainder: bool. Drop an incomplete last batch.
        pad_incomplete_batches: bool. Fill an incomplete last batch with
            empty rows (all padding, which the masked loss ignores), so
            every batch has the same shape.

    Returns:
        A `tf.data.Dataset` of `(inputs, labels)`: `inputs` holds
        `source_ids`, `target_ids` and the segment ids
        (`models.transformer.PACKED_INPUTS`); unless it repeats, its
        cardinality is set.
    """
    check_tokenized_pairs(pairs)
    check_positive_int("tokens_per_batch", tokens_per_batch)
    check_non_negative_int("seed", seed)
    check_remainder_options(drop_remainder, pad_incomplete_batches)
    source_length, target_length = row_lengths(pairs)
    if tokens_per_batch < target_length:
        raise ValueError(
            f"Received tokens_per_batch={tokens_per_batch}, fewer than one "
            f"packed row of {target_length} target positions (the longest "
            f"pair needs {pairs.longest_decoder}). Pass tokens_per_batch >= "
            f"{target_length}."
        )
    rows_per_batch = tokens_per_batch // target_length
    packed = pack_rows(pairs, source_length, target_length, shuffle=shuffle, seed=seed)
    num_rows = len(packed["labels"])
    dataset = tf.data.Dataset.from_tensor_slices(packed)
    if shuffle:
        dataset = dataset.shuffle(num_rows, seed=seed, reshuffle_each_iteration=True)
    if repeat:
        dataset = dataset.repeat()
    dataset = dataset.batch(rows_per_batch, drop_remainder=drop_remainder)
    if pad_incomplete_batches:

        def fill(batch):
            missing = rows_per_batch - tf.shape(batch["labels"])[0]
            return {
                name: tf.pad(rows, [[0, missing], [0, 0]], constant_values=PAD_ID)
                for name, rows in batch.items()
            }

        dataset = dataset.map(fill)

    def inputs_and_labels(batch):
        inputs = {name: batch[name] for name in ("source_ids", "target_ids")}
        inputs.update({name: batch[name] for name in PACKED_INPUTS})
        return inputs, batch["labels"]

    dataset = dataset.map(inputs_and_labels)
    if not repeat:
        rounding = math.floor if drop_remainder else math.ceil
        dataset = dataset.apply(
            tf.data.experimental.assert_cardinality(rounding(num_rows / rows_per_batch))
        )
    return dataset.prefetch(tf.data.AUTOTUNE)
