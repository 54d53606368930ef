"""``evaluation.generate`` through the real stack on the tiny model: `hpo study create` ->
`hpo run` (Ray Tune, ASHA, Optuna storage) with rouge_l as the objective and a custom metric from
the spec's folder -> the metrics, their cost and the answers are stored with each trial -> the
report and the dashboard notes show the best trial's answers -> `hpo export` exports it."""

from __future__ import annotations

import html
import json

import optuna
import optuna_dashboard
import pytest
from optuna.trial import TrialState

from tests.conftest import run_cli, small_spec

pytestmark = pytest.mark.e2e

METRIC = '''
def score(rows):
    """The share of answers that share a word with their reference."""
    hits = [bool(set(r["prediction"].lower().split()) & set(r["reference"].lower().split())) for r in rows]
    return sum(hits) / len(rows)
'''


def test_rouge_l_objective_with_a_custom_metric(tmp_path, tiny_model):
    (tmp_path / "metrics.py").write_text(METRIC)
    url = f"sqlite:///{tmp_path / 'hpo.db'}"
    spec = small_spec(
        tmp_path,
        name="gen",
        rows=120,
        objective={"metric": "rouge_l"},
        evaluation={
            "generate": {
                "samples": 8,
                "max_new_tokens": 16,
                "normalize": ["strip", "lowercase", "whitespace"],
                "metric": {"python": "metrics.py:score", "name": "shared_word"},
            }
        },
        space={"epochs": 1, "batch_size": 16, "learning_rate": {"type": "float", "low": 1e-3, "high": 1e-2}},
    )
    r = run_cli("study", "create", str(spec), "--storage", url, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "objective rouge_l (maximize)" in r.stdout

    r = run_cli("run", "--trials", "3", "--storage", url, cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    study = optuna.load_study(study_name="gen", storage=url)
    assert study.direction == optuna.study.StudyDirection.MAXIMIZE
    trials = study.get_trials()
    assert {t.state for t in trials} <= {TrialState.COMPLETE, TrialState.PRUNED}
    assert TrialState.COMPLETE in {t.state for t in trials}
    for t in trials:
        a = t.user_attrs
        assert a["generate_s"] > 0 and a["generated_tokens"] > 0, t.number
        assert set(a["generated_metrics"]) == {"exact_match", "rouge_l", "chrf", "shared_word"}
        assert 0 <= a["generated_metrics"]["shared_word"] <= 1
        assert len(a["generated_samples"]) == 3 and {"prompt", "prediction", "reference"} <= set(
            a["generated_samples"][0]
        )
        assert a["best_eval_loss"] > 0  # the loss metrics are still recorded
        assert all(0 <= v <= 1 for v in t.intermediate_values.values())  # rouge_l at each evaluation
        if t.state == TrialState.COMPLETE:  # value: the best rouge_l, whose answers are kept
            assert t.value == pytest.approx(max(t.intermediate_values.values()))
            assert a["generated_metrics"]["rouge_l"] == pytest.approx(t.value)
    best = max((t for t in trials if t.state == TrialState.COMPLETE), key=lambda t: t.value)

    r = run_cli("study", "show", "gen", "--storage", url, cwd=tmp_path)
    assert r.returncode == 0 and "generated answers: exact_match" in r.stdout, r.stdout + r.stderr
    note = optuna_dashboard.get_note(optuna.trial.Trial(study, best._trial_id))
    assert "**generated answers:** exact_match" in note and "| prompt | answer | reference |" in note
    r = run_cli("report", "--study", "gen", "--out", str(tmp_path / "report.html"), "--storage", url)
    assert r.returncode == 0, r.stderr
    page = (tmp_path / "report.html").read_text()
    assert f"Generated answers of trial {best.number}" in page and "generate s" in page
    reference = best.user_attrs["generated_samples"][0]["reference"]
    assert html.escape(reference[:20]) in page

    out = tmp_path / "exports" / "best"
    r = run_cli("export", "--out", str(out), "--storage", url, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert json.loads((out / "hpo.json").read_text())["trial"] == best.number
    assert f"| rouge_l (generated answers) | {best.value:.4f} |" in (out / "README.md").read_text()
