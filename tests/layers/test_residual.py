import math

import keras
import numpy as np
import pytest

from keras_transformer import layers
from tests.conftest import (
    random_floats,
    run_layer_test,
    to_numpy,
    value_and_gradients,
)

HIDDEN_DIM = 8
EPSILON = 1e-5


@keras.saving.register_keras_serializable(package="keras_transformer_tests")
class PairOutput(keras.layers.Layer):
    """Returns `(2 * x, x[..., :1])`, like attention returning extras."""

    def call(self, inputs):
        return 2.0 * inputs, inputs[..., :1]


@keras.saving.register_keras_serializable(package="keras_transformer_tests")
class AddContext(keras.layers.Layer):
    """Adds (or subtracts, with `negate=True`) a second tensor."""

    def call(self, inputs, context, negate=False, training=None):
        return inputs - context if negate else inputs + context


@keras.saving.register_keras_serializable(package="keras_transformer_tests")
class TrainingFlag(keras.layers.Layer):
    """Outputs zeros plus 1.0 when called in training mode."""

    def call(self, inputs, training=None):
        return keras.ops.zeros_like(inputs) + (1.0 if training else 0.0)


def _reference_norm(norm_type, weights):
    norm_class = {
        "layer_norm": keras.layers.LayerNormalization,
        "rms_norm": keras.layers.RMSNormalization,
    }[norm_type]
    norm = norm_class(epsilon=EPSILON)
    norm.build((None, HIDDEN_DIM))
    norm.set_weights(weights)
    return lambda value: to_numpy(norm(value))


def _randomise(layer, seed):
    for i, weight in enumerate(layer.weights):
        weight.assign(random_floats(*weight.shape, seed=seed + i))


def _dense_residual(x, **kwargs):
    """A built Residual around a Dense, with random (non-default) norm weights."""
    residual = layers.Residual(
        keras.layers.Dense(HIDDEN_DIM), epsilon=EPSILON, **kwargs
    )
    residual(x)
    for seed, name in ((100, "norm"), (200, "output_norm")):
        if hasattr(residual, name):
            _randomise(getattr(residual, name), seed)
    return residual


@pytest.mark.parametrize("norm_type", ["layer_norm", "rms_norm"])
@pytest.mark.parametrize("placement", ["post", "pre", "sandwich", "deepnorm"])
def test_each_placement_matches_the_hand_composed_computation(placement, norm_type):
    x = random_floats(2, 4, HIDDEN_DIM)
    alpha = 2.5 if placement == "deepnorm" else 1.0
    residual = _dense_residual(
        x, norm_placement=placement, norm_type=norm_type, deepnorm_alpha=alpha
    )

    def f(value):
        return to_numpy(residual.sublayer(value))

    norm = _reference_norm(norm_type, residual.norm.get_weights())
    if placement == "post":
        expected = norm(x + f(x))
    elif placement == "pre":
        expected = x + f(norm(x))
    elif placement == "sandwich":
        output_norm = _reference_norm(norm_type, residual.output_norm.get_weights())
        expected = x + output_norm(f(norm(x)))
    else:
        expected = norm(alpha * x + f(x))
    np.testing.assert_allclose(to_numpy(residual(x)), expected, atol=1e-5)


def test_rezero_starts_as_identity_and_its_scale_gets_a_gradient():
    x = random_floats(2, 4, HIDDEN_DIM)
    residual = layers.Residual(keras.layers.Dense(HIDDEN_DIM), norm_placement="rezero")
    np.testing.assert_array_equal(to_numpy(residual(x)), x)
    _, (gradient,) = value_and_gradients(
        lambda: keras.ops.sum(residual(x) ** 2), [residual.rezero_scale]
    )
    assert float(to_numpy(gradient)) != 0.0


def test_rezero_with_a_set_scale_adds_the_scaled_branch():
    x = random_floats(2, 4, HIDDEN_DIM)
    residual = layers.Residual(keras.layers.Dense(HIDDEN_DIM), norm_placement="rezero")
    residual(x)
    residual.rezero_scale.assign(0.3)
    expected = x + 0.3 * to_numpy(residual.sublayer(x))
    np.testing.assert_allclose(to_numpy(residual(x)), expected, atol=1e-6)


@pytest.mark.parametrize(
    "placement, expected_paths",
    [
        ("post", ["block/norm/beta", "block/norm/gamma"]),
        ("pre", ["block/norm/beta", "block/norm/gamma"]),
        ("deepnorm", ["block/norm/beta", "block/norm/gamma"]),
        (
            "sandwich",
            [
                "block/norm/beta",
                "block/norm/gamma",
                "block/output_norm/beta",
                "block/output_norm/gamma",
            ],
        ),
        ("rezero", ["block/rezero_scale"]),
    ],
)
def test_build_creates_the_named_norms_and_leaves_the_sublayer_to_its_first_call(
    placement, expected_paths
):
    residual = layers.Residual(
        keras.layers.Dense(HIDDEN_DIM), norm_placement=placement, name="block"
    )
    residual.build((None, 4, HIDDEN_DIM))
    assert sorted(w.path for w in residual.weights) == expected_paths
    assert not residual.sublayer.built


def test_dropout_acts_only_in_training():
    # A sublayer that outputs exactly 1.0 everywhere makes dropout visible:
    # the branch is 1.0 at inference, and 0.0 or 1 / (1 - rate) in training.
    constant = keras.layers.Dense(
        HIDDEN_DIM, kernel_initializer="zeros", bias_initializer="ones"
    )
    residual = layers.Residual(constant, norm_placement="pre", dropout=0.5)
    x = random_floats(2, 4, HIDDEN_DIM)
    np.testing.assert_allclose(to_numpy(residual(x)) - x, 1.0, atol=1e-6)
    np.testing.assert_allclose(
        to_numpy(residual(x, training=False)) - x, 1.0, atol=1e-6
    )
    branch = np.round(to_numpy(residual(x, training=True)) - x, 5)
    assert set(np.unique(branch)) == {0.0, 2.0}


def test_training_flag_reaches_the_sublayer():
    residual = layers.Residual(TrainingFlag(), norm_placement="pre")
    x = random_floats(2, 4, HIDDEN_DIM)
    np.testing.assert_allclose(to_numpy(residual(x, training=True)) - x, 1.0, atol=1e-6)
    np.testing.assert_allclose(to_numpy(residual(x, training=False)), x, atol=1e-6)


def test_extra_outputs_of_the_sublayer_pass_through_unchanged():
    x = random_floats(2, 4, HIDDEN_DIM)
    residual = layers.Residual(PairOutput(), norm_placement="post", epsilon=EPSILON)
    outputs = residual(x)
    assert isinstance(outputs, tuple) and len(outputs) == 2
    norm = _reference_norm("layer_norm", residual.norm.get_weights())
    np.testing.assert_allclose(to_numpy(outputs[0]), norm(3.0 * x), atol=1e-5)
    np.testing.assert_array_equal(to_numpy(outputs[1]), x[..., :1])


def test_extra_arguments_reach_the_sublayer_without_normalisation():
    x = random_floats(2, 4, HIDDEN_DIM)
    context = random_floats(2, 4, HIDDEN_DIM, seed=1, scale=5.0)
    residual = layers.Residual(AddContext(), norm_placement="pre", epsilon=EPSILON)
    outputs = residual(x, context, negate=True)
    norm = _reference_norm("layer_norm", residual.norm.get_weights())
    np.testing.assert_allclose(to_numpy(outputs), x + norm(x) - context, atol=1e-5)


def test_wraps_a_float32_sublayer_under_a_mixed_policy():
    residual = layers.Residual(
        keras.layers.Dense(HIDDEN_DIM), norm_placement="pre", dtype="mixed_bfloat16"
    )
    outputs = residual(random_floats(2, 4, HIDDEN_DIM))
    assert keras.backend.standardize_dtype(outputs.dtype) == "bfloat16"


@pytest.mark.parametrize(
    "placement, norm_type", [("post", "layer_norm"), ("pre", "rms_norm")]
)
def test_mixed_bfloat16_output_stays_close_to_float32(placement, norm_type):
    x = random_floats(2, 4, HIDDEN_DIM)

    def build(policy):
        residual = layers.Residual(
            layers.LoRADense(HIDDEN_DIM, dtype=policy),
            norm_placement=placement,
            norm_type=norm_type,
            dtype=policy,
        )
        residual.build(x.shape)
        residual.sublayer.build(x.shape)
        return residual

    full, mixed = build("float32"), build("mixed_bfloat16")
    _randomise(full, seed=300)
    mixed.set_weights(full.get_weights())
    assert all(w.dtype == "float32" for w in mixed.weights)
    mixed_outputs = mixed(x)
    assert keras.backend.standardize_dtype(mixed_outputs.dtype) == "bfloat16"
    np.testing.assert_allclose(
        to_numpy(keras.ops.cast(mixed_outputs, "float32")),
        to_numpy(full(x)),
        atol=0.1,
        rtol=0.02,
    )


@pytest.mark.parametrize("placement", ["post", "pre", "sandwich", "deepnorm", "rezero"])
def test_passes_the_layer_harness_around_lora_dense(placement, tmp_path):
    run_layer_test(
        layers.Residual,
        {
            "sublayer": layers.LoRADense(HIDDEN_DIM),
            "norm_placement": placement,
            "dropout": 0.1,
            "deepnorm_alpha": 1.7 if placement == "deepnorm" else 1.0,
        },
        random_floats(2, 4, HIDDEN_DIM),
        expected_output_shape=(2, 4, HIDDEN_DIM),
        tmp_path=tmp_path,
    )


def test_passes_the_layer_harness_around_keras_dense_with_rms_norm(tmp_path):
    run_layer_test(
        layers.Residual,
        {"sublayer": keras.layers.Dense(HIDDEN_DIM), "norm_type": "rms_norm"},
        random_floats(2, 4, HIDDEN_DIM),
        expected_output_shape=(2, 4, HIDDEN_DIM),
        tmp_path=tmp_path,
    )


def test_passes_the_layer_harness_with_extra_inputs_flags_and_outputs(tmp_path):
    run_layer_test(
        layers.Residual,
        {"sublayer": AddContext(), "norm_placement": "sandwich"},
        (random_floats(2, 4, HIDDEN_DIM), random_floats(2, 4, HIDDEN_DIM, seed=1)),
        call_kwargs={"negate": True},
        expected_output_shape=(2, 4, HIDDEN_DIM),
        tmp_path=tmp_path,
    )
    run_layer_test(
        layers.Residual,
        {"sublayer": PairOutput(), "norm_placement": "deepnorm", "deepnorm_alpha": 2.0},
        random_floats(2, 4, HIDDEN_DIM),
        expected_output_shape=(2, 4, HIDDEN_DIM),
        tmp_path=tmp_path,
    )


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"sublayer": "dense"}, "expected a keras.layers.Layer instance.*'dense'"),
        ({"norm_placement": "middle"}, "norm_placement, expected one of 'post'"),
        ({"norm_type": "batch_norm"}, "norm_type, expected one of 'layer_norm'"),
        ({"epsilon": 0.0}, "epsilon, expected a positive finite number"),
        ({"dropout": 1.0}, r"dropout, expected a float in the range \[0, 1\)"),
        (
            {"norm_placement": "deepnorm", "deepnorm_alpha": 0.0},
            "deepnorm_alpha, expected a positive finite number",
        ),
        (
            {"norm_placement": "post", "deepnorm_alpha": 2.0},
            "expected 1.0 unless norm_placement='deepnorm'",
        ),
    ],
)
def test_rejects_invalid_arguments(kwargs, message):
    kwargs = {"sublayer": keras.layers.Dense(HIDDEN_DIM), **kwargs}
    with pytest.raises(ValueError, match=message):
        layers.Residual(**kwargs)


def test_rejects_inputs_with_unknown_feature_size():
    residual = layers.Residual(keras.layers.Dense(HIDDEN_DIM))
    with pytest.raises(ValueError, match="needs the last dimension of inputs"):
        residual.build((2, 4, None))


@pytest.mark.parametrize(
    "norm_type, norm_class",
    [
        ("layer_norm", keras.layers.LayerNormalization),
        ("rms_norm", keras.layers.RMSNormalization),
    ],
)
def test_make_normalization_returns_the_keras_norm(norm_type, norm_class):
    norm = layers.make_normalization(norm_type, 1e-6, "final_norm", "mixed_float16")
    assert type(norm) is norm_class
    assert norm.epsilon == 1e-6
    assert norm.name == "final_norm"
    assert norm.dtype_policy.name == "mixed_float16"


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: layers.make_normalization("group_norm"), "norm_type, expected one of"),
        (lambda: layers.make_normalization("rms_norm", -1.0), "epsilon, expected"),
        (lambda: layers.needs_final_norm("middle"), "norm_placement, expected one of"),
        (lambda: layers.deepnorm_constants(0, 0), "needs at least one layer"),
        (lambda: layers.deepnorm_constants(-1, 6), "num_encoder_layers, expected a"),
        (lambda: layers.deepnorm_constants(6, 2.5), "num_decoder_layers, expected a"),
        (lambda: layers.deepnorm_initializer(0.0), "beta, expected a positive"),
    ],
)
def test_helpers_reject_invalid_arguments(call, message):
    with pytest.raises(ValueError, match=message):
        call()


@pytest.mark.parametrize(
    "placement, needed",
    [
        ("post", False),
        ("pre", True),
        ("sandwich", True),
        ("deepnorm", False),
        ("rezero", False),
    ],
)
def test_needs_final_norm_only_when_the_stream_is_never_normalised(placement, needed):
    assert layers.needs_final_norm(placement) is needed


@pytest.mark.parametrize("n, m", [(6, 6), (12, 3), (100, 200), (1, 1)])
def test_deepnorm_constants_for_encoder_decoder_follow_the_paper(n, m):
    constants = layers.deepnorm_constants(n, m)
    encoder_term = math.pow(n**4 * m, 1 / 16)
    assert constants["encoder_alpha"] == pytest.approx(0.81 * encoder_term)
    assert constants["encoder_beta"] == pytest.approx(0.87 / encoder_term)
    assert constants["decoder_alpha"] == pytest.approx(math.pow(3 * m, 0.25))
    assert constants["decoder_beta"] == pytest.approx(math.pow(12 * m, -0.25))


@pytest.mark.parametrize("layers_count", [1, 12, 1000])
def test_deepnorm_constants_for_single_stacks_follow_the_paper(layers_count):
    alpha = math.pow(2 * layers_count, 0.25)
    beta = math.pow(8 * layers_count, -0.25)
    assert layers.deepnorm_constants(layers_count, 0) == pytest.approx(
        {
            "encoder_alpha": alpha,
            "encoder_beta": beta,
            "decoder_alpha": None,
            "decoder_beta": None,
        }
    )
    assert layers.deepnorm_constants(0, layers_count) == pytest.approx(
        {
            "encoder_alpha": None,
            "encoder_beta": None,
            "decoder_alpha": alpha,
            "decoder_beta": beta,
        }
    )


def test_deepnorm_initializer_is_xavier_normal_scaled_by_beta():
    beta, fan_in, fan_out = 0.3, 512, 256
    kernel = to_numpy(layers.deepnorm_initializer(beta, seed=7)((fan_in, fan_out)))
    expected_std = beta * math.sqrt(2.0 / (fan_in + fan_out))
    assert kernel.std() == pytest.approx(expected_std, rel=0.02)
    assert abs(kernel.mean()) < 0.02 * expected_std
    # Untruncated: a normal draw this large has values beyond 2 std.
    assert np.abs(kernel).max() > 3 * expected_std
