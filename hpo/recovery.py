"""Recovery of trials whose run died: a RUNNING trial whose driver is gone from this host, whose
heartbeat stopped (any host), or that no run ever claimed is failed with ``fail_reason:
interrupted`` and its parameters re-queued with its best checkpoint, so the next run resumes it.
Safe with several runs on one storage. No Ray: ``hpo run`` recovers before it starts Ray."""

from __future__ import annotations

import datetime
import os
import socket
from typing import Any

import optuna
from optuna.trial import TrialState

from hpo import storage as storage_mod
from hpo.spec import StudySpec
from hpo.storage import ENQUEUED_ATTR


def requeue(
    study: optuna.Study, number: int, params: dict[str, Any], spec: StudySpec, trial_dir: str | None = None
) -> None:
    """Put an interrupted trial's searched parameters back in the queue, with its best checkpoint
    (found through the trial folder's BEST pointer, which moves atomically)."""
    from hpo.checkpoint import best_checkpoint

    searched = {k: v for k, v in params.items() if k in spec.space.searched()}
    if not searched:  # it never drew any: a new trial samples afresh, nothing to put back
        return
    attrs: dict[str, Any] = {"requeued_from": number}
    checkpoint = best_checkpoint(trial_dir) if trial_dir else None
    if checkpoint is not None:
        attrs["resume_checkpoint"] = str(checkpoint)
    storage_mod.enqueue(study, searched, **attrs)


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
    running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    dead = set(_dead_here(running, running_here)) | set(_orphans(running))
    recovered = []
    for frozen in (t for t in running if t.number in dead):
        trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, frozen.number)
        try:
            storage.set_trial_user_attr(trial_id, "fail_reason", "interrupted")
            if not storage.set_trial_state_values(trial_id, TrialState.FAIL):
                continue
        except optuna.exceptions.UpdateFinishedTrialError:
            continue  # another run recovered it first
        recovered.append(frozen)
    # any host: heartbeats older than the grace period (Optuna fails them; it has no reason to note)
    recovered += storage_mod.fail_stale(study)
    for frozen in recovered:
        # killed before its parameters were written: the ones it was enqueued with, if any
        params = frozen.params or dict(frozen.user_attrs.get(ENQUEUED_ATTR) or {})
        requeue(study, frozen.number, params, spec, frozen.user_attrs.get("trial_dir"))
    return sorted(t.number for t in recovered)


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
    out = []
    for t in running:
        pid = t.user_attrs.get("pid")
        if (
            t.user_attrs.get("host") == host
            and isinstance(pid, int)
            and (not this_process_alive if pid == os.getpid() else not _alive(pid))
        ):
            out.append(t.number)
    return out


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
