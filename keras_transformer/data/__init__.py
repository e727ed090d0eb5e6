"""Tokenizers, input pipelines and the synthetic date task."""

from keras_transformer.data.pipeline import make_translation_dataset
from keras_transformer.data.pipeline import read_parallel_files
from keras_transformer.data.pipeline import read_tsv
from keras_transformer.data.pipeline import split_corpus  # noqa: F401
from keras_transformer.data.subword import SENTENCEPIECE_MODEL_TYPES
from keras_transformer.data.subword import SENTENCEPIECE_NORMALIZATIONS
from keras_transformer.data.subword import TOKENIZER_KINDS
from keras_transformer.data.subword import SentencePieceTokenizer
from keras_transformer.data.subword import train_tokenizers
from keras_transformer.data.synthetic import DATE_FORMATS
from keras_transformer.data.synthetic import date_task_splits
from keras_transformer.data.synthetic import format_date
from keras_transformer.data.synthetic import generate_date_pairs
from keras_transformer.data.tokenizers import BOS_ID
from keras_transformer.data.tokenizers import EOS_ID
from keras_transformer.data.tokenizers import PAD_ID
from keras_transformer.data.tokenizers import SPECIAL_TOKENS
from keras_transformer.data.tokenizers import UNK_ID
from keras_transformer.data.tokenizers import CharacterTokenizer
from keras_transformer.data.tokenizers import Tokenizer
from keras_transformer.data.tokenizers import WordTokenizer
from keras_transformer.data.tokenizers import deserialize_tokenizer
from keras_transformer.data.tokenizers import serialize_tokenizer
