"""The TPU path, checked without a TPU: static batch shapes, XLA training on
them, the fixed-shape greedy decoding loop under XLA, the XLA switch of
`scripts/train.py`, and `scripts/colab_tpu.py` as a CPU smoke run."""

import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_transformer import data, decoding, losses, metrics, models
from tests.conftest import SCRIPTS, load_script, random_floats, to_numpy

BATCH_SIZE = 8
BOUNDARIES = [16]
MAX_SOURCE_LENGTH = 30
MAX_TARGET_LENGTH = 11


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


def tiny_model(tokenizers):
    config = models.TransformerConfig(
        source_vocabulary_size=tokenizers[0].vocabulary_size,
        target_vocabulary_size=tokenizers[1].vocabulary_size,
        num_encoder_layers=1,
        num_decoder_layers=1,
        hidden_dim=16,
        num_heads=2,
        intermediate_dim=32,
        max_source_length=MAX_SOURCE_LENGTH,
        max_target_length=MAX_TARGET_LENGTH,
    )
    return models.build_transformer(config)


@pytest.fixture(scope="module")
def xla_training(pairs, tokenizers):
    """A tiny model trained under XLA on static shapes, long enough for its
    translations to depend on the source; the shapes it saw; its history."""
    keras.utils.set_random_seed(0)
    dataset = make_dataset(
        pairs,
        tokenizers,
        shuffle=True,
        repeat=True,
        pad_to_bucket_boundary=True,
        drop_remainder=True,
    )
    steps = 40
    model = tiny_model(tokenizers)
    model.compile(
        optimizer=keras.optimizers.Adam(1e-2),
        loss=losses.MaskedSparseCategoricalCrossentropy(),
        jit_compile=True,
    )
    history = model.fit(
        dataset, steps_per_epoch=steps, epochs=1, shuffle=False, verbose=0
    )
    # Seeded: a second pass yields the batches fit saw, in the same order.
    return model, batch_shapes(dataset.take(steps)), history.history


def test_a_tiny_model_trains_under_xla_on_a_handful_of_static_shapes(xla_training):
    model, shapes, history = xla_training
    # Keras would quietly fall back to no XLA for a model it cannot compile.
    assert model.jit_compile is True
    assert np.isfinite(history["loss"][0])
    assert set(shapes) <= BUCKET_SHAPES


def test_greedy_decoding_under_xla_on_fixed_length_sources_matches_eager(
    tokenizers, xla_training
):
    model = xla_training[0]
    texts = ["5 March 2021", "the 1st of May, 1999", "12/24/1970"]
    ragged = tokenizers[0].tokenize(texts)
    max_length = MAX_TARGET_LENGTH
    decode = tf.function(
        lambda source_ids: decoding.greedy_decode(model, source_ids, max_length),
        jit_compile=True,
        autograph=False,
    )

    eager = decoding.greedy_decode(model, ragged.to_tensor(), max_length)
    fixed = decode(ragged.to_tensor(shape=[4, MAX_SOURCE_LENGTH]))
    again = decode(ragged[::-1].to_tensor(shape=[4, MAX_SOURCE_LENGTH]))

    # Translations that differ, so the reversed batch checks the row order.
    assert len({tuple(row) for row in to_numpy(eager)}) > 1
    np.testing.assert_array_equal(to_numpy(fixed)[:3], to_numpy(eager))
    np.testing.assert_array_equal(to_numpy(again)[:3], to_numpy(eager)[::-1])
    # Same shape, one program.
    assert decode.experimental_get_tracing_count() == 1


@pytest.mark.parametrize(
    "arguments, setting, xla",
    [
        ([], "auto", False),
        # On this CPU: XLA only pays on a TPU, or on GPUs with static shapes.
        (["--static-shapes"], "auto", False),
        (["--jit-compile"], "on", True),
        (["--jit-compile", "off", "--static-shapes"], "off", False),
        (["--no-xla", "--static-shapes"], "off", False),
        (["--jit-compile", "on"], "on", True),
    ],
)
def test_train_script_turns_xla_off_on_a_cpu_unless_asked(arguments, setting, xla):
    train = load_script("train")
    args = train.parse_args(arguments)
    assert args.jit_compile == setting
    strategy = tf.distribute.get_strategy()
    assert (
        train.resolve_jit_compile(args.jit_compile, strategy, args.static_shapes) is xla
    )


def test_train_script_static_shapes_give_full_batches_in_a_handful_of_shapes(
    pairs, tokenizers
):
    train = load_script("train")
    args = train.parse_args(["--static-shapes", "--batch-size", str(BATCH_SIZE)])
    train.setup_distribution(args)
    train_set, test_set = train.make_datasets(
        args, (*pairs, *pairs), tokenizers, (MAX_SOURCE_LENGTH, MAX_TARGET_LENGTH)
    )

    shapes = batch_shapes(train_set.take(20)) + batch_shapes(test_set)

    assert {shape[0] for shape in shapes} == {BATCH_SIZE}
    # At most one shape per bucket of train.py's default bucketing (8 buckets).
    assert len(set(shapes)) <= 8
    held_out_rows = sum(
        int(np.any(to_numpy(labels) != data.PAD_ID, axis=1).sum())
        for _, labels in test_set
    )
    assert held_out_rows == len(pairs[0])


@pytest.mark.slow
def test_colab_script_smoke_run_falls_back_to_the_default_strategy_on_cpu(tmp_path):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    export_dir = tmp_path / "export"
    result = subprocess.run(
        [
            sys.executable,
            str(SCRIPTS / "colab_tpu.py"),
            "--smoke",
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
    assert "held-out exact match (greedy):" in result.stdout
    assert (export_dir / "saved_model.pb").is_file()
