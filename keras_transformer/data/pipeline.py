"""The text pipeline: parallel text into batches for teacher forcing.

`make_translation_dataset` yields `(inputs, labels)` batches for teacher
forcing (`tokenize_pairs` then `batch_pairs`, for a run that batches one
corpus more than once):

    inputs["source_ids"]  int32 [B, Ls]  source tokens
    inputs["target_ids"]  int32 [B, Lt]  [BOS] + target tokens
    labels                int32 [B, Lt]  target tokens + [EOS]

all padded with `PAD_ID` (0), so `labels[:, t]` is the token the decoder must
predict after reading `target_ids[:, : t + 1]`.
"""

import dataclasses
import logging
import math
import os
import random
import typing

import numpy as np

from keras_transformer._tensorflow import import_tensorflow
from keras_transformer.data.tokenizers import BOS_ID, EOS_ID, PAD_ID, Tokenizer
from keras_transformer.validation import (
    check_non_negative_int,
    check_positive_int,
)

tf = import_tensorflow(__name__)

logger = logging.getLogger(__name__)

# Automatic bucketing splits [1, longest] into this many equal-width buckets.
DEFAULT_NUM_BUCKETS = 8


def _read_lines(path):
    """Returns the lines of a UTF-8 file without their line endings."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ValueError(f"File not found: {path!r}.")
    with open(path, "rb") as file:
        raw_lines = file.read().split(b"\n")
    # A final newline ends the last line rather than starting an empty one.
    if raw_lines[-1] == b"":
        raw_lines.pop()
    lines = []
    for line_number, raw_line in enumerate(raw_lines, start=1):
        try:
            lines.append(raw_line.decode("utf-8").removesuffix("\r"))
        except UnicodeDecodeError as error:
            raise ValueError(
                f"{path!r} line {line_number} is not valid UTF-8: {error}"
            ) from error
    return lines


def read_tsv(path, source_column=0, target_column=1):
    """Reads source/target pairs from a tab-separated UTF-8 file.

    Empty lines are skipped; every other line must have both columns.

    Args:
        path: str or path-like. The file.
        source_column: int. Zero-based column of the source text.
        target_column: int. Zero-based column of the target text.

    Returns:
        `(source_texts, target_texts)`, two lists of str of equal length.
    """
    check_non_negative_int("source_column", source_column)
    check_non_negative_int("target_column", target_column)
    if source_column == target_column:
        raise ValueError(
            "source_column and target_column must differ. Received: "
            f"source_column={source_column}, target_column={target_column}"
        )
    needed = max(source_column, target_column) + 1
    sources, targets = [], []
    for line_number, line in enumerate(_read_lines(path), start=1):
        if not line:
            continue
        fields = line.split("\t")
        if len(fields) < needed:
            raise ValueError(
                f"Malformed TSV line {line_number} in {os.fspath(path)!r}: "
                f"expected at least {needed} tab-separated columns, found "
                f"{len(fields)}: {line[:80]!r}"
            )
        sources.append(fields[source_column])
        targets.append(fields[target_column])
    return sources, targets


def read_parallel_files(source_path, target_path):
    """Reads two UTF-8 files whose line `i` are a source/target pair.

    Returns:
        `(source_texts, target_texts)`, two lists of str of equal length.
    """
    sources = _read_lines(source_path)
    targets = _read_lines(target_path)
    if len(sources) != len(targets):
        raise ValueError(
            "Parallel files must have the same number of lines, but "
            f"{os.fspath(source_path)!r} has {len(sources)} and "
            f"{os.fspath(target_path)!r} has {len(targets)}."
        )
    return sources, targets


# Held out of a corpus given without held-out pairs: a tenth, at most this.
MAX_HELD_OUT = 1000


def split_corpus(
    sources, targets, held_out=None, num_train=None, num_test=None, seed=0
):
    """Training and held-out pairs of a parallel corpus.

    Args:
        sources: list of str. The corpus' source texts.
        targets: list of str. Their translations.
        held_out: `(sources, targets)` held-out pairs (e.g. a validation
            file), or None to hold out `num_test` pairs drawn at random
            from the corpus (default: a tenth, at most `MAX_HELD_OUT`).
        num_train: int or None. Keep only the first `num_train` training
            pairs.
        num_test: int or None. Keep only the first `num_test` held-out
            pairs.
        seed: int. Which pairs are drawn, when they are.

    Returns:
        `(train_sources, train_targets, test_sources, test_targets)`, lists
        of str.

    Example:

    ```python
    sources, targets = read_tsv("corpus.tsv")
    train_sources, train_targets, test_sources, test_targets = split_corpus(
        sources, targets, num_test=500)
    ```
    """
    check_positive_int("num_train", num_train, allow_none=True)
    check_positive_int("num_test", num_test, allow_none=True)
    pairs = _aligned_pairs("sources", "targets", sources, targets)
    if held_out is None:
        random.Random(seed).shuffle(pairs)
        count = num_test or min(MAX_HELD_OUT, max(1, len(pairs) // 10))
        test, pairs = pairs[:count], pairs[count:]
    else:
        test = _aligned_pairs("held-out sources", "held-out targets", *held_out)
    pairs = pairs[:num_train] if num_train else pairs
    test = test[:num_test] if num_test else test
    if not pairs or not test:
        raise ValueError(
            f"Received {len(pairs)} training and {len(test)} held-out pairs; "
            "both are needed. Give a larger corpus or held-out pairs of its own."
        )
    return (*map(list, zip(*pairs)), *map(list, zip(*test)))


def _aligned_pairs(source_name, target_name, sources, targets):
    sources = _check_texts(source_name, sources)
    targets = _check_texts(target_name, targets)
    if len(sources) != len(targets):
        raise ValueError(
            f"Received {len(sources)} {source_name} and {len(targets)} "
            f"{target_name}; expected one target per source."
        )
    return list(zip(sources, targets))


def _check_texts(name, texts):
    if isinstance(texts, (str, bytes)):
        raise ValueError(
            f"Received an invalid value for argument {name}, expected a list "
            f"of strings, not a single string. Received: {name}={texts!r}"
        )
    return list(texts)


def _check_boundaries(bucket_boundaries):
    valid = isinstance(bucket_boundaries, (list, tuple)) and (
        all(isinstance(b, int) and not isinstance(b, bool) for b in bucket_boundaries)
        and all(b >= 1 for b in bucket_boundaries)
        and all(a < b for a, b in zip(bucket_boundaries, bucket_boundaries[1:]))
    )
    if not valid:
        raise ValueError(
            "Received an invalid value for argument bucket_boundaries, "
            "expected a strictly increasing list of positive "
            f"integers. Received: bucket_boundaries={bucket_boundaries!r}"
        )
    return list(bucket_boundaries)


def _default_bucket_boundaries(longest, num_buckets=DEFAULT_NUM_BUCKETS):
    """Equal-width boundaries splitting lengths `[1, longest]` into buckets."""
    width = max(1, math.ceil(longest / num_buckets))
    return list(range(1 + width, longest + 1, width))


def _drop_unusable(sources, targets, max_source_length, max_target_length):
    """Removes examples that cannot be batched and logs how many went."""
    source_lengths = sources.row_lengths().numpy()
    # The decoder reads [BOS] + target, one token more than the target.
    decoder_lengths = targets.row_lengths().numpy() + 1
    empty = source_lengths == 0
    long_source = (
        source_lengths > max_source_length
        if max_source_length is not None
        else np.zeros_like(empty)
    )
    long_target = (
        decoder_lengths > max_target_length
        if max_target_length is not None
        else np.zeros_like(empty)
    )
    keep = ~(empty | long_source | long_target)
    dropped = int((~keep).sum())
    if dropped:
        reasons = [
            f"{int(mask.sum())} {reason}"
            for mask, reason in (
                (
                    long_source,
                    f"with more than max_source_length={max_source_length} "
                    "source tokens",
                ),
                (
                    long_target,
                    f"with more than max_target_length={max_target_length} "
                    "decoder tokens ([BOS] + target)",
                ),
                (empty, "with an empty source"),
            )
            if mask.any()
        ]
        logger.warning(
            "Dropped %d of %d examples (%s). Examples are never truncated; "
            "raise the limits to keep them.",
            dropped,
            len(keep),
            "; ".join(reasons),
        )
    if not keep.any():
        fixes = []
        if long_source.any() or long_target.any():
            fixes.append("raise max_source_length / max_target_length")
        if empty.any():
            fixes.append("give sources of at least one token")
        raise ValueError(
            f"No example is left after dropping all {dropped} "
            f"({'; '.join(reasons)}): {' and '.join(fixes)}."
        )
    return (
        tf.ragged.boolean_mask(sources, keep),
        tf.ragged.boolean_mask(targets, keep),
        int(source_lengths[keep].max()),
        int(decoder_lengths[keep].max()),
    )


@dataclasses.dataclass(frozen=True)
class TokenizedPairs:
    """Parallel texts tokenized once, the pairs that cannot be batched dropped.

    What `batch_pairs` batches: a training run tokenizes its corpus once
    (`tokenize_pairs`) and builds every dataset it needs from the result.

    Attributes:
        sources: `tf.RaggedTensor` of source ids, one row per kept pair.
        targets: `tf.RaggedTensor` of target ids (no [BOS] / [EOS]).
        max_source_length, max_target_length: int or None. The limits the
            pairs were kept by.
        longest_source, longest_decoder: int. The longest kept source and
            decoder sequence ([BOS] + target).
    """

    sources: object
    targets: object
    max_source_length: typing.Optional[int]
    max_target_length: typing.Optional[int]
    longest_source: int
    longest_decoder: int

    @property
    def source_tokens(self):
        """Source tokens of one pass, padding excluded."""
        return int(self.sources.flat_values.shape[0])

    @property
    def label_tokens(self):
        """Label tokens (target tokens + [EOS]) of one pass, padding
        excluded: with `source_tokens`, what tokens per second count."""
        return int(self.targets.flat_values.shape[0] + self.targets.nrows())


def tokenize_pairs(
    source_texts,
    target_texts,
    source_tokenizer,
    target_tokenizer,
    max_source_length=None,
    max_target_length=None,
):
    """Tokenizes parallel texts once, for `batch_pairs`.

    Pairs whose source has more than `max_source_length` tokens, whose
    decoder sequence ([BOS] + target) has more than `max_target_length`
    tokens, or whose source is empty are dropped, and their count is logged
    as a warning on the `keras_transformer.data.pipeline` logger: nothing is
    truncated silently.

    Returns:
        A `TokenizedPairs`.
    """
    source_texts = _check_texts("source_texts", source_texts)
    target_texts = _check_texts("target_texts", target_texts)
    if len(source_texts) != len(target_texts):
        raise ValueError(
            "source_texts and target_texts must pair up, but received "
            f"{len(source_texts)} source texts and {len(target_texts)} target "
            "texts."
        )
    if not source_texts:
        raise ValueError("A translation dataset needs at least one example.")
    for name, tokenizer in (
        ("source_tokenizer", source_tokenizer),
        ("target_tokenizer", target_tokenizer),
    ):
        if not isinstance(tokenizer, Tokenizer):
            raise ValueError(
                f"Received an invalid value for argument {name}, expected a "
                f"keras_transformer Tokenizer. Received: {name}={tokenizer!r}"
            )
    check_positive_int("max_source_length", max_source_length, allow_none=True)
    check_positive_int("max_target_length", max_target_length, allow_none=True)
    sources, targets, longest_source, longest_decoder = _drop_unusable(
        source_tokenizer.tokenize(source_texts),
        target_tokenizer.tokenize(target_texts),
        max_source_length,
        max_target_length,
    )
    return TokenizedPairs(
        sources,
        targets,
        max_source_length,
        max_target_length,
        longest_source,
        longest_decoder,
    )


def _teacher_forcing_example(source, target):
    target_ids = tf.concat([[BOS_ID], target], axis=0)
    labels = tf.concat([target, [EOS_ID]], axis=0)
    return source, target_ids, labels


def _example_length(source, target_ids, labels):
    return tf.maximum(tf.shape(source)[0], tf.shape(target_ids)[0])


def _bucket_tops(bucket_boundaries, longest):
    """The longest length each bucket can hold.

    Bucket `i` holds lengths in `[boundaries[i-1], boundaries[i])`, so no
    example in it is longer than `boundaries[i] - 1`; the last, open-ended
    bucket is bounded by `longest` (the length limits, or the longest kept
    example).
    """
    return [boundary - 1 for boundary in bucket_boundaries] + [longest]


def _bucket_of_batch(bucket_boundaries, source_ids, target_ids):
    """The bucket index of a batch, as a scalar tensor.

    Every example of a batch comes from one bucket, so the batch's widest
    sequence names the bucket.
    """
    boundaries = tf.constant(
        bucket_boundaries, tf.int32, shape=[len(bucket_boundaries)]
    )
    width = tf.maximum(tf.shape(source_ids)[1], tf.shape(target_ids)[1])
    return tf.reduce_sum(tf.cast(boundaries <= width, tf.int32))


def _padding_to_bucket_tops(bucket_boundaries, source_length, decoder_length):
    """Returns a batch map that pads every batch to the longest lengths its
    bucket can hold, so each bucket always yields one shape.

    The source and the decoder sequences are each capped at their own limit.
    """
    tops = tf.constant(
        _bucket_tops(bucket_boundaries, max(source_length, decoder_length)),
        tf.int32,
    )

    def pad(ids, length):
        return tf.pad(
            ids, [[0, 0], [0, length - tf.shape(ids)[1]]], constant_values=PAD_ID
        )

    def pad_batch(source_ids, target_ids, labels):
        top = tops[_bucket_of_batch(bucket_boundaries, source_ids, target_ids)]
        decoder_top = tf.minimum(top, decoder_length)
        return (
            pad(source_ids, tf.minimum(top, source_length)),
            pad(target_ids, decoder_top),
            pad(labels, decoder_top),
        )

    return pad_batch


def _padding_to_bucket_batch_sizes(bucket_boundaries, bucket_batch_sizes):
    """Returns a batch map that fills a batch with rows of padding up to its
    bucket's batch size."""
    sizes = tf.constant(bucket_batch_sizes, tf.int32)

    def pad_batch(source_ids, target_ids, labels):
        size = sizes[_bucket_of_batch(bucket_boundaries, source_ids, target_ids)]
        return tuple(
            tf.pad(
                ids, [[0, size - tf.shape(ids)[0]], [0, 0]], constant_values=PAD_ID
            )
            for ids in (source_ids, target_ids, labels)
        )

    return pad_batch


def _batch_sizes_for_tokens(tokens_per_batch, tops):
    """Per-bucket batch sizes with `batch_size * top <= tokens_per_batch`."""
    if tokens_per_batch < max(tops):
        raise ValueError(
            "Received an invalid value for argument tokens_per_batch, expected "
            f"at least {max(tops)}, the length of the longest bucket, so that "
            "one example of every bucket fits. Received: "
            f"tokens_per_batch={tokens_per_batch}"
        )
    # A first boundary of 1 makes an empty bucket of top 0.
    return [tokens_per_batch // max(top, 1) for top in tops]


def _buckets(pairs, batch_size, tokens_per_batch, bucket_boundaries):
    """`(bucket_boundaries, bucket_batch_sizes)` of `batch_pairs`."""
    limits = [
        limit for limit in (pairs.max_source_length, pairs.max_target_length) if limit
    ]
    longest = max(limits) if limits else max(pairs.longest_source, pairs.longest_decoder)
    if bucket_boundaries is None:
        bucket_boundaries = _default_bucket_boundaries(longest)
    if tokens_per_batch is None:
        return bucket_boundaries, [batch_size] * (len(bucket_boundaries) + 1)
    return bucket_boundaries, _batch_sizes_for_tokens(
        tokens_per_batch, _bucket_tops(bucket_boundaries, longest)
    )


def _examples_per_bucket(pairs, bucket_boundaries):
    """How many of the pairs fall in each bucket (`_example_length`'s)."""
    lengths = np.maximum(
        pairs.sources.row_lengths().numpy(), pairs.targets.row_lengths().numpy() + 1
    )
    buckets = np.searchsorted(bucket_boundaries, lengths, side="right")
    return np.bincount(buckets, minlength=len(bucket_boundaries) + 1)


def stream_tokens_per_batch(
    pairs, batch_size=None, tokens_per_batch=None, bucket_boundaries=None
):
    """Real tokens in a batch of `batch_pairs(..., repeat=True)`, on average.

    That endless stream's batches are all full: a pass over the pairs fills
    `examples / batch size` batches of each bucket, a fraction included,
    where one pass of the finite dataset ends each bucket with a batch that
    is not. So an epoch of `len(batch_pairs(...))` stream batches holds more
    tokens than one pass (what tokens per second must count).

    Args:
        pairs: `TokenizedPairs`.
        batch_size, tokens_per_batch, bucket_boundaries: as given to
            `batch_pairs`.

    Returns:
        `(source_tokens, label_tokens)`: floats, padding excluded.
    """
    check_tokenized_pairs(pairs)
    bucket_boundaries = _check_batching(
        batch_size,
        tokens_per_batch,
        seed=0,
        bucket_boundaries=bucket_boundaries,
        drop_remainder=False,
        pad_incomplete_batches=False,
    )
    bucket_boundaries, bucket_batch_sizes = _buckets(
        pairs, batch_size, tokens_per_batch, bucket_boundaries
    )
    batches_per_pass = float(
        np.sum(_examples_per_bucket(pairs, bucket_boundaries) / bucket_batch_sizes)
    )
    return (
        pairs.source_tokens / batches_per_pass,
        pairs.label_tokens / batches_per_pass,
    )


def _ceil_divide(numerators, denominators):
    return -np.floor_divide(-np.asarray(numerators), denominators)


def _to_inputs_and_labels(source_ids, target_ids, labels):
    return {"source_ids": source_ids, "target_ids": target_ids}, labels


def make_translation_dataset(
    source_texts,
    target_texts,
    source_tokenizer,
    target_tokenizer,
    batch_size=None,
    max_source_length=None,
    max_target_length=None,
    shuffle=True,
    seed=0,
    bucket_boundaries=None,
    drop_remainder=False,
    repeat=False,
    pad_to_bucket_boundary=False,
    pad_incomplete_batches=False,
    tokens_per_batch=None,
):
    """Tokenizes parallel text into padded teacher-forcing batches.

    Texts are tokenized once, up front. Examples whose source has more than
    `max_source_length` tokens, whose decoder sequence ([BOS] + target) has
    more than `max_target_length` tokens, or whose source is empty are
    dropped, and their count is logged as a warning on the
    `keras_transformer.data.pipeline` logger: nothing is truncated silently.

    Args:
        source_texts: list of str.
        target_texts: list of str, same length as `source_texts`.
        source_tokenizer: `Tokenizer` for the source side.
        target_tokenizer: `Tokenizer` for the target side.
        batch_size: int or None. Examples per batch. Give either this or
            `tokens_per_batch`.
        max_source_length: int or None. Longest source kept, in tokens.
        max_target_length: int or None. Longest `target_ids` / `labels` kept,
            in tokens (target tokens + 1).
        shuffle: bool. Shuffle the whole set, reshuffling every epoch. The
            order is a function of `seed` (and of TensorFlow's global seed,
            when one is set): equal seeds give equal orders.
        seed: int. Shuffle seed.
        bucket_boundaries: list of int or None. Examples are grouped by
            length (the longer of source and decoder sequence) with
            `tf.data.Dataset.bucket_by_sequence_length`, so a batch holds
            similar lengths and little padding. A bucket `i` holds lengths in
            `[boundaries[i-1], boundaries[i])`. None splits `[1, longest]`
            into 8 equal-width buckets, `longest` being
            `max(max_source_length, max_target_length)` or, without limits,
            the longest kept example. `[]` is a single bucket (plain padded
            batches in order of arrival).
        drop_remainder: bool. Drop the last, smaller batch (of each bucket).
        repeat: bool. Repeat forever (use `steps_per_epoch` in `fit`).
        pad_to_bucket_boundary: bool. Pad every batch to the longest lengths
            its bucket can hold rather than to its own longest example: the
            source to `min(boundaries[i] - 1, max_source_length)` and the
            decoder sequences to `min(boundaries[i] - 1, max_target_length)`
            for bucket `i`, the last bucket to the limits (without a limit,
            to the longest kept example). With `drop_remainder=True` every
            batch then has one of at most `len(bucket_boundaries) + 1`
            shapes, so XLA (`jit_compile=True`, TPUs) compiles a handful of
            programs instead of one per new shape; `bucket_boundaries=[]`
            gives a single fixed shape.
        pad_incomplete_batches: bool. Fill the last, smaller batch of each
            bucket up to its batch size with rows of padding instead of
            dropping it (for evaluation with static shapes, where
            `drop_remainder` would lose examples). The library's loss and
            metrics ignore such rows; Keras still weighs a padded batch's
            loss as a full batch's when it averages over batches.
        tokens_per_batch: int or None. Batch by token count instead of by
            examples, as in fairseq's `--max-tokens`: bucket `i` gets the
            batch size `tokens_per_batch // top_i`, `top_i` being the
            longest length it can hold (`boundaries[i] - 1`, the last bucket
            the longest length allowed), so no batch has more than
            `tokens_per_batch` positions in its source nor in its decoder
            sequences, padding included, and short sentences come in large
            batches. Must be at least the longest bucket length.

    Returns:
        A `tf.data.Dataset` of `(inputs, labels)` as described in the module
        docstring, prefetched. Unless `repeat`, its cardinality (the number
        of batches of one pass) is known, so `len(dataset)` works.

    Example:

    ```python
    dataset = make_translation_dataset(
        sources, targets, tokenizer, tokenizer,
        tokens_per_batch=4096, bucket_boundaries=list(range(8, 64, 4)),
    )
    ```
    """
    _check_batching(
        batch_size,
        tokens_per_batch,
        seed,
        bucket_boundaries,
        drop_remainder,
        pad_incomplete_batches,
    )
    pairs = tokenize_pairs(
        source_texts,
        target_texts,
        source_tokenizer,
        target_tokenizer,
        max_source_length,
        max_target_length,
    )
    return batch_pairs(
        pairs,
        batch_size=batch_size,
        tokens_per_batch=tokens_per_batch,
        shuffle=shuffle,
        seed=seed,
        bucket_boundaries=bucket_boundaries,
        drop_remainder=drop_remainder,
        repeat=repeat,
        pad_to_bucket_boundary=pad_to_bucket_boundary,
        pad_incomplete_batches=pad_incomplete_batches,
    )


def check_tokenized_pairs(pairs):
    """Raises unless `pairs` is what `tokenize_pairs` returns."""
    if not isinstance(pairs, TokenizedPairs):
        raise ValueError(
            "Received an invalid value for argument pairs, expected the "
            "TokenizedPairs of tokenize_pairs(...). Received: "
            f"pairs={type(pairs).__name__}"
        )


def check_remainder_options(drop_remainder, pad_incomplete_batches):
    """Raises for an incomplete last batch both dropped and padded."""
    if drop_remainder and pad_incomplete_batches:
        raise ValueError(
            "drop_remainder and pad_incomplete_batches exclude each other: "
            "an incomplete batch is either dropped or padded. Received: "
            "drop_remainder=True, pad_incomplete_batches=True"
        )


def _check_batching(
    batch_size,
    tokens_per_batch,
    seed,
    bucket_boundaries,
    drop_remainder,
    pad_incomplete_batches,
):
    """Checks `batch_pairs`' arguments (before any tokenizing); returns the
    bucket boundaries as a list, or None."""
    if (batch_size is None) == (tokens_per_batch is None):
        raise ValueError(
            "Give exactly one of batch_size (examples per batch) and "
            "tokens_per_batch (positions per batch). Received: "
            f"batch_size={batch_size}, tokens_per_batch={tokens_per_batch}"
        )
    check_positive_int("batch_size", batch_size, allow_none=True)
    check_positive_int("tokens_per_batch", tokens_per_batch, allow_none=True)
    check_non_negative_int("seed", seed)
    check_remainder_options(drop_remainder, pad_incomplete_batches)
    if bucket_boundaries is None:
        return None
    return _check_boundaries(bucket_boundaries)


def batch_pairs(
    pairs,
    batch_size=None,
    tokens_per_batch=None,
    shuffle=True,
    seed=0,
    bucket_boundaries=None,
    drop_remainder=False,
    repeat=False,
    pad_to_bucket_boundary=False,
    pad_incomplete_batches=False,
):
    """`make_translation_dataset` on pairs tokenized by `tokenize_pairs`.

    The arguments are `make_translation_dataset`'s; building a dataset from
    tokenized pairs costs no tokenizing, so a run may build several (a
    counting pass, the training stream) from one `TokenizedPairs`.
    """
    check_tokenized_pairs(pairs)
    bucket_boundaries = _check_batching(
        batch_size,
        tokens_per_batch,
        seed,
        bucket_boundaries,
        drop_remainder,
        pad_incomplete_batches,
    )
    dataset = tf.data.Dataset.from_tensor_slices((pairs.sources, pairs.targets))
    if shuffle:
        dataset = dataset.shuffle(
            int(pairs.sources.nrows()), seed=seed, reshuffle_each_iteration=True
        )
    if repeat:
        dataset = dataset.repeat()
    dataset = dataset.map(_teacher_forcing_example)

    bucket_boundaries, bucket_batch_sizes = _buckets(
        pairs, batch_size, tokens_per_batch, bucket_boundaries
    )
    num_batches = int(
        sum(
            (np.floor_divide if drop_remainder else _ceil_divide)(
                _examples_per_bucket(pairs, bucket_boundaries), bucket_batch_sizes
            )
        )
    )
    dataset = dataset.bucket_by_sequence_length(
        element_length_func=_example_length,
        bucket_boundaries=bucket_boundaries,
        bucket_batch_sizes=bucket_batch_sizes,
        padded_shapes=([None], [None], [None]),
        padding_values=(PAD_ID, PAD_ID, PAD_ID),
        drop_remainder=drop_remainder,
    )
    if pad_to_bucket_boundary:
        dataset = dataset.map(
            _padding_to_bucket_tops(
                bucket_boundaries,
                pairs.max_source_length or pairs.longest_source,
                pairs.max_target_length or pairs.longest_decoder,
            )
        )
    if pad_incomplete_batches:
        dataset = dataset.map(
            _padding_to_bucket_batch_sizes(bucket_boundaries, bucket_batch_sizes)
        )
    dataset = dataset.map(_to_inputs_and_labels)
    if not repeat:
        dataset = dataset.apply(tf.data.experimental.assert_cardinality(num_batches))
    return dataset.prefetch(tf.data.AUTOTUNE)
