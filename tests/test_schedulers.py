"""The ``pasha`` schedule through the real stack on the tiny model (create -> run -> PRUNED and
COMPLETE trials -> export), and the replay simulator driving a fresh scheduler of the same spec
over the run's recorded reports to the same decisions."""

from __future__ import annotations

import math

import optuna
import pytest
from optuna.trial import TrialState

from hpo import curves, replay, schedulers, storage, strategies
from hpo.export import export_best
from hpo.study import create_study, run_study
from tests.conftest import small_spec

pytestmark = pytest.mark.e2e

# strong first, then weak ones (distinct, so each replayed ask snaps to its own row)
CONFIGS = [
    {"learning_rate": 3e-3, "batch_size": 8, "epochs": 2, "dropout": 0.0},
    {"learning_rate": 2e-3, "batch_size": 8, "epochs": 2, "dropout": 0.05},
    *({"learning_rate": 1e-4, "batch_size": 16, "epochs": 2, "dropout": d} for d in (0.1, 0.15, 0.2)),
    {"learning_rate": 2.5e-3, "batch_size": 8, "epochs": 1, "dropout": 0.02},
]


def test_pasha_runs_through_the_real_stack_and_the_replay_decides_alike(tmp_path, tiny_model):
    url = f"sqlite:///{tmp_path / 'hpo.db'}"
    path = small_spec(
        tmp_path,
        name="pasha",
        schedule={"type": "pasha", "grace_period": 0.25, "reduction_factor": 2},
        resources={"cpus_per_trial": 1, "concurrency": 1},  # one at a time: one order of reports
    )
    create_study(path, storage=url)
    study = optuna.load_study(study_name="pasha", storage=url)
    for params in CONFIGS:
        study.enqueue_trial(params)
    summary = run_study("pasha", trials=len(CONFIGS), storage=url, runs_dir=tmp_path / "runs")
    assert summary.counts["COMPLETE"] + summary.counts["PRUNED"] == len(CONFIGS)
    trials = study.get_trials()
    states = [t.state for t in trials]
    assert TrialState.PRUNED in states and TrialState.COMPLETE in states
    capped = [
        t for t in trials if t.state == TrialState.COMPLETE and t.user_attrs["epoch"] < t.params["epochs"]
    ]
    assert capped, "PASHA's cap (0.5 epoch at first) ends the best trials early, as COMPLETE"
    out = tmp_path / "export"
    export_best(str(out), study="pasha", storage=url)
    assert (out / "hpo.json").is_file()

    # the same reports, replayed one trial after another into a fresh scheduler of the same spec
    spec = storage.spec_of(study)
    rows = [curves.curve_of(t, spec.training.eval_every, pruned=True) for t in trials]
    assert all(rows), "every trial records when each evaluation came"
    table = curves.Table({"direction": "minimize", "metric": "eval_loss"}, rows)  # type: ignore[arg-type]
    strat = strategies.OptunaStrategy(
        table, spec, optuna.samplers.RandomSampler(seed=0), scheduler=schedulers.build(spec)
    )
    for t in trials:
        strat.study.enqueue_trial(t.params)
    trace = replay.replay(table, strat, 1, math.inf, stop_within=-1.0, max_trials=len(trials))
    assert [row for row, _, _ in trace.ends] == list(range(len(trials)))
    for (_, n, go_on), t in zip(trace.ends, trials, strict=True):
        assert n == len(t.intermediate_values), t.number  # no earlier stop than the run's
        if t.state == TrialState.PRUNED:
            assert not go_on, t.number  # and the same stop
    assert [t.state for t in strat.study.trials] == states
