"""Study summaries from stored trials (pure functions of Optuna's frozen trials)."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import Any

from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

STATES = ("COMPLETE", "PRUNED", "FAIL", "RUNNING", "WAITING")
#: The user attribute of a trial copied from an earlier study (``warm_start``): its name.
IMPORTED_ATTR = "imported"
#: The study user attribute saying what ``warm_start`` imported at creation.
WARM_START_ATTR = "hpo_warm_start"


def is_imported(trial: FrozenTrial) -> bool:
    """Whether ``trial`` was copied from an earlier study as history (``warm_start``)."""
    return bool(trial.user_attrs.get(IMPORTED_ATTR))


#: User attributes of a trial run by ``hpo confirm``: the tag, the trial whose configuration it
#: retrains, and its seed. Confirm runs are not search trials: they count toward no target and are
#: never "the best trial" (``hpo/confirmed.py`` aggregates them).
CONFIRM_ATTR, CONFIRM_OF_ATTR, CONFIRM_SEED_ATTR = "confirm", "confirm_of", "confirm_seed"


def is_confirm(trial: FrozenTrial) -> bool:
    """Whether ``trial`` is a confirm run (``hpo confirm``), not a search trial."""
    return bool(trial.user_attrs.get(CONFIRM_ATTR))


def first_value(trial: FrozenTrial) -> float | None:
    """The trial's value on the first objective (``trial.value`` refuses a multi-objective trial)."""
    return float(trial.values[0]) if trial.values else None


def complete_values(trials: list[FrozenTrial], n: int) -> dict[int, list[float]]:
    """The finite values of the COMPLETE search trials that have all ``n`` of them, by number."""
    out = {}
    for t in trials:
        ok = t.state == TrialState.COMPLETE and not is_confirm(t) and t.values and len(t.values) == n
        if ok and all(math.isfinite(v) for v in t.values):
            out[t.number] = [float(v) for v in t.values]
    return out


def pareto(trials: list[FrozenTrial], directions: Sequence[str]) -> list[FrozenTrial]:
    """The COMPLETE search trials on the Pareto front of the study's objectives, by number."""
    from hpo.objectives import pareto_front

    front = set(pareto_front(complete_values(trials, len(directions)), directions))
    return [t for t in trials if t.number in front]


def state_counts(trials: list[FrozenTrial]) -> dict[str, int]:
    """The study's own trials by state name, every state present (zeros included); imported
    trials (``warm_start``) are left out: ``imported_count`` counts them."""
    counts: dict[str, int] = {}
    for t in trials:
        if is_imported(t):
            continue
        counts[t.state.name] = counts.get(t.state.name, 0) + 1
    return all_states(counts)


def all_states(counts: dict[str, int]) -> dict[str, int]:
    """``counts`` by state name with every state present, in ``STATES`` order (zeros included)."""
    return {**dict.fromkeys(STATES, 0), **counts}


def imported_count(trials: list[FrozenTrial]) -> int:
    """How many of ``trials`` were imported from an earlier study."""
    return sum(is_imported(t) for t in trials)


def best_complete(trials: list[FrozenTrial], direction: StudyDirection) -> FrozenTrial | None:
    """The study's own best COMPLETE search trial on the first objective (ties: the earlier one), or
    None. Imported trials are never the best (trained elsewhere, no checkpoint here); confirm runs
    are left out."""
    done = [
        t
        for t in trials
        if t.state == TrialState.COMPLETE
        and not is_imported(t)
        and not is_confirm(t)
        and (v := first_value(t)) is not None
        and math.isfinite(v)
    ]
    if not done:
        return None
    sign = 1 if direction == StudyDirection.MINIMIZE else -1
    return min(done, key=lambda t: (sign * float(first_value(t) or 0.0), t.number))


def checkpoint_kept(trial: FrozenTrial) -> bool:
    """Whether the trial's best checkpoint is still on disk (here)."""
    path = trial.user_attrs.get("checkpoint")
    return isinstance(path, str) and os.path.isdir(path)


def trial_row(t: FrozenTrial) -> dict[str, Any]:
    """One trial as plain values (for tables and ``--json``)."""
    duration = (
        (t.datetime_complete - t.datetime_start).total_seconds()
        if t.datetime_complete and t.datetime_start
        else None
    )
    return {
        "number": t.number,
        "state": t.state.name,
        "value": first_value(t),
        "values": t.values,
        "params": t.params,
        "epoch": t.user_attrs.get("epoch"),
        "duration_s": duration,
        "checkpoint_kept": checkpoint_kept(t),
        "error": t.user_attrs.get("error_message") or t.user_attrs.get("fail_reason"),
        "confirm_of": t.user_attrs.get(CONFIRM_OF_ATTR) if is_confirm(t) else None,
    }


def summarize(study, storage_url: str, counts: dict[str, int], best: FrozenTrial | None) -> dict[str, Any]:
    """Everything ``hpo study show`` prints, as plain values, from the study's ``counts`` by state
    and its ``best`` COMPLETE trial."""
    out: dict[str, Any] = {
        "study": study.study_name,
        "storage": storage_url,
        "direction": study.directions[0].name.lower(),
        "counts": all_states(counts),
        "disk_peak_mb": study.user_attrs.get("disk_peak_mb"),
        "warm_start": study.user_attrs.get(WARM_START_ATTR),
        "best": None,
    }
    if best is not None:
        out["best"] = {
            "trial": best.number,
            "value": first_value(best),
            "params": best.params,
            "epoch": best.user_attrs.get("best_epoch"),
            "checkpoint": best.user_attrs.get("checkpoint"),
            "checkpoint_kept": checkpoint_kept(best),
        }
        if isinstance(best.user_attrs.get("generated_metrics"), dict):  # evaluation.generate
            out["best"]["generated"] = best.user_attrs["generated_metrics"]
            out["best"]["generate_s"] = best.user_attrs.get("generate_s")
    return out
