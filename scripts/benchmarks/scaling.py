"""Section 6: training step time as the sequence length and the depth
grow."""

import os

import keras

from benchmarks.common import (
    KERAS_HUB,
    LIBRARY,
    SectionResult,
    Skipped,
    Table,
    build_keras_hub_model,
    build_library_model,
    compile_for_training,
    fit_runner,
    import_keras_hub,
    ms,
    peer,
    plot,
    progress,
    random_batch,
    ratio,
    repeated_dataset,
    time_side_by_side,
)


def run(settings, options):
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
