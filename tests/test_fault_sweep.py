"""Faults swept, not sampled: one small study on the tiny model is driven through ten crashes of its
``hpo run`` driver, each at a different moment of the study, and a rerun of the same command after
each; the study must end exactly as if nothing had happened.

Each crash is a real SIGKILL of the driver and of every process it started (Ray, the warm process,
the trial processes), as a machine or the out-of-memory killer would deliver it; the moment is
chosen by polling the storage, the runs folder and the process table (no mocks, no hooks in hpo).
A kill can miss its moment (the study moves on between two polls): the sweep judges, from what the
kill left behind, whether it landed, and reports it; only the end state is asserted.

The figure (kills survived / tried, and which landed where) is printed at the end (``pytest -s``).
Slow: about 5 minutes on 2 idle cores (eleven starts of Ray).
"""

from __future__ import annotations

import contextlib
import datetime
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import optuna
import pytest
from optuna.trial import FrozenTrial, TrialState

from hpo.checkpoint import POINTER, best_checkpoint
from hpo.raystart import temp_dir
from hpo.storage import ENQUEUED_ATTR
from tests.conftest import run_cli, small_spec

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
TARGET = 4
NAME = "sweep"
MOMENT_TIMEOUT_S = 300.0  # a moment that has not come by then is struck anyway, and counted missed
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


# ---------------------------------------------------------------- what a poll sees


@dataclass
class Folder:
    """A trial folder's checkpoint files: the BEST pointer's target, its step folders, its tmp."""

    best: str | None
    steps: set[str]
    tmp: bool

    @property
    def mid_write(self) -> bool:
        """A checkpoint is being written (or the previous one deleted): a step folder that BEST
        does not name, or the pointer's tmp file."""
        return self.tmp or bool(self.steps - {self.best})


@dataclass
class Watch:
    """One run of ``hpo run`` under watch: what the study held at its start and what it holds now."""

    proc: subprocess.Popen
    runs: Path
    storage: optuna.storages.BaseStorage
    study_id: int
    before: list[FrozenTrial]
    old_folders: set[str]
    started: float = field(default_factory=time.time)
    trials: list[FrozenTrial] = field(default_factory=list)
    folders: dict[str, Folder] = field(default_factory=dict)
    trial_procs: dict[int, float] = field(default_factory=dict)  # forked trial process -> first seen
    killed_at: datetime.datetime | None = None  # local time, as Optuna stamps trials

    @property
    def log(self) -> Path:
        return self.runs.parent / f"run-{self.proc.pid}.log"

    def poll(self, procs: bool = False) -> None:
        self.poll_trials()
        self.poll_folders()
        if procs:
            now, seen = time.time(), set(_trial_processes(self.proc.pid))
            self.trial_procs = {p: self.trial_procs.get(p, now) for p in seen}

    def poll_trials(self) -> None:
        self.trials = self.storage.get_all_trials(self.study_id, deepcopy=False)

    def poll_folders(self) -> None:
        trials = self.runs / "trials"
        names = {p.name for p in trials.glob("[0-9]*")} - self.old_folders if trials.is_dir() else set()
        self.folders = {n: _folder(trials / n) for n in names}

    def new(self, state: TrialState | None = None) -> list[FrozenTrial]:
        old = {t.number for t in self.before if state is None or t.state == state}
        return [t for t in self.trials if t.number not in old and (state is None or t.state == state)]

    def finished(self) -> int:
        return sum(t.state in FINISHED for t in self.trials)

    def interrupted(self) -> list[FrozenTrial]:
        return [t for t in self.trials if t.user_attrs.get("fail_reason") == "interrupted"]

    def ray_started(self) -> bool:
        """This run's Ray has made its session folder (the temp folder is shared by the runs)."""
        try:
            return os.lstat(Path(temp_dir(self.runs)) / "session_latest").st_mtime >= self.started
        except OSError:
            return False


def _folder(path: Path) -> Folder:
    try:
        best = (path / POINTER).read_text().strip() or None
    except OSError:
        best = None
    steps = {p.name for p in path.glob("step-*")}
    return Folder(best, steps, (path / f".{POINTER}.tmp").exists())


# ---------------------------------------------------------------- the moments


@dataclass
class Moment:
    """When to strike (``ready``, polled) and whether the kill hit it (``landed``, judged on the
    study and the folders as the kill left them)."""

    name: str
    ready: Callable[[Watch], bool]
    landed: Callable[[Watch], bool]
    fast: Callable[[Watch], None] | None = None  # polled every 5 ms (a checkpoint write is short)
    procs: bool = False  # poll the process table for the forked trial processes
    give_up: Callable[[Watch], bool] = lambda w: False  # the moment cannot come in this run any more


def _no_progress(w: Watch) -> bool:
    """The trials started in this run have reported nothing and written no checkpoint yet."""
    return all(not t.intermediate_values for t in w.new()) and not any(f.steps for f in w.folders.values())


def _trial_running_for(w: Watch, seconds: float) -> bool:
    return any(time.time() - t0 >= seconds for t0 in w.trial_procs.values())


def _resumed_without_own_checkpoint(w: Watch) -> bool:
    return any(
        t.user_attrs.get("resumed_from")
        and not w.folders.get(f"{t.number:05d}", Folder(None, set(), False)).best
        for t in w.new(TrialState.RUNNING)
    )


def _just_finished(w: Watch, within_s: float) -> bool:
    """A trial of this run reached its final state less than ``within_s`` before the kill."""
    return any(
        t.state in FINISHED and (w.killed_at - t.datetime_complete).total_seconds() < within_s
        for t in w.new()
        if t.datetime_complete is not None
    )


def _newly_finished(w: Watch) -> int:
    return w.finished() - sum(t.state in FINISHED for t in w.before)


def _recovered(w: Watch) -> bool:
    """This run has failed (as interrupted) a trial the killed run left RUNNING."""
    return len(w.interrupted()) > sum(t.user_attrs.get("fail_reason") == "interrupted" for t in w.before)


def _unqueued(w: Watch) -> list[int]:
    """Trials failed as interrupted that have parameters and no trial re-queued from them yet."""
    requeued = {t.user_attrs.get("requeued_from") for t in w.trials}
    return [
        t.number
        for t in w.interrupted()
        if t.number not in requeued and (t.params or t.user_attrs.get(ENQUEUED_ATTR))
    ]


def _tail(w: Watch) -> bool:
    return w.finished() == TARGET - 1 and bool(w.new(TrialState.RUNNING))


MOMENTS = [
    Moment(
        "before the first trial (Ray up, no trial yet)",
        ready=lambda w: w.ray_started() and not w.trials,
        landed=lambda w: not w.trials,
    ),
    Moment(
        "right after a trial is created",
        ready=lambda w: bool(w.new(TrialState.RUNNING)),
        landed=lambda w: bool(w.new()) and _no_progress(w),
    ),
    Moment(
        "mid-trial, before its first checkpoint",
        ready=lambda w: _trial_running_for(w, 1.5) and not any(f.steps for f in w.folders.values()),
        landed=lambda w: bool(w.new(TrialState.RUNNING)) and not any(f.steps for f in w.folders.values()),
        procs=True,
    ),
    Moment(
        "mid-trial, after a checkpoint",
        ready=lambda w: any(f.best for f in w.folders.values()),
        landed=lambda w: any(f.best and not f.mid_write for f in w.folders.values()),
    ),
    Moment(
        "the rerun's recovery, between failing a trial and re-queuing it",
        ready=_recovered,
        landed=lambda w: bool(_unqueued(w)),
        fast=Watch.poll_trials,
        give_up=lambda w: bool(w.new(TrialState.RUNNING)),
    ),
    Moment(
        "right after a re-queued trial is taken",
        ready=lambda w: any(t.user_attrs.get("requeued_from") is not None for t in w.new(TrialState.RUNNING)),
        landed=lambda w: bool(w.new()) and _no_progress(w),
    ),
    Moment(
        "during a checkpoint write",
        ready=lambda w: any(f.mid_write for f in w.folders.values()),
        landed=lambda w: any(f.mid_write for f in w.folders.values()),
        fast=Watch.poll_folders,
    ),
    Moment(
        "a resumed trial, before its own first checkpoint",
        ready=lambda w: _trial_running_for(w, 1.0) and _resumed_without_own_checkpoint(w),
        landed=_resumed_without_own_checkpoint,
        procs=True,
    ),
    Moment(
        "the bridge's bookkeeping, right after a trial's final state",
        ready=lambda w: _newly_finished(w) > 0,
        landed=lambda w: _just_finished(w, 1.0),
    ),
    Moment("the tail: one trial short of the target", ready=_tail, landed=_tail),
]


# ---------------------------------------------------------------- processes


def _parents() -> dict[int, int]:
    """pid -> parent pid of every process on this machine."""
    out = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            out[int(entry)] = int(stat.rsplit(")", 1)[1].split()[1])
    return out


def _descendants(pid: int) -> list[int]:
    parents, out, todo = _parents(), [], [pid]
    children: dict[int, list[int]] = {}
    for child, parent in parents.items():
        children.setdefault(parent, []).append(child)
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def _trial_processes(driver: int) -> list[int]:
    """The trial processes forked by the driver's warm process (each runs a trial's loop)."""
    for pid in _descendants(driver):
        try:
            if b"hpo.warmstart" in Path(f"/proc/{pid}/cmdline").read_bytes():
                return _descendants(pid)
        except OSError:
            continue
    return []


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _crash(proc: subprocess.Popen) -> None:
    """SIGKILL the driver's process group and every process it started (Ray, the warm process and
    its trial processes, some in groups of their own), as a crash would; wait until all are gone."""
    tree = _descendants(proc.pid)
    os.killpg(proc.pid, signal.SIGKILL)
    for pid in tree:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    proc.wait(timeout=30)
    deadline = time.time() + 30
    while any(_alive(p) for p in tree) and time.time() < deadline:
        time.sleep(0.1)
    assert not any(_alive(p) for p in tree), "a process of the killed run survived SIGKILL"


# ---------------------------------------------------------------- one kill


@dataclass
class Kill:
    moment: str
    landed: bool
    at_s: float  # seconds after the run's start
    interrupted: list[int]  # the trials the kill left RUNNING
    checkpoints: dict[int, str | None]  # their latest checkpoint (own, else the one they resumed from)
    note: str = ""


def _launch(tmp_path: Path, runs: Path, storage, study_id: int) -> Watch:
    before = storage.get_all_trials(study_id)
    trials = runs / "trials"
    old = {p.name for p in trials.glob("[0-9]*")} if trials.is_dir() else set()
    runs.parent.mkdir(parents=True, exist_ok=True)
    with open(runs.parent / "run.log", "ab") as log:  # renamed per run below, for a failure's message
        proc = subprocess.Popen(
            [sys.executable, "-m", "hpo.cli", "run", "--trials", str(TARGET), "--storage", _url(tmp_path)],
            cwd=tmp_path,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, so the kill takes the group as a crash would
        )
    w = Watch(proc, runs, storage, study_id, before, old)
    os.replace(runs.parent / "run.log", w.log)
    return w


def _strike(w: Watch, moment: Moment) -> Kill:
    """Poll until ``moment`` comes (or its time is up), then crash the run; what it left behind."""
    deadline, note = time.time() + MOMENT_TIMEOUT_S, ""
    while True:
        if w.proc.poll() is not None:
            pytest.fail(f"`hpo run` ended (rc {w.proc.returncode}) before '{moment.name}': see {w.log}")
        w.poll(moment.procs)
        if moment.ready(w) or (moment.fast and _watch_fast(w, moment, 0.1)):
            break
        if time.time() > deadline or moment.give_up(w):
            note = "its moment did not come; struck anyway"
            break
        if not moment.fast:
            time.sleep(0.1)
    at, w.killed_at = time.time() - w.started, datetime.datetime.now()
    _crash(w.proc)
    w.poll()  # what the kill left behind
    running = w.new(TrialState.RUNNING)  # older RUNNING trials were left by an earlier kill
    if _unqueued(w):
        note = f"left trials {_unqueued(w)} failed and not yet re-queued"
    return Kill(
        moment.name, moment.landed(w), at, [t.number for t in running], _checkpoints(w, running), note
    )


def _watch_fast(w: Watch, moment: Moment, seconds: float) -> bool:
    """Poll only what ``moment.fast`` reads, every 5 ms, for ``seconds``: True once it is ready."""
    assert moment.fast is not None
    end = time.time() + seconds
    while time.time() < end:
        time.sleep(0.005)
        moment.fast(w)
        if moment.ready(w):
            return True
    return False


def _checkpoints(w: Watch, running: list[FrozenTrial]) -> dict[int, str | None]:
    """Each killed trial's latest whole checkpoint: its own (the BEST pointer), else the one it
    resumed from (or was queued to resume from)."""
    out = {}
    for t in running:
        own = best_checkpoint(t.user_attrs["trial_dir"]) if t.user_attrs.get("trial_dir") else None
        out[t.number] = (
            str(own) if own else t.user_attrs.get("resumed_from") or t.user_attrs.get("resume_checkpoint")
        )
    return out


# ---------------------------------------------------------------- the end state


def _problems(trials: list[FrozenTrial], kill: Kill) -> list[str]:
    """What went wrong for the trials one kill interrupted: each re-queued exactly once with the
    parameters it had drawn, resumed from its latest checkpoint, and its chain finished once."""
    by_number = {t.number: t for t in trials}
    successors: dict[int, list[FrozenTrial]] = {}
    for t in trials:
        if t.user_attrs.get("requeued_from") is not None:
            successors.setdefault(t.user_attrs["requeued_from"], []).append(t)
    out = []
    for number in kill.interrupted:
        t = by_number[number]
        # killed while writing its parameters, a trial taken from the queue holds only some
        drawn = {**(t.user_attrs.get(ENQUEUED_ATTR) or {}), **t.params}
        again = successors.get(number, [])
        if t.user_attrs.get("fail_reason") != "interrupted":
            out.append(f"trial {number} is {t.state.name}, not FAIL interrupted")
        if len(again) != (1 if drawn else 0) or any(u.user_attrs[ENQUEUED_ATTR] != drawn for u in again):
            queued = [(u.number, u.user_attrs.get(ENQUEUED_ATTR)) for u in again]
            out.append(f"trial {number} (params {drawn}) was re-queued as {queued}")
            continue
        checkpoint = kill.checkpoints[number]
        for u in again:
            if checkpoint and u.user_attrs.get("resume_checkpoint") != checkpoint:
                out.append(
                    f"trial {u.number} was queued to resume from "
                    f"{u.user_attrs.get('resume_checkpoint')}, not {checkpoint}"
                )
            elif checkpoint and "pid" in u.user_attrs and u.user_attrs.get("resumed_from") != checkpoint:
                out.append(f"trial {u.number} did not resume from {checkpoint}")
        if drawn and _chain_finished(number, successors) != 1:
            out.append(f"trial {number}'s parameters finished {_chain_finished(number, successors)} times")
    return out


def _chain_finished(number: int, successors: dict[int, list[FrozenTrial]]) -> int:
    """Finished trials among the trials re-queued from ``number``, transitively."""
    return sum(
        (u.state in FINISHED) + _chain_finished(u.number, successors) for u in successors.get(number, [])
    )


def _check_end_state(trials: list[FrozenTrial]) -> None:
    states = [t.state for t in trials]
    assert sum(s in FINISHED for s in states) == TARGET, [(t.number, t.state.name) for t in trials]
    assert TrialState.RUNNING not in states and TrialState.WAITING not in states
    failed = [t for t in trials if t.state == TrialState.FAIL]
    assert all(t.user_attrs.get("fail_reason") == "interrupted" for t in failed), [
        (t.number, t.user_attrs.get("fail_reason"), t.user_attrs.get("error_message")) for t in failed
    ]


def _url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'hpo.db'}"


def _table(kills: list[Kill], survived: list[bool]) -> str:
    lines = [
        f"fault sweep: {sum(survived)}/{len(kills)} kills survived, {sum(k.landed for k in kills)} landed"
    ]
    for i, (k, ok) in enumerate(zip(kills, survived, strict=True), 1):
        mark = "landed" if k.landed else "MISSED"
        lines.append(
            f"{i:2d}. {k.moment:<62} {mark:<6} at {k.at_s:5.1f}s, killed trials {k.interrupted}"
            f"{'' if ok else '  NOT SURVIVED'}{'  (' + k.note + ')' if k.note else ''}"
        )
    return "\n".join(lines)


def test_ten_kills_over_a_study_lose_nothing(tmp_path, tiny_model):
    # each best written as it is found: the sweep checks that killed trials resume from theirs
    spec = small_spec(tmp_path, name=NAME, rows=240, space={"epochs": 1}, training={"save_best": "immediate"})
    assert run_cli("study", "create", str(spec), "--storage", _url(tmp_path), cwd=tmp_path).returncode == 0
    storage = optuna.storages.RDBStorage(_url(tmp_path))
    study_id = storage.get_study_id_from_name(NAME)
    runs = tmp_path / "runs" / NAME
    kills = []
    for moment in MOMENTS:
        kills.append(_strike(_launch(tmp_path, runs, storage, study_id), moment))
    r = run_cli("run", "--trials", str(TARGET), "--storage", _url(tmp_path), cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    trials = storage.get_all_trials(study_id)
    problems = [_problems(trials, k) for k in kills]
    print("\n" + _table(kills, [not p for p in problems]))
    for kill, found in zip(kills, problems, strict=True):
        for problem in found:
            print(f"  {kill.moment}: {problem}")
    _check_end_state(trials)
    assert not any(problems), problems
    landed = sum(k.landed for k in kills)
    assert landed >= len(kills) // 2, f"only {landed} of {len(kills)} kills hit their moment"
