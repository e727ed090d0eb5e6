"""Greedy and beam-search decoding for models from `build_transformer`.

Both decoders encode the source once, then run one compiled while loop over
`keras_transformer.models.decode_step`: every step feeds one token per
sequence, writes its keys/values into the fixed-size self-attention caches at
the step index and reads the cross-attention caches computed once from the
encoder output. Every loop variable keeps its shape, so the loop works
eagerly, inside `tf.function(autograph=False)` (as `keras.export` traces
endpoints) and under `jit_compile=True`; batch size and source length may
be dynamic, `max_length` and `beam_size` are Python ints.

Outputs are int32 `(batch_size, max_length)`: the generated ids without BOS,
the EOS kept, and the model's padding id (0 by default) after it. A row that
reaches `max_length` without EOS is returned truncated. The padding id is
never generated, because in the output it means "nothing here".
"""

import numbers

import keras
from keras import ops

from keras_transformer import validation
from keras_transformer.models import transformer

# Log-probability of a forbidden or impossible choice. Finite, so sums and
# length normalisation never turn it into NaN (inf - inf).
IMPOSSIBLE_LOG_PROB = -1e9


def greedy_decode(model, source_ids, max_length, bos_id=2, eos_id=3):
    """Translates by picking the most probable next token at every step.

    Args:
        model: a `keras.Model` from `keras_transformer.models.build_transformer`
            (built or reloaded from `.keras`).
        source_ids: int tensor `(batch_size, source_length)`, padded with the
            model's padding id.
        max_length: int. Number of tokens to generate, EOS included; at most
            the model's maximum target length.
        bos_id: int. Token fed to the decoder first.
        eos_id: int. Token that ends a sequence.

    Returns:
        int32 tensor `(batch_size, max_length)`: generated ids without BOS,
        EOS kept, padding after EOS.

    Example:

    ```python
    config = keras_transformer.models.TransformerConfig(
        source_vocabulary_size=100, target_vocabulary_size=100
    )
    model = keras_transformer.models.build_transformer(config)
    ids = keras_transformer.decoding.greedy_decode(
        model, np.array([[5, 6, 7, 0]], "int32"), max_length=10
    )
    ```
    """
    parts, source_ids, padding_id = _prepare(
        model, source_ids, max_length, bos_id, eos_id
    )
    batch_size = _batch_size(source_ids)
    encoded, source_mask = transformer.encode(parts, source_ids)
    self_caches, cross_caches = transformer.initial_decoder_caches(
        parts, encoded, max_length
    )

    def keep_going(index, last_tokens, outputs, finished, caches):
        return ops.logical_and(
            ops.less(index, max_length), ops.logical_not(ops.all(finished))
        )

    def step(index, last_tokens, outputs, finished, caches):
        log_probs, caches = _next_token_log_probs(
            parts, last_tokens, index, caches, cross_caches, source_mask, padding_id
        )
        tokens = ops.cast(ops.argmax(log_probs, axis=-1), "int32")
        tokens = ops.where(finished, padding_id, tokens)
        outputs = ops.slice_update(outputs, [0, index], tokens[:, None])
        finished = ops.logical_or(finished, ops.equal(tokens, eos_id))
        return index + 1, tokens, outputs, finished, caches

    _, _, outputs, _, _ = ops.while_loop(
        keep_going,
        step,
        (
            ops.convert_to_tensor(0, "int32"),
            ops.full((batch_size,), bos_id, "int32"),
            ops.full((batch_size, max_length), padding_id, "int32"),
            ops.zeros((batch_size,), "bool"),
            self_caches,
        ),
    )
    return outputs


def beam_search_decode(
    model,
    source_ids,
    max_length,
    beam_size=4,
    length_penalty=0.6,
    bos_id=2,
    eos_id=3,
    return_scores=False,
):
    """Translates with beam search and GNMT length normalisation.

    Each example keeps `beam_size` unfinished ("alive") hypotheses, ranked
    by summed float32 log-probabilities, and up to `beam_size` finished
    ones, ranked by the GNMT score
    `log_prob / ((5 + length) / 6) ** length_penalty` (length counting the
    EOS), as in TF Model Garden's `sequence_beam_search`. Every step expands
    the alive beams into their `2 * beam_size` best continuations, so
    `beam_size` non-EOS ones always survive. A continuation ending in EOS
    finishes, and is never extended, when it ranks within the best
    `beam_size`; at the last step those best `beam_size` finish truncated at
    `max_length`. An example is done once `beam_size` hypotheses have
    finished (as in fairseq), so `beam_size=1` is exactly greedy decoding;
    the loop ends when every example is done.

    Args:
        model: a `keras.Model` from `keras_transformer.models.build_transformer`.
        source_ids: int tensor `(batch_size, source_length)`, padded with the
            model's padding id.
        max_length: int. Number of tokens to generate, EOS included; at most
            the model's maximum target length.
        beam_size: int. Hypotheses kept per example; 1 is greedy decoding.
        length_penalty: float >= 0. GNMT `alpha`; 0 ranks by log-probability
            alone, larger values favour longer outputs.
        bos_id: int. Token fed to the decoder first.
        eos_id: int. Token that ends a sequence.
        return_scores: bool. Also return the length-normalised
            log-probability of each returned hypothesis.

    Returns:
        int32 tensor `(batch_size, max_length)` of the best hypothesis per
        example (no BOS, EOS kept, padding after EOS); with `return_scores`,
        a tuple `(ids, scores)` with float32 scores `(batch_size,)`.

    Example:

    ```python
    # `model` as in the `greedy_decode` example.
    ids, scores = keras_transformer.decoding.beam_search_decode(
        model, np.array([[5, 6, 7, 0]], "int32"), max_length=10, beam_size=4,
        return_scores=True,
    )
    ```

    References:
        - [Wu et al., 2016](https://arxiv.org/abs/1609.08144) (GNMT length
          penalty)
    """
    parts, source_ids, padding_id = _prepare(
        model, source_ids, max_length, bos_id, eos_id
    )
    beam_size = validation.check_positive_int("beam_size", beam_size)
    length_penalty = check_length_penalty(length_penalty)
    vocabulary_size = parts.target_embedding.vocabulary_size
    batch_size = _batch_size(source_ids)

    encoded, source_mask = transformer.encode(parts, source_ids)
    # Beam j of example b is row b * beam_size + j of every decoder tensor.
    encoded = ops.repeat(encoded, beam_size, axis=0)
    source_mask = ops.repeat(source_mask, beam_size, axis=0)
    self_caches, cross_caches = transformer.initial_decoder_caches(
        parts, encoded, max_length
    )

    def normalised(log_probs, length):
        penalty = ops.power((5.0 + ops.cast(length, "float32")) / 6.0, length_penalty)
        return log_probs / penalty

    def keep_going(
        index,
        alive_ids,
        alive_log_probs,
        last_tokens,
        caches,
        finished_ids,
        finished_scores,
    ):
        return ops.logical_and(
            ops.less(index, max_length),
            ops.logical_not(ops.all(_is_done(finished_scores))),
        )

    def step(
        index,
        alive_ids,
        alive_log_probs,
        last_tokens,
        caches,
        finished_ids,
        finished_scores,
    ):
        log_probs, caches = _next_token_log_probs(
            parts,
            ops.reshape(last_tokens, (-1,)),
            index,
            caches,
            cross_caches,
            source_mask,
            padding_id,
        )
        log_probs = ops.reshape(log_probs, (batch_size, beam_size, vocabulary_size))
        candidates = ops.reshape(
            alive_log_probs[:, :, None] + log_probs,
            (batch_size, beam_size * vocabulary_size),
        )
        top_log_probs, top_indices = ops.top_k(candidates, 2 * beam_size)
        parents = top_indices // vocabulary_size
        tokens = ops.cast(top_indices % vocabulary_size, "int32")
        top_ids = ops.slice_update(
            _gather_beams(alive_ids, parents), [0, 0, index], tokens[:, :, None]
        )
        ends = ops.equal(tokens, eos_id)

        alive_log_probs, survivors = ops.top_k(
            ops.where(ends, IMPOSSIBLE_LOG_PROB, top_log_probs), beam_size
        )
        alive_ids = _gather_beams(top_ids, survivors)
        last_tokens = ops.take_along_axis(tokens, survivors, axis=1)
        survivor_rows = ops.reshape(
            _flat_beam_indices(
                ops.take_along_axis(parents, survivors, axis=1), beam_size
            ),
            (-1,),
        )
        caches = keras.tree.map_structure(
            lambda cache: ops.take(cache, survivor_rows, axis=0), caches
        )

        within_beam = ops.less(ops.arange(2 * beam_size), beam_size)[None, :]
        # Continuations of the placeholder beams of the first step, or of
        # the padding token, are impossible and must never finish.
        possible = ops.greater(top_log_probs, IMPOSSIBLE_LOG_PROB / 2)
        completes = ops.logical_and(
            ops.logical_or(ends, ops.equal(index, max_length - 1)),
            ops.logical_and(within_beam, possible),
        )
        completes = ops.logical_and(
            completes, ops.logical_not(_is_done(finished_scores))[:, None]
        )
        new_scores = ops.where(
            completes, normalised(top_log_probs, index + 1), IMPOSSIBLE_LOG_PROB
        )
        finished_scores, best = ops.top_k(
            ops.concatenate([finished_scores, new_scores], axis=1), beam_size
        )
        finished_ids = _gather_beams(
            ops.concatenate([finished_ids, top_ids], axis=1), best
        )
        return (
            index + 1,
            alive_ids,
            alive_log_probs,
            last_tokens,
            caches,
            finished_ids,
            finished_scores,
        )

    empty_ids = ops.full((batch_size, beam_size, max_length), padding_id, "int32")
    # Only beam 0 is live at first, so the first step does not expand
    # beam_size copies of the same BOS.
    first_beam_only = ops.convert_to_tensor(
        [0.0] + [IMPOSSIBLE_LOG_PROB] * (beam_size - 1), "float32"
    )
    outputs = ops.while_loop(
        keep_going,
        step,
        (
            ops.convert_to_tensor(0, "int32"),
            empty_ids,
            ops.tile(first_beam_only[None], (batch_size, 1)),
            ops.full((batch_size, beam_size), bos_id, "int32"),
            self_caches,
            empty_ids,
            ops.full((batch_size, beam_size), IMPOSSIBLE_LOG_PROB, "float32"),
        ),
    )
    finished_ids, finished_scores = outputs[-2], outputs[-1]
    if return_scores:
        return finished_ids[:, 0], finished_scores[:, 0]
    return finished_ids[:, 0]


def _prepare(model, source_ids, max_length, bos_id, eos_id):
    """Validates the arguments; returns the model's layers, int32 source ids
    and the padding id."""
    parts = transformer.TransformerLayers.of(model)
    max_length = validation.check_positive_int("max_length", max_length)
    longest = parts.target_embedding.sequence_length
    if longest is not None and max_length > longest:
        raise ValueError(
            f"Received max_length={max_length}, but model {model.name!r} "
            f"decodes at most {longest} target positions. Pass max_length <= "
            f"{longest}, or build the model with a larger max_target_length."
        )
    vocabulary_size = parts.target_embedding.vocabulary_size
    padding_id = parts.padding_mask.padding_id
    for name, value in (("bos_id", bos_id), ("eos_id", eos_id)):
        validation.check_non_negative_int(name, value)
        if value >= vocabulary_size:
            raise ValueError(
                f"Received an invalid value for argument {name}, expected an "
                f"id below the target vocabulary size {vocabulary_size}. "
                f"Received: {name}={value}"
            )
    if eos_id == padding_id:
        raise ValueError(
            f"Received eos_id={eos_id}, which is the model's padding id, so "
            "finished sequences could not be told from padding. Use a "
            "distinct EOS token."
        )
    source_ids = ops.convert_to_tensor(source_ids)
    dtype = keras.backend.standardize_dtype(source_ids.dtype)
    if "int" not in dtype:
        raise ValueError(
            f"Expected integer source_ids, but received dtype {dtype}. Pass "
            "token ids (e.g. int32) from the source tokenizer."
        )
    if len(source_ids.shape) != 2:
        raise ValueError(
            "Expected source_ids of shape (batch_size, source_length), but "
            f"received shape {tuple(source_ids.shape)}."
        )
    return parts, ops.cast(source_ids, "int32"), padding_id


def check_length_penalty(length_penalty):
    """Validates the GNMT length-penalty exponent; shared with the exporter."""
    if (
        isinstance(length_penalty, bool)
        or not isinstance(length_penalty, numbers.Real)
        or not 0 <= length_penalty < float("inf")
    ):
        raise ValueError(
            "Received an invalid value for argument length_penalty, expected "
            "a non-negative finite number. Received: "
            f"length_penalty={length_penalty!r}"
        )
    return float(length_penalty)


def _batch_size(source_ids):
    """The static batch size when known, so loop variables keep static
    shapes across iterations (tf.while_loop requires it)."""
    static = source_ids.shape[0]
    return static if static is not None else ops.shape(source_ids)[0]


def _is_done(finished_scores):
    """An example is done when all its `beam_size` finished slots are filled
    (empty slots hold `IMPOSSIBLE_LOG_PROB`, real scores are far above it)."""
    return ops.greater(finished_scores[:, -1], IMPOSSIBLE_LOG_PROB)


def _next_token_log_probs(
    parts, tokens, index, self_caches, cross_caches, source_mask, padding_id
):
    """One cached decoder step: float32 log-probs `(n, vocabulary)` of the
    token after `tokens` (at position `index`), with padding forbidden."""
    logits, self_caches = transformer.decode_step(
        parts, tokens[:, None], index, self_caches, cross_caches, source_mask
    )
    log_probs = ops.log_softmax(ops.cast(logits[:, 0], "float32"), axis=-1)
    is_padding = ops.equal(ops.arange(ops.shape(log_probs)[-1]), padding_id)
    return ops.where(is_padding, IMPOSSIBLE_LOG_PROB, log_probs), self_caches


def _flat_beam_indices(beam_indices, num_beams):
    """Beam `beam_indices[b, j]` of example `b` -> its row in a
    `(batch * num_beams, ...)` tensor."""
    batch_size = ops.shape(beam_indices)[0]
    return (
        beam_indices
        + ops.arange(batch_size, dtype=beam_indices.dtype)[:, None] * num_beams
    )


def _gather_beams(values, beam_indices):
    """`values[b, beam_indices[b, j]]`: `(batch, beams, ...)` ->
    `(batch, len(j), ...)`."""
    num_beams = values.shape[1]
    flat_values = ops.reshape(values, (-1,) + tuple(values.shape[2:]))
    return ops.take(flat_values, _flat_beam_indices(beam_indices, num_beams), axis=0)
