"""The Optuna <-> Ray Tune bridge: every Ray trial is an Optuna trial in the storage, live.

Ray Tune's own ``OptunaSearch`` records an ASHA-stopped trial as COMPLETE with its low-fidelity
value, sets no user attributes and leaves RUNNING rows behind after a crash. This searcher:

* asks Optuna for each trial's parameters (so enqueued and re-queued trials come first) and
  records the trial RUNNING with its Ray trial id, run id and checkpoint folder;
* writes every evaluation as an intermediate value (step = evaluation index on the epoch grid),
  and when it came (user attribute ``eval_time_<step>``: trial seconds and tokens so far);
* ends it COMPLETE (value = its best objective), PRUNED when the scheduler stopped it before its
  budget (with the epoch reached), or FAIL with the error class and message;
* keeps heartbeats for its live trials so another process can tell a dead run's trials apart;
* stops asking once the study holds ``target`` finished trials, counting the RUNNING trials of
  every process, so several ``hpo run`` processes on one storage split the target (trials imported
  from an earlier study count toward nothing);
* with a time budget (``deadline``), starts no trial that cannot reach its first rung in the time
  left at the study's measured pace (``hpo/budget.py``); the trials still running at the deadline
  (Tune's stopper ends them) are failed with ``fail_reason: budget`` and re-queued.

The decisions (final state, which checkpoints to delete) are pure functions in
``hpo/bookkeeping.py``; whether and which trial starts next is ``hpo/admission.py``'s; recovery
of dead runs is ``hpo/recovery.py``'s.
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState
from ray.tune.search import Searcher

from hpo import admission, budget, placement, space
from hpo import storage as storage_mod
from hpo.bookkeeping import (
    BUDGET_DONE,
    EVAL_TIME_PREFIX,
    checkpoints_to_delete,
    du_mb,
    eval_step,
    failure_streak,
    final_state,
    finished_and_running,
    outcome,
    protected,
    read_error,
    source_losses,
    summary_attrs,
)
from hpo.recovery import REQUEUER_ATTR, _this_process, recover_stale, requeue
from hpo.spec import StudySpec
from hpo.storage import HEARTBEAT_S
from hpo.summary import CONFIRM_SEED_ATTR

log = logging.getLogger(__name__)

#: The user attribute holding a mixture's per-source eval losses: [[epoch, {source: loss}], ...].
SOURCE_HISTORY = "source_eval_loss"


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
        deadline: the time budget's end (``time.time()`` seconds); None: no budget.
        confirm: run the study's queued confirm runs (``hpo confirm``) and nothing else; they
            count toward ``target`` apart from search trials, and are never re-queued.
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
        deadline: float | None = None,
        confirm: bool = False,
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
        self._confirm = confirm  # run the queued confirm runs (`hpo confirm`), never a new sample
        self.scheduler: Any = None  # set by the runner; PASHA's knows which trials ran its budget
        self._live: dict[str, optuna.trial.Trial] = {}
        self._ids: dict[str, int] = {}  # Ray trial id -> the storage's trial id (for heartbeats)
        self._params: dict[str, dict[str, Any]] = {}
        self._last: dict[str, dict[str, Any]] = {}
        self._failures: list[str] = []
        self.stop_reason: str | None = None
        self.stopping = False
        self.deadline = deadline
        self.budget_over = False  # set by the runner's stopper at the deadline
        self.budget_note: str | None = None  # why the budget started no more trials
        self.budget_stopped: list[int] = []  # trials stopped at the deadline (re-queued)
        self._first_rung = budget.first_rung(spec.asha_rungs(), spec.asha_max_t(), spec.training.eval_every)
        self.disk_peak_mb = 0.0
        self._lock = threading.Lock()
        self._counts_cache: tuple[float, int, int] = (0.0, 0, 0)
        self._beat_stop = threading.Event()
        self._beat = threading.Thread(target=self._heartbeat_loop, name="hpo-heartbeat", daemon=True)
        self._beat.start()

    # ------------------------------------------------------------ Searcher hooks

    def suggest(self, trial_id: str) -> dict[str, Any] | str | None:  # type: ignore[override]
        if self.stop_reason or self.stopping or self.budget_over:
            return Searcher.FINISHED
        finished, running = self._counts(fresh=False)
        if finished >= self._target:
            return Searcher.FINISHED
        if finished + running >= self._target:
            return None  # other trials may still fail; ask again later
        if not self._budget_allows():
            return Searcher.FINISHED
        if self._confirm and not admission.confirm_queued(self._study):
            return Searcher.FINISHED
        trial = admission.ask(self._study, self._spec, self._confirm)
        if trial is None:
            return None
        if admission.over_target(self._study, trial, self._target, self._confirm):
            self._counts_cache = (0.0, 0, 0)  # closed FAIL: another run took the last slots
            return None
        params = space.suggest(trial, self._spec.space)
        if self._confirm:  # its new seed (when the space searches seed, the queue fixed it already)
            params["seed"] = int(trial.user_attrs[CONFIRM_SEED_ATTR])
        folder = self._trials_dir / f"{trial.number:05d}"
        attrs = admission.mark_started(trial, trial_id, self._run_id, folder)
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
            self._record(trial_id, trial, result, self._ids[trial_id])
            self._heartbeat(self._ids[trial_id])

    def _record(
        self, trial_id: str, trial: optuna.trial.Trial, result: dict[str, Any], storage_id: int
    ) -> None:
        """Write one evaluation: intermediate value, epoch, and the checkpoint when it moved."""
        previous = self._last.get(trial_id, {})
        if self.metric not in result or result.get("epoch") == previous.get("epoch"):
            return
        step = eval_step(result["epoch"], self._spec.training.eval_every)
        if self._spec.objectives:  # Trial.report refuses a multi-objective study: the first objective's
            self._storage.set_trial_intermediate_value(storage_id, step, float(result[self.metric]))
        else:
            trial.report(float(result[self.metric]), step)
        trial.set_user_attr("epoch", float(result["epoch"]))
        if "trial_s" in result:  # when each evaluation came, for learning-curve tables (hpo/curves.py)
            trial.set_user_attr(
                f"{EVAL_TIME_PREFIX}{step}", [round(float(result["trial_s"]), 4), result.get("tokens")]
            )
        if sources := source_losses(result):  # a mixture: every source's eval loss, per evaluation
            history = [*previous.get(SOURCE_HISTORY, []), [float(result["epoch"]), sources]]
            trial.set_user_attr(SOURCE_HISTORY, history)
            result = {**result, SOURCE_HISTORY: history}
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
            storage_id = self._ids.pop(trial_id, None)
        if trial is None:
            return
        if result and storage_id is not None:  # Tune hands a trial's final result here (a STOP or its end)
            self._record(trial_id, trial, result, storage_id)
        last = self._last.pop(trial_id, {})
        if (self.stopping or self.budget_over) and not error and not last.get(BUDGET_DONE):
            self._interrupt(trial, params, last)
            return
        error_info = read_error(Path(trial.user_attrs["trial_dir"])) if error else None
        scheduled = self._spec.schedule.type != "none"
        capped = bool(getattr(self.scheduler, "reached_cap", lambda _: False)(trial_id))
        state = final_state(last, error, self._spec.asha_max_t(), scheduled, capped)
        self._finish(trial, params, state, last, error_info)
        trials = self._study.get_trials(deepcopy=False)  # one read for both
        self._collect_garbage(trials)
        self._share_idle_cpus(*finished_and_running(trials, self._confirm))

    # ------------------------------------------------------------ finishing trials

    def _finish(self, trial, params, state: TrialState, last: dict[str, Any], error_info) -> None:
        state, values, attrs, failure = outcome(state, last, error_info, self.metric, self._spec.metrics)
        if failure is None:
            self._failures.clear()
        else:
            self._failures.append(failure)
            self.stop_reason = failure_streak(self._failures, self._max_failures) or self.stop_reason
        for key, value in attrs.items():
            trial.set_user_attr(key, value)
        self._study.tell(trial, values, state=state)
        self._counts_cache = (0.0, 0, 0)
        kind = {TrialState.COMPLETE: "complete", TrialState.PRUNED: "pruned", TrialState.FAIL: "fail"}[state]
        message = attrs.get("error_message", "") if state == TrialState.FAIL else ""
        value = values[0] if values else None
        self._on_event(
            Event(kind, trial.number, params, value or last.get(self.metric), last.get("epoch"), message)
        )

    def _interrupt(self, trial, params: dict[str, Any], last: dict[str, Any]) -> None:
        """Fail an interrupted trial (Ctrl-C, or the time budget's deadline: ``fail_reason``
        ``budget``, with what it had reached) and re-queue its parameters (the next run tries them
        first, resuming from its checkpoint when it had one). A confirm run is not re-queued:
        `hpo confirm` again runs the missing ones."""
        reason = "budget" if self.budget_over and not self.stopping else "interrupted"
        if reason == "budget":
            self.budget_stopped.append(trial.number)
            for key, value in {**summary_attrs(last), "stopped_at_epoch": last.get("epoch")}.items():
                if value is not None:
                    trial.set_user_attr(key, value)
        trial.set_user_attr("fail_reason", reason)
        if self._confirm:
            self._study.tell(trial, state=TrialState.FAIL)
            self._on_event(Event("interrupted", trial.number, params, message="rerun `hpo confirm`"))
            return
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
        message = "stopped at the time budget's deadline; re-queued" if reason == "budget" else "re-queued"
        self._on_event(Event("interrupted", trial.number, params, epoch=last.get("epoch"), message=message))

    def abandon_live(self) -> None:
        """At the end of a run: fail and re-queue every trial still live (Ctrl-C, a crash of Ray,
        the time budget's deadline: Tune's stopper ends its trials without telling the searcher)."""
        self.stopping = self.stopping or not self.budget_over
        with self._lock:
            live = list(self._live.items())
            self._live.clear()
            self._ids.clear()
        for trial_id, trial in live:
            self._interrupt(trial, self._params.pop(trial_id, {}), self._last.pop(trial_id, {}))
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
            finished, running = admission.counts(self._study, self._confirm)
            self._counts_cache = (time.monotonic(), finished, running)
        return finished, running

    def _budget_allows(self) -> bool:
        """Whether a new trial can reach its first rung before the deadline at the study's pace;
        when not, says why in ``budget_note`` (the run's summary)."""
        if self.deadline is None:
            return True
        note = admission.budget_refusal(self._study, self.deadline, self._first_rung)
        if note is None:
            return True
        self.budget_note = note
        return False

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
        also = protected(trials, self._spec.directions)
        for path in checkpoints_to_delete(trials, self._spec.keep_top_k, self._study.directions[0], also):
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
