"""The encoder-decoder Transformer: token ids in, next-token logits out.

Read top to bottom: `TransformerConfig` says what the model is,
`build_transformer` makes its layers and wires them as
tokens -> embeddings -> encoder -> decoder -> logits. `encode` and `decode`
are that wiring (with segment ids, of packed rows: `packed_logits`); the
functional model runs them, and `StepModel` hands the
samplers of `keras_transformer.decoding` the same `encode` and its cached
`decode_step`, so training and decoding can never disagree about the
architecture.
"""

import dataclasses
import functools
import inspect
import json
from typing import Optional

import keras

from keras_transformer import layers
from keras_transformer import validation
from keras_transformer.layers import _token_ids
from keras_transformer.layers.dropout import Dropout
from keras_transformer.layers.feed_forward import GATED_ACTIVATIONS
from keras_transformer.layers.residual import NORM_PLACEMENTS, NORM_TYPES
from keras_transformer.models import loading, trainer

POSITION_ENCODINGS = ("sinusoidal", "learned", "rotary", "alibi", "relative")


def _check_activation(activation):
    """A config stores the activation by name, so it must be a known name."""
    if isinstance(activation, str) and activation in GATED_ACTIVATIONS:
        return
    try:
        valid = isinstance(activation, str) and keras.activations.get(activation)
    except (ValueError, TypeError):
        valid = False
    if not valid:
        raise ValueError(
            "Received an invalid value for argument activation, expected "
            "'geglu', 'swiglu' or the name of a Keras activation (such as "
            f"'relu', 'gelu', 'silu'). Received: activation={activation!r}"
        )


@dataclasses.dataclass(frozen=True)
class TransformerConfig:
    """Everything that defines an encoder-decoder Transformer.

    Args:
        source_vocabulary_size: int. Source token ids are in
            `[0, source_vocabulary_size)`; 0 is padding.
        target_vocabulary_size: int. Target token ids, likewise.
        num_encoder_layers: int. Encoder depth.
        num_decoder_layers: int. Decoder depth.
        hidden_dim: int. Model width (d_model).
        num_heads: int. Attention heads.
        num_key_value_heads: int. Key/value heads (grouped-query attention);
            defaults to `num_heads`.
        intermediate_dim: int. Feed-forward hidden size.
        activation: str. Feed-forward activation (a Keras name, `"geglu"` or
            `"swiglu"`).
        dropout: float. Residual and embedding dropout.
        attention_dropout: float. Defaults to `dropout`.
        feed_forward_dropout: float. Defaults to `dropout`.
        norm_placement: str. `"post"`, `"pre"`, `"sandwich"`, `"deepnorm"` or
            `"rezero"`. Unlike the ReZero paper (Bachlechner et al., 2020)
            and its authors' code, which give each layer one scalar,
            `"rezero"` here gives each residual sublayer its own (two per
            encoder block, three per decoder block), each starting at 0.
        norm_type: str. `"layer_norm"` or `"rms_norm"`.
        layer_norm_epsilon: float. Epsilon of every normalisation.
        position_encoding: str. `"sinusoidal"`, `"learned"` (added to the
            embeddings), `"rotary"`, `"alibi"` or `"relative"` (inside
            self-attention).
        max_source_length: int. Longest source the model accepts.
        max_target_length: int. Longest target (including BOS) the model
            accepts and decodes.
        share_embeddings: bool. One embedding layer for source and target
            (needs equal vocabulary sizes). With `position_encoding="learned"`
            it also shares the learned position table, sized for the longer
            of `max_source_length` and `max_target_length` (the papers that
            share embeddings use fixed sinusoidal positions, so they share
            the token table only).
        tie_output_projection: bool. Logits from the target embedding matrix.
        padding_id: int. The padding token id.
        remat: bool. Recompute every block's activations in the backward pass
            (gradient checkpointing): less memory, more compute per step.
    """

    source_vocabulary_size: int
    target_vocabulary_size: int
    num_encoder_layers: int = 2
    num_decoder_layers: int = 2
    hidden_dim: int = 128
    num_heads: int = 4
    num_key_value_heads: Optional[int] = None
    intermediate_dim: int = 512
    activation: str = "relu"
    dropout: float = 0.1
    attention_dropout: Optional[float] = None
    feed_forward_dropout: Optional[float] = None
    norm_placement: str = "pre"
    norm_type: str = "layer_norm"
    layer_norm_epsilon: float = 1e-5
    position_encoding: str = "sinusoidal"
    max_source_length: int = 128
    max_target_length: int = 128
    share_embeddings: bool = False
    tie_output_projection: bool = True
    padding_id: int = 0
    remat: bool = False

    def __post_init__(self):
        # Every field is checked here, at construction, so a bad value is
        # reported under its own name rather than deep in `build_transformer`
        # (or under a Keras argument name such as `rate`).
        for name in (
            "source_vocabulary_size",
            "target_vocabulary_size",
            "num_encoder_layers",
            "num_decoder_layers",
            "hidden_dim",
            "num_heads",
            "intermediate_dim",
            "max_source_length",
            "max_target_length",
        ):
            self._set(name, validation.check_positive_int(name, getattr(self, name)))
        self._set(
            "num_key_value_heads",
            validation.check_positive_int(
                "num_key_value_heads", self.num_key_value_heads, allow_none=True
            ),
        )
        self._set("padding_id", validation.check_non_negative_int("padding_id", self.padding_id))
        self._set("dropout", validation.check_rate("dropout", self.dropout))
        for name in ("attention_dropout", "feed_forward_dropout"):
            self._set(
                name, validation.check_rate(name, getattr(self, name), allow_none=True)
            )
        self._set(
            "layer_norm_epsilon",
            validation.check_positive_float("layer_norm_epsilon", self.layer_norm_epsilon),
        )
        validation.check_choice(
            "position_encoding", self.position_encoding, POSITION_ENCODINGS
        )
        validation.check_choice("norm_placement", self.norm_placement, NORM_PLACEMENTS)
        validation.check_choice("norm_type", self.norm_type, NORM_TYPES)
        _check_activation(self.activation)
        for name in ("share_embeddings", "tie_output_projection", "remat"):
            self._set(name, validation.check_bool(name, getattr(self, name)))
        self._check_heads()
        if (
            self.share_embeddings
            and self.source_vocabulary_size != self.target_vocabulary_size
        ):
            raise ValueError(
                "Received share_embeddings=True with different vocabulary "
                f"sizes. Received: source_vocabulary_size="
                f"{self.source_vocabulary_size}, target_vocabulary_size="
                f"{self.target_vocabulary_size}. Use one joint vocabulary or "
                "set share_embeddings=False."
            )
        if self.padding_id >= min(
            self.source_vocabulary_size, self.target_vocabulary_size
        ):
            raise ValueError(
                "Received an invalid value for argument padding_id, expected "
                "an id inside both vocabularies. Received: "
                f"padding_id={self.padding_id}"
            )

    def _set(self, name, value):
        # Frozen dataclass: store the normalised value (a NumPy int becomes a
        # Python int) so `to_json` and equality see plain Python values.
        object.__setattr__(self, name, value)

    def _check_heads(self):
        validation.check_divisible("hidden_dim", self.hidden_dim, "num_heads", self.num_heads)
        if self.num_key_value_heads is not None:
            validation.check_divisible(
                "num_heads",
                self.num_heads,
                "num_key_value_heads",
                self.num_key_value_heads,
            )
        head_dim = self.hidden_dim // self.num_heads
        if self.position_encoding == "rotary" and head_dim % 2:
            raise ValueError(
                "Received an invalid value for argument hidden_dim, expected "
                "hidden_dim / num_heads to be even with "
                "position_encoding='rotary' (rotary embeddings rotate pairs of "
                f"features). Received: hidden_dim={self.hidden_dim}, "
                f"num_heads={self.num_heads} (head size {head_dim})"
            )

    def to_dict(self):
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, config):
        required = [
            field.name
            for field in dataclasses.fields(cls)
            if field.default is dataclasses.MISSING
        ]
        validation.check_required_keys("config", config, required)
        return cls(**config)

    def to_json(self):
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)


def _checked_arguments(dataclass_init):
    """Wraps the generated `__init__` so that a misspelt or missing field is
    a `ValueError` naming the fields (Python's own is a `TypeError` that
    does not say which fields exist)."""
    signature = inspect.signature(dataclass_init)
    fields = [name for name in signature.parameters if name != "self"]

    @functools.wraps(dataclass_init)
    def __init__(self, *args, **kwargs):
        validation.check_known_names("TransformerConfig field", kwargs, fields)
        try:
            signature.bind(self, *args, **kwargs)
        except TypeError as error:
            required = [
                name
                for name, parameter in signature.parameters.items()
                if name != "self" and parameter.default is inspect.Parameter.empty
            ]
            raise ValueError(
                f"Received invalid TransformerConfig arguments: {error}. "
                f"Expected the required fields {required} (by keyword) and "
                "optional fields by keyword."
            ) from None
        dataclass_init(self, *args, **kwargs)

    return __init__


TransformerConfig.__init__ = _checked_arguments(TransformerConfig.__init__)


@dataclasses.dataclass(frozen=True)
class TransformerLayers:
    """The layers of an encoder-decoder, wired by `encode` / `decode`.

    `Transformer` makes one from a `TransformerConfig`; a model composed by
    hand from this library's blocks fills one in directly and passes it to
    `Transformer(transformer_layers=...)` (or `Translator`), and then trains,
    decodes, saves and exports like a built one. The source and target
    embeddings may be one shared layer.

    Args:
        source_embedding: `layers.TokenAndPositionEmbedding` of the source.
        target_embedding: likewise for the target; its `sequence_length` is
            the longest target the model decodes.
        embedding_dropout: dropout applied to both embeddings' outputs.
        encoder_blocks: tuple of `layers.TransformerEncoderBlock`.
        encoder_norm: final encoder normalisation, or None.
        decoder_blocks: tuple of `layers.TransformerDecoderBlock`.
        decoder_norm: final decoder normalisation, or None.
        output_projection: a Dense-like layer to the target vocabulary, or
            None to use the target embedding's matrix (tied).
        padding_mask: `PaddingMask`; its `padding_id` is the model's.
        logits: the final (float32) activation layer.
    """

    source_embedding: keras.layers.Layer
    target_embedding: keras.layers.Layer
    embedding_dropout: keras.layers.Layer
    encoder_blocks: tuple
    encoder_norm: Optional[keras.layers.Layer]
    decoder_blocks: tuple
    decoder_norm: Optional[keras.layers.Layer]
    output_projection: Optional[keras.layers.Layer]
    padding_mask: keras.layers.Layer
    logits: keras.layers.Layer

    def __post_init__(self):
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if field.name.endswith("_blocks"):
                if not isinstance(value, (list, tuple)) or not value:
                    raise ValueError(
                        f"Received an invalid value for argument {field.name}, "
                        "expected a non-empty tuple of blocks. Received: "
                        f"{field.name}={value!r}"
                    )
                object.__setattr__(self, field.name, tuple(value))
                continue
            optional = field.name in ("encoder_norm", "decoder_norm", "output_projection")
            if value is None and optional:
                continue
            if not isinstance(value, keras.layers.Layer):
                raise ValueError(
                    f"Received an invalid value for argument {field.name}, "
                    f"expected a Keras layer. Received: {field.name}={value!r}"
                )

    @property
    def max_source_length(self):
        return self.source_embedding.sequence_length

    @property
    def max_target_length(self):
        return self.target_embedding.sequence_length

    @property
    def target_vocabulary_size(self):
        return self.target_embedding.vocabulary_size

    @property
    def source_vocabulary_size(self):
        return self.source_embedding.vocabulary_size

    @property
    def padding_id(self):
        return self.padding_mask.padding_id

    def step_model(self):
        """These layers as the samplers of `keras_transformer.decoding` see
        them (`StepModel`)."""
        return StepModel(self)

    def serialize(self):
        """Each layer's Keras config; a shared embedding is stored once."""
        record = {}
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if field.name == "target_embedding" and value is self.source_embedding:
                record[field.name] = "shared"
            elif isinstance(value, tuple):
                record[field.name] = [
                    keras.saving.serialize_keras_object(layer) for layer in value
                ]
            else:
                record[field.name] = keras.saving.serialize_keras_object(value)
        return record

    @classmethod
    def deserialize(cls, record):
        """Inverse of `serialize`."""
        known = [field.name for field in dataclasses.fields(cls)]
        if not isinstance(record, dict) or sorted(record) != sorted(known):
            raise ValueError(
                "Received an invalid value for argument transformer_layers, "
                f"expected a dict with the keys {known}. Received: "
                f"transformer_layers={record!r}"
            )
        values = {}
        for name in known:
            value = record[name]
            if name == "target_embedding" and value == "shared":
                values[name] = values["source_embedding"]
            elif isinstance(value, list):
                values[name] = tuple(
                    keras.saving.deserialize_keras_object(item) for item in value
                )
            else:
                values[name] = keras.saving.deserialize_keras_object(value)
        return cls(**values)


@keras.saving.register_keras_serializable(package="keras_transformer")
class PaddingMask(keras.layers.Layer):
    """`token_ids != padding_id`, as a layer so the model summary shows it.

    Masks are derived from the ids inside the model rather than carried as
    Keras implicit masks, which do not survive SavedModel export.
    """

    def __init__(self, padding_id=0, **kwargs):
        super().__init__(**kwargs)
        self.padding_id = validation.check_non_negative_int("padding_id", padding_id)

    def call(self, token_ids):
        return layers.padding_mask(token_ids, padding_id=self.padding_id)

    def get_config(self):
        return {**super().get_config(), "padding_id": self.padding_id}


# The extra inputs of packed rows (several pairs to a row, see
# `keras_transformer.data.packing`): 1, 2, ... numbers the pairs of a row,
# 0 marks padding; a pair's source and target share their number.
PACKED_INPUTS = ("source_segment_ids", "target_segment_ids")


def _embed(embedding, token_ids, positions):
    # Hand-composed layers need not take `positions` unless rows are packed.
    if positions is None:
        return embedding(token_ids)
    return embedding(token_ids, positions=positions)


def check_packable(transformer_layers):
    """Raises unless packed rows give every pair what it sees alone.

    Packing restarts the positions of each pair through the embeddings'
    position tables; positions inside attention (rotary, ALiBi, relative
    biases) would count from the start of the row instead.
    """
    inside_attention = any(
        block.use_rotary or block.position_bias
        for block in transformer_layers.encoder_blocks
        + transformer_layers.decoder_blocks
    )
    embeddings = (transformer_layers.source_embedding, transformer_layers.target_embedding)
    if inside_attention or any(
        getattr(embedding, "position_embedding", None) is None for embedding in embeddings
    ):
        raise ValueError(
            "Packed rows (pack=True) need positions added by the embeddings "
            "(position_encoding='sinusoidal' or 'learned'): positions inside "
            "attention would run on across the pairs of a row. Received a "
            "model whose positions enter inside attention. Use pack=False "
            "for it."
        )


def packed_logits(transformer_layers, inputs, training=None):
    """Next-token logits of packed rows: `inputs` holds `source_ids`,
    `target_ids` and the `PACKED_INPUTS`; each pair sees only itself, as
    it would alone in its own row."""
    missing = [
        name
        for name in ("source_ids", "target_ids", *PACKED_INPUTS)
        if name not in inputs
    ]
    if missing:
        raise ValueError(
            f"Packed rows need the inputs source_ids, target_ids, "
            f"{', '.join(PACKED_INPUTS)}; missing: {', '.join(missing)}. "
            f"Received the inputs {sorted(inputs)}."
        )
    check_packable(transformer_layers)
    source_segment_ids = inputs["source_segment_ids"]
    encoded, source_mask = encode(
        transformer_layers,
        inputs["source_ids"],
        training=training,
        segment_ids=source_segment_ids,
    )
    return decode(
        transformer_layers,
        inputs["target_ids"],
        encoded,
        source_mask,
        training=training,
        segment_ids=inputs["target_segment_ids"],
        source_segment_ids=source_segment_ids,
    )


def encode(transformer_layers, source_ids, training=None, segment_ids=None):
    """Source ids -> (encoder output, source padding mask).

    With `segment_ids` (packed rows, see `PACKED_INPUTS`), each source
    attends to its own segment only and its positions start at 0.
    """
    source_mask = transformer_layers.padding_mask(source_ids)
    positions = attention_mask = None
    if segment_ids is not None:
        positions = layers.segment_positions(segment_ids)
        attention_mask = layers.segment_mask(segment_ids, segment_ids)
    hidden = transformer_layers.embedding_dropout(
        _embed(transformer_layers.source_embedding, source_ids, positions),
        training=training,
    )
    for block in transformer_layers.encoder_blocks:
        hidden = block(
            hidden,
            padding_mask=source_mask,
            attention_mask=attention_mask,
            training=training,
        )
    if transformer_layers.encoder_norm is not None:
        hidden = transformer_layers.encoder_norm(hidden)
    return hidden, source_mask


def decode(
    transformer_layers,
    target_ids,
    encoded,
    source_mask,
    training=None,
    return_attention_scores=False,
    segment_ids=None,
    source_segment_ids=None,
):
    """Target ids (BOS first) attending to the encoder -> next-token logits.

    With `return_attention_scores=True`, returns `(logits, scores)` where
    `scores[i]` is `{"self_attention": ..., "cross_attention": ...}` for
    decoder block `i`, each `(batch, num_heads, target_length, key_length)`.
    With `segment_ids` and `source_segment_ids` (packed rows), each target
    attends to its own segment and to its own source only.
    """
    target_mask = transformer_layers.padding_mask(target_ids)
    positions = self_mask = cross_mask = None
    if segment_ids is not None:
        positions = layers.segment_positions(segment_ids)
        self_mask = layers.segment_mask(segment_ids, segment_ids)
        cross_mask = layers.segment_mask(segment_ids, source_segment_ids)
    hidden = transformer_layers.embedding_dropout(
        _embed(transformer_layers.target_embedding, target_ids, positions),
        training=training,
    )
    scores = []
    for block in transformer_layers.decoder_blocks:
        outputs = block(
            hidden,
            encoded,
            decoder_padding_mask=target_mask,
            decoder_attention_mask=self_mask,
            encoder_padding_mask=source_mask,
            encoder_attention_mask=cross_mask,
            training=training,
            return_attention_scores=return_attention_scores,
        )
        if return_attention_scores:
            hidden, self_scores, cross_scores = outputs
            scores.append(
                {"self_attention": self_scores, "cross_attention": cross_scores}
            )
        else:
            hidden = outputs
    logits = _logits(transformer_layers, hidden)
    return (logits, scores) if return_attention_scores else logits


def initial_decoder_caches(transformer_layers, encoded, max_length):
    """Empty self-attention caches and filled cross-attention caches."""
    batch_size = keras.ops.shape(encoded)[0]
    self_caches = [
        block.initial_self_attention_cache(batch_size, max_length)
        for block in transformer_layers.decoder_blocks
    ]
    cross_caches = [
        block.compute_cross_attention_cache(encoded)
        for block in transformer_layers.decoder_blocks
    ]
    return self_caches, cross_caches


def decode_step(
    transformer_layers, target_ids, start_index, self_caches, cross_caches, source_mask
):
    """Incremental `decode`: the ids at `start_index...` given cached keys/values.

    Returns the logits for those positions and the updated self-attention
    caches. Shapes do not change from step to step, so a loop over this
    compiles once.
    """
    hidden = transformer_layers.target_embedding(target_ids, start_index=start_index)
    updated = []
    for block, self_cache, cross_cache in zip(
        transformer_layers.decoder_blocks, self_caches, cross_caches
    ):
        hidden, self_cache, _ = block(
            hidden,
            encoder_padding_mask=source_mask,
            self_attention_cache=self_cache,
            self_attention_cache_update_index=start_index,
            cross_attention_cache=cross_cache,
        )
        updated.append(self_cache)
    return _logits(transformer_layers, hidden), updated


class StepModel:
    """The Transformer as the samplers of `keras_transformer.decoding` see it.

    The samplers know nothing of the architecture: they encode once, then
    call `step` one token per hypothesis, reordering the step caches between
    beams. This is the wiring of `encode`, `initial_decoder_caches` and
    `decode_step` into that interface. `Transformer.step_model()` and
    `TransformerLayers.step_model()` make one; a sampler called with either
    makes it itself.

    Args:
        transformer_layers: the `TransformerLayers` to decode with.

    Example:

    ```python
    steps = model.step_model()
    memory = steps.encode(source_ids)               # (encoded, source_mask)
    caches, context = steps.start(memory, max_length=10)
    logits, caches = steps.step(bos_tokens, 0, caches, context)
    ```
    """

    def __init__(self, transformer_layers):
        self.transformer_layers = transformer_layers
        self.source_vocabulary_size = transformer_layers.source_vocabulary_size
        self.target_vocabulary_size = transformer_layers.target_vocabulary_size
        self.max_target_length = transformer_layers.max_target_length
        self.padding_id = transformer_layers.padding_id

    def step_model(self):
        return self

    def encode(self, source_ids):
        """int32 source ids `(batch, length)` -> the memory the decoder
        reads: `(encoder output, source padding mask)`, batch first."""
        return encode(self.transformer_layers, source_ids)

    def start(self, memory, max_length):
        """`(caches, context)` for decoding `max_length` tokens from `memory`:
        the empty self-attention caches each step updates, and what every
        step reads unchanged (cross-attention caches, source mask)."""
        encoded, source_mask = memory
        self_caches, cross_caches = initial_decoder_caches(
            self.transformer_layers, encoded, max_length
        )
        return self_caches, (cross_caches, source_mask)

    def step(self, tokens, index, caches, context):
        """Logits `(n, target_vocabulary_size)` of the token after `tokens`
        (int32 `(n,)`, at position `index`) and the updated caches."""
        cross_caches, source_mask = context
        logits, caches = decode_step(
            self.transformer_layers,
            tokens[:, None],
            index,
            caches,
            cross_caches,
            source_mask,
        )
        return logits[:, 0], caches


def model_layers(model):
    """The `TransformerLayers` of a `Transformer` (or the layers themselves)."""
    if isinstance(model, TransformerLayers):
        return model
    transformer_layers = getattr(model, "transformer_layers", None)
    if not isinstance(transformer_layers, TransformerLayers):
        raise ValueError(
            "Received an invalid value for argument model, expected a "
            "keras_transformer Transformer (from build_transformer, a "
            "Translator, or Transformer(transformer_layers=...)). Received: "
            f"model={model!r}"
        )
    return transformer_layers


def _logits(transformer_layers, hidden):
    if transformer_layers.decoder_norm is not None:
        hidden = transformer_layers.decoder_norm(hidden)
    if transformer_layers.output_projection is None:
        logits = transformer_layers.target_embedding(hidden, reverse=True)
    else:
        logits = transformer_layers.output_projection(hidden)
    return transformer_layers.logits(logits)


def _block_options(config, num_layers_key):
    options = dict(
        intermediate_dim=config.intermediate_dim,
        num_heads=config.num_heads,
        num_key_value_heads=config.num_key_value_heads,
        dropout=config.dropout,
        attention_dropout=config.attention_dropout,
        feed_forward_dropout=config.feed_forward_dropout,
        activation=config.activation,
        layer_norm_epsilon=config.layer_norm_epsilon,
        norm_placement=config.norm_placement,
        norm_type=config.norm_type,
        use_rotary=config.position_encoding == "rotary",
        position_bias=(
            config.position_encoding
            if config.position_encoding in ("alibi", "relative")
            else None
        ),
        remat=config.remat,
    )
    if config.norm_placement == "deepnorm":
        constants = layers.deepnorm_constants(
            config.num_encoder_layers, config.num_decoder_layers
        )
        side = num_layers_key
        options["deepnorm_alpha"] = constants[f"{side}_alpha"]
        options["deepnorm_beta"] = constants[f"{side}_beta"]
    return options


def _embedding(config, vocabulary_size, max_length, name, dtype):
    added_positions = config.position_encoding in ("sinusoidal", "learned")
    return layers.TokenAndPositionEmbedding(
        vocabulary_size=vocabulary_size,
        sequence_length=max_length,
        embedding_dim=config.hidden_dim,
        position_encoding=config.position_encoding if added_positions else "none",
        name=name,
        dtype=dtype,
    )


def _final_norm(config, name, dtype):
    if not layers.needs_final_norm(config.norm_placement):
        return None
    return layers.make_normalization(
        config.norm_type, config.layer_norm_epsilon, name=name, dtype=dtype
    )


def make_transformer_layers(config, dtype=None):
    """The layers `config` describes, not yet wired: a `TransformerLayers`.

    Blocks are named `encoder_block_i` / `decoder_block_i` so a summary and
    LoRA layer paths read well; nothing finds them by name again.
    """
    max_length = max(config.max_source_length, config.max_target_length)
    if config.share_embeddings:
        source_embedding = target_embedding = _embedding(
            config, config.source_vocabulary_size, max_length, "shared_embedding", dtype
        )
    else:
        source_embedding = _embedding(
            config,
            config.source_vocabulary_size,
            config.max_source_length,
            "source_embedding",
            dtype,
        )
        target_embedding = _embedding(
            config,
            config.target_vocabulary_size,
            config.max_target_length,
            "target_embedding",
            dtype,
        )
    return TransformerLayers(
        source_embedding=source_embedding,
        target_embedding=target_embedding,
        embedding_dropout=Dropout(
            config.dropout, name="embedding_dropout", dtype=dtype
        ),
        encoder_blocks=tuple(
            layers.TransformerEncoderBlock(
                **_block_options(config, "encoder"),
                name=f"encoder_block_{i}",
                dtype=dtype,
            )
            for i in range(config.num_encoder_layers)
        ),
        encoder_norm=_final_norm(config, "encoder_final_norm", dtype),
        decoder_blocks=tuple(
            layers.TransformerDecoderBlock(
                **_block_options(config, "decoder"),
                name=f"decoder_block_{i}",
                dtype=dtype,
            )
            for i in range(config.num_decoder_layers)
        ),
        decoder_norm=_final_norm(config, "decoder_final_norm", dtype),
        output_projection=(
            None
            if config.tie_output_projection
            else layers.LoRADense(
                config.target_vocabulary_size, name="output_projection", dtype=dtype
            )
        ),
        padding_mask=PaddingMask(config.padding_id, name="padding_mask"),
        # float32 logits: a stable loss under mixed precision, and for serving.
        logits=keras.layers.Activation("linear", dtype="float32", name="logits"),
    )


@keras.saving.register_keras_serializable(package="keras_transformer")
class Transformer(
    trainer.OptimizerBuiltBeforeTracing, loading.AtomicSave, keras.Model
):
    """The encoder-decoder Transformer as a functional `keras.Model`.

    Inputs `{"source_ids", "target_ids"}` (int32 `(batch, length)`, padded
    with the padding id; `target_ids` starts with BOS), output float32
    next-token logits `(batch, target_length, target_vocabulary_size)`.
    Given also the `PACKED_INPUTS` (segment ids of packed rows, see
    `keras_transformer.data.packing`), it runs `packed_logits` instead:
    each pair of a row attends only to itself, its positions from 0. The
    model keeps its layers as the attribute `transformer_layers` (a
    `TransformerLayers`) and its `config`, so decoding, export and LoRA use
    them directly; a `.keras` file restores both.

    Args:
        config: `TransformerConfig` (or a dict of its fields) describing the
            model. Exactly one of `config` and `transformer_layers`.
        transformer_layers: `TransformerLayers` composed by hand from this
            library's blocks; `config` is then None.
        dtype: optional dtype policy of every layer built from `config`
            (e.g. `"mixed_bfloat16"`). The logits are always float32. With
            `"mixed_float16"`, wrap the optimizer in
            `keras.optimizers.LossScaleOptimizer` yourself (or use
            `Translator.compile`, which does).
        **kwargs: `keras.Model` arguments (`name`, `trainable`).

    Example:

    ```python
    config = TransformerConfig(source_vocabulary_size=100,
                               target_vocabulary_size=100)
    model = Transformer(config)
    logits = model({"source_ids": np.array([[5, 6, 0]]),
                    "target_ids": np.array([[2, 7]])})   # (1, 2, 100)
    ```
    """

    def __init__(self, config=None, transformer_layers=None, dtype=None, **kwargs):
        if (config is None) == (transformer_layers is None):
            raise ValueError(
                "Pass exactly one of config (a TransformerConfig) and "
                "transformer_layers (a TransformerLayers). Received: "
                f"config={config!r}, transformer_layers={transformer_layers!r}"
            )
        if isinstance(config, dict):
            config = TransformerConfig.from_dict(config)
        if config is not None and not isinstance(config, TransformerConfig):
            raise ValueError(
                "Received an invalid value for argument config, expected a "
                f"TransformerConfig or a dict of its fields. Received: config={config!r}"
            )
        if isinstance(transformer_layers, dict):
            transformer_layers = TransformerLayers.deserialize(transformer_layers)
        if transformer_layers is not None and not isinstance(
            transformer_layers, TransformerLayers
        ):
            raise ValueError(
                "Received an invalid value for argument transformer_layers, "
                "expected a TransformerLayers. Received: "
                f"transformer_layers={transformer_layers!r}"
            )
        if transformer_layers is None:
            transformer_layers = make_transformer_layers(config, dtype)

        source_ids = keras.Input(shape=(None,), dtype="int32", name="source_ids")
        target_ids = keras.Input(shape=(None,), dtype="int32", name="target_ids")
        encoded, source_mask = encode(transformer_layers, source_ids)
        logits = decode(transformer_layers, target_ids, encoded, source_mask)
        super().__init__(
            {"source_ids": source_ids, "target_ids": target_ids}, logits, **kwargs
        )
        # Set after the functional graph exists: Keras tracks layers through
        # it, and a dataclass attribute is not a layer collection to track.
        self.config = config
        self.transformer_layers = transformer_layers
        # The `dtype` argument: the layers' policy, which need not be the
        # model's own (`self.dtype_policy`).
        self.layers_dtype = dtype

    def call(self, inputs, training=None, mask=None, **kwargs):
        # The functional graph casts its inputs to int32, which would turn
        # float ids such as 1.7 into 1; refuse them before that cast.
        if isinstance(inputs, dict):
            for name in ("source_ids", "target_ids"):
                if name in inputs:
                    _token_ids.check_dtype(name, inputs[name])
            if any(name in inputs for name in PACKED_INPUTS):
                return packed_logits(self.transformer_layers, inputs, training)
        return super().call(inputs, training=training, mask=mask, **kwargs)

    @property
    def padding_id(self):
        return self.transformer_layers.padding_id

    @property
    def max_source_length(self):
        return self.transformer_layers.max_source_length

    @property
    def max_target_length(self):
        return self.transformer_layers.max_target_length

    def step_model(self):
        """The model as the samplers of `keras_transformer.decoding` see it
        (`StepModel`)."""
        return self.transformer_layers.step_model()

    def get_config(self):
        config = {"name": self.name, "trainable": self.trainable}
        if self.config is not None:
            config["config"] = self.config.to_dict()
            policy = self.layers_dtype
            if policy is not None and not isinstance(policy, str):
                policy = keras.saving.serialize_keras_object(policy)
            config["dtype"] = policy
        else:
            config["transformer_layers"] = self.transformer_layers.serialize()
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        if isinstance(config.get("dtype"), dict):
            config["dtype"] = keras.saving.deserialize_keras_object(config["dtype"])
        return cls(**config)


def build_transformer(config, dtype=None, name="transformer"):
    """Builds the encoder-decoder described by `config`: a `Transformer`.

    Args:
        config: `TransformerConfig` or a dict of its fields.
        dtype: optional dtype policy for every layer (e.g. `"mixed_bfloat16"`);
            defaults to the global policy. The logits are always float32, for
            a stable loss and for serving. With `"mixed_float16"`, wrap the
            optimizer in `keras.optimizers.LossScaleOptimizer` yourself: Keras
            only does it when the model's own policy (float32 here) is fp16.
        name: str. The model's name.

    Returns:
        A functional `Transformer` with inputs `{"source_ids", "target_ids"}`
        (int32, `(batch, length)`, padded with `padding_id`) and output logits
        `(batch, target_length, target_vocabulary_size)`.

    Example:

    ```python
    config = TransformerConfig(source_vocabulary_size=100,
                               target_vocabulary_size=100)
    model = build_transformer(config)
    ```
    """
    return Transformer(config, dtype=dtype, name=name)
