"""Rematerialised encoder and decoder blocks (`remat=True`)."""

import keras
import numpy as np
import pytest
from keras import ops

from keras_transformer import layers, losses, models
from keras_transformer.layers import stateless_dropout
from tests.conftest import (
    compiled_backends,
    only_on,
    random_floats,
    run_layer_test,
    to_numpy,
    value_and_gradients,
)

HIDDEN = 16
BASE = {"intermediate_dim": 32, "num_heads": 4, "norm_placement": "pre"}
# A different rate at each of the three dropout sites of a block.
DROPOUT = {"dropout": 0.2, "attention_dropout": 0.3, "feed_forward_dropout": 0.4}
TARGET_MASK = np.array([[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0]], bool)
SOURCE_MASK = np.array([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]], bool)


def _block_call(kind):
    """The block class, its positional tensors and keyword masks."""
    target = random_floats(2, 6, HIDDEN, seed=1)
    if kind == "encoder":
        return layers.TransformerEncoderBlock, [target], {"padding_mask": TARGET_MASK}
    source = random_floats(2, 5, HIDDEN, seed=2)
    masks = {"decoder_padding_mask": TARGET_MASK, "encoder_padding_mask": SOURCE_MASK}
    return layers.TransformerDecoderBlock, [target, source], masks


def _seed_dropouts(block):
    """Sets every active dropout's generator to a fixed, distinct state."""
    dropouts = [
        layer
        for layer in block._flatten_layers()
        if isinstance(layer, keras.layers.Dropout) and layer.rate > 0
    ]
    for index, dropout in enumerate(dropouts):
        dropout.seed_generator.state.assign([1000 + index, 0])
    return len(dropouts)


def _outputs_and_gradients(block, inputs, masks, compiled):
    """Block outputs and the gradients of a loss wrt weights and inputs."""

    def loss(*inputs):
        outputs = ops.cast(block(*inputs, training=True, **masks), "float32")
        return ops.sum(outputs * ops.sin(outputs)), outputs

    return value_and_gradients(
        loss, block.trainable_variables, inputs, compiled=compiled
    )


def test_seeded_dropout_reproduces_the_mask_the_layer_would_draw():
    inputs = ops.ones((4, 32))
    drawn_by = layers.Dropout(0.5, seed=7)
    seeded_by = layers.Dropout(0.5, seed=7)
    expected = drawn_by(inputs, training=True)
    seed = stateless_dropout.draw_dropout_seed(seeded_by, training=True)
    first = stateless_dropout.seeded_dropout(seeded_by, inputs, True, seed)
    again = stateless_dropout.seeded_dropout(seeded_by, inputs, True, seed)
    np.testing.assert_array_equal(to_numpy(first), to_numpy(expected))
    np.testing.assert_array_equal(to_numpy(again), to_numpy(expected))
    # Drawing advanced the generator as the layer's own call did.
    np.testing.assert_array_equal(
        to_numpy(seeded_by.seed_generator.state),
        to_numpy(drawn_by.seed_generator.state),
    )


@pytest.mark.parametrize("rate, training", [(0.5, False), (0.0, True)])
def test_inactive_dropout_draws_no_seed(rate, training):
    dropout = layers.Dropout(rate)
    assert stateless_dropout.draw_dropout_seed(dropout, training) is None


@pytest.mark.slow
@pytest.mark.parametrize(
    "kind, dropout, compiled, dtype",
    [
        ("encoder", {}, True, "float32"),
        ("decoder", {}, True, "float32"),
        ("encoder", DROPOUT, True, "float32"),
        ("decoder", DROPOUT, True, "float32"),
        ("encoder", DROPOUT, False, "float32"),
        ("decoder", DROPOUT, False, "float32"),
        ("decoder", DROPOUT, True, "mixed_bfloat16"),
    ],
    ids=[
        "encoder",
        "decoder",
        "encoder-dropout",
        "decoder-dropout",
        "encoder-dropout-eager",
        "decoder-dropout-eager",
        "decoder-bfloat16",
    ],
)
def test_remat_gradients_equal_plain_gradients(kind, dropout, compiled, dtype):
    block_class, inputs, masks = _block_call(kind)
    plain = block_class(**BASE, **dropout, dtype=dtype)
    remat = block_class(**BASE, **dropout, remat=True, dtype=dtype)
    inference = plain(*inputs, **masks)
    remat(*inputs, **masks)
    remat.set_weights(plain.get_weights())
    assert _seed_dropouts(plain) == _seed_dropouts(remat)

    plain_outputs, plain_gradients = _outputs_and_gradients(
        plain, inputs, masks, compiled
    )
    remat_outputs, remat_gradients = _outputs_and_gradients(
        remat, inputs, masks, compiled
    )

    if dropout:
        assert not np.allclose(to_numpy(plain_outputs), to_numpy(inference))
    np.testing.assert_allclose(
        to_numpy(remat_outputs), to_numpy(plain_outputs), atol=1e-5
    )
    assert len(remat_gradients) == len(plain_gradients)
    for remat_gradient, plain_gradient in zip(remat_gradients, plain_gradients):
        np.testing.assert_allclose(
            to_numpy(remat_gradient), to_numpy(plain_gradient), atol=1e-5
        )


@only_on(
    "tensorflow",
    "torch",
    reason="jax.checkpoint recomputes a traced program, not the Python forward",
)
@pytest.mark.parametrize("training, forward_runs", [(True, 2), (False, 1)])
def test_training_calls_run_the_block_again_in_the_backward_pass(
    training, forward_runs, monkeypatch
):
    block_class, inputs, masks = _block_call("decoder")
    block = block_class(**BASE, **DROPOUT, remat=True)
    block(*inputs, **masks)
    runs = []
    forward = block_class._forward

    def counted_forward(self, *args, **kwargs):
        runs.append(None)
        return forward(self, *args, **kwargs)

    monkeypatch.setattr(block_class, "_forward", counted_forward)
    value_and_gradients(
        lambda: ops.sum(block(*inputs, training=training, **masks)),
        block.trainable_variables,
    )
    assert len(runs) == forward_runs


@only_on("jax", reason="inspects the JAX program of the gradient")
@pytest.mark.parametrize("training", [True, False])
def test_training_calls_put_the_block_under_a_jax_checkpoint(training):
    import jax

    block_class, inputs, masks = _block_call("decoder")
    block = block_class(**BASE, **DROPOUT, remat=True)
    block(*inputs, **masks)
    variables = block.trainable_variables

    def loss(values):
        with keras.StatelessScope(state_mapping=list(zip(variables, values))):
            return ops.sum(block(*inputs, training=training, **masks))

    program = jax.make_jaxpr(jax.grad(loss))([v.value for v in variables])
    # The recomputed region appears as a `remat` primitive in the backward pass.
    assert ("remat" in str(program)) == training


def test_cached_decoding_with_remat_matches_the_plain_block():
    _, (target, source), _ = _block_call("decoder")
    plain = layers.TransformerDecoderBlock(**BASE)
    remat = layers.TransformerDecoderBlock(**BASE, remat=True)
    plain(target, source)
    remat(target, source)
    remat.set_weights(plain.get_weights())

    def first_step(block):
        return block(
            target[:, :1],
            self_attention_cache=block.initial_self_attention_cache(2, 6),
            self_attention_cache_update_index=0,
            cross_attention_cache=block.compute_cross_attention_cache(source),
            training=True,
        )

    for remat_output, plain_output in zip(first_step(remat), first_step(plain)):
        np.testing.assert_allclose(
            to_numpy(remat_output), to_numpy(plain_output), atol=1e-6
        )


def test_remat_rejects_dropout_it_cannot_replay():
    block_class, inputs, masks = _block_call("encoder")
    block = block_class(**BASE, remat=True)
    block(*inputs, **masks)
    layers.enable_lora(block, ["*query"], rank=2, lora_dropout=0.1)
    with pytest.raises(ValueError, match="'lora_dropout' in self_attention_residual"):
        block(*inputs, training=True, **masks)
    # Inference is never recomputed, so the same block still runs there.
    block(*inputs, **masks)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["encoder", "decoder"])
def test_remat_block_passes_the_layer_harness(kind, tmp_path):
    block_class, inputs, masks = _block_call(kind)
    names = (
        ["inputs"] if kind == "encoder" else ["decoder_sequence", "encoder_sequence"]
    )
    run_layer_test(
        block_class,
        {**BASE, "dropout": 0.1, "remat": True},
        {**dict(zip(names, map(to_numpy, inputs))), **masks},
        expected_output_shape=(2, 6, HIDDEN),
        tmp_path=tmp_path,
        atol=1e-5,
    )


SMALL_MODEL = {
    "source_vocabulary_size": 30,
    "target_vocabulary_size": 20,
    "num_encoder_layers": 1,
    "num_decoder_layers": 1,
    "hidden_dim": 16,
    "num_heads": 4,
    "intermediate_dim": 32,
    "dropout": 0.1,
    "max_source_length": 8,
    "max_target_length": 8,
    "remat": True,
}
SOURCE_IDS = np.array([[5, 6, 7, 0, 0], [4, 3, 2, 9, 8]], "int32")
TARGET_IDS = np.array([[2, 5, 6, 7, 0], [2, 1, 4, 5, 6]], "int32")
LABELS = np.array([[5, 6, 7, 0, 0], [1, 4, 5, 6, 0]], "int32")


@pytest.mark.slow
@pytest.mark.parametrize(
    "jit_compile",
    [False, pytest.param(True, marks=compiled_backends)],
    ids=["graph", "xla"],
)
def test_transformer_with_remat_trains_under_compiled_fit(jit_compile):
    model = models.build_transformer(models.TransformerConfig(**SMALL_MODEL))
    model.compile(
        optimizer="adam",
        loss=losses.MaskedSparseCategoricalCrossentropy(),
        jit_compile=jit_compile,
    )
    assert not model.run_eagerly
    history = model.fit(
        {"source_ids": SOURCE_IDS, "target_ids": TARGET_IDS}, LABELS, verbose=0
    )
    assert np.isfinite(history.history["loss"][0])


@pytest.mark.slow
def test_transformer_with_remat_has_the_plain_model_gradients():
    plain = models.build_transformer(
        models.TransformerConfig(**{**SMALL_MODEL, "remat": False})
    )
    remat = models.build_transformer(models.TransformerConfig(**SMALL_MODEL))
    remat.set_weights(plain.get_weights())
    assert _seed_dropouts(plain) == _seed_dropouts(remat) > 0
    inputs = {"source_ids": SOURCE_IDS, "target_ids": TARGET_IDS}
    loss = losses.MaskedSparseCategoricalCrossentropy()

    def gradients(model):
        def compute():
            value = loss(LABELS, model(inputs, training=True))
            return value, value

        return value_and_gradients(compute, model.trainable_variables, compiled=True)

    plain_loss, plain_gradients = gradients(plain)
    remat_loss, remat_gradients = gradients(remat)
    np.testing.assert_allclose(to_numpy(remat_loss), to_numpy(plain_loss), atol=1e-6)
    for remat_gradient, plain_gradient in zip(remat_gradients, plain_gradients):
        np.testing.assert_allclose(
            to_numpy(remat_gradient), to_numpy(plain_gradient), atol=1e-5
        )


def test_remat_survives_config_round_trip_and_keras_reload(tmp_path):
    config = models.TransformerConfig(**SMALL_MODEL)
    assert models.TransformerConfig.from_dict(config.to_dict()).remat
    model = models.build_transformer(config)
    path = str(tmp_path / "model.keras")
    model.save(path)
    reloaded = keras.saving.load_model(path)

    parts = reloaded.transformer_layers
    blocks = parts.encoder_blocks + parts.decoder_blocks
    assert len(blocks) == 2 and all(block.remat for block in blocks)
    inputs = {"source_ids": SOURCE_IDS, "target_ids": TARGET_IDS}
    np.testing.assert_allclose(
        to_numpy(reloaded(inputs)), to_numpy(model(inputs)), atol=1e-6
    )
