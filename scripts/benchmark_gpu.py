"""Training throughput of a Transformer-base on one accelerator, with its MFU.

Trains the base model of "Attention Is All You Need" (6+6 layers, d_model
512, 8 heads, FFN 2048, 32k shared vocabulary, dropout 0.1) in bfloat16
(`mixed_bfloat16`: float32 weights, bfloat16 matmuls) with `model.fit`'s
compiled train step, on random full-length batches, and reports tokens per
second (source + target) and the model FLOP utilisation: the FLOPs the
architecture needs per step (forward + backward, counted below) per second,
as a fraction of the device's dense bf16 peak (989 TFLOP/s for an H200).

Variants, timed in turns so that a change of load hits all alike:

- `einsum`: this library's attention core (float32 logits, einsum, softmax).
- `fused`: the same model with the attention core replaced by
  `keras.ops.dot_product_attention` (cuDNN flash attention on a GPU where
  JAX picks it) wherever the masks allow it: boolean masks, no additive
  bias, no attention dropout, no scores asked for. Swapped in for the
  measurement only, to size the gain before building it into the layer.
- `keras_hub`: the same architecture from keras-hub's layers, when
  `keras_hub` imports (its layers need no TensorFlow).

    KERAS_BACKEND=jax python scripts/benchmark_gpu.py --output gpu.json
    python scripts/benchmark_gpu.py --smoke        # tiny model on a CPU

Writes a Markdown table (and `--output` JSON) with the date, device,
versions, the command and per-variant step time, tokens/s and MFU.
"""

import argparse
import contextlib
import dataclasses
import datetime
import json
import os
import shlex
import statistics
import sys
import time

os.environ.setdefault("KERAS_BACKEND", "jax")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
from keras import ops  # noqa: E402

from keras_transformer import _files, losses, models  # noqa: E402
from keras_transformer.layers import attention  # noqa: E402

H200_BF16_DENSE_TFLOPS = 989.0
VARIANTS = ("einsum", "fused", "keras_hub")


@dataclasses.dataclass(frozen=True)
class Shape:
    """The model and batch measured."""

    num_layers: int = 6
    hidden_dim: int = 512
    num_heads: int = 8
    intermediate_dim: int = 2048
    vocabulary_size: int = 32000
    dropout: float = 0.1
    batch_size: int = 192
    length: int = 128


SMOKE = Shape(
    num_layers=1,
    hidden_dim=32,
    num_heads=4,
    intermediate_dim=64,
    vocabulary_size=100,
    batch_size=4,
    length=8,
)


def training_flops(shape):
    """Model FLOPs of one training step: 3x the forward pass's matmuls.

    Per layer and token, a projection of d to n features costs 2*d*n FLOPs
    and attention over L keys 4*L*d (scores and weighted sum, the full
    square even when causal, as computed). The backward pass costs twice
    the forward. Embedding lookups, norms and the softmax are not counted.
    """
    d, f, v = shape.hidden_dim, shape.intermediate_dim, shape.vocabulary_size
    length = shape.length
    encoder_per_token = 8 * d * d + 4 * length * d + 4 * d * f
    decoder_per_token = (
        8 * d * d  # self-attention projections
        + 4 * length * d  # self-attention
        + 4 * d * d  # cross-attention query and output projections
        + 4 * d * d  # cross-attention keys and values (one source token each)
        + 4 * length * d  # cross-attention
        + 4 * d * f  # feed-forward
    )
    tokens = shape.batch_size * length
    forward = tokens * shape.num_layers * (encoder_per_token + decoder_per_token)
    forward += tokens * 2 * d * v  # output projection
    return 3 * forward


def transformer_config(shape, attention_dropout=0.0):
    return models.TransformerConfig(
        source_vocabulary_size=shape.vocabulary_size,
        target_vocabulary_size=shape.vocabulary_size,
        num_encoder_layers=shape.num_layers,
        num_decoder_layers=shape.num_layers,
        hidden_dim=shape.hidden_dim,
        num_heads=shape.num_heads,
        intermediate_dim=shape.intermediate_dim,
        dropout=shape.dropout,
        # The base model has residual dropout only; the fused core has no
        # attention dropout, so neither variant uses it.
        attention_dropout=attention_dropout,
        norm_placement="post",
        position_encoding="sinusoidal",
        max_source_length=shape.length,
        max_target_length=shape.length,
        share_embeddings=True,
    )


def _fused_attend(original):
    def attend(
        self, query_heads, key_heads, value_heads, mask, bias, training, dropout_seed
    ):
        dropping = training and self.attention_dropout.rate > 0
        if bias is not None or dropping:
            return original(
                self,
                query_heads,
                key_heads,
                value_heads,
                mask,
                bias,
                training,
                dropout_seed,
            )
        # Keys and values are cached heads-major; the fused op takes
        # (batch, length, heads, dim) and groups query heads itself.
        context = ops.dot_product_attention(
            query_heads,
            ops.transpose(key_heads, (0, 2, 1, 3)),
            ops.transpose(value_heads, (0, 2, 1, 3)),
            mask=mask,
            scale=self._key_dim**-0.5,
        )
        batch_size, query_length = ops.shape(query_heads)[0], ops.shape(query_heads)[1]
        context = ops.reshape(
            context, (batch_size, query_length, self.num_heads * self._value_dim)
        )
        return context, None

    return attend


@contextlib.contextmanager
def fused_attention_core():
    """Runs every `MultiHeadAttention` on `keras.ops.dot_product_attention`."""
    original = attention.MultiHeadAttention._attend
    attention.MultiHeadAttention._attend = _fused_attend(original)
    try:
        yield
    finally:
        attention.MultiHeadAttention._attend = original


def build_keras_hub_model(keras_hub, shape):
    """The same encoder-decoder from keras-hub layers (learned positions,
    the only kind its `TokenAndPositionEmbedding` has; one shared table)."""
    embedding = keras_hub.layers.TokenAndPositionEmbedding(
        shape.vocabulary_size, shape.length, shape.hidden_dim, name="embedding"
    )

    def block(kind, index):
        return getattr(keras_hub.layers, kind)(
            shape.intermediate_dim,
            shape.num_heads,
            dropout=shape.dropout,
            normalize_first=False,
            name=f"{kind.lower()}_{index}",
        )

    source_ids = keras.Input((None,), dtype="int32", name="source_ids")
    target_ids = keras.Input((None,), dtype="int32", name="target_ids")
    source_mask = ops.not_equal(source_ids, 0)
    target_mask = ops.not_equal(target_ids, 0)
    dropout = keras.layers.Dropout(shape.dropout)
    encoded = dropout(embedding(source_ids))
    for index in range(shape.num_layers):
        encoded = block("TransformerEncoder", index)(encoded, padding_mask=source_mask)
    decoded = dropout(embedding(target_ids))
    for index in range(shape.num_layers):
        decoded = block("TransformerDecoder", index)(
            decoded,
            encoded,
            decoder_padding_mask=target_mask,
            encoder_padding_mask=source_mask,
        )
    logits = embedding.token_embedding(decoded, reverse=True)
    logits = keras.layers.Activation("linear", dtype="float32")(logits)
    return keras.Model(
        {"source_ids": source_ids, "target_ids": target_ids}, logits, name="keras_hub"
    )


def build(variant, shape):
    """Returns `(model, factory of the context to train it in)`.

    Raises RuntimeError for a variant that cannot be built here.
    """
    keras.config.set_dtype_policy("mixed_bfloat16")
    if variant == "keras_hub":
        try:
            import keras_hub
        except Exception as error:  # any import failure means: not measured
            raise RuntimeError(f"keras_hub does not import: {error}") from None
        return build_keras_hub_model(keras_hub, shape), contextlib.nullcontext
    model = models.build_transformer(transformer_config(shape))
    return model, fused_attention_core if variant == "fused" else contextlib.nullcontext


def batch(shape, seed=0):
    rng = np.random.default_rng(seed)

    def ids():
        # Ids 4 and up: no padding, so every token is a real one.
        return rng.integers(4, shape.vocabulary_size, (shape.batch_size, shape.length))

    inputs = {"source_ids": ids().astype("int32"), "target_ids": ids().astype("int32")}
    return inputs, ids().astype("int32")


def measure(variants, shape, steps, warmup, repeats):
    """Median seconds per step of each variant, timed in turns."""
    inputs, labels = batch(shape)
    trainers, skipped = {}, {}
    for variant in variants:
        try:
            model, context = build(variant, shape)
        except RuntimeError as error:
            skipped[variant] = str(error)
            continue
        with context():
            model.compile(
                optimizer=keras.optimizers.Adam(1e-4, beta_2=0.98, epsilon=1e-9),
                loss=losses.MaskedSparseCategoricalCrossentropy(label_smoothing=0.1),
                jit_compile=True,
            )
            for _ in range(warmup):  # compiles the train step
                model.train_on_batch(inputs, labels)
        trainers[variant] = (model, context)
    times = {variant: [] for variant in trainers}
    for _ in range(repeats):
        for variant, (model, context) in trainers.items():
            with context():
                started = time.perf_counter()
                for _ in range(steps):
                    # Returns the loss as a float: waits for the step to end.
                    model.train_on_batch(inputs, labels)
                times[variant].append((time.perf_counter() - started) / steps)
    return {v: statistics.median(t) for v, t in times.items()}, skipped


def device_description():
    try:
        import jax

        devices = jax.devices()
        return f"{len(devices)} x {devices[0].device_kind} ({devices[0].platform})"
    except Exception as error:  # a backend without JAX: say what we know
        return f"unknown ({keras.backend.backend()} backend: {error})"


def versions():
    found = {"python": sys.version.split()[0]}
    for module in ("keras", "jax", "jaxlib", "keras_hub", "numpy"):
        try:
            found[module] = __import__(module).__version__
        except Exception:  # not installed: left out of the list
            continue
    return found


def report(results, skipped, shape, options):
    flops = training_flops(shape)
    lines = [
        "| variant | step ms | tokens/s (source + target) | model TFLOP/s | MFU |",
        "|---|---|---|---|---|",
    ]
    rows = []
    for variant, seconds in results.items():
        tokens_per_second = 2 * shape.batch_size * shape.length / seconds
        tflops = flops / seconds / 1e12
        mfu = tflops / options.peak_tflops
        rows.append(
            {
                "variant": variant,
                "step_ms": seconds * 1e3,
                "tokens_per_second": tokens_per_second,
                "model_tflops": tflops,
                "mfu": mfu,
            }
        )
        lines.append(
            f"| {variant} | {seconds * 1e3:.1f} | {tokens_per_second:,.0f} | "
            f"{tflops:.1f} | {mfu:.1%} |"
        )
    for variant, reason in skipped.items():
        lines.append(f"| {variant} | skipped: {reason} | | | |")
    header = [
        "## GPU training throughput (`scripts/benchmark_gpu.py`)",
        "",
        f"- command: `{options.command}`",
        f"- date: {datetime.datetime.now().astimezone():%Y-%m-%d %H:%M %Z}",
        f"- device: {device_description()}; backend {keras.backend.backend()}",
        f"- versions: {', '.join(f'{k} {v}' for k, v in versions().items())}",
        f"- model: {dataclasses.asdict(shape)}, mixed_bfloat16; "
        f"{flops / 1e12:.2f} TFLOP per step; peak {options.peak_tflops} TFLOP/s",
        f"- {options.steps} steps per repeat, median of {options.repeats} "
        f"repeats after {options.warmup} warm-up steps",
        "",
    ]
    return "\n".join(header + lines) + "\n", {
        "shape": dataclasses.asdict(shape),
        "flops_per_step": flops,
        "results": rows,
        "skipped": skipped,
    }


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=VARIANTS)
    parser.add_argument("--batch-size", type=int, help="sentences per step")
    parser.add_argument("--length", type=int, help="tokens per sentence")
    parser.add_argument("--steps", type=int, default=20, help="steps per repeat")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    parser.add_argument(
        "--peak-tflops",
        type=float,
        default=H200_BF16_DENSE_TFLOPS,
        help="the device's dense bf16 peak (default: H200)",
    )
    parser.add_argument("--smoke", action="store_true", help="tiny model, CPU")
    parser.add_argument("--output", help="also write the results as JSON here")
    options = parser.parse_args(argv)
    for name in ("batch_size", "length", "steps", "repeats"):
        value = getattr(options, name)
        if value is not None and value < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    if options.warmup < 1:
        parser.error("--warmup must be >= 1 (the first step compiles)")
    return options


def main(argv=None):
    options = parse_args(argv)
    options.command = "python " + " ".join(
        shlex.quote(arg)
        for arg in ["scripts/benchmark_gpu.py"]
        + list(sys.argv[1:] if argv is None else argv)
    )
    shape = SMOKE if options.smoke else Shape()
    overrides = {
        name: getattr(options, name)
        for name in ("batch_size", "length")
        if getattr(options, name) is not None
    }
    shape = dataclasses.replace(shape, **overrides)
    if options.smoke:
        options.steps, options.repeats = min(options.steps, 2), 1
    keras.utils.set_random_seed(0)
    try:
        results, skipped = measure(
            options.variants, shape, options.steps, options.warmup, options.repeats
        )
    finally:
        keras.config.set_dtype_policy("float32")
    markdown, record = report(results, skipped, shape, options)
    print(markdown)
    if options.output:
        with _files.atomic_write(options.output) as file:
            json.dump({"markdown": markdown, **record}, file, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
