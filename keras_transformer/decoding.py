"""Decoding for encoder-decoder Transformers: greedy, beam search, sampling.

Every policy is a `Sampler`: call one with a model (a `Transformer`, e.g. a
`Translator` or a model from `build_transformer`) and source ids to get the
generated ids. The samplers know nothing of the architecture: they ask the
model for its *step model* (`model.step_model()`; the Transformer's is
`keras_transformer.models.transformer.StepModel`), an object with

- `encode(source_ids)` -> memory: a nest of tensors, batch first;
- `start(memory, max_length)` -> `(caches, context)`: the state every step
  updates (batch first; beam search reorders its rows) and what every step
  reads unchanged;
- `step(tokens, index, caches, context)` -> `(logits, caches)`: the logits
  `(n, target_vocabulary_size)` of the token after `tokens` (int32 `(n,)`,
  at position `index`);
- `source_vocabulary_size`, `target_vocabulary_size`, `max_target_length`
  (int or None) and `padding_id`, which the arguments are checked against,

as keras-hub's samplers take a `next` function and fairseq's
`SequenceGenerator` a model interface. All of them encode the source once,
then run one fixed-shape `keras.ops.while_loop` over `step`, one token per
hypothesis (the Transformer writes its keys/values into fixed-size
self-attention caches at the step index and reads cross-attention caches
computed once from the encoder output). Every loop variable keeps its shape,
so decoding works eagerly, inside
`tf.function(autograph=False)` (as `keras.export` traces endpoints) and under
`jit_compile=True`; batch size and source length may be dynamic,
`max_length` and the sampler's settings are Python values.

- `GreedySampler`: the most probable token at every step.
- `RandomSampler`: draws the next token from the temperature-scaled
  distribution, optionally restricted to the `top_k` most probable tokens
  and/or the smallest set whose probability reaches `top_p` (nucleus). The
  draws are a pure function of a `(2,)` integer seed tensor and the step,
  so equal seeds give equal outputs, also inside a compiled function that
  takes the seed as an input.
- `BeamSampler`: beam search with the GNMT length penalty, optionally
  returning the n best hypotheses with their scores.

Greedy and random sampling share one single-hypothesis loop that differs
only in how a token is chosen from the step's log-probabilities.

Outputs are int32 `(batch_size, max_length)`: the generated ids without BOS,
the EOS kept, and the model's padding id (0 by default) after it. A row that
reaches `max_length` without EOS is returned truncated. The padding id is
never generated, because in the output it means "nothing here".
"""

import numbers

import keras
from keras import ops

from keras_transformer import validation
from keras_transformer.layers import _token_ids
from keras_transformer.layers.stateless_dropout import _FixedSeed

# Log-probability of a forbidden or impossible choice. Finite, so sums and
# length normalisation never turn it into NaN (inf - inf).
IMPOSSIBLE_LOG_PROB = -1e9

METHODS = ("greedy", "beam", "sample")


class Sampler:
    """Base class: chooses generated tokens, one fixed-shape loop per call.

    Subclasses implement `__call__`; `get_config` returns the settings, which
    together with the decoding length identify one compiled function (the
    `Translator` compiles each setting once and reuses it).
    """

    def __call__(
        self, model, source_ids, max_length, bos_id=2, eos_id=3, seed=None
    ):
        """Generates ids for `source_ids`.

        Args:
            model: a `Transformer` (from `build_transformer`, a `Translator`,
                or composed from `TransformerLayers`), or any object whose
                `step_model()` returns a step model (see the module
                docstring).
            source_ids: int tensor `(batch_size, source_length)`, padded with
                the model's padding id.
            max_length: int. Number of tokens to generate, EOS included; at
                most the model's maximum target length.
            bos_id: int. Token fed to the decoder first.
            eos_id: int. Token that ends a sequence.
            seed: optional int tensor of shape `(2,)`; only `RandomSampler`
                uses it.

        Returns:
            int32 `(batch_size, max_length)` ids (see the subclasses for
            extra outputs).
        """
        raise NotImplementedError

    def get_config(self):
        return {}

    def __repr__(self):
        settings = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({settings})"


class _SingleHypothesisSampler(Sampler):
    """One hypothesis per example; subclasses choose each step's tokens."""

    def _choose(self, log_probs, index, seed):
        """Token ids `(n,)` from float32 `log_probs` `(n, vocabulary)`."""
        raise NotImplementedError

    def _prepare_seed(self, seed):
        return seed

    def __call__(
        self, model, source_ids, max_length, bos_id=2, eos_id=3, seed=None
    ):
        steps, source_ids = _prepare(model, source_ids, max_length, bos_id, eos_id)
        padding_id = steps.padding_id
        seed = self._prepare_seed(seed)
        batch_size = _batch_size(source_ids)
        caches, context = steps.start(steps.encode(source_ids), max_length)

        def keep_going(index, last_tokens, outputs, finished, caches):
            return ops.logical_and(
                ops.less(index, max_length), ops.logical_not(ops.all(finished))
            )

        def step(index, last_tokens, outputs, finished, caches):
            log_probs, caches = _next_token_log_probs(
                steps, last_tokens, index, caches, context
            )
            tokens = self._choose(log_probs, index, seed)
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
                caches,
            ),
        )
        return outputs


class GreedySampler(_SingleHypothesisSampler):
    """Picks the most probable next token at every step.

    Example:

    ```python
    model = keras_transformer.models.build_transformer(
        keras_transformer.models.TransformerConfig(
            source_vocabulary_size=100, target_vocabulary_size=100))
    ids = GreedySampler()(model, np.array([[5, 6, 7, 0]], "int32"),
                          max_length=10)
    ```
    """

    def _choose(self, log_probs, index, seed):
        return ops.cast(ops.argmax(log_probs, axis=-1), "int32")


class RandomSampler(_SingleHypothesisSampler):
    """Draws the next token at random: temperature, top-k and top-p.

    The log-probabilities are divided by `temperature`; with `top_k` only
    the `top_k` most probable tokens stay eligible, with `top_p` only the
    most probable tokens whose cumulative probability (of the
    temperature-scaled distribution, after top-k) first reaches `top_p`
    (the most probable token always stays). A token is then drawn with the
    Gumbel-max trick from uniform numbers that are a pure function of the
    seed and the step, so `top_k=1` is greedy decoding and equal seeds give
    equal outputs on every backend.

    Args:
        temperature: float > 0. Below 1 sharpens, above 1 flattens.
        top_k: int or None. Keep the k most probable tokens.
        top_p: float in (0, 1] or None. Nucleus sampling threshold.

    Call arguments:
        seed: int tensor of shape `(2,)`, or None to draw one from Keras'
            global seed generator (not reproducible unless
            `keras.utils.set_random_seed` was called).

    Example:

    ```python
    sampler = RandomSampler(temperature=0.8, top_p=0.9)
    ids = sampler(model, source_ids, max_length=20,
                  seed=np.array([42, 0], "int32"))
    ```

    References:
        - [Holtzman et al., 2019](https://arxiv.org/abs/1904.09751) (top-p)
    """

    def __init__(self, temperature=1.0, top_k=None, top_p=None):
        self.temperature = validation.check_positive_float("temperature", temperature)
        self.top_k = validation.check_positive_int("top_k", top_k, allow_none=True)
        if top_p is not None and (
            isinstance(top_p, bool)
            or not isinstance(top_p, numbers.Real)
            or not 0.0 < top_p <= 1.0
        ):
            raise ValueError(
                "Received an invalid value for argument top_p, expected a "
                f"number in (0, 1] or None. Received: top_p={top_p!r}"
            )
        self.top_p = None if top_p is None else float(top_p)

    def get_config(self):
        return {
            "temperature": self.temperature,
            "top_k": self.top_k,
            "top_p": self.top_p,
        }

    def _prepare_seed(self, seed):
        if seed is None:
            return keras.random.SeedGenerator().next()
        return ops.cast(ops.reshape(seed, (2,)), _seed_dtype())

    def _choose(self, log_probs, index, seed):
        logits = log_probs / self.temperature
        if self.top_k is not None and self.top_k < ops.shape(logits)[-1]:
            kth_best = ops.top_k(logits, self.top_k)[0][:, -1:]
            logits = ops.where(logits < kth_best, IMPOSSIBLE_LOG_PROB, logits)
        if self.top_p is not None and self.top_p < 1.0:
            ranked = ops.flip(ops.sort(logits, axis=-1), axis=-1)
            probabilities = ops.softmax(ranked, axis=-1)
            # A token stays when the tokens ranked above it hold less than
            # top_p, so the most probable one always stays.
            before = ops.cumsum(probabilities, axis=-1) - probabilities
            kept = ops.where(before < self.top_p, ranked, float("inf"))
            threshold = ops.min(kept, axis=-1, keepdims=True)
            logits = ops.where(logits < threshold, IMPOSSIBLE_LOG_PROB, logits)
        step_seed = seed + ops.cast(ops.stack([0, index]), seed.dtype)
        uniform = keras.random.uniform(
            ops.shape(logits),
            minval=1e-20,
            maxval=1.0,
            seed=_FixedSeed(step_seed),
        )
        gumbel = -ops.log(-ops.log(uniform))
        return ops.cast(ops.argmax(logits + gumbel, axis=-1), "int32")


class BeamSampler(Sampler):
    """Beam search with GNMT length normalisation.

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
        beam_size: int. Hypotheses kept per example; 1 is greedy decoding.
        length_penalty: float >= 0. GNMT `alpha`; 0 ranks by log-probability
            alone, larger values favour longer outputs.
        num_results: int in `[1, beam_size]`, or None. None returns the best
            hypothesis `(batch, max_length)`; an int n returns the n best,
            `(batch, n, max_length)`, best first.
        return_scores: bool. Also return the length-normalised
            log-probabilities of the returned hypotheses (`(batch,)` or
            `(batch, n)`, float32).

    Example:

    ```python
    ids, scores = BeamSampler(beam_size=4, num_results=2, return_scores=True)(
        model, np.array([[5, 6, 7, 0]], "int32"), max_length=10)
    ```

    References:
        - [Wu et al., 2016](https://arxiv.org/abs/1609.08144) (GNMT length
          penalty)
    """

    def __init__(
        self, beam_size=4, length_penalty=0.6, num_results=None, return_scores=False
    ):
        self.beam_size = validation.check_positive_int("beam_size", beam_size)
        self.length_penalty = validation.check_non_negative_float(
            "length_penalty", length_penalty
        )
        validation.check_positive_int("num_results", num_results, allow_none=True)
        if num_results is not None and num_results > beam_size:
            raise ValueError(
                "Received an invalid value for argument num_results, expected "
                f"at most beam_size={beam_size} hypotheses. Received: "
                f"num_results={num_results}"
            )
        self.num_results = num_results
        self.return_scores = validation.check_bool("return_scores", return_scores)

    def get_config(self):
        return {
            "beam_size": self.beam_size,
            "length_penalty": self.length_penalty,
            "num_results": self.num_results,
            "return_scores": self.return_scores,
        }

    def __call__(
        self, model, source_ids, max_length, bos_id=2, eos_id=3, seed=None
    ):
        steps, source_ids = _prepare(model, source_ids, max_length, bos_id, eos_id)
        padding_id = steps.padding_id
        beam_size = self.beam_size
        length_penalty = self.length_penalty
        vocabulary_size = steps.target_vocabulary_size
        batch_size = _batch_size(source_ids)
        # Beam j of example b is row b * beam_size + j of every decoder tensor.
        memory = keras.tree.map_structure(
            lambda tensor: ops.repeat(tensor, beam_size, axis=0),
            steps.encode(source_ids),
        )
        caches, context = steps.start(memory, max_length)

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
                steps, ops.reshape(last_tokens, (-1,)), index, caches, context
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
                caches,
                empty_ids,
                ops.full((batch_size, beam_size), IMPOSSIBLE_LOG_PROB, "float32"),
            ),
        )
        finished_ids, finished_scores = outputs[-2], outputs[-1]
        finished_ids, finished_scores = outputs[-2], outputs[-1]
        if self.num_results is None:
            finished_ids, finished_scores = finished_ids[:, 0], finished_scores[:, 0]
        else:
            finished_ids = finished_ids[:, : self.num_results]
            finished_scores = finished_scores[:, : self.num_results]
        if self.return_scores:
            return finished_ids, finished_scores
        return finished_ids


def get_sampler(method="greedy", **options):
    """The `Sampler` for a decoding method name and its options.

    Args:
        method: `"greedy"`, `"beam"` (options of `BeamSampler`) or
            `"sample"` (options of `RandomSampler`).
        **options: the sampler's arguments.

    Returns:
        A `Sampler`.
    """
    validation.check_choice("method", method, METHODS)
    sampler_class = {
        "greedy": GreedySampler,
        "beam": BeamSampler,
        "sample": RandomSampler,
    }[method]
    known = _argument_names(sampler_class)
    unknown = sorted(set(options) - set(known))
    if unknown:
        takes = f"takes {sorted(known)}" if known else "takes no options"
        raise ValueError(
            f"Received an unknown option for method={method!r}: {unknown}. "
            f"{sampler_class.__name__} {takes}."
        )
    return sampler_class(**options)


def greedy_decode(model, source_ids, max_length, bos_id=2, eos_id=3):
    """Translates by picking the most probable next token at every step.

    `GreedySampler()(model, ...)`; see `Sampler.__call__` for the arguments.

    Returns:
        int32 tensor `(batch_size, max_length)`: generated ids without BOS,
        EOS kept, padding after EOS.
    """
    return GreedySampler()(model, source_ids, max_length, bos_id, eos_id)


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
    """Translates with beam search (`BeamSampler`) and returns the best
    hypothesis per example, with its score when `return_scores=True`."""
    sampler = BeamSampler(beam_size, length_penalty, return_scores=return_scores)
    return sampler(model, source_ids, max_length, bos_id, eos_id)


def _step_model(model):
    """The step model of a model the decoders accept."""
    step_model = getattr(model, "step_model", None)
    if not callable(step_model):
        raise ValueError(
            "Received an invalid value for argument model, expected a "
            "keras_transformer Transformer (from build_transformer, a "
            "Translator, or Transformer(transformer_layers=...)), or an "
            "object whose step_model() returns a step model (see "
            f"keras_transformer.decoding). Received: model={model!r}"
        )
    return step_model()


def _prepare(model, source_ids, max_length, bos_id, eos_id):
    """Validates the arguments; returns the model's step model and int32
    source ids."""
    steps = _step_model(model)
    max_length = validation.check_positive_int("max_length", max_length)
    longest = steps.max_target_length
    if longest is not None and max_length > longest:
        raise ValueError(
            f"Received max_length={max_length}, but the model decodes at most "
            f"{longest} target positions. Pass max_length <= {longest}, or "
            "build the model with a larger max_target_length."
        )
    vocabulary_size = steps.target_vocabulary_size
    for name, value in (("bos_id", bos_id), ("eos_id", eos_id)):
        validation.check_non_negative_int(name, value)
        if value >= vocabulary_size:
            raise ValueError(
                f"Received an invalid value for argument {name}, expected an "
                f"id below the target vocabulary size {vocabulary_size}. "
                f"Received: {name}={value}"
            )
    if eos_id == steps.padding_id:
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
    # Before the int32 cast, which would wrap an int64 id around.
    _token_ids.check_values("source_ids", source_ids, steps.source_vocabulary_size)
    return steps, ops.cast(source_ids, "int32")


def _batch_size(source_ids):
    """The static batch size when known, so loop variables keep static
    shapes across iterations (tf.while_loop requires it)."""
    static = source_ids.shape[0]
    return static if static is not None else ops.shape(source_ids)[0]


def _is_done(finished_scores):
    """An example is done when all its `beam_size` finished slots are filled
    (empty slots hold `IMPOSSIBLE_LOG_PROB`, real scores are far above it)."""
    return ops.greater(finished_scores[:, -1], IMPOSSIBLE_LOG_PROB)


def _next_token_log_probs(steps, tokens, index, caches, context):
    """One cached decoder step: float32 log-probs `(n, vocabulary)` of the
    token after `tokens` (at position `index`), with padding forbidden."""
    logits, caches = steps.step(tokens, index, caches, context)
    log_probs = ops.log_softmax(ops.cast(logits, "float32"), axis=-1)
    is_padding = ops.equal(ops.arange(ops.shape(log_probs)[-1]), steps.padding_id)
    return ops.where(is_padding, IMPOSSIBLE_LOG_PROB, log_probs), caches


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


def _argument_names(cls):
    import inspect

    # GreedySampler inherits `object.__init__(*args, **kwargs)`: no options.
    named = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return [
        name
        for name, parameter in inspect.signature(cls.__init__).parameters.items()
        if name != "self" and parameter.kind in named
    ]


_SEED_DTYPE = []


def _seed_dtype():
    """The dtype of the backend's random seeds (int64 on TensorFlow, uint32
    on JAX), read once from a `SeedGenerator`."""
    if not _SEED_DTYPE:
        _SEED_DTYPE.append(keras.random.SeedGenerator(0).state.dtype)
    return _SEED_DTYPE[0]
