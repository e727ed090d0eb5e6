"""Fixtures of the text-task tests: a recipe that trains in seconds, and the
files of the Translator's first layout."""

import json
import os
import types

import keras
import numpy as np
import pytest

from keras_transformer.translation import recipes

# A recipe small enough to train in seconds on the date task.
TINY_MODEL = {
    "num_encoder_layers": 1,
    "num_decoder_layers": 1,
    "hidden_dim": 16,
    "num_heads": 2,
    "intermediate_dim": 32,
}


@pytest.fixture
def tiny_recipe():
    return recipes.DATE_TASK.override(
        model=TINY_MODEL,
        learning_rate=2e-3,
        warmup_steps=2,
        label_smoothing=0.1,
        epochs=1,
        batch_size=16,
    )


@pytest.fixture
def date_texts():
    from keras_transformer import data

    pairs = data.generate_date_pairs(48, seed=0)
    return [source for source, _ in pairs], [target for _, target in pairs]


@pytest.fixture(scope="session")
def first_layout():
    """The files of the Translator's first layout, when it *was* its
    Transformer (tests/translation/layout1/, made by its `make_fixtures.py`
    with that version's code), and what that version computed from them:
    `SimpleNamespace(keras_path, adapter_path, texts, inputs,
    base_translations, dogs_translations, base_logits, dogs_logits)`."""
    from tests.translation.layout1 import make_fixtures

    folder = os.path.dirname(make_fixtures.__file__)
    with open(os.path.join(folder, "expected.json"), encoding="utf-8") as file:
        expected = json.load(file)
    return types.SimpleNamespace(
        keras_path=os.path.join(folder, "translator.keras"),
        adapter_path=os.path.join(folder, "dogs.npz"),
        texts=make_fixtures.TEXTS,
        sources=make_fixtures.SOURCES,
        inputs={name: np.array(ids, "int32") for name, ids in expected["inputs"].items()},
        **{
            f"{key}_{kind}": np.array(expected[f"{key}_{kind}"], "float32")
            if kind == "logits"
            else expected[f"{key}_{kind}"]
            for key in ("base", "dogs")
            for kind in ("translations", "logits")
        },
    )


def assert_translates_as_the_first_layout_did(translator, first_layout, adapter):
    """Asserts that `translator`, with `adapter` active (None: the base),
    translates `first_layout.texts` and scores its inputs as the first
    layout's version did; leaves no adapter active."""
    translator.set_adapter(adapter)
    key = "base" if adapter is None else "dogs"
    assert translator.translate(first_layout.texts) == getattr(
        first_layout, f"{key}_translations"
    )
    # Recorded on another machine: float32 rounding may differ there.
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(translator(first_layout.inputs, training=False)),
        getattr(first_layout, f"{key}_logits"),
        rtol=1e-5,
        atol=1e-5,
    )
    translator.set_adapter(None)
