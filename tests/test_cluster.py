"""Scale-out on a real multi-node Ray cluster on this machine (``ray.cluster_utils.Cluster``: a head
and a second node, each with its own CPUs and logical GPUs, all on 127.0.0.1).

What is checked: concurrency follows the cluster's resources (a GPU each: 4 trials on 4 GPUs; half
a GPU each: 4 trials on 2 GPUs), trials land on both nodes with distinct GPUs, a logical GPU that
is no CUDA device sends the trial to the CPU with a note in its user attributes, every result
reaches the storage, ``hpo run --address`` joins a cluster with a PostgreSQL storage, and a Ray
that hpo starts itself listens on loopback only. Tiny data, one epoch, half a logical CPU a trial.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from tests.conftest import ROOT, run_cli, small_spec

pytestmark = pytest.mark.e2e

LOOPBACK = {"node_ip_address": "127.0.0.1", "include_dashboard": False}


@contextlib.contextmanager
def local_cluster(*nodes: dict) -> Iterator:
    """A Ray cluster of ``nodes`` (``num_cpus``/``num_gpus`` each) on 127.0.0.1, torn down after.

    ``RAY_TMPDIR`` points at a private folder while it lives: its session files and the
    "current cluster" address file Ray writes stay out of /tmp/ray, so no other ``ray.init()`` on
    this machine joins it.
    """
    from ray.cluster_utils import Cluster

    tmp = tempfile.mkdtemp(prefix="hpo-rc-", dir="/tmp")  # short: Ray's socket paths have a limit
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RAY_TMPDIR", tmp)
        mp.delenv("RAY_ADDRESS", raising=False)
        cluster = Cluster(initialize_head=True, head_node_args={**LOOPBACK, **nodes[0]})
        try:
            for node in nodes[1:]:
                cluster.add_node(**LOOPBACK, **node)
            cluster.wait_for_nodes()
            yield cluster
        finally:
            import ray

            if ray.is_initialized():
                ray.shutdown()
            cluster.shutdown()
            shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture(scope="module")
def four_gpus() -> Iterator:
    """Head and one more node, each with 1 CPU and 2 logical GPUs."""
    with local_cluster({"num_cpus": 1, "num_gpus": 2}, {"num_cpus": 1, "num_gpus": 2}) as cluster:
        yield cluster


def _spec(tmp_path: Path, name: str, gpus: float) -> Path:
    return small_spec(
        tmp_path,
        name=name,
        rows=120,
        space={"epochs": 1},
        schedule={"grace_period": 1},  # ASHA with no rung below the budget: every trial runs it all
        training={"eval_every": 0.5},
        resources={"cpus_per_trial": 0.5, "gpus_per_trial": gpus, "concurrency": None},
    )


def _run(tmp_path: Path, name: str, gpus: float, address: str, trials: int = 4):
    from hpo import create_study, run_study

    url = f"sqlite:///{tmp_path / 'hpo.db'}"
    create_study(_spec(tmp_path, name, gpus), storage=url)
    summary = run_study(name, trials=trials, storage=url, runs_dir=tmp_path / "runs", address=address)
    return summary, optuna.load_study(study_name=name, storage=url).get_trials()


def _at_once(trials) -> int:
    """How many trials had started (on their nodes) before the first one finished."""
    first_done = min(t.datetime_complete.timestamp() for t in trials)
    return sum(t.user_attrs["started_at"] < first_done for t in trials)


def _check_nodes_are_loopback(address: str) -> None:
    import ray

    ray.init(address=address, log_to_driver=False)
    try:
        assert {n["NodeManagerAddress"] for n in ray.nodes()} == {"127.0.0.1"}
    finally:
        ray.shutdown()


def test_a_gpu_each_runs_four_at_once_across_both_nodes(tmp_path, tiny_model, four_gpus):
    summary, trials = _run(tmp_path, "gpu1", 1, four_gpus.address)

    assert summary.concurrency == 4
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 4, [t.user_attrs for t in trials]
    assert _at_once(trials) == 4
    attrs = [t.user_attrs for t in trials]
    assert len({a["node_id"] for a in attrs}) == 2  # both nodes
    assert len({(a["node_id"], a["cuda_visible_devices"]) for a in attrs}) == 4  # a GPU each
    assert {a["cuda_visible_devices"] for a in attrs} == {"0", "1"}
    for a in attrs:  # logical GPUs: no CUDA device behind them, so the trial trained on CPU
        assert a["device"] == "cpu"
        assert a["device_note"] == (
            f"logical GPU {a['cuda_visible_devices']} (CUDA_VISIBLE_DEVICES={a['cuda_visible_devices']}) "
            "is not a CUDA device on this node: trained on CPU"
        )
        assert a["best_eval_loss"] > 0 and a["tokens"] > 0
    # a cluster run on a local SQLite file is told to use a shared database
    assert any("local SQLite storage" in n and "postgresql://" in n for n in summary.notes)
    assert any(n.startswith("2 nodes: each must see") for n in summary.notes)
    _check_nodes_are_loopback(four_gpus.address)


def test_hpo_run_address_joins_a_cluster_with_postgresql(tmp_path, tiny_model, four_gpus, pg_url):
    spec = _spec(tmp_path, "joined", 1)
    r = run_cli("study", "create", str(spec), "--storage", pg_url, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    runs = tmp_path / "shared" / "runs"
    r = run_cli(
        "run", "--trials", "2", "--storage", pg_url, "--address", four_gpus.address,
        "--runs-dir", str(runs), cwd=tmp_path, timeout=600,
    )  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr
    assert "2/2 finished" in r.stdout
    assert "SQLite" not in r.stdout  # a shared database: no warning
    trials = optuna.load_study(study_name="joined", storage=pg_url).get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 2
    for t in trials:
        assert t.user_attrs["node_id"] and t.user_attrs["device"] == "cpu"
        assert Path(t.user_attrs["checkpoint"]).is_relative_to(runs)


@pytest.mark.slow  # ~23 s; the default run keeps test_a_gpu_each_runs_four_at_once_across_both_nodes
def test_half_a_gpu_each_runs_four_at_once_on_two_gpus(tmp_path, tiny_model):
    with local_cluster({"num_cpus": 1, "num_gpus": 1}, {"num_cpus": 1, "num_gpus": 1}) as cluster:
        summary, trials = _run(tmp_path, "gpuhalf", 0.5, cluster.address)
    assert summary.concurrency == 4
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 4
    assert _at_once(trials) == 4
    attrs = [t.user_attrs for t in trials]
    nodes = [a["node_id"] for a in attrs]
    assert sorted(nodes.count(n) for n in set(nodes)) == [2, 2]  # two trials share each node's GPU
    assert {a["cuda_visible_devices"] for a in attrs} == {"0"}
    assert all(a["device"] == "cpu" and "not a CUDA device" in a["device_note"] for a in attrs)


def test_a_ray_hpo_starts_listens_on_loopback_only(tmp_path):
    """Even with ray imported first and RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=1 in the environment."""
    if not shutil.which("ss"):
        pytest.skip("needs `ss` (iproute2) to list listening sockets")
    code = f"""
import os, subprocess, ray
from pathlib import Path
from hpo import raystart
assert raystart.start(Path({str(tmp_path / "runs")!r}))
try:
    print("NODES", sorted({{n["NodeManagerAddress"] for n in ray.nodes()}}))
    mine, pids = {{os.getpid()}}, {{}}
    for p in Path("/proc").iterdir():
        try:
            pids[int(p.name)] = int((p / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (ValueError, OSError, IndexError):
            pass
    grew = True
    while grew:
        new = {{pid for pid, parent in pids.items() if parent in mine}} - mine
        mine |= new
        grew = bool(new)
    out = subprocess.run(["ss", "-Hltnp"], capture_output=True, text=True).stdout.splitlines()
    for line in out:
        owners = {{int(x.split("=")[1]) for x in line.split("users:")[-1].split(",") if x.startswith("pid=")}}
        if owners & mine:
            print("LISTEN", line.split()[3])
finally:
    raystart.stop()
"""
    env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "1"}
    env.pop("RAY_ADDRESS", None)
    r = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, env=env, timeout=180
    )
    assert r.returncode == 0, r.stderr[-3000:]
    lines = r.stdout.splitlines()
    assert "NODES ['127.0.0.1']" in lines
    listening = [line.split()[1] for line in lines if line.startswith("LISTEN")]
    assert listening, r.stdout  # the check saw Ray's sockets
    outward = [a for a in listening if not a.rsplit(":", 1)[0].strip("[]").endswith("127.0.0.1")]
    assert not outward, f"Ray listens beyond loopback: {outward}"


def test_requests_no_node_can_serve_are_refused_in_one_line(tmp_path, tiny_model):
    url = f"sqlite:///{tmp_path / 'hpo.db'}"
    spec = _spec(tmp_path, "refused", 0)
    assert run_cli("study", "create", str(spec), "--storage", url, cwd=tmp_path).returncode == 0
    # more than one GPU a trial is data-parallel over whole GPUs: 1.5 is refused before any work
    r = run_cli("run", "--trials", "1", "--gpus-per-trial", "1.5", "--storage", url, cwd=tmp_path)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "--gpus-per-trial: gpus_per_trial = 1.5: more than one GPU a trial must be a whole" in r.stderr
    assert not (tmp_path / "runs").exists()
    # more CPUs than any node has: Ray would wait forever, so hpo says what to change
    r = run_cli("run", "--trials", "1", "--cpus-per-trial", "64", "--storage", url, cwd=tmp_path)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "cpus_per_trial = 64: no node of the Ray cluster holds one trial" in r.stderr
    # nothing listens at the address: a clear line at once, not Ray's minutes of retries
    r = run_cli("run", "--trials", "1", "--address", "127.0.0.1:1", "--storage", url, cwd=tmp_path)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert "cannot reach a Ray cluster at 127.0.0.1:1 (Connection refused); start one there" in r.stderr
    assert optuna.load_study(study_name="refused", storage=url).get_trials() == []


def test_a_trials_placement_reaches_its_user_attributes():
    from hpo.bookkeeping import summary_attrs

    last = {
        "epoch": 1.0,
        "best_eval_loss": 2.0,
        "device": "cpu",
        "device_note": "logical GPU 1 (CUDA_VISIBLE_DEVICES=1) is not a CUDA device on this node",
        "cuda_visible_devices": "1",
        "node_id": "abc",
        "started_at": 1.5,
    }
    attrs = summary_attrs(last)
    assert {
        k: attrs[k] for k in ("device", "device_note", "cuda_visible_devices", "node_id", "started_at")
    } == {k: last[k] for k in ("device", "device_note", "cuda_visible_devices", "node_id", "started_at")}
