"""Scores of generated answers (hpo/textmetrics.py): normalisation, exact match, ROUGE-L, chrF and a
user's own metric, on hand-picked strings."""

from __future__ import annotations

import numpy as np
import pytest

from hpo import textmetrics as tm
from hpo.errors import TrialError


@pytest.mark.parametrize(
    ("text", "steps", "want"),
    [
        ("  Yes.\n", ["strip"], "Yes."),
        ("  Yes.\n", [], "  Yes.\n"),
        ("The  CAT\tsat", ["lowercase"], "the  cat\tsat"),
        ("  The  CAT\n\tsat ", ["whitespace"], "The CAT sat"),
        ("  The  CAT\n\tsat ", ["strip", "lowercase", "whitespace"], "the cat sat"),
    ],
)
def test_normalize(text, steps, want):
    assert tm.normalize(text, steps) == want


def test_exact_match_counts_equal_pairs():
    assert tm.exact_match(["a", "b", "c", "d"], ["a", "x", "c", "y"]) == 0.5
    assert tm.exact_match([], []) == 0.0


def test_rouge_l_is_the_mean_lcs_f_measure():
    assert tm.rouge_l(["the cat sat"], ["the cat sat"]) == pytest.approx(1.0)
    # LCS 2 of a 2-token prediction and a 3-token reference: P = 1, R = 2/3, F = 0.8
    assert tm.rouge_l(["the cat"], ["the cat sat"]) == pytest.approx(0.8)
    assert tm.rouge_l(["the cat", "dog"], ["the cat sat", "bird"]) == pytest.approx(0.4)


def test_chrf_is_sacrebleus_corpus_score():
    assert tm.chrf(["the cat sat on the mat"], ["the cat sat on the mat"]) == pytest.approx(100.0)
    assert tm.chrf(["xyz"], ["the cat sat on the mat"]) == pytest.approx(0.0)
    partial = tm.chrf(["the cat sat"], ["the cat sat on the mat"])
    assert 0 < partial < 100


def test_score_normalises_before_the_builtin_metrics():
    got = tm.score(["q"], ["  The Cat "], ["the cat"], ["strip", "lowercase"])
    assert got["exact_match"] == 1.0 and got["chrf"] == pytest.approx(100.0)
    assert tm.score(["q"], ["  The Cat "], ["the cat"], ["strip"])["exact_match"] == 0.0


def test_custom_metric_of_predictions_and_references():
    def score(predictions, references):
        return sum(len(p) == len(r) for p, r in zip(predictions, references, strict=True)) / len(predictions)

    got = tm.score(["q1", "q2"], ["ab", "abc"], ["xy", "x"], [], custom=("same_len", score, "m.py:score"))
    assert got["same_len"] == 0.5


def test_custom_metric_of_rows_gets_prompts_and_raw_texts():
    seen = []

    def score(rows):
        seen.extend(rows)
        return np.float32(0.25)  # numpy numbers are numbers

    got = tm.score(["Q?"], ["  A "], ["a"], ["strip", "lowercase"], custom=("mine", score, "m.py:score"))
    assert got["mine"] == 0.25
    assert seen == [{"prompt": "Q?", "prediction": "  A ", "reference": "a"}]  # not normalised


def test_custom_metric_errors_fail_with_its_message():
    def boom(predictions, references):
        raise ValueError("references must be numbers")

    with pytest.raises(TrialError, match=r"m.py:score raised ValueError: references must be numbers"):
        tm.call_custom(boom, "m.py:score", ["q"], ["p"], ["r"])
    for bad in ("0.5", None, float("nan"), True):
        with pytest.raises(TrialError, match="must return a finite float"):
            tm.call_custom(lambda p, r, v=bad: v, "m.py:score", ["q"], ["p"], ["r"])


def test_check_custom_reads_without_running(tmp_path):
    f = tmp_path / "metrics.py"
    assert "file not found" in tm.check_custom(str(f), "score")
    f.write_text("raise SystemExit('never run at create time')\ndef score(p, r):\n    return 1.0\n")
    assert tm.check_custom(str(f), "score") is None
    assert "defines no function other" in tm.check_custom(str(f), "other")
    f.write_text("from statistics import mean as score\nalias = score\n")
    assert tm.check_custom(str(f), "score") is None and tm.check_custom(str(f), "alias") is None
    f.write_text("def score(p, r)\n    return 1\n")
    assert "not valid Python (line 1" in tm.check_custom(str(f), "score")


def test_load_custom_imports_the_file_with_its_neighbours(tmp_path):
    (tmp_path / "helper.py").write_text("BONUS = 0.5\n")
    (tmp_path / "metrics.py").write_text(
        "from helper import BONUS\ndef score(rows):\n    return BONUS + len(rows)\n"
    )
    fn = tm.load_custom(str(tmp_path / "metrics.py"), "score")
    assert tm.takes_rows(fn) and fn([1]) == 1.5
    (tmp_path / "broken.py").write_text("import not_a_module_anywhere\n")
    with pytest.raises(TrialError, match="importing .*broken.py raised ModuleNotFoundError"):
        tm.load_custom(str(tmp_path / "broken.py"), "score")
    with pytest.raises(TrialError, match="defines no function nope"):
        tm.load_custom(str(tmp_path / "metrics.py"), "nope")


@pytest.mark.parametrize("ref", ["metrics.py", "metrics:score", "metrics.py:", "metrics.py:not-a-name"])
def test_split_ref_wants_file_and_function(ref):
    with pytest.raises(ValueError, match="file.py:function"):
        tm.split_ref(ref)
    assert tm.split_ref("sub/m.py:score") == ("sub/m.py", "score")
