"""Section 1: `model.fit` throughput of one encoder-decoder built with this
library, with keras-hub's `TransformerEncoder`/`TransformerDecoder` and with
`keras.layers.MultiHeadAttention`, with and without XLA; achieved FLOP/s as
a fraction of a plain fp32 matmul's."""

import dataclasses
import os

from benchmarks.common import (
    Goal,
    KERAS_CORE,
    KERAS_HUB,
    LIBRARY,
    SectionResult,
    Skipped,
    Table,
    build_keras_core_model,
    build_keras_hub_model,
    build_library_model,
    compile_for_training,
    fit_runner,
    import_keras_hub,
    matmul_runner,
    ms,
    non_padding_tokens,
    peer,
    plot,
    progress,
    random_batch,
    ratio,
    repeated_dataset,
    skipped_row,
    time_side_by_side,
    training_flops,
)


def run(settings, options):
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
