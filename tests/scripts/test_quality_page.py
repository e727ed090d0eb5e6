"""scripts/quality_page.py: the quality page and its plot, from the runs file."""

import contextlib
import io
import json

import pytest

from tests.conftest import TINY_RUN_RECORD, is_png, load_script
from tests.conftest import usage_error as script_usage_error


def scores(bleu):
    return {"bleu_cased": bleu, "bleu_lowercased": bleu + 0.5, "chrf": bleu + 20}


def recorded_run(name, record=None):
    """A run as scripts/evaluate.py records it."""
    return {
        "name": name,
        "model": f"saved_models/{name}/{name}.keras",
        "parameters": 1234,
        "beam_size": 2,
        "test_source": "multi30k/test_2016_flickr.en",
        "test_size": 4,
        "test": {"greedy": scores(20.25), "beam": scores(21.5)},
        "record": record or {},
        "evaluated": "2026-12-06",
    }


def write_page(tmp_path, runs):
    """Runs the script on a runs file holding `runs`; returns the page."""
    results = tmp_path / "runs.json"
    results.write_text(json.dumps(runs))
    output = io.StringIO()
    with contextlib.redirect_stdout(output):
        code = load_script("quality_page").main([
            "--results", str(results), "--output", str(tmp_path / "docs" / "quality.md"),
            "--plot", str(tmp_path / "docs" / "quality_bleu.png"),
        ])  # fmt: skip
    assert code == 0
    assert f"from {len(runs)} runs" in output.getvalue()
    return (tmp_path / "docs" / "quality.md").read_text()


def test_the_page_lists_each_run_its_record_and_the_anchors(tmp_path):
    page = write_page(tmp_path, [recorded_run("tiny-run", TINY_RUN_RECORD)])
    assert "| tiny-run | greedy | 20.8 | 20.2 | 40.2 |" in page
    assert "| tiny-run | beam 2 | 22.0 | 21.5 | 41.5 |" in page
    for text in (
        "`python train.py --tiny`",
        "four toy pairs",
        "1 min 15 s",  # Training wall time.
        "2 min 20 s",  # CPU time.
        "1,234",  # Parameters.
        "1.5 after 0 min 30 s, 3.0 after 1 min 00 s",  # The validation curve.
        "fairseq `transformer_tiny`",
        "41.0",
        "35.8",
        "quality_bleu.png",
    ):
        assert text in page
    assert is_png(tmp_path / "docs" / "quality_bleu.png")


def test_every_run_gets_a_section_and_a_run_without_record_leaves_it_out(tmp_path):
    page = write_page(tmp_path, [recorded_run("first", TINY_RUN_RECORD), recorded_run("second")])
    assert "## first" in page and "## second" in page
    second = page.split("## second")[1]
    assert "training wall time" not in second and "validation BLEU" not in second


def usage_error(capsys, *arguments):
    return script_usage_error(capsys, load_script("quality_page").main, arguments)


@pytest.mark.parametrize(
    "content, line",
    [
        (None, "--results: no such file: {path}; record a run with scripts/evaluate.py first"),
        ("{not json", "--results: cannot read {path} as JSON"),
        ('{"name": "x"}', "--results: {path} holds an object, expected a JSON list"),
        ("[1, 2]", "--results: {path} is not a list of runs written by scripts/evaluate.py"),
    ],
)  # fmt: skip
def test_a_missing_or_broken_runs_file_is_one_usage_line_naming_it(
    tmp_path, capsys, content, line
):
    path = tmp_path / "runs.json"
    if content is not None:
        path.write_text(content)
    output = tmp_path / "quality.md"
    message = usage_error(capsys, "--results", path, "--output", output)
    assert message.startswith("quality_page.py: error: " + line.format(path=path))
    assert not output.exists()
