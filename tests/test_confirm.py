"""``hpo confirm`` through the real CLI, Ray Tune, Optuna and transformers on the tiny model: a
search of 2 trials -> ``confirm --top 2 --seeds 2`` retrains both configurations with 2 new seeds
each at full budget, as trials tagged ``confirm`` that count toward no ``--trials`` target ->
mean ± std printed -> a second call has nothing to add -> export prefers the best confirmed mean."""

from __future__ import annotations

import json
import statistics

import optuna
import optuna_dashboard
import pytest
from optuna.trial import TrialState

from tests.conftest import run_cli, small_spec

pytestmark = pytest.mark.e2e

QUEUE = [
    {"learning_rate": 3e-3, "batch_size": 8, "dropout": 0.1},
    {"learning_rate": 1e-3, "batch_size": 16, "dropout": 0.1},
]


def test_confirm_retrains_the_best_with_new_seeds(tmp_path, tiny_model):
    url = f"sqlite:///{tmp_path / 'hpo.db'}"
    space = {
        "learning_rate": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True},
        "batch_size": {"type": "categorical", "choices": [8, 16]},
        "dropout": {"type": "float", "low": 0.0, "high": 0.2},
        "epochs": 1,
    }
    spec = small_spec(tmp_path, name="conf", rows=120, space=space, enqueue=QUEUE, seed=7, schedule="none")
    assert run_cli("study", "create", str(spec), "--storage", url, cwd=tmp_path).returncode == 0
    r = run_cli("run", "--trials", "2", "--storage", url, cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr

    r = run_cli("confirm", "--top", "2", "--seeds", "2", "--storage", url, cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "queued 4 new run(s)" in r.stdout and r.stdout.count(" ± ") == 2

    study = optuna.load_study(study_name="conf", storage=url)
    runs = [t for t in study.get_trials() if t.user_attrs.get("confirm")]
    assert len(runs) == 4 and all(t.state == TrialState.COMPLETE for t in runs)
    assert sorted((t.user_attrs["confirm_of"], t.user_attrs["confirm_seed"]) for t in runs) == [
        (0, 8),
        (0, 9),
        (1, 8),
        (1, 9),
    ]
    for t in runs:  # each run's dashboard note says what it is (as tests/test_notes.py reads notes)
        note = optuna_dashboard.get_note(optuna.trial.Trial(study, t._trial_id))
        assert f"CONFIRM of trial {t.user_attrs['confirm_of']} (seed {t.user_attrs['confirm_seed']})" in note
    for t in runs:  # the source's configuration at its full budget (no ASHA, no early stopping)
        assert t.params == study.trials[t.user_attrs["confirm_of"]].params and t.user_attrs["epoch"] == 1
    by_source = {s: [t.value for t in runs if t.user_attrs["confirm_of"] == s] for s in (0, 1)}
    assert by_source[0][0] != by_source[0][1]  # new seeds: another data order and initial dropout
    best = min(by_source, key=lambda s: statistics.fmean(by_source[s]))
    assert f"best confirmed: trial {best}" in r.stdout

    # confirm runs count toward no search target, and a second confirm has nothing to add
    r = run_cli("run", "--trials", "2", "--storage", url, cwd=tmp_path)
    assert "nothing to run" in r.stdout
    r = run_cli("confirm", "--top", "2", "--seeds", "2", "--storage", url, cwd=tmp_path)
    assert r.returncode == 0 and "no new run needed" in r.stdout
    assert len(study.get_trials()) == 6
    r = run_cli("study", "show", "--trials", "--storage", url, cwd=tmp_path)
    assert "confirmed (hpo confirm)" in r.stdout and r.stdout.count("confirm of #") == 4

    out = tmp_path / "exports" / "conf"
    r = run_cli("export", "--out", str(out), "--storage", url, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    info = json.loads((out / "hpo.json").read_text())
    assert info["confirmed"]["configuration_of"] == best
    assert info["confirmed"]["mean"] == pytest.approx(statistics.fmean(by_source[best]))
    assert "Chosen by `hpo confirm`" in (out / "README.md").read_text()
