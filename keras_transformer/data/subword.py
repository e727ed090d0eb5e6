"""Subword tokenizers trained on a corpus and run inside TensorFlow graphs.

`SentencePieceTokenizer` learns a unigram or BPE model with the
`sentencepiece` package and tokenizes with `tensorflow_text`'s
`SentencepieceTokenizer` op, whose model lives in a resource that SavedModel
saves: an export tokenizes in any process that imports `tensorflow` and
`tensorflow_text` (and in stock TensorFlow Serving, which links the TF Text
ops). It keeps case, splits words it never saw into known pieces, and shares
the special ids of every tokenizer of the library ([PAD]=0, [UNK]=1,
[BOS]=2, [EOS]=3), so the data pipeline, decoding and export take it as they
take `CharacterTokenizer` and `WordTokenizer`.

`train_tokenizers` builds the source and target tokenizers of a corpus of any
kind, one shared (joint) tokenizer or two.
"""

import base64
import binascii
import inspect
import io


from keras_transformer._tensorflow import import_tensorflow
from keras_transformer.data import tokenizers
from keras_transformer.validation import (
    check_bool,
    check_choice,
    check_known_names,
    check_positive_int,
)

tf = import_tensorflow(__name__)

SENTENCEPIECE_MODEL_TYPES = ("unigram", "bpe")
# SentencePiece's built-in normalisation rules that keep case.
SENTENCEPIECE_NORMALIZATIONS = ("nmt_nfkc", "nfkc", "identity")
TOKENIZER_KINDS = ("character", "word") + SENTENCEPIECE_MODEL_TYPES
# SentencePiece skips training sentences longer than this many bytes (its
# default); `from_texts` raises the limit to the longest text instead.
_SENTENCEPIECE_MAX_SENTENCE_BYTES = 4192


def _import_tensorflow_text():
    # Imported on first use: the character and word tokenizers, and
    # `import keras_transformer`, do not load the TF Text op libraries.
    import tensorflow_text

    return tensorflow_text


def _model_bytes(model):
    """Returns the serialized proto from bytes or its base64 text (configs)."""
    if isinstance(model, str):
        try:
            return base64.b64decode(model.encode("ascii"), validate=True)
        except (UnicodeEncodeError, binascii.Error) as error:
            raise ValueError(
                "Received an invalid value for argument model, expected the "
                "serialized SentencePiece model as bytes or as base64 text. "
                f"Received a str that is not base64: {model[:40]!r}... ({error})"
            ) from error
    if isinstance(model, (bytes, bytearray)) and model:
        return bytes(model)
    raise ValueError(
        "Received an invalid value for argument model, expected the serialized "
        "SentencePiece model (a non-empty bytes object, or its base64 text). "
        f"Received: model={model!r}"[:300]
    )


class SentencePieceTokenizer(tokenizers.Tokenizer):
    """A SentencePiece (unigram or BPE) model that tokenizes in the graph.

    Build one with `from_texts`, which trains the model on a corpus (the
    pieces [PAD], [UNK], [BOS], [EOS] take ids 0-3), or from a serialized
    model trained elsewhere with those four pieces at ids 0-3. `tokenize`
    and `detokenize` run the `tensorflow_text.SentencepieceTokenizer` ops,
    eagerly, inside `tf.function(autograph=False)` and in a SavedModel
    (`keras.export.ExportArchive().track(tokenizer)` saves the model proto
    with it). `get_config()` holds the model as base64 text, so
    `serialize_tokenizer`, `Tokenizer.save` and a `.keras` file carry it.

    What `detokenize(tokenize(text))` returns: `text` with SentencePiece's
    normalisation applied. With the default `"nmt_nfkc"` rule that is
    Unicode NFKC (e.g. "ﬁ" -> "fi", full-width "ｘ" -> "x", "½" -> "1⁄2",
    "e" + combining acute -> "é"), control characters (U+0000-U+001F except
    tab and newline, U+007F) deleted, tabs, newlines and other Unicode spaces
    (no-break U+00A0, zero-width U+200B, ...) turned into a space, leading and
    trailing spaces removed and runs of spaces collapsed into one. Case,
    accents, punctuation and non-Latin scripts come back unchanged. The
    character U+2581 ("▁"), SentencePiece's own word-boundary mark, comes
    back as a space. Characters the model lacks (too rare in training, see
    `character_coverage`) read back as "[UNK]" unless `byte_fallback=True`.
    Bytes that are not UTF-8 are replaced by U+FFFD first, as in the other
    tokenizers, and "nmt_nfkc" deletes U+FFFD: they vanish. Empty and
    whitespace-only texts give no ids.

    Args:
        model: bytes, the serialized SentencePiece `ModelProto`, or that
            proto as base64 text (the form `get_config` stores).
        name: str or None. Name of the `tf.Module`.

    Example:

    ```python
    tokenizer = SentencePieceTokenizer.from_texts(
        english + german, vocabulary_size=8000
    )
    ids = tokenizer.tokenize(["Zwei Männer laufen."])   # ragged int32 [1, None]
    tokenizer.detokenize(ids)                           # [b"Zwei Männer laufen."]
    ```
    """

    def __init__(self, model, name=None):
        self._model = _model_bytes(model)
        tensorflow_text = _import_tensorflow_text()
        # Built before `super().__init__`, which reads the vocabulary off
        # the model; `tf.Module` tracks it once the module is initialised.
        try:
            sentencepiece = tensorflow_text.SentencepieceTokenizer(
                model=self._model, out_type=tf.int32
            )
            size = int(sentencepiece.vocab_size())
            pieces = sentencepiece.id_to_string(tf.range(size)).numpy()
        except tf.errors.OpError as error:
            raise ValueError(
                "Received an invalid value for argument model, expected a "
                "serialized SentencePiece model; TF Text cannot read it: "
                f"{error.message.strip()[:300]}"
            ) from error
        super().__init__([piece.decode("utf-8") for piece in pieces], name=name)
        self._sentencepiece = sentencepiece

    @property
    def model(self):
        """The serialized SentencePiece `ModelProto` (bytes)."""
        return self._model

    @classmethod
    def from_texts(
        cls,
        texts,
        vocabulary_size=8000,
        model_type="unigram",
        character_coverage=1.0,
        byte_fallback=False,
        normalization="nmt_nfkc",
        name=None,
    ):
        """Trains a SentencePiece model on `texts`, in memory.

        Training is deterministic: the same texts in the same order give the
        same model (one training thread; SentencePiece's results depend on
        the thread count). No text is skipped: SentencePiece's limit on
        sentence length is raised to the longest text.

        Args:
            texts: iterable of str. The corpus; for a joint vocabulary, the
                sources and the targets together.
            vocabulary_size: int. Pieces in the model, the four special ones
                included. Must be reachable: SentencePiece refuses a size the
                corpus cannot fill, and the error says the largest possible.
            model_type: "unigram" (Kudo, 2018) or "bpe" (Sennrich et al.,
                2016).
            character_coverage: float in (0, 1]. Share of the corpus's
                characters that the model must cover; the rarest characters
                beyond it become [UNK] (or bytes with `byte_fallback`). 1.0
                suits alphabetic scripts; SentencePiece suggests 0.9995 for
                Chinese or Japanese.
            byte_fallback: bool. Add the 256 byte pieces and spell characters
                outside the model as UTF-8 bytes instead of [UNK], so no
                input ever maps to [UNK].
            normalization: one of `SENTENCEPIECE_NORMALIZATIONS`. "nmt_nfkc"
                (the default; see the class docstring), "nfkc" (NFKC only,
                no control-character or space mapping), or "identity" (none).
                All three keep case.
            name: str or None. Name of the `tf.Module`.

        Returns:
            A `SentencePieceTokenizer`.
        """
        texts = tokenizers._check_corpus(texts)
        check_positive_int("vocabulary_size", vocabulary_size)
        if vocabulary_size <= len(tokenizers.SPECIAL_TOKENS):
            raise ValueError(
                "Received an invalid value for argument vocabulary_size, "
                f"expected more than the {len(tokenizers.SPECIAL_TOKENS)} "
                f"special pieces. Received: vocabulary_size={vocabulary_size}"
            )
        cls.check_training_options(
            dict(
                model_type=model_type,
                character_coverage=character_coverage,
                byte_fallback=byte_fallback,
                normalization=normalization,
            )
        )

        import sentencepiece

        longest = max(len(text.encode("utf-8")) for text in texts)
        model = io.BytesIO()
        try:
            sentencepiece.SentencePieceTrainer.train(
                sentence_iterator=iter(texts),
                model_writer=model,
                vocab_size=vocabulary_size,
                model_type=model_type,
                character_coverage=float(character_coverage),
                byte_fallback=bool(byte_fallback),
                normalization_rule_name=normalization,
                max_sentence_length=max(_SENTENCEPIECE_MAX_SENTENCE_BYTES, longest),
                num_threads=1,
                pad_id=tokenizers.PAD_ID,
                unk_id=tokenizers.UNK_ID,
                bos_id=tokenizers.BOS_ID,
                eos_id=tokenizers.EOS_ID,
                pad_piece=tokenizers.PAD_TOKEN,
                unk_piece=tokenizers.UNK_TOKEN,
                bos_piece=tokenizers.BOS_TOKEN,
                eos_piece=tokenizers.EOS_TOKEN,
                # What an unknown piece reads back as, as in the other
                # tokenizers (SentencePiece's default is " ⁇ ").
                unk_surface=tokenizers.UNK_TOKEN,
                minloglevel=2,
            )
        except RuntimeError as error:
            message = str(error)
            argument = (
                "vocabulary_size" if "Vocabulary size" in message else "texts"
            )
            raise ValueError(
                f"Received an invalid value for argument {argument}: "
                f"SentencePiece could not train on it. {message.strip()} "
                f"Received: vocabulary_size={vocabulary_size}, "
                f"{len(texts)} texts"
            ) from error
        return cls(model.getvalue(), name=name)

    @classmethod
    def check_training_options(cls, options):
        """Raises `ValueError` for an option `from_texts` does not take or a
        value it would refuse, before any training.

        Args:
            options: dict of `from_texts` arguments besides the texts and
                `vocabulary_size` (`model_type`, `character_coverage`,
                `byte_fallback`, `normalization`, `name`).
        """
        known = [
            name
            for name in inspect.signature(cls.from_texts).parameters
            if name not in ("texts", "vocabulary_size")
        ]
        check_known_names(f"{cls.__name__}.from_texts option", options, known)
        if "model_type" in options:
            check_choice("model_type", options["model_type"], SENTENCEPIECE_MODEL_TYPES)
        coverage = options.get("character_coverage", 1.0)
        if (
            isinstance(coverage, bool)
            or not isinstance(coverage, (int, float))
            or not 0.0 < coverage <= 1.0
        ):
            raise ValueError(
                "Received an invalid value for argument character_coverage, "
                "expected a number in (0, 1]. Received: "
                f"character_coverage={coverage!r}"
            )
        if "byte_fallback" in options:
            check_bool("byte_fallback", options["byte_fallback"])
        if "normalization" in options:
            check_choice(
                "normalization", options["normalization"], SENTENCEPIECE_NORMALIZATIONS
            )

    def split(self, strings):
        """Cuts strings into SentencePiece pieces ("▁" marks a word start).

        Args:
            strings: tf.string tensor of shape [batch] (or a list of str).

        Returns:
            A tf.string `tf.RaggedTensor` of shape [batch, None].
        """
        return tf.ragged.map_flat_values(
            self._id_to_token.lookup, self.tokenize(strings)
        )

    def tokenize(self, strings):
        """Maps strings to piece ids.

        Args:
            strings: tf.string tensor of shape [batch] (or a list of str).

        Returns:
            An int32 `tf.RaggedTensor` of shape [batch, None], without
            [BOS]/[EOS] (the data pipeline adds those).
        """
        return self._processor().tokenize(tokenizers._as_valid_utf8(strings))

    def detokenize(self, ids):
        """Maps piece ids back to text (see the class docstring).

        Reading stops at the first [EOS]; [PAD] and [BOS] are dropped; ids
        at or past the vocabulary size read as "[UNK]"; a negative id raises
        `ValueError` (`InvalidArgumentError` inside a graph).

        Args:
            ids: integer tensor of shape [batch, length], dense or ragged.

        Returns:
            A tf.string tensor of shape [batch].
        """
        ids = tokenizers._ids_to_read(ids)
        known = (ids.flat_values >= 0) & (ids.flat_values < self.vocabulary_size)
        ids = ids.with_flat_values(
            tf.where(known, ids.flat_values, tokenizers.UNK_ID)
        )
        return self._processor().detokenize(ids)

    def _processor(self):
        """The TF Text tokenizer, its model resource alive.

        TF Text's SentencePiece resource is owned by the kernel that made
        it, so `keras.backend.clear_session()`, which clears TensorFlow's
        kernel cache, destroys it. Checked eagerly (once per call, or once
        per trace inside a `tf.function`) and re-created from the proto.
        """
        with tf.init_scope():
            try:
                self._sentencepiece.vocab_size()
            except tf.errors.NotFoundError:
                self._sentencepiece = _import_tensorflow_text().SentencepieceTokenizer(
                    model=self._model, out_type=tf.int32
                )
        return self._sentencepiece

    def get_config(self):
        return {
            "model": base64.b64encode(self._model).decode("ascii"),
            "name": self.name,
        }


tokenizers._TOKENIZER_CLASSES[SentencePieceTokenizer.__name__] = (
    SentencePieceTokenizer
)


def train_tokenizers(
    source_texts, target_texts, kind, vocabulary_size=None, joint=False, **options
):
    """Builds the source and target tokenizers of a parallel corpus.

    Args:
        source_texts: list of str.
        target_texts: list of str.
        kind: one of `TOKENIZER_KINDS`: "character" or "word"
            (`CharacterTokenizer` / `WordTokenizer`), "unigram" or "bpe"
            (`SentencePieceTokenizer`).
        vocabulary_size: int or None. Tokens per vocabulary, the four special
            ones included: the SentencePiece model size (required for
            "unigram" and "bpe"), the cap `max_vocabulary_size` of a
            character or word vocabulary (None: no cap).
        joint: bool. Train one tokenizer on the sources and targets together
            and return it for both sides (for `share_embeddings=True`).
        **options: further arguments of the tokenizer's `from_texts` (e.g.
            `character_coverage=`, `lowercase=`, `min_frequency=`).

    Returns:
        `(source_tokenizer, target_tokenizer)`; the same object twice when
        `joint`.

    Example:

    ```python
    source_tokenizer, target_tokenizer = train_tokenizers(
        english, german, kind="unigram", vocabulary_size=8000, joint=True
    )
    assert source_tokenizer is target_tokenizer
    ```
    """
    check_choice("kind", kind, TOKENIZER_KINDS)
    joint = check_bool("joint", joint)
    for argument, texts in (
        ("source_texts", source_texts),
        ("target_texts", target_texts),
    ):
        if isinstance(texts, (str, bytes)):
            raise ValueError(
                f"Received an invalid value for argument {argument}, expected "
                f"a list of strings, not a single string. Received: "
                f"{argument}={texts!r}"
            )
    if kind in SENTENCEPIECE_MODEL_TYPES:
        if vocabulary_size is None:
            raise ValueError(
                "Received an invalid value for argument vocabulary_size, "
                f"expected a positive integer for kind={kind!r} (the "
                "SentencePiece model size). Received: vocabulary_size=None"
            )

        def train(texts):
            return SentencePieceTokenizer.from_texts(
                texts, vocabulary_size=vocabulary_size, model_type=kind, **options
            )

    else:
        tokenizer_cls = {
            "character": tokenizers.CharacterTokenizer,
            "word": tokenizers.WordTokenizer,
        }[kind]

        def train(texts):
            return tokenizer_cls.from_texts(
                texts, max_vocabulary_size=vocabulary_size, **options
            )

    if joint:
        tokenizer = train(list(source_texts) + list(target_texts))
        return tokenizer, tokenizer
    return train(source_texts), train(target_texts)
