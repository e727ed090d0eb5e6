"""Speed of keras_transformer next to keras-hub and Keras core layers.

One process measures every section side by side: the candidates of a
section are warmed up (compiled) first, then timed in turns, one repeat of
each after the other, so a change of machine load hits all of them alike.
Figures are medians over the repeats.

Sections (`--sections`, default all):

- training: `model.fit` throughput of the same encoder-decoder built with
  this library, with keras-hub's `TransformerEncoder`/`TransformerDecoder`
  and with `keras.layers.MultiHeadAttention`, with and without XLA; achieved
  FLOP/s as a fraction of a plain fp32 matmul's.
- decoding: greedy decoding with the library's cached `greedy_decode`, with
  a loop that recomputes the whole prefix every step, and with keras-hub's
  cached `TransformerDecoder` driven by its `GreedySampler`.
- lora: trainable fraction and step time of LoRA on q and v against full
  fine-tuning; inference latency after `merge_lora` against the base model.
- remat: peak memory (fresh process per configuration) and step time with
  and without `TransformerConfig.remat`.
- serving: the exported `translate` endpoint against in-process decoding.
- scaling: training step time as the sequence length and the depth grow.

    python scripts/benchmark.py                      # all sections, ~30 min on 2 cores
    python scripts/benchmark.py --sections training decoding --repeats 7
    python scripts/benchmark.py --smoke              # tiny settings, checks the script

Writes `<output-dir>/benchmarks.md` (machine, versions, the command, the
tables) and `<output-dir>/benchmark_<section>.png`. The output directory is
`docs/` for full runs and a new temporary folder for `--smoke`.

keras-hub is optional (`pip install -e ".[bench]"`): without it its rows say
"skipped" and why.
"""

import argparse
import dataclasses
import datetime
import importlib
import json
import os
import platform
import resource
import shlex
import statistics
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import keras_transformer  # noqa: E402
from keras_transformer import (
    data,
    decoding,
    export,
    layers,
    losses,
    models,
)  # noqa: E402

REPOSITORY = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SECTION_NAMES = ("training", "decoding", "lora", "remat", "serving", "scaling")
LIBRARY = "keras_transformer"
KERAS_HUB = "keras-hub"
KERAS_CORE = "keras MultiHeadAttention"
BOS_ID, EOS_ID, PAD_ID = 2, 3, 0
REMAT_RESULT_PREFIX = "REMAT_RESULT "
# The date task: sources up to ~35 characters, ISO dates of 10 + BOS/EOS.
SERVING_MAX_SOURCE_LENGTH = 48
SERVING_MAX_TARGET_LENGTH = 16
SUBPROCESS_TIMEOUT_S = 1800


@dataclasses.dataclass(frozen=True)
class Settings:
    """Sizes of every section; `SMOKE` shrinks them to check the script."""

    hidden_dim: int = 256
    num_heads: int = 8
    intermediate_dim: int = 1024
    vocabulary_size: int = 8000
    num_layers: int = 2
    batch_size: int = 32
    length: int = 64
    dropout: float = 0.1
    matmul_size: int = 2048
    steps_per_repeat: int = 6
    decode_length: int = 64
    decode_batch_sizes: tuple = (8, 1)
    lora_rank: int = 8
    remat_num_layers: int = 4
    remat_batch_size: int = 8
    remat_length: int = 256
    remat_steps: int = 3
    serving_hidden_dim: int = 64
    serving_train_steps: int = 200
    serving_batch_sizes: tuple = (1, 8)
    scaling_lengths: tuple = (64, 128, 256, 512, 1024)
    scaling_tokens_per_batch: int = 2048
    scaling_depths: tuple = (1, 2, 4, 8)
    scaling_steps_per_repeat: int = 3


SMOKE = Settings(
    hidden_dim=16,
    num_heads=2,
    intermediate_dim=32,
    vocabulary_size=64,
    num_layers=1,
    batch_size=2,
    length=8,
    matmul_size=128,
    steps_per_repeat=2,
    decode_length=6,
    decode_batch_sizes=(2,),
    lora_rank=2,
    remat_num_layers=1,
    remat_batch_size=2,
    remat_length=8,
    remat_steps=2,
    serving_hidden_dim=16,
    serving_train_steps=2,
    serving_batch_sizes=(2,),
    scaling_lengths=(8, 16),
    scaling_tokens_per_batch=32,
    scaling_depths=(1, 2),
    scaling_steps_per_repeat=2,
)


# -- measuring --------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Sample:
    """One timed call: wall-clock seconds and CPU seconds of this process.

    On a shared machine the wall clock also counts time spent waiting for a
    core; CPU time counts only the work done, so it varies less with load.
    """

    wall: float
    cpu: float


@dataclasses.dataclass
class Timing:
    """The samples of one candidate over the timed repeats."""

    samples: list

    @property
    def median(self):
        return statistics.median(sample.wall for sample in self.samples)

    @property
    def cpu_median(self):
        return statistics.median(sample.cpu for sample in self.samples)

    def spread(self):
        walls = [sample.wall for sample in self.samples]
        return f"{min(walls) * 1e3:.1f}-{max(walls) * 1e3:.1f}"


def time_side_by_side(candidates, repeats, warmup):
    """Times each candidate `repeats` times, in turns, after `warmup` calls.

    Args:
        candidates: dict label (any hashable) -> callable. A callable returns
            the `Sample` it measured itself, or None to be timed from outside.
        repeats: int. Timed calls of each candidate.
        warmup: int. Untimed calls first (tracing, XLA compilation, caches).

    Returns:
        dict label -> `Timing`.
    """
    for _ in range(warmup):
        for run in candidates.values():
            run()
    samples = {label: [] for label in candidates}
    for _ in range(repeats):
        for label, run in candidates.items():
            wall, cpu = time.perf_counter(), time.process_time()
            measured = run()
            outside = Sample(time.perf_counter() - wall, time.process_time() - cpu)
            samples[label].append(outside if measured is None else measured)
    return {label: Timing(values) for label, values in samples.items()}


def progress(message):
    """One line on stderr, so a long run shows where it is."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def synced(function, *args):
    """A callable running `function(*args)` and waiting for its result."""

    def run():
        np.asarray(function(*args))

    return run


class _StepClock(keras.callbacks.Callback):
    """Time per training step, from the end of the first step to the end of
    the last, so `fit`'s set-up is not counted."""

    def on_train_begin(self, logs=None):
        self.step_ends = []

    def on_train_batch_end(self, batch, logs=None):
        self.step_ends.append((time.perf_counter(), time.process_time()))

    def per_step(self):
        (first_wall, first_cpu), (last_wall, last_cpu) = (
            self.step_ends[0],
            self.step_ends[-1],
        )
        steps = len(self.step_ends) - 1
        return Sample((last_wall - first_wall) / steps, (last_cpu - first_cpu) / steps)


def fit_runner(model, dataset, steps):
    """A callable that trains `steps` steps and returns the `Sample` of one
    step (the mean over the steps after the first)."""
    if steps < 2:
        raise ValueError(f"Timing fit needs at least 2 steps, got {steps}.")
    clock = _StepClock()

    def run():
        model.fit(
            dataset,
            steps_per_epoch=steps,
            epochs=1,
            verbose=0,
            shuffle=False,
            callbacks=[clock],
        )
        return clock.per_step()

    return run


def matmul_runner(size):
    """A callable timing one fp32 `size x size` matmul in a `tf.function`:
    the mean of 5 back-to-back calls, as a `Sample`."""
    a = tf.random.uniform((size, size), dtype=tf.float32)
    b = tf.random.uniform((size, size), dtype=tf.float32)
    matmul = tf.function(tf.matmul)

    def run():
        wall, cpu = time.perf_counter(), time.process_time()
        for _ in range(5):
            matmul(a, b).numpy()
        return Sample((time.perf_counter() - wall) / 5, (time.process_time() - cpu) / 5)

    return run


def training_flops(settings, batch_size, length, num_layers):
    """Analytic FLOPs of one training step of the encoder-decoder.

    A token's forward pass costs 2 FLOPs per weight of every projection it
    goes through (encoder layer: 4 d^2 attention + 2 d f feed-forward;
    decoder layer: 8 d^2 for self- and cross-attention + 2 d f; the tied
    output projection: d V per target token), plus 4 L d per attention
    layer for the scores `q k^T` and the weighted sum of values over L keys
    (causal masking is not subtracted: the full product is computed). The
    training step is 3x the forward pass (backward = 2x forward). Every
    position counts, padding included, since it is computed too.
    """
    d, f = settings.hidden_dim, settings.intermediate_dim
    encoder_token = num_layers * (2 * (4 * d * d + 2 * d * f) + 4 * length * d)
    decoder_token = (
        num_layers * (2 * (8 * d * d + 2 * d * f) + 2 * 4 * length * d)
        + 2 * d * settings.vocabulary_size
    )
    forward = batch_size * length * (encoder_token + decoder_token)
    return 3 * forward


# -- models -----------------------------------------------------------------


def library_config(settings, num_layers=None, max_length=None, **overrides):
    """The benchmark architecture as a `TransformerConfig`: post-norm,
    sinusoidal positions, tied output projection, keras-hub's dropouts
    (attention, residual; none inside the feed-forward network)."""
    num_layers = num_layers or settings.num_layers
    max_length = max_length or settings.length
    fields = dict(
        source_vocabulary_size=settings.vocabulary_size,
        target_vocabulary_size=settings.vocabulary_size,
        num_encoder_layers=num_layers,
        num_decoder_layers=num_layers,
        hidden_dim=settings.hidden_dim,
        num_heads=settings.num_heads,
        intermediate_dim=settings.intermediate_dim,
        dropout=settings.dropout,
        attention_dropout=settings.dropout,
        feed_forward_dropout=0.0,
        norm_placement="post",
        position_encoding="sinusoidal",
        max_source_length=max_length,
        max_target_length=max_length,
    )
    fields.update(overrides)
    return models.TransformerConfig(**fields)


def build_library_model(settings, num_layers=None, max_length=None):
    return models.build_transformer(
        library_config(settings, num_layers, max_length), name=LIBRARY.replace("-", "_")
    )


@dataclasses.dataclass
class KerasHubParts:
    source_embedding: object
    target_embedding: object
    encoders: list
    decoders: list


def build_keras_hub_model(keras_hub, settings, num_layers=None, max_length=None):
    """The same encoder-decoder from keras-hub layers (learned positions, the
    only kind its `TokenAndPositionEmbedding` has). Returns (model, parts)."""
    num_layers = num_layers or settings.num_layers
    max_length = max_length or settings.length

    def embedding(name):
        return keras_hub.layers.TokenAndPositionEmbedding(
            settings.vocabulary_size, max_length, settings.hidden_dim, name=name
        )

    def block(kind, index):
        return getattr(keras_hub.layers, kind)(
            settings.intermediate_dim,
            settings.num_heads,
            dropout=settings.dropout,
            name=f"{kind.lower()}_{index}",
        )

    parts = KerasHubParts(
        embedding("source_embedding"),
        embedding("target_embedding"),
        [block("TransformerEncoder", i) for i in range(num_layers)],
        [block("TransformerDecoder", i) for i in range(num_layers)],
    )
    source_ids, target_ids, source_mask, target_mask = _model_inputs()
    dropout = keras.layers.Dropout(settings.dropout)
    encoded = dropout(parts.source_embedding(source_ids))
    for encoder in parts.encoders:
        encoded = encoder(encoded, padding_mask=source_mask)
    decoded = dropout(parts.target_embedding(target_ids))
    for decoder in parts.decoders:
        decoded = decoder(
            decoded,
            encoded,
            decoder_padding_mask=target_mask,
            encoder_padding_mask=source_mask,
        )
    logits = parts.target_embedding.token_embedding(decoded, reverse=True)
    model = keras.Model(
        {"source_ids": source_ids, "target_ids": target_ids},
        keras.layers.Activation("linear", dtype="float32")(logits),
        name="keras_hub",
    )
    return model, parts


def _model_inputs():
    source_ids = keras.Input((None,), dtype="int32", name="source_ids")
    target_ids = keras.Input((None,), dtype="int32", name="target_ids")
    return (
        source_ids,
        target_ids,
        keras.ops.not_equal(source_ids, PAD_ID),
        keras.ops.not_equal(target_ids, PAD_ID),
    )


class _CoreEmbedding(keras.layers.Layer):
    """Token embedding (reversible, for the tied output projection) plus
    learned positions, from Keras core layers."""

    def __init__(self, vocabulary_size, max_length, hidden_dim, **kwargs):
        super().__init__(**kwargs)
        self.tokens = keras.layers.ReversibleEmbedding(vocabulary_size, hidden_dim)
        self.positions = keras.layers.Embedding(max_length, hidden_dim)

    def call(self, token_ids, reverse=False):
        if reverse:
            return self.tokens(token_ids, reverse=True)
        length = keras.ops.shape(token_ids)[1]
        return self.tokens(token_ids) + self.positions(keras.ops.arange(length))[None]


class _CoreBlock(keras.layers.Layer):
    """A post-norm encoder block, or decoder block with `cross=True`, built
    from `keras.layers.MultiHeadAttention`, `Dense` and `LayerNormalization`."""

    def __init__(self, settings, cross, **kwargs):
        super().__init__(**kwargs)
        self.cross = cross
        key_dim = settings.hidden_dim // settings.num_heads

        def attention():
            return keras.layers.MultiHeadAttention(
                settings.num_heads, key_dim, dropout=settings.dropout
            )

        def residual():
            return (
                keras.layers.Dropout(settings.dropout),
                keras.layers.LayerNormalization(epsilon=1e-5),
            )

        self.self_attention = attention()
        self.self_residual = residual()
        if cross:
            self.cross_attention = attention()
            self.cross_residual = residual()
        self.intermediate = keras.layers.Dense(
            settings.intermediate_dim, activation="relu"
        )
        self.projection = keras.layers.Dense(settings.hidden_dim)
        self.feed_forward_residual = residual()

    @staticmethod
    def _add_and_norm(residual, inputs, outputs, training):
        dropout, norm = residual
        return norm(inputs + dropout(outputs, training=training))

    def call(
        self, hidden, padding_mask, encoded=None, encoder_mask=None, training=None
    ):
        attended = self.self_attention(
            hidden,
            hidden,
            query_mask=padding_mask,
            value_mask=padding_mask,
            use_causal_mask=self.cross,
            training=training,
        )
        hidden = self._add_and_norm(self.self_residual, hidden, attended, training)
        if self.cross:
            attended = self.cross_attention(
                hidden,
                encoded,
                query_mask=padding_mask,
                value_mask=encoder_mask,
                training=training,
            )
            hidden = self._add_and_norm(self.cross_residual, hidden, attended, training)
        transformed = self.projection(self.intermediate(hidden))
        return self._add_and_norm(
            self.feed_forward_residual, hidden, transformed, training
        )


def build_keras_core_model(settings, num_layers=None, max_length=None):
    num_layers = num_layers or settings.num_layers
    max_length = max_length or settings.length
    source_ids, target_ids, source_mask, target_mask = _model_inputs()
    dropout = keras.layers.Dropout(settings.dropout)
    source_embedding = _CoreEmbedding(
        settings.vocabulary_size, max_length, settings.hidden_dim
    )
    target_embedding = _CoreEmbedding(
        settings.vocabulary_size, max_length, settings.hidden_dim
    )
    encoded = dropout(source_embedding(source_ids))
    for _ in range(num_layers):
        encoded = _CoreBlock(settings, cross=False)(encoded, source_mask)
    decoded = dropout(target_embedding(target_ids))
    for _ in range(num_layers):
        decoded = _CoreBlock(settings, cross=True)(
            decoded, target_mask, encoded, source_mask
        )
    logits = target_embedding(decoded, reverse=True)
    return keras.Model(
        {"source_ids": source_ids, "target_ids": target_ids},
        keras.layers.Activation("linear", dtype="float32")(logits),
        name="keras_core",
    )


def compile_for_training(model, jit_compile):
    model.compile(
        optimizer=keras.optimizers.Adam(1e-4),
        loss=losses.MaskedSparseCategoricalCrossentropy(),
        jit_compile=jit_compile,
    )
    return model


def random_batch(batch_size, length, vocabulary_size, seed=0):
    """Teacher-forcing inputs and labels with ragged lengths in
    `[length // 2, length]` per row, padded with 0."""
    rng = np.random.default_rng(seed)

    def ids(first_id):
        values = rng.integers(first_id, vocabulary_size, (batch_size, length))
        lengths = rng.integers(max(length // 2, 1), length + 1, batch_size)
        values[np.arange(length)[None, :] >= lengths[:, None]] = PAD_ID
        return values.astype("int32")

    source_ids = ids(4)
    labels = ids(4)
    target_ids = np.concatenate(
        [np.full((batch_size, 1), BOS_ID, "int32"), labels[:, :-1]], axis=1
    )
    inputs = {"source_ids": source_ids, "target_ids": target_ids}
    return inputs, labels


def repeated_dataset(inputs, labels):
    return tf.data.Dataset.from_tensors((inputs, labels)).repeat()


def non_padding_tokens(inputs):
    return int(
        np.sum(inputs["source_ids"] != PAD_ID) + np.sum(inputs["target_ids"] != PAD_ID)
    )


def count_parameters(variables):
    return int(sum(np.prod(variable.shape) for variable in variables))


# -- optional peers ---------------------------------------------------------


class Skipped(Exception):
    """A peer that cannot be measured here; the message says why."""


def import_keras_hub():
    try:
        return importlib.import_module("keras_hub")
    except Exception as error:  # any import failure makes the peer unavailable
        raise Skipped(
            f"{type(error).__name__}: {error}; install it with "
            'pip install -e ".[bench]"'
        ) from None


def peer(builder, *args, **kwargs):
    """Runs `builder`, turning a peer's failure into `Skipped`."""
    try:
        return builder(*args, **kwargs)
    except Skipped:
        raise
    except Exception as error:
        raise Skipped(f"{type(error).__name__}: {error}") from error


# -- results ----------------------------------------------------------------


@dataclasses.dataclass
class Table:
    headers: list
    rows: list

    def markdown(self):
        lines = [
            "| " + " | ".join(self.headers) + " |",
            "|" + "|".join("---" for _ in self.headers) + "|",
        ]
        lines += [
            "| " + " | ".join(str(cell) for cell in row) + " |" for row in self.rows
        ]
        return "\n".join(lines)

    def text(self):
        cells = [self.headers] + [[str(cell) for cell in row] for row in self.rows]
        widths = [max(len(row[i]) for row in cells) for i in range(len(self.headers))]
        return "\n".join(
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths))
            for row in cells
        )


@dataclasses.dataclass
class Goal:
    text: str
    met: object  # True, False, or None when it could not be measured
    detail: str

    def verdict(self):
        return {True: "met", False: "not met", None: "not measured"}[self.met]


@dataclasses.dataclass
class SectionResult:
    name: str
    title: str
    setup: str
    tables: list
    goals: list = dataclasses.field(default_factory=list)
    notes: list = dataclasses.field(default_factory=list)
    plots: list = dataclasses.field(default_factory=list)
    elapsed_s: float = 0.0


def ms(seconds):
    return f"{seconds * 1e3:.1f}"


def ratio(numerator, denominator):
    return f"{numerator / denominator:.2f}x"


def agreement_note(claim, agreed_by_batch_size):
    """`claim` followed by whether it held at each batch size."""
    verdicts = ", ".join(
        f"batch {batch_size}: {'yes' if agreed else 'NO'}"
        for batch_size, agreed in agreed_by_batch_size.items()
    )
    return f"{claim}: {verdicts}."


def skipped_row(label, reason, width):
    return [label, f"skipped ({reason})"] + [""] * (width - 2)


def plot(path, draw):
    """Draws with `draw(pyplot)` into a PNG at `path` (Agg backend)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    figure = pyplot.figure(figsize=(10, 4.8))
    try:
        draw(pyplot)
        figure.tight_layout()
        figure.savefig(path, dpi=100)
    finally:
        pyplot.close(figure)
    return os.path.basename(path)


# -- 1. training throughput -------------------------------------------------


def section_training(settings, options):
    inputs, labels = random_batch(
        settings.batch_size, settings.length, settings.vocabulary_size
    )
    dataset = repeated_dataset(inputs, labels)
    tokens = non_padding_tokens(inputs)
    flops = training_flops(
        settings, settings.batch_size, settings.length, settings.num_layers
    )
    without_dropout = dataclasses.replace(settings, dropout=0.0)
    builders = {
        (LIBRARY, settings.dropout): lambda: build_library_model(settings),
        (KERAS_CORE, settings.dropout): lambda: peer(build_keras_core_model, settings),
    }
    skipped = {}
    try:
        keras_hub = import_keras_hub()
        builders[(KERAS_HUB, settings.dropout)] = lambda: peer(
            build_keras_hub_model, keras_hub, settings
        )[0]
        builders[(KERAS_HUB, 0.0)] = lambda: peer(
            build_keras_hub_model, keras_hub, without_dropout
        )[0]
    except Skipped as reason:
        skipped[KERAS_HUB] = str(reason)
    builders[(LIBRARY, 0.0)] = lambda: build_library_model(without_dropout)

    # Candidates are (model, XLA, dropout); the dropout-free ones, XLA only,
    # show what dropout costs.
    candidates = {"matmul": matmul_runner(settings.matmul_size)}
    for jit in (False, True):
        for (label, dropout), build in builders.items():
            if dropout != settings.dropout and not jit:
                continue
            try:
                model = compile_for_training(build(), jit)
            except Skipped as reason:
                skipped[label] = str(reason)
                continue
            candidates[(label, jit, dropout)] = fit_runner(
                model, dataset, settings.steps_per_repeat
            )
    progress(f"training: timing {len(candidates)} candidates")
    timings = time_side_by_side(candidates, options.repeats, options.warmup)
    matmul = timings.pop("matmul")
    flops_per_matmul = 2 * settings.matmul_size**3
    matmul_flops = flops_per_matmul / matmul.median
    throughput = {key: tokens / timing.median for key, timing in timings.items()}

    def fraction_of_matmul(key, by_cpu_time=False):
        """The model's FLOP/s over the matmul's, by wall-clock or CPU time."""
        if by_cpu_time:
            return (flops / timings[key].cpu_median) / (
                flops_per_matmul / matmul.cpu_median
            )
        return flops / timings[key].median / matmul_flops

    headers = [
        "model",
        "XLA",
        "dropout",
        "step ms (median)",
        "min-max ms",
        "CPU ms/step",
        "tokens/s",
        "achieved GFLOP/s",
        "of matmul figure",
        f"vs {KERAS_HUB} (same XLA, dropout)",
        "same, by CPU time",
    ]
    rows = []
    for jit, dropout in (
        (False, settings.dropout),
        (True, settings.dropout),
        (True, 0.0),
    ):
        for label in (LIBRARY, KERAS_HUB, KERAS_CORE):
            key, hub = (label, jit, dropout), (KERAS_HUB, jit, dropout)
            if key not in timings:
                if label in skipped and (jit, dropout) == (True, settings.dropout):
                    rows.append(skipped_row(label, skipped[label], len(headers)))
                continue
            compared = hub in timings
            rows.append(
                [
                    label,
                    "yes" if jit else "no",
                    dropout,
                    ms(timings[key].median),
                    timings[key].spread(),
                    ms(timings[key].cpu_median),
                    f"{throughput[key]:,.0f}",
                    f"{flops / timings[key].median / 1e9:.1f}",
                    f"{fraction_of_matmul(key):.2f}",
                    ratio(throughput[key], throughput[hub]) if compared else "",
                    (
                        ratio(timings[hub].cpu_median, timings[key].cpu_median)
                        if compared
                        else ""
                    ),
                ]
            )

    hub_goal = f"training throughput >= 1.15x {KERAS_HUB} with XLA"
    library, hub = (LIBRARY, True, settings.dropout), (
        KERAS_HUB,
        True,
        settings.dropout,
    )
    if hub in timings:
        speedup = throughput[library] / throughput[hub]
        cpu_speedup = timings[hub].cpu_median / timings[library].cpu_median
        goals = [
            Goal(
                hub_goal,
                speedup >= 1.15,
                f"{speedup:.2f}x (by CPU time: {cpu_speedup:.2f}x)",
            )
        ]
    else:
        goals = [Goal(hub_goal, None, skipped[KERAS_HUB])]
    best = max((LIBRARY, False, settings.dropout), library, key=fraction_of_matmul)
    goals.append(
        Goal(
            "achieved FLOP/s >= 0.8 of the fp32 matmul figure",
            fraction_of_matmul(best) >= 0.8,
            f"{fraction_of_matmul(best):.2f} (best setting: "
            f"{'XLA' if best[1] else 'no XLA'}; by CPU time: "
            f"{fraction_of_matmul(best, by_cpu_time=True):.2f})",
        )
    )

    def draw(pyplot):
        keys = list(throughput)
        pyplot.bar(
            range(len(keys)),
            [throughput[key] for key in keys],
            color=["C0" if key[0] == LIBRARY else "C7" for key in keys],
        )
        pyplot.xticks(
            range(len(keys)),
            [
                f"{label}\n{'XLA' if jit else 'no XLA'}, dropout {dropout}"
                for label, jit, dropout in keys
            ],
            fontsize=7,
        )
        pyplot.ylabel("non-padding tokens / s (source + target)")
        pyplot.title("model.fit throughput, median over repeats")

    plot_name = plot(os.path.join(options.output_dir, "benchmark_training.png"), draw)
    return SectionResult(
        "training",
        "1. Training throughput (`model.fit`)",
        (
            f"{settings.num_layers}+{settings.num_layers} layers, d_model "
            f"{settings.hidden_dim}, {settings.num_heads} heads, FFN "
            f"{settings.intermediate_dim}, vocabulary {settings.vocabulary_size}, "
            f"batch {settings.batch_size}, source and target length "
            f"{settings.length} (rows padded from {settings.length // 2}), dropout "
            f"{settings.dropout} (attention, residual, embedding; none inside the "
            "feed-forward network, as in keras-hub), Adam, the library's masked "
            "cross-entropy for every model, post-norm, tied output projection. One "
            f"batch repeated from memory; {tokens} non-padding tokens per step. "
            f"Step time: median over repeats of {settings.steps_per_repeat}-step "
            "`fit` calls, clocked from the end of the first step. The fp32 matmul "
            f"figure ({settings.matmul_size}x{settings.matmul_size}, `tf.function`) "
            "is timed in the same turns as the models: "
            f"{matmul_flops / 1e9:.1f} GFLOP/s. Training FLOPs per step: "
            f"{flops / 1e9:.2f} GFLOP."
        ),
        [Table(headers, rows)],
        goals=goals,
        notes=[
            "FLOPs per step = 3 x forward; forward per token = 2 x (projection "
            "weights it passes: encoder layer 4d^2 + 2df, decoder layer 8d^2 + "
            "2df, tied output projection dV on the target side) + 4Ld per "
            "attention layer (scores and weighted values; causal half not "
            "subtracted); all B x L positions counted, padding included.",
            f"{KERAS_HUB} and {KERAS_CORE} use learned positions (the library: "
            "sinusoidal); the difference is one addition per token.",
            "The dropout-0 rows are references, not goals: they show what "
            "drawing and applying the dropout masks costs.",
            "CPU ms/step is the process's CPU time per step. On a shared machine "
            "the wall clock also counts waiting for a core; CPU time counts the "
            "work only, so its ratios vary less with the load.",
        ],
        plots=[plot_name],
    )


# -- 2. decoding -------------------------------------------------------------


def cached_decoder(model, max_length, eos_id, jit_compile):
    """`greedy_decode` compiled as one graph (optionally with XLA)."""
    return tf.function(
        lambda source_ids: decoding.greedy_decode(
            model, source_ids, max_length, bos_id=BOS_ID, eos_id=eos_id
        ),
        jit_compile=jit_compile,
        autograph=False,
    )


def uncached_decoder(model, max_length):
    """Greedy decoding by calling the whole model, encoder included, on the
    growing prefix once per generated token (compiled once, dynamic shapes)."""
    forward = tf.function(
        lambda source_ids, target_ids: model(
            {"source_ids": source_ids, "target_ids": target_ids}, training=False
        )[:, -1],
        input_signature=[
            tf.TensorSpec([None, None], tf.int32),
            tf.TensorSpec([None, None], tf.int32),
        ],
    )

    def decode(source_ids):
        target_ids = np.full((source_ids.shape[0], 1), BOS_ID, "int32")
        for _ in range(max_length):
            logits = forward(source_ids, target_ids).numpy()
            logits[:, PAD_ID] = -np.inf  # as greedy_decode: padding is never generated
            tokens = logits.argmax(axis=-1).astype("int32")
            target_ids = np.concatenate([target_ids, tokens[:, None]], axis=1)
        return target_ids[:, 1:]

    return decode


def full_length_eos(model, source_ids, max_length):
    """A token id `model` never generates for `source_ids`, to pass as EOS so
    that decoding runs all `max_length` steps and timings compare equal work."""
    produced = cached_decoder(model, max_length, EOS_ID, False)(source_ids)
    return unused_token(
        produced, model.transformer_layers.target_vocabulary_size
    )


def unused_token(outputs, vocabulary_size):
    produced = set(np.asarray(outputs).ravel().tolist())
    if EOS_ID not in produced:
        return EOS_ID
    return next(
        token
        for token in range(vocabulary_size)
        if token not in produced and token != PAD_ID
    )


def keras_hub_greedy_decoder(keras_hub, parts, settings, max_length, jit):
    """Greedy decoding with keras-hub's cached decoder layers, driven by its
    `GreedySampler` the way keras-hub's `BartSeq2SeqLM` drives it: the
    encoder runs once, the cross-attention caches are filled once, then the
    sampler's loop feeds one token per step."""
    sampler = keras_hub.samplers.GreedySampler()
    num_heads = settings.num_heads
    head_dim = settings.hidden_dim // num_heads
    ops = keras.ops

    def decoder_step(
        token_ids,
        index,
        self_caches,
        cross_caches,
        encoded,
        source_mask,
        cross_update_index=None,
    ):
        hidden = parts.target_embedding(token_ids, start_index=index)
        updated_self, updated_cross = [], []
        for decoder, self_cache, cross_cache in zip(
            parts.decoders, self_caches, cross_caches
        ):
            hidden, self_cache, cross_cache = decoder(
                hidden,
                encoded,
                encoder_padding_mask=source_mask,
                self_attention_cache=self_cache,
                self_attention_cache_update_index=index,
                cross_attention_cache=cross_cache,
                cross_attention_cache_update_index=cross_update_index,
            )
            updated_self.append(self_cache)
            updated_cross.append(cross_cache)
        logits = parts.target_embedding.token_embedding(hidden, reverse=True)
        return logits, updated_self, updated_cross

    def generate(source_ids):
        batch_size = ops.shape(source_ids)[0]
        source_length = ops.shape(source_ids)[1]
        source_mask = ops.not_equal(source_ids, PAD_ID)
        encoded = parts.source_embedding(source_ids)
        for encoder in parts.encoders:
            encoded = encoder(encoded, padding_mask=source_mask)
        prompt = ops.concatenate(
            [
                ops.full((batch_size, 1), BOS_ID, "int32"),
                ops.zeros((batch_size, max_length), "int32"),
            ],
            axis=1,
        )
        empty = ops.zeros((batch_size, 2, max_length + 1, num_heads, head_dim))
        cross_empty = ops.zeros((batch_size, 2, source_length, num_heads, head_dim))
        # One step at position 0 fills the cross-attention caches.
        _, self_caches, cross_caches = decoder_step(
            prompt[:, :1],
            0,
            [empty] * len(parts.decoders),
            [cross_empty] * len(parts.decoders),
            encoded,
            source_mask,
            cross_update_index=0,
        )

        def next_token(prompt, self_caches, index):
            token_ids = ops.slice(prompt, [0, index - 1], [batch_size, 1])
            logits, self_caches, _ = decoder_step(
                token_ids,
                index - 1,
                list(self_caches),
                cross_caches,
                encoded,
                source_mask,
            )
            return logits[:, 0], None, tuple(self_caches)

        generated = sampler(
            next_token, prompt, cache=tuple(self_caches), index=1, stop_token_ids=None
        )
        return generated[:, 1:]

    return tf.function(generate, jit_compile=jit, autograph=False)


def section_decoding(settings, options):
    max_length = settings.decode_length
    model = build_library_model(settings, max_length=max(settings.length, max_length))
    uncached = uncached_decoder(model, max_length)
    library = f"{LIBRARY} greedy_decode (cached)"
    hub = f"{KERAS_HUB} TransformerDecoder cache + GreedySampler"
    baseline = "no cache: whole model per step"
    try:
        keras_hub = import_keras_hub()
        _, hub_parts = peer(
            build_keras_hub_model,
            keras_hub,
            settings,
            max_length=max(settings.length, max_length + 1),
        )
        hub_decoders = {
            jit: keras_hub_greedy_decoder(
                keras_hub, hub_parts, settings, max_length, jit
            )
            for jit in (False, True)
        }
        hub_skipped = None
    except Skipped as reason:
        hub_decoders, hub_skipped = {}, str(reason)

    headers = [
        "decoder",
        "compiled as",
        "batch",
        "ms per call (median)",
        "min-max ms",
        "CPU ms",
        "ms per token",
        "speed-up vs no cache (tf.function)",
    ]
    rows, goals, latencies, same_tokens = [], [], {}, {}
    for batch_size in settings.decode_batch_sizes:
        progress(f"decoding: batch {batch_size}")
        source_ids = random_batch(
            batch_size, settings.length, settings.vocabulary_size, seed=batch_size
        )[0]["source_ids"]
        reference = uncached(source_ids)
        eos_id = unused_token(reference, settings.vocabulary_size)
        cached = {
            jit: cached_decoder(model, max_length, eos_id, jit) for jit in (False, True)
        }
        source_ids = tf.constant(source_ids)
        same_tokens[batch_size] = bool(
            np.array_equal(cached[True](source_ids).numpy(), reference)
        )
        candidates = {
            (library, "XLA"): synced(cached[True], source_ids),
            (library, "tf.function"): synced(cached[False], source_ids),
            (baseline, "tf.function"): synced(uncached, source_ids.numpy()),
        }
        for jit, decoder in hub_decoders.items():
            candidates[(hub, "XLA" if jit else "tf.function")] = synced(
                decoder, source_ids
            )
        timings = time_side_by_side(candidates, options.repeats, options.warmup)
        uncached_median = timings[(baseline, "tf.function")].median
        for (label, compiled), timing in timings.items():
            latencies[(label, compiled, batch_size)] = timing.median
            rows.append(
                [
                    label,
                    compiled,
                    batch_size,
                    ms(timing.median),
                    timing.spread(),
                    ms(timing.cpu_median),
                    f"{timing.median / max_length * 1e3:.2f}",
                    ratio(uncached_median, timing.median),
                ]
            )
        if hub_skipped:
            rows.append(skipped_row(KERAS_HUB, hub_skipped, len(headers)))

        library_xla = timings[(library, "XLA")].median
        speedup = uncached_median / library_xla
        goals.append(
            Goal(
                f">= 10x over the uncached loop, batch {batch_size} "
                "(greedy_decode under XLA; the uncached loop as a tf.function, "
                "since its shapes change every step)",
                speedup >= 10,
                f"{speedup:.1f}x; with greedy_decode as a tf.function too: "
                f"{uncached_median / timings[(library, 'tf.function')].median:.1f}x",
            )
        )
        hub_goal = f">= 1.2x {KERAS_HUB}'s cached greedy decoding, batch {batch_size}"
        if (hub, "XLA") in timings:
            hub_speedup = timings[(hub, "XLA")].median / library_xla
            goals.append(
                Goal(
                    hub_goal + " (both XLA)", hub_speedup >= 1.2, f"{hub_speedup:.2f}x"
                )
            )
        else:
            goals.append(Goal(hub_goal, None, hub_skipped))

    def draw(pyplot):
        labels = list(
            dict.fromkeys((label, compiled) for label, compiled, _ in latencies)
        )
        width = 0.8 / len(settings.decode_batch_sizes)
        for offset, batch_size in enumerate(settings.decode_batch_sizes):
            pyplot.barh(
                np.arange(len(labels)) + offset * width,
                [
                    latencies[(label, compiled, batch_size)] * 1e3
                    for label, compiled in labels
                ],
                width,
                label=f"batch {batch_size}",
            )
        pyplot.yticks(
            np.arange(len(labels)),
            [f"{label}\n({compiled})" for label, compiled in labels],
            fontsize=7,
        )
        pyplot.xscale("log")
        pyplot.xlabel(f"ms to generate {max_length} tokens (median, log scale)")
        pyplot.legend()

    plot_name = plot(os.path.join(options.output_dir, "benchmark_decoding.png"), draw)
    return SectionResult(
        "decoding",
        f"2. Greedy decoding of {max_length} tokens",
        (
            f"The training section's architecture (random weights), source length "
            f"{settings.length}. Every decoder generates exactly {max_length} tokens: "
            "the library's EOS id is set to a token the model never produces for "
            "these sources, and keras-hub's sampler runs without stop tokens. The "
            "uncached baseline calls the whole model (encoder included) on the "
            "growing prefix, once per token, through one `tf.function` with "
            "dynamic shapes. keras-hub has no encoder-decoder task model for its "
            "generic layers, so its decoder is driven the way `BartSeq2SeqLM` "
            "drives it: the encoder runs once, one step at position 0 fills the "
            "cross-attention caches (BART runs the whole prompt instead), then "
            "`GreedySampler` feeds one token per step through "
            "`TransformerDecoder`'s self-attention cache, re-feeding BOS first: "
            f"{max_length + 1} decoder steps for {max_length} tokens."
        ),
        [Table(headers, rows)],
        goals=goals,
        notes=[
            agreement_note(
                "Cached `greedy_decode` (XLA) and the uncached loop produce the "
                "same tokens",
                same_tokens,
            )
        ],
        plots=[plot_name],
    )


# -- 3. LoRA -----------------------------------------------------------------


def section_lora(settings, options):
    inputs, labels = random_batch(
        settings.batch_size, settings.length, settings.vocabulary_size
    )
    dataset = repeated_dataset(inputs, labels)
    full = compile_for_training(build_library_model(settings), jit_compile=True)
    adapted = build_library_model(settings)
    paths = layers.enable_lora(adapted, ("*query", "*value"), rank=settings.lora_rank)
    compile_for_training(adapted, jit_compile=True)
    trainable = count_parameters(adapted.trainable_weights)
    steps = time_side_by_side(
        {
            "full fine-tuning": fit_runner(full, dataset, settings.steps_per_repeat),
            "LoRA q,v": fit_runner(adapted, dataset, settings.steps_per_repeat),
        },
        options.repeats,
        options.warmup,
    )

    source_ids = tf.constant(inputs["source_ids"])
    target_ids = tf.constant(inputs["target_ids"])
    decode_source = source_ids[: settings.decode_batch_sizes[0]]

    def inference(model, eos_id):
        forward = tf.function(
            lambda: model(
                {"source_ids": source_ids, "target_ids": target_ids}, training=False
            ),
            jit_compile=True,
        )
        decode = cached_decoder(model, settings.length, eos_id, jit_compile=True)
        return {"forward": synced(forward), "decode": synced(decode, decode_source)}

    # Each model state gets its own never-generated EOS, so that decoding
    # runs all steps whatever the (fine-tuned) weights produce. Every function
    # is traced at once: tracing reads the adapters' merged state.
    runs = {}
    for model, variant in (
        (adapted, "LoRA unmerged"),
        (adapted, "LoRA merged"),
        (full, "base"),
    ):
        if variant == "LoRA merged":
            layers.merge_lora(adapted)
        eos_id = full_length_eos(model, decode_source, settings.length)
        for task, run in inference(model, eos_id).items():
            run()
            runs[(task, variant)] = run
    latency = time_side_by_side(runs, options.repeats, options.warmup)

    step_ratio = steps["LoRA q,v"].median / steps["full fine-tuning"].median
    full_step, lora_step = steps["full fine-tuning"], steps["LoRA q,v"]
    cpu_ratio = lora_step.cpu_median / full_step.cpu_median
    train_table = Table(
        [
            "training",
            "trainable parameters",
            "of all",
            "step ms (median)",
            "min-max ms",
            "CPU ms/step",
            "vs full",
            "by CPU time",
        ],
        [
            [
                "full fine-tuning",
                f"{count_parameters(full.trainable_weights):,}",
                "100%",
                ms(full_step.median),
                full_step.spread(),
                ms(full_step.cpu_median),
                "1.00x",
                "1.00x",
            ],
            [
                f"LoRA rank {settings.lora_rank} on q,v ({len(paths)} projections)",
                f"{trainable:,}",
                f"{100 * trainable / count_parameters(adapted.weights):.2f}%",
                ms(lora_step.median),
                lora_step.spread(),
                ms(lora_step.cpu_median),
                f"{step_ratio:.2f}x",
                f"{cpu_ratio:.2f}x",
            ],
        ],
    )
    latency_rows = []
    for task, description in (
        ("forward", f"forward pass, batch {settings.batch_size} x {settings.length}"),
        (
            "decode",
            f"greedy_decode, batch {decode_source.shape[0]}, "
            f"{settings.length} tokens",
        ),
    ):
        base = latency[(task, "base")].median
        for variant in ("base", "LoRA merged", "LoRA unmerged"):
            timing = latency[(task, variant)]
            latency_rows.append(
                [
                    description,
                    variant,
                    ms(timing.median),
                    timing.spread(),
                    ms(timing.cpu_median),
                    ratio(timing.median, base),
                ]
            )
    latency_table = Table(
        ["inference (XLA)", "model", "ms (median)", "min-max ms", "CPU ms", "vs base"],
        latency_rows,
    )
    merged_ratio = max(
        latency[(task, "LoRA merged")].median / latency[(task, "base")].median
        for task in ("forward", "decode")
    )

    def draw(pyplot):
        names = ["full fine-tuning", "LoRA q,v"]
        pyplot.bar(
            names, [steps[name].median * 1e3 for name in names], color=["C7", "C0"]
        )
        pyplot.ylabel("ms per training step (median)")
        pyplot.title(
            f"LoRA rank {settings.lora_rank}: {trainable:,} trainable parameters"
        )

    plot_name = plot(os.path.join(options.output_dir, "benchmark_lora.png"), draw)
    return SectionResult(
        "lora",
        "3. LoRA",
        (
            "The training section's model and batch under XLA, Adam. LoRA: "
            f"`enable_lora(model, ('*query', '*value'), rank={settings.lora_rank})`, "
            "which freezes every other weight. Latency: the LoRA model after "
            "`merge_lora` (and before, unmerged) against the fully fine-tuned model "
            "without adapters, compiled with XLA; decoding runs all "
            f"{settings.length} steps."
        ),
        [train_table, latency_table],
        goals=[
            Goal(
                "LoRA step time <= 0.75x full fine-tuning",
                step_ratio <= 0.75,
                f"{step_ratio:.2f}x (by CPU time: {cpu_ratio:.2f}x)",
            ),
            Goal(
                "latency after merge_lora <= 1.02x the base model",
                merged_ratio <= 1.02,
                f"{merged_ratio:.3f}x (worse of forward and decode)",
            ),
        ],
        notes=[
            "After `merge_lora` the adapter branch is skipped, so the merged model "
            "runs the base model's computation: any difference from 1.00x is "
            "measurement noise."
        ],
        plots=[plot_name],
    )


# -- 4. rematerialisation ----------------------------------------------------


def has_remat_field():
    return "remat" in {
        field.name for field in dataclasses.fields(models.TransformerConfig)
    }


def remat_worker(spec):
    """Runs in a fresh process: trains one configuration, prints its numbers."""
    settings = SMOKE if spec["smoke"] else Settings()
    config = library_config(
        settings,
        num_layers=settings.remat_num_layers,
        max_length=settings.remat_length,
        remat=spec["remat"],
    )
    model = compile_for_training(models.build_transformer(config), spec["jit_compile"])
    inputs, labels = random_batch(
        settings.remat_batch_size, settings.remat_length, settings.vocabulary_size
    )
    before = _proc_status_kib("VmRSS")
    train = fit_runner(
        model, repeated_dataset(inputs, labels), settings.remat_steps + 1
    )
    train()  # compiles; its peak is part of the training's peak
    steps = [train() for _ in range(spec["repeats"])]
    print(
        REMAT_RESULT_PREFIX
        + json.dumps(
            {
                "peak_rss_mib": _proc_status_kib("VmHWM") / 1024,
                "ru_maxrss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
                / 1024,
                "before_training_mib": before / 1024,
                "step_seconds": [step.wall for step in steps],
                "step_cpu_seconds": [step.cpu for step in steps],
            }
        ),
        flush=True,
    )


def _proc_status_kib(field):
    """`VmRSS` (resident now) or `VmHWM` (peak resident) of this process.

    `VmHWM` is the peak of this process image alone. `ru_maxrss` is not:
    Linux carries the parent's peak over into a child across fork and exec,
    so a worker started by a big benchmark process would report the
    parent's size.
    """
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field} line")


def run_remat_worker(remat, jit_compile, options):
    spec = {
        "remat": remat,
        "jit_compile": jit_compile,
        "smoke": options.smoke,
        "repeats": options.repeats,
    }
    completed = subprocess.run(
        [sys.executable, os.path.abspath(__file__), "--remat-worker", json.dumps(spec)],
        capture_output=True,
        text=True,
        timeout=SUBPROCESS_TIMEOUT_S,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
    )
    for line in completed.stdout.splitlines():
        if line.startswith(REMAT_RESULT_PREFIX):
            return json.loads(line[len(REMAT_RESULT_PREFIX) :])
    raise RuntimeError(
        f"remat worker {spec} failed (exit {completed.returncode}):\n"
        f"{completed.stderr[-3000:]}"
    )


def section_remat(settings, options):
    title = "4. Rematerialisation (`TransformerConfig.remat`)"
    if not has_remat_field():
        return SectionResult(
            "remat",
            title,
            "",
            [
                Table(
                    ["configuration", "result"],
                    [
                        [
                            "remat on / off",
                            "skipped (this TransformerConfig has no `remat` field)",
                        ]
                    ],
                )
            ],
        )
    results = {}
    for jit in (False, True):
        for remat in (False, True):
            progress(f"remat: worker with remat={remat}, XLA={jit}")
            results[(jit, remat)] = run_remat_worker(remat, jit, options)

    def added(result):
        return result["peak_rss_mib"] - result["before_training_mib"]

    def step(result, clock):
        return statistics.median(result[clock])

    rows = []
    for (jit, remat), result in results.items():
        off = results[(jit, False)]
        rows.append(
            [
                "yes" if jit else "no",
                "on" if remat else "off",
                f"{result['peak_rss_mib']:.0f}",
                f"{added(result):.0f}",
                ratio(added(result), added(off)) if remat else "",
                ms(step(result, "step_seconds")),
                (
                    ratio(step(result, "step_seconds"), step(off, "step_seconds"))
                    if remat
                    else ""
                ),
                ms(step(result, "step_cpu_seconds")),
                (
                    ratio(
                        step(result, "step_cpu_seconds"), step(off, "step_cpu_seconds")
                    )
                    if remat
                    else ""
                ),
            ]
        )
    table = Table(
        [
            "XLA",
            "remat",
            "peak RSS MiB",
            "added by training MiB",
            "vs off",
            "step ms (median)",
            "vs off",
            "CPU ms/step",
            "vs off",
        ],
        rows,
    )

    def draw(pyplot):
        labels = [
            f"{'XLA' if jit else 'no XLA'}\nremat {'on' if remat else 'off'}"
            for jit, remat in results
        ]
        pyplot.bar(
            labels,
            [added(result) for result in results.values()],
            color=["C7", "C0"] * 2,
        )
        pyplot.ylabel("peak RSS added by training (MiB)")

    plot_name = plot(os.path.join(options.output_dir, "benchmark_remat.png"), draw)
    return SectionResult(
        "remat",
        title,
        (
            f"{settings.remat_num_layers}+{settings.remat_num_layers} layers, "
            f"batch {settings.remat_batch_size}, length {settings.remat_length}, "
            "otherwise the training section's model. Each configuration runs in "
            "a fresh process. Peak RSS is the worker's `VmHWM` (/proc/self/status) "
            "after training; 'added by training' subtracts the RSS measured after "
            "building and compiling the model (optimizer slots, created by the "
            "first step, count as added). "
            f"Step time: median over {options.repeats} repeats of "
            f"{settings.remat_steps}-step `fit` calls, after one compiling call."
        ),
        [table],
        notes=[
            "The peak includes compiling the step (graph or XLA), which can "
            "exceed the activations at small sizes.",
            "The peak is `VmHWM`, not `resource.getrusage(RUSAGE_SELF).ru_maxrss`: "
            "Linux carries a parent's peak into a child across fork and exec, so "
            "`ru_maxrss` is at least this benchmark process's size when the worker "
            "starts (it read "
            + ", ".join(f"{r['ru_maxrss_mib']:.0f}" for r in results.values())
            + " MiB here).",
        ],
        plots=[plot_name],
    )


# -- 5. serving --------------------------------------------------------------


def train_small_translator(settings, workdir):
    pairs = data.generate_date_pairs(max(settings.serving_train_steps * 32, 64), seed=0)
    sources = [source for source, _ in pairs]
    targets = [target for _, target in pairs]
    source_tokenizer = data.CharacterTokenizer.from_texts(sources)
    target_tokenizer = data.CharacterTokenizer.from_texts(targets)
    config = models.TransformerConfig(
        source_vocabulary_size=source_tokenizer.vocabulary_size,
        target_vocabulary_size=target_tokenizer.vocabulary_size,
        num_encoder_layers=2,
        num_decoder_layers=2,
        hidden_dim=settings.serving_hidden_dim,
        num_heads=4,
        intermediate_dim=settings.serving_hidden_dim * 2,
        max_source_length=SERVING_MAX_SOURCE_LENGTH,
        max_target_length=SERVING_MAX_TARGET_LENGTH,
    )
    model = models.build_transformer(config)
    model.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        loss=losses.MaskedSparseCategoricalCrossentropy(),
    )
    dataset = data.make_translation_dataset(
        sources,
        targets,
        source_tokenizer,
        target_tokenizer,
        batch_size=32,
        max_source_length=SERVING_MAX_SOURCE_LENGTH,
        max_target_length=SERVING_MAX_TARGET_LENGTH,
        repeat=True,
    )
    model.fit(
        dataset,
        steps_per_epoch=settings.serving_train_steps,
        epochs=1,
        verbose=0,
        shuffle=False,
    )
    export_dir = os.path.join(workdir, "translator")
    export.export_translator(model, source_tokenizer, target_tokenizer, export_dir)
    return model, source_tokenizer, target_tokenizer, export_dir


def section_serving(settings, options):
    with tempfile.TemporaryDirectory() as workdir:
        model, source_tokenizer, target_tokenizer, export_dir = train_small_translator(
            settings, workdir
        )
        translator = tf.saved_model.load(export_dir)
        xla_export_dir = os.path.join(workdir, "translator_xla")
        export.export_translator(
            model, source_tokenizer, target_tokenizer, xla_export_dir, jit_compile=True
        )
        xla_translator = tf.saved_model.load(xla_export_dir)
        max_length = SERVING_MAX_TARGET_LENGTH

        def source_ids_of(texts):
            return source_tokenizer.tokenize(texts).to_tensor(default_value=PAD_ID)

        def decode(source_ids):
            return decoding.greedy_decode(
                model,
                source_ids,
                max_length,
                bos_id=target_tokenizer.bos_id,
                eos_id=target_tokenizer.eos_id,
            )

        in_graph = tf.function(
            lambda texts: target_tokenizer.detokenize(decode(source_ids_of(texts))),
            input_signature=[tf.TensorSpec([None], tf.string)],
            autograph=False,
        )
        tokenize = tf.function(
            source_ids_of,
            input_signature=[tf.TensorSpec([None], tf.string)],
            autograph=False,
        )
        decode_xla = tf.function(decode, jit_compile=True, autograph=False)
        detokenize = tf.function(target_tokenizer.detokenize, autograph=False)

        def xla(texts):
            return detokenize(decode_xla(tokenize(texts)))

        rows, latencies, outputs_agree = [], {}, {}
        test_pairs = data.generate_date_pairs(max(settings.serving_batch_sizes), seed=1)
        for batch_size in settings.serving_batch_sizes:
            texts = tf.constant([source for source, _ in test_pairs[:batch_size]])
            exported = translator.translate(texts).numpy().tolist()
            outputs_agree[batch_size] = (
                exported
                == xla_translator.translate(texts).numpy().tolist()
                == in_graph(texts).numpy().tolist()
                == xla(texts).numpy().tolist()
            )
            candidates = {
                "export: translate": synced(translator.translate, texts),
                "export (jit_compile=True): translate": synced(
                    xla_translator.translate, texts
                ),
                "in-process: one tf.function": synced(in_graph, texts),
                "in-process: decoding under XLA": synced(xla, texts),
            }
            timings = time_side_by_side(candidates, options.repeats, options.warmup)
            exported_median = timings[next(iter(candidates))].median
            for label, timing in timings.items():
                latencies[(label, batch_size)] = timing.median
                rows.append(
                    [
                        label,
                        batch_size,
                        ms(timing.median),
                        timing.spread(),
                        ms(timing.cpu_median),
                        ratio(timing.median, exported_median),
                    ]
                )

    def draw(pyplot):
        labels = list(dict.fromkeys(label for label, _ in latencies))
        width = 0.8 / len(settings.serving_batch_sizes)
        for offset, batch_size in enumerate(settings.serving_batch_sizes):
            pyplot.barh(
                np.arange(len(labels)) + offset * width,
                [latencies[(label, batch_size)] * 1e3 for label in labels],
                width,
                label=f"batch {batch_size}",
            )
        pyplot.yticks(np.arange(len(labels)), labels, fontsize=8)
        pyplot.xlabel("ms per call (median)")
        pyplot.legend()

    plot_name = plot(os.path.join(options.output_dir, "benchmark_serving.png"), draw)
    return SectionResult(
        "serving",
        "5. Serving: exported `translate` vs in-process decoding",
        (
            "A 2+2-layer model (d_model "
            f"{settings.serving_hidden_dim}) trained {settings.serving_train_steps} "
            "steps on the date task with `CharacterTokenizer`s, exported with "
            "`export_translator` and loaded with `tf.saved_model.load`. Inputs are "
            "date strings; decoding stops at EOS (at most "
            f"{SERVING_MAX_TARGET_LENGTH} tokens), identically in every path. "
            "'export: translate' is the loaded SavedModel's endpoint (tokenize, "
            "greedy decoding, detokenize in one graph); 'in-process: one "
            "tf.function' is the same computation traced from the live model; "
            "'in-process: decoding under XLA' tokenizes and detokenizes in their "
            "own `tf.function`s (string ops cannot be compiled by XLA) around "
            "`greedy_decode` compiled with `jit_compile=True`; 'export "
            "(jit_compile=True)' is `export_translator(..., jit_compile=True)`, "
            "whose SavedModel holds that split: the decoding loop as a function "
            "XLA must compile, sources padded to the maximum source length."
        ),
        [
            Table(
                ["path", "batch", "ms (median)", "min-max ms", "CPU ms", "vs export"],
                rows,
            )
        ],
        notes=[
            agreement_note("All paths return the same strings", outputs_agree)
        ],
        plots=[plot_name],
    )


# -- 6. scaling --------------------------------------------------------------


def section_scaling(settings, options):
    try:
        keras_hub = import_keras_hub()
        hub_skipped = None
    except Skipped as reason:
        keras_hub, hub_skipped = None, str(reason)

    def builders(num_layers, length):
        result = {LIBRARY: lambda: build_library_model(settings, num_layers, length)}
        if keras_hub is not None:
            result[KERAS_HUB] = lambda: peer(
                build_keras_hub_model, keras_hub, settings, num_layers, length
            )[0]
        return result

    sweeps = {
        "length": [
            (
                length,
                settings.num_layers,
                length,
                max(settings.scaling_tokens_per_batch // length, 1),
            )
            for length in settings.scaling_lengths
        ],
        "depth": [
            (depth, depth, settings.length, settings.batch_size)
            for depth in settings.scaling_depths
        ],
    }
    results = {}
    rows = []
    for sweep, points in sweeps.items():
        for value, num_layers, length, batch_size in points:
            progress(f"scaling: {sweep} {value}")
            inputs, labels = random_batch(batch_size, length, settings.vocabulary_size)
            dataset = repeated_dataset(inputs, labels)
            candidates = {}
            for label, build in builders(num_layers, length).items():
                try:
                    model = compile_for_training(build(), jit_compile=True)
                except Skipped as reason:
                    hub_skipped = str(reason)
                    continue
                candidates[label] = fit_runner(
                    model, dataset, settings.scaling_steps_per_repeat
                )
            timings = time_side_by_side(candidates, options.repeats, options.warmup)
            for label, timing in timings.items():
                results[(sweep, label, value)] = timing.median
            row = [sweep, value, batch_size, f"{num_layers}+{num_layers}"]
            for label in (LIBRARY, KERAS_HUB):
                row.append(ms(timings[label].median) if label in timings else "skipped")
            compared = KERAS_HUB in timings
            row.append(
                ratio(timings[KERAS_HUB].median, timings[LIBRARY].median)
                if compared
                else ""
            )
            row.append(
                ratio(timings[KERAS_HUB].cpu_median, timings[LIBRARY].cpu_median)
                if compared
                else ""
            )
            rows.append(row)
            keras.backend.clear_session()

    def draw(pyplot):
        for index, (sweep, xlabel) in enumerate(
            (
                ("length", "sequence length (tokens per batch fixed)"),
                ("depth", "encoder layers = decoder layers"),
            )
        ):
            axes = pyplot.subplot(1, 2, index + 1)
            for label, style in ((LIBRARY, "o-"), (KERAS_HUB, "s--")):
                points = sorted(
                    (value, seconds)
                    for (point_sweep, point_label, value), seconds in results.items()
                    if (point_sweep, point_label) == (sweep, label)
                )
                if points:
                    axes.plot(*zip(*points), style, label=label)
            axes.set_xscale("log", base=2)
            axes.set_yscale("log")
            values = sorted(
                {value for point_sweep, _, value in results if point_sweep == sweep}
            )
            axes.set_xticks(values, [str(value) for value in values])
            axes.yaxis.set_major_formatter("{x:.2g}")
            axes.yaxis.set_minor_formatter("{x:.2g}")
            axes.set_xlabel(xlabel)
            axes.set_ylabel("seconds per training step")
            axes.legend(fontsize=8)

    plot_name = plot(os.path.join(options.output_dir, "benchmark_scaling.png"), draw)
    notes = []
    if hub_skipped:
        notes.append(f"{KERAS_HUB}: skipped ({hub_skipped}).")
    return SectionResult(
        "scaling",
        "6. Scaling: step time against sequence length and depth",
        (
            "Training steps under XLA (`fit`, Adam), the training section's "
            "widths. Length sweep: source and target length L with the batch "
            f"adjusted to keep {settings.scaling_tokens_per_batch} positions per "
            f"side (batch = {settings.scaling_tokens_per_batch} / L), "
            f"{settings.num_layers}+{settings.num_layers} layers, so growth beyond "
            "flat is the attention's L^2 term. Depth sweep: batch "
            f"{settings.batch_size}, length {settings.length}."
        ),
        [
            Table(
                [
                    "sweep",
                    "value",
                    "batch",
                    "layers",
                    f"{LIBRARY} step ms",
                    f"{KERAS_HUB} step ms",
                    f"{LIBRARY} speed-up",
                    "by CPU time",
                ],
                rows,
            )
        ],
        notes=notes,
        plots=[plot_name],
    )


# -- report ------------------------------------------------------------------


SECTIONS = {
    "training": section_training,
    "decoding": section_decoding,
    "lora": section_lora,
    "remat": section_remat,
    "serving": section_serving,
    "scaling": section_scaling,
}


def machine_description():
    model_name, processors = "unknown", 0
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    model_name = line.split(":", 1)[1].strip()
                    processors += 1
    except OSError:
        pass
    return f"{model_name}, {processors or os.cpu_count()} logical CPUs"


def uptime():
    try:
        return subprocess.run(
            ["uptime"], capture_output=True, text=True, timeout=10
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "load average %.2f, %.2f, %.2f" % os.getloadavg()


def versions():
    try:
        keras_hub_version = importlib.import_module("keras_hub").__version__
    except Exception as error:
        keras_hub_version = f"not importable ({type(error).__name__})"
    return {
        "python": platform.python_version(),
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "keras-hub": keras_hub_version,
        "numpy": np.__version__,
        "keras_transformer": keras_transformer.__version__,
    }


def render(results, context):
    lines = [
        "# Benchmarks",
        "",
        "Generated by `scripts/benchmark.py`; do not edit by hand. Numbers are "
        "medians over repeats taken side by side in one process; 'min-max' is the "
        "range over the repeats.",
        "",
        f"- command: `{context['command']}`",
        f"- date: {context['date']}",
        f"- machine: {context['machine']}; accelerators: none (CPU only)",
        f"- load at start: `{context['uptime_start']}`",
        f"- load at end: `{context['uptime_end']}`",
        f"- total time: {context['elapsed_min']:.1f} min",
        "- versions: " + ", ".join(f"{k} {v}" for k, v in context["versions"].items()),
        f"- repeats: {context['repeats']} timed after {context['warmup']} warm-up",
        "",
    ]
    goals = [(result, goal) for result in results for goal in result.goals]
    if goals:
        lines += [
            "## Goals",
            "",
            "| section | goal | result | measured |",
            "|---|---|---|---|",
        ]
        lines += [
            f"| {result.name} | {goal.text} | {goal.verdict()} | {goal.detail} |"
            for result, goal in goals
        ]
        lines.append("")
    for result in results:
        lines += [f"## {result.title}", ""]
        if result.setup:
            lines += [result.setup, ""]
        for table in result.tables:
            lines += [table.markdown(), ""]
        lines += [f"- {note}" for note in result.notes]
        if result.notes:
            lines.append("")
        lines += [f"![{result.name}]({name})" for name in result.plots]
        if result.plots:
            lines.append("")
    return "\n".join(lines)


def print_result(result):
    print(f"\n== {result.title} ({result.elapsed_s:.0f} s)")
    for table in result.tables:
        print(table.text())
        print()
    for goal in result.goals:
        print(f"goal: {goal.text}: {goal.verdict()} ({goal.detail})")
    for note in result.notes:
        print(f"note: {note}")
    sys.stdout.flush()


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--sections",
        nargs="+",
        choices=SECTION_NAMES,
        default=list(SECTION_NAMES),
        help="sections to run, in order",
    )
    parser.add_argument(
        "--repeats",
        type=int,
        default=5,
        help="timed repeats per candidate (median reported)",
    )
    parser.add_argument(
        "--warmup", type=int, default=1, help="untimed repeats per candidate first"
    )
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="tiny sizes: checks the script in seconds, numbers mean nothing",
    )
    parser.add_argument(
        "--output-dir",
        help="where benchmarks.md and the PNGs go (default: docs/, "
        "or a new temporary folder with --smoke)",
    )
    parser.add_argument("--remat-worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.warmup < 0:
        parser.error("--repeats must be >= 1 and --warmup >= 0")
    return args


def main(argv=None):
    options = parse_args(argv)
    if options.remat_worker:
        remat_worker(json.loads(options.remat_worker))
        return 0
    if options.output_dir is None:
        options.output_dir = (
            tempfile.mkdtemp(prefix="benchmark-smoke-")
            if options.smoke
            else os.path.join(REPOSITORY, "docs")
        )
    os.makedirs(options.output_dir, exist_ok=True)
    settings = SMOKE if options.smoke else Settings()
    keras.utils.set_random_seed(0)
    started = time.perf_counter()
    context = {
        "command": "python "
        + " ".join(
            shlex.quote(arg)
            for arg in [os.path.relpath(__file__, REPOSITORY)]
            + list(sys.argv[1:] if argv is None else argv)
        ),
        "date": datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
        "machine": machine_description(),
        "uptime_start": uptime(),
        "versions": versions(),
        "repeats": options.repeats,
        "warmup": options.warmup,
    }
    results = []
    for name in options.sections:
        section_started = time.perf_counter()
        result = SECTIONS[name](settings, options)
        result.elapsed_s = time.perf_counter() - section_started
        print_result(result)
        results.append(result)
        keras.backend.clear_session()
    context["uptime_end"] = uptime()
    context["elapsed_min"] = (time.perf_counter() - started) / 60
    path = os.path.join(options.output_dir, "benchmarks.md")
    with open(path, "w", encoding="utf-8") as report:
        report.write(render(results, context) + "\n")
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
