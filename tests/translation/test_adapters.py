"""Named LoRA adapters on a Translator (keras_transformer.translation.adapters)."""

import json
import os
import zipfile

import keras
import numpy as np
import pytest

tf = pytest.importorskip("tensorflow", reason="the Translator's tokenizers run in TF")

from keras_transformer.translation import Translator, adapters  # noqa: E402
from tests.conftest import run_python, to_numpy  # noqa: E402
from tests.translation.conftest import assert_translates_as_the_first_layout_did  # noqa: E402

pytestmark = pytest.mark.skipif(
    keras.backend.backend() != "tensorflow",
    reason="the Translator's text pipeline and export are TensorFlow programs",
)


def logits(translator, inputs):
    return to_numpy(translator(inputs, training=False))


def adapter_weights(translator, name):
    return [to_numpy(v).copy() for v in translator._adapter_bank.adapter_variables(name)]


def base_weights(translator):
    bank = {id(v) for v in translator._adapter_bank.weights}
    return [to_numpy(v).copy() for v in translator.weights if id(v) not in bank]


def fresh_base(adapted):
    return keras.saving.load_model(adapted.base_path)


@pytest.mark.slow
def test_adapters_are_listed_in_order_and_none_is_active(adapted):
    translator = adapted.translator
    assert translator.adapters == ["dmy", "rev"]
    assert translator.active_adapter is None


@pytest.mark.slow
def test_a_fresh_adapter_targets_query_and_value_and_changes_nothing(adapted):
    translator = fresh_base(adapted)
    paths = translator.add_adapter("fresh", rank=2)
    assert paths and all(path.endswith(("/query", "/value")) for path in paths)
    assert any("cross_attention" in path for path in paths)
    translator.set_adapter("fresh")
    # B starts at zero: the update is exactly zero.
    np.testing.assert_array_equal(logits(translator, adapted.inputs), adapted.base_logits)


@pytest.mark.slow
def test_with_no_adapter_active_the_base_is_bit_identical(adapted):
    translator = adapted.translator
    np.testing.assert_array_equal(logits(translator, adapted.inputs), adapted.base_logits)
    assert translator.translate(adapted.texts) == adapted.base_translations


@pytest.mark.slow
def test_each_adapter_learned_its_domain_and_switching_changes_the_outputs(
    adapter_translator, adapted
):
    sources = adapted.sources[:48]
    loss, outputs = {}, {}
    for name in (None, *adapted.domains):
        adapter_translator.set_adapter(name)
        outputs[name] = logits(adapter_translator, adapted.inputs)
        loss[name] = {
            domain: adapter_translator.evaluate(
                sources, references[:48], verbose=0, return_dict=True
            )["loss"]
            for domain, references in adapted.domains.items()
        }
    # Each adapter fits its own domain better than the base and than the
    # other adapter does (the fixture's training is brief: losses, not
    # translations, tell the domains apart).
    for name, other in (("dmy", "rev"), ("rev", "dmy")):
        assert loss[name][name] < loss[None][name], loss
        assert loss[name][name] < loss[other][name], loss
    assert not np.allclose(outputs["dmy"], outputs["rev"])
    assert not np.allclose(outputs["dmy"], outputs[None])


@pytest.mark.slow
def test_only_the_active_adapter_trains_and_the_base_and_other_adapter_stay(
    adapter_translator, adapted
):
    translator = adapter_translator
    translator.set_adapter("rev")
    trainable = {id(v) for v in translator.trainable_weights}
    assert trainable == {id(v) for v in translator._adapter_bank.adapter_variables("rev")}
    base, dmy, rev = (
        base_weights(translator),
        adapter_weights(translator, "dmy"),
        adapter_weights(translator, "rev"),
    )
    # set_adapter recompiled: fit trains the adapter it made trainable.
    translator.fit(adapted.sources[:32], adapted.domains["rev"][:32], epochs=1, verbose=0)
    trained_rev = adapter_weights(translator, "rev")
    # The fixture is shared (and exported once per worker): put "rev" back.
    for variable, value in zip(translator._adapter_bank.adapter_variables("rev"), rev):
        variable.assign(value)
    for before, after in zip(base, base_weights(translator)):
        np.testing.assert_array_equal(before, after)
    for before, after in zip(dmy, adapter_weights(translator, "dmy")):
        np.testing.assert_array_equal(before, after)
    assert any(not np.array_equal(before, after) for before, after in zip(rev, trained_rev))
    translator.set_adapter(None)
    np.testing.assert_array_equal(logits(translator, adapted.inputs), adapted.base_logits)


@pytest.mark.slow
def test_with_no_adapter_active_the_base_is_trainable_again(adapted):
    translator = fresh_base(adapted)
    everything = len(translator.trainable_weights)
    translator.add_adapter("a")
    translator.set_adapter("a")
    assert len(translator.trainable_weights) == 2 * len(
        translator._adapter_bank.specs["a"].paths
    )
    translator.set_adapter(None)
    assert len(translator.trainable_weights) == everything


@pytest.mark.slow
def test_an_adapter_saved_and_loaded_onto_a_fresh_base_computes_the_same(
    adapter_translator, adapted, tmp_path
):
    path = tmp_path / "dmy.npz"
    adapter_translator.save_adapter("dmy", path)
    adapter_translator.set_adapter("dmy")
    expected_logits = logits(adapter_translator, adapted.inputs)
    expected = adapter_translator.translate(adapted.texts)

    fresh = fresh_base(adapted)
    assert fresh.load_adapter(path) == "dmy"
    assert fresh.adapters == ["dmy"] and fresh.active_adapter is None
    fresh.set_adapter("dmy")
    np.testing.assert_array_equal(logits(fresh, adapted.inputs), expected_logits)
    assert fresh.translate(adapted.texts) == expected
    # A second copy under another name; the file holds the adapter alone.
    assert fresh.load_adapter(path, name="dmy_copy") == "dmy_copy"
    assert os.path.getsize(path) < 0.2 * os.path.getsize(adapted.base_path)


def test_an_adapter_file_of_the_first_layout_loads_onto_its_base_as_it_was(
    first_layout,
):
    from keras_transformer import models

    base = models.load_model(first_layout.keras_path)

    assert base.load_adapter(first_layout.adapter_path, name="dogs_file") == "dogs_file"
    assert base._adapter_bank.specs["dogs_file"].paths == base._adapter_bank.specs["dogs"].paths
    assert_translates_as_the_first_layout_did(base, first_layout, "dogs_file")


def test_an_adapter_file_of_the_first_layout_is_refused_by_another_base(first_layout):
    from keras_transformer import models

    other = models.load_model(first_layout.keras_path)
    paths = other._adapter_bank.specs["dogs"].paths
    target = _lora_layer(other, paths[-1])
    target.kernel.assign(target.kernel + 1e-3)

    with pytest.raises(ValueError, match="'again' in .*dogs.npz.* was trained on another base"):
        other.load_adapter(first_layout.adapter_path, name="again")
    assert other.adapters == ["dogs"]


@pytest.mark.slow
def test_an_adapter_trained_on_another_base_is_refused_naming_both(
    adapter_translator, adapted, tmp_path
):
    path = tmp_path / "rev.npz"
    adapter_translator.save_adapter("rev", path)
    other = fresh_base(adapted)
    # Same architecture and tokenizers, one kernel the adapter modifies moved.
    paths = adapter_translator._adapter_bank.specs["rev"].paths
    target = _lora_layer(other, paths[0])
    target.kernel.assign(target.kernel + 1e-3)
    expected = adapter_translator._adapter_bank.specs["rev"].base
    ours = adapters.fingerprint(other, paths)
    with pytest.raises(ValueError, match="trained on another base") as error:
        other.load_adapter(path)
    assert expected["weights_sha256"][:12] in str(error.value)
    assert ours["weights_sha256"][:12] in str(error.value)
    assert other.adapters == []


def _lora_layer(translator, path):
    return adapters.adaptable_layers(translator)[path]


@pytest.mark.slow
def test_an_adapter_of_a_differently_configured_base_is_refused(
    adapter_translator, adapted, tmp_path
):
    path = tmp_path / "dmy.npz"
    adapter_translator.save_adapter("dmy", path)
    wider = Translator.from_texts(
        adapted.sources, adapted.domains["dmy"], tokenizer="character",
        num_encoder_layers=1, num_decoder_layers=1, hidden_dim=24, num_heads=2,
        intermediate_dim=32,
    )  # fmt: skip
    with pytest.raises(ValueError, match="config sha256"):
        wider.load_adapter(path)


@pytest.mark.slow
def test_load_adapter_refuses_a_taken_name_and_files_that_are_not_adapters(
    adapter_translator, adapted, tmp_path
):
    path = tmp_path / "dmy.npz"
    adapter_translator.save_adapter("dmy", path)
    with pytest.raises(ValueError, match="already has an adapter of that name"):
        adapter_translator.load_adapter(path)
    with pytest.raises(ValueError, match="not found"):
        adapter_translator.load_adapter(tmp_path / "missing.npz")
    other = tmp_path / "array.npz"
    np.savez(other, x=np.zeros(3))
    with pytest.raises(ValueError, match="not an adapter file"):
        adapter_translator.load_adapter(other)
    assert adapter_translator.adapters == ["dmy", "rev"]


@pytest.mark.slow
def test_merge_adapter_equals_the_active_adapter_to_float32_rounding(
    adapter_translator, adapted
):
    merged = adapter_translator.merge_adapter("rev")
    assert isinstance(merged, Translator) and merged.adapters == []
    adapter_translator.set_adapter("rev")
    expected = logits(adapter_translator, adapted.inputs)
    np.testing.assert_allclose(logits(merged, adapted.inputs), expected, atol=1e-5, rtol=0)
    assert merged.translate(adapted.texts) == adapter_translator.translate(adapted.texts)
    # The translator it came from keeps its base and adapters.
    adapter_translator.set_adapter(None)
    np.testing.assert_array_equal(
        logits(adapter_translator, adapted.inputs), adapted.base_logits
    )


@pytest.mark.slow
def test_the_merged_kernel_is_w_plus_scale_a_b(adapted):
    translator = adapted.translator
    spec = translator._adapter_bank.specs["dmy"]
    merged = translator.merge_adapter("dmy")
    path = spec.paths[0]
    kernel_a, kernel_b = (to_numpy(v) for v in translator._adapter_bank.kernels("dmy", path))
    expected = to_numpy(_lora_layer(translator, path).kernel) + (
        spec.alpha / spec.rank
    ) * (kernel_a.astype("float64") @ kernel_b)
    np.testing.assert_allclose(to_numpy(_lora_layer(merged, path).kernel), expected, atol=1e-6)


@pytest.mark.slow
def test_a_keras_file_keeps_the_adapters_and_the_active_one_in_safe_mode(
    adapter_translator, adapted, tmp_path
):
    adapter_translator.save(str(tmp_path / "none_active.keras"))
    reloaded = keras.saving.load_model(tmp_path / "none_active.keras", safe_mode=True)
    assert reloaded.adapters == ["dmy", "rev"] and reloaded.active_adapter is None
    bank = {id(v) for v in reloaded._adapter_bank.weights}
    trainable = {id(v) for v in reloaded.trainable_weights}
    assert not trainable & bank and len(trainable) == len(reloaded.weights) - len(bank)

    adapter_translator.set_adapter("dmy")
    expected = adapter_translator.translate(adapted.texts)
    path = str(tmp_path / "adapted.keras")
    adapter_translator.save(path)
    reloaded = keras.saving.load_model(path, safe_mode=True)
    assert reloaded.adapters == ["dmy", "rev"] and reloaded.active_adapter == "dmy"
    assert reloaded.translate(adapted.texts) == expected
    assert {id(v) for v in reloaded.trainable_weights} == {
        id(v) for v in reloaded._adapter_bank.adapter_variables("dmy")
    }
    reloaded.set_adapter(None)
    np.testing.assert_array_equal(logits(reloaded, adapted.inputs), adapted.base_logits)


LOAD_AFTER_IMPORTING_THE_PACKAGE = r"""
import json, sys
import keras
import keras_transformer
model = keras.saving.load_model(sys.argv[1], safe_mode=True)
print(json.dumps(model.translate(json.loads(sys.argv[2]))))
"""


def _registered_names(config):
    if isinstance(config, dict):
        if "registered_name" in config:
            yield config["registered_name"]
        for value in config.values():
            yield from _registered_names(value)
    elif isinstance(config, list):
        for value in config:
            yield from _registered_names(value)


@pytest.mark.slow
def test_a_keras_file_names_its_classes_as_before_the_move_and_loads_after_import(
    adapter_translator, adapted, tmp_path
):
    # The Keras names files saved while the classes lived in
    # keras_transformer.models hold; the move to translation/ kept them.
    assert keras.saving.get_registered_name(Translator) == "keras_transformer>Translator"
    assert (
        keras.saving.get_registered_name(adapters.AdapterBank)
        == "keras_transformer>AdapterBank"
    )
    adapter_translator.set_adapter("dmy")
    expected = adapter_translator.translate(adapted.texts)
    path = str(tmp_path / "adapted.keras")
    adapter_translator.save(path)
    with zipfile.ZipFile(path) as archive:
        config = json.loads(archive.read("config.json"))
    assert "keras_transformer>Translator" in set(_registered_names(config))

    # A fresh process that imported nothing but the package root.
    result = run_python(LOAD_AFTER_IMPORTING_THE_PACKAGE, path, json.dumps(adapted.texts))

    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads(result.stdout.splitlines()[-1]) == expected


@pytest.mark.slow
@pytest.mark.parametrize(
    "arguments, message",
    [
        (dict(name="dmy"), "already has an adapter of that name"),
        (dict(name="a/b"), "adapter name of letters"),
        (dict(name=""), "adapter name of letters"),
        (dict(name=3), "adapter name of letters"),
        (dict(name="x", rank=0), "argument rank, expected a positive integer"),
        (dict(name="x", alpha=-1.0), "argument alpha, expected a positive"),
        (dict(name="x", target_layers="*nothing"), "No LoRADense layer"),
        (dict(name="x", target_layers=[]), "argument target_layers"),
    ],
)
def test_add_adapter_refuses_bad_arguments(adapted, arguments, message):
    with pytest.raises(ValueError, match=message):
        adapted.translator.add_adapter(**arguments)
    assert adapted.translator.adapters == ["dmy", "rev"]


@pytest.mark.slow
@pytest.mark.parametrize("method", ["set_adapter", "merge_adapter"])
def test_unknown_adapter_names_are_refused_naming_the_known_ones(adapted, method):
    with pytest.raises(ValueError, match=r"\['dmy', 'rev'\]. Received: name='nope'"):
        getattr(adapted.translator, method)("nope")


@pytest.mark.slow
def test_save_adapter_refuses_an_unknown_name_and_a_missing_folder(adapted, tmp_path):
    with pytest.raises(ValueError, match="Received: name='nope'"):
        adapted.translator.save_adapter("nope", tmp_path / "x.npz")
    with pytest.raises(ValueError, match="does not exist"):
        adapted.translator.save_adapter("dmy", tmp_path / "missing" / "x.npz")
