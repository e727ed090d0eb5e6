"""Models assembled from `keras_transformer.layers`."""

from keras_transformer.models.transformer import (
    PaddingMask,
    TransformerConfig,
    TransformerLayers,
    build_transformer,
    decode,
    decode_step,
    encode,
    initial_decoder_caches,
)
