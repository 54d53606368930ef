"""``sampler: cqr``: syne-tune's conformalized quantile regression searcher (Salinas et al., "Optimizing
hyperparameters with conformal quantile regression", ICML 2023) as an Optuna sampler, so a live run
keeps its storage as the source of truth and its ASHA as the scheduler.

The method is syne-tune's ``ASHACQR`` searcher (``LastValueMultiFidelitySearcher`` around
``ConformalQuantileRegression``): every trial that has reported an evaluation counts with its
*last* value, whatever rung it reached (a trial stopped at the first rung counts with its loss
there, which is high, so the model learns to avoid its region); below ``n_startup`` such trials
the configurations are random; each time another trial has reported, a fresh quantile-regression
model (gradient-boosted, conformalized once there are 32 trials) is fitted, and each suggestion
is the best of 2,000 random candidates under one random quantile per candidate (Thompson-like).
Here the observations are read from the study, not fed by a scheduler, so a resumed run, or
another machine sharing the study, sees every evaluation. The replay (``scripts/bench --search``,
``asha+cqr``) measured it on the recorded learning curves (docs/search.md).

Optional: ``pip install -e .[search]`` (syne-tune, scikit-learn, pandas).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import optuna
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)
from optuna.search_space import IntersectionSearchSpace
from optuna.trial import FrozenTrial, TrialState

logger = logging.getLogger(__name__)

N_STARTUP = 5  # syne-tune's num_init_random_draws: trials with a result before the model is used
_OBSERVED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)


def last_values(trials: Sequence[FrozenTrial], minimize: bool) -> list[tuple[int, dict[str, Any], float]]:
    """Each trial's ``(number, params, last reported value)``, as minimised (a maximised study's
    values negated): the value at its highest intermediate step, or its final value when it
    reported none (an imported trial). Trials with nothing reported, failed and waiting ones are
    left out, as are non-finite values.
    """
    out = []
    for t in trials:
        if t.state not in _OBSERVED:
            continue
        if t.intermediate_values:
            value = t.intermediate_values[max(t.intermediate_values)]
        elif t.value is not None:
            value = t.value
        else:
            continue
        if not math.isfinite(value):
            continue
        out.append((t.number, dict(t.params), float(value) if minimize else -float(value)))
    return out


def modelled(search_space: dict[str, BaseDistribution]) -> dict[str, BaseDistribution]:
    """The distributions the model handles: floats without a step, integers with step 1, any
    categorical (the rest are sampled independently)."""
    return {
        name: d
        for name, d in search_space.items()
        if (isinstance(d, FloatDistribution) and d.step is None)
        or (isinstance(d, IntDistribution) and d.step == 1)
        or isinstance(d, CategoricalDistribution)
    }


class CQRSampler(optuna.samplers.BaseSampler):
    """Conformalized quantile regression over each trial's last reported value (see the module).

    Args:
        seed: seeds the random start-up configurations and each fitted model.
        n_startup: trials with a reported value before the model proposes.

    Raises:
        ImportError: syne-tune is not installed (``pip install -e .[search]``).
    """

    def __init__(self, seed: int | None = None, n_startup: int = N_STARTUP):
        from syne_tune.optimizer.schedulers.searchers.conformal import (
            conformal_quantile_regression_searcher as cqr,
        )

        logging.getLogger("syne_tune").setLevel(logging.WARNING)
        self._cls = cqr.ConformalQuantileRegression
        self._rng = np.random.RandomState(seed)
        self._random = optuna.samplers.RandomSampler(seed=seed)
        self._n_startup = n_startup
        self._space = IntersectionSearchSpace(include_pruned=True)
        self._searcher: Any = None
        self._fitted_on: tuple[int, tuple[str, ...]] = (0, ())

    def reseed_rng(self) -> None:
        self._rng = np.random.RandomState()
        self._random.reseed_rng()

    def infer_relative_search_space(
        self, study: optuna.Study, trial: FrozenTrial
    ) -> dict[str, BaseDistribution]:
        return modelled(self._space.calculate(study))

    def sample_relative(
        self, study: optuna.Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        if not search_space:
            return {}
        minimize = study.direction == optuna.study.StudyDirection.MINIMIZE
        seen = [
            o
            for o in last_values(study.get_trials(deepcopy=False), minimize)
            if set(search_space) <= set(o[1])
        ]
        if len(seen) < self._n_startup:
            return {}
        key = (len(seen), tuple(sorted(search_space)))
        if key != self._fitted_on:  # syne-tune refits when a trial is new (never (0, ()) here)
            self._searcher = self._fit(search_space, seen)
            self._fitted_on = key
        config = self._searcher.suggest()
        logger.debug("trial %d proposed by the model of %d trials' last values", trial.number, len(seen))
        return {name: _external(search_space[name], config[name]) for name in search_space}

    def sample_independent(
        self,
        study: optuna.Study,
        trial: FrozenTrial,
        param_name: str,
        param_distribution: BaseDistribution,
    ) -> Any:
        return self._random.sample_independent(study, trial, param_name, param_distribution)

    def _fit(
        self, search_space: dict[str, BaseDistribution], seen: list[tuple[int, dict[str, Any], float]]
    ) -> Any:
        """A fresh syne-tune CQR searcher told every trial's last value (it fits on its first
        ``suggest``)."""
        searcher = self._cls(
            config_space=syne_space(search_space), random_seed=int(self._rng.randint(0, 2**31 - 1))
        )
        for number, params, value in seen:
            config = {name: params[name] for name in search_space}
            searcher.on_trial_complete(trial_id=number, config=config, metric=value)
        return searcher


def syne_space(search_space: dict[str, BaseDistribution]) -> dict[str, Any]:
    """Optuna distributions (as ``modelled`` keeps them) as a syne-tune config space."""
    from syne_tune import config_space as cs

    out: dict[str, Any] = {}
    for name, d in search_space.items():
        if isinstance(d, FloatDistribution):
            out[name] = (cs.loguniform if d.log else cs.uniform)(d.low, d.high)
        elif isinstance(d, IntDistribution):
            out[name] = (cs.lograndint if d.log else cs.randint)(d.low, d.high)
        else:
            assert isinstance(d, CategoricalDistribution)
            out[name] = cs.choice(list(d.choices))
    return out


def _external(d: BaseDistribution, value: Any) -> Any:
    """A syne-tune value as the distribution's own type, inside its bounds."""
    if isinstance(d, FloatDistribution):
        return min(max(float(value), d.low), d.high)
    if isinstance(d, IntDistribution):
        return min(max(int(round(value)), d.low), d.high)
    assert isinstance(d, CategoricalDistribution)
    for choice in d.choices:  # the stored choice itself (numpy scalars compare equal)
        if choice == value:
            return choice
    raise ValueError(f"syne-tune proposed {value!r}, not one of {d.choices}")
