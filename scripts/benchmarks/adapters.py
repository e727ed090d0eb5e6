"""Section 8: serving latency of a multi-adapter export against a merged
export and the plain base export."""

import os
import tempfile

import numpy as np
import tensorflow as tf

from keras_transformer import data
from keras_transformer.translation import Translator, adapters, export

from benchmarks.common import (
    Goal,
    SectionResult,
    Table,
    agreement_note,
    latency_bars,
    ms,
    plot,
    ratio,
    synced,
    time_side_by_side,
)

# The adapter path may cost at most this much more than the base (median).
ADAPTER_OVERHEAD_GOAL = 1.15
ADAPTERS = ("first", "second")


def adapted_translator(settings):
    """A 2+2-layer date-task translator with two rank-8 query/value adapters.

    The adapters' B matrices are small random values (not trained), so they
    change the arithmetic of every adapted projection but not the decoded
    lengths: every path decodes the same number of steps.
    """
    pairs = data.generate_date_pairs(max(settings.serving_train_steps * 32, 64), seed=0)
    sources = [source for source, _ in pairs]
    targets = [target for _, target in pairs]
    translator = Translator.from_texts(
        sources,
        targets,
        tokenizer="character",
        num_encoder_layers=2,
        num_decoder_layers=2,
        hidden_dim=settings.serving_hidden_dim,
        num_heads=4,
        intermediate_dim=settings.serving_hidden_dim * 2,
        dropout=0.0,
    )
    translator.compile(learning_rate=5e-3, warmup_steps=50)
    translator.fit(sources, targets, epochs=1, batch_size=32, verbose=0)
    rng = np.random.default_rng(0)
    for name in ADAPTERS:
        for path in translator.add_adapter(name, rank=settings.lora_rank):
            _, kernel_b = translator._adapter_bank.kernels(name, path)
            kernel_b.assign(rng.standard_normal(kernel_b.shape) * 1e-3)
    return translator, sources


def run(settings, options):
    translator, sources = adapted_translator(settings)
    with tempfile.TemporaryDirectory() as workdir:
        merged = translator.merge_adapter(ADAPTERS[0])
        plain = adapters.without_adapters(translator)
        serving = {}
        for label, model in (("base", plain), ("multi", translator), ("merged", merged)):
            version = model.export(os.path.join(workdir, label))
            serving[label] = export.load_translator(version).signatures[
                "serving_default"
            ]
        rows, latencies, agree = [], {}, {}
        for batch_size in settings.serving_batch_sizes:
            texts = tf.constant(sources[:batch_size])

            def multi(name):
                names = tf.constant([name] * batch_size)
                return lambda: serving["multi"](texts=texts, adapter=names)

            calls = {
                "plain export (base)": lambda: serving["base"](texts=texts),
                "multi-adapter export, adapter ''": multi(""),
                f"multi-adapter export, adapter '{ADAPTERS[0]}'": multi(ADAPTERS[0]),
                f"merged export ('{ADAPTERS[0]}')": lambda: serving["merged"](
                    texts=texts
                ),
            }
            outputs = {
                label: call()["translations"].numpy().tolist()
                for label, call in calls.items()
            }
            candidates = {
                label: synced(lambda call=call: call()["translations"])
                for label, call in calls.items()
            }
            labels = list(outputs)
            agree[batch_size] = (
                outputs[labels[0]] == outputs[labels[1]]
                and outputs[labels[2]] == outputs[labels[3]]
            )
            timings = time_side_by_side(candidates, options.repeats, options.warmup)
            base_median = timings[labels[0]].median
            for label, timing in timings.items():
                latencies[(label, batch_size)] = timing.median
                rows.append(
                    [
                        label,
                        batch_size,
                        ms(timing.median),
                        timing.spread(),
                        ms(timing.cpu_median),
                        ratio(timing.median, base_median),
                    ]
                )
    overheads = {
        batch_size: latencies[(f"multi-adapter export, adapter '{ADAPTERS[0]}'", batch_size)]
        / latencies[("plain export (base)", batch_size)]
        for batch_size in settings.serving_batch_sizes
    }

    plot_name = plot(
        os.path.join(options.output_dir, "benchmark_adapters.png"),
        latency_bars(latencies, settings.serving_batch_sizes),
    )
    worst = max(overheads.values())
    return SectionResult(
        "adapters",
        "8. Serving named LoRA adapters: multi-adapter, merged and base exports",
        (
            "A 2+2-layer date-task `Translator` (d_model "
            f"{settings.serving_hidden_dim}, character tokenizers) with two "
            f"rank-{settings.lora_rank} adapters on every attention's query and "
            "value projections, exported three ways and called through "
            "`serving_default` of the loaded SavedModel: the plain base "
            "(`adapters.without_adapters`), the multi-adapter export (every text names its adapter; "
            "'' is the base) and `export(merge_adapter=...)`. Greedy decoding to "
            "EOS; the adapters' B matrices are small random values, so every "
            "path decodes the same number of steps."
        ),
        [
            Table(
                ["path", "batch", "ms (median)", "min-max ms", "CPU ms", "vs base"],
                rows,
            )
        ],
        goals=[
            Goal(
                "multi-adapter export with an adapter within 15% of the plain "
                "base export",
                worst <= ADAPTER_OVERHEAD_GOAL,
                ", ".join(
                    f"batch {batch_size}: {ratio(value, 1.0)}"
                    for batch_size, value in overheads.items()
                ),
            )
        ],
        notes=[
            agreement_note(
                "The base through the adapter export equals the plain export, and "
                "the adapter equals its merged export",
                agree,
            )
        ],
        plots=[plot_name],
    )

