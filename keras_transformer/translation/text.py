"""Strings in and out of the model, for the Translator and its export.

`text_decoder` wraps an ids -> ids decoder into strings -> strings in the
graph, the one tokenize -> pad -> decode -> detokenize path that
`Translator.translate` and the SavedModel export share;
`check_tokenizers_fit` checks a pair of tokenizers against the model they
feed; `pairs_that_fit` keeps the pairs whose source the model can read.

The checks of the Translator's text arguments live here too: `check_texts`
(a list of strings), `as_texts` (texts or Keras' own data, as `fit` and
`evaluate` take them) and `check_model_data` (what is neither).
"""

import numbers

import numpy as np

from keras_transformer._tensorflow import import_tensorflow
from keras_transformer.data.tokenizers import Tokenizer
from keras_transformer.models import transformer

tf = import_tensorflow(__name__)


def check_tokenizers_fit(transformer_layers, source_tokenizer, target_tokenizer):
    """Raises `ValueError` unless both are tokenizers whose ids fit the
    model's embeddings (`transformer_layers`: its `TransformerLayers`)."""
    sizes = (
        transformer_layers.source_vocabulary_size,
        transformer_layers.target_vocabulary_size,
    )
    for argument, tokenizer, model_vocabulary_size in zip(
        ("source_tokenizer", "target_tokenizer"),
        (source_tokenizer, target_tokenizer),
        sizes,
    ):
        if not isinstance(tokenizer, Tokenizer):
            raise ValueError(
                f"Received an invalid value for argument {argument}, expected "
                f"a keras_transformer.data Tokenizer. Received: {argument}="
                f"{tokenizer!r}"
            )
        if tokenizer.vocabulary_size > model_vocabulary_size:
            raise ValueError(
                f"Received a {argument} with {tokenizer.vocabulary_size} tokens "
                f"for a model whose embedding has {model_vocabulary_size}: its "
                "ids would fall outside the model. Pass the tokenizer the model "
                "was built for."
            )


def text_decoder(
    model, source_tokenizer, target_tokenizer, decode, pad_to_max_source_length=False
):
    """Wraps an ids -> ids decoder into strings -> strings, in the graph.

    The one tokenize -> pad -> decode -> detokenize path of the library:
    the export's endpoints and `Translator.translate` both use it.

    Args:
        model: the `Transformer` whose limits and padding id apply.
        source_tokenizer: tokenizer of the inputs.
        target_tokenizer: tokenizer of the outputs.
        decode: function of int32 source ids `(batch, length)` (and any
            further arguments, passed through) -> generated ids
            `(batch, max_length)`.
        pad_to_max_source_length: bool. Pad every batch to the model's
            maximum source length, so an XLA-compiled `decode` sees one
            width (and compiles once per batch size).

    Returns:
        A function `translate(texts, *args)`: tf.string `[batch]` ->
        tf.string `[batch]`. A text with more tokens than the maximum
        source length fails with an `InvalidArgumentError` stating the
        limit; an empty or whitespace-only text translates to `""`.
    """
    transformer_layers = transformer.model_layers(model)
    max_source_length = transformer_layers.max_source_length
    padding_id = transformer_layers.padding_id
    static_width = pad_to_max_source_length and max_source_length is not None

    def translate(texts, *args):
        pieces = source_tokenizer.tokenize(texts)
        lengths = tf.cast(pieces.row_lengths(), tf.int32)
        longest = tf.reduce_max(tf.concat([lengths, [0]], axis=0))
        checks = []
        if max_source_length is not None:
            checks.append(
                tf.debugging.assert_less_equal(
                    longest,
                    max_source_length,
                    message=(
                        "A text to translate has more tokens than the model's "
                        f"maximum source length of {max_source_length} tokens. "
                        "Texts are never truncated: split long texts before "
                        "translating."
                    ),
                )
            )
        with tf.control_dependencies(checks):
            # At least one column, so a batch of empty texts still has a
            # source to encode; those rows are blanked below.
            width = (
                tf.constant(max_source_length)
                if static_width
                else tf.maximum(longest, 1)
            )
        source_ids = pieces.to_tensor(
            default_value=padding_id, shape=tf.stack([tf.size(lengths), width])
        )
        translations = target_tokenizer.detokenize(decode(source_ids, *args))
        return tf.where(lengths > 0, translations, "")

    return translate


def pairs_that_fit(translator, sources, targets):
    """The pairs whose source fits `translator.max_source_length` tokens.

    A model translates no source longer than its position table; scores of
    held-out pairs are taken on those it can read.

    Args:
        translator: a `Translator`.
        sources: list of str.
        targets: list of str, one per source (e.g. the references).

    Returns:
        `(sources, targets)`: the pairs that fit, in their order.

    Example:

    ```python
    test_sources, test_targets = pairs_that_fit(translator, sources, references)
    dropped = len(sources) - len(test_sources)
    ```
    """
    ids = translator.source_tokenizer.tokenize(list(sources)).to_list()
    fits = [len(source_ids) <= translator.max_source_length for source_ids in ids]
    pairs = [pair for pair, fit in zip(zip(sources, targets), fits) if fit]
    return [source for source, _ in pairs], [target for _, target in pairs]


def is_text_list(value):
    """Whether `value` is a list, tuple or 1-D array of strings."""
    if isinstance(value, np.ndarray):
        return value.ndim == 1 and value.dtype.kind in "USO"
    return isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value)


def is_text_dataset(value):
    """Whether `value` is a `tf.data.Dataset` of (source, target) strings."""
    if not isinstance(value, tf.data.Dataset):
        return False
    spec = value.element_spec
    return (
        isinstance(spec, tuple)
        and len(spec) == 2
        and all(
            isinstance(s, tf.TensorSpec) and s.dtype == tf.string and s.shape.rank == 0
            for s in spec
        )
    )


def check_texts(name, value):
    """A list of str from a list/tuple/array of strings, or a ValueError."""
    if isinstance(value, (str, bytes)) or not is_text_list(value):
        raise ValueError(
            f"Received an invalid value for argument {name}, expected a list of "
            f"strings. Received: {name}={short_repr(value)}"
        )
    return [str(v) for v in value]


def check_model_data(name, value, method):
    """Refuses what is neither texts nor data `keras.Model.<method>` takes
    (Keras would fail later with a `KeyError` or an unclear message)."""
    wrong = (
        value is None
        or isinstance(value, (str, bytes, numbers.Number))
        or (
            isinstance(value, (list, tuple))
            and any(isinstance(v, (str, bytes)) or is_text_list(v) for v in value)
        )
    )
    if wrong:
        raise ValueError(
            f"Received an invalid value for argument {name}, expected texts "
            "(a list of source strings, with their targets as y, or a "
            "tf.data.Dataset of (source, target) strings) or batches of ids "
            f"as keras.Model.{method} takes them (a dict of 'source_ids' and "
            "'target_ids' arrays with labels, or a tf.data.Dataset of them). "
            f"Received: {name}={short_repr(value)}"
        )


def short_repr(value):
    """`repr(value)`, cut to 120 characters for an error message."""
    text = repr(value)
    return text if len(text) <= 120 else text[:117] + "..."


def _text_pairs(dataset):
    """Reads a finite dataset of (source, target) strings into two lists."""
    sources, targets = [], []
    for source, target in dataset.as_numpy_iterator():
        sources.append(source.decode("utf-8"))
        targets.append(target.decode("utf-8"))
    return sources, targets


def as_texts(name, x, y):
    """(sources, targets) when `x`/`y` hold texts, else None."""
    if is_text_dataset(x):
        if y is not None:
            raise ValueError(
                f"Received a dataset of (source, target) strings as {name} "
                "and a y: the dataset holds the targets. Pass y=None."
            )
        return _text_pairs(x)
    if is_text_list(x) and not isinstance(x, (str, bytes)):
        targets = check_texts("y", y)
        sources = check_texts(name, x)
        if len(sources) != len(targets):
            raise ValueError(
                "Source and target texts must pair up, but received "
                f"{len(sources)} sources and {len(targets)} targets."
            )
        return sources, targets
    return None


def validation_pair(validation_data):
    """`fit`'s `validation_data` as the `(x, y)` that `as_texts` reads."""
    if is_text_dataset(validation_data):
        return validation_data, None
    if isinstance(validation_data, (list, tuple)) and len(validation_data) == 2:
        return validation_data
    return validation_data, None
