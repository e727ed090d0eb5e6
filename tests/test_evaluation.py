"""keras_transformer.evaluation: exact match and sacreBLEU scores."""

import pytest

from keras_transformer import evaluation


def test_exact_match_counts_whole_strings():
    match = evaluation.exact_match(["2021-03-05", "2021-03-06", ""], ["2021-03-05"] * 3)
    assert (match.matched, match.total) == (1, 3)
    assert str(match) == "33.3% (1/3)"


def test_exact_match_refuses_unpaired_lists():
    with pytest.raises(ValueError, match="2 hypotheses and 1 references"):
        evaluation.exact_match(["a", "b"], ["a"])


def test_bleu_and_chrf_are_sacrebleus_corpus_scores():
    sacrebleu = pytest.importorskip("sacrebleu")
    hypotheses = ["Ein Hund läuft im Park.", "Zwei Männer spielen Fußball."]
    references = ["Ein Hund rennt im Park.", "Zwei Männer spielen Fußball."]

    bleu = evaluation.corpus_bleu(hypotheses, references)
    lowercased = evaluation.corpus_bleu(
        [h.lower() for h in hypotheses], references, lowercase=True
    )
    chrf = evaluation.corpus_chrf(hypotheses, references)

    assert bleu.score == sacrebleu.corpus_bleu(hypotheses, [references]).score
    assert lowercased.score == bleu.score
    assert chrf.score == sacrebleu.corpus_chrf(hypotheses, [references]).score
    assert 0 < bleu.score < 100


def test_score_summary_of_exact_match_is_one_line_of_the_count():
    line = evaluation.score_summary(["2021-03-05", "x"], ["2021-03-05", "2021-03-06"])
    assert line == "exact match: 50.0% (1/2)"


def test_score_summary_of_sacrebleu_gives_cased_lowercased_bleu_and_chrf():
    sacrebleu = pytest.importorskip("sacrebleu")
    hypotheses = ["ein Hund läuft im Park.", "Zwei Männer spielen Fußball."]
    references = ["Ein Hund rennt im Park.", "Zwei Männer spielen Fußball."]
    cased = sacrebleu.corpus_bleu(hypotheses, [references]).score
    lower = sacrebleu.corpus_bleu(hypotheses, [references], lowercase=True).score
    chrf = sacrebleu.corpus_chrf(hypotheses, [references]).score
    assert lower > cased
    assert evaluation.sacrebleu_scores(hypotheses, references) == {
        "bleu_cased": cased, "bleu_lowercased": lower, "chrf": chrf,
    }  # fmt: skip
    assert evaluation.score_summary(hypotheses, references, "sacrebleu") == (
        f"sacreBLEU (13a): {cased:.2f} cased, {lower:.2f} lowercased; chrF {chrf:.2f}"
    )


def test_score_summary_refuses_an_unknown_metric():
    with pytest.raises(ValueError, match="argument metric, expected one of"):
        evaluation.score_summary(["a"], ["a"], metric="bleu")
