"""SavedModel export of a translator, and `.keras` save/load of the model."""

import json
import os
import pathlib
import re
import shutil

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_transformer import data, decoding, losses, schedules
from keras_transformer.translation import export
from tests.conftest import (
    DATE_MAX_SOURCE_LENGTH,
    DATE_MAX_TARGET_LENGTH,
    DATE_SOURCES,
    EXPORT_BEAM_SIZE,
    EXPORT_LENGTH_PENALTY,
    build_dates_model,
    in_memory,
    run_python,
    to_numpy,
)

# Every test here builds, reads or serves an export, or trains (tens of
# CPU-seconds for the module's fixtures): the fast loop leaves them out.
pytestmark = pytest.mark.slow

MAX_SOURCE_LENGTH = DATE_MAX_SOURCE_LENGTH
MAX_TARGET_LENGTH = DATE_MAX_TARGET_LENGTH
MAX_DECODE_LENGTH = MAX_TARGET_LENGTH  # the default of export_translator
BEAM_SIZE = EXPORT_BEAM_SIZE
LENGTH_PENALTY = EXPORT_LENGTH_PENALTY


@pytest.fixture(scope="module")
def translator(exported_translator):
    return exported_translator


@pytest.fixture(scope="module")
def loaded(translator):
    return export.load_translator(translator.export_dir)


def decode_in_process(translator, texts, beam=False):
    """Tokenize, pad and decode with the library, no SavedModel involved."""
    source_ids = translator.source_tokenizer.tokenize(texts).to_tensor()
    if beam:
        ids = decoding.beam_search_decode(
            translator.model,
            source_ids,
            MAX_DECODE_LENGTH,
            beam_size=BEAM_SIZE,
            length_penalty=LENGTH_PENALTY,
        )
    else:
        ids = decoding.greedy_decode(translator.model, source_ids, MAX_DECODE_LENGTH)
    return [
        text.decode("utf-8")
        for text in translator.target_tokenizer.detokenize(ids).numpy()
    ]


def as_strings(tensor):
    return [text.decode("utf-8") for text in tensor.numpy()]


# One fresh process runs every check that needs TensorFlow alone (each
# process imports TensorFlow and loads a SavedModel: ~10 s of CPU): the
# plain and the XLA export serve their endpoints, and saved_model_cli runs
# the serving signature. Each check reports its own result or traceback.
FRESH_PROCESS = r"""
import json, pathlib, sys, traceback
import numpy as np
import tensorflow as tf

work = pathlib.Path(sys.argv[1])
checks = json.loads((work / "checks.json").read_text())


def serve(check):
    translator = tf.saved_model.load(check["export_dir"])
    result = {}
    if "source_ids" in check:
        logits = translator.serve(
            source_ids=tf.constant(check["source_ids"], tf.int32),
            target_ids=tf.constant(check["target_ids"], tf.int32),
        )
        result["logits"] = logits.numpy().tolist()
    texts = tf.constant(check["texts"])
    for name in ("translate", "translate_beam"):
        translations = getattr(translator, name)(texts).numpy()
        result[name] = [text.decode("utf-8") for text in translations]
    return result


def saved_model_cli(check):
    # The module the `saved_model_cli` command runs, found through this
    # Python rather than PATH.
    from tensorflow.python.tools import saved_model_cli as cli

    sys.argv = ["saved_model_cli", *check["arguments"]]
    try:
        cli.main()
    except SystemExit as exit:
        if exit.code not in (None, 0):
            raise
    translations = np.load(check["output"], allow_pickle=True)
    return [text.decode("utf-8") for text in translations]


results = {}
for name, check in checks.items():
    try:
        results[name] = {"result": globals()[check.pop("kind")](check)}
    except BaseException:
        results[name] = {"error": traceback.format_exc()}
results["imported"] = sorted(
    name for name in sys.modules if name.startswith("keras_transformer")
)
(work / "results.json").write_text(json.dumps(results))
"""

SERVE_SOURCE_IDS = [[5, 6, 7, 8, 0, 0], [9, 10, 11, 12, 13, 14]]
SERVE_TARGET_IDS = [[2, 4, 5, 0], [2, 6, 7, 8]]
SERVE_TEXTS = ["5 March 2021", "1 June", "17 May 20"]
XLA_SOURCE_IDS = [[5, 6, 7]]
XLA_TARGET_IDS = [[2, 4]]
XLA_TEXTS = ["5 March 2021", "1 June", "", "17 May 20"]
CLI_TEXTS = ["5 March 2021", "1 June"]


@pytest.fixture(scope="module")
def xla_export_dir(translator, tmp_path_factory):
    """The shared translator exported again with `jit_compile=True`."""
    export_dir = str(tmp_path_factory.mktemp("xla") / "dates_xla")
    export.export_translator(
        translator.model,
        translator.source_tokenizer,
        translator.target_tokenizer,
        export_dir,
        beam_size=BEAM_SIZE,
        length_penalty=LENGTH_PENALTY,
        jit_compile=True,
    )
    return export_dir


@pytest.fixture(scope="module")
def fresh_process(translator, xla_export_dir, tmp_path_factory):
    """What one Python process without keras_transformer computes.

    Returns {check name: its result}; a check that failed raises here with
    its traceback when a test asks for it (`fresh_process_result`).
    """
    work = tmp_path_factory.mktemp("fresh_process")
    checks = {
        "plain": {
            "kind": "serve",
            "export_dir": translator.export_dir,
            "source_ids": SERVE_SOURCE_IDS,
            "target_ids": SERVE_TARGET_IDS,
            "texts": SERVE_TEXTS,
        },
        "xla": {
            "kind": "serve",
            "export_dir": xla_export_dir,
            "source_ids": XLA_SOURCE_IDS,
            "target_ids": XLA_TARGET_IDS,
            "texts": XLA_TEXTS,
        },
        "saved_model_cli": {
            "kind": "saved_model_cli",
            "arguments": [
                "run",
                "--dir", translator.export_dir,
                "--tag_set", "serve",
                "--signature_def", "serving_default",
                "--input_exprs", f"texts={json.dumps(CLI_TEXTS)}",
                "--outdir", str(work),
            ],  # fmt: skip
            "output": str(work / "translations.npy"),
        },
    }
    (work / "checks.json").write_text(json.dumps(checks))
    result = run_python(FRESH_PROCESS, str(work))
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads((work / "results.json").read_text())
    assert results.pop("imported") == [], "the process imported keras_transformer"
    return results


def fresh_process_result(fresh_process, name):
    outcome = fresh_process[name]
    assert "error" not in outcome, f"{name} failed:\n{outcome.get('error')}"
    return outcome["result"]


def test_a_process_without_keras_transformer_serves_what_the_model_computes(
    translator, fresh_process
):
    served = fresh_process_result(fresh_process, "plain")
    expected_logits = to_numpy(
        translator.model(
            {
                "source_ids": np.array(SERVE_SOURCE_IDS, "int32"),
                "target_ids": np.array(SERVE_TARGET_IDS, "int32"),
            }
        )
    )
    np.testing.assert_allclose(np.array(served["logits"]), expected_logits, atol=1e-5)
    assert served["translate"] == decode_in_process(translator, SERVE_TEXTS)
    assert served["translate_beam"] == decode_in_process(
        translator, SERVE_TEXTS, beam=True
    )


def test_an_xla_export_translates_like_the_plain_one_in_a_fresh_process(
    translator, loaded, xla_export_dir, fresh_process
):
    saved_model = (pathlib.Path(xla_export_dir) / "saved_model.pb").read_bytes()
    assert b"_XlaMustCompile" in saved_model
    served = fresh_process_result(fresh_process, "xla")
    expected_logits = to_numpy(
        translator.model(
            {
                "source_ids": np.array(XLA_SOURCE_IDS, "int32"),
                "target_ids": np.array(XLA_TARGET_IDS, "int32"),
            }
        )
    )
    np.testing.assert_allclose(np.array(served["logits"]), expected_logits, atol=1e-5)
    for endpoint in ("translate", "translate_beam"):
        plain = as_strings(getattr(loaded, endpoint)(tf.constant(XLA_TEXTS)))
        assert served[endpoint] == plain
    # Padding to the maximum length must not truncate a longer text.
    xla_loaded = export.load_translator(xla_export_dir)
    too_long = tf.constant(["x" * (MAX_SOURCE_LENGTH + 1)])
    with pytest.raises(tf.errors.InvalidArgumentError, match="maximum source length"):
        xla_loaded.translate(too_long)


def test_saved_model_cli_runs_the_serving_default_signature(translator, fresh_process):
    translations = fresh_process_result(fresh_process, "saved_model_cli")
    assert translations == decode_in_process(translator, CLI_TEXTS)


def test_serving_default_names_its_input_texts_and_output_translations(loaded):
    signature = loaded.signatures["serving_default"]
    _, inputs = signature.structured_input_signature
    assert list(inputs) == ["texts"]
    assert list(signature.structured_outputs) == ["translations"]
    outputs = signature(texts=tf.constant(["5 March 2021"]))
    assert as_strings(outputs["translations"]) == as_strings(
        loaded.translate(tf.constant(["5 March 2021"]))
    )


def test_export_records_its_limits_and_decoding_settings(translator):
    path = os.path.join(translator.export_dir, export.METADATA_PATH)
    with open(path, encoding="utf-8") as file:
        metadata = json.load(file)
    assert metadata["max_source_length"] == MAX_SOURCE_LENGTH
    assert metadata["max_target_length"] == MAX_TARGET_LENGTH
    assert metadata["max_decode_length"] == MAX_DECODE_LENGTH
    assert metadata["beam_size"] == BEAM_SIZE
    assert metadata["length_penalty"] == LENGTH_PENALTY
    assert metadata["source_tokenizer"]["class_name"] == "CharacterTokenizer"
    assert (
        metadata["target_tokenizer"]["config"]["vocabulary"]
        == translator.target_tokenizer.vocabulary
    )


@pytest.mark.parametrize("endpoint", ["translate", "translate_beam"])
def test_empty_and_whitespace_only_texts_translate_to_empty_strings(loaded, endpoint):
    translate = getattr(loaded, endpoint)
    assert as_strings(translate(tf.constant(["", "   ", "\t\n"]))) == ["", "", ""]
    mixed = as_strings(translate(tf.constant(["", "5 March 2021", " "])))
    alone = as_strings(translate(tf.constant(["5 March 2021"])))
    assert mixed == ["", alone[0], ""]


@pytest.mark.parametrize("endpoint", ["translate", "translate_beam"])
def test_each_text_of_a_mixed_length_batch_is_translated_as_if_alone(loaded, endpoint):
    translate = getattr(loaded, endpoint)
    texts = ["5 March 2021", "1 May", "17 June 1999", "9"]
    batched = as_strings(translate(tf.constant(texts)))
    alone = [as_strings(translate(tf.constant([text])))[0] for text in texts]
    assert batched == alone


@pytest.mark.parametrize("endpoint", ["translate", "translate_beam"])
def test_texts_longer_than_the_model_accepts_raise_an_error_naming_the_limit(
    loaded, endpoint
):
    translate = getattr(loaded, endpoint)
    at_limit = "x" * MAX_SOURCE_LENGTH
    assert len(as_strings(translate(tf.constant([at_limit])))) == 1
    with pytest.raises(
        tf.errors.InvalidArgumentError,
        match=f"maximum source length of {MAX_SOURCE_LENGTH} tokens",
    ):
        translate(tf.constant(["1 May", at_limit + "x"]))


def test_unknown_characters_become_unk_and_are_still_translated(translator, loaded):
    text = "5 Marzo 2021"  # "z" and "o" are not in the source vocabulary
    ids = translator.source_tokenizer.tokenize([text]).numpy()[0]
    assert list(ids).count(data.UNK_ID) == 2
    assert as_strings(loaded.translate(tf.constant([text]))) == decode_in_process(
        translator, [text]
    )


def test_invalid_utf8_is_replaced_and_still_translated(loaded):
    broken = tf.constant([b"5 Ma\xffch 2021"])
    replaced = tf.constant(["5 Ma\ufffdch 2021"])
    assert as_strings(loaded.translate(broken)) == as_strings(
        loaded.translate(replaced)
    )


def test_serve_refuses_ids_longer_than_the_model_accepts(loaded):
    source_ids = tf.ones([1, MAX_SOURCE_LENGTH + 1], tf.int32)
    target_ids = tf.fill([1, 2], data.BOS_ID)
    with pytest.raises(tf.errors.InvalidArgumentError, match="maximum source length"):
        loaded.serve(source_ids, target_ids)


@pytest.mark.parametrize("kind", ["missing", "empty_folder", "not_a_translator"])
def test_load_translator_refuses_what_is_not_a_translator_export(tmp_path, kind):
    path = tmp_path / kind
    if kind == "empty_folder":
        path.mkdir()
    if kind == "not_a_translator":
        tf.saved_model.save(tf.Module(), str(path))
    with pytest.raises(ValueError, match=re.escape(str(path))):
        export.load_translator(path)


# Atomicity. A fake `write_out` stands in for the SavedModel writer (so these
# tests need no real export); the real one is exercised by `translator`.


def snapshot(folder):
    """{relative path: bytes} of every file under `folder`."""
    files = {}
    for root, _, names in os.walk(folder):
        for name in names:
            path = os.path.join(root, name)
            with open(path, "rb") as file:
                files[os.path.relpath(path, folder)] = file.read()
    return files


@pytest.fixture
def existing_export(translator, tmp_path):
    export_dir = tmp_path / "dates"
    shutil.copytree(translator.export_dir, export_dir)
    return str(export_dir)


def fake_write_out(marker):
    def write_out(self, filepath, options=None, verbose=True):
        os.makedirs(filepath)
        with open(os.path.join(filepath, "saved_model.pb"), "w") as file:
            file.write(marker)

    return write_out


def export_again(translator, export_dir):
    return export.export_translator(
        translator.model,
        translator.source_tokenizer,
        translator.target_tokenizer,
        export_dir,
    )


def test_a_failing_export_leaves_the_previous_one_untouched(
    translator, existing_export, monkeypatch
):
    before = snapshot(existing_export)
    archive_class = type(keras.export.ExportArchive())
    monkeypatch.setattr(archive_class, "write_out", fake_write_out("half"))

    def fail(*args):
        raise RuntimeError("disk full")

    monkeypatch.setattr(export, "_write_metadata", fail)
    with pytest.raises(RuntimeError, match="disk full"):
        export_again(translator, existing_export)

    assert snapshot(existing_export) == before
    assert os.listdir(os.path.dirname(existing_export)) == ["dates"]


def test_a_failing_final_rename_puts_the_previous_export_back(
    translator, existing_export, monkeypatch
):
    before = snapshot(existing_export)
    archive_class = type(keras.export.ExportArchive())
    monkeypatch.setattr(archive_class, "write_out", fake_write_out("new"))
    replace = os.replace

    def rename_except_the_new_export(source, destination):
        if os.path.basename(source) == "new":
            raise OSError("rename interrupted")
        replace(source, destination)

    monkeypatch.setattr(os, "replace", rename_except_the_new_export)
    with pytest.raises(OSError, match="rename interrupted"):
        export_again(translator, existing_export)

    assert snapshot(existing_export) == before
    assert os.listdir(os.path.dirname(existing_export)) == ["dates"]


def test_a_completed_export_replaces_the_previous_one(
    translator, existing_export, monkeypatch
):
    archive_class = type(keras.export.ExportArchive())
    monkeypatch.setattr(archive_class, "write_out", fake_write_out("new"))

    export_again(translator, existing_export)

    files = snapshot(existing_export)
    assert files["saved_model.pb"] == b"new"
    assert sorted(files) == sorted(["saved_model.pb", export.METADATA_PATH])
    assert os.listdir(os.path.dirname(existing_export)) == ["dates"]


def test_exporting_onto_a_file_is_refused(translator, tmp_path):
    path = tmp_path / "dates"
    path.write_text("not a folder")
    with pytest.raises(ValueError, match="is not a folder"):
        export_again(translator, str(path))
    assert path.read_text() == "not a folder"


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"max_decode_length": MAX_TARGET_LENGTH + 1}, "max_decode_length"),
        ({"max_decode_length": 0}, "max_decode_length"),
        ({"beam_size": 0}, "beam_size"),
        ({"length_penalty": -1.0}, "length_penalty"),
        ({"jit_compile": "yes"}, "jit_compile"),
    ],
)
def test_bad_decoding_settings_are_refused_before_writing(
    translator, tmp_path, overrides, message
):
    with pytest.raises(ValueError, match=message):
        export.export_translator(
            translator.model,
            translator.source_tokenizer,
            translator.target_tokenizer,
            str(tmp_path / "dates"),
            **overrides,
        )
    assert os.listdir(tmp_path) == []


def test_a_tokenizer_larger_than_the_model_vocabulary_is_refused(translator, tmp_path):
    larger = data.CharacterTokenizer.from_texts(DATE_SOURCES + ["xyzw"])
    with pytest.raises(ValueError, match="source_tokenizer with"):
        export.export_translator(
            translator.model,
            larger,
            translator.target_tokenizer,
            str(tmp_path / "dates"),
        )


# `.keras` files: the training checkpoint format.

SOURCE_IDS = np.array([[5, 6, 7, 8, 0], [9, 10, 11, 12, 13]], "int32")
TARGET_IDS = np.array([[2, 4, 5, 6, 0], [2, 7, 8, 9, 10]], "int32")
LABELS = np.array([[4, 5, 6, 3, 0], [7, 8, 9, 10, 3]], "int32")
INPUTS = {"source_ids": SOURCE_IDS, "target_ids": TARGET_IDS}


def compiled_model():
    model, _, _ = build_dates_model()
    model.compile(
        optimizer=schedules.transformer_optimizer(d_model=16, warmup_steps=4),
        loss=losses.MaskedSparseCategoricalCrossentropy(label_smoothing=0.1),
    )
    return model


def fit_steps(model, steps):
    # One batch per epoch, so `steps` optimizer updates.
    model.fit(INPUTS, LABELS, batch_size=2, epochs=steps, shuffle=False, verbose=0)


def test_keras_file_round_trips_outputs_and_training_continues_from_it(tmp_path):
    model = compiled_model()
    fit_steps(model, 2)
    path = str(tmp_path / "model.keras")
    model.save(path)

    reloaded = keras.models.load_model(path)

    np.testing.assert_array_equal(to_numpy(reloaded(INPUTS)), to_numpy(model(INPUTS)))
    assert int(reloaded.optimizer.iterations) == 2
    fit_steps(model, 1)
    fit_steps(reloaded, 1)
    assert int(reloaded.optimizer.iterations) == 3
    for continued, resumed in zip(model.weights, reloaded.weights):
        np.testing.assert_allclose(
            to_numpy(resumed), to_numpy(continued), atol=1e-6, err_msg=continued.path
        )


def test_a_truncated_keras_file_fails_to_load_and_is_left_as_it_was(tmp_path):
    model, _, _ = build_dates_model()
    path = tmp_path / "model.keras"
    model.save(path)
    truncated = path.read_bytes()[: path.stat().st_size // 2]
    path.write_bytes(truncated)

    with pytest.raises(ValueError, match="model.keras"):
        keras.models.load_model(path)

    assert path.read_bytes() == truncated


# Serving the adapted translator's export with every adapter (the
# `adapted` and `adapter_export` fixtures of tests/conftest.py).


def serve_with_adapters(export_dir, texts, names):
    signature = export.load_translator(export_dir).signatures["serving_default"]
    outputs = signature(
        texts=tf.constant(texts, tf.string), adapter=tf.constant(names, tf.string)
    )
    return as_strings(outputs["translations"])


def test_an_export_with_two_adapters_answers_each_text_with_its_adapter(
    adapted, adapter_export
):
    texts = adapted.texts * 2
    names = ["dmy", "", "rev", "rev", "dmy", "", "", "dmy", "rev", "", "dmy", "rev"]
    served = serve_with_adapters(adapter_export, texts, names)
    assert served == in_memory(adapted.translator, texts, names)
    # The adapters really differ, so routing is what made the answers match.
    assert len({served[0], served[1], served[2]}) == 3 or served[0] != served[1]


def test_a_batch_of_one_adapter_and_an_empty_batch_are_served(adapted, adapter_export):
    texts = adapted.texts[:3]
    assert serve_with_adapters(adapter_export, texts, ["rev"] * 3) == in_memory(
        adapted.translator, texts, ["rev"] * 3
    )
    assert serve_with_adapters(adapter_export, [], []) == []


def test_an_export_with_adapters_serves_the_base_from_its_other_endpoints(
    adapted, adapter_export
):
    loaded = export.load_translator(adapter_export)
    texts = adapted.texts
    assert as_strings(loaded.translate(tf.constant(texts))) == adapted.base_translations
    signature = loaded.signatures["serving_default"]
    _, inputs = signature.structured_input_signature
    assert sorted(inputs) == ["adapter", "texts"]
    with open(os.path.join(adapter_export, export.METADATA_PATH), encoding="utf-8") as file:
        assert json.load(file)["adapters"] == ["dmy", "rev"]


def test_an_unknown_adapter_name_is_refused_naming_the_served_ones(adapter_export):
    with pytest.raises(
        tf.errors.InvalidArgumentError,
        match=r"this export serves dmy, rev and the base \(an empty name\)",
    ) as error:
        serve_with_adapters(adapter_export, ["5 March 2021", "1 June"], ["dmy", "cats"])
    assert "cats" in error.value.message
    with pytest.raises(tf.errors.InvalidArgumentError, match="one adapter name per text"):
        serve_with_adapters(adapter_export, ["5 March 2021", "1 June"], ["dmy"])


def test_a_merged_export_serves_one_adapter_with_the_plain_signature(adapted, tmp_path):
    version = adapted.translator.export(str(tmp_path / "merged"), merge_adapter="dmy")
    loaded = export.load_translator(version)
    _, inputs = loaded.signatures["serving_default"].structured_input_signature
    assert list(inputs) == ["texts"]
    served = as_strings(loaded.translate(tf.constant(adapted.texts)))
    assert served == in_memory(adapted.translator, adapted.texts, ["dmy"] * 6)
    with pytest.raises(ValueError, match="Received: name='cats'"):
        adapted.translator.export(str(tmp_path / "other"), merge_adapter="cats")
