"""Which tokenizers learn a translator's vocabularies, and their training.

`Translator.from_texts` and the recipes name a tokenizer kind (`TOKENIZERS`);
`check_tokenizer_arguments` refuses bad settings before any corpus is read,
`train_tokenizer` trains one kind on texts, and `longest` measures the
longest text in tokens, from which `from_texts` sets the model's length
limits (`LENGTH_MARGIN` more).
"""

import collections.abc

from keras_transformer import validation
from keras_transformer.data import tokenizers

# The tokenizer kinds `from_texts` trains, defined once, here (recipes and
# scripts/train.py take them from this tuple).
TOKENIZERS = ("character", "word", "sentencepiece")
# Without explicit limits, `from_texts` allows this much more than the
# longest training text, so slightly longer inputs still translate.
LENGTH_MARGIN = 1.5
# A SentencePiece size to suggest: recipes.CORPUS's, for 10k-1M pairs.
SUGGESTED_SENTENCEPIECE_SIZE = 4000


def _tokenizer_class(name):
    if name == "sentencepiece":
        from keras_transformer.data.subword import SentencePieceTokenizer

        return SentencePieceTokenizer
    return {"character": tokenizers.CharacterTokenizer, "word": tokenizers.WordTokenizer}[
        name
    ]


def check_tokenizer_arguments(tokenizer, vocabulary_size, options):
    """Raises `ValueError` for tokenizer settings `from_texts` would refuse
    only after reading the corpus, or not at all.

    Args:
        tokenizer: str, one of `TOKENIZERS`.
        vocabulary_size: int or None.
        options: mapping of further arguments of the tokenizer's
            `from_texts` (e.g. `model_type`, `min_frequency`).
    """
    validation.check_choice("tokenizer", tokenizer, TOKENIZERS)
    validation.check_positive_int("vocabulary_size", vocabulary_size, allow_none=True)
    if tokenizer == "sentencepiece" and vocabulary_size is None:
        raise ValueError(
            "Received vocabulary_size=None with tokenizer='sentencepiece': a "
            "SentencePiece model has a fixed number of pieces, so it needs "
            f"one. Pass vocabulary_size={SUGGESTED_SENTENCEPIECE_SIZE} (the "
            "corpus recipe's, for 10k-1M sentence pairs; SentencePiece says "
            "the largest size a smaller corpus allows), or use "
            "tokenizer='word' or 'character', whose size may be None."
        )
    if vocabulary_size is not None and vocabulary_size <= len(tokenizers.SPECIAL_TOKENS):
        raise ValueError(
            "Received an invalid value for argument vocabulary_size, expected "
            f"more than the {len(tokenizers.SPECIAL_TOKENS)} special tokens. "
            f"Received: vocabulary_size={vocabulary_size}"
        )
    if not isinstance(options, collections.abc.Mapping):
        raise ValueError(
            "Received an invalid value for argument tokenizer_options, "
            f"expected a dict. Received: tokenizer_options={options!r}"
        )
    for name in ("vocabulary_size", "max_vocabulary_size"):
        if name in options:
            raise ValueError(
                f"Received tokenizer_options with {name}={options[name]!r}: the "
                "vocabulary size is an argument of its own. Pass "
                "vocabulary_size= instead."
            )
    _tokenizer_class(tokenizer).check_training_options(dict(options))


def train_tokenizer(name, texts, vocabulary_size, options):
    tokenizer_class = _tokenizer_class(name)
    if name == "sentencepiece":
        return tokenizer_class.from_texts(
            texts, vocabulary_size=vocabulary_size, **options
        )
    return tokenizer_class.from_texts(
        texts, max_vocabulary_size=vocabulary_size, **options
    )


def longest(tokenizer, texts):
    lengths = tokenizer.tokenize(texts).row_lengths().numpy()
    return max(1, int(lengths.max()))
