"""Warm trial processes (hpo/warmstart.py): a real warm process imports the trial's code, forks a
trial process for this test process (standing in for a Ray trial process), and that process runs
the real trial loop on the tiny model; then the same through a whole ``hpo run``."""

from __future__ import annotations

import gc
import math
import os
import signal
import stat
import time
from pathlib import Path

import pytest

from hpo import bookkeeping, cudaprobe, faultinject, trial, warmstart
from hpo.errors import TrialError
from tests.conftest import small_spec, trial_config
from tests.test_trial import PARAMS


@pytest.fixture(scope="module")
def warm(tmp_path_factory, tiny_model):
    w = warmstart.start(tiny_model)
    assert w is not None
    # the socket listens as soon as start returns (the driver binds it and passes it on): a Ray
    # trial process that connects while the warm process still imports waits instead of failing
    assert stat.S_ISSOCK(os.stat(w.address).st_mode)
    yield w
    kept = tmp_path_factory.mktemp("warmlog") / "warmstart.log"
    warmstart.stop(w, kept)
    assert not _alive(w.process.pid) and not Path(w.folder).exists()
    assert "ready in" in kept.read_text()


def _ppid(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _forked(warm) -> warmstart.TrialProcess:
    forked = warmstart.connect(warm.address)
    assert forked is not None
    return forked


def test_a_trial_runs_in_a_process_forked_from_the_warm_process(warm, prepared, tiny_model, tmp_path):
    forked = _forked(warm)
    assert forked.pid != os.getpid() and _ppid(forked.pid) == warm.process.pid
    assert warmstart.connect(warm.address) is forked  # one trial process per Ray process, reused
    reports: list[dict] = []
    config = trial_config(prepared, tiny_model, tmp_path / "t0", PARAMS)
    last = forked.run(config, reports.append)
    assert [r["epoch"] for r in reports] == [0.5, 1.0] and reports[-1]["budget_done"]
    assert last["eval_loss"] == reports[-1]["eval_loss"] and math.isfinite(last["eval_loss"])
    # what the trial decided there reaches this process's placement, as the runner reports it
    assert config["placement"]["device"] == "cpu" and config["placement"]["precision"] in ("bf16", "fp32")
    assert trial.best_checkpoint(tmp_path / "t0") is not None
    # the same trial run here gives the same losses: forking changes nothing of the computation
    here: list[dict] = []
    trial.run(trial_config(prepared, tiny_model, tmp_path / "here", PARAMS), here.append)
    assert [r["eval_loss"] for r in here] == pytest.approx([r["eval_loss"] for r in reports], abs=1e-6)


def test_a_stop_at_a_report_stops_the_trial_there_and_the_process_serves_the_next(
    warm, prepared, tiny_model, tmp_path
):
    forked = _forked(warm)
    reports: list[dict] = []

    def stop_at_first(metrics: dict) -> None:  # what Tune's report does when ASHA stops the trial
        reports.append(metrics)
        raise SystemExit(0)

    config = trial_config(prepared, tiny_model, tmp_path / "s", {**PARAMS, "epochs": 2})
    with pytest.raises(SystemExit):
        forked.run(config, stop_at_first)
    assert [r["epoch"] for r in reports] == [0.5]
    assert warmstart.connect(warm.address) is forked and _alive(forked.pid)
    again: list[dict] = []
    forked.run(trial_config(prepared, tiny_model, tmp_path / "n", PARAMS), again.append)
    assert again[-1]["budget_done"]


def test_a_failing_trial_keeps_its_error_class_and_message(warm, prepared, tiny_model, tmp_path, monkeypatch):
    monkeypatch.setenv(faultinject.FAIL_ENV, "7:oom")  # the forked process takes this process's environment
    for address in list(warmstart._CHILD):
        warmstart._CHILD[address].close()  # fork a new one, with the environment above
    forked = _forked(warm)
    config = {**trial_config(prepared, tiny_model, tmp_path / "f", PARAMS), "trial_number": 7}
    with pytest.raises(warmstart.TrialProcessError, match="out of memory") as e:
        forked.run(config, lambda m: None)
    assert e.value.error_class == "OutOfMemory"
    forked.close()


def test_a_sticky_cuda_error_ends_the_trial_process_and_the_next_trial_forks_anew(
    warm, prepared, tiny_model, tmp_path, monkeypatch
):
    """hpo/cudafault.py: CUDA cannot be used again in a process after such an error, so the forked
    process reports the trial as ``CudaError`` and exits; the Ray process forks a new one."""
    monkeypatch.setenv(faultinject.FAIL_ENV, "3:cuda")
    for address in list(warmstart._CHILD):
        warmstart._CHILD[address].close()  # fork a new one, with the environment above
    forked = _forked(warm)
    config = {**trial_config(prepared, tiny_model, tmp_path / "c", PARAMS), "trial_number": 3}
    with pytest.raises(warmstart.TrialProcessError, match="illegal memory access") as e:
        forked.run(config, lambda m: None)
    assert e.value.error_class == "CudaError" and "replaced" in str(e.value)
    assert warm.address not in warmstart._CHILD
    deadline = time.monotonic() + 5
    while _alive(forked.pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(forked.pid)
    fresh = _forked(warm)
    assert fresh.pid != forked.pid
    last = fresh.run(trial_config(prepared, tiny_model, tmp_path / "c2", PARAMS), lambda m: None)
    assert last["budget_done"]
    fresh.close()


def test_a_killed_trial_process_fails_its_trial_and_the_next_trial_forks_anew(
    warm, prepared, tiny_model, tmp_path
):
    forked = _forked(warm)

    def kill_it(metrics: dict) -> None:
        os.kill(forked.pid, signal.SIGKILL)

    with pytest.raises(TrialError, match="died"):
        forked.run(trial_config(prepared, tiny_model, tmp_path / "k", {**PARAMS, "epochs": 2}), kill_it)
    fresh = _forked(warm)
    assert fresh is not forked and fresh.pid != forked.pid
    last = fresh.run(trial_config(prepared, tiny_model, tmp_path / "k2", PARAMS), lambda m: None)
    assert last["budget_done"]


def test_a_trial_process_ends_with_the_process_it_serves(warm, tmp_path):
    code = (
        "import sys, time\n"
        "from hpo import warmstart\n"
        f"f = warmstart.connect({warm.address!r})\n"
        "print(f.pid, flush=True)\n"
        "time.sleep(60)\n"
    )
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        pid = int(proc.stdout.readline())
        assert _alive(pid)
    finally:
        proc.kill()
        proc.wait()
    deadline = time.monotonic() + 5
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _alive(pid)


MAPS = """\
55d0c0a00000-55d0c0a21000 rw-p 00000000 00:00 0    [heap]
7f3a10000000-7f3a10400000 r-xp 00000000 103:02 1234 /opt/venv/nvidia/cu13/lib/libcudart.so.13
7f3a20000000-7f3a20200000 r-xp 00000000 103:02 5678 /usr/lib/x86_64-linux-gnu/libnvidia-ml.so.1
7ffd1c3de000-7ffd1c3ff000 rw-p 00000000 00:00 0    [stack]
"""


@pytest.fixture(scope="module")
def fake_drivers(tmp_path_factory) -> dict[str, Path]:
    """Two stand-ins for ``libcuda.so.1`` built here: one whose ``cuInit`` succeeds, one whose
    ``cuInit`` fails as the real driver does in a child forked after the parent started it."""
    import shutil
    import subprocess

    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip("needs a C compiler to build a stand-in CUDA driver")
    out = {}
    for name, code in (("works", 0), ("forked", 3)):  # 3: CUDA_ERROR_NOT_INITIALIZED
        folder = tmp_path_factory.mktemp(name)
        src = folder / "fake.c"
        src.write_text(
            f"int cuInit(unsigned int flags) {{ return {code}; }}\n"
            f"int cuDeviceGetCount(int *n) {{ *n = 1; return {code}; }}\n"
        )
        lib = folder / "libcuda.so.1"
        subprocess.run([cc, "-shared", "-fPIC", "-o", str(lib), str(src)], check=True)
        out[name] = lib
    return out


def test_the_cuda_driver_is_found_in_a_memory_map():
    assert cudaprobe.cuda_driver(MAPS) is None  # the runtime and NVML are not the driver
    line = (
        "7f3a30000000-7f3a31000000 r-xp 00000000 103:02 9 /usr/lib/x86_64-linux-gnu/libcuda.so.580.159.04\n"
    )
    assert cudaprobe.cuda_driver(MAPS + line) == "/usr/lib/x86_64-linux-gnu/libcuda.so.580.159.04"


def test_a_loaded_driver_is_probed_by_a_forked_child(tmp_path, fake_drivers):
    maps = tmp_path / "maps"
    maps.write_text(MAPS)
    assert cudaprobe.cuda_driver_started(str(maps)) is None  # no driver loaded: forks are safe
    for name, expected_safe in (("works", True), ("forked", False)):
        maps.write_text(MAPS + f"7f3a30000000-7f3a31000000 r-xp 00000000 103:02 9 {fake_drivers[name]}\n")
        why = cudaprobe.cuda_driver_started(str(maps))
        assert (why is None) == expected_safe, why
    assert "CUDA driver was started" in why and str(fake_drivers["forked"]) in why
    maps.write_text(MAPS + "7f3a30000000-7f3a31000000 r-xp 00000000 103:02 9 /gone/libcuda.so.1\n")
    assert cudaprobe.cuda_driver_started(str(maps)) is not None  # a driver that cannot load: unsafe


def test_a_warm_process_whose_imports_started_the_driver_lets_trials_import_themselves(
    tiny_model, fake_drivers, monkeypatch
):
    """The driver (a stand-in, preloaded) is mapped into the warm process and a forked child
    cannot initialize it: the warm process says so in one line and exits; a Ray trial process
    that connects finds nothing to fork from and runs its trial itself (``connect`` is None)."""
    monkeypatch.setenv("LD_PRELOAD", str(fake_drivers["forked"]))
    w = warmstart.start(tiny_model)
    assert w is not None
    try:
        assert warmstart.connect(w.address) is None
        assert w.process.wait(timeout=120) == 0
        log = (Path(w.folder) / "log").read_text()
        assert "the CUDA driver was started" in log and "trials will import for themselves" in log
        assert "ready in" not in log
    finally:
        warmstart.stop(w)


def test_no_address_or_no_warm_process_means_the_trial_runs_here(tmp_path):
    assert warmstart.connect(None) is None
    assert warmstart.connect(str(tmp_path / "nothing-listens-here")) is None


@pytest.mark.e2e
def test_a_run_forks_its_trials_and_leaves_no_process_behind(tmp_path, tiny_model, warm):
    """A real ``hpo run`` (Ray, Tune, ASHA, storage): the trials ran in forked trial processes,
    and when the run ends the warm process and its forks are gone."""
    import optuna

    from hpo.study import create_study, run_study

    url = f"sqlite:///{tmp_path / 'hpo.db'}"
    create_study(str(small_spec(tmp_path, rows=200)), storage=url)
    summary = run_study("small", trials=2, storage=url, runs_dir=str(tmp_path / "runs"), concurrency=2)
    assert summary.counts.get("COMPLETE", 0) + summary.counts.get("PRUNED", 0) == 2
    assert gc.isenabled()  # the run paused the collector only while it imported and started Ray
    log = (tmp_path / "runs" / "warmstart.log").read_text()
    assert "ready in" in log, log
    pid = int(log.split("warm process ")[1].split(":")[0])
    assert not _alive(pid)
    ours = warm.process.pid  # this module's own warm process and its forks are still alive
    # warm processes whose driver is this process (other runs on a shared machine have their own)
    left = [p for p in Path("/proc").glob("[0-9]*") if _is_warm(p) and _driver(p) == os.getpid()]
    assert not [p for p in left if ours not in (int(p.name), _ppid(int(p.name)))]
    trials = optuna.load_study(study_name="small", storage=url).get_trials()
    assert all(bookkeeping.read_error(Path(t.user_attrs["trial_dir"])) is None for t in trials)


def _driver(proc: Path) -> int | None:
    """The driver pid a warm process was started for (its last argument)."""
    try:
        return int((proc / "cmdline").read_bytes().rstrip(b"\0").split(b"\0")[-1])
    except (OSError, ValueError):
        return None


def _is_warm(proc: Path) -> bool:
    try:
        return b"hpo.warmstart" in (proc / "cmdline").read_bytes() and _alive(int(proc.name))
    except OSError:
        return False
