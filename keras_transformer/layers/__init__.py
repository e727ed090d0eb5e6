"""Public layers: `keras_transformer.layers.<Name>`."""

from keras_transformer.layers.lora import (
    LoRADense,
    enable_lora,
    load_lora_weights,
    merge_lora,
    save_lora_weights,
    unmerge_lora,
)
from keras_transformer.layers.dropout import Dropout
from keras_transformer.layers.feed_forward import FeedForward
from keras_transformer.layers.residual import (
    Residual,
    deepnorm_constants,
    deepnorm_initializer,
    make_normalization,
    needs_final_norm,
)
from keras_transformer.layers.position_encoding import SinusoidalPositionEncoding
from keras_transformer.layers.position_embedding import (
    PositionEmbedding,
    TokenAndPositionEmbedding,
)
from keras_transformer.layers.rotary_embedding import RotaryEmbedding
from keras_transformer.layers.relative_position_bias import (
    AlibiBias,
    RelativePositionBias,
)
from keras_transformer.layers.masks import (
    causal_mask,
    cross_attention_mask,
    decoder_self_attention_mask,
    encoder_self_attention_mask,
    padding_mask,
    segment_mask,
    segment_positions,
)
from keras_transformer.layers.attention import MultiHeadAttention
from keras_transformer.layers.encoder import TransformerEncoderBlock
from keras_transformer.layers.decoder import TransformerDecoderBlock
