import math

import keras
import numpy as np
import pytest

from keras_transformer import layers
from tests.conftest import random_floats, run_layer_test, to_numpy

HIDDEN_DIM = 8
INTERMEDIATE_DIM = 16

_erf = np.vectorize(math.erf)


def _relu(x):
    return np.maximum(x, 0.0)


def _gelu(x):
    return 0.5 * x * (1.0 + _erf(x / math.sqrt(2.0)))


def _silu(x):
    return x / (1.0 + np.exp(-x))


def _numpy_feed_forward(ffn, x, activation):
    """The block written out from its weights, with dropout off."""

    def dense(name, inputs):
        kernel, bias = (to_numpy(w) for w in getattr(ffn, name).weights)
        return inputs @ kernel + bias

    up = dense("intermediate_dense", x)
    if activation == "geglu":
        hidden = _gelu(dense("gate_dense", x)) * up
    elif activation == "swiglu":
        hidden = _silu(dense("gate_dense", x)) * up
    else:
        hidden = {"relu": _relu, "gelu": _gelu}[activation](up)
    return dense("output_dense", hidden)


def _built_with_random_biases(**kwargs):
    ffn = layers.FeedForward(INTERMEDIATE_DIM, **kwargs)
    ffn.build((2, 4, HIDDEN_DIM))
    for i, weight in enumerate(ffn.weights):
        if weight.path.endswith("bias"):
            weight.assign(random_floats(*weight.shape, seed=10 + i))
    return ffn


@pytest.mark.parametrize("activation", ["relu", "gelu", "geglu", "swiglu"])
def test_outputs_match_numpy_transcription(activation):
    ffn = _built_with_random_biases(activation=activation)
    x = random_floats(2, 4, HIDDEN_DIM)
    np.testing.assert_allclose(
        to_numpy(ffn(x)), _numpy_feed_forward(ffn, x, activation), atol=1e-5
    )


def test_only_gated_variants_have_a_gate_projection():
    paths = {
        activation: sorted(
            w.path.split("/", 1)[1]
            for w in _built_with_random_biases(activation=activation).weights
        )
        for activation in ("gelu", "swiglu")
    }
    assert paths["gelu"] == [
        "intermediate/bias",
        "intermediate/kernel",
        "output/bias",
        "output/kernel",
    ]
    assert paths["swiglu"] == sorted(paths["gelu"] + ["gate/bias", "gate/kernel"])


def test_gate_and_intermediate_kernels_start_different():
    ffn = _built_with_random_biases(activation="geglu")
    assert not np.allclose(
        to_numpy(ffn.gate_dense.kernel), to_numpy(ffn.intermediate_dense.kernel)
    )


def test_output_kernel_initializer_applies_only_to_the_output_projection():
    ffn = _built_with_random_biases(output_kernel_initializer="zeros")
    assert not np.any(to_numpy(ffn.output_dense.kernel))
    assert np.any(to_numpy(ffn.intermediate_dense.kernel))


def test_output_keeps_the_input_feature_size():
    ffn = layers.FeedForward(INTERMEDIATE_DIM)
    assert tuple(ffn(random_floats(2, 3, 5)).shape) == (2, 3, 5)
    assert ffn.compute_output_shape((None, 3, 5)) == (None, 3, 5)


def test_dropout_acts_only_in_training():
    ffn = _built_with_random_biases(activation="relu", dropout=0.5)
    x = random_floats(2, 4, HIDDEN_DIM)
    expected = _numpy_feed_forward(ffn, x, "relu")
    np.testing.assert_allclose(to_numpy(ffn(x)), expected, atol=1e-5)
    np.testing.assert_allclose(to_numpy(ffn(x, training=False)), expected, atol=1e-5)
    assert not np.allclose(to_numpy(ffn(x, training=True)), expected, atol=1e-3)


def test_custom_activation_callable_round_trips_through_config():
    ffn = layers.FeedForward(INTERMEDIATE_DIM, activation=keras.activations.tanh)
    revived = layers.FeedForward.from_config(ffn.get_config())
    assert revived.get_config()["activation"] == "tanh"


@pytest.mark.parametrize(
    "init_kwargs",
    [
        {"intermediate_dim": 16},
        {"intermediate_dim": 16, "activation": "gelu", "dropout": 0.1},
        {"intermediate_dim": 12, "activation": "geglu", "use_bias": False},
        {
            "intermediate_dim": 12,
            "activation": "swiglu",
            "output_kernel_initializer": layers.deepnorm_initializer(0.5),
        },
    ],
    ids=["relu", "gelu_dropout", "geglu_no_bias", "swiglu_deepnorm_init"],
)
def test_passes_the_layer_harness(init_kwargs, tmp_path):
    run_layer_test(
        layers.FeedForward,
        init_kwargs,
        random_floats(2, 4, HIDDEN_DIM),
        expected_output_shape=(2, 4, HIDDEN_DIM),
        tmp_path=tmp_path,
    )


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"intermediate_dim": 0}, "intermediate_dim, expected a positive integer"),
        ({"intermediate_dim": 2.5}, "intermediate_dim, expected a positive integer"),
        (
            {"intermediate_dim": 4, "activation": "reglu"},
            "expected 'geglu', 'swiglu', the name of a Keras activation.*"
            "Received: activation='reglu'",
        ),
        ({"intermediate_dim": 4, "dropout": 1.0}, r"dropout, expected a float in"),
        ({"intermediate_dim": 4, "dropout": -0.1}, r"dropout, expected a float in"),
    ],
)
def test_rejects_invalid_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        layers.FeedForward(**kwargs)


def test_rejects_inputs_with_unknown_feature_size():
    ffn = layers.FeedForward(INTERMEDIATE_DIM)
    with pytest.raises(ValueError, match="needs the last dimension of inputs"):
        ffn.build((2, 4, None))
