"""scripts/serve.py: translating with an export and TensorFlow alone."""

import ast
import json
import pathlib

import pytest
import tensorflow as tf

from keras_transformer import export
from tests.conftest import SCRIPTS, load_script, run_python

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


def test_a_folder_that_is_not_an_export_is_reported(tmp_path):
    with pytest.raises(SystemExit, match="is not a SavedModel folder"):
        load_script("serve").main([str(tmp_path), "5 March 2021"])


def test_a_text_too_long_for_the_model_is_reported_with_the_limit(export_dir, capsys):
    with pytest.raises(SystemExit, match="maximum source length of 12 tokens"):
        load_script("serve").main([export_dir, "1 May", "5 March 2021 and more"])
    assert capsys.readouterr().out == ""
