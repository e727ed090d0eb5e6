"""The README's examples run as written."""

import contextlib
import io
import json
import pathlib
import re

import pytest

from tests.conftest import run_python

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def _python_blocks():
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


@pytest.fixture(scope="module")
def readme_run():
    """The README's python blocks run once, in order, in one namespace.

    Returns (namespace, printed output). The quickstart trains a Translator:
    both tests below read this one run instead of training it twice.
    """
    blocks = _python_blocks()
    assert blocks, "README.md has no python example"
    namespace = {}
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        for block in blocks:
            exec(compile(block, str(README), "exec"), namespace)
    return namespace, printed.getvalue()


@pytest.mark.slow
def test_readme_python_examples_run_in_order_and_print_what_they_claim(readme_run):
    _, printed = readme_run
    assert "True True" in printed
    assert "(1, 3, 1000)" in printed
    # q and v in one encoder self-attention, one decoder self- and cross-attention.
    assert "6 projections adapted; 3072 trainable parameters" in printed


@pytest.mark.slow
def test_readme_quickstart_export_serves_the_same_strings_in_a_fresh_process(
    readme_run,
):
    namespace, _ = readme_run
    code = (
        "import json, sys\n"
        "import tensorflow as tf\n"
        "export = tf.saved_model.load(sys.argv[1])\n"
        "texts = tf.constant(json.loads(sys.argv[2]))\n"
        "print(json.dumps([t.decode() for t in export.translate(texts).numpy()]))\n"
        "assert not [m for m in sys.modules if m.startswith('keras_transformer')]\n"
    )
    result = run_python(code, namespace["export_dir"], json.dumps(namespace["texts"]))
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads(result.stdout.strip().splitlines()[-1]) == namespace["greedy"]


def test_ci_runs_exactly_the_readme_test_commands():
    block = re.search(
        r"<!-- test-command:start -->\n```bash\n(.*?)```", README.read_text(), re.S
    ).group(1)
    commands = [line for line in block.splitlines() if line.strip()]
    ci_script = (README.parent / ".ci" / "run").read_text().splitlines()
    ci_commands = [line for line in ci_script if line in commands]
    assert ci_commands == commands
    # A test command shown anywhere else (the fast loop, the backends) is
    # one CI runs as written.
    shown = {
        line.strip()
        for block in re.findall(r"```bash\n(.*?)```", README.read_text(), re.S)
        for line in block.splitlines()
        if "pytest" in line
    }
    assert shown - set(ci_script) == set()
