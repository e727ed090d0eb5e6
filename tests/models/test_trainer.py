import keras
import numpy as np
import pytest

from keras_transformer import losses
from tests.models.test_transformer import SOURCE, TARGET, small_model

pytestmark = pytest.mark.skipif(
    keras.backend.backend() != "tensorflow",
    reason="only Keras' TensorFlow trainer builds the optimizer inside the trace",
)

LABELS = np.concatenate([TARGET[:, 1:], np.zeros((2, 1), "int32")], axis=1)
INPUTS = {"source_ids": SOURCE, "target_ids": TARGET}


def record_when_built(optimizer):
    """Wraps `optimizer.build`; returns the list of `tf.executing_eagerly()`
    at each call."""
    import tensorflow as tf

    build = optimizer.build
    calls = []

    def recorded(variables):
        calls.append(tf.executing_eagerly())
        build(variables)

    optimizer.build = recorded
    return calls


def one_block_each_way():
    return small_model(num_encoder_layers=1, num_decoder_layers=1)


def test_fit_builds_the_optimizer_eagerly_and_trains_as_keras_would():
    model = one_block_each_way()
    # A twin with the same weights, wrapped in a plain functional
    # keras.Model: Keras' own path, which builds the optimizer inside the
    # traced step.
    twin = one_block_each_way()
    twin.set_weights(model.get_weights())
    plain = keras.Model(twin.inputs, twin.outputs)
    built_eagerly = []
    for each in (model, plain):
        each.compile(
            optimizer=keras.optimizers.Adam(1e-2),
            loss=losses.MaskedSparseCategoricalCrossentropy(),
        )
        built_eagerly.append(record_when_built(each.optimizer))

    initial = model.get_weights()
    model.fit(INPUTS, LABELS, epochs=2, verbose=0, shuffle=False)
    plain.fit(INPUTS, LABELS, epochs=2, verbose=0, shuffle=False)

    assert built_eagerly == [[True], [False]]
    trained, keras_trained = model.get_weights(), plain.get_weights()
    assert not np.allclose(trained[0], initial[0])
    for ours, keras_own in zip(trained, keras_trained, strict=True):
        np.testing.assert_allclose(ours, keras_own, rtol=1e-5, atol=1e-6)


def test_train_on_batch_builds_a_loss_scale_optimizer_eagerly_once():
    model = one_block_each_way()
    model.compile(
        optimizer=keras.optimizers.LossScaleOptimizer(keras.optimizers.Adam()),
        loss=losses.MaskedSparseCategoricalCrossentropy(),
    )
    built_eagerly = record_when_built(model.optimizer)
    model.train_on_batch(INPUTS, LABELS)
    model.train_on_batch(INPUTS, LABELS)
    assert built_eagerly == [True]
    adam = model.optimizer.inner_optimizer
    # Adam's two moments per weight, its step count and learning rate.
    assert len(adam.variables) == 2 * len(model.trainable_variables) + 2
