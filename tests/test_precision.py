"""Mixed precision: what `scripts/train.py --precision` builds, and the float32
islands (logits, loss, normalisation statistics, attention softmax) that keep
half-precision training stable."""


import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_transformer import data, distribute, layers, losses, models
from keras_transformer.translation import training
from tests.conftest import MIXED_POLICIES, load_script, random_floats, to_numpy

HALF_DTYPES = {"mixed_float16": "float16", "mixed_bfloat16": "bfloat16"}
BATCH_SIZE = 4
TINY = [
    "--num-encoder-layers", "1", "--num-decoder-layers", "1",
    "--hidden-dim", "16", "--num-heads", "2", "--intermediate-dim", "32",
    "--batch-size", str(BATCH_SIZE), "--epochs", "1", "--warmup-steps", "1",
]  # fmt: skip


def date_batch(model):
    pairs = data.generate_date_pairs(BATCH_SIZE, seed=0)
    dataset = data.make_translation_dataset(
        [source for source, _ in pairs],
        [target for _, target in pairs],
        model.source_tokenizer,
        model.target_tokenizer,
        batch_size=BATCH_SIZE,
        bucket_boundaries=[],
        shuffle=False,
    )
    return next(iter(dataset))


@pytest.fixture(scope="module")
def pairs():
    pairs = data.generate_date_pairs(200, seed=0)
    return [pair[0] for pair in pairs], [pair[1] for pair in pairs]


def train_script_model(precision, pairs):
    """The Translator `scripts/train.py --precision` trains (None: no flag)."""
    train = load_script("train")
    args = train.parse_args([*TINY, *(["--precision", precision] if precision else [])])
    args.global_batch_size, args.replicas = BATCH_SIZE, 1
    return train.make_translator(args, *pairs, tf.distribute.get_strategy())


@pytest.mark.slow
@pytest.mark.parametrize("precision", MIXED_POLICIES)
def test_train_script_model_takes_a_finite_fit_step(precision, pairs):
    model = train_script_model(precision, pairs)
    inputs, labels = date_batch(model)

    history = model.fit(inputs, labels, epochs=1, verbose=0)

    assert np.isfinite(history.history["loss"][0])
    assert all(np.isfinite(to_numpy(v)).all() for v in model.trainable_variables)


@pytest.mark.parametrize("bfloat16_cpus", [True, False])
def test_train_script_auto_precision_follows_the_machine(bfloat16_cpus, pairs, monkeypatch):
    monkeypatch.setattr(
        distribute, "trains_on_bfloat16_cpus", lambda strategy=None: bfloat16_cpus
    )
    model = train_script_model("auto", pairs)
    expected = "mixed_bfloat16" if bfloat16_cpus else "float32"
    assert training.layers_policy_name(model) == expected
    # Without the flag, the date task's recipe keeps Keras' global policy.
    assert training.layers_policy_name(train_script_model(None, pairs)) == "float32"


def test_float16_training_scales_the_loss_and_bfloat16_does_not(pairs):
    fp16 = train_script_model("mixed_float16", pairs)
    bf16 = train_script_model("mixed_bfloat16", pairs)
    assert isinstance(fp16.optimizer, keras.optimizers.LossScaleOptimizer)
    assert isinstance(fp16.optimizer.inner_optimizer, keras.optimizers.Adam)
    assert not isinstance(bf16.optimizer, keras.optimizers.LossScaleOptimizer)


@pytest.mark.parametrize("precision", MIXED_POLICIES)
def test_mixed_model_computes_in_half_but_keeps_float32_variables_and_logits(
    precision, pairs
):
    model = train_script_model(precision, pairs)
    inputs, _ = date_batch(model)
    parts = model.transformer_layers
    half = HALF_DTYPES[precision]

    logits = model(inputs)
    encoded, _ = models.encode(parts, inputs["source_ids"])

    assert keras.backend.standardize_dtype(logits.dtype) == "float32"
    assert keras.backend.standardize_dtype(encoded.dtype) == half
    assert {v.dtype for v in model.weights if "int" not in v.dtype} == {"float32"}


@pytest.mark.parametrize("half", ["float16", "bfloat16"])
def test_masked_loss_of_half_logits_is_computed_in_float32(half):
    vocabulary_size = 7
    logits = random_floats(2, 4, vocabulary_size, seed=1, scale=4.0)
    half_logits = keras.ops.cast(logits, half)
    labels = np.array([[4, 5, 3, 0], [6, 3, 0, 0]], "int32")

    loss = losses.MaskedSparseCategoricalCrossentropy()(labels, half_logits)

    # Float64 reference on the very logits the loss saw (rounded to half):
    # a half-precision computation would be ~1e-3 off, not ~1e-7.
    seen = to_numpy(keras.ops.cast(half_logits, "float32")).astype("float64")
    log_probs = seen - np.log(np.exp(seen).sum(-1, keepdims=True))
    token = labels != 0
    picked = np.take_along_axis(log_probs, labels[..., None], -1)[..., 0]
    expected = -picked[token].mean()
    assert keras.backend.standardize_dtype(loss.dtype) == "float32"
    np.testing.assert_allclose(to_numpy(loss), expected, rtol=1e-6)


@pytest.mark.parametrize("precision", MIXED_POLICIES)
def test_model_layer_norm_statistics_are_float32(precision, pairs):
    model = train_script_model(precision, pairs)
    norm = model.transformer_layers.encoder_norm
    # Squares of 300 overflow float16 (max 65504): statistics computed in
    # float16 would be inf and the output 0 or NaN.
    hidden = keras.ops.cast(
        random_floats(2, 5, 16, seed=2, scale=300.0), HALF_DTYPES[precision]
    )

    outputs = to_numpy(keras.ops.cast(norm(hidden), "float32"))

    seen = to_numpy(keras.ops.cast(hidden, "float32")).astype("float64")
    expected = (seen - seen.mean(-1, keepdims=True)) / np.sqrt(
        seen.var(-1, keepdims=True) + norm.epsilon
    )
    assert np.isfinite(outputs).all()
    np.testing.assert_allclose(outputs, expected, atol=3e-2)


def attention_pair(policy):
    """A float32 attention layer and a `policy` one with the same weights."""
    query = random_floats(2, 5, 16, seed=3)
    reference = layers.MultiHeadAttention(num_heads=2, dtype="float32")
    reference(query)
    mixed = layers.MultiHeadAttention(num_heads=2, dtype=policy)
    mixed(query)
    mixed.set_weights(reference.get_weights())
    return reference, mixed


@pytest.mark.parametrize("policy", MIXED_POLICIES)
def test_mixed_attention_matches_float32_attention_loosely(policy):
    reference, mixed = attention_pair(policy)
    query = random_floats(2, 5, 16, seed=4)
    mask = np.array([[True] * 5, [True] * 3 + [False] * 2])

    expected = to_numpy(reference(query, value_mask=mask, use_causal_mask=True))
    outputs = mixed(query, value_mask=mask, use_causal_mask=True)

    assert keras.backend.standardize_dtype(outputs.dtype) == HALF_DTYPES[policy]
    tolerance = 1e-2 if policy == "mixed_float16" else 5e-2
    np.testing.assert_allclose(
        to_numpy(keras.ops.cast(outputs, "float32")), expected, atol=tolerance
    )


def test_float16_attention_logits_beyond_the_float16_range_stay_finite():
    _, mixed = attention_pair("mixed_float16")
    # Projections of a few hundred give scaled query-key dot products near
    # 1e5, past float16's 65504: only float32 logits keep the output finite.
    query = random_floats(2, 5, 16, seed=5, scale=200.0)

    outputs, scores = mixed(query, return_attention_scores=True)

    assert np.isfinite(to_numpy(keras.ops.cast(outputs, "float32"))).all()
    np.testing.assert_allclose(
        to_numpy(keras.ops.cast(scores, "float32")).sum(-1), 1.0, atol=1e-2
    )
