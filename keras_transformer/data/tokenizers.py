"""Reversible tokenizers that run inside TensorFlow graphs.

Both tokenizers are `tf.Module`s holding two `tf.lookup.StaticHashTable`
resources (token -> id and id -> token), so `tokenize` and `detokenize` work
eagerly, inside `tf.function(autograph=False)`, and in a SavedModel exported
with the model (`keras.export.ExportArchive().track(tokenizer)`).

Every vocabulary starts with the same four special tokens:

| id | token   | role                                             |
|----|---------|--------------------------------------------------|
| 0  | [PAD]   | padding; dropped by `detokenize`                 |
| 1  | [UNK]   | any token missing from the vocabulary            |
| 2  | [BOS]   | start of a decoder sequence; dropped             |
| 3  | [EOS]   | end of a sequence; `detokenize` stops at the first |

Text handling shared by both tokenizers: bytes that are not valid UTF-8 are
replaced by U+FFFD (the Unicode replacement character) before splitting, so
they never raise; U+FFFD then maps to [UNK] unless the vocabulary holds it.
Empty and whitespace-only strings tokenize to an empty id list.
"""

import collections
import collections.abc
import inspect
import json
import os


from keras_transformer._tensorflow import import_tensorflow
from keras_transformer import _files
from keras_transformer.validation import (
    check_bool,
    check_known_names,
    check_positive_int,
)

tf = import_tensorflow(__name__)

PAD_TOKEN, UNK_TOKEN, BOS_TOKEN, EOS_TOKEN = "[PAD]", "[UNK]", "[BOS]", "[EOS]"
SPECIAL_TOKENS = (PAD_TOKEN, UNK_TOKEN, BOS_TOKEN, EOS_TOKEN)
PAD_ID, UNK_ID, BOS_ID, EOS_ID = 0, 1, 2, 3

_REPLACEMENT_CHARACTER = 0xFFFD
_WHITESPACE = r"[\s\pZ]"
# Words are runs of letters, digits, combining marks and underscores; every
# other visible character is a token of its own.
_PUNCTUATION = r"([^\pL\pN\pM_\s\pZ])"
# Detokenisation spacing rules, applied in this order to the space-joined
# tokens: no space before closing marks, none after opening marks, none around
# joiners, and `.`/`:` between two numbers rejoin them ("3.14", "10:30").
_SPACING_RULES = (
    (r" ([.,;:!?%)\]}])", r"\1"),
    (r"([(\[{$]) ", r"\1"),
    (r" ?([-/'’]) ?", r"\1"),
    (r"(\pN)([.:]) (\pN)", r"\1\2\3"),
)
# Bounds how many strings `from_texts` hands to TensorFlow at once.
_COUNTING_CHUNK = 8192


def _check_vocabulary(vocabulary):
    if isinstance(vocabulary, (str, bytes)) or not isinstance(
        vocabulary, (list, tuple)
    ):
        raise ValueError(
            "Received an invalid value for argument vocabulary, expected a list "
            f"of strings. Received: vocabulary={vocabulary!r}"
        )
    vocabulary = list(vocabulary)
    if tuple(vocabulary[: len(SPECIAL_TOKENS)]) != SPECIAL_TOKENS:
        raise ValueError(
            "The vocabulary must start with the special tokens "
            f"{list(SPECIAL_TOKENS)} at ids 0-3. Received first tokens: "
            f"{vocabulary[: len(SPECIAL_TOKENS)]}. Build it with "
            "`from_texts`, or prepend the special tokens."
        )
    for token in vocabulary:
        if not isinstance(token, str) or not token:
            raise ValueError(
                "Every vocabulary entry must be a non-empty string. "
                f"Received: {token!r}"
            )
    duplicates = sorted(
        token for token, count in collections.Counter(vocabulary).items() if count > 1
    )
    if duplicates:
        raise ValueError(
            f"The vocabulary must not repeat tokens. Repeated: {duplicates[:10]}"
        )
    return vocabulary


def _check_corpus(texts):
    """Returns `texts` as a non-empty list of str, refusing a lone string."""
    if isinstance(texts, (str, bytes)) or not isinstance(
        texts, collections.abc.Iterable
    ):
        raise ValueError(
            "Received an invalid value for argument texts, expected an "
            "iterable of strings (a list of sentences), not a single string "
            f"or a non-iterable. Received: texts={texts!r}"
        )
    texts = list(texts)
    if not texts:
        raise ValueError("from_texts needs at least one text; texts is empty.")
    for index, text in enumerate(texts):
        if not isinstance(text, str):
            raise ValueError(
                "Received an invalid value for argument texts, expected "
                f"strings only. Received texts[{index}]={text!r}"
            )
    return texts


def _as_string_vector(strings):
    if isinstance(strings, (tf.Tensor, tf.RaggedTensor)):
        if strings.dtype != tf.string:
            raise ValueError(
                "Received an invalid value for argument strings, expected a "
                f"tf.string tensor of texts. Received a tensor of dtype "
                f"{strings.dtype.name}"
            )
    else:
        try:
            strings = tf.convert_to_tensor(strings, dtype=tf.string)
        except (TypeError, ValueError):
            raise ValueError(
                "Received an invalid value for argument strings, expected a "
                "list of texts (str or bytes) or a rank-1 tf.string tensor. "
                f"Received: strings={strings!r}"
            ) from None
    if strings.shape.rank != 1:
        raise ValueError(
            "tokenize expects a rank-1 string tensor of shape [batch], but "
            f"received shape {strings.shape}. Wrap a single string in a list."
        )
    return strings


def _as_valid_utf8(strings):
    """Checks `strings` is a [batch] vector; replaces invalid UTF-8 by U+FFFD."""
    return tf.strings.unicode_transcode(
        _as_string_vector(strings),
        input_encoding="UTF-8",
        output_encoding="UTF-8",
        errors="replace",
        replacement_char=_REPLACEMENT_CHARACTER,
    )


def _ids_to_read(ids):
    """The ids `detokenize` reads: those before the first [EOS], without
    [PAD] and [BOS], as an int32 ragged tensor [batch, None]."""
    ids = _as_dense_ids(ids)
    # A model never emits a negative id, so one is a bug upstream; ids past
    # the vocabulary can come from a model whose output layer is larger than
    # its tokenizer and read as [UNK].
    if tf.executing_eagerly():
        if ids.shape.num_elements() and int(tf.reduce_min(ids)) < 0:
            raise ValueError(
                "Received an invalid value for argument ids, expected token "
                f"ids >= 0. Received: a negative id {int(tf.reduce_min(ids))}"
            )
    else:
        with tf.control_dependencies(
            [
                tf.debugging.assert_non_negative(
                    ids, message="detokenize received a negative token id"
                )
            ]
        ):
            ids = tf.identity(ids)
    before_eos = tf.equal(
        tf.cumsum(tf.cast(tf.equal(ids, EOS_ID), tf.int32), axis=1), 0
    )
    keep = before_eos & tf.not_equal(ids, PAD_ID) & tf.not_equal(ids, BOS_ID)
    return tf.ragged.boolean_mask(ids, keep)


def _as_dense_ids(ids):
    """Returns `ids` as a dense int32 [batch, length] tensor padded with PAD."""
    if isinstance(ids, tf.RaggedTensor):
        if ids.ragged_rank != 1 or ids.shape.rank != 2:
            raise ValueError(
                "detokenize expects ids of shape [batch, length]; received a "
                f"ragged tensor of shape {ids.shape}."
            )
        ids = ids.to_tensor(default_value=tf.cast(PAD_ID, ids.dtype))
    else:
        ids = tf.convert_to_tensor(ids)
    if not ids.dtype.is_integer:
        raise ValueError(
            f"detokenize expects integer token ids, but received dtype {ids.dtype}."
        )
    if ids.shape.rank != 2:
        raise ValueError(
            "detokenize expects ids of shape [batch, length], but received "
            f"shape {ids.shape}."
        )
    return tf.cast(ids, tf.int32)


class Tokenizer(tf.Module):
    """Base class: vocabulary tables, id lookups, config and file I/O.

    Subclasses define how a string is cut into pieces (`_split`) and how
    pieces are glued back (`_join`); everything else is shared.

    Args:
        vocabulary: list of str. Every token, index = id. Must start with
            `SPECIAL_TOKENS` ("[PAD]", "[UNK]", "[BOS]", "[EOS]").
        name: str or None. Name of the `tf.Module`.
    """

    pad_id, unk_id, bos_id, eos_id = PAD_ID, UNK_ID, BOS_ID, EOS_ID

    def __init__(self, vocabulary, name=None):
        super().__init__(name=name)
        # A tuple keeps tf.Module from wrapping the list for checkpointing.
        self._vocabulary = tuple(_check_vocabulary(vocabulary))
        tokens = tf.constant(self._vocabulary, dtype=tf.string)
        ids = tf.range(len(self._vocabulary), dtype=tf.int32)
        self._token_to_id = tf.lookup.StaticHashTable(
            tf.lookup.KeyValueTensorInitializer(tokens, ids), default_value=UNK_ID
        )
        self._id_to_token = tf.lookup.StaticHashTable(
            tf.lookup.KeyValueTensorInitializer(ids, tokens),
            default_value=UNK_TOKEN,
        )

    @property
    def vocabulary(self):
        """The tokens as a list of str; the index of a token is its id."""
        return list(self._vocabulary)

    @property
    def vocabulary_size(self):
        return len(self._vocabulary)

    @classmethod
    def from_texts(cls, texts, max_vocabulary_size=None, min_frequency=1, **kwargs):
        """Builds a tokenizer whose vocabulary covers `texts`.

        Tokens are counted with the same graph ops `tokenize` uses, then
        sorted by decreasing frequency, ties broken by code-point order, so
        the vocabulary is deterministic.

        Args:
            texts: iterable of str. The corpus.
            max_vocabulary_size: int or None. Largest vocabulary, counting the
                four special tokens; the rarest tokens are dropped.
            min_frequency: int. Tokens seen fewer times are dropped.
            **kwargs: other constructor arguments (e.g. `lowercase`).
        """
        texts = _check_corpus(texts)
        check_positive_int("max_vocabulary_size", max_vocabulary_size, allow_none=True)
        if max_vocabulary_size is not None and max_vocabulary_size <= len(
            SPECIAL_TOKENS
        ):
            raise ValueError(
                "Received an invalid value for argument max_vocabulary_size, "
                f"expected more than the {len(SPECIAL_TOKENS)} special tokens. "
                f"Received: max_vocabulary_size={max_vocabulary_size}"
            )
        cls.check_training_options({"min_frequency": min_frequency, **kwargs})

        splitter = cls(vocabulary=list(SPECIAL_TOKENS), **kwargs)
        counts = collections.Counter()
        for start in range(0, len(texts), _COUNTING_CHUNK):
            pieces = splitter.split(texts[start : start + _COUNTING_CHUNK])
            counts.update(pieces.flat_values.numpy().tolist())
        ranked = sorted(
            (
                (-count, piece.decode("utf-8"))
                for piece, count in counts.items()
                if count >= min_frequency
            ),
        )
        tokens = [token for _, token in ranked if token not in SPECIAL_TOKENS]
        if not tokens:
            # A vocabulary of the special tokens alone maps every text to
            # [UNK] or nothing: a model trained on it learns nothing.
            raise ValueError(
                f"Received texts with no token for {cls.__name__}: "
                + (
                    f"none is seen min_frequency={min_frequency} times. Lower "
                    "min_frequency."
                    if counts
                    else f"all {len(texts)} texts are empty (or only spaces). "
                    "Pass texts with content."
                )
            )
        if max_vocabulary_size is not None:
            tokens = tokens[: max_vocabulary_size - len(SPECIAL_TOKENS)]
        return cls(vocabulary=list(SPECIAL_TOKENS) + tokens, **kwargs)

    @classmethod
    def check_training_options(cls, options):
        """Raises `ValueError` for an option `from_texts` does not take or a
        value it would refuse, before any training.

        Args:
            options: dict of `from_texts` arguments besides the texts and
                the vocabulary size (e.g. `min_frequency`, `lowercase`).
        """
        known = ["min_frequency"] + [
            name
            for name in inspect.signature(cls.__init__).parameters
            if name not in ("self", "vocabulary")
        ]
        check_known_names(f"{cls.__name__}.from_texts option", options, known)
        if "min_frequency" in options:
            check_positive_int("min_frequency", options["min_frequency"])
        if "lowercase" in options:
            check_bool("lowercase", options["lowercase"])

    def split(self, strings):
        """Cuts strings into token pieces.

        Args:
            strings: tf.string tensor of shape [batch] (or a list of str).

        Returns:
            A tf.string `tf.RaggedTensor` of shape [batch, None].
        """
        return self._split(_as_valid_utf8(strings))

    def tokenize(self, strings):
        """Maps strings to token ids; unknown pieces become `UNK_ID`.

        Args:
            strings: tf.string tensor of shape [batch] (or a list of str).

        Returns:
            An int32 `tf.RaggedTensor` of shape [batch, None], without
            [BOS]/[EOS] (the data pipeline adds those).
        """
        return tf.ragged.map_flat_values(self._token_to_id.lookup, self.split(strings))

    def detokenize(self, ids):
        """Maps token ids back to strings.

        Reading stops at the first [EOS]; [PAD] and [BOS] are dropped; ids
        at or past the vocabulary size read as "[UNK]" (a model's output
        layer may be larger than its tokenizer); a negative id raises
        `ValueError` (`InvalidArgumentError` inside a graph).

        Args:
            ids: integer tensor of shape [batch, length], dense or ragged.

        Returns:
            A tf.string tensor of shape [batch].
        """
        pieces = tf.ragged.map_flat_values(self._id_to_token.lookup, _ids_to_read(ids))
        return self._join(pieces)

    def _split(self, strings):
        raise NotImplementedError

    def _join(self, pieces):
        raise NotImplementedError

    def get_config(self):
        return {"vocabulary": self.vocabulary, "name": self.name}

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def save(self, path):
        """Writes the class name and config as UTF-8 JSON, atomically.

        The file is written next to `path` and moved into place
        (`keras_transformer._files`), so a crash never leaves a half-written
        vocabulary.
        """
        path = os.fspath(path)
        payload = serialize_tokenizer(self)
        _files.check_destination(path, "the tokenizer", "tokenizer.json")
        with _files.atomic_write(path, "w", "the tokenizer") as file:
            json.dump(payload, file, ensure_ascii=False, indent=1)

    @classmethod
    def load(cls, path):
        """Reads a file written by `save`.

        `Tokenizer.load` returns whichever tokenizer class was saved; a
        subclass's `load` refuses files of another class.
        """
        path = os.fspath(path)
        if not os.path.isfile(path):
            raise ValueError(f"No tokenizer file at {path!r}.")
        try:
            with open(path, encoding="utf-8") as file:
                payload = json.load(file)
            class_name = payload["class_name"]
        except (ValueError, KeyError, TypeError) as error:
            raise ValueError(
                f"{path!r} is not a tokenizer file written by Tokenizer.save: "
                f"{error}"
            ) from error
        tokenizer_cls = _TOKENIZER_CLASSES.get(class_name)
        if tokenizer_cls is not None and not issubclass(tokenizer_cls, cls):
            raise ValueError(
                f"{path!r} holds a {class_name}, which {cls.__name__}.load "
                f"cannot read. Use Tokenizer.load or {class_name}.load."
            )
        try:
            return deserialize_tokenizer(payload)
        except ValueError as error:
            raise ValueError(
                f"{path!r} is not a tokenizer file written by Tokenizer.save: "
                f"{error}"
            ) from error


class CharacterTokenizer(Tokenizer):
    """Splits text into Unicode characters (code points); exactly reversible.

    `detokenize(tokenize(s)) == s` for every valid UTF-8 string `s` whose
    characters are all in the vocabulary and which is not whitespace-only
    (whitespace-only strings tokenize to nothing, like in `WordTokenizer`).
    Whitespace, case and punctuation are kept as they are.

    Args:
        vocabulary: list of str. Special tokens first, then one character per
            entry (longer entries are allowed but never produced by `split`).
        name: str or None. Name of the `tf.Module`.

    Example:

    ```python
    tokenizer = CharacterTokenizer.from_texts(["March 5, 2021", "2021-03-05"])
    ids = tokenizer.tokenize(["May 5"])          # ragged int32 [1, 5]
    tokenizer.detokenize(ids)                    # [b"Ma[UNK] 5"]
    ```
    """

    def _split(self, strings):
        blank = tf.strings.regex_full_match(strings, _WHITESPACE + "*")
        strings = tf.where(blank, tf.constant("", tf.string), strings)
        return tf.strings.unicode_split(strings, "UTF-8")

    def _join(self, pieces):
        return tf.strings.reduce_join(pieces, axis=1, separator="")


class WordTokenizer(Tokenizer):
    """Splits text into words and single punctuation marks.

    A word is a maximal run of letters, digits, combining marks and
    underscores (Unicode-aware); every other non-space character (punctuation,
    symbols) is a token by itself. Any run of whitespace separates tokens.

    `detokenize` joins tokens with one space, then re-attaches punctuation:
    no space before `. , ; : ! ? % ) ] }`, none after `( [ { $`, none around
    `- / ' ’`, and `.` or `:` between two numbers closes up ("3.14",
    "10:30"). Hence `detokenize(tokenize(s)) == s` (lowercased when
    `lowercase=True`) when every token is in the vocabulary, words are
    separated by single spaces and punctuation follows those rules, e.g.
    "hello, world! it's 10:30 (roughly)." round-trips. Texts that space
    punctuation differently come back normalised: "a - b" -> "a-b",
    "say \"hi\"" -> "say \" hi \"", "1,000" -> "1, 000".

    Args:
        vocabulary: list of str. Special tokens first, then words and marks.
        lowercase: bool. Lowercase (Unicode-aware) before splitting.
        name: str or None. Name of the `tf.Module`.

    Example:

    ```python
    tokenizer = WordTokenizer.from_texts(["Hello, world!", "hello again."])
    ids = tokenizer.tokenize(["Hello world."])   # [[4, 9, 7]]
    tokenizer.detokenize(ids)                    # [b"hello world."]
    ```
    """

    def __init__(self, vocabulary, lowercase=True, name=None):
        self.lowercase = check_bool("lowercase", lowercase)
        super().__init__(vocabulary, name=name)

    def _split(self, strings):
        if self.lowercase:
            strings = tf.strings.lower(strings, encoding="utf-8")
        strings = tf.strings.regex_replace(strings, _PUNCTUATION, r" \1 ")
        strings = tf.strings.regex_replace(strings, _WHITESPACE + "+", " ")
        return tf.strings.split(strings)

    def _join(self, pieces):
        text = tf.strings.reduce_join(pieces, axis=1, separator=" ")
        for pattern, rewrite in _SPACING_RULES:
            text = tf.strings.regex_replace(text, pattern, rewrite)
        return text

    def get_config(self):
        return {**super().get_config(), "lowercase": self.lowercase}


_TOKENIZER_CLASSES = {
    tokenizer_cls.__name__: tokenizer_cls
    for tokenizer_cls in (CharacterTokenizer, WordTokenizer)
}


def serialize_tokenizer(tokenizer):
    """Describes a tokenizer as a JSON-serializable dict.

    The record holds the class name and `get_config()`, which carries the
    whole vocabulary (or model), so `deserialize_tokenizer` rebuilds a
    tokenizer that gives identical ids. `Tokenizer.save` writes this record;
    a model stores its tokenizers in its Keras config with it.

    Args:
        tokenizer: a `Tokenizer` of a class known to `deserialize_tokenizer`.

    Returns:
        `{"class_name": str, "config": dict}`.

    Example:

    ```python
    record = serialize_tokenizer(CharacterTokenizer.from_texts(["abc"]))
    json.dumps(record)                     # plain JSON
    revived = deserialize_tokenizer(record)
    ```
    """
    if not isinstance(tokenizer, Tokenizer):
        raise ValueError(
            "Received an invalid value for argument tokenizer, expected a "
            f"keras_transformer Tokenizer. Received: tokenizer={tokenizer!r}"
        )
    class_name = type(tokenizer).__name__
    if _TOKENIZER_CLASSES.get(class_name) is not type(tokenizer):
        raise ValueError(
            f"Cannot serialize a {class_name}: it is not one of the registered "
            f"tokenizer classes {sorted(_TOKENIZER_CLASSES)}."
        )
    return {"class_name": class_name, "config": tokenizer.get_config()}


def deserialize_tokenizer(record):
    """Rebuilds a tokenizer from a record of `serialize_tokenizer`.

    Args:
        record: dict with keys "class_name" (a registered tokenizer class)
            and "config" (a dict of its constructor arguments).

    Returns:
        A `Tokenizer` of the recorded class.
    """
    if not isinstance(record, dict):
        raise ValueError(
            "Received an invalid value for argument record, expected a dict "
            'with keys "class_name" and "config". Received: '
            f"record={record!r}"[:300]
        )
    missing = sorted({"class_name", "config"} - set(record))
    if missing:
        raise ValueError(
            f"The tokenizer record lacks the key(s) {missing}; expected a dict "
            'with keys "class_name" and "config". Received keys: '
            f"{sorted(record)}"
        )
    class_name, config = record["class_name"], record["config"]
    tokenizer_cls = _TOKENIZER_CLASSES.get(class_name)
    if tokenizer_cls is None:
        raise ValueError(
            f"Unknown tokenizer class_name {class_name!r}; expected one of "
            f"{sorted(_TOKENIZER_CLASSES)}."
        )
    if not isinstance(config, dict):
        raise ValueError(
            f"The {class_name} record's config must be a dict of constructor "
            f"arguments. Received: config={config!r}"[:300]
        )
    try:
        return tokenizer_cls.from_config(config)
    except TypeError as error:
        # An unexpected or missing constructor argument.
        raise ValueError(
            f"The {class_name} record's config is malformed: {error}"
        ) from error
