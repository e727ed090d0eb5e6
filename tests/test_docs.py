"""The written pages (README.md, docs/) name files as any clone has them."""

import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PAGES = sorted(
    [ROOT / "README.md", *(ROOT / "docs").glob("*.md"), *(ROOT / "docs").glob("*.json")]
)
# Where a run on some machine put its files: what a reader's clone lacks.
# Narrower than the pattern `evaluation.portable_paths` rewrites in run
# records, which also matches paths a page rightly names (`/proc/self/status`
# in docs/benchmarks.md, a Docker mount in the README).
MACHINE_PATH = re.compile(r"(?<![\w.])/(?:tmp|work|home|root|Users|mnt|var/folders)/")


@pytest.mark.parametrize("page", PAGES, ids=lambda page: str(page.relative_to(ROOT)))
def test_a_page_names_no_absolute_path_of_the_machine_that_wrote_it(page):
    lines = [
        f"line {number}: {line.strip()}"
        for number, line in enumerate(page.read_text().splitlines(), start=1)
        if MACHINE_PATH.search(line)
    ]
    assert not lines, "name files relative to the repository instead:\n" + "\n".join(lines)


def test_the_check_finds_a_run_folder_but_not_a_url_or_a_relative_path():
    assert MACHINE_PATH.search("model: /tmp/m30k/translator.keras")
    assert MACHINE_PATH.search("corpus `/work/shared/data/multi30k/train.en`")
    assert not MACHINE_PATH.search("https://example.org/tmp/page")
    assert not MACHINE_PATH.search("saved_models/m30k/1 and runs/tmp/")
