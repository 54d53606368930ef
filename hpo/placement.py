"""Where trials run: how many at once on a Ray cluster, and which device each trial trains on.

Pure decisions on plain values (no Ray, no torch): the runner passes the cluster's nodes as
``(cpus, gpus)`` pairs, and the trial passes what its process sees (the GPU ids Ray assigned,
``CUDA_VISIBLE_DEVICES``, how many CUDA devices torch finds). Ray places each trial on one node:
a trial never spans nodes, and a fractional GPU request never spans two GPUs, so what fits is
counted node by node and, for fractions, GPU by GPU.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

EPS = 1e-9
#: More than one GPU a trial runs it data-parallel over whole GPUs (one process each, one node).
WHOLE_GPUS = (
    "more than one GPU a trial must be a whole number (2, 3, ...: a data-parallel trial over that many "
    "GPUs); fractions up to 1 (such as 0.25) share a GPU"
)


@dataclass(frozen=True)
class Plan:
    """What a run asks Ray for, per trial, and how many trials run at once."""

    cpus: float  # logical CPUs per trial (also torch's thread count, at least 1)
    gpus: float  # GPUs per trial; 0 when the cluster has none
    concurrency: int  # trials at once
    fits: int  # trials the cluster's nodes hold at once
    notes: list[str] = field(default_factory=list)  # said once, in the run summary
    problem: str | None = None  # not even one trial fits on any node


@dataclass(frozen=True)
class Device:
    """The torch device a trial trains on, and why, when it is not the one asked for."""

    device: str  # "cpu" | "cuda" | "cuda:N"
    note: str | None = None


def request_problems(cpus: float, gpus: float) -> list[str]:
    """What is wrong with a per-trial request (cpus_per_trial, gpus_per_trial), one line each."""
    out = []
    if not cpus > 0:
        out.append(f"cpus_per_trial = {cpus:g}: must be > 0 (fractions such as 0.5 are allowed)")
    if gpus < 0:
        out.append(f"gpus_per_trial = {gpus:g}: must be >= 0")
    elif gpus > 1 + EPS and abs(gpus - round(gpus)) > EPS:
        out.append(f"gpus_per_trial = {gpus:g}: {WHOLE_GPUS}")
    return out


def world_size(gpus: float) -> int:
    """Processes (data-parallel ranks) one trial runs as: its GPUs when it holds more than one, else 1."""
    return round(gpus) if gpus > 1 + EPS else 1


def batch_problem(sizes: Sequence[int], world: int, searched_range: bool = False) -> str | None:
    """What is wrong with the batch sizes of a data-parallel trial over ``world`` GPUs, if anything.

    Each rank takes ``batch_size / world`` blocks of every optimizer step, so that the step still
    sees ``batch_size`` blocks (times the accumulation steps): every size must divide by ``world``.

    Args:
        sizes: the batch sizes a trial can get (a fixed value, the choices, or a range's ends).
        world: ranks per trial (``world_size(gpus_per_trial)``).
        searched_range: ``sizes`` are the ends of an int range, which holds every size between.
    """
    if world <= 1:
        return None
    if searched_range and min(sizes) != max(sizes):
        return (
            f"gpus_per_trial = {world} splits every batch over {world} GPUs, but space.batch_size is "
            f"searched over the range {min(sizes)}..{max(sizes)}, which holds sizes not divisible by "
            f"{world}; search it with type: categorical over multiples of {world} "
            f"(e.g. choices: [{4 * world}, {8 * world}])"
        )
    bad = [int(b) for b in sizes if int(b) % world]
    if not bad:
        return None
    return (
        f"gpus_per_trial = {world} splits every batch over {world} GPUs, but space.batch_size "
        f"{', '.join(map(str, bad))} {'is' if len(bad) == 1 else 'are'} not divisible by {world}; "
        f"use multiples of {world} (or fewer GPUs a trial)"
    )


def node_fit(node_cpus: float, node_gpus: float, cpus: float, gpus: float) -> int:
    """Trials one node holds at once: the fewer of what its CPUs and its GPUs allow.

    A fraction of a GPU never spans two GPUs (Ray packs fractions GPU by GPU): with 0.3 per trial
    a GPU holds 3 trials, and 2 GPUs hold 6.
    """
    fit = math.floor(node_cpus / cpus + EPS)
    if gpus <= 0:
        return max(0, fit)
    if gpus < 1:
        by_gpu = math.floor(node_gpus + EPS) * math.floor(1 / gpus + EPS)
    else:
        by_gpu = math.floor(node_gpus / gpus + EPS)
    return max(0, min(fit, by_gpu))


def plan(
    nodes: Sequence[tuple[float, float]],
    cpus: float,
    gpus: float,
    concurrency: int | None = None,
    can_grow: bool = False,
) -> Plan:
    """Per-trial resources and concurrency for a cluster of ``nodes`` (each ``(cpus, gpus)``).

    Args:
        nodes: the live nodes' logical CPUs and GPUs.
        cpus: CPUs per trial (> 0).
        gpus: GPUs per trial (0, a fraction, or a whole number: more than 1 is a data-parallel trial,
            which Ray places on one node like any trial).
        concurrency: trials at once if the user fixed it; otherwise all that fit.
        can_grow: nodes may join (a cluster the run joined, perhaps autoscaling); a local Ray that
            hpo started never grows.

    Returns:
        A ``Plan``: with no GPU in the cluster, GPU trials become CPU trials and a note says so.
        ``problem`` is set when no node can hold one trial and none can join, or none is awaited
        (a fixed concurrency on a cluster that can grow): Ray would wait forever.
    """
    notes: list[str] = []
    if gpus > 0 and sum(g for _, g in nodes) < EPS:
        single = ", one process each (data-parallel needs GPUs)" if world_size(gpus) > 1 else ""
        notes.append(f"no GPU in the Ray cluster: trials run on CPUs ({cpus:g} each{single})")
        gpus = 0.0
    fits = sum(node_fit(c, g, cpus, gpus) for c, g in nodes)
    problem = None
    if fits == 0:
        wanted = f"{cpus:g} CPU" + (f" + {gpus:g} GPU" if gpus else "")
        largest = _largest(nodes, gpus)
        if can_grow and concurrency:
            notes.append(f"no node holds a trial ({wanted}) now ({largest}): trials wait for nodes to join")
        else:
            field_ = "gpus_per_trial" if gpus and _cpu_room(nodes, cpus) else "cpus_per_trial"
            value = gpus if field_ == "gpus_per_trial" else cpus
            wait = ", or set --concurrency to wait for nodes to join" if can_grow else ""
            one_node = " (a trial's GPUs are on one node)" if field_ == "gpus_per_trial" and gpus > 1 else ""
            problem = (
                f"{field_} = {value:g}: no node of the Ray cluster holds one trial ({wanted}; {largest})"
                f"{one_node}; lower it{wait}"
            )
    chosen = concurrency or max(1, fits)
    if concurrency and 0 < fits < concurrency:
        notes.append(f"concurrency {concurrency} > {fits} trials that fit at once: the rest wait for room")
    return Plan(cpus, gpus, chosen, fits, notes, problem)


def _largest(nodes: Sequence[tuple[float, float]], gpus: float) -> str:
    if not nodes:
        return "no live node"
    c, g = max(nodes, key=lambda n: (n[1], n[0]) if gpus else (n[0], n[1]))
    return f"largest node: {c:g} CPU" + (f", {g:g} GPU" if gpus else "")


def _cpu_room(nodes: Sequence[tuple[float, float]], cpus: float) -> bool:
    return any(c + EPS >= cpus for c, _ in nodes)


def trial_device(
    gpus: float,
    gpu_ids: Sequence[str | int] | None,
    cuda_visible: str | None,
    cuda_devices: int,
    rank: int = 0,
) -> Device:
    """The device one trial (or one rank of a data-parallel trial) trains on.

    Args:
        gpus: GPUs the trial asked for (0: CPU).
        gpu_ids: the GPU ids Ray assigned to the trial's process (``ray.get_gpu_ids()``); None when
            the trial runs outside Ray.
        cuda_visible: ``CUDA_VISIBLE_DEVICES`` in the trial's process (Ray sets it to ``gpu_ids``).
        cuda_devices: CUDA devices torch finds in that process (0 when ``torch.cuda.is_available()``
            is False).
        rank: the rank of a data-parallel trial: rank r trains on the trial's r-th GPU.

    Returns:
        ``cuda`` (or ``cuda:N`` when Ray left ``CUDA_VISIBLE_DEVICES`` unset, and for every rank
        but 0) on a real CUDA device, else ``cpu`` with a note saying why, when a GPU was asked for.
    """
    if gpus <= 0:
        return Device("cpu")
    if gpu_ids is None:  # outside Ray: any CUDA device this process sees
        if cuda_devices > rank:
            return Device(f"cuda:{rank}" if rank else "cuda")
        return Device("cpu", "gpus_per_trial > 0 but torch finds no CUDA device: trained on CPU")
    if not gpu_ids:
        return Device("cpu", "Ray assigned no GPU to this trial: trained on CPU")
    ids = ",".join(str(i) for i in gpu_ids)
    visible = cuda_visible if cuda_visible is not None else "unset"
    if not cuda_devices:
        return Device(
            "cpu",
            f"logical GPU {ids} (CUDA_VISIBLE_DEVICES={visible}) is not a CUDA device on this node: "
            "trained on CPU",
        )
    if rank >= len(gpu_ids):
        return Device("cpu", f"rank {rank} has none of the {len(gpu_ids)} GPUs Ray assigned: trained on CPU")
    index = _torch_index(str(gpu_ids[rank]), cuda_visible)
    if index >= cuda_devices:
        return Device(
            "cpu", f"GPU {ids} is not among the {cuda_devices} CUDA devices torch sees: trained on CPU"
        )
    return Device("cuda" if cuda_visible is not None and rank == 0 else f"cuda:{index}")


def tail_threads(cpus_per_trial: int, slots: int, live: int, tail: bool) -> int:
    """Torch threads per running trial: ``cpus_per_trial``, except at the tail of a study (no
    trial will start any more) when fewer trials run than there are slots; then the running ones
    share the slots' CPUs (2 trials of 1 CPU, 1 left: it takes both cores, 1.7x faster steps
    on the tiny model)."""
    if not tail or live <= 0 or live >= slots:
        return cpus_per_trial
    return max(cpus_per_trial, (cpus_per_trial * slots) // live)


def shares_idle_cpus(started: bool, address: str | None, cpus: float, gpus: float) -> bool:
    """Whether a run's CPU trials take idle slots' cores at the tail (``tail_threads``): only on a
    Ray the run started itself (``started``, no cluster ``address``), where every trial runs on this
    machine and reads the driver's share file; on a cluster the idle slots may be other nodes'."""
    return started and address is None and not gpus and cpus >= 1


def _torch_index(gpu_id: str, cuda_visible: str | None) -> int:
    """Torch's index of a physical GPU id: its position in CUDA_VISIBLE_DEVICES when set."""
    if cuda_visible is None:
        return int(gpu_id) if gpu_id.isdigit() else 0
    visible = [v.strip() for v in cuda_visible.split(",") if v.strip()]
    return visible.index(gpu_id) if gpu_id in visible else 0


def precision(cuda_major: int | None, cpu_bf16: bool = False, requested: str = "auto") -> str:
    """The precision a trial trains and evaluates in: ``requested`` (bf16 | fp32), or for "auto"
    bf16 autocast where the hardware multiplies bf16 natively and fp32 elsewhere.

    Native: an NVIDIA GPU of compute capability 8 (Ampere) or newer, or a CPU with bf16 dot
    products: AMX tiles (Intel Sapphire Rapids and newer: a tiny-model trial 1.4x faster) or
    AVX512-BF16 (AMD Zen 4 and newer, Intel Cooper Lake: 1.6-1.7x), evaluation losses within 0.003
    of fp32, measured. Older GPUs and other CPUs only emulate bf16, slowly (an AVX2 EPYC: 5x slower).

    Args:
        cuda_major: the GPU's compute capability major version; None for a CPU.
        cpu_bf16: the CPU multiplies bf16 natively (only read for a CPU).
        requested: the spec's ``training.precision`` (``bf16-true``, weights and optimizer state in
            bf16 as well, is only ever chosen by name).
    """
    if requested != "auto":
        return requested
    native = cuda_major >= 8 if cuda_major is not None else cpu_bf16
    return "bf16" if native else "fp32"


#: /proc/cpuinfo flags of bf16 dot products in hardware (what torch's ``_is_amx_tile_supported`` and
#: ``_is_avx512_bf16_supported`` read), for the driver, which does not import torch.
BF16_CPU_FLAGS = frozenset({"amx_bf16", "avx512_bf16"})


def cpu_flags(cpuinfo: str = "/proc/cpuinfo") -> frozenset[str] | None:
    """This machine's CPU flags (the first processor's); None where there is no ``/proc/cpuinfo``."""
    try:
        with open(cpuinfo, encoding="utf-8", errors="replace") as f:
            line = next((ln for ln in f if ln.startswith("flags")), "")
    except OSError:
        return None
    return frozenset(line.partition(":")[2].split())


def bf16_units(cpuinfo: str = "/proc/cpuinfo") -> list[str]:
    """The bf16 units this CPU has (``["avx512_bf16"]``; empty where it has none, or no
    ``/proc/cpuinfo``): where ``precision: auto`` trains in bf16 on a CPU."""
    return sorted((cpu_flags(cpuinfo) or frozenset()) & BF16_CPU_FLAGS)


def cpu_model(cpuinfo: str = "/proc/cpuinfo") -> str:
    """This machine's CPU model name (``AMD EPYC``); the architecture where there is no
    ``/proc/cpuinfo``. Two CPU kinds may share a name: benchmarks and learning-curve tables record
    ``bf16_units()`` beside it (an AVX2-only EPYC trains in fp32, a Zen 4 in bf16)."""
    import platform

    try:
        with open(cpuinfo, encoding="utf-8", errors="replace") as f:
            line = next((ln for ln in f if ln.startswith("model name")), "")
    except OSError:
        line = ""
    return line.partition(":")[2].strip() or platform.machine()


def precision_note(requested: str, flags: frozenset[str] | None) -> str | None:
    """What to tell the user once when CPU trials are asked to train in bf16 on a CPU that only
    emulates it (None: nothing to say, or the flags are unknown)."""
    if requested not in ("bf16", "bf16-true") or flags is None or flags & BF16_CPU_FLAGS:
        return None
    return (
        f"training.precision: {requested} on a CPU without bf16 in hardware (no AMX or AVX512-BF16): "
        "emulated, about 5x slower than fp32 (measured); precision: auto picks fp32 here"
    )


def cluster_notes(
    joined: bool, local_sqlite: bool, storage: str, nodes: int, shared: Sequence[str]
) -> list[str]:
    """What to tell the user once about a run on a cluster it joined.

    Args:
        joined: the run joined an existing Ray cluster (``--address`` / ``RAY_ADDRESS``).
        local_sqlite: the study storage is a SQLite file on this machine.
        storage: the storage URL, password masked.
        nodes: live nodes in the cluster.
        shared: folders every node must see at the same path (checkpoints, model and data cache).
    """
    if not joined:
        return []
    out = []
    if local_sqlite:
        out.append(
            f"a cluster run with a local SQLite storage ({storage}): no other machine can read the study "
            "or run its trials alongside; use a shared database, e.g. "
            "--storage postgresql://USER:PASSWORD@DBHOST:5432/hpo (docs/cluster.md)"
        )
    if nodes > 1:
        out.append(
            f"{nodes} nodes: each must see {' and '.join(shared)} at the same paths "
            "(a shared filesystem; docs/cluster.md)"
        )
    return out


def host_port(address: str) -> tuple[str, int] | None:
    """(host, port) of a ``HOST:PORT`` Ray address; None for ``auto``, ``ray://...`` and the like."""
    host, sep, port = address.rpartition(":")
    if "://" in address or not sep or not port.isdigit():
        return None
    return host.strip("[]"), int(port)


def is_loopback(address: str) -> bool:
    """Whether a Ray address is on this machine's loopback (a cluster started on this machine)."""
    hp = host_port(address)
    return hp is not None and (hp[0] in ("localhost", "::1") or hp[0].startswith("127."))
