"""Fault injection on the real stack: the driver is really killed (SIGKILL) or interrupted
(SIGINT) at a moment chosen by polling the storage, and a rerun of the same command finishes
the study with nothing lost and nothing run twice. A trial that runs out of memory fails alone."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import optuna
import pytest
from optuna.trial import TrialState

from hpo.storage import ENQUEUED_ATTR
from tests.conftest import run_cli, small_spec

pytestmark = pytest.mark.e2e
TARGET = 5


def _start_run(tmp_path, url, env=None):
    return subprocess.Popen(
        [sys.executable, "-m", "hpo.cli", "run", "--trials", str(TARGET), "--storage", url],
        cwd=tmp_path,
        env={**os.environ, **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _wait_for_running_checkpoint(url: str, name: str, proc, timeout: float = 240) -> None:
    """Poll the storage until a RUNNING trial has written a checkpoint (the moment to strike)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        assert proc.poll() is None, proc.stdout.read()
        study = optuna.load_study(study_name=name, storage=url)
        if any(t.state == TrialState.RUNNING and t.user_attrs.get("checkpoint") for t in study.get_trials()):
            return
        time.sleep(0.5)
    pytest.fail("no running trial wrote a checkpoint in time")


def _setup(tmp_path, name):
    url = f"sqlite:///{tmp_path / 'hpo.db'}"
    # epochs fixed at 2 and a mild schedule, so trials live long enough to be caught mid-run; each
    # best written as it is found, so a killed trial has a checkpoint to resume from
    spec = small_spec(
        tmp_path,
        name=name,
        space={"epochs": 2},
        schedule={"reduction_factor": 3},
        training={"save_best": "immediate"},
    )
    assert run_cli("study", "create", str(spec), "--storage", url, cwd=tmp_path).returncode == 0
    return url


def _check_finished(url, name):
    trials = optuna.load_study(study_name=name, storage=url).get_trials()
    states = [t.state for t in trials]
    assert states.count(TrialState.COMPLETE) + states.count(TrialState.PRUNED) == TARGET
    assert TrialState.RUNNING not in states and TrialState.WAITING not in states
    interrupted = [t for t in trials if t.user_attrs.get("fail_reason") == "interrupted"]
    assert interrupted, "the killed run's trials must be marked FAIL interrupted"
    for t in interrupted:
        # its parameters were re-queued and ran again (exactly once); a trial killed before it had
        # written them is re-queued with those it was enqueued with, and without any is not
        drawn = t.params or t.user_attrs.get(ENQUEUED_ATTR) or {}
        again = [u for u in trials if u.user_attrs.get("requeued_from") == t.number]
        assert len(again) == (1 if drawn else 0)
        assert all(u.params == drawn for u in again)
    return trials


def test_sigkill_of_the_driver_loses_nothing(tmp_path, tiny_model):
    url = _setup(tmp_path, "kill")
    proc = _start_run(tmp_path, url)
    _wait_for_running_checkpoint(url, "kill", proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    time.sleep(2)
    r = run_cli("run", "--trials", str(TARGET), "--storage", url, cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "recovered" in r.stdout
    trials = _check_finished(url, "kill")
    assert any(t.user_attrs.get("resumed_from") for t in trials), (
        "a trial with a checkpoint must resume from it"
    )


def test_ctrl_c_stops_within_seconds_and_a_rerun_resumes(tmp_path, tiny_model):
    url = _setup(tmp_path, "intr")
    proc = _start_run(tmp_path, url)
    _wait_for_running_checkpoint(url, "intr", proc)
    t0 = time.time()
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=60)
    assert time.time() - t0 < 20
    assert proc.returncode == 130, out
    assert "interrupted" in out and "Traceback" not in out
    r = run_cli("run", "--trials", str(TARGET), "--storage", url, cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    _check_finished(url, "intr")


def test_an_out_of_memory_trial_fails_alone_and_the_study_completes(tmp_path, tiny_model):
    url = _setup(tmp_path, "oom")
    r = run_cli("run", "--trials", "3", "--storage", url, cwd=tmp_path, env={"HPO_TEST_FAIL": "1:oom"})
    assert r.returncode == 0, r.stdout + r.stderr
    trials = optuna.load_study(study_name="oom", storage=url).get_trials()
    failed = [t for t in trials if t.state == TrialState.FAIL]
    assert [t.number for t in failed] == [1]
    assert failed[0].user_attrs["error_class"] == "OutOfMemory"
    message = failed[0].user_attrs["error_message"]
    assert message.startswith("out of memory at batch_size") and "max_micro_batch: auto" in message
    assert sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials) == 3


def test_a_cause_that_fails_every_trial_stops_the_run(tmp_path, tiny_model):
    url = _setup(tmp_path, "allfail")
    r = run_cli(
        "run",
        "--trials",
        "10",
        "--max-failures",
        "2",
        "--storage",
        url,
        cwd=tmp_path,
        env={"HPO_TEST_FAIL": "*:error"},
    )
    assert r.returncode == 1
    assert "the last 2 trials failed with RuntimeError: injected failure" in r.stderr
    assert "Traceback" not in r.stderr
