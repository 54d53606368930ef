"""The replay simulator: a search strategy run over a learning-curve table (``hpo/curves.py``) as
if live, in simulated time, in seconds instead of hours.

``W`` asynchronous workers each run one trial at a time; a trial's configuration is the table row
the strategy picks, and its segments (start -> first evaluation -> second ...) take the seconds the
table recorded. At each evaluation the strategy decides, exactly as in a run, whether the trial
goes on; a worker whose trial ended asks the strategy for the next one at once. The run ends at the
first evaluation after the compute spent (trial-seconds over all workers, the running segments'
elapsed parts included) reaches the budget, or when the best value seen is within ``stop_within``
of the table's best.

Pure: the strategies (``hpo/strategies.py``) bring the real samplers and schedulers.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field
from typing import Protocol

from hpo.curves import Table


class Strategy(Protocol):
    """What the simulator asks of a search strategy (one instance per simulated run)."""

    def ask(self, key: str) -> int:
        """Start trial ``key``: the index of its table row."""
        ...

    def report(self, key: str, index: int, epoch: float, value: float) -> bool:
        """Trial ``key``'s ``index``-th evaluation, at ``epoch``, gave ``value``: go on?"""
        ...

    def finish(self, key: str, stopped: bool) -> None:
        """Trial ``key`` ended: stopped by the strategy, or ran its whole curve."""
        ...


@dataclass
class Trace:
    """A simulated run: after each evaluation, (compute s, wall s, best value so far, the row
    holding it); and each trial's end: (row, evaluations run, the strategy's last decision)."""

    compute: list[float] = field(default_factory=list)
    wall: list[float] = field(default_factory=list)
    best: list[float] = field(default_factory=list)
    best_row: list[int] = field(default_factory=list)
    ends: list[tuple[int, int, bool]] = field(default_factory=list)
    trials: int = 0
    stopped: int = 0

    def reach(self, target: float, minimize: bool = True) -> tuple[float, float]:
        """(compute, wall) when the best value first came within ``target`` (inf: never)."""
        for c, w, b in zip(self.compute, self.wall, self.best, strict=True):
            if (b <= target) if minimize else (b >= target):
                return c, w
        return float("inf"), float("inf")

    def reach_chosen(self, full: list[float], target: float, minimize: bool = True) -> tuple[float, float]:
        """(compute, wall) when the configuration holding the best value so far first had a
        full-budget value (``full[row]``: its whole curve's best) within ``target``: what a user
        gets by training the run's pick to its budget (PASHA's pick may not have got there)."""
        for c, w, r in zip(self.compute, self.wall, self.best_row, strict=True):
            if r >= 0 and ((full[r] <= target) if minimize else (full[r] >= target)):
                return c, w
        return float("inf"), float("inf")


def target_of(best: float, within: float, minimize: bool = True) -> float:
    """The value within ``within`` (a fraction, 0.01 = 1%) of ``best``."""
    return best + abs(best) * within if minimize else best - abs(best) * within


def compute_floor(table: Table, target: float, workers: int) -> float:
    """The least compute (trial-seconds) any strategy can spend reaching ``target`` with
    ``workers`` workers: ``workers`` x the seconds the fastest row takes to get there from its
    start. The simulator keeps every worker busy from time 0 (a worker whose trial ended starts the
    next at once), so when the first trial reaches the target at wall time T, the compute is
    ``workers`` x T, and T is at least that row's seconds. inf when no row reaches it."""
    minimize, fastest = table.minimize, float("inf")
    for c in table.curves:
        spent = 0.0
        for value, seconds in zip(c.values, c.seconds, strict=True):
            spent += seconds
            if (value <= target) if minimize else (value >= target):
                fastest = min(fastest, spent)
                break
    return workers * fastest


def replay(
    table: Table,
    strategy: Strategy,
    workers: int,
    budget_s: float,
    stop_within: float = 0.0,
    max_trials: int | None = None,
) -> Trace:
    """Run ``strategy`` over ``table`` with ``workers`` asynchronous workers.

    Args:
        table: the learning curves.
        strategy: decides which rows to try and when to stop a trial.
        workers: trials running at once.
        budget_s: compute (trial-seconds) at which the run ends.
        stop_within: end once the best value is within this fraction of the table's best (0: only
            at the exact best).
        max_trials: start no more trials than this (None: no limit).
    """
    minimize = table.minimize
    stop_at = target_of(table.best(), stop_within, minimize)
    trace, running = Trace(), {}  # running: key -> (row, index, segment start)
    events: list[tuple[float, int, str]] = []
    done_s, best, best_row, seq = 0.0, float("inf") if minimize else -float("inf"), -1, 0

    def start(now: float) -> None:
        nonlocal seq
        if max_trials is not None and trace.trials >= max_trials:
            return
        key = str(trace.trials)
        trace.trials += 1
        row = strategy.ask(key)
        _push(events, now + table.curves[row].seconds[0], seq, key)
        running[key], seq = (row, 0, now), seq + 1

    for _ in range(workers):
        start(0.0)
    while events:
        now, _, key = heapq.heappop(events)
        row, index, began = running.pop(key)
        curve = table.curves[row]
        done_s += now - began
        value = curve.values[index]
        if (value < best) if minimize else (value > best):
            best, best_row = value, row
        compute = done_s + sum(now - b for _, _, b in running.values())
        trace.compute.append(compute)
        trace.wall.append(now)
        trace.best.append(best)
        trace.best_row.append(best_row)
        if ((best <= stop_at) if minimize else (best >= stop_at)) or compute >= budget_s:
            break
        go_on = strategy.report(key, index, curve.epochs[index], value)
        if go_on and index + 1 < len(curve.values):
            _push(events, now + curve.seconds[index + 1], seq, key)
            running[key], seq = (row, index + 1, now), seq + 1
            continue
        stopped = index + 1 < len(curve.values) or not curve.complete  # else: it trained its budget
        strategy.finish(key, stopped=stopped)
        trace.stopped += stopped
        trace.ends.append((row, index + 1, go_on))
        start(now)
    return trace


def _push(events: list, when: float, seq: int, key: str) -> None:
    heapq.heappush(events, (when, seq, key))
