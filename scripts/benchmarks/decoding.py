"""Section 2: greedy decoding with the library's cached `greedy_decode`, with
a loop that recomputes the whole prefix every step, and with keras-hub's
cached `TransformerDecoder` driven by its `GreedySampler`."""

import os

import keras
import numpy as np
import tensorflow as tf

from keras_transformer import decoding

from benchmarks.common import (
    BOS_ID,
    EOS_ID,
    Goal,
    KERAS_HUB,
    LIBRARY,
    PAD_ID,
    SectionResult,
    Skipped,
    Table,
    agreement_note,
    build_keras_hub_model,
    build_library_model,
    import_keras_hub,
    ms,
    peer,
    plot,
    progress,
    random_batch,
    ratio,
    skipped_row,
    synced,
    time_side_by_side,
)


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


def run(settings, options):
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
