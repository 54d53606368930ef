"""Spec search space -> Optuna distributions, sampling on a real Optuna trial, the sampler table."""

from __future__ import annotations

import importlib.util

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from hpo import space
from hpo.spec import SEARCHABLE, SpaceSpec

SPACE = SpaceSpec.model_validate(
    {
        "learning_rate": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True},
        "batch_size": {"type": "categorical", "choices": [8, 16, 32]},
        "epochs": {"type": "int", "low": 1, "high": 3},
        "dropout": 0.1,
        "weight_decay": {"type": "float", "low": 0.0, "high": 0.1},
    }
)


def test_distributions_of_searched_parameters_only():
    d = space.distributions(SPACE)
    assert d == {
        "learning_rate": FloatDistribution(1e-4, 1e-2, log=True),
        "batch_size": CategoricalDistribution((8, 16, 32)),
        "epochs": IntDistribution(1, 3),
        "weight_decay": FloatDistribution(0.0, 0.1),
    }


def test_all_fixed_space_has_no_distributions():
    assert space.distributions(SpaceSpec()) == {}


def test_suggest_on_a_real_trial_returns_all_five_in_range():
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    for _ in range(20):
        trial = study.ask()
        params = space.suggest(trial, SPACE)
        assert set(params) == set(SEARCHABLE)
        assert 1e-4 <= params["learning_rate"] <= 1e-2
        assert params["batch_size"] in (8, 16, 32) and isinstance(params["batch_size"], int)
        assert params["epochs"] in (1, 2, 3) and isinstance(params["epochs"], int)
        assert params["dropout"] == 0.1
        assert 0.0 <= params["weight_decay"] <= 0.1
        # only searched parameters are Optuna params; fixed ones are not stored on the trial
        assert set(trial.params) == {"learning_rate", "batch_size", "epochs", "weight_decay"}
        study.tell(trial, params["learning_rate"])


def test_suggest_agrees_with_distributions():
    study = optuna.create_study()
    trial = study.ask()
    space.suggest(trial, SPACE)
    assert study.trials[0].distributions == space.distributions(SPACE)


def test_complete_adds_fixed_to_sampled():
    assert space.complete({"learning_rate": 0.001}, SPACE) == {
        "learning_rate": 0.001,
        "dropout": 0.1,
    }
    full = space.complete({"learning_rate": 0.001}, SpaceSpec(batch_size=8))
    assert full["batch_size"] == 8 and full["learning_rate"] == 0.001 and set(full) == set(SEARCHABLE)


@pytest.mark.parametrize(
    ("name", "cls"),
    [
        ("tpe", optuna.samplers.TPESampler),
        ("random", optuna.samplers.RandomSampler),
        ("grid", optuna.samplers.GridSampler),
        ("cmaes", optuna.samplers.CmaEsSampler),
        ("gp", optuna.samplers.GPSampler),
    ],
)
def test_sampler_table(name, cls):
    assert isinstance(space.sampler(name, seed=0, space=GRID_SPACE), cls)


GRID_SPACE = SpaceSpec.model_validate(
    {
        "batch_size": {"type": "categorical", "choices": [8, 16]},
        "epochs": {"type": "int", "low": 1, "high": 2},
        "lr_scheduler": {"type": "categorical", "choices": ["linear", "cosine"]},
    }
)
# every sampler on a space with floats, ints and categoricals (grid: its finite space)
MIXED = SpaceSpec.model_validate(
    {
        "learning_rate": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True},
        "dropout": {"type": "float", "low": 0.0, "high": 0.2},
        "epochs": {"type": "int", "low": 1, "high": 3},
        "warmup_ratio": {"type": "float", "low": 0.0, "high": 0.2},
        "lr_scheduler": {"type": "categorical", "choices": ["linear", "cosine", "constant_with_warmup"]},
    }
)


def _four_trials(name: str, sp: SpaceSpec, seed: int = 0) -> list[dict]:
    """A 4-trial study driven by the named sampler through space.suggest (a made-up objective)."""
    study = optuna.create_study(sampler=space.sampler(name, seed, space=sp))
    out = []
    for _ in range(4):
        trial = study.ask()
        params = space.suggest(trial, sp)
        study.tell(trial, float(sum(hash(str(v)) % 97 for v in params.values())))
        out.append(params)
    return out


@pytest.mark.parametrize("name", ["tpe", "random", "grid", "cmaes", "gp"])
def test_each_sampler_runs_a_four_trial_study_seeded(name):
    sp = GRID_SPACE if name == "grid" else MIXED
    first = _four_trials(name, sp)
    assert first == _four_trials(name, sp)  # seeded: the same four configurations again
    for params in first:
        assert set(sp.searched()) <= set(params) and params["lr_scheduler"] in sp.lr_scheduler.choices
    if name == "grid":  # four distinct points of the 2 x 2 x 2 grid
        assert len({tuple(sorted(p.items())) for p in first}) == 4
        assert all(p["batch_size"] in (8, 16) and p["epochs"] in (1, 2) for p in first)
    else:
        assert _four_trials(name, sp, seed=1) != first


def test_grid_is_every_value_of_every_searched_parameter():
    assert space.grid(GRID_SPACE) == {
        "batch_size": [8, 16],
        "epochs": [1, 2],
        "lr_scheduler": ["linear", "cosine"],
    }
    with pytest.raises(ValueError, match="learning_rate is a float range"):
        space.grid(SPACE)
    with pytest.raises(ValueError, match="needs the search space"):
        space.sampler("grid", 0)


def test_training_options_are_searched_like_the_rest():
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    params = space.suggest(study.ask(), MIXED)
    assert 0.0 <= params["warmup_ratio"] <= 0.2 and isinstance(params["lr_scheduler"], str)
    assert "label_smoothing" not in params  # not in the space: training fixes it


def test_sampler_seed_is_offset_by_existing_trials():
    def first_lr(n_existing: int) -> float:
        study = optuna.create_study(sampler=space.sampler("random", 0, n_existing))
        return space.suggest(study.ask(), SPACE)["learning_rate"]

    assert first_lr(0) == first_lr(0)  # seeded: reproducible
    assert first_lr(0) != first_lr(5)  # a resumed run does not replay the first run's samples


def test_every_sampler_the_spec_allows_is_in_the_table():
    from hpo.spec import SAMPLERS, StudySpec

    assert StudySpec.model_fields["sampler"].annotation.__args__ == SAMPLERS
    for name in SAMPLERS:
        if name == "cqr" and importlib.util.find_spec("syne_tune") is None:
            continue  # the optional search extra (tests/test_cqr.py)
        assert isinstance(space.sampler(name, 0, space=GRID_SPACE), optuna.samplers.BaseSampler)
