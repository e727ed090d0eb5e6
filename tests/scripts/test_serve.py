"""scripts/serve.py: translating with an export and TensorFlow alone."""

import ast
import os
import pathlib
import subprocess
import sys

import pytest
import tensorflow as tf

from keras_transformer import export
from tests.conftest import SCRIPTS, load_script
from tests.test_export import (  # noqa: F401 (adapter_export is a fixture)
    SUBPROCESS_TIMEOUT,
    adapter_export,
    in_memory,
    shared_translator,
)

SERVE = str(SCRIPTS / "serve.py")
TEXTS = ["5 March 2021", "", "17 May 2020", "1 June"]


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory):
    return shared_translator(tmp_path_factory).export_dir


@pytest.fixture(scope="module")
def loaded(export_dir):
    return export.load_translator(export_dir)


def expected(loaded, texts, endpoint="translate"):
    translations = getattr(loaded, endpoint)(tf.constant(texts)).numpy()
    return [text.decode("utf-8") for text in translations]


def run(*args, stdin=None):
    return subprocess.run(
        [sys.executable, *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=SUBPROCESS_TIMEOUT,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
    )


# Runs serve.py as __main__, then fails if it pulled in keras_transformer.
WITHOUT_LIBRARY = """
import runpy, sys
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
imported = sorted(name for name in sys.modules if name.startswith("keras_transformer"))
assert not imported, imported
"""


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
def test_texts_on_the_command_line_are_translated_one_per_line(export_dir, loaded):
    result = run("-c", WITHOUT_LIBRARY, SERVE, export_dir, *TEXTS)

    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split("\n") == expected(loaded, TEXTS) + [""]


@pytest.mark.slow
def test_lines_of_stdin_are_translated_with_beam_search(export_dir, loaded):
    result = run(
        SERVE, "--beam", "--batch_size", "3", export_dir, stdin="\n".join(TEXTS) + "\n"
    )

    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split("\n") == expected(loaded, TEXTS, "translate_beam") + [""]


def test_a_folder_that_is_not_an_export_is_reported(tmp_path):
    with pytest.raises(SystemExit, match="is not a SavedModel folder"):
        load_script("serve").main([str(tmp_path), "5 March 2021"])


def test_a_text_too_long_for_the_model_is_reported_with_the_limit(export_dir, capsys):
    with pytest.raises(SystemExit, match="maximum source length of 12 tokens"):
        load_script("serve").main([export_dir, "1 May", "5 March 2021 and more"])
    assert capsys.readouterr().out == ""


def serve_in_process(*args):
    """serve.py's main in this process; returns its printed lines."""
    import contextlib
    import io

    output = io.StringIO()
    with contextlib.redirect_stdout(output):
        load_script("serve").main([str(arg) for arg in args])
    return output.getvalue().split("\n")[:-1]


def test_adapter_translates_with_that_adapter_of_the_export(adapted, adapter_export):
    texts = adapted.texts[:3]
    assert serve_in_process("--adapter", "rev", adapter_export, *texts) == in_memory(
        adapted.translator, texts, ["rev"] * 3
    )


def test_an_unknown_adapter_is_reported_with_the_served_names(adapter_export):
    with pytest.raises(SystemExit, match="this export serves dmy, rev and the base"):
        serve_in_process("--adapter", "cats", adapter_export, "5 March 2021")


def test_adapter_on_an_export_without_adapters_is_reported(export_dir):
    with pytest.raises(SystemExit, match="serves no adapters"):
        serve_in_process("--adapter", "rev", export_dir, "5 March 2021")


def test_adapter_with_beam_is_a_usage_error(export_dir, capsys):
    with pytest.raises(SystemExit) as exit_info:
        load_script("serve").main(["--adapter", "rev", "--beam", export_dir, "5 May"])
    assert exit_info.value.code == 2
    assert "--adapter: adapters are served greedily" in capsys.readouterr().err
