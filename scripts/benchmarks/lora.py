"""Section 3: trainable fraction and step time of LoRA on q and v against
full fine-tuning; inference latency after `merge_lora` against the base
model."""

import os

import tensorflow as tf

from keras_transformer import layers

from benchmarks.common import (
    Goal,
    SectionResult,
    Table,
    build_library_model,
    compile_for_training,
    count_parameters,
    fit_runner,
    ms,
    plot,
    random_batch,
    ratio,
    repeated_dataset,
    synced,
    time_side_by_side,
)
from benchmarks.decoding import cached_decoder, full_length_eos


def run(settings, options):
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
