"""Section 4: peak memory (a fresh process per configuration, started
through `scripts/benchmark.py --remat-worker`) and step time with and
without `TransformerConfig.remat`."""

import dataclasses
import json
import os
import resource
import statistics
import subprocess
import sys

from keras_transformer import models

from benchmarks.common import (
    REPOSITORY,
    SMOKE,
    SectionResult,
    Settings,
    Table,
    compile_for_training,
    fit_runner,
    library_config,
    ms,
    plot,
    progress,
    random_batch,
    ratio,
    repeated_dataset,
)

REMAT_RESULT_PREFIX = "REMAT_RESULT "
SUBPROCESS_TIMEOUT_S = 1800
# Workers run through the entry script, which sets up the imports.
ENTRY_POINT = os.path.join(REPOSITORY, "scripts", "benchmark.py")


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
        [sys.executable, ENTRY_POINT, "--remat-worker", json.dumps(spec)],
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


def run(settings, options):
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
