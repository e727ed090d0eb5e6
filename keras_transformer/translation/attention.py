"""Attention analysis: where a Translator looks while it translates.

`attention_scores` translates texts greedily and reads one decoder block's
cross-attention over the source tokens for every generated token, as an
`AttentionMap` per text (`keras_transformer.plotting` draws them).
"""

import dataclasses

import keras
import numpy as np

from keras_transformer.models import transformer
from keras_transformer.translation import text


@dataclasses.dataclass(frozen=True)
class AttentionMap:
    """One text's cross-attention, from `Translator.attention_scores`."""

    source_tokens: list
    target_tokens: list
    scores: np.ndarray


def attention_scores(translator, texts, layer=-1, max_length=None):
    """`Translator.attention_scores` of `translator` (a `Translator`): one
    `AttentionMap` per text, of decoder block `layer`, while translating
    greedily up to `max_length` tokens."""
    texts = text.check_texts("texts", texts)
    parts = translator.transformer_layers
    num_layers = len(parts.decoder_blocks)
    if isinstance(layer, bool) or not isinstance(layer, int) or not (
        -num_layers <= layer < num_layers
    ):
        raise ValueError(
            "Received an invalid value for argument layer, expected a "
            f"decoder block index in [-{num_layers}, {num_layers}). "
            f"Received: layer={layer!r}"
        )
    maps = []
    for source_text in texts:
        source_ids = translator.source_tokenizer.tokenize([source_text]).to_tensor().numpy()
        if source_ids.shape[1] == 0:
            raise ValueError(
                f"Cannot show attention for {source_text!r}: it has no tokens."
            )
        if source_ids.shape[1] > translator.max_source_length:
            raise ValueError(
                f"Cannot show attention for {text.short_repr(source_text)}: it has "
                f"{source_ids.shape[1]} tokens, more than the model's "
                f"maximum source length of {translator.max_source_length}."
            )
        generated = [int(i) for i in translator.generate(source_ids, max_length=max_length)[0]]
        eos = translator.target_tokenizer.eos_id
        if eos in generated:
            generated = generated[: generated.index(eos) + 1]
        decoder_inputs = np.array([[translator.target_tokenizer.bos_id] + generated[:-1]])
        encoded, source_mask = transformer.encode(parts, source_ids, training=False)
        _, scores = transformer.decode(
            parts,
            decoder_inputs,
            encoded,
            source_mask,
            training=False,
            return_attention_scores=True,
        )
        maps.append(
            AttentionMap(
                source_tokens=_token_labels(translator.source_tokenizer, source_ids[0]),
                target_tokens=_token_labels(translator.target_tokenizer, generated),
                scores=np.asarray(
                    keras.ops.convert_to_numpy(scores[layer]["cross_attention"])[0],
                    dtype="float32",
                ),
            )
        )
    return maps


def _token_labels(tokenizer, ids):
    vocabulary = tokenizer.vocabulary
    # A space token would be an invisible tick label.
    return [vocabulary[int(i)].replace(" ", "\u2423") for i in ids]
