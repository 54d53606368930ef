"""The Optuna <-> Ray Tune bridge: every Ray trial is an Optuna trial in the storage, live.

Ray Tune's own ``OptunaSearch`` records an ASHA-stopped trial as COMPLETE with its low-fidelity
value, sets no user attributes and leaves RUNNING rows behind after a crash. This searcher:

* asks Optuna for each trial's parameters (so enqueued and re-queued trials come first) and
  records the trial RUNNING with its Ray trial id, run id and checkpoint folder;
* writes every evaluation as an intermediate value (step = evaluation index on the epoch grid);
* ends it COMPLETE (value = its best objective), PRUNED when the scheduler stopped it before its
  budget (with the epoch reached), or FAIL with the error class and message;
* keeps heartbeats for its live trials so another process can tell a dead run's trials apart;
* stops asking once the study holds ``target`` finished trials, counting the RUNNING trials of
  every process, so several ``hpo run`` processes on one storage split the target.

The decisions (final state, which checkpoints to delete) are pure functions at the bottom.
"""

from __future__ import annotations

import datetime
import json
import logging
import math
import os
import shutil
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState
from ray.tune.search import Searcher

from hpo import placement, space
from hpo import storage as storage_mod
from hpo.spec import StudySpec
from hpo.storage import ENQUEUED_ATTR, HEARTBEAT_S

log = logging.getLogger(__name__)

ERROR_FILE = "error.json"
BUDGET_DONE = "budget_done"  # set by the trial on its last report: it trained all its epochs


@dataclass
class Event:
    """Something that happened to a trial, for progress display."""

    kind: str  # start | complete | pruned | fail | interrupted
    number: int
    params: dict[str, Any]
    value: float | None = None
    epoch: float | None = None
    message: str = ""


class OptunaBridge(Searcher):
    """A Ray Tune searcher that samples with, and records everything in, an Optuna study.

    Args:
        study: the Optuna study (its storage should record heartbeats).
        spec: the study's spec.
        target: finished (COMPLETE + PRUNED) trials at which the study is done.
        make_config: builds the trainable's config from (trial number, params, trial folder).
        trials_dir: where trial folders (checkpoints, error files) go.
        run_id: this run's id, recorded on its trials.
        on_event: called with each ``Event`` (progress display); optional.
        max_failures: consecutive failures after which the run stops asking for trials.
        threads: (file the trials poll, CPUs per trial, trial slots) when every trial runs on
            this machine: at the tail of the study the running trials are told to use the idle
            slots' cores (``placement.tail_threads``); None: trials keep their CPUs.
    """

    def __init__(
        self,
        study: optuna.Study,
        spec: StudySpec,
        target: int,
        make_config: Callable[[int, dict[str, Any], str], dict[str, Any]],
        trials_dir: Path,
        run_id: str,
        on_event: Callable[[Event], None] | None = None,
        max_failures: int = 5,
        threads: tuple[Path, int, int] | None = None,
    ):
        mode = "min" if spec.objective.direction == "minimize" else "max"
        super().__init__(metric=spec.objective.metric, mode=mode)
        self._study, self._spec, self._target = study, spec, target
        self._storage = storage_mod.backend(study)
        self._study_id = storage_mod.study_id(study)
        self._make_config, self._trials_dir, self._run_id = make_config, trials_dir, run_id
        self._on_event = on_event or (lambda e: None)
        self._max_failures = max_failures
        self._threads, self._threads_said = threads, 0
        self._live: dict[str, optuna.trial.Trial] = {}
        self._ids: dict[str, int] = {}  # Ray trial id -> the storage's trial id (for heartbeats)
        self._params: dict[str, dict[str, Any]] = {}
        self._last: dict[str, dict[str, Any]] = {}
        self._failures: list[str] = []
        self.stop_reason: str | None = None
        self.stopping = False
        self.disk_peak_mb = 0.0
        self._lock = threading.Lock()
        self._counts_cache: tuple[float, int, int] = (0.0, 0, 0)
        self._beat_stop = threading.Event()
        self._beat = threading.Thread(target=self._heartbeat_loop, name="hpo-heartbeat", daemon=True)
        self._beat.start()

    # ------------------------------------------------------------ Searcher hooks

    def suggest(self, trial_id: str) -> dict[str, Any] | str | None:  # type: ignore[override]
        if self.stop_reason or self.stopping:
            return Searcher.FINISHED
        finished, running = self._counts(fresh=False)
        if finished >= self._target:
            return Searcher.FINISHED
        if finished + running >= self._target:
            return None  # other trials may still fail; ask again later
        trial = self._study.ask()
        if self._over_target(trial):
            return None
        params = space.suggest(trial, self._spec.space)
        folder = self._trials_dir / f"{trial.number:05d}"
        attrs = {
            "ray_trial_id": trial_id,
            "hpo_run": self._run_id,
            "trial_dir": str(folder),
            "host": socket.gethostname(),
            "pid": os.getpid(),
        }
        resume = trial.user_attrs.get("resume_checkpoint")  # set when an interrupted trial was re-queued
        if resume and Path(resume).is_dir():
            attrs["resumed_from"] = resume
        for key, value in attrs.items():
            trial.set_user_attr(key, value)
        storage_trial_id = self._storage.get_trial_id_from_study_id_trial_number(self._study_id, trial.number)
        self._heartbeat(storage_trial_id)
        with self._lock:
            self._live[trial_id], self._params[trial_id] = trial, params
            self._ids[trial_id] = storage_trial_id
        self._counts_cache = (0.0, 0, 0)
        self._on_event(
            Event("start", trial.number, params, message="resumed" if "resumed_from" in attrs else "")
        )
        self._share_idle_cpus(finished, running + 1)
        config = self._make_config(trial.number, params, str(folder))
        if "resumed_from" in attrs:
            config["resume_checkpoint"] = attrs["resumed_from"]
        return config

    def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
        trial = self._live.get(trial_id)
        if trial is not None:
            self._record(trial_id, trial, result)
            self._heartbeat(self._ids[trial_id])

    def _record(self, trial_id: str, trial: optuna.trial.Trial, result: dict[str, Any]) -> None:
        """Write one evaluation: intermediate value, epoch, and the checkpoint when it moved."""
        previous = self._last.get(trial_id, {})
        if self.metric not in result or result.get("epoch") == previous.get("epoch"):
            return
        step = eval_step(result["epoch"], self._spec.training.eval_every)
        trial.report(float(result[self.metric]), step)
        trial.set_user_attr("epoch", float(result["epoch"]))
        if result.get("checkpoint") and result["checkpoint"] != previous.get("checkpoint"):
            trial.set_user_attr("checkpoint", result["checkpoint"])
            self._note_disk()
        self._last[trial_id] = result

    def on_trial_complete(
        self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False
    ) -> None:
        with self._lock:
            trial = self._live.pop(trial_id, None)
            params = self._params.pop(trial_id, {})
            self._ids.pop(trial_id, None)
        if trial is None:
            return
        if result:  # Tune hands a trial's final result (a STOP or its end) here, not to on_trial_result
            self._record(trial_id, trial, result)
        last = self._last.pop(trial_id, {})
        if self.stopping and not error and not last.get(BUDGET_DONE):
            self._interrupt(trial, params)
            return
        error_info = read_error(Path(trial.user_attrs["trial_dir"])) if error else None
        state = final_state(last, error, self._spec.asha_max_t(), bool(self._spec.schedule.type == "asha"))
        self._finish(trial, params, state, last, error_info)
        trials = self._study.get_trials(deepcopy=False)  # one read for both
        self._collect_garbage(trials)
        self._share_idle_cpus(*finished_and_running(trials))

    # ------------------------------------------------------------ finishing trials

    def _finish(self, trial, params, state: TrialState, last: dict[str, Any], error_info) -> None:
        attrs = summary_attrs(last)
        if state == TrialState.FAIL:
            info = error_info or {
                "error_class": "TrialError",
                "error_message": "the trial failed without a message",
            }
            attrs.update(info)
            self._failures.append(f"{info['error_class']}: {info['error_message']}")
            if (
                len(self._failures) >= self._max_failures
                and len(set(self._failures[-self._max_failures :])) == 1
            ):
                self.stop_reason = f"the last {self._max_failures} trials failed with {self._failures[-1]}"
        else:
            self._failures.clear()
        if state == TrialState.PRUNED:
            attrs["pruned_at_epoch"] = last.get("epoch")
        for key, value in attrs.items():
            trial.set_user_attr(key, value)
        value = self._value(last) if state == TrialState.COMPLETE else None
        self._study.tell(trial, value, state=state)
        self._counts_cache = (0.0, 0, 0)
        kind = {TrialState.COMPLETE: "complete", TrialState.PRUNED: "pruned", TrialState.FAIL: "fail"}[state]
        message = attrs.get("error_message", "") if state == TrialState.FAIL else ""
        self._on_event(
            Event(kind, trial.number, params, value or last.get(self.metric), last.get("epoch"), message)
        )

    def _value(self, last: dict[str, Any]) -> float:
        """The trial's value: its best objective (the trial reports it for ``config["objective"]``)."""
        if "best_objective" in last:
            return float(last["best_objective"])
        best = float(last["best_eval_loss"])
        return math.exp(min(best, 50.0)) if self.metric == "perplexity" else best

    def _interrupt(self, trial, params: dict[str, Any]) -> None:
        """Fail an interrupted trial and re-queue its parameters (the next run tries them first,
        resuming from its checkpoint when it had one)."""
        trial.set_user_attr("fail_reason", "interrupted")
        trial.set_user_attr(REQUEUER_ATTR, _this_process())
        self._study.tell(trial, state=TrialState.FAIL)
        attrs = trial.user_attrs
        requeue(
            self._study,
            trial.number,
            params,
            self._spec,
            attrs.get("trial_dir"),
            attrs.get("resume_checkpoint"),
        )
        self._on_event(Event("interrupted", trial.number, params, message="re-queued"))

    def abandon_live(self) -> None:
        """At the end of a run: fail and re-queue every trial still live (Ctrl-C, a crash of Ray)."""
        self.stopping = True
        with self._lock:
            live = list(self._live.items())
            self._live.clear()
            self._ids.clear()
        for trial_id, trial in live:
            self._interrupt(trial, self._params.pop(trial_id, {}))
        self._beat_stop.set()
        self._collect_garbage()

    def fail_live(self, error_class: str, message: str) -> None:
        """Fail every trial still live with this error, not re-queued (Ray killed their workers
        for memory: the same configurations would die again)."""
        with self._lock:
            live = list(self._live.items())
            self._live.clear()
        for trial_id, trial in live:
            last = self._last.pop(trial_id, {})
            info = {"error_class": error_class, "error_message": message}
            self._finish(trial, self._params.pop(trial_id, {}), TrialState.FAIL, last, info)

    # ------------------------------------------------------------ bookkeeping

    def _counts(self, fresh: bool) -> tuple[int, int]:
        """(finished, running) trials of the whole study, cached for a second between asks."""
        stamp, finished, running = self._counts_cache
        if fresh or time.monotonic() - stamp > 1.0:
            trials = self._study.get_trials(
                deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)
            )
            finished, running = finished_and_running(trials)
            self._counts_cache = (time.monotonic(), finished, running)
        return finished, running

    def _over_target(self, trial: optuna.trial.Trial) -> bool:
        """Whether another run took the last slots of the target between our count and our ask.
        Then the trial just asked is not needed: it is closed as FAIL (and never trained)."""
        alive = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)
        rank = sum(t.number <= trial.number for t in self._study.get_trials(deepcopy=False, states=alive))
        if rank <= self._target:
            return False
        trial.set_user_attr("fail_reason", "not needed: other runs hold the last trials of the target")
        self._study.tell(trial, state=TrialState.FAIL)
        self._counts_cache = (0.0, 0, 0)
        return True

    def _heartbeat(self, storage_trial_id: int) -> None:
        if self._storage.get_heartbeat_interval():
            self._storage.record_heartbeat(storage_trial_id)

    def _heartbeat_loop(self) -> None:
        """Every ``HEARTBEAT_S``: beat for this run's trials, and recover trials of runs that died
        since this one started (their slots would otherwise count as running for ever)."""
        while not self._beat_stop.wait(HEARTBEAT_S):
            with self._lock:
                ids = list(self._ids.values())
            for tid in ids:
                try:
                    self._heartbeat(tid)
                except Exception:  # noqa: BLE001 - a missed beat is retried next period
                    log.debug("heartbeat failed", exc_info=True)
            try:
                if recover_stale(self._study, self._spec, running_here=True):
                    self._counts_cache = (0.0, 0, 0)
            except Exception:  # noqa: BLE001 - retried next period
                log.debug("stale-trial check failed", exc_info=True)

    def _share_idle_cpus(self, finished: int, running: int) -> None:
        """Tell this run's trials how many torch threads to use (they poll the file), given the
        study's finished and running trials."""
        if self._threads is None:
            return
        path, cpus, slots = self._threads
        with self._lock:
            live = len(self._live)
        n = placement.tail_threads(cpus, slots, live, tail=finished + running >= self._target)
        if n != self._threads_said:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(path.name + ".tmp")
            tmp.write_text(f"{n}\n")
            os.replace(tmp, path)  # a trial never reads half a number
            self._threads_said = n

    def _note_disk(self) -> None:
        self.disk_peak_mb = max(self.disk_peak_mb, du_mb(self._trials_dir))

    def _collect_garbage(self, trials: list | None = None) -> None:
        trials = self._study.get_trials(deepcopy=False) if trials is None else trials
        for path in checkpoints_to_delete(trials, self._spec.keep_top_k, self._study.direction):
            shutil.rmtree(path, ignore_errors=True)

    def close(self) -> None:
        self._beat_stop.set()

    # Ray pickles its searcher into its experiment state to restore it later. hpo never restores
    # Ray state (each run continues the study from the storage), so there is nothing to save.
    def __getstate__(self) -> dict[str, Any]:
        return {"_metric": self._metric, "_mode": self._mode}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)

    def save(self, checkpoint_path: str) -> None:
        pass

    def save_to_dir(self, checkpoint_dir: str, session_str: str = "default") -> None:
        pass


# ---------------------------------------------------------------- pure decisions


def finished_and_running(trials: list) -> tuple[int, int]:
    """(COMPLETE + PRUNED, RUNNING) among ``trials``: what counts towards the target."""
    finished = sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials)
    return finished, sum(t.state == TrialState.RUNNING for t in trials)


def eval_step(epoch: float, eval_every: float) -> int:
    """The intermediate-value step of an evaluation: its index on the ``eval_every`` epoch grid."""
    return max(1, math.ceil(epoch / eval_every - 1e-6))


def final_state(last: dict[str, Any], error: bool, max_t: float, scheduled: bool) -> TrialState:
    """COMPLETE when the trial ran its own budget (or the scheduler's max_t), PRUNED when the
    scheduler stopped it earlier, FAIL on error or when it never reported."""
    if error or "epoch" not in last:
        return TrialState.FAIL
    if last.get(BUDGET_DONE) or float(last["epoch"]) >= max_t - 1e-6:
        return TrialState.COMPLETE
    return TrialState.PRUNED if scheduled else TrialState.FAIL


def summary_attrs(last: dict[str, Any]) -> dict[str, Any]:
    """The user attributes a finished trial carries, from its last report."""
    keys = (
        "epoch",
        "best_eval_loss",
        "best_epoch",
        "checkpoint",
        "train_s",
        "eval_s",
        "save_s",
        "trial_s",
        "tokens",
        "tokens_per_s",
        "best_token_accuracy",
        "early_stopped",
        "device",  # where it trained (cpu, cuda), in what precision, and why not on the GPU it asked for
        "precision",
        "base_dtype",  # the dtype the base model was saved in: what `hpo export` writes by default
        "micro_batch",  # sequences in one forward pass (max_micro_batch: auto picks it) and the memory
        "memory_gb",  # the trial planned with (hpo/memory.py)
        "device_note",
        "cuda_visible_devices",
        "node_id",
        "started_at",
        "world_size",  # a data-parallel trial: its ranks and their backend (nccl, or gloo on CPUs)
        "ddp_backend",
    )
    out = {k: last[k] for k in keys if last.get(k) is not None}
    if "best_eval_loss" in out:
        out["best_perplexity"] = math.exp(min(float(out["best_eval_loss"]), 50.0))
    return out


def checkpoints_to_delete(trials: list, keep: int, direction) -> list[str]:
    """Checkpoint folders that can no longer be exported as the best: every finished trial's
    except the ``keep`` best COMPLETE ones; RUNNING trials keep theirs, and so do interrupted
    ones (and any trial a queued or running trial was re-queued from) until the trial re-queued
    from them has finished, and any checkpoint a queued or running trial is to resume from (down a
    chain of re-queues: a trial interrupted before its own first checkpoint passes on the one it
    resumed from)."""
    complete = [t for t in trials if t.state == TrialState.COMPLETE and t.value is not None]
    sign = 1 if direction == optuna.study.StudyDirection.MINIMIZE else -1
    winners = {t.number for t in sorted(complete, key=lambda t: sign * t.value)[:keep]}
    resumed = {t.user_attrs.get("requeued_from") for t in trials if t.state.is_finished()}
    pending = {t.user_attrs.get("requeued_from") for t in trials if not t.state.is_finished()}
    needed = {t.user_attrs.get("resume_checkpoint") for t in trials if not t.state.is_finished()}
    out: list[str] = []
    for t in trials:
        folder = t.user_attrs.get("trial_dir")
        if not folder or t.state in (TrialState.RUNNING, TrialState.WAITING) or t.number in winners:
            continue
        if t.number in pending or (
            t.user_attrs.get("fail_reason") == "interrupted" and t.number not in resumed
        ):
            continue  # its re-queued trial will resume from this checkpoint
        out.extend(str(p) for p in Path(folder).glob("step-*") if p.is_dir() and str(p) not in needed)
    return out


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
    from hpo.trial import best_checkpoint

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


def read_error(folder: Path) -> dict[str, str] | None:
    """The error a trial's wrapper wrote before it failed, if any."""
    try:
        return json.loads((folder / ERROR_FILE).read_text())
    except (OSError, ValueError):
        return None


def du_mb(path: Path) -> float:
    """Megabytes of the files under ``path``."""
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file()) / 1e6


#: On a trial failed as interrupted: the process (host, pid) that failed it and re-queues it next.
#: Should that process die between the two writes, the next recovery sees it gone and re-queues.
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
