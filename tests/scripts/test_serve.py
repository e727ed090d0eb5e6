"""scripts/serve.py: translating with an export and TensorFlow alone."""

import ast
import json
import pathlib

import pytest
import tensorflow as tf

from keras_transformer.translation import export
from tests.conftest import SCRIPTS, in_memory, load_script, run_python
from tests.conftest import usage_error as script_usage_error

SERVE = str(SCRIPTS / "serve.py")
TEXTS = ["5 March 2021", "", "17 May 2020", "1 June"]


@pytest.fixture(scope="module")
def export_dir(exported_translator):
    return exported_translator.export_dir


@pytest.fixture(scope="module")
def loaded(export_dir):
    return export.load_translator(export_dir)


def expected(loaded, texts, endpoint="translate"):
    translations = getattr(loaded, endpoint)(tf.constant(texts)).numpy()
    return [text.decode("utf-8") for text in translations]


# Runs serve.py as __main__ once per command line (arguments, stdin text),
# all in one process (each Python process imports TensorFlow: ~10 s of CPU),
# then fails if it pulled in keras_transformer. Writes what each run printed.
WITHOUT_LIBRARY = r"""
import contextlib, io, json, runpy, sys
script, runs = sys.argv[1], json.loads(sys.argv[2])
printed = []
for arguments, stdin in runs:
    sys.argv = [script, *arguments]
    sys.stdin = io.TextIOWrapper(io.BytesIO((stdin or "").encode("utf-8")))
    output = io.StringIO()
    with contextlib.redirect_stdout(output):
        runpy.run_path(script, run_name="__main__")
    printed.append(output.getvalue())
imported = sorted(name for name in sys.modules if name.startswith("keras_transformer"))
assert not imported, imported
print(json.dumps(printed))
"""


@pytest.fixture(scope="module")
def printed(export_dir):
    """What serve.py printed: texts as arguments, then stdin with --beam."""
    runs = [
        ([export_dir, *TEXTS], None),
        (["--beam", "--batch_size", "3", export_dir], "\n".join(TEXTS) + "\n"),
    ]
    result = run_python(WITHOUT_LIBRARY, SERVE, json.dumps(runs))
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_serve_never_imports_keras_transformer():
    tree = ast.parse(pathlib.Path(SERVE).read_text())
    imported = [
        alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.Import)
        for alias in node.names
    ] + [node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)]
    assert not [name for name in imported if name.startswith("keras_transformer")]


@pytest.mark.slow
def test_texts_on_the_command_line_are_translated_one_per_line(printed, loaded):
    assert printed[0].split("\n") == expected(loaded, TEXTS) + [""]


@pytest.mark.slow
def test_lines_of_stdin_are_translated_with_beam_search(printed, loaded):
    assert printed[1].split("\n") == expected(loaded, TEXTS, "translate_beam") + [""]


def usage_error(capsys, *arguments):
    """serve.py's usage-error line for `arguments`."""
    return script_usage_error(capsys, load_script("serve").main, arguments)


def test_a_folder_that_is_not_an_export_is_reported(tmp_path, capsys):
    line = usage_error(capsys, tmp_path, "5 March 2021")
    assert line == f"serve.py: error: export_dir: {str(tmp_path)!r} is not a SavedModel folder"


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda root: root / "missing", "export_dir: no such folder: "),
        (lambda root: root / "file.txt", "export_dir: no such folder: "),
        (lambda root: root / "base", "holds versions 3, 1: pass "),
        (lambda root: root / "base" / "3", "is not a SavedModel folder"),
    ],
)
def test_a_missing_or_wrong_export_dir_is_a_usage_error(tmp_path, capsys, make, message):
    (tmp_path / "file.txt").write_text("not a folder")
    for version in ("1", "3"):
        (tmp_path / "base" / version).mkdir(parents=True)
    line = usage_error(capsys, make(tmp_path), "5 March 2021")
    assert line.startswith("serve.py: error: ") and message in line, line


@pytest.mark.parametrize(
    "arguments, message",
    [
        (["--batch_size", "0", "x"], "--batch_size must be positive, got 0"),
        (["--batch_size", "two", "x"], "invalid int value: 'two'"),
        ([], "the following arguments are required: export_dir"),
    ],
)
def test_bad_flags_are_usage_errors(capsys, arguments, message):
    assert message in usage_error(capsys, *arguments)


@pytest.mark.slow
def test_a_text_too_long_for_the_model_is_reported_with_the_limit(export_dir, capsys):
    with pytest.raises(SystemExit) as error:
        load_script("serve").main([export_dir, "1 May", "5 March 2021 and more"])
    captured = capsys.readouterr()
    assert error.value.code == 2
    assert captured.err.splitlines()[-1].startswith(
        "serve.py: error: A text to translate has more tokens"
    )
    assert "maximum source length of 12 tokens" in captured.err
    assert captured.out == ""


def serve_in_process(*args):
    """serve.py's main in this process; returns its printed lines."""
    import contextlib
    import io

    output = io.StringIO()
    with contextlib.redirect_stdout(output):
        load_script("serve").main([str(arg) for arg in args])
    return output.getvalue().split("\n")[:-1]


@pytest.mark.slow
def test_adapter_translates_with_that_adapter_of_the_export(adapted, adapter_export):
    texts = adapted.texts[:3]
    assert serve_in_process("--adapter", "rev", adapter_export, *texts) == in_memory(
        adapted.translator, texts, ["rev"] * 3
    )


@pytest.mark.slow
def test_an_unknown_adapter_is_reported_with_the_served_names(adapter_export, capsys):
    with pytest.raises(SystemExit) as exit_info:
        serve_in_process("--adapter", "cats", adapter_export, "5 March 2021")
    assert exit_info.value.code == 2
    assert "this export serves dmy, rev and the base" in capsys.readouterr().err


@pytest.mark.slow
def test_adapter_on_an_export_without_adapters_is_reported(export_dir):
    with pytest.raises(SystemExit, match="serves no adapters"):
        serve_in_process("--adapter", "rev", export_dir, "5 March 2021")


@pytest.mark.slow
def test_adapter_with_beam_is_a_usage_error(export_dir, capsys):
    with pytest.raises(SystemExit) as exit_info:
        load_script("serve").main(["--adapter", "rev", "--beam", export_dir, "5 May"])
    assert exit_info.value.code == 2
    assert "--adapter: adapters are served greedily" in capsys.readouterr().err
