"""Whether and which trial the bridge (``hpo/searcher.py``) starts next: the study's counts toward
the target, a trial asked past the target closed FAIL, the time budget's check, Optuna's next
trial of the run's kind (search trial or confirm run) and the attributes a started trial carries.

Storage reads and writes on plain arguments; no Ray. The bridge keeps the state (its counts'
cache, ``budget_note``) and calls these from ``suggest``.
"""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from hpo import budget
from hpo.bookkeeping import counted, finished_and_running
from hpo.recovery import requeue
from hpo.spec import StudySpec
from hpo.storage import ENQUEUED_ATTR
from hpo.summary import CONFIRM_ATTR, is_confirm

ALIVE = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)


def counts(study: optuna.Study, confirm: bool) -> tuple[int, int]:
    """(finished, running) trials of the whole study, of the run's kind (``confirm``)."""
    return finished_and_running(study.get_trials(deepcopy=False, states=ALIVE), confirm)


def over_target(study: optuna.Study, trial: optuna.trial.Trial, target: int, confirm: bool) -> bool:
    """Whether another run took the last slots of the target between our count and our ask.
    Then the trial just asked is not needed: it is closed as FAIL (and never trained)."""
    trials = counted(study.get_trials(deepcopy=False, states=ALIVE))
    rank = sum(t.number <= trial.number for t in trials if is_confirm(t) == confirm)
    if rank <= target:
        return False
    trial.set_user_attr("fail_reason", "not needed: other runs hold the last trials of the target")
    study.tell(trial, state=TrialState.FAIL)
    return True


def budget_refusal(study: optuna.Study, deadline: float, first_rung: float) -> str | None:
    """None when a new trial can reach its first rung before ``deadline`` at the study's pace (its
    finished trials'); else why it cannot (the run's summary shows it as ``budget_note``)."""
    left = deadline - time.time()
    pace = budget.measured_pace(budget.pace_samples(study.get_trials(deepcopy=False)))
    if budget.can_start(left, first_rung, pace):
        return None
    need = f" (~{budget.describe(pace.seconds_for(first_rung))})" if pace else ""
    return (
        f"started no trial in the last {budget.describe(max(left, 0))} of the budget: a new trial "
        f"needs longer{need} to reach its first evaluation at {first_rung:g} epochs, at the "
        f"pace of this study's finished trials"
    )


def ask(study: optuna.Study, spec: StudySpec, confirm: bool) -> optuna.trial.Trial | None:
    """Optuna's next trial (queued ones first) of this run's kind. A queued trial of the other
    kind is closed FAIL: a confirm run left by a dead `hpo confirm` (it runs it again), or a
    search trial asked by `hpo confirm` (re-queued for `hpo run`)."""
    for _ in range(1000):
        trial = study.ask()
        if bool(trial.user_attrs.get(CONFIRM_ATTR)) == confirm:
            return trial
        reason = "asked by `hpo confirm`: re-queued" if confirm else "a confirm run left queued"
        trial.set_user_attr("fail_reason", reason)
        study.tell(trial, state=TrialState.FAIL)
        if confirm:
            queued = {**trial.user_attrs.get(ENQUEUED_ATTR, {}), **trial.params}
            requeue(
                study,
                trial.number,
                queued,
                spec,
                None,
                trial.user_attrs.get("resume_checkpoint"),
            )
            return None
    return None


def confirm_queued(study: optuna.Study) -> bool:
    """Whether a confirm run waits in the queue."""
    waiting = study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
    return any(t.user_attrs.get(CONFIRM_ATTR) for t in waiting)


def mark_started(trial: optuna.trial.Trial, trial_id: str, run_id: str, folder: Path) -> dict[str, Any]:
    """Record on ``trial`` the Ray trial id, run, folder, host and pid it starts with, and the
    checkpoint it resumes from (an interrupted trial re-queued with one): the attributes set."""
    attrs = {
        "ray_trial_id": trial_id,
        "hpo_run": run_id,
        "trial_dir": str(folder),
        "host": socket.gethostname(),
        "pid": os.getpid(),
    }
    resume = trial.user_attrs.get("resume_checkpoint")  # set when an interrupted trial was re-queued
    if resume and Path(resume).is_dir():
        attrs["resumed_from"] = resume
    for key, value in attrs.items():
        trial.set_user_attr(key, value)
    return attrs
