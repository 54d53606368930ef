"""What each trial of a run asks Ray for: CPUs and GPUs (the CLI's overrides, else the spec's),
how many trials fit the nodes Ray sees (``placement.plan``), and the host-memory plan of CPU trials
(``memory.plan_cpu``), with the notes a run prints about them."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from hpo import bestweights, placement
from hpo.errors import SpecError
from hpo.raystart import cluster_address

if TYPE_CHECKING:
    from hpo.runner import RunOptions

log = logging.getLogger(__name__)


def requested(spec, opts: RunOptions) -> tuple[float, float]:
    """(cpus, gpus) per trial: the CLI's overrides, else the spec's.

    Raises:
        SpecError: a request Ray or the trial loop cannot serve (naming the flag or the spec field).
    """
    from hpo.specsections import batch_problem

    cpus = opts.cpus_per_trial if opts.cpus_per_trial is not None else spec.resources.cpus_per_trial
    gpus = opts.gpus_per_trial if opts.gpus_per_trial is not None else spec.resources.gpus_per_trial
    problems = placement.request_problems(float(cpus), float(gpus))
    if not problems:  # a data-parallel trial splits each batch evenly over its GPUs
        problems = [p for p in [batch_problem(spec.space, float(gpus))] if p]
    if problems:
        raise SpecError(_resources_source(spec, opts), problems)
    return float(cpus), float(gpus)


def _resources_source(spec, opts: RunOptions) -> str:
    flags = [
        f"--{name}-per-trial"
        for name, value in (("cpus", opts.cpus_per_trial), ("gpus", opts.gpus_per_trial))
        if value is not None
    ]
    return " / ".join(flags) if flags else f"study {spec.name!r} resources"


def placement_plan(spec, opts: RunOptions):
    """The run's ``placement.Plan`` for the nodes Ray sees now.

    Raises:
        SpecError: no node can hold one trial (and no --concurrency asks to wait for more).
    """
    import ray

    cpus, gpus = requested(spec, opts)
    nodes = [
        (float(n["Resources"].get("CPU", 0.0)), float(n["Resources"].get("GPU", 0.0)))
        for n in ray.nodes()
        if n.get("Alive")
    ]
    concurrency = opts.concurrency or spec.resources.concurrency
    plan = placement.plan(nodes, cpus, gpus, concurrency, can_grow=cluster_address(opts.address) is not None)
    if plan.problem:
        raise SpecError(_resources_source(spec, opts), [plan.problem])
    log.debug("placement: %s", plan)
    return plan


def memory_plan(spec, opts: RunOptions, model_path: str, plan):
    """The host-memory plan of a run of CPU trials (``memory.plan_cpu``), from the model's config
    and weights' headers; None for GPU trials (their memory is the GPU's: each trial fits its
    micro-batch to its share) or a model that is no local folder.

    Raises:
        SpecError: no node's memory holds one trial.
    """
    import ray

    from hpo import memory
    from hpo.params import values

    shape = memory.model_shape(model_path)
    if shape is None:
        return None
    training = spec.training
    precision = placement.precision(
        8 if plan.gpus else None,  # planned as on an Ampere or newer GPU (bf16 autocast)
        bool(placement.bf16_units()),
        training.precision,
    )
    trainable = shape.params // 50 if spec.adapter else None  # a LoRA adapter: ~1-2% of the weights
    need = memory.trial_need(
        shape,
        spec.max_block_size,
        precision,
        trainable,
        training.gradient_checkpointing,
        plan.gpus > 0,
        held_best=bestweights.resolve(training.save_best, spec.schedule.type, spec.adapter is not None)
        == "deferred",
    )
    batch = min(int(b) for b in values(spec.space.batch_size))
    if plan.gpus > 0:
        _check_gpu_share(need, plan.gpus, batch, cluster_address(opts.address) is None)
        return None
    alive = [n for n in ray.nodes() if n.get("Alive")]
    node_memory = [float(n["Resources"].get("memory", 0.0)) for n in alive]
    cpu_fits = [placement.node_fit(float(n["Resources"].get("CPU", 0.0)), 0.0, plan.cpus, 0.0) for n in alive]
    if isinstance(training.max_micro_batch, int):
        batch = min(batch, training.max_micro_batch)
    fixed = spec.resources.memory_gb * memory.GB if spec.resources.memory_gb else None
    mem = memory.plan_cpu(node_memory, cpu_fits, need, batch, fixed)
    if mem.problem:
        raise SpecError(f"study {spec.name!r} resources", [mem.problem])
    log.debug("memory plan: %s (need %s)", mem, need)
    return mem


def _check_gpu_share(need, gpus: float, batch: int, local: bool) -> None:
    """Refuse trials of a fraction of a GPU that cannot hold one sequence of the model; warn when
    the fraction holds fewer than a comfortable micro-batch. Only where this machine's GPUs are the
    trials' (a local run) and ``nvidia-smi`` says how large they are.

    Raises:
        SpecError: not even micro-batch 1 fits.
    """
    from hpo import memory

    total = _gpu_memory() if local else None
    if total is None:
        return
    problem, note = memory.gpu_share(need, total, gpus, batch)
    if problem:
        raise SpecError("--gpus-per-trial / resources.gpus_per_trial", [problem])
    if note:
        log.warning("%s", note)


def _gpu_memory() -> float | None:
    """The smallest GPU's memory on this machine in bytes (``nvidia-smi``; None without one)."""
    import shutil
    import subprocess

    smi = shutil.which("nvidia-smi")
    if smi is None:
        return None
    try:
        out = subprocess.run(
            [smi, "--query-gpu=memory.total", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout
        return min(float(x) for x in out.split()) * 2**20  # MiB
    except (OSError, ValueError, subprocess.SubprocessError):
        return None


def memory_notes(mem, concurrency: int) -> list[str]:
    if mem is None:
        return []
    return [
        f"memory: {mem.per_trial / 1e9:.1f} GB per trial, {concurrency} at once "
        f"(the nodes' memory holds {mem.fits}); micro-batches up to {mem.micro} fit"
    ]


def cluster_notes(study, opts: RunOptions) -> list[str]:
    """Notes for a run on a cluster it joined: a local SQLite storage, the paths nodes must share."""
    import ray

    from hpo import basemodel
    from hpo import storage as storage_mod

    url = str(storage_mod.backend(study).url)
    nodes = sum(1 for n in ray.nodes() if n.get("Alive"))
    shared = [str(opts.runs_dir.resolve()), str(basemodel.cache_dir().resolve())]
    return placement.cluster_notes(
        cluster_address(opts.address) is not None,
        bool(url) and storage_mod.is_local_sqlite(url),
        storage_mod.mask(url),
        nodes,
        shared,
    )
