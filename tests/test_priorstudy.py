"""Warm start from an earlier study (hpo/priorstudy.py): the pure overlap checks, the copies a
create makes (marked imported, counted toward nothing, never the best), the sampler using them,
and on the real stack a warm-started study that runs its own trials and refuses to export an
imported one."""

from __future__ import annotations

import math

import optuna
import pytest
from optuna.trial import TrialState, create_trial

from hpo import space, storage
from hpo import spec as spec_mod
from hpo.bookkeeping import checkpoints_to_delete, finished_and_running
from hpo.params import CategoricalParam, FloatParam, IntParam
from hpo.priorstudy import fit_trial, objective_problem, param_problem
from hpo.study import create_study
from hpo.summary import best_complete, state_counts
from tests.conftest import run_cli, small_spec

SEARCHED = {
    "learning_rate": FloatParam(type="float", low=1e-4, high=1e-2, log=True),
    "epochs": IntParam(type="int", low=1, high=3),
    "batch_size": CategoricalParam(type="categorical", choices=[8, 16]),
}

# ---------------------------------------------------------------- pure checks


def test_objectives_must_match():
    assert objective_problem(("eval_loss", "minimize"), ("eval_loss", "minimize")) is None
    problem = objective_problem(("eval_loss", "minimize"), ("token_accuracy", "maximize"))
    assert problem is not None and "eval_loss (minimize)" in problem and "same objective" in problem


@pytest.mark.parametrize(
    ("name", "value", "problem"),
    [
        ("learning_rate", 1e-3, None),
        ("learning_rate", 1e-2, None),  # the bounds are inside
        ("learning_rate", 0.05, "learning_rate=0.05 is outside the new range [0.0001, 0.01]"),
        ("epochs", 3, None),
        ("epochs", 4, "epochs=4 is outside the new range [1, 3]"),
        ("epochs", 2.5, "epochs=2.5 is outside the new range [1, 3]"),  # an int range takes whole numbers
        ("batch_size", 16, None),
        ("batch_size", 32, "batch_size=32 is not among the new choices [8, 16]"),
        ("dropout", 0.1, "dropout is not searched by the new space"),
        ("learning_rate", True, "learning_rate=True is outside the new range [0.0001, 0.01]"),
    ],
)
def test_param_problem(name, value, problem):
    assert param_problem(name, value, SEARCHED) == problem


def test_fit_trial_refuses_or_drops():
    params = {"learning_rate": 1e-3, "batch_size": 8, "dropout": 0.1}
    # refuse: the first parameter outside (by name) is the problem
    assert fit_trial(params, SEARCHED, drop=False)[2] == "dropout is not searched by the new space"
    # drop: a name the new space does not search is dropped, the trial kept
    assert fit_trial(params, SEARCHED, drop=True) == (
        {"batch_size": 8, "learning_rate": 1e-3},
        ["dropout"],
        None,
    )
    # drop: a value outside a searched range leaves the trial out
    kept, dropped, problem = fit_trial({**params, "epochs": 9}, SEARCHED, drop=True)
    assert problem == "epochs=9 is outside the new range [1, 3]"
    # a parameter the new space searches and the old trial lacks is fine (the sampler copes)
    assert fit_trial({"learning_rate": 1e-3}, SEARCHED, drop=False) == ({"learning_rate": 1e-3}, [], None)


# ---------------------------------------------------------------- create from an earlier study


GOOD_LR = 3e-3


def _earlier(tmp_path, url: str, n: int = 12) -> optuna.Study:
    """Study "old" with ``n`` COMPLETE trials (the best near GOOD_LR) and one PRUNED and one FAIL."""
    old_spec = spec_mod.load(small_spec(tmp_path, name="old", rows=40))
    storage.create(old_spec, url)
    old = storage.load("old", url)
    dists = space.distributions(old_spec.space)
    for i in range(n):
        lr = 10 ** (-4 + 2 * i / (n - 1))
        value = 1.0 + abs(math.log10(lr) - math.log10(GOOD_LR))  # best near GOOD_LR
        params = {"learning_rate": lr, "batch_size": 8, "epochs": 1, "dropout": 0.1}
        attrs = {"checkpoint": f"/elsewhere/{i}", "trial_dir": f"/elsewhere/{i}", "epoch": 1.0}
        old.add_trial(
            create_trial(
                state=TrialState.COMPLETE, value=value, params=params, distributions=dists, user_attrs=attrs
            )
        )
    params = {"learning_rate": 1e-4, "batch_size": 16, "epochs": 2, "dropout": 0.0}
    old.add_trial(
        create_trial(
            state=TrialState.PRUNED, params=params, distributions=dists, intermediate_values={1: 3.5, 2: 3.4}
        )
    )
    old.add_trial(create_trial(state=TrialState.FAIL, params=params, distributions=dists))
    return old


def test_a_warm_started_study_holds_the_earlier_finished_trials_marked_imported(tmp_path):
    url = f"sqlite:///{tmp_path / 'hpo.db'}"
    old = _earlier(tmp_path, url)
    create_study(small_spec(tmp_path, name="new", rows=40, warm_start={"study": "old"}), storage=url)
    new = storage.load("new", url)
    trials = new.get_trials()
    assert len(trials) == 13  # 12 COMPLETE + 1 PRUNED; the FAIL is not history
    assert all(t.user_attrs["imported"] == "old" for t in trials)
    assert sorted(t.user_attrs["imported_number"] for t in trials) == list(range(13))
    assert [t.state for t in trials].count(TrialState.PRUNED) == 1
    pruned = next(t for t in trials if t.state == TrialState.PRUNED)
    assert pruned.intermediate_values == {1: 3.5, 2: 3.4}
    olds = {t.number: t for t in old.get_trials()}
    for t in trials:  # same values and parameters; no paths of the other study
        assert t.value == olds[t.user_attrs["imported_number"]].value
        assert t.params == olds[t.user_attrs["imported_number"]].params
        assert "checkpoint" not in t.user_attrs and "trial_dir" not in t.user_attrs
    # counted toward nothing, never the best, never a checkpoint to keep or delete
    assert finished_and_running(trials) == (0, 0)
    assert state_counts(trials)["COMPLETE"] == 0
    assert best_complete(trials, new.direction) is None
    assert checkpoints_to_delete(trials, 3, new.direction) == []
    assert new.user_attrs["hpo_warm_start"]["imported"] == 13


def test_the_sampler_learns_from_the_imported_trials(tmp_path):
    """TPE's first suggestions after a warm start lie near the earlier study's best region; a cold
    study's (same seed) are its random start-up samples."""
    url = f"sqlite:///{tmp_path / 'hpo.db'}"
    _earlier(tmp_path, url)
    create_study(small_spec(tmp_path, name="new", rows=40, warm_start={"study": "old"}), storage=url)
    create_study(small_spec(tmp_path, name="cold", rows=40), storage=url)

    def first_lrs(name: str) -> list[float]:
        study = storage.load(name, url)
        spec = storage.spec_of(study)
        study.sampler = space.sampler(spec.sampler, spec.seed, len(study.get_trials()), spec.space)
        return [space.suggest(study.ask(), spec.space)["learning_rate"] for _ in range(6)]

    def distance(lrs):
        return sum(abs(math.log10(lr) - math.log10(GOOD_LR)) for lr in lrs) / len(lrs)

    warm, cold = first_lrs("new"), first_lrs("cold")
    assert warm != cold
    assert distance(warm) < 0.35 < distance(cold), (warm, cold)


def test_drop_keeps_what_fits_and_says_what_it_dropped(tmp_path):
    url = f"sqlite:///{tmp_path / 'hpo.db'}"
    _earlier(tmp_path, url)
    spec = small_spec(
        tmp_path,
        name="new",
        rows=40,
        warm_start={"study": "old", "on_mismatch": "drop"},
        space={"dropout": 0.1, "learning_rate": {"type": "float", "low": 1e-3, "high": 1e-2, "log": True}},
    )
    create_study(spec, storage=url)
    new = storage.load("new", url)
    trials = new.get_trials()
    assert trials and all("dropout" not in t.params for t in trials)
    assert all(1e-3 <= t.params["learning_rate"] <= 1e-2 for t in trials)
    record = new.user_attrs["hpo_warm_start"]
    assert record["dropped_params"] == {"dropout": len(trials)}
    assert record["left_out_count"] == 13 - len(trials) > 0
    assert "outside the new range" in record["left_out"][0]


def test_a_warm_start_storage_url_is_stored_without_its_password(tmp_path):
    url = f"sqlite:///{tmp_path / 'hpo.db'}"
    _earlier(tmp_path, url)
    create_study(
        small_spec(tmp_path, name="new", rows=40, warm_start={"study": "old", "storage": url}), storage=url
    )
    stored = storage.spec_of(storage.load("new", url))
    assert stored.warm_start is not None and stored.warm_start.storage == storage.mask(url)


# ---------------------------------------------------------------- the real stack


@pytest.mark.e2e
def test_warm_started_study_runs_its_own_trials_and_exports_only_them(tmp_path, tiny_model):
    url = f"sqlite:///{tmp_path / 'hpo.db'}"
    old = small_spec(tmp_path, name="old", rows=160, space={"epochs": 1})
    assert run_cli("study", "create", str(old), "--storage", url, cwd=tmp_path).returncode == 0
    r = run_cli("run", "--study", "old", "--trials", "1", "--storage", url, cwd=tmp_path, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    finished_old = [
        t for t in optuna.load_study(study_name="old", storage=url).get_trials() if t.state.is_finished()
    ]
    finished_old = [t for t in finished_old if t.state != TrialState.FAIL]

    new = small_spec(tmp_path, name="new", rows=160, space={"epochs": 1}, warm_start={"study": "old"})
    r = run_cli("study", "create", str(new), "--storage", url, cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"imported {len(finished_old)} finished trial(s) of study 'old'" in r.stdout
    r = run_cli("run", "--study", "new", "--trials", "2", "--storage", url, cwd=tmp_path, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    trials = optuna.load_study(study_name="new", storage=url).get_trials()
    imported = [t for t in trials if t.user_attrs.get("imported") == "old"]
    own = [t for t in trials if not t.user_attrs.get("imported")]
    assert len(imported) == len(finished_old) and imported[0].number == 0
    assert sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in own) == 2, [t.state for t in own]
    assert "2/2 finished" in r.stdout

    r = run_cli("export", "--study", "new", "--out", str(tmp_path / "best"), "--storage", url, cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"exported trial {imported[0].number} " not in r.stdout
    r = run_cli(
        "export", "--study", "new", "--trial", str(imported[0].number), "--out", str(tmp_path / "imp"),
        "--storage", url, cwd=tmp_path,
    )  # fmt: skip
    assert (
        r.returncode == 2 and "was imported from study 'old'" in r.stderr and "no checkpoint here" in r.stderr
    )
    assert not (tmp_path / "imp").exists()
