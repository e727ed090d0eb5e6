"""What every benchmark section shares: settings, clocks, the three models
(this library, keras-hub, Keras core layers), optional peers and result
tables."""

import dataclasses
import importlib
import os
import statistics
import sys
import time
import typing

import keras
import numpy as np
import tensorflow as tf

from keras_transformer import _files, losses, models


# scripts/benchmarks/common.py -> the repository root.
REPOSITORY = os.path.dirname(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
)
LIBRARY = "keras_transformer"
KERAS_HUB = "keras-hub"
KERAS_CORE = "keras MultiHeadAttention"
BOS_ID, EOS_ID, PAD_ID = 2, 3, 0


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
    fit_pairs: int = 4000
    fit_vocabulary_size: int = 4000
    # None: the corpus recipe's model as it is; a width: a 1+1-layer model
    # of that width (the quick settings' smoke run).
    fit_hidden_dim: typing.Optional[int] = None
    fit_tokens_per_batch: int = 2048


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
    fit_pairs=64,
    fit_vocabulary_size=50,
    fit_hidden_dim=16,
    fit_tokens_per_batch=128,
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


def latency_bars(latencies, batch_sizes):
    """A `draw` for `plot`: horizontal bars of median ms per call, one bar
    per batch size for each label of `latencies` ({(label, batch): s})."""

    def draw(pyplot):
        labels = list(dict.fromkeys(label for label, _ in latencies))
        width = 0.8 / len(batch_sizes)
        for offset, batch_size in enumerate(batch_sizes):
            pyplot.barh(
                np.arange(len(labels)) + offset * width,
                [latencies[(label, batch_size)] * 1e3 for label in labels],
                width,
                label=f"batch {batch_size}",
            )
        pyplot.yticks(np.arange(len(labels)), labels, fontsize=8)
        pyplot.xlabel("ms per call (median)")
        pyplot.legend()

    return draw


def plot(path, draw):
    """Draws with `draw(pyplot)` into a PNG at `path` (Agg backend)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    figure = pyplot.figure(figsize=(10, 4.8))
    try:
        draw(pyplot)
        figure.tight_layout()
        with _files.atomic_write(path, "wb", "the plot") as file:
            figure.savefig(file, format="png", dpi=100)
    finally:
        pyplot.close(figure)
    return os.path.basename(path)
