import io
import json
import os
import subprocess
import sys
import unicodedata

import keras
import numpy as np
import pytest
import sentencepiece
import tensorflow as tf

from keras_transformer import data, losses, models

# A small synthetic corpus: cased Latin with accents, Greek and Chinese.
_WORDS = (
    "The small dog runs over green grass . Der kleine Hund läuft über grünes "
    "Gras . Zwei Männer spielen Fußball am Strand ! Ein Café in Köln , "
    "Καλημέρα κόσμε , ο σκύλος τρέχει . 一只狗在草地上跑 。 两个男人在海滩上踢足球"
).split()
CORPUS = [
    " ".join(_WORDS[(i * 7 + j * 3) % len(_WORDS)] for j in range(4 + i % 9))
    for i in range(300)
] + ["Grüße aus Köln", "Καλημέρα κόσμε", "你好世界"]
VOCABULARY_SIZE = 120
ROUND_TRIP_TEXTS = [
    "The small Dog runs over grünes Gras.",
    "Zwei Männer spielen Fußball am Strand!",
    "Καλημέρα κόσμε, ο σκύλος τρέχει.",
    "一只狗在草地上跑。",
    "Ein Café in Köln",
]
SUBPROCESS_TIMEOUT = 120


def ragged_to_lists(ragged):
    return [row.tolist() for row in ragged.numpy()]


def decoded(strings):
    return [value.decode("utf-8") for value in strings.numpy().tolist()]


def nfkc_and_collapsed_spaces(text):
    """The documented `detokenize(tokenize(text))`, from the standard library:
    NFKC, Unicode whitespace and the zero-width space (not whitespace to
    Python) as separators, runs collapsed, ends stripped."""
    return " ".join(unicodedata.normalize("NFKC", text).replace("\u200b", " ").split())


@pytest.fixture(scope="module", params=data.SENTENCEPIECE_MODEL_TYPES)
def tokenizer(request):
    return data.SentencePieceTokenizer.from_texts(
        CORPUS, vocabulary_size=VOCABULARY_SIZE, model_type=request.param
    )


def test_special_pieces_hold_the_library_ids(tokenizer):
    assert tokenizer.vocabulary[:4] == list(data.SPECIAL_TOKENS)
    assert tokenizer.vocabulary_size == VOCABULARY_SIZE
    assert isinstance(tokenizer, data.Tokenizer)


def test_cased_accented_and_non_latin_text_round_trips(tokenizer):
    ids = tokenizer.tokenize(ROUND_TRIP_TEXTS)
    assert ids.dtype == tf.int32
    assert data.UNK_ID not in ids.flat_values.numpy()
    assert decoded(tokenizer.detokenize(ids)) == ROUND_TRIP_TEXTS


def test_round_trip_normalises_exactly_as_documented(tokenizer):
    texts = [
        "  Der\tkleine  Hund\u00a0läuft\n\u200bGras  ",
        "ｄｏｇ ﬁne",  # Full-width letters and a ligature: NFKC.
        "Cafe\u0301 Ko\u0308ln",  # Combining marks compose: NFKC.
    ]
    assert decoded(tokenizer.detokenize(tokenizer.tokenize(texts))) == [
        nfkc_and_collapsed_spaces(text) for text in texts
    ]
    control = tokenizer.detokenize(tokenizer.tokenize(["Hu\x01nd\x7f"]))
    assert decoded(control) == ["Hund"]


def test_empty_whitespace_and_invalid_utf8_inputs(tokenizer):
    ids = tokenizer.tokenize(tf.constant([b"", b"   ", b"\t\n", b"Hund \xff"]))
    rows = ragged_to_lists(ids)
    assert rows[:3] == [[], [], []]
    assert decoded(tokenizer.detokenize(ids))[:3] == ["", "", ""]
    # Invalid bytes become U+FFFD, as in the other tokenizers, which the
    # "nmt_nfkc" rule then deletes: nothing fails.
    assert decoded(tokenizer.detokenize(ids))[3] == "Hund"


def test_unseen_words_decompose_into_known_pieces(tokenizer):
    unseen = ["Grasläufer Hundemänner Κόσμος 草狗"]
    ids = ragged_to_lists(tokenizer.tokenize(unseen))[0]
    assert data.UNK_ID not in ids
    assert len(ids) > len(unseen[0].split())
    assert decoded(tokenizer.detokenize([ids])) == unseen


def test_byte_fallback_spells_unknown_characters_as_bytes():
    tokenizer = data.SentencePieceTokenizer.from_texts(
        CORPUS, vocabulary_size=VOCABULARY_SIZE + 256, byte_fallback=True
    )
    text = ["Hund 🐕 Ω"]
    ids = ragged_to_lists(tokenizer.tokenize(text))[0]
    assert data.UNK_ID not in ids
    assert "<0xF0>" in [tokenizer.vocabulary[i] for i in ids]
    assert decoded(tokenizer.detokenize([ids])) == text


def test_training_is_deterministic():
    models_ = [
        data.SentencePieceTokenizer.from_texts(CORPUS, vocabulary_size=100).model
        for _ in range(2)
    ]
    assert models_[0] == models_[1]


def test_character_coverage_below_one_leaves_rare_characters_unknown():
    tokenizer = data.SentencePieceTokenizer.from_texts(
        CORPUS + ["Ω"], vocabulary_size=100, character_coverage=0.99
    )
    assert "Ω" not in tokenizer.vocabulary
    assert decoded(tokenizer.detokenize(tokenizer.tokenize(["Ω"]))) == ["[UNK]"]


def test_detokenize_stops_at_eos_drops_pad_and_bos_and_reads_foreign_ids_as_unk(
    tokenizer,
):
    hund = ragged_to_lists(tokenizer.tokenize(["Hund"]))[0]
    gras = ragged_to_lists(tokenizer.tokenize(["Gras"]))[0]
    ids = tf.ragged.constant(
        [
            [data.BOS_ID, *hund, data.PAD_ID, *gras, data.EOS_ID, *hund],
            [data.EOS_ID, *hund],
            [*hund, tokenizer.vocabulary_size, 10**6],
        ]
    )
    assert decoded(tokenizer.detokenize(ids)) == ["Hund Gras", "", "Hund[UNK][UNK]"]
    dense = ids.to_tensor(default_value=data.PAD_ID)
    assert decoded(tokenizer.detokenize(dense)) == decoded(tokenizer.detokenize(ids))


def test_split_returns_the_pieces_of_the_ids(tokenizer):
    pieces = tokenizer.split(["Der Hund"])
    ids = ragged_to_lists(tokenizer.tokenize(["Der Hund"]))[0]
    assert [p.decode() for p in pieces.flat_values.numpy()] == [
        tokenizer.vocabulary[i] for i in ids
    ]


def test_tokenize_and_detokenize_run_in_a_graph_without_autograph(tokenizer):
    @tf.function(input_signature=[tf.TensorSpec([None], tf.string)], autograph=False)
    def round_trip(strings):
        return tokenizer.detokenize(tokenizer.tokenize(strings).to_tensor())

    assert decoded(round_trip(tf.constant(ROUND_TRIP_TEXTS))) == ROUND_TRIP_TEXTS


def test_config_json_round_trip_gives_identical_ids(tokenizer):
    record = json.loads(json.dumps(data.serialize_tokenizer(tokenizer)))
    assert record["class_name"] == "SentencePieceTokenizer"
    revived = data.deserialize_tokenizer(record)
    assert revived.model == tokenizer.model
    assert revived.get_config() == tokenizer.get_config()
    assert ragged_to_lists(revived.tokenize(ROUND_TRIP_TEXTS)) == ragged_to_lists(
        tokenizer.tokenize(ROUND_TRIP_TEXTS)
    )


def test_save_and_load_give_identical_ids(tokenizer, tmp_path):
    path = tmp_path / "tokenizer.json"
    tokenizer.save(path)
    for loader in (data.Tokenizer, data.SentencePieceTokenizer):
        restored = loader.load(path)
        assert type(restored) is data.SentencePieceTokenizer
        assert ragged_to_lists(restored.tokenize(ROUND_TRIP_TEXTS)) == (
            ragged_to_lists(tokenizer.tokenize(ROUND_TRIP_TEXTS))
        )
    with pytest.raises(ValueError, match="holds a SentencePieceTokenizer"):
        data.WordTokenizer.load(path)


# Loads the export with TensorFlow and TF Text only: what a server has.
_LOAD_WITHOUT_LIBRARY = r"""
import json, sys
import tensorflow as tf
import tensorflow_text  # noqa: F401  (registers the SentencePiece ops)

restored = tf.saved_model.load(sys.argv[1])
texts = tf.constant(json.loads(sys.argv[2]))
ids = restored.tokenize(texts)
result = {
    "ids": [row.tolist() for row in ids.numpy()],
    "texts": [t.decode("utf-8") for t in restored.detokenize(ids.to_tensor()).numpy()],
}
imported = sorted(name for name in sys.modules if name.startswith("keras_transformer"))
assert not imported, imported
print(json.dumps(result))
"""


@pytest.mark.slow
def test_an_export_archive_tokenizes_in_a_process_with_only_tensorflow_text(
    tmp_path,
):
    tokenizer = data.SentencePieceTokenizer.from_texts(
        CORPUS, vocabulary_size=VOCABULARY_SIZE
    )
    archive = keras.export.ExportArchive()
    archive.track(tokenizer)
    archive.add_endpoint(
        "tokenize",
        tokenizer.tokenize,
        input_signature=[tf.TensorSpec([None], tf.string)],
    )
    archive.add_endpoint(
        "detokenize",
        tokenizer.detokenize,
        input_signature=[tf.TensorSpec([None, None], tf.int32)],
    )
    export_dir = str(tmp_path / "exported")
    archive.write_out(export_dir, verbose=False)
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            _LOAD_WITHOUT_LIBRARY,
            export_dir,
            json.dumps(ROUND_TRIP_TEXTS),
        ],
        capture_output=True,
        text=True,
        timeout=SUBPROCESS_TIMEOUT,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
        cwd=tmp_path,  # Not the repository: `keras_transformer` is not on the path.
    )
    assert result.returncode == 0, result.stderr[-3000:]
    loaded = json.loads(result.stdout.strip().splitlines()[-1])
    assert loaded["ids"] == ragged_to_lists(tokenizer.tokenize(ROUND_TRIP_TEXTS))
    assert loaded["texts"] == ROUND_TRIP_TEXTS


def test_a_model_trained_elsewhere_with_the_special_pieces_is_accepted():
    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(CORPUS),
        model_writer=model,
        vocab_size=100,
        user_defined_symbols=[],
        pad_id=0,
        unk_id=1,
        bos_id=2,
        eos_id=3,
        pad_piece="[PAD]",
        unk_piece="[UNK]",
        bos_piece="[BOS]",
        eos_piece="[EOS]",
        minloglevel=2,
    )
    tokenizer = data.SentencePieceTokenizer(model.getvalue())
    processor = sentencepiece.SentencePieceProcessor(model_proto=model.getvalue())
    assert ragged_to_lists(tokenizer.tokenize(ROUND_TRIP_TEXTS)) == [
        processor.encode(text) for text in ROUND_TRIP_TEXTS
    ]


def test_a_model_without_the_special_pieces_at_ids_0_to_3_is_refused():
    model = io.BytesIO()
    # SentencePiece's own defaults: <unk>=0, <s>=1, </s>=2, no padding.
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(CORPUS),
        model_writer=model,
        vocab_size=100,
        minloglevel=2,
    )
    with pytest.raises(ValueError, match="must start with the special tokens"):
        data.SentencePieceTokenizer(model.getvalue())


@pytest.mark.parametrize(
    "model, match",
    [
        (b"", "argument model"),
        (None, "argument model"),
        (b"not a model proto", "TF Text cannot read it"),
        ("not base64!", "not base64"),
    ],
)
def test_the_constructor_refuses_what_is_not_a_sentencepiece_model(model, match):
    with pytest.raises(ValueError, match=match):
        data.SentencePieceTokenizer(model)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"texts": "one string"}, "not a single string"),
        ({"texts": []}, "texts is empty"),
        ({"texts": ["ok", 3]}, r"argument texts.*texts\[1\]=3"),
        ({"vocabulary_size": 0}, "argument vocabulary_size"),
        ({"vocabulary_size": 4}, "more than the 4 special"),
        ({"vocabulary_size": 100000}, "argument vocabulary_size.*Vocabulary size"),
        ({"model_type": "word"}, "argument model_type"),
        ({"character_coverage": 0.0}, "argument character_coverage"),
        ({"character_coverage": 1.5}, "argument character_coverage"),
        ({"character_coverage": True}, "argument character_coverage"),
        ({"byte_fallback": "yes"}, "argument byte_fallback"),
        ({"normalization": "nmt_nfkc_cf"}, "argument normalization"),
    ],
)
def test_from_texts_rejects_bad_arguments_naming_them(kwargs, match):
    kwargs = {"texts": CORPUS, "vocabulary_size": 100, **kwargs}
    with pytest.raises(ValueError, match=match):
        data.SentencePieceTokenizer.from_texts(**kwargs)


SOURCES, TARGETS = CORPUS[:40], CORPUS[40:80]


def test_a_joint_tokenizer_is_shared_by_both_sides_and_covers_both():
    source_tokenizer, target_tokenizer = data.train_tokenizers(
        SOURCES, TARGETS, kind="unigram", vocabulary_size=100, joint=True
    )
    assert source_tokenizer is target_tokenizer
    for texts in (SOURCES, TARGETS):
        assert data.UNK_ID not in source_tokenizer.tokenize(texts).flat_values.numpy()


@pytest.mark.parametrize("kind", data.TOKENIZER_KINDS)
def test_train_tokenizers_builds_every_kind_separately_or_jointly(kind):
    vocabulary_size = 100 if kind in data.SENTENCEPIECE_MODEL_TYPES else None
    separate = data.train_tokenizers(
        SOURCES, TARGETS, kind=kind, vocabulary_size=vocabulary_size
    )
    joint = data.train_tokenizers(
        SOURCES, TARGETS, kind=kind, vocabulary_size=vocabulary_size, joint=True
    )
    assert separate[0] is not separate[1] and joint[0] is joint[1]
    assert all(isinstance(t, data.Tokenizer) for t in separate + joint)


def test_a_joint_tokenizer_trains_a_model_with_shared_embeddings():
    tokenizer, _ = data.train_tokenizers(
        SOURCES, TARGETS, kind="bpe", vocabulary_size=100, joint=True
    )
    dataset = data.make_translation_dataset(
        SOURCES, TARGETS, tokenizer, tokenizer, batch_size=40, shuffle=False
    ).take(1)
    config = models.TransformerConfig(
        source_vocabulary_size=tokenizer.vocabulary_size,
        target_vocabulary_size=tokenizer.vocabulary_size,
        hidden_dim=16,
        num_heads=2,
        intermediate_dim=32,
        num_encoder_layers=1,
        num_decoder_layers=1,
        share_embeddings=True,
    )
    model = models.build_transformer(config)
    # Eagerly: one step, and tracing the train step would cost far more.
    model.compile(
        optimizer="adam",
        loss=losses.MaskedSparseCategoricalCrossentropy(),
        run_eagerly=True,
    )
    history = model.fit(dataset, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"kind": "wordpiece"}, "argument kind"),
        ({"kind": "unigram"}, "argument vocabulary_size.*kind='unigram'"),
        ({"kind": "word", "joint": "yes"}, "argument joint"),
        ({"kind": "word", "source_texts": "one"}, "argument source_texts"),
        ({"kind": "word", "target_texts": "one"}, "argument target_texts"),
    ],
)
def test_train_tokenizers_rejects_bad_arguments_naming_them(kwargs, match):
    kwargs = {"source_texts": SOURCES, "target_texts": TARGETS, **kwargs}
    with pytest.raises(ValueError, match=match):
        data.train_tokenizers(**kwargs)



def test_the_tokenizer_outlives_keras_clear_session(tokenizer):
    expected = ragged_to_lists(tokenizer.tokenize(ROUND_TRIP_TEXTS))
    keras.backend.clear_session()  # Destroys TF Text's kernel-owned model.
    assert ragged_to_lists(tokenizer.tokenize(ROUND_TRIP_TEXTS)) == expected
    keras.backend.clear_session()
    traced = tf.function(tokenizer.detokenize, autograph=False)
    assert decoded(traced(tf.ragged.constant(expected))) == ROUND_TRIP_TEXTS


@pytest.mark.parametrize(
    "options, match",
    [
        ({"model_type": "word"}, "argument model_type"),
        ({"modeltype": "bpe"}, "Did you mean 'model_type'?"),
        ({"character_coverage": True}, "argument character_coverage"),
        ({"byte_fallback": 0}, "argument byte_fallback"),
        ({"normalization": "NFKC"}, "argument normalization"),
        ({"min_frequency": 2}, "unknown SentencePieceTokenizer.from_texts option 'min_frequency'"),
    ],
)
def test_training_options_are_checked_without_training(options, match):
    with pytest.raises(ValueError, match=match):
        data.SentencePieceTokenizer.check_training_options(options)
