"""Several writers: two `hpo run` processes on one PostgreSQL study split the target, and
readers (`hpo study show`) work on SQLite while a run writes."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import optuna
import pytest
from optuna.trial import TrialState

from tests.conftest import run_cli, small_spec

pytestmark = pytest.mark.e2e


def _popen(args, cwd):
    return subprocess.Popen(
        [sys.executable, "-m", "hpo.cli", *args],
        cwd=cwd,
        env=dict(os.environ),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def test_two_runs_on_postgresql_split_the_target(tmp_path, pg_url, tiny_model):
    spec = small_spec(tmp_path, name="shared", space={"epochs": 1})
    assert run_cli("study", "create", str(spec), "--storage", pg_url, cwd=tmp_path).returncode == 0
    dirs = [tmp_path / "machine-a", tmp_path / "machine-b"]
    procs = []
    for d in dirs:
        d.mkdir()
        procs.append(_popen(["run", "--trials", "6", "--concurrency", "1", "--storage", pg_url], d))
    outs = [p.communicate(timeout=900)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    trials = optuna.load_study(study_name="shared", storage=pg_url).get_trials()
    finished = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert len(finished) == 6
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    runs = {t.user_attrs["hpo_run"] for t in finished}
    assert len(runs) == 2, "both processes must have run trials"
    ray_ids = [t.user_attrs["ray_trial_id"] + t.user_attrs["hpo_run"] for t in finished]
    assert len(set(ray_ids)) == len(ray_ids)
    # any trial closed unrun carries the reason, and was never trained
    for t in trials:
        if t.state == TrialState.FAIL:
            assert t.user_attrs.get("fail_reason", "").startswith("not needed"), t.user_attrs


def test_study_show_reads_sqlite_while_a_run_writes(tmp_path, tiny_model):
    url = f"sqlite:///{tmp_path / 'hpo.db'}"
    spec = small_spec(tmp_path, name="live")
    assert run_cli("study", "create", str(spec), "--storage", url, cwd=tmp_path).returncode == 0
    proc = _popen(["run", "--trials", "4", "--storage", url], tmp_path)
    reads = 0
    try:
        while proc.poll() is None and reads < 10:  # each read is a new process: 10 show it works
            r = run_cli("study", "show", "--json", "--storage", url, cwd=tmp_path)
            assert r.returncode == 0, r.stderr
            assert "locked" not in r.stderr
            reads += 1
            time.sleep(0.5)
    finally:
        out = proc.communicate(timeout=900)[0]
    assert proc.returncode == 0, out
    assert reads >= 3
