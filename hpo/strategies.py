"""Search strategies for the replay simulator (``hpo/replay.py``), each built from the code a live
run uses: Optuna's samplers through ask/tell with hpo's own ``space.suggest``, Ray Tune's
schedulers (``hpo/schedulers.py``: ASHA, PASHA) and Ray Tune's ``OptunaSearch`` through their
public hooks, Optuna's pruners through ``trial.report`` / ``should_prune``, and syne-tune's
model-based multi-fidelity schedulers (optional: ``pip install -e .[search]``) through the hooks
its ``Tuner`` calls.

A sampler proposes a point of the spec's space; the simulator snaps it to the nearest recorded
configuration not yet tried in the run (``Snap``) and the trial follows that row's curve, while
the sampler is told the values at the point it proposed. Snapping, rather than a categorical over
the table's rows, keeps the sampler's model on the real space (TPE learns where good learning
rates are; over opaque row ids it could not).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from datetime import datetime
from typing import Any

import numpy as np
import optuna
from optuna.trial import TrialState

from hpo import space
from hpo.bookkeeping import eval_step, final_state
from hpo.curves import Table
from hpo.params import CategoricalParam, FloatParam, IntParam
from hpo.spec import SpaceSpec, StudySpec

optuna.logging.set_verbosity(optuna.logging.WARNING)


class Snap:
    """The nearest table row to a point of the space, among the rows this run has not tried yet:
    categoricals must match (else the nearest among all of them), numbers are compared on [0, 1]
    (log scale where the space says log). One per simulated run."""

    def __init__(self, table: Table, sp: SpaceSpec):
        self._searched = sp.searched()
        self._num = [n for n, p in self._searched.items() if not isinstance(p, CategoricalParam)]
        self._cat = [n for n, p in self._searched.items() if isinstance(p, CategoricalParam)]
        self._x = np.array([self._point(c.params) for c in table.curves]) if self._num else None
        self._keys = [tuple(c.params.get(n) for n in self._cat) for c in table.curves]
        self._used: set[int] = set()

    def _point(self, params: dict[str, Any]) -> list[float]:
        out = []
        for n in self._num:
            p = self._searched[n]
            assert isinstance(p, (FloatParam, IntParam))
            f = math.log if p.log else float
            out.append((f(params[n]) - f(p.low)) / max(f(p.high) - f(p.low), 1e-12))
        return out

    def __call__(self, params: dict[str, Any]) -> int:
        """The nearest row not yet tried in this run (a live run would not train the same
        configuration twice; a sampler's small moves near its incumbent reach the neighbours)."""
        if len(self._used) == len(self._keys):
            self._used.clear()  # every row tried: start over
        free = [i for i in range(len(self._keys)) if i not in self._used]
        key = tuple(params.get(n) for n in self._cat)
        same = [i for i in free if self._keys[i] == key] or free
        if self._x is None:
            row = same[0]
        else:
            d = ((self._x[same] - np.array(self._point(params))) ** 2).sum(axis=1)
            row = same[int(np.argmin(d))]
        self._used.add(row)
        return row


class OptunaStrategy:
    """Configurations from an Optuna sampler (ask/tell with ``space.suggest``), decisions from a
    Ray Tune scheduler (``decide``), an Optuna pruner, or neither; trials end in the study as the
    bridge ends them (``bookkeeping.final_state``: COMPLETE with the best value, or PRUNED)."""

    def __init__(
        self,
        table: Table,
        spec: StudySpec,
        sampler: optuna.samplers.BaseSampler,
        pruner: optuna.pruners.BasePruner | None = None,
        scheduler: Any = None,
        step_of: Callable[[int, float], int] | None = None,
    ):
        self._table, self._spec, self._snap = table, spec, Snap(table, spec.space)
        self.study = optuna.create_study(
            direction="minimize" if table.minimize else "maximize", sampler=sampler, pruner=pruner
        )
        self._pruner, self._scheduler = pruner, scheduler
        self._step_of = step_of or (lambda i, epoch: eval_step(epoch, spec.training.eval_every))
        self._live: dict[str, tuple[optuna.trial.Trial, int, list[float], Any]] = {}
        self._last: dict[str, dict[str, Any]] = {}
        if scheduler is not None:
            scheduler.set_search_properties(
                table.header.get("metric", "eval_loss"), "min" if table.minimize else "max"
            )

    def ask(self, key: str) -> int:
        trial = self.study.ask()
        row = self._snap(space.suggest(trial, self._spec.space))
        handle = _ray_trial(key) if self._scheduler is not None else None
        if handle is not None:
            self._scheduler.on_trial_add(None, handle)
        self._live[key] = (trial, row, [], handle)
        return row

    def report(self, key: str, index: int, epoch: float, value: float) -> bool:
        trial, _, seen, handle = self._live[key]
        seen.append(value)
        trial.report(value, self._step_of(index, epoch))
        if handle is not None:
            result = _result(self._table, index, epoch, value)
            self._last[key] = result
            return self._scheduler.on_trial_result(None, handle, result) == "CONTINUE"
        return not (self._pruner is not None and trial.should_prune())

    def finish(self, key: str, stopped: bool) -> None:
        trial, _, seen, handle = self._live.pop(key)
        last, capped = self._last.pop(key, None), False
        if handle is not None:
            capped = bool(getattr(self._scheduler, "reached_cap", lambda _: False)(key))
            # Tune's stop_trial: a RUNNING trial's end (STOP or its own) goes to on_trial_complete
            self._scheduler.on_trial_complete(None, handle, last)
        last = {"epoch": 0.0, "budget_done": not stopped}
        state = final_state(last, False, math.inf, True, capped) if stopped else TrialState.COMPLETE
        best = min(seen) if self._table.minimize else max(seen)
        self.study.tell(trial, best if state == TrialState.COMPLETE else None, state=state)


class PeerStrategy:
    """The peers' configuration: Ray Tune's ``OptunaSearch`` (TPE) picks the configurations and
    records them; Ray's ASHA counts evaluations (``training_iteration``)."""

    def __init__(self, table: Table, spec: StudySpec, seed: int, scheduler: Any):
        from ray.tune.search.optuna import OptunaSearch

        self._table, self._snap, self._scheduler = table, Snap(table, spec.space), scheduler
        mode = "min" if table.minimize else "max"
        metric = table.header.get("metric", "eval_loss")
        self._search = OptunaSearch(
            space=space.distributions(spec.space),
            metric=metric,
            mode=mode,
            sampler=optuna.samplers.TPESampler(seed=seed),
        )
        scheduler.set_search_properties(metric, mode)
        self._live: dict[str, tuple[Any, dict]] = {}

    def ask(self, key: str) -> int:
        config = self._search.suggest(key) or {}
        handle = _ray_trial(key)
        self._scheduler.on_trial_add(None, handle)
        self._live[key] = (handle, {})
        return self._snap(config)

    def report(self, key: str, index: int, epoch: float, value: float) -> bool:
        handle, _ = self._live[key]
        result = _result(self._table, index, epoch, value)
        self._live[key] = (handle, result)
        decision = self._scheduler.on_trial_result(None, handle, result)
        if decision == "CONTINUE":
            self._search.on_trial_result(key, result)
        return decision == "CONTINUE"

    def finish(self, key: str, stopped: bool) -> None:
        handle, result = self._live.pop(key)
        self._scheduler.on_trial_complete(None, handle, result)  # as Tune's stop_trial does
        self._search.on_trial_complete(key, result)  # Tune hands the last result (a STOP's too)


class SyneTuneStrategy:
    """A syne-tune scheduler (``syne_tune.optimizer.baselines``: ``ASHACQR``, ``BOHB``) driven as
    syne-tune's ``Tuner`` drives it: ``suggest`` -> ``on_trial_add`` -> ``on_trial_result`` at
    every evaluation; a STOP ends the trial with ``on_trial_remove``, a trial that ran its curve
    with ``on_trial_complete`` and its last result. Stopping mode, as hpo stops trials; the
    scheduler learns from the configuration it proposed (the trial follows the snapped row).

    Args:
        table: the learning curves.
        spec: the study spec whose space is searched and whose ASHA settings (``time_attr`` epoch,
            grace period, reduction factor, max_t) the scheduler takes.
        seed: the scheduler's ``random_seed`` (its ASHA also draws brackets from numpy's global
            generator, as Ray's does: seed that too).
        method: ``"cqr"`` (``ASHACQR``: conformal quantile regression on each trial's last value)
            or ``"bohb"`` (``BOHB``: ASHA with a KDE searcher).

    Raises:
        ImportError: syne-tune is not installed (``pip install -e .[search]``).
    """

    METHODS = ("cqr", "bohb")

    def __init__(self, table: Table, spec: StudySpec, seed: int, method: str = "cqr"):
        from syne_tune.optimizer import baselines

        from hpo.cqr import syne_space

        if method not in self.METHODS:
            raise ValueError(f"method={method!r}: use one of {', '.join(self.METHODS)}")
        logging.getLogger("syne_tune").setLevel(logging.ERROR)  # a warning per scheduler built
        cls = baselines.ASHACQR if method == "cqr" else baselines.BOHB
        self._table, self._snap = table, Snap(table, spec.space)
        self._metric = table.header.get("metric", "eval_loss")
        self._scheduler = cls(
            config_space=syne_space(space.distributions(spec.space)),
            metric=self._metric,
            do_minimize=table.minimize,
            time_attr="epoch",
            max_t=spec.asha_max_t(),
            grace_period=spec.schedule.grace_period,  # type: ignore[union-attr]
            reduction_factor=spec.schedule.reduction_factor,  # type: ignore[union-attr]
            random_seed=seed,
        )
        self._live: dict[str, tuple[Any, dict[str, Any], str]] = {}

    def ask(self, key: str) -> int:
        from syne_tune.backend.trial_status import Trial

        suggestion = self._scheduler.suggest()
        trial = Trial(trial_id=int(key), config=suggestion.config, creation_time=datetime.now())
        self._scheduler.on_trial_add(trial)
        self._live[key] = (trial, {}, "CONTINUE")
        return self._snap(suggestion.config)

    def report(self, key: str, index: int, epoch: float, value: float) -> bool:
        trial, _, _ = self._live[key]
        result = {self._metric: value, "epoch": epoch}
        decision = self._scheduler.on_trial_result(trial, result)
        self._live[key] = (trial, result, decision)
        return decision == "CONTINUE"

    def finish(self, key: str, stopped: bool) -> None:
        trial, result, decision = self._live.pop(key)
        if decision == "STOP":  # the Tuner: a scheduler's STOP is removed, not completed
            self._scheduler.on_trial_remove(trial)
        else:
            self._scheduler.on_trial_complete(trial, result)


def _result(table: Table, index: int, epoch: float, value: float) -> dict[str, Any]:
    """What a trial reports to Tune at an evaluation (the keys the schedulers read)."""
    return {table.header.get("metric", "eval_loss"): value, "epoch": epoch, "training_iteration": index + 1}


def _ray_trial(key: str):
    """A Ray Tune ``Trial`` (public ``ray.tune.experiment.Trial``, stub: never run) for the
    scheduler's hooks."""
    from ray.tune.experiment import Trial

    return Trial("replay", config={}, trial_id=key, stub=True)
