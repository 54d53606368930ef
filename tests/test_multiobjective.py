"""Several objectives through the real CLI, Ray Tune, Optuna and transformers on the tiny model:
create a two-objective study (eval_loss, train_seconds) -> run trials with ASHA -> the storage holds
two values per COMPLETE trial -> ``study show`` lists the Pareto front -> ``export`` without
--trial refuses listing it -> ``export --trial N`` writes the trial -> ``report`` plots the front."""

from __future__ import annotations

import json

import optuna
import pytest
from optuna.trial import TrialState

from tests.conftest import run_cli, small_spec

pytestmark = pytest.mark.e2e

OBJECTIVES = [{"metric": "eval_loss"}, {"metric": "train_seconds"}]
# a short, a long and a weak configuration: the short one trains fastest, the long one reaches the
# lowest loss, so the front holds at least two trials; the weak one is for ASHA to stop. One at a
# time: the short trial is then first at each of its rungs (never stopped), and the long one beats it
# there (more steps per epoch); two at once, ASHA stopped one of them when it was second to a rung
QUEUE = [
    {"learning_rate": 5e-3, "batch_size": 16, "epochs": 1, "dropout": 0.0},
    {"learning_rate": 3e-3, "batch_size": 8, "epochs": 2, "dropout": 0.0},
    {"learning_rate": 1e-4, "batch_size": 16, "epochs": 2, "dropout": 0.2},
]


def test_two_objectives_end_to_end(tmp_path, tiny_model):
    url = f"sqlite:///{tmp_path / 'hpo.db'}"
    spec = small_spec(tmp_path, name="mo", objectives=OBJECTIVES, rows=160)
    r = run_cli("study", "create", str(spec), "--storage", url, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    study = optuna.load_study(study_name="mo", storage=url)
    assert [d.name for d in study.directions] == ["MINIMIZE", "MINIMIZE"]
    for params in QUEUE:
        study.enqueue_trial(params)

    r = run_cli("run", "--trials", "3", "--concurrency", "1", "--storage", url, cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "ASHA stops trials on the first objective (eval_loss)" in r.stdout
    assert "Pareto front of eval_loss, train_seconds" in r.stdout

    trials = study.get_trials()
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(complete) >= 2 and any(t.state == TrialState.PRUNED for t in trials)
    for t in complete:
        assert len(t.values) == 2 and t.values[1] == pytest.approx(t.user_attrs["train_s"])
        assert t.values[0] == pytest.approx(t.user_attrs["best_eval_loss"])
        assert t.intermediate_values  # the first objective's evaluations
    front = sorted(t.number for t in study.best_trials)
    assert len(front) >= 2

    r = run_cli("study", "show", "--json", "--storage", url, cwd=tmp_path)
    shown = json.loads(r.stdout)
    assert [p["trial"] for p in shown["pareto"]] == front
    r = run_cli("study", "show", "--storage", url, cwd=tmp_path)
    assert "Pareto front" in r.stdout and f"--trial {front[0]}" in r.stdout

    out = tmp_path / "exports" / "mo"
    r = run_cli("export", "--out", str(out), "--storage", url, cwd=tmp_path)
    assert r.returncode == 2 and not out.exists()
    assert "2 objectives" in r.stderr and all(f"trial {n}:" in r.stderr for n in front)

    r = run_cli("export", "--out", str(out), "--trial", str(front[0]), "--storage", url, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    card = (out / "README.md").read_text()
    assert "train_seconds (minimize)" in card
    info = json.loads((out / "hpo.json").read_text())
    assert [o["metric"] for o in info["objectives"]] == ["eval_loss", "train_seconds"]

    report = tmp_path / "report.html"
    r = run_cli("report", "--out", str(report), "--storage", url, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    page = report.read_text()
    assert 'id="fig-pareto"' in page and f"--trial {front[0]}" in page
