"""Spec search space -> Optuna distributions and a define-by-run sampling function (pure logic)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from hpo.spec import CategoricalParam, FloatParam, IntParam, SpaceSpec

if TYPE_CHECKING:
    import optuna
    from optuna.distributions import BaseDistribution


def distributions(space: SpaceSpec) -> dict[str, BaseDistribution]:
    """The Optuna distribution of every searched parameter, by name (fixed ones are left out)."""
    from optuna.distributions import (
        CategoricalDistribution,
        FloatDistribution,
        IntDistribution,
    )

    out: dict[str, BaseDistribution] = {}
    for name, p in space.searched().items():
        if isinstance(p, FloatParam):
            out[name] = FloatDistribution(p.low, p.high, log=p.log)
        elif isinstance(p, IntParam):
            out[name] = IntDistribution(p.low, p.high, log=p.log)
        elif isinstance(p, CategoricalParam):
            out[name] = CategoricalDistribution(tuple(p.choices))
    return out


def suggest(trial: optuna.trial.BaseTrial, space: SpaceSpec) -> dict[str, Any]:
    """Sample every searched parameter on ``trial`` and return all five (fixed ones included)."""
    params: dict[str, Any] = dict(space.fixed())
    for name, p in space.searched().items():
        if isinstance(p, FloatParam):
            params[name] = trial.suggest_float(name, p.low, p.high, log=p.log)
        elif isinstance(p, IntParam):
            params[name] = trial.suggest_int(name, p.low, p.high, log=p.log)
        else:
            params[name] = trial.suggest_categorical(name, p.choices)
    return params


def complete(params: dict[str, Any], space: SpaceSpec) -> dict[str, Any]:
    """A stored trial's full hyperparameters: its sampled ``params`` plus the fixed ones."""
    return {**space.fixed(), **params}


def sampler(name: str, seed: int, n_existing: int = 0) -> optuna.samplers.BaseSampler:
    """The Optuna sampler named in the spec. The seed is offset by the trials already in the
    study, so a resumed run does not replay the first run's random start-up samples."""
    import optuna

    table = {
        "tpe": lambda s: optuna.samplers.TPESampler(seed=s, constant_liar=True, n_startup_trials=8),
        "random": lambda s: optuna.samplers.RandomSampler(seed=s),
    }
    return table[name](seed + n_existing)
