"""The Optuna <-> Ray bridge: pure decisions, and the bridge driven by hand-made events on a
real Optuna storage (no Ray cluster needed: Tune calls these same hooks)."""

from __future__ import annotations

import math
import os
import socket
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from hpo import recovery, space
from hpo import spec as spec_mod
from hpo import storage as storage_mod
from hpo.bookkeeping import (
    BUDGET_DONE,
    checkpoints_to_delete,
    eval_step,
    failure_streak,
    final_state,
    outcome,
)
from hpo.recovery import recover_stale
from hpo.searcher import OptunaBridge
from tests.conftest import small_spec


def test_eval_step_is_the_index_on_the_epoch_grid():
    assert [eval_step(e, 0.25) for e in (0.25, 0.5, 1.0, 2.0)] == [1, 2, 4, 8]
    assert eval_step(1.0, 0.3) == 4  # a final evaluation off the grid gets the next index
    assert eval_step(0.3, 0.3) == 1


@pytest.mark.parametrize(
    ("last", "error", "expected"),
    [
        ({"epoch": 0.5}, False, TrialState.PRUNED),  # stopped by ASHA before its budget
        ({"epoch": 1.0, BUDGET_DONE: True}, False, TrialState.COMPLETE),  # its own (short) budget
        ({"epoch": 3.0}, False, TrialState.COMPLETE),  # reached max_t: ASHA's stop is the end
        ({"epoch": 0.5}, True, TrialState.FAIL),
        ({}, False, TrialState.FAIL),  # never reported
    ],
)
def test_final_state(last, error, expected):
    assert final_state(last, error, max_t=3.0, scheduled=True) == expected


def test_outcome_fails_a_complete_trial_without_its_objective_and_names_the_failure():
    state, values, attrs, failure = outcome(
        TrialState.COMPLETE, {"epoch": 1.0}, None, "eval_loss", ["eval_loss"]
    )
    assert (state, values, failure) == (
        TrialState.FAIL,
        None,
        "TrialError: the trial reported no eval_loss (an objective)",
    )
    assert attrs["error_class"] == "TrialError" and attrs["epoch"] == 1.0
    state, values, _, failure = outcome(
        TrialState.COMPLETE, {"epoch": 1.0, "best_eval_loss": 2.0}, None, "perplexity", ["perplexity"]
    )
    assert state == TrialState.COMPLETE and values == [pytest.approx(math.exp(2.0))] and failure is None
    state, _, attrs, failure = outcome(TrialState.PRUNED, {"epoch": 0.5}, None, "eval_loss", ["eval_loss"])
    assert attrs["pruned_at_epoch"] == 0.5 and failure is None


def test_the_same_failure_max_failures_times_in_a_row_stops_the_run():
    assert failure_streak(["A: x", "A: x"], 3) is None
    assert failure_streak(["B: y", "A: x", "A: x"], 3) is None
    assert failure_streak(["B: y", "A: x", "A: x", "A: x"], 3) == "the last 3 trials failed with A: x"


def _frozen(number, state, value, folder):
    return optuna.trial.create_trial(
        state=state,
        value=value if state == TrialState.COMPLETE else None,
        user_attrs={"trial_dir": str(folder)},
        params={},
        distributions={},
    ), number


def test_checkpoint_gc_keeps_the_top_k_complete_and_running(tmp_path: Path):
    trials = []
    specs = [
        (0, TrialState.COMPLETE, 1.0),
        (1, TrialState.COMPLETE, 0.5),
        (2, TrialState.PRUNED, None),
        (3, TrialState.COMPLETE, 2.0),
        (4, TrialState.RUNNING, None),
        (5, TrialState.FAIL, None),
    ]
    for number, state, value in specs:
        folder = tmp_path / f"{number}"
        (folder / "step-0000001").mkdir(parents=True)
        t, _ = _frozen(number, state, value, folder)
        t.number = number
        trials.append(t)
    doomed = checkpoints_to_delete(trials, keep=2, direction=optuna.study.StudyDirection.MINIMIZE)
    assert sorted(Path(p).parent.name for p in doomed) == ["2", "3", "5"]
    # a queued trial re-queued from 5 (failed for a stale heartbeat: no fail_reason) will resume there
    queued, _ = _frozen(6, TrialState.WAITING, None, tmp_path / "6")
    queued.number, queued.user_attrs["requeued_from"] = 6, 5
    doomed = checkpoints_to_delete([*trials, queued], keep=2, direction=optuna.study.StudyDirection.MINIMIZE)
    assert sorted(Path(p).parent.name for p in doomed) == ["2", "3"]


def _bridge(tmp_path: Path, target: int = 3, threads=None):
    spec = spec_mod.load(small_spec(tmp_path))
    url = f"sqlite:///{tmp_path / 'hpo.db'}"
    storage_mod.create(spec, url)
    study = storage_mod.load(spec.name, url, heartbeat=True)
    events = []
    bridge = OptunaBridge(
        study,
        spec,
        target,
        lambda n, p, folder: {"params": p, "checkpoint_dir": folder},
        tmp_path / "trials",
        "run1",
        events.append,
        max_failures=2,
        threads=threads,
    )
    return bridge, study, events


def test_bridge_records_complete_pruned_and_failed_trials(tmp_path: Path):
    bridge, study, events = _bridge(tmp_path, target=3)
    try:
        c0, c1, c2 = (bridge.suggest(f"ray{i}") for i in range(3))
        assert c0 is not None and "learning_rate" in c0["params"]
        assert bridge.suggest("ray3") is None  # 3 running would meet the target: wait
        for epoch, loss in ((0.25, 3.0), (0.5, 2.5)):
            bridge.on_trial_result("ray0", {"eval_loss": loss, "epoch": epoch, "best_eval_loss": loss})
        bridge.on_trial_complete(
            "ray0", {"eval_loss": 2.0, "epoch": 1.0, "best_eval_loss": 2.0, BUDGET_DONE: True}
        )
        bridge.on_trial_complete(
            "ray1", {"eval_loss": 4.0, "epoch": 0.25, "best_eval_loss": 4.0}
        )  # ASHA stop
        Path(c2["checkpoint_dir"]).mkdir(parents=True)
        Path(c2["checkpoint_dir"], "error.json").write_text(
            '{"error_class": "TrialError", "error_message": "nan"}'
        )
        bridge.on_trial_complete("ray2", None, error=True)
        trials = study.get_trials()
        assert [t.state for t in trials] == [TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL]
        assert trials[0].value == 2.0 and trials[0].intermediate_values == {1: 3.0, 2: 2.5, 4: 2.0}
        assert trials[1].user_attrs["pruned_at_epoch"] == 0.25 and trials[1].intermediate_values == {1: 4.0}
        assert trials[2].user_attrs["error_class"] == "TrialError"
        assert trials[0].user_attrs["ray_trial_id"] == "ray0"
        assert math.isclose(trials[0].user_attrs["best_perplexity"], math.exp(2.0))
        assert [e.kind for e in events] == ["start", "start", "start", "complete", "pruned", "fail"]
        bridge._counts_cache = (0.0, 0, 0)
        assert bridge.suggest("ray4") is not None  # the failure does not count: one more trial
        bridge.on_trial_complete(
            "ray4", {"eval_loss": 3.0, "epoch": 1.0, "best_eval_loss": 3.0, BUDGET_DONE: True}
        )
        assert bridge.suggest("ray5") == OptunaBridge.FINISHED
    finally:
        bridge.close()


def test_interrupted_trials_are_failed_and_requeued(tmp_path: Path):
    bridge, study, _ = _bridge(tmp_path, target=5)
    try:
        config = bridge.suggest("ray0")
        bridge.abandon_live()
        trials = study.get_trials()
        assert trials[0].state == TrialState.FAIL and trials[0].user_attrs["fail_reason"] == "interrupted"
        assert trials[1].state == TrialState.WAITING and trials[1].user_attrs["requeued_from"] == 0
        # the re-queued trial will be asked with exactly the interrupted trial's searched parameters
        assert trials[1].user_attrs[storage_mod.ENQUEUED_ATTR] == trials[0].params
        assert trials[0].params == {k: config["params"][k] for k in trials[0].params}
        again = space.suggest(study.ask(), storage_mod.spec_of(study).space)
        assert {k: again[k] for k in trials[0].params} == trials[0].params
    finally:
        bridge.close()


def test_a_trial_no_run_claimed_is_recovered_after_the_orphan_grace(tmp_path: Path, monkeypatch):
    """A driver killed between creating a trial and writing its host/pid left it RUNNING for ever,
    and a rerun one trial short of its target waited on it for ever (seen in test_faults)."""
    bridge, study, _ = _bridge(tmp_path, target=5)
    bridge.close()
    study.ask()  # created RUNNING, never claimed
    spec = storage_mod.spec_of(study)
    assert recover_stale(study, spec) == []  # young: its run may be writing its attributes now
    monkeypatch.setattr(recovery, "ORPHAN_S", 0.0)
    assert recover_stale(study, spec) == [0]
    # it drew no parameters: nothing to put back in the queue (a new trial samples afresh)
    assert [t.state for t in study.get_trials()] == [TrialState.FAIL]
    # one taken from the queue, killed before it wrote its parameters: the queued ones go back
    storage_mod.enqueue(study, {"learning_rate": 1e-3})
    study.ask()
    assert recover_stale(study, spec) == [1]
    trials = study.get_trials()
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.FAIL, TrialState.WAITING]
    assert trials[2].user_attrs[storage_mod.ENQUEUED_ATTR] == {"learning_rate": 1e-3}
    assert trials[2].user_attrs["requeued_from"] == 1
    assert study.ask().suggest_float("learning_rate", 1e-4, 1e-2, log=True) == 1e-3  # asked as queued


def test_a_live_run_rechecking_keeps_its_own_trials(tmp_path: Path):
    bridge, study, _ = _bridge(tmp_path, target=5)
    try:
        bridge.suggest("ray0")
        spec = storage_mod.spec_of(study)
        assert recover_stale(study, spec, running_here=True) == []  # the bridge's periodic check
        assert recover_stale(study, spec) == [0]  # a new run in this process: a leftover
    finally:
        bridge.close()


def test_dead_run_trials_are_recovered_once(tmp_path: Path):
    bridge, study, _ = _bridge(tmp_path, target=5)
    bridge.suggest("ray0")
    bridge.close()
    # pretend the trial's driver died: a pid that cannot exist on this host
    storage = storage_mod.backend(study)
    trial_id = storage.get_trial_id_from_study_id_trial_number(storage_mod.study_id(study), 0)
    storage.set_trial_user_attr(trial_id, "pid", 2**22 + 1)
    spec = storage_mod.spec_of(study)
    assert recover_stale(study, spec) == [0]
    assert recover_stale(study, spec) == []
    states = [t.state for t in study.get_trials()]
    assert states == [TrialState.FAIL, TrialState.WAITING]


def test_a_run_whose_heartbeat_stopped_on_another_host_is_recovered_once(tmp_path: Path, monkeypatch):
    """Optuna's ``fail_stale_trials`` fails a trial whose heartbeat is older than the grace period;
    hpo re-queues its parameters, exactly once however many runs look."""
    monkeypatch.setattr(storage_mod, "HEARTBEAT_S", 1)
    monkeypatch.setattr(storage_mod, "GRACE_S", 5)
    bridge, study, _ = _bridge(tmp_path, target=5)
    config = bridge.suggest("ray0")
    bridge.close()
    storage = storage_mod.backend(study)
    trial_id = storage.get_trial_id_from_study_id_trial_number(storage_mod.study_id(study), 0)
    storage.set_trial_user_attr(trial_id, "host", "elsewhere")  # not this host's to check by pid
    spec = storage_mod.spec_of(study)
    assert recover_stale(study, spec) == []  # beating a moment ago
    time.sleep(6)
    other = storage_mod.load(spec.name, f"sqlite:///{tmp_path / 'hpo.db'}", heartbeat=True)
    assert recover_stale(other, spec) == [0]
    assert recover_stale(study, spec) == []
    trials = study.get_trials()
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.WAITING]
    assert trials[1].user_attrs["requeued_from"] == 0
    assert trials[1].user_attrs[storage_mod.ENQUEUED_ATTR] == trials[0].params
    assert trials[0].params == {k: config["params"][k] for k in trials[0].params}


def test_at_the_tail_the_running_trials_are_told_to_take_the_idle_cores(tmp_path: Path):
    share = tmp_path / "trials" / ".threads-run1"
    bridge, _, _ = _bridge(tmp_path, target=3, threads=(share, 1, 2))
    try:
        bridge.suggest("ray0"), bridge.suggest("ray1")
        assert share.read_text() == "1\n"  # two slots, two trials: one core each
        bridge.on_trial_complete(
            "ray0", {"eval_loss": 2.0, "epoch": 1.0, "best_eval_loss": 2.0, BUDGET_DONE: True}
        )
        assert share.read_text() == "1\n"  # a trial is still to come: its slot is not idle
        bridge.suggest("ray2")
        bridge.on_trial_complete(
            "ray1", {"eval_loss": 2.0, "epoch": 1.0, "best_eval_loss": 2.0, BUDGET_DONE: True}
        )
        assert share.read_text() == "2\n"  # the last trial alone: both cores
    finally:
        bridge.close()


def test_a_trial_interrupted_before_its_own_checkpoint_passes_on_the_one_it_resumed_from(
    tmp_path: Path, monkeypatch
):
    """Trial 0 wrote a checkpoint and was killed; trial 1, re-queued to resume from it, was killed
    before it wrote one of its own (here before it even claimed a folder): its re-queue must carry
    trial 0's checkpoint on, and the garbage collector must keep that checkpoint while a queued
    trial is to resume from it (found by tests/test_fault_sweep.py: the chain restarted from
    scratch)."""
    from hpo.checkpoint import POINTER

    bridge, study, _ = _bridge(tmp_path, target=5)
    bridge.close()
    spec = storage_mod.spec_of(study)
    first = tmp_path / "trials" / "00000"
    (first / "step-0000004").mkdir(parents=True)
    (first / POINTER).write_text("step-0000004")
    checkpoint = str(first / "step-0000004")
    zero = study.ask()
    zero.set_user_attr("trial_dir", str(first))
    zero.set_user_attr("fail_reason", "interrupted")
    study.tell(zero, state=TrialState.FAIL)
    storage_mod.enqueue(study, {"learning_rate": 1e-3}, requeued_from=0, resume_checkpoint=checkpoint)
    assert study.ask().number == 1  # taken from the queue; then its driver died
    monkeypatch.setattr(recovery, "ORPHAN_S", 0.0)
    assert recover_stale(study, spec) == [1]
    trials = study.get_trials()
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.FAIL, TrialState.WAITING]
    assert trials[2].user_attrs["requeued_from"] == 1
    assert trials[2].user_attrs["resume_checkpoint"] == checkpoint
    minimize = optuna.study.StudyDirection.MINIMIZE
    assert checkpoint not in checkpoints_to_delete(trials, keep=1, direction=minimize)
    # once no trial is to resume from it, it goes
    assert checkpoints_to_delete(trials[:2], keep=1, direction=minimize) == [checkpoint]


def test_a_trial_failed_by_a_run_that_died_before_re_queuing_it_is_re_queued_once(tmp_path: Path):
    """The recovery fails a dead run's trial, then re-queues its parameters: a rerun killed between
    those writes left the trial FAIL and its parameters in no queue, lost for good (found by
    tests/test_fault_sweep.py). The failing run names itself on the trial; once it is gone, the
    next recovery re-queues the trial, once."""
    bridge, study, _ = _bridge(tmp_path, target=5)
    bridge.suggest("ray0")
    bridge.suggest("ray1")
    bridge.close()
    storage = storage_mod.backend(study)
    ids = [storage.get_trial_id_from_study_id_trial_number(storage_mod.study_id(study), n) for n in (0, 1)]
    # a rerun failed both (their run had died), then died itself before it re-queued trial 0;
    # trial 1's recoverer is alive (re-queuing it right now): it is left to that process
    for trial_id, pid in zip(ids, (2**22 + 1, os.getppid()), strict=True):
        storage.set_trial_user_attr(trial_id, "fail_reason", "interrupted")
        storage.set_trial_user_attr(
            trial_id, recovery.REQUEUER_ATTR, {"host": socket.gethostname(), "pid": pid}
        )
        storage.set_trial_state_values(trial_id, TrialState.FAIL)
    spec = storage_mod.spec_of(study)
    assert recover_stale(study, spec) == [0]
    assert recover_stale(study, spec) == []
    trials = study.get_trials()
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.FAIL, TrialState.WAITING]
    assert trials[2].user_attrs["requeued_from"] == 0
    assert trials[2].user_attrs[storage_mod.ENQUEUED_ATTR] == trials[0].params


def test_a_run_names_itself_on_the_trials_it_fails_as_interrupted(tmp_path: Path):
    bridge, study, _ = _bridge(tmp_path, target=5)
    try:
        bridge.suggest("ray0")
        bridge.abandon_live()
        by = study.get_trials()[0].user_attrs[recovery.REQUEUER_ATTR]
        assert by == {"host": socket.gethostname(), "pid": os.getpid()}
    finally:
        bridge.close()


def test_a_queued_trial_killed_while_writing_its_parameters_is_re_queued_with_all_of_them(
    tmp_path: Path, monkeypatch
):
    """A trial taken from the queue writes its parameters one storage write at a time: killed after
    some, it was re-queued with only those and the rest sampled afresh (found by
    tests/test_fault_sweep.py: trial 5 lost its queued dropout)."""
    bridge, study, _ = _bridge(tmp_path, target=5)
    bridge.close()
    queued = {"learning_rate": 1e-3, "batch_size": 16, "dropout": 0.05}
    storage_mod.enqueue(study, queued, requeued_from=7)
    study.ask().suggest_float("learning_rate", 1e-4, 1e-2, log=True)  # then its driver died
    monkeypatch.setattr(recovery, "ORPHAN_S", 0.0)
    assert recover_stale(study, storage_mod.spec_of(study)) == [0]
    trials = study.get_trials()
    assert trials[0].params == {"learning_rate": 1e-3}
    assert trials[1].user_attrs[storage_mod.ENQUEUED_ATTR] == queued
