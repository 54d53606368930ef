"""Study summaries from stored trials (pure functions of Optuna's frozen trials)."""

from __future__ import annotations

import math
import os
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
    """The study's own best COMPLETE trial (ties: the earlier one), or None. Imported trials are
    never the best: they were trained elsewhere and have no checkpoint here."""
    done = [
        t
        for t in trials
        if t.state == TrialState.COMPLETE
        and t.value is not None
        and math.isfinite(t.value)
        and not is_imported(t)
    ]
    if not done:
        return None
    sign = 1 if direction == StudyDirection.MINIMIZE else -1
    return min(done, key=lambda t: (sign * float(t.value or 0.0), t.number))


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
        "value": t.value,
        "params": t.params,
        "epoch": t.user_attrs.get("epoch"),
        "duration_s": duration,
        "checkpoint_kept": checkpoint_kept(t),
        "error": t.user_attrs.get("error_message") or t.user_attrs.get("fail_reason"),
    }


def summarize(study, storage_url: str, counts: dict[str, int], best: FrozenTrial | None) -> dict[str, Any]:
    """Everything ``hpo study show`` prints, as plain values, from the study's ``counts`` by state
    and its ``best`` COMPLETE trial."""
    out: dict[str, Any] = {
        "study": study.study_name,
        "storage": storage_url,
        "direction": study.direction.name.lower(),
        "counts": all_states(counts),
        "disk_peak_mb": study.user_attrs.get("disk_peak_mb"),
        "warm_start": study.user_attrs.get(WARM_START_ATTR),
        "best": None,
    }
    if best is not None:
        out["best"] = {
            "trial": best.number,
            "value": best.value,
            "params": best.params,
            "epoch": best.user_attrs.get("best_epoch"),
            "checkpoint": best.user_attrs.get("checkpoint"),
            "checkpoint_kept": checkpoint_kept(best),
        }
        if isinstance(best.user_attrs.get("generated_metrics"), dict):  # evaluation.generate
            out["best"]["generated"] = best.user_attrs["generated_metrics"]
            out["best"]["generate_s"] = best.user_attrs.get("generate_s")
    return out
