"""Section 7: the corpus recipe's training path, `Translator.fit` on texts,
next to its own compiled step and to keras-hub's layers in the same
pipeline.

A synthetic corpus with Multi30k's shape (sentence lengths drawn around
Multi30k's subword lengths, a joint vocabulary of `fit_vocabulary_size`
words) trains the corpus recipe's model (`recipes.CORPUS.model`) in
several ways, epoch by epoch in turns, so a change of machine load hits all
alike. "The recipe's precision" is the dtype policy `recipes.CORPUS` picks
on this machine (`Recipe.dtype_policy`: mixed_bfloat16 on CPUs that
multiply bfloat16 natively), compiled as `fit` compiles it under
`jit_compile="auto"` (XLA, except for bfloat16 on such CPUs):

- ceiling: the same model's `train_on_batch` on one fixed 128 x 16 batch
  (2,048 target tokens, no padding), at the recipe's precision: what a step
  costs with nothing around it;
- packed rows: `fit(pack=True)` at the recipe's precision, several pairs
  to a row, rows of two lengths (short ones for most pairs, long ones for
  the longest: almost no padding): the recipe's path;
- packed step alone: the ceiling's step on the shape of the packed path's
  short rows (most of its batches), every row full;
- fit on the packed step's batch: `fit` on a dataset that repeats that one
  batch: what `fit`'s loop and input pipeline cost around the step;
- packed rows, float32, XLA: the recipe's path on CPUs without native
  bfloat16 (and, but for its rows' two lengths, the last release's path);
- old path: `fit` as the library ran it before (float32, dynamic batch
  shapes, no XLA, buckets 4 tokens wide);
- keras-hub: keras-hub's `TransformerEncoder`/`TransformerDecoder` of the
  same shape in float32 as its examples train them, in the length-bucket
  pipeline (static shapes, XLA; its position embedding cannot restart
  positions inside a packed row).

Each turn of a `fit` path is one `fit` call of two epochs, of which the
second is timed: an epoch as the epochs after the first of a long run go.
The paths of this release read one repeating dataset with `steps_per_epoch`
set to a pass, as `Translator.fit` on texts does (no new iterator, so no
refilled shuffle buffer, at an epoch's start); the old path reads the
finite dataset anew every epoch, as it did. Tokens per second count real
(non-padding) target tokens over the time of the timed epoch's training
steps (`callbacks.TrainingSpeed`): for the finite dataset one pass of the
pairs, for the repeating one the mean real tokens of an epoch of its
batches (counted by reading it), which are a few more than one pass: its
batches are all full, where the finite dataset ends each row shape or
bucket with an incomplete batch. Compile seconds are the first turn's
steps slower than 4x the median. Tokens per CPU-second (the turn's CPU time
over both its epochs' target tokens) are given beside them: on this shared
machine some turns run at half the wall speed for the same CPU time (as if
on one core). A goal is met only when both measures meet it. Ratios
between paths are medians over the turns of the ratio within a turn, the
recipe's path timed right after the ceiling: a change of machine load
between turns (medians of 3 turns move by 10% from one run to the next
here) then hits both sides of a ratio alike.
"""

import time

import keras
import numpy as np
import tensorflow as tf

from benchmarks.common import (
    KERAS_HUB,
    Goal,
    SectionResult,
    Skipped,
    Table,
    import_keras_hub,
    peer,
    progress,
    skipped_row,
)
from keras_transformer import callbacks, losses
from keras_transformer.data import packing, pipeline
from keras_transformer.models.transformer import PACKED_INPUTS
from keras_transformer.translation import Translator, recipes, training

CEILING, OLD = "ceiling: fixed-shape step", "old fit path"
PACKED_CEILING = "packed step alone: full rows"
LOOP = "fit on the packed step's batch"
# Between the logarithms of a Multi30k pair's source and target lengths in
# the corpus recipe's subwords.
LENGTH_CORRELATION = 0.84
PACKED_FLOAT32, PACKED = "packed rows, float32, XLA", "packed rows (the recipe)"


def synthetic_corpus(num_pairs, vocabulary_size, seed=0):
    """Word "sentences" with Multi30k-like lengths (subword tokens: median
    15 on the source side, 16 on the target side, a long right tail), a
    target's length correlated with its source's as in Multi30k
    (`LENGTH_CORRELATION`), which decides how full packed rows are."""
    rng = np.random.default_rng(seed)
    words = [f"w{index}" for index in range(vocabulary_size)]
    source_spread = rng.standard_normal(num_pairs)
    target_spread = LENGTH_CORRELATION * source_spread + np.sqrt(
        1 - LENGTH_CORRELATION**2
    ) * rng.standard_normal(num_pairs)

    def sentences(median, spread):
        lengths = np.clip(np.exp(np.log(median) + 0.35 * spread), 2, 60)
        return [
            " ".join(rng.choice(words, int(length))) for length in lengths.round()
        ]

    return sentences(15, source_spread), sentences(16, target_spread)


def keras_hub_twin(keras_hub, translator):
    """keras-hub's layers in the translator's shape, as keras-hub's own
    translation example builds them (learned positions, post-norm)."""
    config = translator.config
    vocabulary, width = config.target_vocabulary_size, config.hidden_dim
    source_ids = keras.Input((None,), dtype="int32", name="source_ids")
    target_ids = keras.Input((None,), dtype="int32", name="target_ids")
    embed = keras_hub.layers.TokenAndPositionEmbedding(
        vocabulary,
        max(config.max_source_length, config.max_target_length),
        width,
        mask_zero=True,
    )
    encoded = embed(source_ids)
    for _ in range(config.num_encoder_layers):
        encoded = keras_hub.layers.TransformerEncoder(
            config.intermediate_dim, config.num_heads, dropout=config.dropout
        )(encoded)
    decoded = embed(target_ids)
    for _ in range(config.num_decoder_layers):
        decoded = keras_hub.layers.TransformerDecoder(
            config.intermediate_dim, config.num_heads, dropout=config.dropout
        )(decoded, encoded)
    logits = keras.layers.Dense(vocabulary, dtype="float32")(decoded)
    model = keras.Model({"source_ids": source_ids, "target_ids": target_ids}, logits)
    model.compile(
        optimizer=keras.optimizers.Adam(1e-3, beta_2=0.98, epsilon=1e-9),
        loss=losses.MaskedSparseCategoricalCrossentropy(
            label_smoothing=0.1, padding_id=translator.padding_id
        ),
        jit_compile=True,
    )
    return model


def run(settings, options):
    recipe = recipes.CORPUS
    model_fields = dict(recipe.model)
    if settings.fit_hidden_dim is not None:
        model_fields.update(
            hidden_dim=settings.fit_hidden_dim,
            intermediate_dim=2 * settings.fit_hidden_dim,
            num_encoder_layers=1,
            num_decoder_layers=1,
        )
    sources, targets = synthetic_corpus(settings.fit_pairs, settings.fit_vocabulary_size)
    translator = Translator.from_texts(
        sources, targets, tokenizer="word", joint_vocabulary=True, **model_fields
    )
    tokens_per_batch = settings.fit_tokens_per_batch
    longest = max(translator.max_source_length, translator.max_target_length)
    old_buckets = list(range(1 + recipe.bucket_width, longest + 1, recipe.bucket_width))
    new_buckets = recipe.bucket_boundaries(longest)
    pairs = pipeline.tokenize_pairs(
        sources, targets, translator.source_tokenizer, translator.target_tokenizer,
        translator.max_source_length, translator.max_target_length,
    )  # fmt: skip
    source_tokens, target_tokens = pairs.source_tokens, pairs.label_tokens

    def dataset(static_shapes, buckets, pack=False, repeat=False):
        return translator.make_dataset(
            sources, targets, tokens_per_batch=tokens_per_batch,
            bucket_boundaries=buckets, static_shapes=static_shapes, pack=pack,
            repeat=repeat,
        )  # fmt: skip

    def epoch_runner(model, data, steps_per_epoch=None, tokens=None):
        """A two-epoch `model.fit`; returns the second epoch's speed (and the
        compile seconds of both). `steps_per_epoch`: a repeating `data`'s
        pass; `tokens`: the real `(source, target)` tokens of an epoch, one
        pass of the pairs unless given."""
        epoch_source_tokens, epoch_target_tokens = tokens or (
            source_tokens, target_tokens
        )

        def run_epoch():
            speed = callbacks.TrainingSpeed(epoch_source_tokens, epoch_target_tokens)
            started = time.process_time()
            keras.Model.fit(
                model, data, epochs=2, steps_per_epoch=steps_per_epoch,
                verbose=0, callbacks=[speed],
            )  # fmt: skip
            cpu_seconds = time.process_time() - started
            return {
                **speed.epochs[-1],
                "target_tokens_per_cpu_second": 2 * epoch_target_tokens / cpu_seconds,
                "compile_seconds": sum(e["compile_seconds"] for e in speed.epochs),
            }

        return run_epoch

    def stream_epoch(data, steps, epochs=4):
        """The mean real source and target tokens and target positions of an
        epoch of `steps` batches of the repeating `data`, over its first
        `epochs` epochs (they differ by less than 0.1%)."""
        counts = np.zeros(3)
        for inputs, labels in data.take(epochs * steps):
            counts += (
                np.count_nonzero(inputs["source_ids"] != translator.padding_id),
                np.count_nonzero(labels != translator.padding_id),
                np.prod(labels.shape),
            )
        return counts / epochs

    # The real target tokens and the target positions of an epoch of each
    # repeating dataset, by path.
    stream_targets = {}

    def repeating_runner(label, model, static_shapes, buckets, pack=False):
        """`epoch_runner` on the repeating dataset, as `Translator.fit` reads
        it, crediting the real tokens of an epoch of its batches; notes
        their target counts under `label` in `stream_targets`."""
        steps = len(dataset(static_shapes, buckets, pack=pack))
        data = dataset(static_shapes, buckets, pack=pack, repeat=True)
        epoch_sources, epoch_targets, positions = stream_epoch(data, steps)
        stream_targets[label] = epoch_targets, positions
        return epoch_runner(
            model, data, steps_per_epoch=steps,
            tokens=(round(epoch_sources), round(epoch_targets)),
        )  # fmt: skip

    def fixed_batch(rows, length, segments=1):
        """One `rows` x `length` batch of random ids with no padding;
        `segments` > 1 packs that many equal pairs to a row."""
        rng = np.random.default_rng(0)
        ids = {
            name: rng.integers(4, settings.fit_vocabulary_size, (rows, length)).astype("int32")
            for name in ("source_ids", "target_ids")
        }  # fmt: skip
        if segments > 1:
            segment_ids = np.repeat(np.arange(1, segments + 1), length // segments)
            for name in PACKED_INPUTS:
                ids[name] = np.tile(segment_ids, (rows, 1)).astype("int32")
        labels = rng.integers(4, settings.fit_vocabulary_size, (rows, length)).astype("int32")
        return ids, labels

    # The fixed-shape steps run as many steps a turn as the old path.
    fixed_steps = len(dataset(False, old_buckets))

    def ceiling_runner(model, batch):
        """`train_on_batch` on one fixed `batch`."""
        ids, labels = batch

        def run_epoch():
            for _ in range(2):
                model.train_on_batch(ids, labels)
            started, cpu_started = time.perf_counter(), time.process_time()
            for _ in range(fixed_steps):
                model.train_on_batch(ids, labels)
            seconds = time.perf_counter() - started
            cpu_seconds = time.process_time() - cpu_started
            return {"target_tokens_per_second": fixed_steps * labels.size / seconds,
                    "target_tokens_per_cpu_second": fixed_steps * labels.size / cpu_seconds,
                    "compile_seconds": 0.0}  # fmt: skip

        return run_epoch

    def loop_runner(model, batch):
        """`epoch_runner` on one fixed `batch`, repeated: `fit`'s loop and
        input pipeline around `train_on_batch`'s step, with no padding."""
        ids, labels = batch
        data = tf.data.Dataset.from_tensors(batch).repeat()
        return epoch_runner(
            model, data, steps_per_epoch=fixed_steps,
            tokens=(fixed_steps * ids["source_ids"].size, fixed_steps * labels.size),
        )  # fmt: skip

    row_shapes = packing.row_shapes(pairs)

    def fill(data):
        """Share of the target positions of one epoch that are real tokens."""
        positions = sum(int(np.prod(labels.shape)) for _, labels in data)
        return f"{target_tokens / positions:.0%}"

    progress("fit path: building the candidates")
    policy = recipe.dtype_policy()

    def recipe_translator():
        """The translator at the recipe's precision, compiled as `fit`
        compiles the recipe's run (`training.use_xla_for_run` on a run long
        enough for XLA to repay its packed programs)."""
        model = Translator(
            translator.config, translator.source_tokenizer,
            translator.target_tokenizer, dtype=policy,
        )  # fmt: skip
        model.compile()
        training.use_xla_for_run(
            model, packing.MAX_ROW_SHAPES * training.XLA_STEPS_PER_PROGRAM, None,
            pack=True,
        )  # fmt: skip
        return model

    def step_model():
        """A copy of the recipe's translator for `train_on_batch`, compiled
        with its loss and XLA choice."""
        model = recipe_translator()
        model.compile(optimizer="adam", loss=model.loss, jit_compile=model.jit_compile)
        return model

    candidates = {}
    packed = recipe_translator()
    recipe_precision = (
        f"{training.layers_policy_name(packed)}, "
        f"{'XLA' if packed.jit_compile else 'no XLA'}"
    )
    candidates[CEILING] = ceiling_runner(
        step_model(), fixed_batch(max(1, tokens_per_batch // 16), 16)
    )
    candidates[PACKED] = repeating_runner(
        PACKED, packed, packed.jit_compile, None, pack=True
    )
    # The packed path's own step: the batch shape of its short rows (most of
    # its batches), every row full of pairs of 16 tokens.
    row_length = row_shapes[0][1]
    packed_batch = fixed_batch(
        max(1, tokens_per_batch // row_length), row_length,
        segments=max(1, row_length // 16),
    )  # fmt: skip
    candidates[PACKED_CEILING] = ceiling_runner(step_model(), packed_batch)
    candidates[LOOP] = loop_runner(step_model(), packed_batch)
    packed_float32 = Translator.from_config(translator.get_config())
    packed_float32.compile(jit_compile=True)
    candidates[PACKED_FLOAT32] = repeating_runner(
        PACKED_FLOAT32, packed_float32, True, None, pack=True
    )
    old = Translator.from_config(translator.get_config())
    old.compile(jit_compile=False)
    candidates[OLD] = epoch_runner(old, dataset(False, old_buckets))
    skipped = None
    try:
        hub = peer(keras_hub_twin, import_keras_hub(), translator)
        candidates[KERAS_HUB] = repeating_runner(KERAS_HUB, hub, True, new_buckets)
    except Skipped as reason:
        skipped = str(reason)

    # The first turn of each compiles (counted); the rest are timed in turns.
    first = {label: run_epoch() for label, run_epoch in candidates.items()}
    timed = {label: [] for label in candidates}
    for repeat in range(options.repeats):
        progress(f"fit path: repeat {repeat + 1}/{options.repeats}")
        for label, run_epoch in candidates.items():
            timed[label].append(run_epoch())

    def by_turn(key):
        return {label: [turn[key] for turn in turns] for label, turns in timed.items()}

    wall = by_turn("target_tokens_per_second")
    speed = {label: float(np.median(values)) for label, values in wall.items()}
    cpu = by_turn("target_tokens_per_cpu_second")
    cpu_speed = {label: float(np.median(values)) for label, values in cpu.items()}

    def paired(label, reference, speeds):
        """The median over the turns of `label`'s speed over `reference`'s in
        the same turn."""
        return float(np.median(np.divide(speeds[label], speeds[reference])))

    def versus(label, reference):
        return (
            f"{paired(label, reference, wall):.2f}x, "
            f"{paired(label, reference, cpu):.2f}x"
        )
    headers = ["path", "target tokens/s (median)", "min-max",
               "tokens per CPU-s (median)", "compile s (first turn)",
               "vs ceiling (wall, CPU; by turn)", "vs old path (wall, CPU; by turn)"]  # fmt: skip
    rows = [
        [
            label,
            f"{speed[label]:,.0f}",
            f"{min(wall[label]):,.0f}-{max(wall[label]):,.0f}",
            f"{cpu_speed[label]:,.0f}",
            f"{first[label]['compile_seconds']:.0f}",
            versus(label, CEILING),
            versus(label, OLD),
        ]
        for label in candidates
    ]
    if skipped:
        rows.append(skipped_row(KERAS_HUB, skipped, len(headers)))
    overhead = paired(CEILING, PACKED, wall) - 1
    # One epoch of the packed path's finite dataset, packed once for both
    # notes that read it.
    packed_epoch = list(dataset(True, None, pack=True))
    long_batches = sum(labels.shape[1] != row_length for _, labels in packed_epoch)
    cpu_overhead = paired(CEILING, PACKED, cpu) - 1
    packed_overhead = paired(PACKED_CEILING, PACKED, wall) - 1
    packed_cpu_overhead = paired(PACKED_CEILING, PACKED, cpu) - 1
    loop_overhead = paired(PACKED_CEILING, LOOP, wall) - 1
    loop_cpu_overhead = paired(PACKED_CEILING, LOOP, cpu) - 1
    packed_targets, packed_positions = stream_targets[PACKED]
    bucket_fill = (
        f"{np.divide(*stream_targets[KERAS_HUB]):.0%}" if KERAS_HUB in stream_targets
        else fill(dataset(True, new_buckets))
    )  # fmt: skip
    speedup, cpu_speedup = paired(PACKED, OLD, wall), paired(PACKED, OLD, cpu)
    setup = (
        f"{settings.fit_pairs:,} synthetic pairs ({target_tokens:,} target tokens an "
        f"epoch), {tokens_per_batch} tokens a batch, the corpus recipe's model "
        f"({model_fields['num_encoder_layers']}+{model_fields['num_decoder_layers']} "
        f"layers, d {model_fields['hidden_dim']}) at the recipe's precision here: "
        f"{recipe_precision}; old buckets {len(old_buckets) + 1}; packed rows of "
        + " and ".join(
            f"{target} target and {source} source positions"
            for source, target in row_shapes
        )
        + ". "
        "The first turn of each path compiles and is not timed; a turn of a fit "
        "path is a two-epoch fit whose second epoch is timed (this release's paths "
        "on one repeating dataset, as Translator.fit reads it; the old path on the "
        "finite one, read anew every epoch)."
    )
    return SectionResult(
        name="fit_path",
        title="7. The training path: `Translator.fit` against its own step",
        setup=setup,
        tables=[Table(headers, rows)],
        goals=[
            Goal(
                "fit overhead over the compiled step <= 10%",
                max(overhead, cpu_overhead) <= 0.10,
                f"{100 * overhead:.0f}% by wall time, {100 * cpu_overhead:.0f}% by "
                "CPU time (packed rows, padding included)",
            ),
            Goal(
                "fit tokens/s >= 1.3x the old path",
                min(speedup, cpu_speedup) >= 1.3,
                f"{speedup:.2f}x by wall time, {cpu_speedup:.2f}x by CPU time",
            ),
        ],
        notes=[
            "The ceiling's batch has no padding; the fit paths' tokens/s count real "
            "tokens only, so padding (within length buckets, or at the end of a "
            "packed row) counts as overhead.",
            f"Real target tokens of the positions: {fill(dataset(False, old_buckets))} "
            f"in the old path's buckets, {bucket_fill} in the recipe's length "
            f"buckets (keras-hub's pipeline), {packed_targets / packed_positions:.1%} "
            f"in packed rows ({fill(packed_epoch)} in the finite dataset, whose last "
            "batch of each row shape is topped up with empty rows).",
            "An epoch of the packed path's repeating dataset holds "
            f"{packed_targets / target_tokens - 1:.1%} more real target "
            "tokens than one pass of the pairs (its batches are all full): its "
            "tokens/s count those.",
            "The packed step alone runs the batch shape of the packed path's short "
            f"rows ({tokens_per_batch // row_length} x {row_length}), every row full "
            "(pairs of 16 tokens): against it, the packed path's overhead is "
            f"{100 * packed_overhead:.0f}% by wall time, "
            f"{100 * packed_cpu_overhead:.0f}% by CPU time (the padding at the "
            f"rows' ends, the batches of long rows ({long_batches} of "
            f"{len(packed_epoch)}) and the loop). What it lacks against the fixed "
            f"128 x 16 step is its step: attention over rows of {row_length} "
            "positions.",
            "Fit on the packed step's batch repeated (a repeating dataset of that "
            "one batch, two-epoch turns as the fit paths) costs "
            f"{100 * loop_overhead:.0f}% by wall time and "
            f"{100 * loop_cpu_overhead:.0f}% by CPU time over `train_on_batch` "
            "on it: the cost of `fit`'s loop and input pipeline alone.",
        ],
    )
