"""A local Ray that hpo starts: quick, without the helpers a local run never uses, and Ray's own
start-up code back in place afterwards. The start is real (runner._start_ray in a fresh process)."""

from __future__ import annotations

import os
import subprocess
import sys

from hpo import localray
from tests.conftest import ROOT


def test_quick_start_swaps_rays_start_up_steps_only_while_it_runs():
    from ray._private import node, services

    def steps():
        return (
            services.get_node,
            services.start_api_server,
            node.Node.start_monitor,
            node.Node.start_log_monitor,
        )

    before = steps()
    with localray.quick_start():
        assert services.get_node is not before[0]
        assert services.start_api_server(None, None) == (None, None)
        assert node.Node.start_monitor is node.Node.start_log_monitor is localray._not_started
    assert steps() == before


def test_a_local_ray_starts_only_what_a_run_uses_and_works(tmp_path):
    code = f"""
import os, subprocess
from pathlib import Path
import ray
from hpo import runner
assert runner._start_ray(runner.RunOptions(target=1, runs_dir=Path({str(tmp_path / "runs")!r})))
try:
    @ray.remote(num_cpus=1)
    class Probe:
        def env(self):
            return os.environ.get("HPO_PROBE")
    actor = Probe.options(runtime_env={{"env_vars": {{"HPO_PROBE": "yes"}}}}).remote()
    print("ACTOR", ray.get(actor.env.remote(), timeout=60))
    print("CPUS", ray.cluster_resources().get("CPU"))
    ps = subprocess.run(["ps", "-eo", "ppid=,pid=,args="], capture_output=True, text=True).stdout
    rows = [line.split(None, 2) for line in ps.splitlines() if len(line.split(None, 2)) == 3]
    mine, grew = {{os.getpid()}}, True
    while grew:
        new = {{int(pid) for ppid, pid, _ in rows if int(ppid) in mine}} - mine
        mine |= new
        grew = bool(new)
    for ppid, pid, args in rows:
        if int(pid) in mine:
            print("PROC", args[:200])
finally:
    runner._stop_ray()
"""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    r = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, env=env, timeout=180
    )
    assert r.returncode == 0, r.stderr[-3000:]
    lines = r.stdout.splitlines()
    assert "ACTOR yes" in lines  # runtime environments (Tune's trial actors use one) still work
    assert any(line.startswith("CPUS ") and float(line.split()[1]) >= 1 for line in lines)
    procs = " ".join(line for line in lines if line.startswith("PROC"))
    assert "gcs_server" in procs and "raylet" in procs
    for skipped in ("autoscaler/_private/monitor.py", "log_monitor.py", "dashboard/dashboard.py"):
        assert skipped not in procs, skipped


def test_the_raylet_starts_its_python_workers_through_hpo_rayworker():
    from ray._private import services

    from hpo import rayworker

    seen = {}

    def start_raylet(redis_address, gcs_address, node_id, worker_path, setup_worker_path, temp_dir=None):
        seen.update(worker=worker_path, setup=setup_worker_path, temp=temp_dir)
        return "started"

    quick = localray._quick_workers(start_raylet)
    assert quick(None, "gcs", "node", "default_worker.py", "setup_worker.py", temp_dir="t") == "started"
    assert seen == {"worker": "default_worker.py", "setup": rayworker.__file__, "temp": "t"}
    assert localray._quick_workers(len) is len  # a start whose signature moved is left as it is
    # this Ray's own start_raylet still takes the argument, and quick_start swaps it
    original = services.start_raylet
    with localray.quick_start():
        assert services.start_raylet is not original
    assert services.start_raylet is original
