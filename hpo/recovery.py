"""Recovery of trials whose run died: a RUNNING trial whose driver is gone from this host, whose
heartbeat stopped (any host), or that no run ever claimed is failed with ``fail_reason:
interrupted`` and its parameters re-queued with its best checkpoint, so the next run resumes it.
Safe with several runs on one storage. No Ray: ``hpo run`` recovers before it starts Ray."""

from __future__ import annotations

import datetime
import os
import socket
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from hpo import storage as storage_mod
from hpo.spec import StudySpec
from hpo.storage import ENQUEUED_ATTR
from hpo.summary import is_confirm


def requeue(
    study: optuna.Study,
    number: int,
    params: dict[str, Any],
    spec: StudySpec,
    trial_dir: str | None = None,
    resumed: str | None = None,
) -> None:
    """Put an interrupted trial's searched parameters back in the queue, with its latest checkpoint:
    its own best (found through the trial folder's BEST pointer, which moves atomically), else the
    one it was itself to resume from (``resumed``: it was re-queued, and interrupted again before
    it wrote a checkpoint of its own, or even before it claimed a folder)."""
    from hpo.checkpoint import best_checkpoint

    searched = {k: v for k, v in params.items() if k in spec.space.searched()}
    if not searched:  # it never drew any: a new trial samples afresh, nothing to put back
        return
    attrs: dict[str, Any] = {"requeued_from": number}
    checkpoint = best_checkpoint(trial_dir) if trial_dir else None
    if checkpoint is None and resumed and Path(resumed).is_dir():
        checkpoint = Path(resumed)
    if checkpoint is not None:
        attrs["resume_checkpoint"] = str(checkpoint)
    storage_mod.enqueue(study, searched, **attrs)


REQUEUER_ATTR = "requeued_by"

#: A RUNNING trial that no run ever claimed (a driver died between creating it and writing its
#: host and pid, a window of a few storage writes) is an orphan once it is this old.
ORPHAN_S = 30.0


def recover_stale(study: optuna.Study, spec: StudySpec, running_here: bool = False) -> list[int]:
    """Fail the RUNNING trials whose run died and re-queue their parameters; returns their numbers.

    A run is dead when its driver process on this host is gone, or (any host) when its heartbeat
    is older than the grace period; a trial no run claimed is an orphan after ``ORPHAN_S``. Safe
    with several runs on one storage: a trial another run recovers first is skipped.
    ``running_here``: the caller is a live run re-checking (its own process's trials are alive);
    otherwise trials of this very process are leftovers of an earlier run in it (a notebook).
    """
    storage = storage_mod.backend(study)
    study_id = storage_mod.study_id(study)
    trials = study.get_trials(deepcopy=False)
    running = [t for t in trials if t.state == TrialState.RUNNING]
    dead = set(_dead_here(running, running_here)) | set(_orphans(running))
    # failed as interrupted by a run that died before it re-queued them (a window of a few writes)
    recovered = _unqueued(trials, set(spec.space.searched()), running_here)
    for frozen in (t for t in running if t.number in dead):
        trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, frozen.number)
        try:
            storage.set_trial_user_attr(trial_id, "fail_reason", "interrupted")
            storage.set_trial_user_attr(trial_id, REQUEUER_ATTR, _this_process())
            if not storage.set_trial_state_values(trial_id, TrialState.FAIL):
                continue
        except optuna.exceptions.UpdateFinishedTrialError:
            continue  # another run recovered it first
        recovered.append(frozen)
    # any host: heartbeats older than the grace period (Optuna fails them; it has no reason to note)
    recovered += storage_mod.fail_stale(study)
    for frozen in recovered:
        attrs = frozen.user_attrs
        if is_confirm(frozen):  # a confirm run is not re-queued: `hpo confirm` again runs what is missing
            continue
        requeue(
            study, frozen.number, _drawn(frozen), spec, attrs.get("trial_dir"), attrs.get("resume_checkpoint")
        )
    return sorted(t.number for t in recovered)


def _drawn(trial) -> dict[str, Any]:
    """A trial's parameters: those it was enqueued with (if any), and those it wrote. A trial killed
    while it wrote them (one storage write each) has written only some: the rest are the queued ones
    (a re-queued trial), or are sampled afresh when it is re-queued (a new trial: it never trained)."""
    return {**(trial.user_attrs.get(ENQUEUED_ATTR) or {}), **trial.params}


def _unqueued(trials: list, searched: set[str], this_process_alive: bool = False) -> list:
    """The trials failed as interrupted whose searched parameters no trial was re-queued with,
    because the process that failed them died before it re-queued them: on this host, that process
    is gone (or is this one, unless ``this_process_alive``); on another, the failure is older
    than the storage's grace period."""
    requeued = {t.user_attrs.get("requeued_from") for t in trials}
    now = datetime.datetime.now()  # Optuna stamps trials with naive local time
    out = []
    for t in trials:
        by = t.user_attrs.get(REQUEUER_ATTR)
        if (
            t.state != TrialState.FAIL
            or not isinstance(by, dict)
            or t.number in requeued
            or is_confirm(t)
            or not searched.intersection(_drawn(t))
        ):
            continue
        if by.get("host") == socket.gethostname():
            gone = _gone(by.get("pid"), this_process_alive)
        else:
            gone = (
                t.datetime_complete is not None
                and (now - t.datetime_complete).total_seconds() > storage_mod.GRACE_S
            )
        if gone:
            out.append(t)
    return out


def _this_process() -> dict[str, Any]:
    return {"host": socket.gethostname(), "pid": os.getpid()}


def _orphans(running: list) -> list[int]:
    """Numbers of the RUNNING trials that no run claimed (no ``pid``), created more than
    ``ORPHAN_S`` ago."""
    now = datetime.datetime.now()  # Optuna stamps trials with naive local time
    return [
        t.number
        for t in running
        if "pid" not in t.user_attrs
        and t.datetime_start is not None
        and (now - t.datetime_start).total_seconds() > ORPHAN_S
    ]


def _dead_here(running: list, this_process_alive: bool = False) -> list[int]:
    """Numbers of the RUNNING trials started by a process of this host that no longer exists (or by
    this process, unless ``this_process_alive``: its trials are then its own live ones)."""
    host = socket.gethostname()
    return [
        t.number
        for t in running
        if t.user_attrs.get("host") == host and _gone(t.user_attrs.get("pid"), this_process_alive)
    ]


def _gone(pid: Any, this_process_alive: bool) -> bool:
    """Whether the process ``pid`` of this host no longer runs (this process counts as gone
    unless ``this_process_alive``: its own earlier run's leftovers)."""
    if not isinstance(pid, int):
        return False
    return not this_process_alive if pid == os.getpid() else not _alive(pid)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
