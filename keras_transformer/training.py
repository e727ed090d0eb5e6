"""Evaluating and plotting a trained translator (used by `scripts/train.py`).

`translate_texts` greedy-decodes a list of strings with the model in memory,
`exact_match` and `corpus_bleu` score the results, `cross_attention_scores`
reads one decoder block's cross-attention, and `plot_history`,
`plot_attention` and `plot_cross_attention` write PNGs. The plots and BLEU need the optional packages
matplotlib and sacrebleu, imported only when called.
"""

import dataclasses
import os
import textwrap

import numpy as np
import tensorflow as tf

from keras_transformer import decoding
from keras_transformer import validation
from keras_transformer.models import transformer


def translate_texts(
    model,
    source_tokenizer,
    target_tokenizer,
    texts,
    max_length,
    batch_size=256,
    jit_compile=False,
):
    """Greedy-decodes `texts` with `model`.

    Args:
        model: a `keras.Model` from `build_transformer`.
        source_tokenizer: `keras_transformer.data.Tokenizer` of the inputs.
        target_tokenizer: `keras_transformer.data.Tokenizer` of the outputs.
        texts: list of str. Each must fit the model's maximum source length
            (a longer one raises `ValueError`); an empty one translates to
            `""`.
        max_length: int. Most tokens generated per text, EOS included.
        batch_size: int. Texts decoded at once.
        jit_compile: bool. Decode as one XLA program. Every batch is then
            padded to `(batch_size, maximum source length)`, so the program
            compiles once (static shapes, as TPUs need).

    Returns:
        list of str, the translations in the order of `texts`.
    """
    validation.check_positive_int("batch_size", batch_size)
    parts = transformer.TransformerLayers.of(model)
    padding_id = parts.padding_mask.padding_id
    max_source_length = parts.source_embedding.sequence_length
    # One trace for every batch: batch size and source length stay dynamic
    # (under XLA they are fixed by the padding below).
    decode = tf.function(
        lambda source_ids: decoding.greedy_decode(
            model,
            source_ids,
            max_length,
            bos_id=target_tokenizer.bos_id,
            eos_id=target_tokenizer.eos_id,
        ),
        input_signature=[tf.TensorSpec([None, None], tf.int32)],
        autograph=False,
        jit_compile=jit_compile,
    )
    translations = []
    for start in range(0, len(texts), batch_size):
        pieces = source_tokenizer.tokenize(texts[start : start + batch_size])
        lengths = pieces.row_lengths().numpy()
        if lengths.max() > max_source_length:
            raise ValueError(
                f"Text {start + int(lengths.argmax())} has {lengths.max()} "
                f"tokens, more than the model's maximum source length of "
                f"{max_source_length}. Texts are never truncated: drop or "
                "split such texts first."
            )
        # At least one column, so a batch of empty texts still decodes; their
        # translations are blanked below.
        shape = (
            [batch_size, max_source_length]
            if jit_compile
            else [len(lengths), max(1, lengths.max())]
        )
        source_ids = pieces.to_tensor(default_value=padding_id, shape=shape)
        generated = target_tokenizer.detokenize(decode(source_ids)).numpy()
        # zip stops at the real texts, before rows padded in under XLA.
        translations.extend(
            text.decode("utf-8") if length else ""
            for text, length in zip(generated, lengths)
        )
    return translations


@dataclasses.dataclass(frozen=True)
class ExactMatch:
    """How many hypotheses equal their reference exactly."""

    matched: int
    total: int

    @property
    def rate(self):
        return self.matched / self.total if self.total else 0.0

    def __str__(self):
        return f"{100 * self.rate:.1f}% ({self.matched}/{self.total})"


def exact_match(hypotheses, references):
    """Counts hypotheses identical to their reference (whole strings)."""
    hypotheses, references = list(hypotheses), list(references)
    if len(hypotheses) != len(references):
        raise ValueError(
            "hypotheses and references must pair up, but received "
            f"{len(hypotheses)} hypotheses and {len(references)} references."
        )
    matched = sum(h == r for h, r in zip(hypotheses, references))
    return ExactMatch(matched=matched, total=len(references))


def corpus_bleu(hypotheses, references, lowercase=False):
    """Corpus BLEU (sacrebleu, 13a tokenization) of detokenized text.

    Returns:
        A `sacrebleu.metrics.BLEUScore`; `.score` is BLEU in [0, 100].
    """
    sacrebleu = _require(
        "sacrebleu", "BLEU is computed with sacrebleu: pip install sacrebleu"
    )
    return sacrebleu.corpus_bleu(
        list(hypotheses), [list(references)], lowercase=lowercase
    )


def cross_attention_scores(model, source_ids, target_ids, layer):
    """Cross-attention probabilities of decoder block `layer`.

    Runs the encoder and decoder on `target_ids` (BOS first), in inference
    mode.

    Args:
        model: a `keras.Model` from `build_transformer`.
        source_ids: int tensor `(batch, source_length)`.
        target_ids: int tensor `(batch, target_length)`.
        layer: int. Index of the decoder block.

    Returns:
        float32 numpy array `(batch, num_heads, target_length, source_length)`.
    """
    parts = transformer.TransformerLayers.of(model)
    num_layers = len(parts.decoder_blocks)
    if not 0 <= layer < num_layers:
        raise ValueError(
            f"Received layer={layer}, but the model has {num_layers} decoder "
            f"blocks. Pass 0 <= layer < {num_layers}."
        )
    encoded, source_mask = transformer.encode(parts, source_ids, training=False)
    _, scores = transformer.decode(
        parts,
        target_ids,
        encoded,
        source_mask,
        training=False,
        return_attention_scores=True,
    )
    return np.asarray(scores[layer]["cross_attention"], dtype="float32")


def plot_cross_attention(
    model, source_tokenizer, target_tokenizer, text, max_length, layer, head, path
):
    """Translates `text` greedily and writes a heat-map of one head's
    cross-attention while producing it.

    Row `t` of the map is the decoder step that produced output token `t`
    (the EOS included), column `s` is source token `s`.

    Args:
        model: a `keras.Model` from `build_transformer`.
        source_tokenizer: `keras_transformer.data.Tokenizer` of the inputs.
        target_tokenizer: `keras_transformer.data.Tokenizer` of the outputs.
        text: str. A non-empty source text.
        max_length: int. Most tokens generated, EOS included.
        layer: int. Decoder block index.
        head: int. Attention head index.
        path: str. The PNG file.

    Returns:
        The translation (str).
    """
    source_ids = source_tokenizer.tokenize([text]).to_tensor()
    if source_ids.shape[1] == 0:
        raise ValueError(f"Cannot plot attention for {text!r}: it has no tokens.")
    generated = decoding.greedy_decode(
        model,
        source_ids,
        max_length,
        bos_id=target_tokenizer.bos_id,
        eos_id=target_tokenizer.eos_id,
    )
    generated = [int(i) for i in np.asarray(generated)[0]]
    if target_tokenizer.eos_id in generated:
        generated = generated[: generated.index(target_tokenizer.eos_id) + 1]
    decoder_inputs = tf.constant([[target_tokenizer.bos_id] + generated[:-1]])
    scores = cross_attention_scores(model, source_ids, decoder_inputs, layer)
    num_heads = scores.shape[1]
    if not 0 <= head < num_heads:
        raise ValueError(
            f"Received head={head}, but the model has {num_heads} heads. "
            f"Pass 0 <= head < {num_heads}."
        )
    translation = target_tokenizer.detokenize([generated]).numpy()[0].decode("utf-8")
    plot_attention(
        scores[0, head],
        _token_labels(source_tokenizer, np.asarray(source_ids)[0]),
        _token_labels(target_tokenizer, generated),
        path,
        title=f"cross-attention, decoder block {layer}, head {head}\n"
        f"{text!r} -> {translation!r}",
    )
    return translation


def plot_history(history, path, title=None):
    """Writes a PNG of the loss and accuracy curves of `model.fit`.

    Args:
        history: dict of metric name -> list of per-epoch values
            (`keras.callbacks.History.history`). `loss` goes on the left,
            every other metric on the right; `val_*` entries are drawn
            dashed in the colour of their training curve.
        path: str. The PNG file; missing folders are created.
        title: str or None. Figure title.
    """
    figure = _new_figure(figsize=(10, 4))
    loss_axes, accuracy_axes = figure.subplots(1, 2)
    names = [
        name
        for name in history
        if not name.startswith("val_") and name != "learning_rate"
    ]
    for index, name in enumerate(names):
        axes = loss_axes if name == "loss" else accuracy_axes
        # A metric and its held-out twin share a colour.
        color = f"C{index}"
        for key, style, split in (
            (name, "-", "training"),
            (f"val_{name}", "--", "held-out"),
        ):
            if key in history:
                values = history[key]
                axes.plot(
                    np.arange(1, len(values) + 1),
                    values,
                    style,
                    color=color,
                    marker="o",
                    label=f"{name} ({split})",
                )
    loss_axes.set(xlabel="epoch", ylabel="loss", yscale="log", title="loss")
    accuracy_axes.set(xlabel="epoch", ylabel="accuracy", title="accuracy")
    for axes in (loss_axes, accuracy_axes):
        axes.grid(True, alpha=0.3)
        axes.xaxis.get_major_locator().set_params(integer=True)
        if axes.lines:
            axes.legend()
    if title:
        figure.suptitle(title)
    _save(figure, path)


def plot_attention(scores, source_tokens, target_tokens, path, title=None):
    """Writes a PNG heat-map of one head's attention.

    Args:
        scores: float array `(len(target_tokens), len(source_tokens))`.
        source_tokens: list of str, the column labels (keys).
        target_tokens: list of str, the row labels (queries).
        path: str. The PNG file; missing folders are created.
        title: str or None. Figure title.
    """
    scores = np.asarray(scores)
    expected = (len(target_tokens), len(source_tokens))
    if scores.shape != expected:
        raise ValueError(
            f"Expected scores of shape {expected} (target tokens, source "
            f"tokens), but received shape {scores.shape}."
        )
    width = max(4, 0.35 * expected[1] + 2)
    figure = _new_figure(figsize=(width, max(3, 0.35 * expected[0] + 1.5)))
    axes = figure.subplots()
    image = axes.imshow(scores, cmap="viridis", vmin=0.0, aspect="auto")
    axes.set_xticks(range(expected[1]), source_tokens, rotation=90)
    axes.set_yticks(range(expected[0]), target_tokens)
    axes.set(xlabel="source token", ylabel="output token")
    figure.colorbar(image, ax=axes)
    if title:
        # Wrapped to the figure's width (about 9 characters an inch), so a
        # long sentence is not cut off.
        axes.set_title(
            "\n".join(
                textwrap.fill(line, width=int(9 * width)) for line in title.splitlines()
            )
        )
    _save(figure, path)


def _token_labels(tokenizer, ids):
    vocabulary = tokenizer.vocabulary
    # A space token would be an invisible tick label.
    return [vocabulary[i].replace(" ", "\u2423") for i in ids]


def _require(module_name, hint):
    try:
        return __import__(module_name)
    except ImportError as error:
        raise ImportError(f"{module_name} is not installed. {hint}") from error


def _new_figure(figsize):
    # A bare Figure draws with the Agg canvas and leaves pyplot's global
    # backend alone, so this works on machines without a display.
    _require("matplotlib", "The plots need matplotlib: pip install matplotlib")
    from matplotlib.figure import Figure

    return Figure(figsize=figsize, layout="constrained")


def _save(figure, path):
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    figure.savefig(path, format="png", dpi=100)
