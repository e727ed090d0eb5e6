"""scripts/evaluate.py: scores and the runs file (the page written from it:
tests/scripts/test_quality_page.py).

The model is an untrained tiny Translator: these tests check the plumbing
(scores equal sacreBLEU's on the model's own translations), not quality.
"""

import contextlib
import io
import json

import pytest
import sacrebleu

from keras_transformer.translation import Translator
from tests.conftest import TINY_RUN_RECORD, load_script
from tests.conftest import usage_error as script_usage_error

SOURCES = [
    "a small brown dog runs in the park",
    "two men walk across the street",
    "the red car stands in front of the house",
    "a woman reads a book in the garden",
] * 3
TARGETS = [
    "ein kleiner brauner Hund läuft im Park",
    "zwei Männer gehen über die Straße",
    "das rote Auto steht vor dem Haus",
    "eine Frau liest ein Buch im Garten",
] * 3


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    root = tmp_path_factory.mktemp("evaluate")
    translator = Translator.from_texts(
        SOURCES,
        TARGETS,
        tokenizer="character",
        num_encoder_layers=1,
        num_decoder_layers=1,
        hidden_dim=8,
        num_heads=2,
        intermediate_dim=16,
        max_source_length=48,
        max_target_length=48,
    )
    path = root / "tiny.keras"
    translator.save(path)
    return path


@pytest.fixture
def files(tmp_path):
    (tmp_path / "test.en").write_text("\n".join(SOURCES[:4]) + "\n")
    (tmp_path / "test.de").write_text("\n".join(TARGETS[:4]) + "\n")
    record = {"name": "tiny-run", **TINY_RUN_RECORD}
    (tmp_path / "run.json").write_text(json.dumps(record))
    return tmp_path


def evaluate(model_path, files, *extra, module=None):
    arguments = [
        "--model", model_path,
        "--source", files / "test.en",
        "--target", files / "test.de",
        "--results", files / "docs" / "runs.json",
        "--beam-size", "2",
        *extra,
    ]  # fmt: skip
    output = io.StringIO()
    with contextlib.redirect_stdout(output):
        module = module or load_script("evaluate")
        code = module.main([str(argument) for argument in arguments])
    assert code == 0
    assert "python scripts/quality_page.py" in output.getvalue()
    with open(files / "docs" / "runs.json", encoding="utf-8") as file:
        return json.load(file)


# Stand-in translations, some right and some wrong, so the scores are
# neither 0 nor 100.
GREEDY = [
    "ein kleiner brauner Hund läuft im Park",
    "zwei Männer laufen auf der Straße",
    "das Auto steht vor dem Haus",
    "Eine Frau liest im Garten",
]
BEAM = [
    "ein kleiner Hund rennt im Park",
    "zwei Männer gehen über die Straße",
    "das rote Auto steht vor dem Haus",
    "eine Frau liest ein Buch",
]


@pytest.fixture
def stand_in():
    """The script with a stand-in model: no Translator, no decoding."""
    module = load_script("evaluate")

    def load_translate(path, beam_size, length_penalty):
        def translate(texts, beam):
            assert texts == SOURCES[:4] and beam in (None, beam_size)
            return BEAM if beam else GREEDY

        return translate, 1234, beam_size

    module.load_translate = load_translate
    return module


def test_scores_are_sacrebleu_bleu_and_chrf_of_the_translations(stand_in, files):
    (run,) = evaluate("model.keras", files, module=stand_in)
    for decoding, hypotheses in (("greedy", GREEDY), ("beam", BEAM)):
        scores = run["test"][decoding]
        references = [TARGETS[:4]]
        assert scores["bleu_cased"] == pytest.approx(
            sacrebleu.corpus_bleu(hypotheses, references).score
        )
        assert scores["bleu_lowercased"] == pytest.approx(
            sacrebleu.corpus_bleu(hypotheses, references, lowercase=True).score
        )
        assert scores["chrf"] == pytest.approx(
            sacrebleu.corpus_chrf(hypotheses, references).score
        )
        assert 0 < scores["bleu_cased"] < 100
    assert run["name"] == "model" and run["test_size"] == 4
    assert run["parameters"] == 1234 and run["beam_size"] == 2


def test_the_run_keeps_its_record_with_this_machines_paths_made_relative(
    stand_in, files
):
    (run,) = evaluate(
        "model.keras", files, "--run-record", files / "run.json", module=stand_in
    )
    assert run["record"]["command"] == "python train.py --tiny"
    assert run["record"]["val_bleu"][1] == {
        "epoch": 2, "bleu": 3.0, "training_seconds": 60.0,
    }  # fmt: skip
    assert not run["test_source"].startswith("/")


def test_runs_accumulate_and_a_run_of_the_same_name_is_replaced(stand_in, files):
    for name in ("first", "second", "first"):
        runs = evaluate("m.keras", files, "--name", name, module=stand_in)
    assert [run["name"] for run in runs] == ["second", "first"]
    assert not (files / "docs" / "quality.md").exists()


@pytest.mark.slow
def test_a_keras_translator_file_is_scored_on_its_own_translations(
    model_path, files
):
    (run,) = evaluate(model_path, files)
    translate = load_script("evaluate").load_translate(str(model_path), 2, 0.6)[0]
    for decoding, beam in (("greedy", None), ("beam", 2)):
        expected = sacrebleu.corpus_chrf(translate(SOURCES[:4], beam), [TARGETS[:4]])
        assert run["test"][decoding]["chrf"] == pytest.approx(expected.score)
    assert run["name"] == "tiny" and run["parameters"] > 0


def usage_error(capsys, *arguments):
    """evaluate.py's usage-error line for `arguments`."""
    return script_usage_error(capsys, load_script("evaluate").main, arguments)


@pytest.mark.parametrize(
    "change, line",
    [
        ({"--model": "{root}/missing.keras"}, "--model: Cannot load the .keras file '{root}/missing.keras': no such file"),
        ({"--model": "{root}/test.en"}, "--model: Received an invalid value for argument filepath, expected a path ending in .keras"),
        ({"--model": "{root}/broken.keras"}, "--model: Cannot load the .keras file '{root}/broken.keras'"),
        ({"--model": "{root}"}, "--model: '{root}' is not a SavedModel"),
        ({"--target": "{root}/short.de"}, "--source/--target: Parallel files must have the same number of lines, but '{root}/test.en' has 4 and '{root}/short.de' has 1."),
        ({"--source": "{root}/latin1.en"}, "--source/--target: '{root}/latin1.en' line 1 is not valid UTF-8"),
        ({"--source": "{root}/missing.en"}, "--source/--target: File not found: '{root}/missing.en'."),
        ({"--source": "{root}/empty", "--target": "{root}/empty"}, "--source/--target: {root}/empty holds no test sentence"),
        ({"--run-record": "{root}/missing.json"}, "--run-record: cannot read {root}/missing.json as JSON: [Errno 2]"),
        ({"--run-record": "{root}/broken.json"}, "--run-record: cannot read {root}/broken.json as JSON: Expecting"),
        ({"--run-record": "{root}/list.json"}, "--run-record: {root}/list.json holds a list, expected a JSON object"),
        ({"--results": "{root}/broken.json"}, "--results: cannot read {root}/broken.json as JSON"),
        ({"--results": "{root}/run.json"}, "--results: {root}/run.json holds an object, expected a JSON list"),
        ({"--results": "{root}/list.json"}, "--results: {root}/list.json is not a list of runs written by scripts/evaluate.py"),
        ({"--beam-size": "0"}, "argument --beam-size: expected a positive integer, got 0"),
        ({"--length-penalty": "-1"}, "--length-penalty: Received an invalid value for argument length_penalty"),
        ({"--length-penalty": "nan"}, "--length-penalty: Received an invalid value for argument length_penalty"),
    ],
)  # fmt: skip
def test_a_bad_flag_or_file_is_one_usage_line_naming_it(files, capsys, change, line):
    (files / "short.de").write_text("ein Satz\n")
    (files / "latin1.en").write_bytes("caf\u00e9\n".encode("latin-1"))
    (files / "empty").write_text("")
    (files / "broken.json").write_text("{not json")
    (files / "list.json").write_text("[1, 2]")
    (files / "broken.keras").write_bytes(b"not a zip archive")
    arguments = {
        "--model": "{root}/model.keras",
        "--source": "{root}/test.en",
        "--target": "{root}/test.de",
        "--results": "{root}/docs/runs.json",
        **change,
    }
    flat = [part.format(root=files) for pair in arguments.items() for part in pair]
    assert usage_error(capsys, *flat).startswith(
        "evaluate.py: error: " + line.format(root=files)
    )
    assert not (files / "docs").exists()
