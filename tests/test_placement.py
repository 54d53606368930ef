"""Placement decisions with hand-picked numbers: what fits on a cluster, which device a trial uses,
what a cluster run is told. No Ray, no torch."""

from __future__ import annotations

import pytest

from hpo import placement
from hpo.placement import Device, node_fit, plan, request_problems, trial_device


@pytest.mark.parametrize(
    ("node", "cpus", "gpus", "fit"),
    [
        ((2, 0), 1, 0, 2),  # CPU trials: cores / cpus_per_trial
        ((2, 0), 0.5, 0, 4),  # logical fractions of a CPU
        ((3, 0), 2, 0, 1),
        ((8, 4), 1, 1, 4),  # a GPU each
        ((2, 4), 1, 1, 2),  # CPUs are the limit
        ((8, 1), 1, 0.25, 4),  # four trials share a GPU
        ((8, 2), 1, 0.3, 6),  # 0.3 packs 3 per GPU, never across two GPUs
        ((8, 1), 1, 0.5, 2),
        ((1, 1), 0.5, 0.5, 2),
        ((8, 0), 1, 0.5, 0),  # a GPU trial on a node without GPUs
        ((0.4, 4), 0.5, 1, 0),
        ((8, 2), 1, 1 / 3, 6),  # 1/3 in floating point still packs 3
    ],
)
def test_node_fit(node, cpus, gpus, fit):
    assert node_fit(*node, cpus, gpus) == fit


def test_plan_sums_nodes_and_defaults_concurrency_to_what_fits():
    p = plan([(1, 2), (1, 2)], cpus=0.5, gpus=1)
    assert (p.cpus, p.gpus, p.concurrency, p.fits, p.notes, p.problem) == (0.5, 1, 4, 4, [], None)
    assert plan([(1, 1), (1, 1)], 0.5, 0.5).concurrency == 4
    assert plan([(2, 0)], 1, 0).concurrency == 2


def test_plan_without_gpus_runs_gpu_trials_on_cpus_and_says_so_once():
    p = plan([(2, 0), (2, 0)], cpus=1, gpus=0.5)
    assert p.gpus == 0 and p.concurrency == 4
    assert p.notes == ["no GPU in the Ray cluster: trials run on CPUs (1 each)"]


def test_plan_with_fixed_concurrency_notes_when_it_exceeds_the_fit():
    p = plan([(2, 1)], cpus=1, gpus=1, concurrency=3)
    assert p.concurrency == 3 and p.fits == 1
    assert p.notes == ["concurrency 3 > 1 trials that fit at once: the rest wait for room"]
    assert plan([(2, 1)], 1, 1, concurrency=1).notes == []


def test_plan_refuses_a_trial_no_node_holds():
    p = plan([(2, 0)], cpus=4, gpus=0)
    assert p.problem == (
        "cpus_per_trial = 4: no node of the Ray cluster holds one trial (4 CPU; largest node: 2 CPU); "
        "lower it"
    )
    # a local Ray never grows: a fixed concurrency would wait forever too
    assert plan([(2, 0)], cpus=4, gpus=0, concurrency=2).problem == p.problem
    p = plan([(8, 0), (0.5, 1)], cpus=1, gpus=1)
    assert p.problem and p.problem.startswith("gpus_per_trial = 1: ") and "1 CPU + 1 GPU" in p.problem
    assert plan([], 1, 0).problem and "no live node" in plan([], 1, 0).problem


def test_plan_on_a_cluster_that_can_grow_waits_only_when_told():
    p = plan([(2, 0)], cpus=4, gpus=0, can_grow=True)
    assert p.problem and p.problem.endswith("lower it, or set --concurrency to wait for nodes to join")
    waiting = plan([(2, 0)], cpus=4, gpus=0, concurrency=2, can_grow=True)
    assert waiting.problem is None and waiting.concurrency == 2
    assert waiting.notes == [
        "no node holds a trial (4 CPU) now (largest node: 2 CPU): trials wait for nodes to join"
    ]


@pytest.mark.parametrize(
    ("cpus", "gpus", "problems"),
    [
        (1, 0, []),
        (0.5, 0.25, []),
        (1, 1, []),
        (0, 0, ["cpus_per_trial = 0: must be > 0 (fractions such as 0.5 are allowed)"]),
        (1, -1, ["gpus_per_trial = -1: must be >= 0"]),
        (1, 2, []),  # data-parallel over 2 GPUs (tests/test_distributed.py)
        (1, 1.5, [f"gpus_per_trial = 1.5: {placement.WHOLE_GPUS}"]),
    ],
)
def test_request_problems(cpus, gpus, problems):
    assert request_problems(cpus, gpus) == problems


def test_a_fraction_above_one_gpu_is_refused_with_the_alternatives():
    assert "whole number" in placement.WHOLE_GPUS and "data-parallel" in placement.WHOLE_GPUS
    assert "0.25" in placement.WHOLE_GPUS


@pytest.mark.parametrize(
    ("args", "device"),
    [
        ((0, None, None, 0), Device("cpu")),  # a CPU trial
        ((0, [], "", 2), Device("cpu")),  # a CPU trial on a GPU machine stays on CPU
        ((1, ["2"], "2", 1), Device("cuda")),  # Ray narrowed CUDA_VISIBLE_DEVICES to its GPU
        ((0.25, [0], "0", 1), Device("cuda")),  # a fraction: the shared GPU
        ((1, ["3", "1"], "3,1", 2), Device("cuda")),
        ((1, ["1"], None, 4), Device("cuda:1")),  # Ray left CUDA_VISIBLE_DEVICES alone
        ((1, None, None, 1), Device("cuda")),  # outside Ray with a GPU
    ],
)
def test_trial_device_on_real_gpus(args, device):
    assert trial_device(*args) == device


def test_trial_device_falls_back_to_cpu_with_a_note():
    d = trial_device(1, ["3"], "3", 0)  # a logical GPU: Ray declared it, CUDA has no such device
    assert d == Device(
        "cpu", "logical GPU 3 (CUDA_VISIBLE_DEVICES=3) is not a CUDA device on this node: trained on CPU"
    )
    assert trial_device(0.5, [1], None, 0).note == (
        "logical GPU 1 (CUDA_VISIBLE_DEVICES=unset) is not a CUDA device on this node: trained on CPU"
    )
    assert trial_device(1, [], "", 1) == Device("cpu", "Ray assigned no GPU to this trial: trained on CPU")
    assert trial_device(1, None, None, 0).device == "cpu"
    assert "torch finds no CUDA device" in (trial_device(1, None, None, 0).note or "")
    assert trial_device(1, ["5"], None, 2) == Device(
        "cpu", "GPU 5 is not among the 2 CUDA devices torch sees: trained on CPU"
    )


def test_cluster_notes():
    shared = ["/shared/runs/s", "/shared/cache"]
    assert placement.cluster_notes(False, True, "sqlite:///hpo.db", 3, shared) == []
    (sqlite,) = placement.cluster_notes(True, True, "sqlite:///hpo.db", 1, shared)
    assert "local SQLite storage (sqlite:///hpo.db)" in sqlite
    assert "--storage postgresql://" in sqlite and "docs/cluster.md" in sqlite
    assert placement.cluster_notes(True, False, "postgresql://u:***@db/hpo", 1, shared) == []
    (paths,) = placement.cluster_notes(True, False, "postgresql://u:***@db/hpo", 2, shared)
    assert paths.startswith("2 nodes: each must see /shared/runs/s and /shared/cache at the same paths")


@pytest.mark.parametrize(
    ("major", "wanted"), [(None, "fp32"), (6, "fp32"), (7, "fp32"), (8, "bf16"), (9, "bf16")]
)
def test_precision_is_bf16_from_ampere_on(major, wanted):
    assert placement.precision(major) == wanted  # V100 (7.0) and T4 (7.5) only emulate bf16


@pytest.mark.parametrize(("native", "wanted"), [(True, "bf16"), (False, "fp32")])
def test_precision_on_a_cpu_is_bf16_where_it_multiplies_bf16_natively(native, wanted):
    assert placement.precision(None, cpu_bf16=native) == wanted
    assert placement.precision(7, cpu_bf16=True) == "fp32"  # a GPU trial: the GPU decides


@pytest.mark.parametrize("requested", ["bf16", "fp32"])
@pytest.mark.parametrize(("major", "native"), [(None, False), (None, True), (7, False), (9, False)])
def test_precision_asked_for_is_used_anywhere(requested, major, native):
    assert placement.precision(major, native, requested) == requested


def test_bf16_asked_for_on_a_cpu_that_emulates_it_gets_a_note(tmp_path):
    avx2 = frozenset({"fpu", "sse2", "avx2", "fma"})
    note = placement.precision_note("bf16", avx2)
    assert note and note.startswith("training.precision: bf16 on a CPU without bf16 in hardware")
    for native in ("avx512_bf16", "amx_bf16"):
        assert placement.precision_note("bf16", avx2 | {native}) is None
    assert placement.precision_note("auto", avx2) is None and placement.precision_note("fp32", avx2) is None
    assert placement.precision_note("bf16", None) is None  # flags unknown: say nothing
    # the flags are read from /proc/cpuinfo's first "flags" line
    info = tmp_path / "cpuinfo"
    info.write_text(
        "processor\t: 0\nmodel name\t: AMD EPYC\nflags\t\t: fpu avx2 avx512_bf16\n\n"
        "processor\t: 1\nmodel name\t: AMD EPYC\nflags\t\t: fpu\n"
    )
    assert placement.cpu_flags(str(info)) == {"fpu", "avx2", "avx512_bf16"}
    assert placement.cpu_flags(str(tmp_path / "none")) is None
    assert placement.cpu_model(str(info)) == "AMD EPYC"
    assert placement.cpu_model(str(tmp_path / "none"))  # no /proc/cpuinfo: the architecture


@pytest.mark.parametrize(
    ("address", "host_port", "loopback"),
    [
        ("127.0.0.1:6379", ("127.0.0.1", 6379), True),
        ("localhost:6379", ("localhost", 6379), True),
        ("[::1]:6379", ("::1", 6379), True),
        ("10.0.0.1:6379", ("10.0.0.1", 6379), False),
        ("auto", None, False),
        ("ray://head:10001", None, False),
    ],
)
def test_addresses(address, host_port, loopback):
    assert placement.host_port(address) == host_port
    assert placement.is_loopback(address) is loopback


@pytest.mark.parametrize(
    ("cpus", "slots", "live", "tail", "threads"),
    [
        (1, 2, 2, True, 1),  # every slot busy
        (1, 2, 1, False, 1),  # a slot idle, but a trial is coming to it
        (1, 2, 1, True, 2),  # the last trial: both cores
        (2, 4, 3, True, 2),  # 8 CPUs, 3 trials: 2 each (never fewer than asked for)
        (1, 8, 3, True, 2),  # 8 CPUs, 3 trials: 2 each
        (1, 2, 0, True, 1),
    ],
)
def test_tail_threads(cpus, slots, live, tail, threads):
    assert placement.tail_threads(cpus, slots, live, tail) == threads


@pytest.mark.parametrize(
    ("started", "address", "cpus", "gpus", "shares"),
    [
        (True, None, 1, 0, True),  # a Ray this run started: every trial is on this machine
        (True, "127.0.0.1:6379", 1, 0, False),  # a cluster: the idle slots may be on other nodes
        (False, None, 1, 0, False),  # a notebook's Ray, used as it is
        (True, None, 1, 1, False),  # GPU trials
        (True, None, 0.5, 0, False),  # fractions of a core
    ],
)
def test_only_a_ray_the_run_started_shares_idle_cores(started, address, cpus, gpus, shares):
    assert placement.shares_idle_cpus(started, address, cpus, gpus) is shares
