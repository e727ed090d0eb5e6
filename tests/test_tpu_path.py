"""The TPU path, checked without a TPU: static batch shapes, a Translator
trained under XLA on them, its weights handed to a host copy that decodes
with fixed shapes under XLA, the XLA switch of
`scripts/train.py`, and `scripts/colab_tpu.py` as a CPU smoke run."""

import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_transformer import data, decoding, losses, metrics
from keras_transformer.translation import Translator
from tests.conftest import SCRIPTS, load_script, random_floats, to_numpy

BATCH_SIZE = 8
BOUNDARIES = [16]
MAX_SOURCE_LENGTH = 30
MAX_TARGET_LENGTH = 11
# make_translation_dataset's default: equal-width length buckets.
DEFAULT_NUM_BUCKETS = 8


@pytest.fixture(scope="module")
def pairs():
    pairs = data.generate_date_pairs(60, seed=0)
    return [source for source, _ in pairs], [target for _, target in pairs]


@pytest.fixture(scope="module")
def tokenizers(pairs):
    return tuple(data.CharacterTokenizer.from_texts(texts) for texts in pairs)


def make_dataset(pairs, tokenizers, **options):
    options = {
        "batch_size": BATCH_SIZE,
        "max_source_length": MAX_SOURCE_LENGTH,
        "max_target_length": MAX_TARGET_LENGTH,
        "bucket_boundaries": BOUNDARIES,
        "shuffle": False,
        **options,
    }
    return data.make_translation_dataset(*pairs, *tokenizers, **options)


def batch_shapes(dataset):
    return [
        (*inputs["source_ids"].shape, inputs["target_ids"].shape[1], labels.shape[1])
        for inputs, labels in dataset
    ]


# One shape per bucket: (batch, source length, decoder length, label length),
# each length capped by its limit.
BUCKET_SHAPES = {
    (
        BATCH_SIZE,
        min(top, MAX_SOURCE_LENGTH),
        min(top, MAX_TARGET_LENGTH),
        min(top, MAX_TARGET_LENGTH),
    )
    for top in [boundary - 1 for boundary in BOUNDARIES] + [MAX_SOURCE_LENGTH]
}


def test_static_batches_come_in_one_shape_per_bucket(pairs, tokenizers):
    dataset = make_dataset(
        pairs, tokenizers, pad_to_bucket_boundary=True, drop_remainder=True
    )
    shapes = batch_shapes(dataset)
    assert shapes and set(shapes) <= BUCKET_SHAPES


def test_padding_to_the_bucket_boundary_only_appends_padding(pairs, tokenizers):
    plain = list(make_dataset(pairs, tokenizers))
    padded = list(make_dataset(pairs, tokenizers, pad_to_bucket_boundary=True))
    assert len(plain) == len(padded)
    for (plain_inputs, plain_labels), (inputs, labels) in zip(plain, padded):
        for name, tensor, original in (
            ("source", inputs["source_ids"], plain_inputs["source_ids"]),
            ("target", inputs["target_ids"], plain_inputs["target_ids"]),
            ("labels", labels, plain_labels),
        ):
            width = original.shape[1]
            np.testing.assert_array_equal(tensor[:, :width], original, err_msg=name)
            assert (to_numpy(tensor[:, width:]) == data.PAD_ID).all(), name


def test_incomplete_batches_are_filled_with_rows_the_loss_and_metrics_ignore(
    pairs, tokenizers
):
    plain = list(make_dataset(pairs, tokenizers, pad_to_bucket_boundary=True))
    filled = list(
        make_dataset(
            pairs, tokenizers, pad_to_bucket_boundary=True, pad_incomplete_batches=True
        )
    )
    assert {labels.shape[0] for _, labels in filled} == {BATCH_SIZE}
    assert set(batch_shapes(filled)) <= BUCKET_SHAPES
    incomplete = [i for i, (_, labels) in enumerate(plain) if len(labels) < BATCH_SIZE]
    assert incomplete, "the data should leave some bucket incomplete"
    for i in incomplete:
        labels, filled_labels = plain[i][1], filled[i][1]
        assert (to_numpy(filled_labels[len(labels) :]) == data.PAD_ID).all()
        logits = random_floats(*filled_labels.shape, tokenizers[1].vocabulary_size)
        for make_measure in (
            losses.MaskedSparseCategoricalCrossentropy,
            metrics.MaskedAccuracy,
            metrics.SequenceExactMatch,
        ):
            on_filled = make_measure()(filled_labels, logits)
            on_plain = make_measure()(labels, logits[: len(labels)])
            np.testing.assert_allclose(on_filled, on_plain, rtol=1e-6)


def test_incomplete_batches_are_either_dropped_or_filled(pairs, tokenizers):
    with pytest.raises(ValueError, match="drop_remainder and pad_incomplete_batches"):
        make_dataset(
            pairs, tokenizers, drop_remainder=True, pad_incomplete_batches=True
        )


@pytest.fixture(scope="module")
def xla_training(pairs):
    """A tiny Translator trained on texts under XLA with static shapes and
    several steps per execution, as scripts/colab_tpu.py trains on a TPU,
    long enough for its translations to depend on the source (8 epochs:
    after 4, half of the seeds 0-3 still translated every date alike, with
    either dropout mask; after 8, none did); its history.
    (Float32: XLA compiles bfloat16 slowly on CPUs; mixed_bfloat16 training
    without XLA is covered by tests/test_precision.py.) Two length buckets:
    XLA compiles one training program per batch shape, about 10 s each on a
    CPU, and two shapes exercise the per-bucket programs as well as eight."""
    keras.utils.set_random_seed(0)
    translator = Translator.from_texts(
        *pairs,
        tokenizer="character",
        num_encoder_layers=1,
        num_decoder_layers=1,
        hidden_dim=16,
        num_heads=2,
        intermediate_dim=32,
        max_source_length=MAX_SOURCE_LENGTH,
        max_target_length=MAX_TARGET_LENGTH,
    )
    translator.compile(
        optimizer=keras.optimizers.Adam(1e-2), jit_compile=True, steps_per_execution=4
    )
    history = translator.fit(
        *pairs,
        batch_size=BATCH_SIZE,
        epochs=8,
        static_shapes=True,
        bucket_boundaries=BOUNDARIES,
        verbose=0,
    )
    return translator, history.history


@pytest.mark.slow
def test_a_translator_trains_under_xla_on_full_batches_of_few_shapes(
    pairs, xla_training
):
    translator, history = xla_training
    # Keras would quietly fall back to no XLA for a model it cannot compile.
    assert translator.jit_compile is True
    assert np.all(np.isfinite(history["loss"]))
    # The batches fit makes: repeating ones drop the remainder, finite ones
    # fill it with padding rows (held-out pairs are all kept); one shape per
    # bucket, with the default buckets and with the two the fixture trained on.
    for boundaries, num_buckets in (
        (None, DEFAULT_NUM_BUCKETS),
        (BOUNDARIES, len(BOUNDARIES) + 1),
    ):
        for repeat in (True, False):
            dataset = translator.make_dataset(
                *pairs,
                batch_size=BATCH_SIZE,
                repeat=repeat,
                static_shapes=True,
                bucket_boundaries=boundaries,
            )
            shapes = batch_shapes(dataset.take(20))
            assert {shape[0] for shape in shapes} == {BATCH_SIZE}
            assert len(set(shapes)) <= num_buckets, (boundaries, shapes)
    held_out_rows = sum(
        int(np.any(to_numpy(labels) != data.PAD_ID, axis=1).sum())
        for _, labels in dataset
    )
    assert held_out_rows == len(pairs[0])


@pytest.fixture(scope="module")
def host_copy(xla_training):
    """The copy, built outside any strategy, that colab_tpu.py decodes and
    exports with."""
    translator = xla_training[0]
    host = Translator(
        translator.config, translator.source_tokenizer, translator.target_tokenizer
    )
    host.set_weights(translator.get_weights())
    return host


@pytest.mark.slow
def test_the_host_copy_holds_the_trained_weights(xla_training, host_copy):
    assert xla_training[0].weights and host_copy is not xla_training[0]
    for trained, copied in zip(xla_training[0].weights, host_copy.weights):
        np.testing.assert_array_equal(to_numpy(trained), to_numpy(copied))


TEXTS = ["5 March 2021", "the 1st of May, 1999", "12/24/1970"]


@pytest.mark.slow
def test_greedy_decoding_under_xla_on_fixed_length_sources_matches_eager(host_copy):
    ragged = host_copy.source_tokenizer.tokenize(TEXTS)
    max_length = MAX_TARGET_LENGTH
    decode = tf.function(
        lambda source_ids: decoding.greedy_decode(host_copy, source_ids, max_length),
        jit_compile=True,
        autograph=False,
    )

    eager = decoding.greedy_decode(host_copy, ragged.to_tensor(), max_length)
    fixed = decode(ragged.to_tensor(shape=[4, MAX_SOURCE_LENGTH]))
    again = decode(ragged[::-1].to_tensor(shape=[4, MAX_SOURCE_LENGTH]))

    # Translations that differ, so the reversed batch checks the row order.
    assert len({tuple(row) for row in to_numpy(eager)}) > 1
    np.testing.assert_array_equal(to_numpy(fixed)[:3], to_numpy(eager))
    np.testing.assert_array_equal(to_numpy(again)[:3], to_numpy(eager)[::-1])
    # Same shape, one program.
    assert decode.experimental_get_tracing_count() == 1


@pytest.mark.slow
def test_the_host_copy_translates_the_same_under_xla_in_fixed_size_batches(
    host_copy,
):
    texts = TEXTS * 3
    dynamic = host_copy.translate(texts)
    # Batches of 4: the last one is padded with empty texts to keep the shape.
    assert host_copy.translate(texts, jit_compile=True, batch_size=4) == dynamic
    assert len(set(dynamic)) > 1


@pytest.mark.slow
@pytest.mark.parametrize(
    "arguments, setting, xla",
    [
        ([], "auto", False),
        # On this CPU: XLA only pays on a TPU, or on GPUs with static shapes.
        (["--static-shapes"], "auto", False),
        (["--jit-compile", "on"], "on", True),
        (["--jit-compile", "off", "--static-shapes"], "off", False),
    ],
)
def test_train_script_turns_xla_off_on_a_cpu_unless_asked(
    pairs, arguments, setting, xla
):
    train = load_script("train")
    args = train.parse_args(arguments + ["--batch-size", str(BATCH_SIZE)])
    assert args.jit_compile == setting
    strategy = tf.distribute.get_strategy()
    args.global_batch_size = BATCH_SIZE
    translator = train.make_translator(args, *pairs, strategy)
    assert translator.jit_compile is xla


@pytest.mark.slow
def test_colab_script_smoke_run_falls_back_to_the_default_strategy_on_cpu(tmp_path):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    export_dir = tmp_path / "export"
    result = subprocess.run(
        [
            sys.executable,
            str(SCRIPTS / "colab_tpu.py"),
            "--smoke",
            # XLA compiles bfloat16 slowly on CPUs (minutes for this run);
            # the script's plumbing is the same in float32.
            "--precision",
            "float32",
            "--output-dir",
            str(export_dir),
        ],
        capture_output=True,
        text=True,
        env=env,
        check=False,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "No TPU" in result.stdout
    assert "Training with the default strategy" in result.stdout
    assert "XLA on" in result.stdout
    assert "held-out exact match (greedy):" in result.stdout
    # The first version folder of a new export base.
    assert (export_dir / "1" / "saved_model.pb").is_file()
