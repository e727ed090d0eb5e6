"""Boolean attention masks: `True` marks a key a query may attend to.

Every helper returns booleans so masks combine with `&` (`ops.logical_and`)
and feed straight into `MultiHeadAttention(attention_mask=...)`.

Padding convention: the helpers that take padding masks mask padded keys
(columns) *and* padded queries (rows), the same mask `MultiHeadAttention`
builds from `query_mask` and `value_mask` (and Keras's own
`MultiHeadAttention` builds from its masks). Key-side masking is what keeps
padding out of real tokens; a padded query's row is then fully masked, which
`MultiHeadAttention` turns into uniform weights, so its output stays finite
and is expected to be ignored downstream (e.g. by a loss mask).
"""

from keras import ops


def padding_mask(token_ids, padding_id=0):
    """Marks the real (non-padding) tokens of a batch of token ids.

    Args:
        token_ids: int tensor of shape `(batch_size, length)`.
        padding_id: int. The id used for padding.

    Returns:
        Boolean tensor of shape `(batch_size, length)`, `True` for real tokens.

    Example:

    ```python
    padding_mask([[5, 3, 0]])  # [[True, True, False]]
    ```
    """
    return ops.not_equal(token_ids, padding_id)


def causal_mask(query_length, key_length=None, offset=0):
    """Lets query `i` attend to keys `j <= i + offset`.

    With `offset=0` and equal lengths this is the lower-triangular mask of a
    decoder. During cached decoding the queries are the tokens at positions
    `offset, offset + 1, ...` of a cache of `key_length` keys, so keys that are
    not written yet (`j > i + offset`) stay masked.

    Args:
        query_length: int or scalar int tensor. Number of queries.
        key_length: int or scalar int tensor. Number of keys; defaults to
            `query_length`.
        offset: int or scalar int tensor. Position of the first query.

    Returns:
        Boolean tensor of shape `(query_length, key_length)`.

    Example:

    ```python
    causal_mask(2, 4, offset=1)
    # [[True, True, False, False], [True, True, True, False]]
    ```
    """
    if key_length is None:
        key_length = query_length
    query_positions = ops.arange(query_length, dtype="int32") + ops.cast(
        offset, "int32"
    )
    key_positions = ops.arange(key_length, dtype="int32")
    return ops.less_equal(key_positions[None, :], query_positions[:, None])


def cross_attention_mask(decoder_padding_mask, encoder_padding_mask):
    """Combines query-side and key-side padding into one attention mask.

    Args:
        decoder_padding_mask: bool tensor `(batch_size, query_length)`.
        encoder_padding_mask: bool tensor `(batch_size, key_length)`.

    Returns:
        Boolean tensor of shape `(batch_size, query_length, key_length)`,
        `True` where both the query and the key are real tokens.

    Example:

    ```python
    cross_attention_mask([[True, False]], [[True, True, False]])
    # [[[True, True, False], [False, False, False]]]
    ```
    """
    return ops.logical_and(
        ops.cast(decoder_padding_mask, "bool")[:, :, None],
        ops.cast(encoder_padding_mask, "bool")[:, None, :],
    )


def encoder_self_attention_mask(padding_mask):
    """Bidirectional self-attention mask over the real tokens.

    Args:
        padding_mask: bool tensor `(batch_size, length)`.

    Returns:
        Boolean tensor of shape `(batch_size, length, length)`.

    Example:

    ```python
    encoder_self_attention_mask([[True, False]])
    # [[[True, False], [False, False]]]
    ```
    """
    return cross_attention_mask(padding_mask, padding_mask)


def decoder_self_attention_mask(padding_mask, offset=0):
    """Causal self-attention mask over the real tokens.

    Args:
        padding_mask: bool tensor `(batch_size, length)`.
        offset: int or scalar int tensor, passed to `causal_mask`.

    Returns:
        Boolean tensor of shape `(batch_size, length, length)`.

    Example:

    ```python
    decoder_self_attention_mask([[True, True, False]])
    # [[[True, False, False], [True, True, False], [False, False, False]]]
    ```
    """
    padding_mask = ops.cast(padding_mask, "bool")
    length = ops.shape(padding_mask)[1]
    return ops.logical_and(
        encoder_self_attention_mask(padding_mask),
        causal_mask(length, length, offset)[None, :, :],
    )


def segment_mask(query_segment_ids, key_segment_ids):
    """Lets a query attend to the keys of its own segment in packed rows.

    Packing puts several sequences in one row, numbered 1, 2, ... by
    segment ids, with 0 for the padding after the last one. A query sees
    only the keys of its own segment; padding keys are masked for every
    query (a padding query's row is then fully masked, as in the padding
    convention above).

    Args:
        query_segment_ids: int tensor `(batch_size, query_length)`.
        key_segment_ids: int tensor `(batch_size, key_length)`.

    Returns:
        Boolean tensor of shape `(batch_size, query_length, key_length)`.

    Example:

    ```python
    segment_mask([[1, 1, 2]], [[1, 2, 0]])
    # [[[True, False, False], [True, False, False], [False, True, False]]]
    ```
    """
    query_segment_ids = ops.convert_to_tensor(query_segment_ids)
    key_segment_ids = ops.convert_to_tensor(key_segment_ids)
    return ops.logical_and(
        ops.equal(query_segment_ids[:, :, None], key_segment_ids[:, None, :]),
        ops.not_equal(key_segment_ids, 0)[:, None, :],
    )


def segment_positions(segment_ids):
    """The position of every token within its segment of a packed row.

    Each segment's first token is at position 0, as it would be alone in
    its own row, so packed rows see the position encodings that unpacked
    ones do; padding (segment 0) is at position 0. Segments must be
    contiguous (as packing writes them).

    Args:
        segment_ids: int tensor `(batch_size, length)`.

    Returns:
        int32 tensor of shape `(batch_size, length)`.

    Example:

    ```python
    segment_positions([[1, 1, 1, 2, 2, 0, 0]])  # [[0, 1, 2, 0, 1, 0, 0]]
    ```
    """
    segment_ids = ops.convert_to_tensor(segment_ids)
    same = ops.equal(segment_ids[:, :, None], segment_ids[:, None, :])
    length = ops.shape(segment_ids)[1]
    # Token i's position: the tokens of its segment before it (keys j < i).
    earlier = causal_mask(length, length, offset=-1)
    positions = ops.sum(ops.cast(ops.logical_and(same, earlier[None]), "int32"), axis=-1)
    # Padding (segment 0) at position 0: a long padded tail would otherwise
    # count past the position table.
    return positions * ops.cast(ops.not_equal(segment_ids, 0), "int32")
