import re

import keras
import numpy as np
import pytest

from keras_transformer import losses, models, schedules
from tests.conftest import save_then_fail_a_second_save, to_numpy

SMALL = dict(
    source_vocabulary_size=30,
    target_vocabulary_size=20,
    hidden_dim=16,
    num_heads=4,
    intermediate_dim=32,
    dropout=0.0,
    max_source_length=12,
    max_target_length=10,
)
SOURCE = np.array([[5, 6, 7, 0, 0], [4, 3, 2, 9, 8]], "int32")
TARGET = np.array([[2, 5, 6, 7, 0], [2, 1, 4, 5, 6]], "int32")


def small_model(**overrides):
    return models.build_transformer(models.TransformerConfig(**{**SMALL, **overrides}))


def predict(model, source=SOURCE, target=TARGET):
    return to_numpy(model({"source_ids": source, "target_ids": target}))


CONFIGURATIONS = {
    "default": {},
    "post-learned": {"norm_placement": "post", "position_encoding": "learned"},
    "deepnorm-rms": {"norm_placement": "deepnorm", "norm_type": "rms_norm"},
    "rotary-gqa": {"position_encoding": "rotary", "num_key_value_heads": 2},
    "alibi-swiglu": {"position_encoding": "alibi", "activation": "swiglu"},
    "relative-sandwich": {"position_encoding": "relative", "norm_placement": "sandwich"},
    "shared": {"share_embeddings": True, "target_vocabulary_size": 30},
    "untied-rezero": {"tie_output_projection": False, "norm_placement": "rezero"},
}


@pytest.mark.parametrize(
    "overrides",
    [
        # The fast loop (-m "not slow") keeps the default configuration.
        pytest.param(overrides, id=name, marks=[] if name == "default" else pytest.mark.slow)
        for name, overrides in CONFIGURATIONS.items()
    ],
)
def test_every_configuration_builds_trains_and_reloads(overrides, tmp_path):
    # One block each way: what differs between configurations is inside the
    # block, and tracing a deeper model only slows the suite.
    model = small_model(num_encoder_layers=1, num_decoder_layers=1, **overrides)
    assert predict(model).shape == (2, 5, model.output.shape[-1])
    assert model.output.dtype == "float32"

    model.compile(
        optimizer=schedules.transformer_optimizer(16, warmup_steps=10),
        loss=losses.MaskedSparseCategoricalCrossentropy(label_smoothing=0.1),
    )
    labels = np.concatenate([TARGET[:, 1:], np.zeros((2, 1), "int32")], axis=1)
    history = model.fit(
        {"source_ids": SOURCE, "target_ids": TARGET}, labels, epochs=2, verbose=0
    )
    assert np.all(np.isfinite(history.history["loss"]))

    path = str(tmp_path / "model.keras")
    model.save(path)
    reloaded = keras.saving.load_model(path)
    np.testing.assert_allclose(predict(reloaded), predict(model), atol=1e-6)


def test_summary_names_every_block():
    model = small_model(num_encoder_layers=2, num_decoder_layers=3)
    names = [layer.name for layer in model.layers]
    for expected in [
        "source_ids", "target_ids", "padding_mask", "source_embedding",
        "target_embedding", "encoder_block_0", "encoder_block_1",
        "encoder_final_norm", "decoder_block_0", "decoder_block_1",
        "decoder_block_2", "decoder_final_norm", "logits",
    ]:
        assert expected in names


def test_padding_the_source_or_target_never_changes_real_token_logits():
    model = small_model(position_encoding="relative")
    padded_source = np.concatenate([SOURCE, np.zeros((2, 4), "int32")], axis=1)
    padded_target = np.concatenate([TARGET, np.zeros((2, 3), "int32")], axis=1)
    short = predict(model)
    long = predict(model, padded_source, padded_target)
    real = TARGET != 0
    np.testing.assert_allclose(long[:, :5][real], short[real], atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("position_encoding", ["sinusoidal", "learned", "rotary", "alibi", "relative"])
def test_cached_decode_steps_reproduce_the_full_model(position_encoding):
    model = small_model(position_encoding=position_encoding, num_key_value_heads=2)
    full = predict(model)
    parts = model.transformer_layers
    encoded, source_mask = models.encode(parts, SOURCE)
    self_caches, cross_caches = models.initial_decoder_caches(parts, encoded, 10)
    steps = []
    for index in range(TARGET.shape[1]):
        logits, self_caches = models.decode_step(
            parts, TARGET[:, index : index + 1], index, self_caches, cross_caches, source_mask
        )
        steps.append(to_numpy(logits))
    stepped = np.concatenate(steps, axis=1)
    real = TARGET != 0
    np.testing.assert_allclose(stepped[real], full[real], atol=1e-5)


@pytest.mark.slow
def test_a_reloaded_model_keeps_its_config_and_layers_as_attributes(tmp_path):
    model = small_model()
    path = str(tmp_path / "model.keras")
    model.save(path)
    reloaded = keras.saving.load_model(path, safe_mode=True)
    assert isinstance(reloaded, models.Transformer)
    assert reloaded.config == model.config
    parts = reloaded.transformer_layers
    assert len(parts.encoder_blocks) == 2 and len(parts.decoder_blocks) == 2
    assert parts.encoder_blocks[0] is reloaded.get_layer("encoder_block_0")
    np.testing.assert_allclose(predict(reloaded), predict(model), atol=1e-6)


def test_a_failing_save_of_a_built_model_keeps_the_previous_file(tmp_path, monkeypatch):
    model = small_model()
    path = save_then_fail_a_second_save(model, tmp_path, monkeypatch)
    np.testing.assert_allclose(
        predict(models.load_model(path)), predict(model), atol=1e-6
    )


def test_save_refuses_a_folder_a_wrong_suffix_and_overwrite_false(tmp_path):
    model = small_model()
    (tmp_path / "folder.keras").mkdir()
    with pytest.raises(ValueError, match="it is a folder"):
        model.save(str(tmp_path / "folder.keras"))
    with pytest.raises(ValueError, match="path ending in .keras"):
        model.save(str(tmp_path / "model.h5"))
    (tmp_path / "kept.keras").write_bytes(b"kept")
    with pytest.raises(ValueError, match="overwrite=False"):
        model.save(str(tmp_path / "kept.keras"), overwrite=False)
    assert (tmp_path / "kept.keras").read_bytes() == b"kept"


@pytest.mark.slow
def test_a_model_composed_from_its_layers_computes_the_same_logits(tmp_path):
    model = small_model()
    composed = models.Transformer(transformer_layers=model.transformer_layers)
    np.testing.assert_array_equal(predict(composed), predict(model))
    path = str(tmp_path / "composed.keras")
    composed.save(path)
    reloaded = keras.saving.load_model(path, safe_mode=True)
    assert reloaded.config is None
    np.testing.assert_allclose(predict(reloaded), predict(model), atol=1e-6)


def test_a_foreign_model_is_refused_by_the_decoders_with_a_clear_message():
    from keras_transformer import decoding

    inputs = keras.Input((3,))
    foreign = keras.Model(inputs, keras.layers.Dense(2)(inputs))
    with pytest.raises(ValueError, match="expected a keras_transformer Transformer"):
        decoding.greedy_decode(foreign, np.ones((1, 3), "int32"), 4)


def test_transformer_takes_exactly_one_of_config_and_layers():
    with pytest.raises(ValueError, match="Pass exactly one of config"):
        models.Transformer()
    with pytest.raises(ValueError, match="argument transformer_layers, expected a"):
        models.Transformer(transformer_layers=[keras.layers.Dense(2)])


def test_mixed_precision_model_keeps_float32_weights_and_logits():
    model = models.build_transformer(models.TransformerConfig(**SMALL), dtype="mixed_bfloat16")
    logits = predict(model)
    assert logits.dtype == np.float32 and np.all(np.isfinite(logits))
    assert all(w.dtype == "float32" for w in model.weights)


def test_config_round_trips_through_json_and_dicts():
    config = models.TransformerConfig(**SMALL, position_encoding="rotary")
    assert models.TransformerConfig.from_dict(config.to_dict()) == config
    assert '"position_encoding": "rotary"' in config.to_json()


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"hidden_dim": 0}, "hidden_dim"),
        ({"position_encoding": "absolute"}, "position_encoding"),
        ({"share_embeddings": True}, "share_embeddings=True"),
        ({"padding_id": 40}, "padding_id"),
        ({"num_decoder_layers": -1}, "num_decoder_layers"),
    ],
)
def test_bad_configurations_are_refused_with_the_field_named(overrides, message):
    with pytest.raises(ValueError, match=message):
        models.TransformerConfig(**{**SMALL, **overrides})


def test_unknown_config_fields_are_refused():
    with pytest.raises(ValueError, match="unknown TransformerConfig field .d_model."):
        models.TransformerConfig.from_dict({**SMALL, "d_model": 16})


@pytest.mark.parametrize(
    "arguments, message",
    [
        ({"hiden_dim": 16}, "unknown TransformerConfig field 'hiden_dim'. Did you mean 'hidden_dim'?"),
        ({"hidden_size": 16}, "Did you mean 'hidden_dim'?"),
        ({"num_layers": 2}, "Expected one of activation, attention_dropout"),
        ({"vocabulary_size": 10}, "unknown TransformerConfig field 'vocabulary_size'. Did you mean '"),
        ({"droput": 0.1}, "Did you mean 'dropout'?"),
        ({"position_encodings": "rotary"}, "Did you mean 'position_encoding'?"),
    ],
)  # fmt: skip
def test_a_misspelt_config_keyword_is_a_value_error_suggesting_the_field(
    arguments, message
):
    with pytest.raises(ValueError, match=re.escape(message)):
        models.TransformerConfig(**SMALL, **arguments)


def test_a_config_without_its_vocabulary_sizes_names_the_required_fields():
    with pytest.raises(ValueError, match="required fields .'source_vocabulary_size', 'target_vocabulary_size'"):
        models.TransformerConfig(hidden_dim=16)


def test_a_config_keeps_its_signature_for_introspection():
    import inspect

    parameters = inspect.signature(models.TransformerConfig).parameters
    assert list(parameters)[:2] == ["source_vocabulary_size", "target_vocabulary_size"]
    assert models.TransformerConfig(3, 3, padding_id=0).target_vocabulary_size == 3


# Packed rows (several pairs to a row, told apart by segment ids)

PAIRS = [([5, 6, 7], [2, 8, 9, 4]), ([11, 12, 13, 14, 15], [2, 3]), ([9, 4], [2, 6, 7, 8, 9, 10])]


def packed_row(pairs, source_length=12, target_length=14):
    """One packed row of `pairs`, padded at its end, as a batch of one."""
    row = {name: np.zeros((1, length), "int32") for name, length in (
        ("source_ids", source_length), ("source_segment_ids", source_length),
        ("target_ids", target_length), ("target_segment_ids", target_length))}  # fmt: skip
    source_at = target_at = 0
    for segment, (source, target) in enumerate(pairs, start=1):
        for side, ids, at in (("source", source, source_at), ("target", target, target_at)):
            row[f"{side}_ids"][0, at : at + len(ids)] = ids
            row[f"{side}_segment_ids"][0, at : at + len(ids)] = segment
        source_at, target_at = source_at + len(source), target_at + len(target)
    return row


@pytest.mark.parametrize("position_encoding", ["sinusoidal", "learned"])
def test_a_packed_row_gives_every_pair_the_logits_it_gets_alone(position_encoding):
    # Rows longer than the position tables: positions restart at each pair.
    model = small_model(position_encoding=position_encoding, max_source_length=6,
                        max_target_length=6)  # fmt: skip
    packed = to_numpy(model(packed_row(PAIRS)))
    at = 0
    for source, target in PAIRS:
        alone = predict(model, np.array([source], "int32"), np.array([target], "int32"))
        np.testing.assert_allclose(packed[0, at : at + len(target)], alone[0], atol=1e-5)
        at += len(target)
    assert np.isfinite(packed).all()


def test_the_loss_of_a_packed_row_is_the_loss_of_its_pairs_batched_alone():
    # The same loss computed another way: every pair in its own padded row.
    packed_model = small_model()
    model = small_model()
    model.set_weights(packed_model.get_weights())
    loss = losses.MaskedSparseCategoricalCrossentropy()
    row = packed_row(PAIRS)
    labels = np.zeros_like(row["target_ids"])
    at = 0
    for _, target in PAIRS:
        labels[0, at : at + len(target)] = target[1:] + [1]  # shifted, then an end
        at += len(target)
    width = max(len(target) for _, target in PAIRS)
    sources = keras.utils.pad_sequences([s for s, _ in PAIRS], padding="post")
    targets = keras.utils.pad_sequences([t for _, t in PAIRS], maxlen=width, padding="post")
    pair_labels = keras.utils.pad_sequences(
        [t[1:] + [1] for _, t in PAIRS], maxlen=width, padding="post"
    )
    packed_loss = to_numpy(loss(labels, packed_model(row)))
    pairs_loss = to_numpy(loss(pair_labels, model({"source_ids": sources, "target_ids": targets})))
    np.testing.assert_allclose(packed_loss, pairs_loss, rtol=1e-5)


@pytest.mark.parametrize("position_encoding", ["rotary", "alibi", "relative"])
def test_packed_rows_are_refused_when_positions_enter_inside_attention(position_encoding):
    model = small_model(position_encoding=position_encoding)
    with pytest.raises(ValueError, match="positions inside attention"):
        model(packed_row(PAIRS))


def test_packed_rows_without_every_segment_input_are_refused():
    row = packed_row(PAIRS)
    del row["source_segment_ids"]
    with pytest.raises(ValueError, match="missing: source_segment_ids"):
        small_model()(row)
