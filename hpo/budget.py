"""Time budgets: ``hpo run --time-budget 2h`` and the spec's ``budget: {hours: 2}``.

Pure decisions on plain values (no Ray, no storage), unit tested with hand-picked numbers
(tests/test_budget.py):

* ``parse_duration``: ``90m``, ``2h``, ``3600s``, ``1.5h`` -> seconds;
* ``measured_pace``: the study's own pace (seconds per epoch of training and evaluation, and the
  start-up seconds of a trial) from its finished trials;
* ``can_start``: whether a new trial can reach its first rung (its first evaluation without
  ASHA) in the seconds left. The runner's searcher asks it before each new trial; at the deadline
  the running trials are stopped and re-queued (``hpo/searcher.py``).
"""

from __future__ import annotations

import math
import re
import statistics
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

_DURATION = re.compile(r"\s*([0-9]*\.?[0-9]+)\s*(s|sec|m|min|h|hr|d)?\s*", re.IGNORECASE)
_UNIT_S = {"s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "hr": 3600, "d": 86400}

#: The trial target of a run with a time budget and no ``--trials``: the budget alone ends it.
NO_TARGET = 10**9

#: A trial may be started when its first rung is due this much before the deadline (the pace
#: of one trial varies with its batch size and the machine's load).
SLACK = 1.2


def parse_duration(text: str) -> float:
    """Seconds in a duration such as ``90m``, ``2h``, ``3600s``, ``1.5h`` (a bare number is seconds).

    Raises:
        ValueError: not a positive duration (the message says what is accepted).
    """
    m = _DURATION.fullmatch(str(text))
    seconds = float(m.group(1)) * _UNIT_S[(m.group(2) or "s").lower()] if m else -1.0
    if not m or not math.isfinite(seconds) or seconds <= 0:
        raise ValueError(f"{text!r} is not a positive duration; give one like 90m, 2h or 3600s")
    return seconds


def describe(seconds: float) -> str:
    """A duration as people write it: ``45s``, ``12m``, ``1h30m``."""
    s = max(0, round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s" if s % 60 else f"{s // 60}m"
    return f"{s // 3600}h{(s % 3600) // 60:02d}m"


@dataclass(frozen=True)
class Pace:
    """A study's measured pace: seconds per epoch of a trial's work (training and evaluation),
    and seconds a trial spends before its first step (process, model and data loading)."""

    s_per_epoch: float
    startup_s: float
    trials: int  # how many finished trials it was measured on

    def seconds_for(self, epochs: float) -> float:
        """Seconds a fresh trial needs to train ``epochs`` epochs."""
        return self.startup_s + epochs * self.s_per_epoch


def measured_pace(samples: Iterable[tuple[float, float, float]]) -> Pace | None:
    """The pace from finished trials' ``(epochs trained, seconds of work, wall seconds)``: seconds
    per epoch over all of them together, start-up the median of wall minus work. None when no
    trial trained a measurable amount (the budget then lets trials start: nothing says otherwise).

    >>> measured_pace([(1.0, 30.0, 40.0), (0.5, 20.0, 26.0)])
    Pace(s_per_epoch=33.333333333333336, startup_s=8.0, trials=2)
    """
    good = [(e, w, wall) for e, w, wall in samples if e > 0 and w > 0 and math.isfinite(e * w)]
    if not good:
        return None
    per_epoch = sum(w for _, w, _ in good) / sum(e for e, _, _ in good)
    startup = statistics.median(max(0.0, wall - w) for _, w, wall in good)
    return Pace(per_epoch, startup, len(good))


def can_start(left_s: float, epochs: float, pace: Pace | None, slack: float = SLACK) -> bool:
    """Whether a new trial can reach ``epochs`` (its first rung or evaluation) in ``left_s`` seconds
    at ``pace`` with ``slack`` to spare. No pace yet: yes while any time is left.

    >>> can_start(100.0, 0.5, Pace(100.0, 10.0, 3))  # needs (10 + 50) * 1.2 = 72 s
    True
    >>> can_start(70.0, 0.5, Pace(100.0, 10.0, 3))
    False
    """
    if left_s <= 0:
        return False
    if pace is None:
        return True
    return pace.seconds_for(epochs) * slack <= left_s


def first_rung(rungs: list[float], max_t: float, eval_every: float) -> float:
    """Epochs a fresh trial must train before it yields a number the search can use: ASHA's first
    rung (or max_t when there are no rungs) with ASHA, else its first evaluation.

    >>> first_rung([0.25, 0.5], 2.0, 0.25), first_rung([], 2.0, 0.5)
    (0.25, 0.5)
    """
    if rungs:
        return rungs[0]
    return min(eval_every, max_t) if eval_every > 0 else max_t


def pace_samples(trials: Iterable[Any]) -> list[tuple[float, float, float]]:
    """``(epochs, work seconds, wall seconds)`` of each finished trial that says so: COMPLETE or
    PRUNED, not resumed from a checkpoint (its epochs include ones trained by another run) and not
    imported from another study. ``trials`` are Optuna frozen trials (read by attribute only)."""
    out = []
    for t in trials:
        a = t.user_attrs
        if t.state.name not in ("COMPLETE", "PRUNED") or a.get("resumed_from") or a.get("imported"):
            continue
        epochs, work = a.get("epoch"), a.get("trial_s")
        if not isinstance(epochs, int | float) or not isinstance(work, int | float):
            continue
        wall = (
            (t.datetime_complete - t.datetime_start).total_seconds()
            if t.datetime_complete and t.datetime_start
            else float(work)
        )
        out.append((float(epochs), float(work), wall))
    return out


def run_lines(s: Any) -> list[str]:
    """What a run's time budget bought, from its ``runner.RunSummary``: trials finished in it, the
    best value, the time used, why no more trial started, and the trials its deadline stopped."""
    c = s.counts
    bought = c["COMPLETE"] + c["PRUNED"] - s.finished_before
    best = f"; best so far {s.best_value:.4f} (trial {s.best_trial})" if s.best_trial is not None else ""
    used = f"time budget {describe(s.budget_s)}: used {describe(s.wall_s)}"
    lines = [f"{used}, {bought} trial(s) finished in it{best}"]
    if s.budget_note:
        lines.append(f"budget: {s.budget_note}")
    if s.budget_stopped:
        lines.append(
            f"budget: stopped trial(s) {', '.join(map(str, s.budget_stopped))} at the deadline "
            "(FAIL budget, checkpoints kept, re-queued); rerun to resume them"
        )
    return lines
