"""``hpo confirm``'s decisions on plain values: which configurations to retrain, with which new
seeds, which (configuration, seed) runs are still missing, and each configuration's mean ± std over
its confirm runs. A confirm run is a trial tagged ``confirm`` whose ``confirm_of`` is the search
trial it retrains (``hpo/summary.py``). Pure: unit-tested in tests/test_confirmed.py."""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from optuna.trial import FrozenTrial, TrialState

from hpo.summary import CONFIRM_OF_ATTR, CONFIRM_SEED_ATTR, first_value, is_confirm, pareto


@dataclass
class Confirmed:
    """One configuration's confirm runs: the mean and (sample) std of each objective over them."""

    source: int  # the search trial whose configuration was retrained
    runs: list[int] = field(default_factory=list)  # the confirm runs' trial numbers (COMPLETE ones)
    seeds: list[int] = field(default_factory=list)
    mean: list[float] = field(default_factory=list)  # per objective
    std: list[float] = field(default_factory=list)
    source_values: list[float] | None = None  # what the search trial itself scored


def sign(direction: str) -> int:
    """+1 for an objective minimized, -1 for one maximized (compare ``sign * value``)."""
    return 1 if direction == "minimize" else -1


def sources(trials: Sequence[FrozenTrial], directions: Sequence[str], top: int) -> list[FrozenTrial]:
    """The search trials whose configurations ``hpo confirm --top`` retrains: the ``top`` best
    COMPLETE ones by the first objective (several objectives: of the Pareto front), one per
    configuration (a repeated configuration keeps its best trial)."""
    if len(directions) > 1:
        pool = pareto(list(trials), list(directions))
    else:
        pool = [t for t in trials if t.state == TrialState.COMPLETE and not is_confirm(t)]
        pool = [t for t in pool if (v := first_value(t)) is not None and math.isfinite(v)]
    s = sign(directions[0])
    out: list[FrozenTrial] = []
    seen: list[dict] = []
    for t in sorted(pool, key=lambda t: (s * float(first_value(t) or 0.0), t.number)):
        if t.params not in seen:
            seen.append(t.params)
            out.append(t)
    return out[:top]


def new_seeds(source_seed: int, n: int) -> list[int]:
    """``n`` seeds a configuration has not trained with: the ones after its own, in order (the same
    on every call, so a second ``hpo confirm`` finds the runs it already has)."""
    return [source_seed + 1 + i for i in range(n)]


def missing(trials: Sequence[FrozenTrial], plan: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
    """The (source trial, seed) runs of ``plan`` with no confirm run COMPLETE, RUNNING or WAITING."""
    alive = (TrialState.COMPLETE, TrialState.RUNNING, TrialState.WAITING)
    have = {
        (t.user_attrs.get(CONFIRM_OF_ATTR), t.user_attrs.get(CONFIRM_SEED_ATTR))
        for t in trials
        if is_confirm(t) and t.state in alive
    }
    return [p for p in plan if p not in have]


def aggregate(trials: Sequence[FrozenTrial], directions: Sequence[str]) -> list[Confirmed]:
    """Each confirmed configuration's mean ± std, best mean on the first objective first."""
    by_number = {t.number: t for t in trials}
    groups: dict[int, Confirmed] = {}
    values: dict[int, list[list[float]]] = {}
    for t in trials:
        if not (is_confirm(t) and t.state == TrialState.COMPLETE and t.values):
            continue
        source = int(t.user_attrs[CONFIRM_OF_ATTR])
        c = groups.setdefault(source, Confirmed(source))
        c.runs.append(t.number)
        c.seeds.append(int(t.user_attrs.get(CONFIRM_SEED_ATTR, -1)))
        values.setdefault(source, []).append([float(v) for v in t.values])
    for source, c in groups.items():
        columns = list(zip(*values[source], strict=True))
        c.mean = [statistics.fmean(col) for col in columns]
        c.std = [statistics.stdev(col) if len(col) > 1 else 0.0 for col in columns]
        origin = by_number.get(source)
        c.source_values = list(origin.values) if origin is not None and origin.values else None
    s = sign(directions[0])
    return sorted(groups.values(), key=lambda c: (s * c.mean[0], c.source))


def preferred(trials: Sequence[FrozenTrial], directions: Sequence[str]) -> Confirmed | None:
    """The configuration with the best confirmed mean (one objective only), or None."""
    if len(directions) > 1:
        return None
    confirmed = aggregate(trials, directions)
    return confirmed[0] if confirmed else None


def export_run(
    trials: Sequence[FrozenTrial], c: Confirmed, direction: str, kept: Callable[[FrozenTrial], bool]
) -> FrozenTrial | None:
    """Which run of configuration ``c`` to export: the best on the first objective among its search
    trial and its confirm runs whose checkpoint is still ``kept``."""
    runs = [t for t in trials if (t.number == c.source or t.number in c.runs) and kept(t)]
    done = [t for t in runs if t.state == TrialState.COMPLETE and first_value(t) is not None]
    s = sign(direction)
    return min(done, key=lambda t: (s * float(first_value(t) or 0.0), t.number)) if done else None
