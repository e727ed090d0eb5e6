"""The backbone, assembled from `keras_transformer.layers`.

`Transformer` maps token ids to logits (`encode` / `decode` / `decode_step`
serve training, cached decoding and export alike).

The `Translator`, which holds a `Transformer` as its `backbone` beside the
tokenizers and adds the training recipe, decoding, saving and export, lives
in `keras_transformer.translation` (the text task, a floor above this one).
`models.Translator` and `from keras_transformer.models import Translator`
still give it, imported on first use, and raise an ImportError saying what to
install when TensorFlow (which its tokenizers need) is missing. Until then a stand-in is registered under
the Translator's Keras name, so that `load_model` (and
`keras.saving.load_model`) of a Translator's `.keras` file imports the class
when it needs it (and `load_model` upgrades a file of the Translator's first
layout, see `Translator.upgrade_keras_file`).
"""

import importlib

import keras

from keras_transformer import _tensorflow
from keras_transformer.models.loading import load_model
from keras_transformer.models.transformer import (
    PaddingMask,
    Transformer,
    TransformerConfig,
    TransformerLayers,
    build_transformer,
    decode,
    decode_step,
    encode,
    initial_decoder_caches,
    make_transformer_layers,
)

_TRANSLATOR_MODULE = "keras_transformer.translation.translator"
# The name `keras.saving.register_keras_serializable` gives the Translator.
_TRANSLATOR_KERAS_NAME = "keras_transformer>Translator"


def _translator_class():
    try:
        module = importlib.import_module(_TRANSLATOR_MODULE)
    except ModuleNotFoundError as error:
        if not _tensorflow.is_missing_tensorflow(error):
            raise
        raise ImportError(
            "keras_transformer.models.Translator needs TensorFlow (its "
            "tokenizers and text pipeline run in TensorFlow graphs), which is "
            "not installed: pip install "
            f"'{_tensorflow.TENSORFLOW_REQUIREMENT}'. Transformer and the "
            "layers run on any Keras backend without it."
        ) from error
    return module.Translator


class _TranslatorOnFirstLoad:
    """Stands for the Translator in Keras' registry until it is imported.

    Keras looks classes up by their registered name; importing the real
    class registers it under that name, replacing this stand-in.
    """

    @classmethod
    def from_config(cls, config):
        return _translator_class().from_config(config)

    @classmethod
    def upgrade_keras_file(cls, config):
        # `load_model` asks before Keras imports the class (`loading`).
        return _translator_class().upgrade_keras_file(config)


keras.saving.get_custom_objects().setdefault(
    _TRANSLATOR_KERAS_NAME, _TranslatorOnFirstLoad
)


def __getattr__(name):
    if name == "Translator":
        return _translator_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | {"Translator"})
