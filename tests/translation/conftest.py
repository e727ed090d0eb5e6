"""Fixtures of the text-task tests: a recipe that trains in seconds."""

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
