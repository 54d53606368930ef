"""``sampler: cqr`` (hpo/cqr.py): syne-tune's conformalized quantile regression as an Optuna sampler.
The pure parts (which value of a trial counts, which distributions the model takes) run anywhere;
the sampler itself, and the run through the real stack on the tiny model, need the optional
``search`` extra (syne-tune) and skip without it, saying how to install it."""

from __future__ import annotations

import importlib.util
import logging
import math
import statistics

import numpy as np
import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState

from hpo import cqr
from hpo.errors import SpecError
from tests.conftest import small_spec

SKIP = "syne-tune is an optional extra: pip install -e '.[search]' (scripts/setup --search)"
needs_syne = pytest.mark.skipif(importlib.util.find_spec("syne_tune") is None, reason=SKIP)

LR = FloatDistribution(1e-5, 1e-2, log=True)
BS = CategoricalDistribution((8, 16, 32))
EP = IntDistribution(1, 3)
SPACE = {"learning_rate": LR, "batch_size": BS, "epochs": EP}


def _study(direction: str = "minimize", sampler=None) -> optuna.Study:
    return optuna.create_study(direction=direction, sampler=sampler)


def _add(study, state, lr, steps=None, value=None) -> None:
    study.add_trial(
        optuna.trial.create_trial(
            state=state,
            params={"learning_rate": lr, "batch_size": 8, "epochs": 2},
            distributions=SPACE,
            value=value,
            intermediate_values=steps or {},
        )
    )


def test_each_trial_counts_with_its_last_evaluation_whatever_rung_it_reached():
    study = _study()
    _add(study, TrialState.COMPLETE, 1e-3, {0: 2.0, 1: 1.5, 3: 1.7}, value=1.5)  # last, not best
    _add(study, TrialState.PRUNED, 1e-4, {0: 3.0})  # stopped at the first rung
    _add(study, TrialState.RUNNING, 2e-4, {2: 2.5, 0: 2.9})  # still training: its latest step
    _add(study, TrialState.RUNNING, 3e-4)  # nothing reported yet
    _add(study, TrialState.FAIL, 4e-4, {0: 0.1})  # failed: not a measurement of its config
    _add(study, TrialState.WAITING, 5e-4)
    _add(study, TrialState.COMPLETE, 6e-4, value=1.2)  # imported (warm start): only its value
    _add(study, TrialState.PRUNED, 7e-4, {0: float("nan")})
    got = cqr.last_values(study.get_trials(), minimize=True)
    assert [(n, v) for n, _, v in got] == [(0, 1.7), (1, 3.0), (2, 2.5), (6, 1.2)]
    assert got[0][1] == {"learning_rate": 1e-3, "batch_size": 8, "epochs": 2}


def test_a_maximised_objective_is_negated_so_the_model_always_minimises():
    study = _study("maximize")
    _add(study, TrialState.COMPLETE, 1e-3, {0: 0.4, 1: 0.6}, value=0.6)
    assert [v for _, _, v in cqr.last_values(study.get_trials(), minimize=False)] == [-0.6]


def test_the_model_takes_plain_ranges_and_categoricals_and_leaves_stepped_ones_to_random():
    space = {
        **SPACE,
        "warmup": FloatDistribution(0.0, 0.2, step=0.05),
        "rank": IntDistribution(4, 16, step=4),
    }
    assert set(cqr.modelled(space)) == set(SPACE)


@needs_syne
def test_the_model_proposes_once_five_trials_have_reported_and_respects_each_type():
    study = _study()
    for i in range(4):
        _add(study, TrialState.PRUNED, 10 ** (-4 + i / 2), {0: 3.0 - i / 10})
    sampler = cqr.CQRSampler(seed=0)
    trial = study.ask()
    assert sampler.sample_relative(study, study.trials[-1], SPACE) == {}  # 4 reported: random
    study.tell(trial, state=TrialState.FAIL)
    _add(study, TrialState.RUNNING, 1e-3, {0: 2.0})  # a running trial's evaluation counts too
    np.random.seed(0)
    for _ in range(5):
        got = sampler.sample_relative(study, study.trials[-1], SPACE)
        assert set(got) == set(SPACE)
        assert isinstance(got["learning_rate"], float) and LR.low <= got["learning_rate"] <= LR.high
        assert isinstance(got["epochs"], int) and EP.low <= got["epochs"] <= EP.high
        assert got["batch_size"] in BS.choices and type(got["batch_size"]) is int


def _quadratic(trial: optuna.Trial) -> float:
    """Best at lr 1e-3 and batch 16; reported as one evaluation, as a run's trials do."""
    lr = trial.suggest_float("learning_rate", 1e-5, 1e-1, log=True)
    bs = trial.suggest_categorical("batch_size", [8, 16, 32])
    value = (math.log10(lr) + 3) ** 2 + (0.0 if bs == 16 else 0.5)
    trial.report(value, 0)
    return value


@needs_syne
def test_the_model_moves_toward_the_optimum_faster_than_random_sampling():
    def late_median(sampler) -> float:
        np.random.seed(0)  # CQR's quantile draw uses numpy's global generator (syne-tune's choice)
        study = _study(sampler=sampler)
        study.optimize(_quadratic, n_trials=24)
        return statistics.median(t.value for t in study.trials[12:])

    assert late_median(cqr.CQRSampler(seed=1)) < late_median(optuna.samplers.RandomSampler(seed=1))


@needs_syne
def test_a_new_sampler_on_a_stored_study_models_every_evaluation_at_once(tmp_path):
    url = f"sqlite:///{tmp_path / 'hpo.db'}"
    study = optuna.create_study(storage=url, study_name="s", sampler=optuna.samplers.RandomSampler(seed=0))
    study.optimize(_quadratic, n_trials=6)
    resumed = optuna.load_study(study_name="s", storage=url, sampler=cqr.CQRSampler(seed=0))
    trial = resumed.ask()  # what a re-run asks first: the model, not a random start-up draw
    space = resumed.sampler.infer_relative_search_space(resumed, resumed.trials[-1])
    assert set(space) == {"learning_rate", "batch_size"}
    assert resumed.sampler.sample_relative(resumed, resumed.trials[-1], space)
    resumed.tell(trial, state=TrialState.FAIL)


def test_the_spec_refuses_cqr_in_one_line_without_syne_tune(tmp_path, monkeypatch):
    from hpo import spec

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "syne_tune" else real(n, *a))
    with pytest.raises(SpecError) as e:
        spec.load(small_spec(tmp_path, rows=40, sampler="cqr"))
    message = str(e.value)
    assert "sampler" in message and "pip install -e '.[search]'" in message and "\n" not in message.strip()


@needs_syne
@pytest.mark.e2e
def test_cqr_runs_through_the_real_stack(tmp_path, tiny_model, caplog):
    from hpo.export import export_best
    from hpo.study import create_study, run_study

    url = f"sqlite:///{tmp_path / 'hpo.db'}"
    create_study(small_spec(tmp_path, name="cqr", sampler="cqr"), storage=url)
    with caplog.at_level(logging.DEBUG, logger="hpo.cqr"):
        summary = run_study("cqr", trials=8, storage=url, runs_dir=tmp_path / "runs")
    assert summary.counts["COMPLETE"] + summary.counts["PRUNED"] == 8
    study = optuna.load_study(study_name="cqr", storage=url)
    assert {TrialState.COMPLETE, TrialState.PRUNED} <= {t.state for t in study.trials}
    assert any("proposed by the model" in r.getMessage() for r in caplog.records), "model never used"
    export_best(str(tmp_path / "export"), study="cqr", storage=url)
    assert (tmp_path / "export" / "hpo.json").is_file()
