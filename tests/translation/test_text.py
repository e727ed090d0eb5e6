"""keras_transformer.translation.text: strings in and out of the model."""

from keras_transformer.translation import text


def test_pairs_that_fit_drop_sources_longer_than_the_model(tiny_recipe, date_texts):
    recipe = tiny_recipe.override(model={"max_source_length": 10})
    translator = recipe.translator_from_texts(*date_texts)
    sources = ["5 May 2021", "the 5th of May, 2021", "1 May 1999"]
    targets = ["2021-05-05", "2021-05-05b", "1999-05-01"]
    # Characters: 10, 20 and 10 tokens.
    assert text.pairs_that_fit(translator, sources, targets) == (
        ["5 May 2021", "1 May 1999"],
        ["2021-05-05", "1999-05-01"],
    )
    assert text.pairs_that_fit(translator, [], []) == ([], [])
