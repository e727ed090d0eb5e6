"""keras_transformer.plotting: curves and attention heat-maps as PNGs."""

import os

import numpy as np
import pytest

from keras_transformer import plotting
from keras_transformer.translation.translator import AttentionMap
from tests.conftest import is_png


def test_attention_plot_refuses_scores_that_do_not_fit_the_labels(tmp_path):
    with pytest.raises(ValueError, match=r"Expected scores of shape \(2, 3\)"):
        plotting.plot_attention(
            np.zeros((3, 2)), ["a", "b", "c"], ["x", "y"], tmp_path / "a.png"
        )
    assert not os.path.exists(tmp_path / "a.png")


def test_history_plot_is_a_png(tmp_path):
    history = {
        "loss": [1.0, 0.5],
        "masked_accuracy": [0.5, 0.9],
        "val_loss": [0.9, 0.6],
        "val_masked_accuracy": [0.6, 0.8],
        "learning_rate": [1e-3, 5e-4],
    }
    plotting.plot_history(history, tmp_path / "sub" / "curves.png", title="t")
    assert is_png(tmp_path / "sub" / "curves.png")


def test_attention_map_plot_draws_the_chosen_head_and_refuses_a_missing_one(tmp_path):
    attention = AttentionMap(
        source_tokens=["a", "b", "c"],
        target_tokens=["x", "[EOS]"],
        scores=np.full((2, 2, 3), 1 / 3, "float32"),
    )
    plotting.plot_attention_map(attention, head=1, path=tmp_path / "map.png")
    assert is_png(tmp_path / "map.png")
    with pytest.raises(ValueError, match="argument head, expected an index in"):
        plotting.plot_attention_map(attention, head=2, path=tmp_path / "no.png")
