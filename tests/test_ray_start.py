"""A local Ray that hpo starts with Ray's public ``ray.init``: it runs actors with runtime
environments (Tune's trials use one), starts no dashboard, and stops with nothing left behind. The
start is real (raystart.start in a fresh process)."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.conftest import ROOT


def test_a_local_ray_starts_works_and_stops(tmp_path):
    code = f"""
import os, subprocess
from pathlib import Path
import ray
from hpo import raystart
assert raystart.start(Path({str(tmp_path / "runs")!r}))
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
            if "dashboard/dashboard.py" in args:
                print("DASHBOARD", "minimal" if "--minimal" in args else "full")
finally:
    raystart.stop()
def alive(pid):
    try:
        return Path(f"/proc/{{pid}}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False
mine.discard(os.getpid())
left = [p for p in mine if alive(p)]
print("STARTED", len(mine), "LEFT", left)
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
    assert "DASHBOARD full" not in lines  # include_dashboard=False: at most Ray's minimal one
    stopped = next(line for line in lines if line.startswith("STARTED "))
    assert int(stopped.split()[1]) >= 2 and stopped.endswith("LEFT []"), stopped  # ray.shutdown ended them
