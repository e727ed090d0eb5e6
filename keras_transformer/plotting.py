"""PNG plots of training curves and attention heat-maps (matplotlib).

matplotlib is imported when a plot is drawn, through a bare `Figure` (Agg
canvas), so plotting works on machines without a display and leaves
pyplot's global state alone.
"""

import os
import textwrap

import numpy as np


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
        if not name.startswith("val_")
        and name not in ("learning_rate", "compile_seconds")
        and not name.endswith("_per_second")
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


def plot_attention_map(attention_map, head, path, title=None):
    """Writes one head of a `Translator.attention_scores` result as a PNG.

    Args:
        attention_map: an `AttentionMap` (source and target tokens, scores
            `(num_heads, target, source)`).
        head: int. Attention head index.
        path: str. The PNG file; missing folders are created.
        title: str or None. Figure title.
    """
    num_heads = attention_map.scores.shape[0]
    if isinstance(head, bool) or not isinstance(head, int) or not 0 <= head < num_heads:
        raise ValueError(
            "Received an invalid value for argument head, expected an index in "
            f"[0, {num_heads}). Received: head={head!r}"
        )
    plot_attention(
        attention_map.scores[head],
        attention_map.source_tokens,
        attention_map.target_tokens,
        path,
        title=title,
    )


def _require_matplotlib():
    try:
        import matplotlib  # noqa: F401
    except ImportError as error:
        raise ImportError(
            "matplotlib is not installed. The plots need matplotlib: pip "
            "install matplotlib"
        ) from error


def _new_figure(figsize):
    # A bare Figure draws with the Agg canvas and leaves pyplot's global
    # backend alone, so this works on machines without a display.
    _require_matplotlib()
    from matplotlib.figure import Figure

    return Figure(figsize=figsize, layout="constrained")


def _save(figure, path):
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    figure.savefig(path, format="png", dpi=100)
