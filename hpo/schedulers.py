"""The spec's ``schedule`` as a Ray Tune scheduler: ``asha`` (Ray's ASHAScheduler), ``pasha``
(Ray's ASHA with PASHA's progressive cap, ``hpo/pasha.py``) or ``none`` (FIFO). Both ``hpo run``
(``hpo/runner.py``) and the replay simulator (``hpo/replay.py``) build their scheduler here, so a
replay drives exactly the scheduler a run uses.
"""

from __future__ import annotations

from typing import Any

from ray.tune.schedulers import AsyncHyperBandScheduler, FIFOScheduler, TrialScheduler

from hpo.pasha import Pasha
from hpo.spec import StudySpec


class PashaScheduler(AsyncHyperBandScheduler):
    """Ray Tune's (stopping) ASHA whose maximum budget starts at its second rung and grows one
    level each time the top two levels rank their trials differently (``hpo.pasha.Pasha``).

    A trial that reaches the current cap is stopped there; ``reached_cap(trial_id)`` tells the
    bridge it ran the budget PASHA gave it (COMPLETE, not PRUNED).

    Args:
        time_attr: the result's budget key (hpo: ``epoch``).
        max_t: the largest budget (the spec's ASHA max_t).
        grace_period: the first rung.
        reduction_factor: ASHA's reduction factor (also the ladder of levels).
        levels: the rungs then ``max_t`` (``StudySpec.asha_rungs() + [max_t]``).
    """

    def __init__(
        self, time_attr: str, max_t: float, grace_period: float, reduction_factor: float, levels: list[float]
    ):
        super().__init__(  # Ray annotates int budgets; it computes with floats (hpo's epochs)
            time_attr=time_attr,
            max_t=max_t,  # type: ignore[arg-type]
            grace_period=grace_period,  # type: ignore[arg-type]
            reduction_factor=reduction_factor,
        )
        self.pasha = Pasha(list(levels))
        self._max_budget = float(max_t)
        self._time, self._sign = time_attr, 1.0
        self._metric_name: str | None = None
        self._capped: set[str] = set()

    def set_search_properties(self, metric: str | None, mode: str | None, **spec: Any) -> bool:
        ok = super().set_search_properties(metric, mode, **spec)
        if metric:
            self._metric_name = metric
        if mode:
            self._sign = 1.0 if mode == "min" else -1.0
        return ok

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        action = super().on_trial_result(tune_controller, trial, result)
        if self._metric_name is None or self._time not in result or self._metric_name not in result:
            return action
        budget = float(result[self._time])
        self.pasha.record(trial.trial_id, budget, self._sign * float(result[self._metric_name]))
        if budget >= self.pasha.cap - 1e-9 and budget < self._max_budget - 1e-9:
            self._capped.add(trial.trial_id)  # it ran the budget PASHA gives for now: done, whatever
            return TrialScheduler.STOP  # ASHA's rung there says (no trial goes on to compare it)
        return action

    def reached_cap(self, trial_id: str) -> bool:
        """Whether PASHA stopped this trial because it reached the cap (it ran its budget)."""
        return trial_id in self._capped

    def debug_string(self) -> str:
        return f"PASHA cap {self.pasha.cap} (epsilon {self.pasha.epsilon:.4g}); " + super().debug_string()


def build(spec: StudySpec) -> FIFOScheduler:
    """The Ray Tune scheduler of ``spec.schedule`` (``asha``, ``pasha`` or ``none``)."""
    kind = spec.schedule.type
    if kind == "none":
        return FIFOScheduler()
    args = dict(
        time_attr="epoch",
        max_t=spec.asha_max_t(),
        grace_period=spec.schedule.grace_period,  # type: ignore[union-attr]
        reduction_factor=spec.schedule.reduction_factor,  # type: ignore[union-attr]
    )
    if kind == "pasha":
        return PashaScheduler(**args, levels=[*spec.asha_rungs(), spec.asha_max_t()])  # type: ignore[arg-type]
    return AsyncHyperBandScheduler(**args)  # type: ignore[arg-type]
