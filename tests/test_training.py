"""keras_transformer.training: translation, scoring and plotting helpers."""

import os

import numpy as np
import pytest

from keras_transformer import data, models, training
from tests.conftest import is_png


@pytest.fixture
def tiny_model():
    source_tokenizer = data.CharacterTokenizer.from_texts(["5 March 2021", "1 May"])
    target_tokenizer = data.CharacterTokenizer.from_texts(["2021-03-05"])
    config = models.TransformerConfig(
        source_vocabulary_size=source_tokenizer.vocabulary_size,
        target_vocabulary_size=target_tokenizer.vocabulary_size,
        num_encoder_layers=1,
        num_decoder_layers=2,
        hidden_dim=16,
        num_heads=2,
        intermediate_dim=32,
        max_source_length=12,
        max_target_length=8,
    )
    return models.build_transformer(config), source_tokenizer, target_tokenizer


def test_translate_texts_is_independent_of_batching_and_blanks_empty_texts(
    tiny_model,
):
    model, source_tokenizer, target_tokenizer = tiny_model
    texts = ["5 March 2021", "", "1 May", "May 2021"]

    one_batch = training.translate_texts(
        model, source_tokenizer, target_tokenizer, texts, max_length=8
    )
    small_batches = training.translate_texts(
        model, source_tokenizer, target_tokenizer, texts, max_length=8, batch_size=3
    )

    assert one_batch == small_batches
    assert one_batch[1] == ""
    assert len(one_batch) == 4


def test_translate_texts_under_xla_pads_to_one_shape_and_matches_the_dynamic_path(
    tiny_model,
):
    model, source_tokenizer, target_tokenizer = tiny_model
    texts = ["5 March 2021", "", "1 May", "May 2021", "5 May"]

    dynamic = training.translate_texts(
        model, source_tokenizer, target_tokenizer, texts, max_length=8
    )
    compiled = training.translate_texts(
        model,
        source_tokenizer,
        target_tokenizer,
        texts,
        max_length=8,
        batch_size=2,
        jit_compile=True,
    )

    assert compiled == dynamic


def test_translate_texts_refuses_a_text_longer_than_the_model(tiny_model):
    model, source_tokenizer, target_tokenizer = tiny_model
    with pytest.raises(ValueError, match="Text 1 has 13 tokens, more than"):
        training.translate_texts(
            model, source_tokenizer, target_tokenizer, ["1 May", "5 March 20211"], 8
        )


def test_cross_attention_rows_are_distributions_over_real_source_tokens(tiny_model):
    model = tiny_model[0]
    source_ids = np.array([[5, 6, 7, 0, 0], [5, 6, 7, 8, 9]], "int32")
    target_ids = np.array([[2, 4, 5], [2, 6, 0]], "int32")

    scores = training.cross_attention_scores(model, source_ids, target_ids, layer=1)

    assert scores.shape == (2, 2, 3, 5)
    np.testing.assert_allclose(scores.sum(axis=-1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(scores[0, :, :, 3:], 0.0)


def test_cross_attention_of_a_missing_layer_is_refused(tiny_model):
    with pytest.raises(ValueError, match="the model has 2 decoder blocks"):
        training.cross_attention_scores(
            tiny_model[0], np.ones((1, 3), "int32"), np.ones((1, 2), "int32"), 2
        )


def test_exact_match_counts_whole_strings():
    match = training.exact_match(["2021-03-05", "2021-03-06", ""], ["2021-03-05"] * 3)
    assert (match.matched, match.total) == (1, 3)
    assert str(match) == "33.3% (1/3)"


def test_exact_match_refuses_unpaired_lists():
    with pytest.raises(ValueError, match="2 hypotheses and 1 references"):
        training.exact_match(["a", "b"], ["a"])


def test_attention_plot_refuses_scores_that_do_not_fit_the_labels(tmp_path):
    with pytest.raises(ValueError, match=r"Expected scores of shape \(2, 3\)"):
        training.plot_attention(
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
    training.plot_history(history, tmp_path / "sub" / "curves.png", title="t")
    assert is_png(tmp_path / "sub" / "curves.png")
