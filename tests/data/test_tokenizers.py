import json
import re
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_transformer import data

CORPUS = ["Hello, world!", "hello again.", "It's 10:30 (roughly)."]


def ragged_to_lists(ragged):
    return [row.tolist() for row in ragged.numpy()]


def decoded(strings):
    return [value.decode("utf-8") for value in strings.numpy().tolist()]


@pytest.fixture(params=["character", "word"])
def tokenizer(request):
    cls = {"character": data.CharacterTokenizer, "word": data.WordTokenizer}
    return cls[request.param].from_texts(CORPUS)


def test_special_tokens_hold_fixed_ids(tokenizer):
    assert tokenizer.vocabulary[:4] == ["[PAD]", "[UNK]", "[BOS]", "[EOS]"]
    assert (data.PAD_ID, data.UNK_ID, data.BOS_ID, data.EOS_ID) == (0, 1, 2, 3)
    assert tokenizer.vocabulary_size == len(tokenizer.vocabulary)


def test_vocabulary_is_sorted_by_frequency_then_code_point():
    tokenizer = data.CharacterTokenizer.from_texts(["bca", "cb", "c"])
    assert tokenizer.vocabulary[4:] == ["c", "b", "a"]
    tokenizer = data.WordTokenizer.from_texts(["zeta beta", "alpha zeta"])
    assert tokenizer.vocabulary[4:] == ["zeta", "alpha", "beta"]


def test_vocabulary_limits_keep_the_most_frequent_tokens():
    texts = ["aaaabbbccd"]
    tokenizer = data.CharacterTokenizer.from_texts(texts, max_vocabulary_size=6)
    assert tokenizer.vocabulary[4:] == ["a", "b"]
    tokenizer = data.CharacterTokenizer.from_texts(texts, min_frequency=2)
    assert tokenizer.vocabulary[4:] == ["a", "b", "c"]


def test_character_tokenizer_round_trips_text_exactly():
    texts = ["Grüße, 世界!  two  spaces\tand tab", " padded ", "x"]
    tokenizer = data.CharacterTokenizer.from_texts(texts)
    ids = tokenizer.tokenize(texts)
    assert ids.dtype == tf.int32
    assert ragged_to_lists(ids)[2] == [tokenizer.vocabulary.index("x")]
    assert decoded(tokenizer.detokenize(ids)) == texts


def test_word_tokenizer_splits_words_and_punctuation():
    tokenizer = data.WordTokenizer.from_texts(CORPUS)
    pieces = tokenizer.split(["Hello, WORLD!  it's"])
    assert [p.decode() for p in pieces.flat_values.numpy()] == [
        "hello",
        ",",
        "world",
        "!",
        "it",
        "'",
        "s",
    ]
    cased = data.WordTokenizer.from_texts(CORPUS, lowercase=False)
    assert "Hello" in cased.vocabulary and "hello" in cased.vocabulary


@pytest.mark.parametrize(
    "text, expected",
    [
        ("hello, world! it's 10:30 (roughly).", "hello, world! it's 10:30 (roughly)."),
        ("Well-known  and/or  3.14 $5 [x]; ok?", "well-known and/or 3.14 $5 [x]; ok?"),
        ("a - b", "a-b"),
        ('say "hi"', 'say " hi "'),
        ("1,000", "1, 000"),
    ],
)
def test_word_tokenizer_reattaches_punctuation_as_documented(text, expected):
    tokenizer = data.WordTokenizer.from_texts([text])
    assert decoded(tokenizer.detokenize(tokenizer.tokenize([text]))) == [expected]


def test_unknown_tokens_map_to_unk_and_read_back_as_unk(tokenizer):
    ids = ragged_to_lists(tokenizer.tokenize(["hello zzz"]))[0]
    assert data.UNK_ID in ids
    assert "[UNK]" in decoded(tokenizer.detokenize(tf.ragged.constant([ids])))[0]
    assert decoded(tokenizer.detokenize([[tokenizer.vocabulary_size + 5]])) == ["[UNK]"]


def test_empty_and_whitespace_only_strings_give_no_tokens(tokenizer):
    ids = tokenizer.tokenize(["", "   ", "\t\n", "\u00a0"])
    assert ragged_to_lists(ids) == [[], [], [], []]
    assert decoded(tokenizer.detokenize(ids)) == ["", "", "", ""]


def test_invalid_utf8_bytes_become_unknown_instead_of_failing(tokenizer):
    ids = tokenizer.tokenize(tf.constant([b"hello \xff\xfe world", b"\xc3"]))
    rows = ragged_to_lists(ids)
    assert data.UNK_ID in rows[0] and rows[1] == [data.UNK_ID]
    assert "\ufffd" in tokenizer.split([b"\xff"]).flat_values.numpy()[0].decode()


def test_detokenize_stops_at_first_eos_and_drops_pad_and_bos():
    tokenizer = data.CharacterTokenizer.from_texts(["abc"])
    a, b, c = (tokenizer.vocabulary.index(ch) for ch in "abc")
    ids = np.array(
        [[2, a, 0, b, 3, c, 3], [a, b, c, 0, 0, 0, 0], [3, a, b, c, 0, 0, 0]],
        dtype="int64",
    )
    assert decoded(tokenizer.detokenize(ids)) == ["ab", "abc", ""]
    ragged = tf.ragged.constant([[2, a, 3, b], [c], []], dtype=tf.int32)
    assert decoded(tokenizer.detokenize(ragged)) == ["a", "c", ""]


def test_tokenize_and_detokenize_run_in_a_graph_without_autograph(tokenizer):
    @tf.function(input_signature=[tf.TensorSpec([None], tf.string)], autograph=False)
    def round_trip(strings):
        ids = tokenizer.tokenize(strings)
        return tokenizer.detokenize(ids.to_tensor())

    assert decoded(round_trip(tf.constant(["hello", ""]))) == ["hello", ""]


class _TokenizerModule(tf.Module):
    def __init__(self, tokenizer):
        super().__init__()
        self.tokenizer = tokenizer

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
    def tokenize(self, strings):
        return self.tokenizer.tokenize(strings)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
    def round_trip(self, strings):
        return self.tokenizer.detokenize(self.tokenizer.tokenize(strings).to_tensor())


def test_tokenizer_survives_a_saved_model_round_trip(tokenizer, tmp_path):
    texts = tf.constant(CORPUS + ["unseen ~ text"])
    expected_ids = ragged_to_lists(tokenizer.tokenize(texts))
    expected_text = decoded(tokenizer.detokenize(tokenizer.tokenize(texts)))
    tf.saved_model.save(_TokenizerModule(tokenizer), str(tmp_path / "saved"))
    restored = tf.saved_model.load(str(tmp_path / "saved"))
    assert ragged_to_lists(restored.tokenize(texts)) == expected_ids
    assert decoded(restored.round_trip(texts)) == expected_text


def test_tokenizer_exports_with_a_keras_export_archive(tmp_path):
    tokenizer = data.WordTokenizer.from_texts(CORPUS)
    archive = keras.export.ExportArchive()
    archive.track(tokenizer)
    archive.add_endpoint(
        "serve",
        lambda strings: tokenizer.detokenize(tokenizer.tokenize(strings)),
        input_signature=[tf.TensorSpec([None], tf.string)],
    )
    archive.write_out(str(tmp_path / "exported"), verbose=False)
    restored = tf.saved_model.load(str(tmp_path / "exported"))
    assert decoded(restored.serve(tf.constant(["Hello, world!"]))) == ["hello, world!"]


def test_config_round_trip_rebuilds_the_same_tokenizer(tokenizer):
    config = tokenizer.get_config()
    revived = type(tokenizer).from_config(json.loads(json.dumps(config)))
    assert revived.get_config() == config
    texts = ["hello, world!"]
    assert ragged_to_lists(revived.tokenize(texts)) == ragged_to_lists(
        tokenizer.tokenize(texts)
    )


def test_save_and_load_restore_class_and_vocabulary(tokenizer, tmp_path):
    path = tmp_path / "vocabulary.json"
    tokenizer.save(path)
    assert sorted(os.listdir(tmp_path)) == ["vocabulary.json"]
    for loader in (data.Tokenizer, type(tokenizer)):
        restored = loader.load(path)
        assert type(restored) is type(tokenizer)
        assert restored.get_config() == tokenizer.get_config()
    tokenizer.save(path)  # Overwrites in place.
    assert data.Tokenizer.load(path).vocabulary == tokenizer.vocabulary


def test_load_rejects_missing_foreign_and_malformed_files(tmp_path):
    with pytest.raises(ValueError, match="No tokenizer file"):
        data.Tokenizer.load(tmp_path / "missing.json")
    path = tmp_path / "words.json"
    data.WordTokenizer.from_texts(CORPUS).save(path)
    with pytest.raises(ValueError, match="holds a WordTokenizer"):
        data.CharacterTokenizer.load(path)
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match="is not a tokenizer file"):
        data.Tokenizer.load(tmp_path / "bad.json")


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"texts": "a single string"}, "not a single string"),
        ({"texts": None}, "argument texts, expected an iterable.*texts=None"),
        ({"texts": [1, 2]}, r"strings only. Received texts\[0\]=1"),
        ({"texts": ["ok", b"bytes"]}, r"strings only. Received texts\[1\]=b'bytes'"),
        ({"texts": []}, "texts is empty"),
        ({"texts": CORPUS, "max_vocabulary_size": 4}, "more than the 4 special"),
        ({"texts": CORPUS, "max_vocabulary_size": 0}, "max_vocabulary_size"),
        ({"texts": CORPUS, "min_frequency": 0}, "min_frequency"),
        ({"texts": CORPUS, "lowercase": "yes"}, "lowercase"),
    ],
)
def test_from_texts_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        data.WordTokenizer.from_texts(**kwargs)


@pytest.mark.parametrize(
    "vocabulary, match",
    [
        ("abc", "expected a list of strings"),
        (["a", "b"], "must start with the special tokens"),
        (list(data.SPECIAL_TOKENS) + ["a", "a"], "must not repeat"),
        (list(data.SPECIAL_TOKENS) + [""], "non-empty string"),
        (list(data.SPECIAL_TOKENS) + [7], "non-empty string"),
    ],
)
def test_constructor_rejects_bad_vocabularies(vocabulary, match):
    with pytest.raises(ValueError, match=match):
        data.CharacterTokenizer(vocabulary)


@pytest.mark.parametrize("strings", [[1], 5, None, [["nested"], 2]])
def test_tokenize_refuses_what_is_not_text_naming_the_argument(tokenizer, strings):
    with pytest.raises(ValueError, match=r"argument strings, expected a list of texts"):
        tokenizer.tokenize(strings)


def test_tokenize_refuses_a_numeric_tensor_naming_its_dtype(tokenizer):
    with pytest.raises(ValueError, match=r"tf.string tensor.*dtype int32"):
        tokenizer.tokenize(tf.constant([1, 2]))


def test_detokenize_refuses_negative_ids_eagerly_and_in_a_graph(tokenizer):
    with pytest.raises(ValueError, match=r"ids >= 0. Received: a negative id -1"):
        tokenizer.detokenize([[5, -1]])
    graph = tf.function(tokenizer.detokenize, autograph=False)
    with pytest.raises(tf.errors.InvalidArgumentError, match="negative token id"):
        graph(tf.constant([[5, -1]]))


def test_detokenize_reads_ids_past_the_vocabulary_as_unk(tokenizer):
    # A model's output layer may be larger than its tokenizer's vocabulary.
    past = tokenizer.vocabulary_size + 10**6
    assert decoded(tokenizer.detokenize([[past]])) == [data.SPECIAL_TOKENS[data.UNK_ID]]


def test_save_into_a_missing_folder_or_onto_a_folder_is_refused(tokenizer, tmp_path):
    with pytest.raises(ValueError, match=r"folder .*missing.* does not exist"):
        tokenizer.save(tmp_path / "missing" / "tokenizer.json")
    with pytest.raises(ValueError, match=r"it is a folder"):
        tokenizer.save(tmp_path)
    assert not (tmp_path / "missing").exists()


def test_wrong_ranks_and_dtypes_raise_clear_errors(tokenizer):
    with pytest.raises(ValueError, match="rank-1 string tensor"):
        tokenizer.tokenize("a single string")
    with pytest.raises(ValueError, match=r"shape \[batch, length\]"):
        tokenizer.detokenize([1, 2, 3])
    with pytest.raises(ValueError, match="integer token ids"):
        tokenizer.detokenize([[1.0, 2.0]])


def test_serialized_tokenizer_is_json_and_deserializes_to_identical_ids(tokenizer):
    record = data.serialize_tokenizer(tokenizer)
    assert record == {
        "class_name": type(tokenizer).__name__,
        "config": tokenizer.get_config(),
    }
    revived = data.deserialize_tokenizer(json.loads(json.dumps(record)))
    assert type(revived) is type(tokenizer)
    texts = CORPUS + ["unseen ~ text"]
    assert ragged_to_lists(revived.tokenize(texts)) == ragged_to_lists(
        tokenizer.tokenize(texts)
    )


def test_save_writes_the_serialized_record(tokenizer, tmp_path):
    tokenizer.save(tmp_path / "tokenizer.json")
    with open(tmp_path / "tokenizer.json", encoding="utf-8") as file:
        assert json.load(file) == data.serialize_tokenizer(tokenizer)


@pytest.mark.parametrize(
    "record, match",
    [
        (["WordTokenizer", {}], "argument record"),
        ({"config": {}}, r"lacks the key\(s\) \['class_name'\]"),
        ({"class_name": "WordTokenizer"}, r"lacks the key\(s\) \['config'\]"),
        ({"class_name": "Nope", "config": {}}, "Unknown tokenizer class_name 'Nope'"),
        ({"class_name": "WordTokenizer", "config": []}, "config must be a dict"),
        (
            {"class_name": "WordTokenizer", "config": {"vocab": []}},
            "WordTokenizer record's config is malformed",
        ),
        (
            {"class_name": "WordTokenizer", "config": {"vocabulary": ["a"]}},
            "must start with the special tokens",
        ),
    ],
)
def test_deserialize_rejects_unknown_classes_and_malformed_records(record, match):
    with pytest.raises(ValueError, match=match):
        data.deserialize_tokenizer(record)


def test_serialize_rejects_what_is_not_a_registered_tokenizer():
    with pytest.raises(ValueError, match="argument tokenizer"):
        data.serialize_tokenizer("words")

    class Unregistered(data.CharacterTokenizer):
        pass

    with pytest.raises(ValueError, match="not one of the registered"):
        data.serialize_tokenizer(Unregistered(list(data.SPECIAL_TOKENS)))


@pytest.mark.parametrize(
    "tokenizer_class, texts, kwargs, match",
    [
        (data.WordTokenizer, ["a b"], {"lower": True}, "unknown WordTokenizer.from_texts option 'lower'. Did you mean 'lowercase'?"),
        (data.WordTokenizer, ["a b"], {"min_freq": 2}, "Did you mean 'min_frequency'?"),
        (data.CharacterTokenizer, ["ab"], {"lowercase": True}, "unknown CharacterTokenizer.from_texts option 'lowercase'"),
        (data.WordTokenizer, ["a b"], {"lowercase": "no"}, "argument lowercase"),
        (data.CharacterTokenizer, ["", ""], {}, "all 2 texts are empty"),
        (data.WordTokenizer, ["  ", "\t"], {}, "all 2 texts are empty (or only spaces)"),
        (data.WordTokenizer, ["a b", "c"], {"min_frequency": 2}, "none is seen min_frequency=2 times"),
    ],
)  # fmt: skip
def test_from_texts_refuses_unknown_options_and_corpora_without_tokens(
    tokenizer_class, texts, kwargs, match
):
    with pytest.raises(ValueError, match=re.escape(match)):
        tokenizer_class.from_texts(texts, **kwargs)
