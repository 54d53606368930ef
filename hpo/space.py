"""Spec search space -> Optuna distributions and a define-by-run sampling function (pure logic)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from hpo.params import CategoricalParam, FloatParam, IntParam, SpaceSpec

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
    """Sample every searched parameter on ``trial``; returns them with the fixed ones."""
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


def grid(space: SpaceSpec) -> dict[str, list[Any]]:
    """The grid of every searched parameter: a categorical's choices, each integer of an int range.

    Raises:
        ValueError: a float parameter is searched (the spec check refuses that for ``grid``).
    """
    out: dict[str, list[Any]] = {}
    for name, p in space.searched().items():
        if isinstance(p, CategoricalParam):
            out[name] = list(p.choices)
        elif isinstance(p, IntParam):
            out[name] = list(range(p.low, p.high + 1))
        else:
            raise ValueError(f"grid sampler: {name} is a float range; give it as categorical choices")
    return out


def sampler(
    name: str, seed: int, n_existing: int = 0, space: SpaceSpec | None = None
) -> optuna.samplers.BaseSampler:
    """The Optuna sampler named in the spec, seeded. The seed is offset by the trials already in
    the study, so a resumed run does not replay the first run's random start-up samples.

    Args:
        name: one of ``hpo.spec.SAMPLERS``.
        seed: the study's seed.
        n_existing: trials already in the study.
        space: the search space; ``grid`` needs it (its grid is every combination).

    Raises:
        ValueError: ``grid`` without a space.
    """
    import optuna

    s = seed + n_existing
    if name == "grid":
        if space is None:
            raise ValueError("the grid sampler needs the search space: pass space=")
        return optuna.samplers.GridSampler(grid(space), seed=s)  # type: ignore[arg-type]
    table = {
        "tpe": lambda: optuna.samplers.TPESampler(seed=s, constant_liar=True, n_startup_trials=8),
        "random": lambda: optuna.samplers.RandomSampler(seed=s),
        # CMA-ES samples floats and ints jointly; categoricals fall back to independent random sampling
        "cmaes": lambda: optuna.samplers.CmaEsSampler(seed=s, warn_independent_sampling=False),
        "gp": lambda: optuna.samplers.GPSampler(seed=s),  # needs torch and scipy
        "nsga2": lambda: optuna.samplers.NSGAIISampler(seed=s),  # one objective or several
        "cqr": lambda: _cqr(s),  # the search extra (syne-tune)
    }
    return table[name]()


def _cqr(seed: int) -> optuna.samplers.BaseSampler:
    from hpo.cqr import CQRSampler

    return CQRSampler(seed=seed)
