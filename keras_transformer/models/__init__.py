"""Models assembled from `keras_transformer.layers`.

`Transformer` maps token ids to logits; `Translator` adds the tokenizers, the
training recipe, decoding, saving and export. `Translator` needs TensorFlow
(its tokenizers run in the graph): it is imported here when TensorFlow is
installed, so that `keras.saving.load_model` finds the class after
`import keras_transformer`, and raises an ImportError on use otherwise.
"""

import importlib.util

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


if importlib.util.find_spec("tensorflow") is not None:
    from keras_transformer.models.translator import Translator
else:

    def __getattr__(name):
        if name == "Translator":
            raise ImportError(
                "keras_transformer.models.Translator needs TensorFlow (its "
                "tokenizers and text pipeline run in TensorFlow graphs), which "
                "is not installed: pip install 'tensorflow>=2.21,<2.22'"
            )
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
