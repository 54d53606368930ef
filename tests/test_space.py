"""Spec search space -> Optuna distributions, sampling on a real Optuna trial, the sampler table."""

from __future__ import annotations

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
    ("name", "cls"), [("tpe", optuna.samplers.TPESampler), ("random", optuna.samplers.RandomSampler)]
)
def test_sampler_table(name, cls):
    assert isinstance(space.sampler(name, seed=0), cls)


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
        assert isinstance(space.sampler(name, 0), optuna.samplers.BaseSampler)
