"""Section 5: the exported `translate` endpoint against in-process
decoding."""

import os
import tempfile

import keras
import tensorflow as tf

from keras_transformer import data, decoding, losses, models
from keras_transformer.translation import export

from benchmarks.common import (
    PAD_ID,
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

# The date task: sources up to ~35 characters, ISO dates of 10 + BOS/EOS.
SERVING_MAX_SOURCE_LENGTH = 48
SERVING_MAX_TARGET_LENGTH = 16


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


def run(settings, options):
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

    plot_name = plot(
        os.path.join(options.output_dir, "benchmark_serving.png"),
        latency_bars(latencies, settings.serving_batch_sizes),
    )
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
