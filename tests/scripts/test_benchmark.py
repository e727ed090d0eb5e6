"""scripts/benchmark.py: a smoke run with tiny settings.

The numbers of a smoke run mean nothing; this checks that the sections run
side by side, write the report and its plots, and that a peer that cannot be
imported is reported as skipped with the reason instead of being measured.
"""

import contextlib
import io
import sys

import pytest

from tests.conftest import is_png, load_script


@pytest.mark.slow
def test_smoke_run_writes_the_report_and_plots_and_skips_a_missing_peer(
    tmp_path, monkeypatch
):
    # A None entry makes `import keras_hub` fail, as if it were not installed.
    monkeypatch.setitem(sys.modules, "keras_hub", None)
    # A page with a GPU section (written by benchmark_gpu.py elsewhere).
    gpu_section = "## GPU training throughput (`scripts/benchmark_gpu.py`)\n\n| row |\n"
    (tmp_path / "benchmarks.md").write_text("# old page\n\n" + gpu_section)
    output = io.StringIO()
    with contextlib.redirect_stdout(output):
        code = load_script("benchmark").main([
            "--smoke", "--sections", "training", "decoding",
            "--repeats", "1", "--warmup", "0", "--output-dir", str(tmp_path),
        ])  # fmt: skip
    assert code == 0

    report = (tmp_path / "benchmarks.md").read_text()
    for heading in ("## Goals", "## 1. Training throughput", "## 2. Greedy decoding"):
        assert heading in report
    assert "python scripts/benchmark.py --smoke --sections training decoding" in report
    assert "tensorflow 2." in report and "keras 3." in report
    # keras-hub rows and goals say why they were not measured.
    assert "| keras-hub | skipped (ModuleNotFoundError: import of keras_hub" in report
    assert "not measured" in report
    # The library and Keras core were measured.
    assert "| keras_transformer | yes | 0.1 |" in report
    assert "| keras MultiHeadAttention | no | 0.1 |" in report
    assert "produce the same tokens: batch 2: yes" in report
    for plot in ("benchmark_training.png", "benchmark_decoding.png"):
        assert f"]({plot})" in report
        assert is_png(tmp_path / plot)
    assert "== 1. Training throughput" in output.getvalue()
    # The CPU run replaced the page but kept its GPU section, at the end.
    assert "# old page" not in report
    assert report.endswith("\n" + gpu_section)
