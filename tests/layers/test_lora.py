"""LoRADense (LoRA, rsLoRA, DoRA) and the model-level adapter functions."""

import json
import math
import os

import keras
import numpy as np
import pytest

from keras_transformer import layers
from tests.conftest import random_floats, run_layer_test, to_numpy

D_IN, UNITS, RANK = 6, 5, 2


def built_layer(units=UNITS, input_dim=D_IN, **kwargs):
    layer = layers.LoRADense(units, **kwargs)
    layer.build((None, input_dim))
    return layer


def set_adapter(layer, seed=1):
    """Gives the adapter non-zero B (and a non-trivial magnitude for DoRA)."""
    rng = np.random.default_rng(seed)
    layer.lora_kernel_b.assign(rng.standard_normal(layer.lora_kernel_b.shape) * 0.3)
    if layer.use_dora:
        magnitude = to_numpy(layer.lora_magnitude)
        layer.lora_magnitude.assign(magnitude * rng.uniform(0.5, 1.5, magnitude.shape))


def numpy_lora(x, kernel, bias, a, b, scale):
    return x @ kernel + bias + scale * (x @ a @ b)


def numpy_dora(x, kernel, bias, a, b, magnitude, scale):
    updated = kernel + scale * a @ b
    return x @ (magnitude * updated / np.linalg.norm(updated, axis=0)) + bias


def weights_of(layer):
    return {
        name: to_numpy(getattr(layer, name))
        for name in ("kernel", "bias", "lora_kernel_a", "lora_kernel_b")
    }


@keras.saving.register_keras_serializable(package="test_lora")
class Block(keras.layers.Layer):
    """A container layer holding query/key/value projections."""

    def __init__(self, units=8, **kwargs):
        super().__init__(**kwargs)
        self.units = units
        self.query = layers.LoRADense(units, name="query")
        self.key = layers.LoRADense(units, name="key")
        self.value = layers.LoRADense(units, name="value")
        self.norm = keras.layers.LayerNormalization(name="norm")

    def build(self, input_shape):
        for projection in (self.query, self.key, self.value):
            projection.build(input_shape)
        self.norm.build(tuple(input_shape[:-1]) + (self.units,))

    def call(self, inputs, training=None):
        summed = (
            self.query(inputs, training=training)
            + self.key(inputs, training=training)
            + self.value(inputs, training=training)
        )
        return self.norm(summed)

    def get_config(self):
        return {**super().get_config(), "units": self.units}


def block_model(seed=7):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((4, 8))
    hidden = Block(name="block")(inputs)
    outputs = layers.LoRADense(3, name="head")(hidden)
    return keras.Model(inputs, outputs)


def fit_steps(model, x, steps=2):
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    target = np.ones((x.shape[0],) + tuple(model.output.shape[1:]), "float32")
    model.fit(x, target, batch_size=x.shape[0], epochs=steps, verbose=0)


# The layer harness.


@pytest.mark.parametrize(
    "init_kwargs",
    [
        {"units": UNITS},
        {"units": UNITS, "rank": RANK, "alpha": 4.0},
        {"units": UNITS, "rank": RANK, "use_dora": True, "use_rslora": True,
         "lora_dropout": 0.1},
    ],
    ids=["plain", "lora", "dora_rslora_dropout"],
)
def test_lora_dense_passes_the_layer_harness(init_kwargs, tmp_path):
    run_layer_test(
        layers.LoRADense,
        init_kwargs,
        random_floats(2, 3, D_IN),
        expected_output_shape=(2, 3, UNITS),
        tmp_path=tmp_path,
    )


# Numerics of the adapter.


@pytest.mark.parametrize(
    "use_rslora, expected_scale",
    [(False, 6.0 / 4), (True, 6.0 / math.sqrt(4))],
)
def test_scale_is_alpha_over_rank_or_over_sqrt_rank(use_rslora, expected_scale):
    layer = built_layer(rank=4, alpha=6.0, use_rslora=use_rslora)
    set_adapter(layer)
    x = random_floats(2, 3, D_IN)
    weights = weights_of(layer)

    assert layer.lora_scale == pytest.approx(expected_scale)
    np.testing.assert_allclose(
        to_numpy(layer(x)),
        numpy_lora(
            x, weights["kernel"], weights["bias"], weights["lora_kernel_a"],
            weights["lora_kernel_b"], expected_scale,
        ),
        atol=1e-5,
    )


def test_alpha_defaults_to_rank_so_the_scale_is_one():
    assert built_layer(rank=3).lora_scale == 1.0
    assert built_layer().lora_scale is None


@pytest.mark.parametrize("use_dora", [False, True], ids=["lora", "dora"])
def test_fresh_adapter_leaves_outputs_unchanged(use_dora):
    layer = built_layer(bias_initializer="random_normal")
    x = random_floats(2, 3, D_IN)
    base_outputs = to_numpy(layer(x))

    layer.enable_lora(RANK, alpha=16.0, use_dora=use_dora)

    assert layer.lora_enabled and not layer.merged
    assert not np.any(to_numpy(layer.lora_kernel_a) == 0)
    np.testing.assert_array_equal(to_numpy(layer.lora_kernel_b), 0)
    np.testing.assert_array_equal(to_numpy(layer(x)), base_outputs)


def test_adapter_a_is_he_uniform():
    layer = built_layer(units=8, input_dim=32, rank=8)
    a = to_numpy(layer.lora_kernel_a)
    limit = math.sqrt(6.0 / 32)
    assert np.all(np.abs(a) <= limit) and np.abs(a).max() > 0.8 * limit


def test_dora_forward_matches_the_numpy_formula():
    layer = built_layer(rank=RANK, alpha=3.0, use_dora=True, bias_initializer="ones")
    set_adapter(layer)
    x = random_floats(2, 3, D_IN)
    weights = weights_of(layer)

    np.testing.assert_allclose(
        to_numpy(layer(x)),
        numpy_dora(
            x, weights["kernel"], weights["bias"], weights["lora_kernel_a"],
            weights["lora_kernel_b"], to_numpy(layer.lora_magnitude), 1.5,
        ),
        atol=1e-5,
    )


def test_dora_magnitude_starts_at_the_base_column_norms():
    layer = built_layer(rank=RANK, use_dora=True)
    np.testing.assert_allclose(
        to_numpy(layer.lora_magnitude),
        np.linalg.norm(to_numpy(layer.kernel), axis=0),
        rtol=1e-6,
    )


@pytest.mark.parametrize("use_dora", [False, True], ids=["lora", "dora"])
def test_merge_then_unmerge_restores_the_base_kernel(use_dora):
    layer = built_layer(rank=RANK, alpha=4.0, use_dora=use_dora)
    set_adapter(layer)
    x = random_floats(2, 3, D_IN)
    base_kernel = to_numpy(layer.kernel)
    unmerged_outputs = to_numpy(layer(x))

    layer.merge()
    assert layer.merged
    assert np.abs(to_numpy(layer.kernel) - base_kernel).max() > 1e-2
    np.testing.assert_allclose(to_numpy(layer(x)), unmerged_outputs, atol=1e-5)

    layer.unmerge()
    assert not layer.merged
    np.testing.assert_allclose(to_numpy(layer.kernel), base_kernel, atol=1e-6, rtol=0)
    np.testing.assert_allclose(to_numpy(layer(x)), unmerged_outputs, atol=1e-5)


def test_lora_dropout_only_touches_the_adapter_branch():
    layer = built_layer(rank=RANK, lora_dropout=0.5)
    x = random_floats(2, 3, D_IN)
    weights = weights_of(layer)
    # With B = 0 only the base path contributes, and dropout leaves it alone.
    training_base = to_numpy(layer(x, training=True))
    np.testing.assert_array_equal(training_base, to_numpy(layer(x, training=False)))
    np.testing.assert_allclose(
        training_base, x @ weights["kernel"] + weights["bias"], atol=1e-6
    )

    set_adapter(layer)
    weights = weights_of(layer)
    expected_inference = numpy_lora(
        x, weights["kernel"], weights["bias"], weights["lora_kernel_a"],
        weights["lora_kernel_b"], 1.0,
    )
    np.testing.assert_allclose(
        to_numpy(layer(x, training=False)), expected_inference, atol=1e-5
    )
    training_outputs = to_numpy(layer(x, training=True))
    assert not np.allclose(training_outputs, expected_inference, atol=1e-3)


# Training and freezing.


@pytest.mark.parametrize("use_dora", [False, True], ids=["lora", "dora"])
def test_fit_updates_only_the_adapters(use_dora):
    model = block_model()
    x = random_floats(2, 4, 8)
    adapted = layers.enable_lora(model, rank=RANK, use_dora=use_dora)
    assert adapted == ["block/query", "block/value"]

    block = model.get_layer("block")
    adapters = [
        variable
        for layer in (block.query, block.value)
        for variable in (
            [layer.lora_kernel_a, layer.lora_kernel_b]
            + ([layer.lora_magnitude] if use_dora else [])
        )
    ]
    assert {id(v) for v in model.trainable_weights} == {id(v) for v in adapters}

    frozen_before = {v.path: to_numpy(v).copy() for v in model.non_trainable_weights}
    adapters_before = [to_numpy(v).copy() for v in adapters]
    fit_steps(model, x)

    for variable in model.non_trainable_weights:
        np.testing.assert_array_equal(to_numpy(variable), frozen_before[variable.path])
    for before, variable in zip(adapters_before, adapters):
        assert not np.array_equal(before, to_numpy(variable)), variable.path


@pytest.mark.parametrize("use_dora", [False, True], ids=["lora", "dora"])
def test_trainable_parameter_count_is_rank_times_d_in_plus_d_out(use_dora):
    model = block_model()
    layers.enable_lora(model, target_layers=("*query", "*value", "head"), rank=3,
                       use_dora=use_dora)
    per_projection = {"block/query": (8, 8), "block/value": (8, 8), "head": (8, 3)}
    expected = sum(
        3 * (d_in + d_out) + (d_out if use_dora else 0)
        for d_in, d_out in per_projection.values()
    )
    assert sum(int(np.prod(v.shape)) for v in model.trainable_weights) == expected


def test_an_attached_adapter_adds_scale_x_a_b_and_detaching_restores_the_layer():
    layer = built_layer()
    x = random_floats(3, D_IN, seed=4)
    plain = to_numpy(layer(x))
    a = random_floats(D_IN, RANK, seed=5)
    b = random_floats(RANK, UNITS, seed=6)

    class Adapter:
        kernel_a, kernel_b, scale = a, b, 1.5

    layer.attach(Adapter)
    assert layer.attached_adapter is Adapter
    expected = numpy_lora(
        x, to_numpy(layer.kernel), to_numpy(layer.bias), a, b, 1.5
    )
    np.testing.assert_allclose(to_numpy(layer(x)), expected, atol=1e-5)
    # Nothing is saved with the layer, and the layer's own state is untouched.
    assert not layer.lora_enabled and len(layer.weights) == 2
    layer.attach(None)
    np.testing.assert_array_equal(to_numpy(layer(x)), plain)


def test_an_adapter_is_attached_to_a_layer_without_its_own_adapter_only():
    layer = built_layer(rank=RANK)

    class Adapter:
        kernel_a, kernel_b, scale = np.zeros((D_IN, 1)), np.zeros((1, UNITS)), 1.0

    with pytest.raises(ValueError, match="has its own LoRA adapter"):
        layer.attach(Adapter)
    plain = built_layer()
    plain.attach(Adapter)
    model = keras.Sequential([keras.Input((D_IN,)), plain])
    with pytest.raises(ValueError, match="has a named adapter attached"):
        layers.enable_lora(model, target_layers="*")


def test_layer_enable_lora_freezes_kernel_and_bias():
    layer = built_layer()
    layer.enable_lora(RANK)
    assert [v.name for v in layer.trainable_weights] == [
        "lora_kernel_a", "lora_kernel_b"
    ]


# Model-level functions.


def test_enable_lora_adapts_only_matching_paths_inside_a_container():
    model = block_model()
    adapted = layers.enable_lora(model, target_layers=["block/k*", "*value"], rank=RANK,
                                 freeze_base=False)
    block = model.get_layer("block")

    assert adapted == ["block/key", "block/value"]
    assert block.key.lora_enabled and block.value.lora_enabled
    assert not block.query.lora_enabled
    assert not model.get_layer("head").lora_enabled
    # Without freeze_base only the adapted kernels are frozen.
    assert block.norm.gamma.trainable and block.query.kernel.trainable
    assert not block.key.kernel.trainable


def test_enable_lora_lists_available_paths_when_nothing_matches():
    model = block_model()
    with pytest.raises(
        ValueError,
        match=r"No LoRADense layer .* matches target_layers=\['\*attn'\]\. "
        r"Available LoRADense paths: 'block/query', 'block/key', 'block/value', "
        r"'head'",
    ):
        layers.enable_lora(model, target_layers=["*attn"])


def test_enable_lora_refuses_layers_that_already_have_an_adapter():
    model = block_model()
    layers.enable_lora(model, rank=RANK)
    with pytest.raises(ValueError, match="'block/query' already has a LoRA adapter"):
        layers.enable_lora(model, target_layers="*query")


@pytest.mark.parametrize("use_dora", [False, True], ids=["lora", "dora"])
def test_merge_lora_keeps_model_outputs_including_compiled_predict(use_dora):
    model = block_model()
    x = random_floats(2, 4, 8)
    layers.enable_lora(model, rank=RANK, use_dora=use_dora)
    fit_steps(model, x)
    unmerged = model.predict(x, verbose=0)

    assert layers.merge_lora(model) == ["block/query", "block/value"]
    np.testing.assert_allclose(model.predict(x, verbose=0), unmerged, atol=1e-5)
    with pytest.raises(ValueError, match="are already merged"):
        layers.merge_lora(model)

    assert layers.unmerge_lora(model) == ["block/query", "block/value"]
    np.testing.assert_allclose(model.predict(x, verbose=0), unmerged, atol=1e-5)


# Saving.


@pytest.mark.parametrize("merged", [False, True], ids=["unmerged", "merged"])
@pytest.mark.parametrize("use_dora", [False, True], ids=["lora", "dora"])
def test_keras_file_round_trip_keeps_adapters(merged, use_dora, tmp_path):
    model = block_model()
    x = random_floats(2, 4, 8)
    layers.enable_lora(model, rank=RANK, use_dora=use_dora, lora_dropout=0.1)
    fit_steps(model, x)
    query = model.get_layer("block").query
    base_kernel = to_numpy(query.kernel)
    adapter = {name: to_numpy(v) for name, v in query._adapter_variables().items()}
    if merged:
        layers.merge_lora(model)
    outputs = to_numpy(model(x))

    path = os.path.join(str(tmp_path), "model.keras")
    model.save(path)
    reloaded = keras.saving.load_model(path)
    reloaded_query = reloaded.get_layer("block").query

    np.testing.assert_array_equal(to_numpy(reloaded(x)), outputs)
    assert reloaded_query.merged == merged
    for name, value in adapter.items():
        np.testing.assert_array_equal(to_numpy(getattr(reloaded_query, name)), value)
    assert not reloaded_query.kernel.trainable
    if merged:
        layers.unmerge_lora(reloaded)
        np.testing.assert_allclose(
            to_numpy(reloaded_query.kernel), base_kernel, atol=1e-6, rtol=0
        )


def test_adapter_enabled_after_build_survives_a_weights_file(tmp_path):
    layer = built_layer()
    layer.enable_lora(RANK, use_dora=True)
    set_adapter(layer)
    model = keras.Sequential([keras.Input((D_IN,)), layer])
    path = os.path.join(str(tmp_path), "model.weights.h5")
    model.save_weights(path)

    twin = keras.Sequential(
        [keras.Input((D_IN,)), layers.LoRADense(UNITS, rank=RANK, use_dora=True)]
    )
    twin.load_weights(path)
    x = random_floats(2, D_IN)
    np.testing.assert_array_equal(to_numpy(twin(x)), to_numpy(model(x)))


def test_weights_with_an_adapter_recreate_it_on_a_plain_layer(tmp_path):
    adapted = built_layer(rank=RANK, alpha=3.0, use_rslora=True)
    set_adapter(adapted)
    adapted.merge()
    model = keras.Sequential([keras.Input((D_IN,)), adapted])
    path = os.path.join(str(tmp_path), "model.weights.h5")
    model.save_weights(path)

    plain = keras.Sequential([keras.Input((D_IN,)), layers.LoRADense(UNITS)])
    plain.load_weights(path)
    layer = plain.layers[0]

    assert (layer.rank, layer.alpha, layer.use_rslora, layer.merged) == (
        RANK, 3.0, True, True
    )
    assert [v.name for v in layer.trainable_weights] == [
        "lora_kernel_a", "lora_kernel_b"
    ]
    x = random_floats(2, D_IN)
    np.testing.assert_array_equal(to_numpy(plain(x)), to_numpy(model(x)))


def test_loading_weights_checks_the_adapter_against_the_file(tmp_path):
    base_path = os.path.join(str(tmp_path), "base.weights.h5")
    keras.Sequential([keras.Input((D_IN,)), layers.LoRADense(UNITS)]).save_weights(
        base_path
    )
    adapted = keras.Sequential(
        [keras.Input((D_IN,)), layers.LoRADense(UNITS, rank=RANK)]
    )
    with pytest.raises(ValueError, match="saved without a LoRA adapter; load them"):
        adapted.load_weights(base_path)

    lora_path = os.path.join(str(tmp_path), "lora.weights.h5")
    adapted.save_weights(lora_path)
    other = keras.Sequential(
        [keras.Input((D_IN,)), layers.LoRADense(UNITS, rank=RANK, use_dora=True)]
    )
    with pytest.raises(ValueError, match="its LoRA adapter has .*'use_dora': True"):
        other.load_weights(lora_path)


@pytest.mark.parametrize("use_dora", [False, True], ids=["lora", "dora"])
def test_adapter_file_round_trip_restores_fine_tuned_outputs(use_dora, tmp_path):
    model = block_model()
    base_weights = model.get_weights()
    x = random_floats(2, 4, 8)
    layers.enable_lora(model, target_layers=("*query", "head"), rank=RANK,
                       alpha=4.0, use_rslora=True, use_dora=use_dora)
    fit_steps(model, x)
    path = os.path.join(str(tmp_path), "adapters.npz")
    layers.save_lora_weights(model, path)

    fresh = block_model(seed=99)
    fresh.set_weights(base_weights)
    loaded = layers.load_lora_weights(fresh, path)

    assert loaded == ["block/query", "head"]
    head = fresh.get_layer("head")
    assert (head.rank, head.alpha, head.use_rslora, head.use_dora) == (
        RANK, 4.0, True, use_dora
    )
    np.testing.assert_array_equal(to_numpy(fresh(x)), to_numpy(model(x)))
    assert {v.path for v in fresh.trainable_weights} == {
        v.path for v in model.trainable_weights
    }


def test_save_lora_weights_replaces_a_file_atomically(tmp_path, monkeypatch):
    model = block_model()
    layers.enable_lora(model, rank=RANK)
    path = tmp_path / "adapters.npz"
    layers.save_lora_weights(model, path)
    original = path.read_bytes()

    def failing_savez(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", failing_savez)
    with pytest.raises(OSError, match="disk full"):
        layers.save_lora_weights(model, path)

    assert path.read_bytes() == original
    assert sorted(os.listdir(tmp_path)) == ["adapters.npz"]


# Bad arguments and bad files.


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"rank": 0}, "expected a positive integer. Received: rank=0"),
        ({"rank": 2.5}, "expected a positive integer. Received: rank=2.5"),
        ({"rank": 2, "alpha": -1.0}, "positive finite number. Received: alpha=-1.0"),
        ({"rank": 2, "alpha": 0}, "positive finite number. Received: alpha=0"),
        ({"rank": 2, "lora_dropout": 1.0}, r"\[0, 1\). Received: lora_dropout=1.0"),
        ({"rank": 2, "lora_dropout": -0.1}, r"\[0, 1\). Received: lora_dropout=-0.1"),
        ({"rank": 2, "use_dora": "yes"}, "Received: use_dora='yes'"),
        ({"alpha": 4.0}, "Received alpha=4.0 without rank"),
        ({"use_dora": True}, "Received use_dora=True without rank"),
        ({"lora_dropout": 0.1}, "Received lora_dropout=0.1 without rank"),
    ],
)
def test_bad_constructor_arguments_are_rejected(kwargs, message):
    with pytest.raises(ValueError, match=message):
        layers.LoRADense(UNITS, **kwargs)


def test_bad_enable_lora_arguments_are_rejected_before_any_change():
    model = block_model()
    with pytest.raises(ValueError, match="Received: rank=-1"):
        layers.enable_lora(model, rank=-1)
    with pytest.raises(ValueError, match="Received: target_layers=\\(\\)"):
        layers.enable_lora(model, target_layers=())
    assert not model.get_layer("block").query.lora_enabled


def test_layer_enable_lora_needs_a_built_layer_without_an_adapter():
    with pytest.raises(ValueError, match="not built yet.*Call the layer on an input"):
        layers.LoRADense(UNITS).enable_lora(RANK)
    layer = built_layer(rank=RANK)
    with pytest.raises(ValueError, match="already has a LoRA adapter \\(rank=2\\)"):
        layer.enable_lora(RANK)


def test_merge_and_unmerge_say_when_there_is_nothing_to_do():
    plain = built_layer()
    with pytest.raises(ValueError, match="has no LoRA adapter to merge"):
        plain.merge()
    with pytest.raises(ValueError, match="has no LoRA adapter to unmerge"):
        plain.unmerge()
    layer = built_layer(rank=RANK)
    with pytest.raises(ValueError, match="is not merged, so there is nothing to"):
        layer.unmerge()
    layer.merge()
    with pytest.raises(ValueError, match="is already merged"):
        layer.merge()
    with pytest.raises(ValueError, match="has no LoRA adapters to merge"):
        layers.merge_lora(block_model())


def test_dora_refuses_an_irreversible_merge():
    layer = built_layer(rank=RANK, use_dora=True)
    layer.lora_magnitude.assign(np.zeros(UNITS, "float32"))
    with pytest.raises(ValueError, match="5 output unit\\(s\\) have magnitude 0"):
        layer.merge()


def test_save_lora_weights_needs_adapters(tmp_path):
    with pytest.raises(ValueError, match="has no LoRA adapters to save"):
        layers.save_lora_weights(block_model(), tmp_path / "adapters.npz")


def test_load_lora_weights_reports_a_missing_file(tmp_path):
    with pytest.raises(ValueError, match="LoRA weights file not found: .*missing.npz"):
        layers.load_lora_weights(block_model(), tmp_path / "missing.npz")


def test_load_lora_weights_rejects_a_file_of_another_kind(tmp_path):
    path = tmp_path / "other.npz"
    np.savez(path, weights=np.ones(3))
    with pytest.raises(ValueError, match="is not a LoRA weights file"):
        layers.load_lora_weights(block_model(), path)


def saved_adapter_file(tmp_path):
    """(path, arrays, metadata) of a saved adapter file, free to rewrite."""
    model = block_model()
    layers.enable_lora(model, target_layers="head", rank=RANK)
    path = tmp_path / "adapters.npz"
    layers.save_lora_weights(model, path)
    with np.load(path) as archive:
        arrays = {key: archive[key] for key in archive.files}
    metadata = json.loads(arrays["__lora_metadata__"].item())
    return path, arrays, metadata


def with_settings(metadata, **changes):
    adapters = {
        path: {**settings, **changes} for path, settings in metadata["adapters"].items()
    }
    return json.dumps({**metadata, "adapters": adapters})


MALFORMED_ADAPTER_FILES = {
    "garbled metadata": (lambda arrays, meta: {"__lora_metadata__": "{not json"}, "does not parse"),
    "numeric metadata": (lambda arrays, meta: {"__lora_metadata__": 5}, "not a JSON object"),
    "metadata list": (lambda arrays, meta: {"__lora_metadata__": "[1]"}, "not a JSON object"),
    "no adapters": (
        lambda arrays, meta: {"__lora_metadata__": json.dumps({**meta, "adapters": None})},
        "lists no adapters",
    ),
    "a setting missing": (
        lambda arrays, meta: {
            "__lora_metadata__": json.dumps(
                {**meta, "adapters": {"head": {"rank": RANK}}}
            )
        },
        "settings of the adapter 'head' are invalid",
    ),
    "a string rank": (
        lambda arrays, meta: {"__lora_metadata__": with_settings(meta, rank="two")},
        "argument rank, expected a positive integer",
    ),
    "a string flag": (
        lambda arrays, meta: {"__lora_metadata__": with_settings(meta, use_dora="False")},
        "use_dora",
    ),
    "text weights": (
        lambda arrays, meta: {"head/lora_kernel_a": arrays["head/lora_kernel_a"].astype("U8")},
        "'head/lora_kernel_a' holds <U8 values, expected floating-point",
    ),
}  # fmt: skip


@pytest.mark.parametrize("case", MALFORMED_ADAPTER_FILES)
def test_load_lora_weights_names_the_file_and_the_defect_of_a_malformed_one(
    tmp_path, case
):
    path, arrays, metadata = saved_adapter_file(tmp_path)
    rewrite, message = MALFORMED_ADAPTER_FILES[case]
    np.savez(path, **{**arrays, **rewrite(arrays, metadata)})
    target = block_model()
    with pytest.raises(ValueError, match=rf"adapters.npz.*{message}"):
        layers.load_lora_weights(target, path)
    assert not target.get_layer("head").lora_enabled


def test_save_lora_weights_onto_a_folder_is_refused(tmp_path):
    model = block_model()
    layers.enable_lora(model, target_layers="head", rank=RANK)
    with pytest.raises(ValueError, match="it is a folder"):
        layers.save_lora_weights(model, tmp_path)


def test_load_lora_weights_rejects_unknown_layer_paths(tmp_path):
    model = block_model()
    layers.enable_lora(model, rank=RANK)
    path = tmp_path / "adapters.npz"
    layers.save_lora_weights(model, path)

    inputs = keras.Input((4, 8))
    other = keras.Model(inputs, layers.LoRADense(3, name="head")(inputs))
    with pytest.raises(
        ValueError,
        match=r"not LoRADense layers of model .*\['block/query', 'block/value'\]\. "
        r"Available LoRADense paths: 'head'",
    ):
        layers.load_lora_weights(other, path)


def test_load_lora_weights_reports_shape_mismatches(tmp_path):
    model = block_model()
    layers.enable_lora(model, target_layers="head", rank=RANK)
    path = tmp_path / "adapters.npz"
    layers.save_lora_weights(model, path)

    inputs = keras.Input((4, 16))
    wider = keras.Model(inputs, layers.LoRADense(3, name="head")(inputs))
    with pytest.raises(
        ValueError,
        match=r"adapters.npz' does not fit model .*shape mismatch for layer "
        r"'head' \(lora_kernel_a\): expected "
        r"\(16, 2\) .* received \(8, 2\)",
    ):
        layers.load_lora_weights(wider, path)
    assert not wider.get_layer("head").lora_enabled


def test_load_lora_weights_refuses_merged_or_different_adapters(tmp_path):
    model = block_model()
    layers.enable_lora(model, target_layers="head", rank=RANK)
    path = tmp_path / "adapters.npz"
    layers.save_lora_weights(model, path)

    layers.merge_lora(model)
    with pytest.raises(ValueError, match="Call unmerge_lora\\(model\\) before loading"):
        layers.load_lora_weights(model, path)

    other = block_model()
    layers.enable_lora(other, target_layers="head", rank=RANK + 1)
    with pytest.raises(ValueError, match="'head' already has a LoRA adapter with"):
        layers.load_lora_weights(other, path)


def _encoder_decoder_blocks_model(hidden=16):
    source = keras.Input((None, hidden), name="source")
    target = keras.Input((None, hidden), name="target")
    encoded = layers.TransformerEncoderBlock(
        intermediate_dim=32, num_heads=4, name="encoder_block_0"
    )(source)
    decoded = layers.TransformerDecoderBlock(
        intermediate_dim=32, num_heads=4, name="decoder_block_0"
    )(target, encoded)
    return keras.Model([source, target], decoded)


@pytest.mark.slow
def test_enable_lora_on_attention_query_and_value_across_transformer_blocks(
    tmp_path,
):
    hidden, rank = 16, 2
    model = _encoder_decoder_blocks_model(hidden)
    inputs = [random_floats(2, 5, hidden, seed=1), random_floats(2, 4, hidden, seed=2)]
    base_outputs = to_numpy(model(inputs))

    adapted = layers.enable_lora(
        model, target_layers=("*attention/query", "*attention/value"), rank=rank
    )
    assert sorted(adapted) == sorted(
        f"{block}/{attention}_residual/{attention}/{projection}"
        for block, attentions in (
            ("encoder_block_0", ["self_attention"]),
            ("decoder_block_0", ["self_attention", "cross_attention"]),
        )
        for attention in attentions
        for projection in ("query", "value")
    )
    trainable = sum(int(np.prod(w.shape)) for w in model.trainable_weights)
    assert trainable == len(adapted) * rank * (hidden + hidden)
    np.testing.assert_array_equal(to_numpy(model(inputs)), base_outputs)

    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    model.fit(inputs, np.ones((2, 4, hidden), "float32"), epochs=2, verbose=0)
    tuned_outputs = to_numpy(model(inputs))
    assert not np.allclose(tuned_outputs, base_outputs)
    adapter_file = os.path.join(str(tmp_path), "adapters.npz")
    layers.save_lora_weights(model, adapter_file)

    fresh = _encoder_decoder_blocks_model(hidden)
    fresh.set_weights(_base_weights(model, fresh))
    layers.load_lora_weights(fresh, adapter_file)
    np.testing.assert_array_equal(to_numpy(fresh(inputs)), tuned_outputs)


def _base_weights(adapted_model, base_model):
    """The adapted model's values for every variable the base model has."""
    by_path = {v.path: to_numpy(v) for v in adapted_model.weights}
    assert len(by_path) == len(adapted_model.weights), "variable paths collide"
    return [by_path[v.path] for v in base_model.weights]


@pytest.mark.parametrize(
    "units, input_dim, rank",
    [(8, 8, 64), (8, 8, 9), (4, 32, 5), (32, 3, 4), (1, 1, 2)],
)
def test_a_rank_above_the_kernels_is_refused_at_build(units, input_dim, rank):
    layer = layers.LoRADense(units, rank=rank)
    largest = min(units, input_dim)
    with pytest.raises(ValueError, match=f"expected at most min.*= {largest}.*Received: rank={rank}"):
        layer.build((None, input_dim))
    assert not layer.built


def test_a_rank_equal_to_the_kernels_builds():
    assert built_layer(units=4, input_dim=6, rank=4).lora_kernel_a.shape == (6, 4)


def test_enable_lora_refuses_a_rank_above_the_kernels_and_adds_nothing():
    layer = built_layer(units=4, input_dim=6)
    with pytest.raises(ValueError, match="Received: rank=5"):
        layer.enable_lora(rank=5)
    assert not layer.lora_enabled
    layer.enable_lora(rank=4)
    assert layer.lora_enabled


def test_enable_lora_on_a_model_checks_every_rank_before_adapting_any():
    inputs = keras.Input((16,))
    wide = layers.LoRADense(16, name="wide")(inputs)
    narrow = layers.LoRADense(2, name="narrow")(wide)
    model = keras.Model(inputs, narrow)
    with pytest.raises(ValueError, match="layer 'narrow'"):
        layers.enable_lora(model, target_layers=("wide", "narrow"), rank=4)
    assert not any(layer.lora_enabled for layer in model.layers[1:])
