"""Data-parallel trials (``gpus_per_trial`` > 1): real torch.distributed over gloo on CPU (the
CPU fallback when the trial's GPUs are not CUDA devices, as here), real spawned ranks, real Ray.

What is checked: two ranks give the same evaluations as one process (with and without gradient
accumulation, with L1 and label smoothing, with a LoRA adapter), only rank 0 reports and writes
checkpoints, early stopping stops every rank, a rank that dies fails the trial at once with its
cause, the spawned ranks end when rank 0 is stopped (Ray's SystemExit) or SIGKILLed, the ranks'
store listens on 127.0.0.1 only, and through a Ray cluster with logical GPUs two 2-GPU trials run
at once and record ``world_size``/``ddp_backend``; bad requests are refused in one line.
"""

from __future__ import annotations

import contextlib
import json
import math
import multiprocessing
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from hpo import collective, placement, trial
from hpo import spec as spec_mod
from hpo.errors import SpecError, TrialError
from tests.conftest import ROOT, run_cli, small_spec, trial_config

PARAMS = {"learning_rate": 2e-3, "batch_size": 8, "epochs": 1, "dropout": 0.0, "weight_decay": 0.01}


def _config(prepared, tiny_model, folder: Path, gpus: float, **extra) -> dict:
    params = {**PARAMS, **extra.pop("params", {})}
    # fp32: the ranks' arithmetic is compared with one process's, and bf16 would round a rank's
    # half batch differently from the whole batch
    settings = {"max_micro_batch": 8, "cpus": 2, "gpus": gpus, "precision": "fp32", **extra}
    return trial_config(prepared, tiny_model, folder, params, **settings)


def _no_ranks_left() -> bool:
    deadline = time.monotonic() + 10
    while multiprocessing.active_children() and time.monotonic() < deadline:
        time.sleep(0.1)
    return not multiprocessing.active_children()


# ---------------------------------------------------------------- exactness, without Ray

CASES = {
    "plain": {},
    "accumulation": {  # a step of 16 blocks: 8 a rank, in passes of 2; L1 and smoothing on top
        "max_micro_batch": 2,
        "gradient_accumulation_steps": 2,
        "l1": 1e-4,
        "label_smoothing": 0.1,
    },
    "lora": {
        "adapter": {"type": "lora", "r": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["c_attn"]},
        "params": {"learning_rate": 5e-3},
    },
}


@pytest.mark.parametrize(  # plain in the default run; accumulation and LoRA (~10 s each) in the slow suite
    "case", [pytest.param(c, marks=() if c == "plain" else pytest.mark.slow) for c in CASES]
)
def test_two_ranks_match_one_process(prepared, tiny_model, tmp_path, case):
    one: list[dict] = []
    two: list[dict] = []
    trial.run(_config(prepared, tiny_model, tmp_path / "one", 0, **CASES[case]), one.append)
    config = _config(prepared, tiny_model, tmp_path / "two", 2, **CASES[case])
    trial.run(config, two.append)

    assert [r["step"] for r in two] == [r["step"] for r in one]  # reports from rank 0 only
    assert [r["epoch"] for r in two] == [r["epoch"] for r in one] == [0.5, 1.0]
    for a, b in zip(one, two, strict=True):
        assert b["eval_loss"] == pytest.approx(a["eval_loss"], rel=1e-5, abs=1e-5)
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-5, abs=1e-5)
        assert b["token_accuracy"] == pytest.approx(a["token_accuracy"], abs=1e-6)
        assert b["perplexity"] == pytest.approx(math.exp(b["eval_loss"]))
        assert b["tokens"] == a["tokens"]  # the global batch is the sampled batch_size
    assert config["placement"]["world_size"] == 2 and config["placement"]["ddp_backend"] == "gloo"
    assert config["placement"]["device"] == "cpu"
    assert config["placement"]["device_note"].endswith("data-parallel over 2 processes (gloo)")
    # rank 0 alone wrote the best checkpoint, and it holds the same weights as one process's
    best = trial.best_checkpoint(tmp_path / "two")
    assert best is not None and str(best) == two[-1]["checkpoint"]
    assert len(list((tmp_path / "two").glob("step-*"))) == 1
    single = trial.best_checkpoint(tmp_path / "one")
    assert single is not None and single.name == best.name
    from safetensors.torch import load_file

    a, b = load_file(single / "model.safetensors"), load_file(best / "model.safetensors")
    assert a.keys() == b.keys()
    # equal up to float summation order. AdamW amplifies it where a gradient is near 0: a summed
    # gradient whose sign flips moves that weight one step the other way (up to 2 x lr). Measured on
    # a 2-core EPYC (AVX2): 20 of 1.35M weights more than 1e-5 apart, the largest 1.3e-3 (lr 2e-3).
    lr = float(config["params"]["learning_rate"])
    apart = sum(int(((a[k] - b[k]).abs() > 1e-5).sum()) for k in a)
    assert apart < 1e-4 * sum(v.numel() for v in a.values())
    assert max(float((a[k] - b[k]).abs().max()) for k in a) < 2 * lr
    assert _no_ranks_left()


def test_early_stopping_stops_every_rank_together(prepared, tiny_model, tmp_path):
    # learning rate 0: every evaluation equals the first, so patience 1 ends the trial at the second
    config = _config(prepared, tiny_model, tmp_path / "es", 2, params={"learning_rate": 0.0, "epochs": 2})
    config.update(eval_every=0.25, early_stopping_patience=1)
    reports: list[dict] = []
    last = trial.run(config, reports.append)
    assert [r["epoch"] for r in reports] == [0.25, 0.5]
    assert last["early_stopped"] and last["budget_done"]
    assert _no_ranks_left()


def test_a_rank_that_dies_fails_the_trial_at_once(prepared, tiny_model, tmp_path):
    config = _config(prepared, tiny_model, tmp_path / "dies", 2, params={"epochs": 20})
    reported = threading.Event()
    out: dict = {}

    def report(metrics: dict) -> None:
        reported.set()

    def run() -> None:
        try:
            trial.run(config, report)
        except BaseException as e:  # noqa: BLE001
            out["error"], out["at"] = e, time.monotonic()

    thread = threading.Thread(target=run)
    thread.start()
    assert reported.wait(120)  # the first evaluation: both ranks are training
    (child,) = multiprocessing.active_children()
    killed = time.monotonic()
    os.kill(child.pid, signal.SIGKILL)
    thread.join(60)
    assert not thread.is_alive()
    assert isinstance(out["error"], TrialError)
    assert str(out["error"]) == "rank 1 of 2 died (killed by signal 9)"
    assert out["at"] - killed < 10  # the collective failed at once, not after the timeout


def test_a_stopped_rank_0_ends_the_other_ranks(prepared, tiny_model, tmp_path):
    """Ray stops a trial (ASHA) by raising SystemExit in it at a report."""

    def stop(metrics: dict) -> None:
        raise SystemExit(0)

    config = _config(prepared, tiny_model, tmp_path / "stop", 2, params={"epochs": 20})
    with pytest.raises(SystemExit):
        trial.run(config, stop)
    assert _no_ranks_left()


def test_the_ranks_die_with_a_sigkilled_rank_0(prepared, tiny_model, tmp_path):
    config = _config(prepared, tiny_model, tmp_path / "kill", 2, params={"epochs": 20})
    code = (
        "import json, sys, time\n"
        "from hpo import trial\n"
        "def report(m):\n"
        "    print('REPORTED', flush=True)\n"
        "    time.sleep(600)\n"
        f"trial.run(json.loads({json.dumps(json.dumps(config))}), report)\n"
    )
    rank0 = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert rank0.stdout is not None and rank0.stdout.readline().strip() == "REPORTED"
        children = _children(rank0.pid)  # rank 1, and multiprocessing's resource tracker
        ranks = [pid for pid in children if b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes()]
        assert len(ranks) == 1, children
        # the store and gloo listen on loopback only
        listening = _listening([rank0.pid, *ranks])
        assert listening and set(listening) <= LOOPBACK, listening
        rank0.send_signal(signal.SIGKILL)
        rank0.wait(10)
        deadline = time.monotonic() + 10
        while any(_alive(pid) for pid in children) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not any(_alive(pid) for pid in children)
    finally:
        rank0.kill()
        for pid in _children(rank0.pid):
            os.kill(pid, signal.SIGKILL)


LOOPBACK = {"0100007F", "00000000000000000000000001000000", "0000000000000000FFFF00000100007F"}


def _listening(pids: list[int]) -> list[str]:
    """The local addresses (hex, as /proc/net shows them) of the TCP sockets ``pids`` listen on."""
    inodes = set()
    for pid in pids:
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            with contextlib.suppress(OSError):
                link = os.readlink(fd)
                if link.startswith("socket:["):
                    inodes.add(link[8:-1])
    out = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            cols = line.split()
            if cols[3] == "0A" and cols[9] in inodes:
                out.append(cols[1].rsplit(":", 1)[0])
    return out


def test_a_spawned_rank_dies_with_its_parent_even_by_sigkill():
    """PR_SET_PDEATHSIG (and the pid watch) alone: no collective is involved here."""
    child = (
        "import os, sys, time\n"
        "from hpo import distributed\n"
        "distributed._die_with(int(sys.argv[1]))\n"
        "print('WATCHING', flush=True)\n"
        "time.sleep(600)\n"
    )
    parent = (
        "import os, subprocess, sys, time\n"
        f"c = subprocess.Popen([sys.executable, '-c', {child!r}, str(os.getpid())])\n"
        "print(c.pid, flush=True)\n"
        "time.sleep(600)\n"
    )
    p = subprocess.Popen([sys.executable, "-c", parent], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    pid = 0
    try:
        assert p.stdout is not None
        pid = int(p.stdout.readline())
        assert p.stdout.readline().strip() == "WATCHING"
        p.send_signal(signal.SIGKILL)
        p.wait(10)
        deadline = time.monotonic() + 5
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _alive(pid)
    finally:
        p.kill()
        if pid and _alive(pid):
            os.kill(pid, signal.SIGKILL)


def _children(pid: int) -> list[int]:
    out = []
    for p in Path("/proc").iterdir():
        try:
            if p.name.isdigit() and int((p / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(p.name))
        except (OSError, ValueError, IndexError):
            pass
    return out


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")  # a zombie has ended (no init reaps it in some containers)


def test_the_ranks_store_listens_on_loopback_only():
    store = collective.loopback_store(2, 5.0)
    try:
        listening = []
        for table in ("/proc/net/tcp", "/proc/net/tcp6"):
            with open(table) as f:
                for line in f.read().splitlines()[1:]:
                    local, state = line.split()[1], line.split()[3]
                    if state == "0A" and int(local.rsplit(":", 1)[1], 16) == store.port:
                        listening.append(local.rsplit(":", 1)[0])
        assert listening == ["0100007F"]  # 127.0.0.1, nothing else
    finally:
        del store


def test_a_batch_that_does_not_split_fails_the_trial_clearly(prepared, tiny_model, tmp_path):
    config = _config(prepared, tiny_model, tmp_path / "odd", 2, params={"batch_size": 9})
    with pytest.raises(TrialError, match=r"space.batch_size 9 is not divisible by 2"):
        trial.run(config, lambda m: None)


# ---------------------------------------------------------------- requests and refusals (pure)


def test_whole_gpus_above_one_are_data_parallel():
    assert [placement.world_size(g) for g in (0, 0.25, 1, 2, 4)] == [1, 1, 1, 2, 4]
    assert placement.request_problems(1, 2) == []
    assert placement.request_problems(1, 1.5) == [f"gpus_per_trial = 1.5: {placement.WHOLE_GPUS}"]
    # a node holds a 2-GPU trial per 2 GPUs; a trial never spans nodes
    p = placement.plan([(4, 2), (4, 2)], cpus=1, gpus=2)
    assert (p.fits, p.concurrency, p.problem) == (2, 2, None)
    p = placement.plan([(4, 2), (4, 2)], cpus=1, gpus=4)
    assert p.problem == (
        "gpus_per_trial = 4: no node of the Ray cluster holds one trial (1 CPU + 4 GPU; largest node: "
        "4 CPU, 2 GPU) (a trial's GPUs are on one node); lower it"
    )
    p = placement.plan([(4, 0)], cpus=1, gpus=2)
    assert p.gpus == 0 and p.notes == [
        "no GPU in the Ray cluster: trials run on CPUs (1 each, one process each (data-parallel needs GPUs))"
    ]


def test_a_rank_trains_on_its_own_gpu():
    assert placement.trial_device(2, ["3", "5"], "3,5", 2, rank=0) == placement.Device("cuda")
    assert placement.trial_device(2, ["3", "5"], "3,5", 2, rank=1) == placement.Device("cuda:1")
    assert placement.trial_device(2, None, None, 2, rank=1) == placement.Device("cuda:1")
    note = placement.trial_device(2, ["0", "1"], "0,1", 0, rank=1).note
    assert (
        note == "logical GPU 0,1 (CUDA_VISIBLE_DEVICES=0,1) is not a CUDA device on this node: trained on CPU"
    )


@pytest.mark.parametrize(
    ("resources", "space", "problem"),
    [
        ({"gpus_per_trial": 2}, {}, None),  # batch_size choices 8, 16
        ({"gpus_per_trial": 4}, {}, None),
        (
            {"gpus_per_trial": 2},
            {"batch_size": {"type": "categorical", "choices": [8, 9]}},
            "resources: gpus_per_trial = 2 splits every batch over 2 GPUs, but space.batch_size 9 is not "
            "divisible by 2; use multiples of 2 (or fewer GPUs a trial)",
        ),
        (
            {"gpus_per_trial": 2},
            {"batch_size": {"type": "int", "low": 8, "high": 16}},
            "resources: gpus_per_trial = 2 splits every batch over 2 GPUs, but space.batch_size is searched "
            "over the range 8..16, which holds sizes not divisible by 2; search it with type: categorical "
            "over multiples of 2 (e.g. choices: [8, 16])",
        ),
        (
            {"gpus_per_trial": 1.5},
            {},
            f"resources.gpus_per_trial: {placement.WHOLE_GPUS} (got 1.5)",
        ),
        ({"gpus_per_trial": 0.5}, {"batch_size": 7}, None),
    ],
)
def test_the_spec_refuses_what_a_data_parallel_trial_cannot_split(tmp_path, resources, space, problem):
    path = small_spec(tmp_path, resources=resources, space=space)
    if problem is None:
        spec_mod.load(path)
        return
    with pytest.raises(SpecError) as e:
        spec_mod.load(path)
    assert e.value.problems == [problem]


def test_the_cli_refuses_a_batch_the_gpus_cannot_split_in_one_line(tmp_path, tiny_model):
    url = f"sqlite:///{tmp_path / 'hpo.db'}"
    bad = small_spec(
        tmp_path, name="odd", space={"batch_size": {"type": "categorical", "choices": [6, 9]}},
        resources={"gpus_per_trial": 2},
    )  # fmt: skip
    r = run_cli("study", "create", str(bad), "--storage", url, cwd=tmp_path)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines() == [
        f"error: {bad}: resources: gpus_per_trial = 2 splits every batch over 2 GPUs, but space.batch_size "
        "9 is not divisible by 2; use multiples of 2 (or fewer GPUs a trial)"
    ]
    good = small_spec(tmp_path, name="even")  # batch_size 8 or 16
    assert run_cli("study", "create", str(good), "--storage", url, cwd=tmp_path).returncode == 0
    r = run_cli("run", "--trials", "1", "--gpus-per-trial", "3", "--storage", url, cwd=tmp_path)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines() == [
        "error: --gpus-per-trial: gpus_per_trial = 3 splits every batch over 3 GPUs, but space.batch_size "
        "8, 16 are not divisible by 3; use multiples of 3 (or fewer GPUs a trial)"
    ]
    assert not (tmp_path / "runs").exists()


# ---------------------------------------------------------------- through Ray


@pytest.fixture(scope="module")
def four_gpus() -> Iterator:
    """Head and one more node, each with 1 CPU and 2 logical GPUs (no CUDA behind them)."""
    from tests.test_cluster import local_cluster

    with local_cluster({"num_cpus": 1, "num_gpus": 2}, {"num_cpus": 1, "num_gpus": 2}) as cluster:
        yield cluster


@pytest.mark.e2e
def test_two_gpu_trials_run_data_parallel_two_at_once(tmp_path, tiny_model, four_gpus):
    from hpo import create_study, run_study

    url = f"sqlite:///{tmp_path / 'hpo.db'}"
    spec = small_spec(
        tmp_path,
        name="ddp",
        rows=120,
        space={"epochs": 1},
        schedule={"grace_period": 1},  # no rung below the budget: both trials run it all
        training={"eval_every": 0.5},
        resources={"cpus_per_trial": 0.5, "gpus_per_trial": 2, "concurrency": None},
    )
    create_study(spec, storage=url)
    summary = run_study("ddp", trials=2, storage=url, runs_dir=tmp_path / "runs", address=four_gpus.address)

    assert summary.concurrency == 2  # 2 GPUs a node, a 2-GPU trial a node
    trials = optuna.load_study(study_name="ddp", storage=url).get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 2, [t.user_attrs for t in trials]
    first_done = min(t.datetime_complete.timestamp() for t in trials)
    assert all(t.user_attrs["started_at"] < first_done for t in trials)  # at once
    attrs = [t.user_attrs for t in trials]
    assert len({a["node_id"] for a in attrs}) == 2
    for a in attrs:
        assert a["world_size"] == 2 and a["ddp_backend"] == "gloo" and a["device"] == "cpu"
        assert a["cuda_visible_devices"] in ("0,1", "1,0")
        assert a["device_note"] == (
            f"logical GPU {a['cuda_visible_devices']} (CUDA_VISIBLE_DEVICES={a['cuda_visible_devices']}) "
            "is not a CUDA device on this node: trained on CPU, data-parallel over 2 processes (gloo)"
        )
        assert a["best_eval_loss"] > 0 and a["tokens"] > 0 and Path(a["checkpoint"]).is_dir()
    assert all(t.intermediate_values for t in trials)  # every evaluation reached the storage

    # more GPUs a trial than any node has: refused at once, naming the field
    with pytest.raises(SpecError, match=r"gpus_per_trial = 4: no node of the Ray cluster holds one trial"):
        run_study(
            "ddp",
            trials=3,
            storage=url,
            runs_dir=tmp_path / "runs",
            address=four_gpus.address,
            gpus_per_trial=4,
        )
