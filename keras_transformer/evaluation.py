"""Scoring translations: exact match and sacreBLEU (BLEU, chrF).

BLEU and chrF need the optional package sacrebleu, imported when called.
"""

import dataclasses
import os
import re


@dataclasses.dataclass(frozen=True)
class ExactMatch:
    """How many hypotheses equal their reference exactly."""

    matched: int
    total: int

    @property
    def rate(self):
        return self.matched / self.total if self.total else 0.0

    def __str__(self):
        return f"{100 * self.rate:.1f}% ({self.matched}/{self.total})"


def exact_match(hypotheses, references):
    """Counts hypotheses identical to their reference (whole strings)."""
    hypotheses, references = list(hypotheses), list(references)
    if len(hypotheses) != len(references):
        raise ValueError(
            "hypotheses and references must pair up, but received "
            f"{len(hypotheses)} hypotheses and {len(references)} references."
        )
    matched = sum(h == r for h, r in zip(hypotheses, references))
    return ExactMatch(matched=matched, total=len(references))


def corpus_bleu(hypotheses, references, lowercase=False):
    """Corpus BLEU (sacrebleu, 13a tokenization) of detokenized text.

    Returns:
        A `sacrebleu.metrics.BLEUScore`; `.score` is BLEU in [0, 100].
    """
    sacrebleu = _require(
        "sacrebleu", "BLEU is computed with sacrebleu: pip install sacrebleu"
    )
    return sacrebleu.corpus_bleu(
        list(hypotheses), [list(references)], lowercase=lowercase
    )


def corpus_chrf(hypotheses, references):
    """Corpus chrF (sacrebleu's defaults: character 6-grams, beta 2).

    Returns:
        A `sacrebleu.metrics.CHRFScore`; `.score` is chrF in [0, 100].
    """
    sacrebleu = _require(
        "sacrebleu", "chrF is computed with sacrebleu: pip install sacrebleu"
    )
    return sacrebleu.corpus_chrf(list(hypotheses), [list(references)])



# The metrics `score_summary` reports.
SUMMARY_METRICS = ("exact_match", "sacrebleu")


def score_summary(hypotheses, references, metric="exact_match"):
    """One line of scores of translations, for a log or a report.

    Args:
        hypotheses: list of str. The translations.
        references: list of str. Their references.
        metric: `"exact_match"` (for tasks with one right answer, such as
            the date task) or `"sacrebleu"`: BLEU (13a, cased and
            lowercased) and chrF, which need sacrebleu.

    Returns:
        A str such as `"exact match: 99.9% (999/1000)"` or
        `"sacreBLEU (13a): 31.50 cased, 31.20 lowercased; chrF 54.50"`.

    Example:

    ```python
    score_summary(["2021-03-05"], ["2021-03-05"])  # 'exact match: 100.0% (1/1)'
    ```
    """
    if metric == "exact_match":
        return f"exact match: {exact_match(hypotheses, references)}"
    if metric != "sacrebleu":
        raise ValueError(
            "Received an invalid value for argument metric, expected one of "
            f"{SUMMARY_METRICS}. Received: metric={metric!r}"
        )
    scores = sacrebleu_scores(hypotheses, references)
    return (
        f"sacreBLEU (13a): {scores['bleu_cased']:.2f} cased, "
        f"{scores['bleu_lowercased']:.2f} lowercased; chrF {scores['chrf']:.2f}"
    )


def sacrebleu_scores(hypotheses, references):
    """BLEU (13a) cased and lowercased and chrF, each in [0, 100].

    Returns:
        A dict with `bleu_cased`, `bleu_lowercased` and `chrf`.
    """
    return {
        "bleu_cased": corpus_bleu(hypotheses, references).score,
        "bleu_lowercased": corpus_bleu(hypotheses, references, lowercase=True).score,
        "chrf": corpus_chrf(hypotheses, references).score,
    }

def _require(module_name, hint):
    try:
        return __import__(module_name)
    except ImportError as error:
        raise ImportError(f"{module_name} is not installed. {hint}") from error


_ABSOLUTE_PATH = re.compile(r"(?<![\w.])/[^\s'\"`,;:()]+")


def portable_paths(text, root):
    """`text` with this machine's absolute paths written for any reader.

    Run records and the pages written from them name corpora, models and
    output folders; a path under `root` (the repository) or beside it
    becomes relative to it (`saved_models/x.keras`, `../shared/data/...`),
    any other keeps only its last two parts (`.../m30k/logs`).
    """
    root = os.path.abspath(root)

    def shorten(match):
        path = match.group(0)
        relative = os.path.relpath(path, root)
        if not relative.startswith(os.pardir + os.sep + os.pardir):
            return relative
        return os.path.join("...", *path.rstrip("/").split("/")[-2:])

    return _ABSOLUTE_PATH.sub(shorten, text)
