"""Assembles and runs a Ray Tune search over a study: Ray, the ASHA scheduler, resources, the
Optuna bridge, and the trial processes. The only module that starts Ray.

A local Ray that hpo starts listens on 127.0.0.1 only (``_node_ip_address`` plus
``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` set before Ray is imported), reports no usage stats,
starts no dashboard, and keeps its temp files under the study's runs folder when the path is
short enough for Ray's unix sockets. Ray's own experiment state is a cache: the storage is the
source of truth, so each ``hpo run`` is a fresh Tune run that continues the study.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
import os
import signal
import socket
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hpo import placement
from hpo.errors import RunError, SpecError

log = logging.getLogger(__name__)

# Ray reads these at import: keep it on loopback, quiet and cheap.
RAY_ENV = {
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    "RAY_USAGE_STATS_ENABLED": "0",
    "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "1",  # no per-trial CSV/JSON/TensorBoard files
    "TUNE_GLOBAL_CHECKPOINT_S": "60",  # Ray's experiment snapshots are a cache: throttle them
    "TUNE_DISABLE_SIGINT_HANDLER": "1",  # hpo handles Ctrl-C itself (fail + re-queue live trials)
    "TUNE_WARN_INSUFFICENT_RESOURCE_THRESHOLD_S": "0",
    "RAY_DEDUP_LOGS": "0",
    "RAY_AIR_NEW_OUTPUT": "0",  # with verbose=0 the classic reporter prints nothing; hpo prints progress
    "TOKENIZERS_PARALLELISM": "false",
    # hpo plans each trial's memory and holds CPU trials to it; Ray's memory monitor would kill a
    # Ray worker instead, which Tune 2.60 does not survive ("Caught unexpected exception").
    "RAY_memory_monitor_refresh_ms": "0",
}
_SOCKET_ROOM = 107 - len("/session_2026-11-25_01-38-34_899804_10948/sockets/plasma_store") - 1


class Interrupted(Exception):
    """Raised in the driver by SIGINT/SIGTERM."""


class _KilledForMemory(Exception):
    """Tune's run ended because Ray's memory monitor killed a trial's worker (on a cluster whose
    raylets run the monitor): the live trials are FAIL OutOfMemory, and a fresh Tune run goes on."""


OBJECT_STORE_BYTES = 2**30  # a local Ray's object store (reports and configs only)
RESTARTS = 3  # fresh Tune runs after Ray killed trials for memory, before the run gives up


@dataclass
class RunOptions:
    """How one ``hpo run`` invocation runs (the spec says what the study is)."""

    target: int  # finished (COMPLETE + PRUNED) trials the study should hold
    runs_dir: Path  # checkpoints and Ray's files; on a cluster, a path every node sees
    address: str | None = None  # join this Ray cluster (HOST:PORT); None: $RAY_ADDRESS, else a local Ray
    concurrency: int | None = None  # trials at once; None: the spec's, else all that fit
    cpus_per_trial: float | None = None  # overrides the spec's resources.cpus_per_trial
    gpus_per_trial: float | None = None  # overrides the spec's resources.gpus_per_trial
    max_failures: int = 5  # stop after this many trials in a row fail alike


@dataclass
class RunSummary:
    """What a run did, for the CLI and notebooks."""

    study: str
    target: int
    finished_before: int
    counts: dict[str, int] = field(default_factory=dict)
    best_value: float | None = None
    best_trial: int | None = None
    best_params: dict[str, Any] = field(default_factory=dict)
    wall_s: float = 0.0
    trials_run: int = 0
    recovered: list[int] = field(default_factory=list)
    interrupted: bool = False
    stop_reason: str | None = None
    disk_peak_mb: float = 0.0
    concurrency: int | None = None  # trials at once (what the cluster's resources allow, by default)
    notes: list[str] = field(default_factory=list)


def run(study, spec, opts: RunOptions, on_event: Callable | None = None) -> RunSummary:
    """Run trials until the study holds ``opts.target`` finished ones.

    Raises:
        RunError: Ray cannot start, or trials keep failing for the same cause.
        DataError: the data cannot be prepared.
    """
    ray_env()  # before anything imports ray (the searcher does)
    from hpo import basemodel, warmstart

    t0 = time.time()
    finished = _finished(study)
    summary = RunSummary(study.study_name, opts.target, finished)
    model_path, warm = "", None
    if finished < opts.target:
        _requested(spec, opts)  # a bad per-trial request fails before any work
        model_path = basemodel.resolve(spec.model, spec.seed)
        # trial processes fork from a process that imports the trial's code while Ray starts
        warm = warmstart.start(model_path) if _warm_wanted(opts) else None
    try:
        return _run(study, spec, opts, on_event, summary, model_path, warm, t0)
    finally:  # its log is kept where a run that got as far as Ray keeps its files
        warmstart.stop(warm, opts.runs_dir / "warmstart.log")


def _run(study, spec, opts: RunOptions, on_event, summary: RunSummary, model_path: str, warm, t0: float):
    from hpo import basemodel, data, gcpause

    with gcpause.paused():  # it imports Ray Tune: ~0.4 s less CPU with the collector paused
        from hpo import searcher

    summary.recovered = searcher.recover_stale(study, spec)
    if summary.finished_before >= opts.target:
        return _finish_summary(summary, study, t0)
    # 1. the data, once, in the driver (trials only read it)
    prepared = data.prepare(spec.data, model_path, spec.seed, basemodel.cache_dir())
    # 2. Ray, resources and the bridge
    with gcpause.paused():
        started = _start_ray(opts)
    threads_file: Path | None = None
    try:
        plan = _resources(spec, opts)
        cpus, gpus, concurrency = plan.cpus, plan.gpus, plan.concurrency
        mem = _memory(spec, opts, model_path, plan)
        if mem is not None and not (opts.concurrency or spec.resources.concurrency):
            concurrency = min(concurrency, mem.fits)
        summary.concurrency = concurrency
        summary.notes += plan.notes + _cluster_notes(study, opts) + _memory_notes(mem, concurrency)
        if started and not _address(opts) and not gpus:  # every trial runs on this machine's CPUs
            note = placement.precision_note(spec.training.precision, placement.cpu_flags())
            summary.notes += [note] if note else []
        run_id = uuid.uuid4().hex[:8]
        trials_dir = (opts.runs_dir / "trials").resolve()
        if placement.shares_idle_cpus(started, _address(opts), cpus, gpus):
            threads_file = trials_dir / f".threads-{run_id}"
        warm_address = warm.address if warm and started else None
        stop = threading.Event()
        resources = {"cpu": cpus, "gpu": gpus, **({"memory": mem.per_trial} if mem else {})}
        for attempt in range(RESTARTS + 1):  # a fresh Tune run after Ray killed trials for memory
            bridge = searcher.OptunaBridge(
                study,
                spec,
                opts.target,
                _config_maker(spec, model_path, prepared.path, cpus, gpus, threads_file, warm_address, mem),
                trials_dir,
                f"{run_id}-{attempt}" if attempt else run_id,
                on_event,
                opts.max_failures,
                (threads_file, int(cpus), concurrency) if threads_file else None,
            )
            tuner = _tuner(spec, opts, bridge, resources, concurrency, run_id, _stop_callback(stop))
            try:
                summary.interrupted = _fit(tuner, bridge, stop)
                break
            except _KilledForMemory as e:
                summary.notes.append(str(e))
        summary.stop_reason, summary.disk_peak_mb = bridge.stop_reason, bridge.disk_peak_mb
        _record_disk_peak(study, bridge.disk_peak_mb)
    finally:
        if started:
            _stop_ray()
        if threads_file is not None:
            threads_file.unlink(missing_ok=True)
    summary = _finish_summary(summary, study, t0)
    if summary.stop_reason and not summary.interrupted:
        raise RunError(f"stopped: {summary.stop_reason}; fix the cause, then rerun the same command")
    return summary


def _warm_wanted(opts: RunOptions) -> bool:
    """Warm trial processes for a Ray this run starts itself: every trial then runs on this machine."""
    from hpo import warmstart

    ray = sys.modules.get("ray")
    already = ray is not None and ray.is_initialized()  # a notebook's Ray: its trials may run anywhere
    return warmstart.wanted() and _address(opts) is None and not already


def _fit(tuner, bridge, stop: threading.Event) -> bool:
    """Run the Tuner; on Ctrl-C/SIGTERM fail and re-queue live trials. Returns True if interrupted.

    The signal handler only sets ``stop`` (raising inside Ray's C++ wait would corrupt it); the
    ``_StopOnSignal`` callback then raises between two steps of Tune's loop, Tune stops its trial
    processes, and the bridge fails and re-queues the trials that were running. A second Ctrl-C
    raises at once.
    """

    def _on_signal(signum, frame):
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()
        bridge.stopping = True

    old = {s: signal.signal(s, _on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        tuner.fit()
        return stop.is_set()
    except (Interrupted, KeyboardInterrupt):
        return True
    except RuntimeError as e:  # Tune 2.60 ends its whole run when Ray's memory monitor kills a worker
        import ray

        if not isinstance(e.__cause__, ray.exceptions.OutOfMemoryError):
            raise
        message = f"Ray killed a trial process for memory: {str(e.__cause__).strip().splitlines()[0][:200]}"
        bridge.fail_live("OutOfMemory", message)
        raise _KilledForMemory(f"{message}; the run went on with a fresh Tune run") from e
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        bridge.abandon_live()
        bridge.close()


def _stop_callback(stop: threading.Event | None):
    from ray import tune

    stop = stop or threading.Event()

    class _StopOnSignal(tune.Callback):
        """Ends Tune's loop between two steps once a stop signal has arrived."""

        def on_step_begin(self, iteration, trials, **info):
            if stop.is_set():
                raise Interrupted("stop signal")

        def __reduce__(self):  # Ray pickles its callbacks into its (unused) experiment state
            return (_stop_callback, (None,))

    return _StopOnSignal()


# ---------------------------------------------------------------- Ray


def ray_env() -> None:
    """Set Ray's environment before it is imported (idempotent; the user's values win)."""
    for k, v in RAY_ENV.items():
        os.environ.setdefault(k, v)


def _temp_dir(runs_dir: Path) -> str:
    """Ray's temp folder: under the runs folder if its unix socket paths stay short enough."""
    wanted = (runs_dir / "ray-tmp").resolve()
    if len(str(wanted)) <= _SOCKET_ROOM:
        return str(wanted)
    return f"/tmp/hpo-ray-{hashlib.sha1(str(wanted).encode()).hexdigest()[:10]}"


def _address(opts: RunOptions) -> str | None:
    """The Ray cluster to join: ``--address``, else ``$RAY_ADDRESS``; None (or "local"): start one."""
    address = opts.address or os.environ.get("RAY_ADDRESS") or None
    return None if address == "local" else address


def _start_ray(opts: RunOptions) -> bool:
    """Join the cluster at ``_address(opts)`` or start a local, loopback-only Ray.

    Returns:
        True if this call connected to Ray (the run then disconnects at its end); False when Ray
        was already initialized in this process (a notebook), which is then used as it is.

    Raises:
        RunError: Ray cannot start, or the cluster cannot be reached.
    """
    ray_env()
    import ray

    from hpo import placement

    for name in ("ray", "ray.tune", "ray.train"):  # hpo reports progress and errors itself
        logging.getLogger(name).setLevel(logging.CRITICAL)
    if ray.is_initialized():
        return False
    address = _address(opts)
    # hpo's settings reach the trial processes on every node; the storage URL (with its password)
    # stays in the driver: only the driver writes the storage, and Ray keeps runtime envs in its GCS
    env_vars = {k: v for k, v in os.environ.items() if k.startswith("HPO_") and k != "HPO_STORAGE"}
    common: dict[str, Any] = {
        "runtime_env": {"env_vars": env_vars},
        "log_to_driver": False,
        "logging_level": logging.ERROR,
    }
    if address:
        _check_reachable(address)
        if placement.is_loopback(address):  # a cluster on this machine: Ray must not swap in the outward IP
            _loopback_only()
    try:
        if address:
            ray.init(address=address, **common)
        else:
            _loopback_only()
            ray.init(
                _node_ip_address="127.0.0.1",
                # Ray's prestarted workers never serve Tune's trials (those carry a runtime env)
                _system_config={"prestart_worker_first_driver": False},
                include_dashboard=False,
                # trials pass nothing large through Ray's object store: its default (30% of the
                # machine's memory) would come off the memory Ray lets trials reserve
                object_store_memory=OBJECT_STORE_BYTES,
                _temp_dir=_temp_dir(opts.runs_dir),
                configure_logging=True,
                **common,
            )
    except Exception as e:  # noqa: BLE001 - Ray raises many kinds here
        raise RunError(
            f"cannot start Ray{' at ' + address if address else ''}: {str(e).splitlines()[0]}"
        ) from e
    return True


def _check_reachable(address: str, timeout_s: float = 10.0) -> None:
    """Fail at once when nothing listens at ``address`` (Ray itself would retry for minutes)."""
    from hpo import placement

    hp = placement.host_port(address)
    if hp is None:
        return
    try:
        with socket.create_connection(hp, timeout=timeout_s):
            pass
    except OSError as e:
        raise RunError(
            f"cannot reach a Ray cluster at {address} ({e.strerror or e}); start one there with "
            "`ray start --head` (docs/cluster.md), or fix --address / RAY_ADDRESS"
        ) from e


def _loopback_only() -> None:
    """Keep a Ray that hpo starts on 127.0.0.1, even if ray was imported before ``ray_env()`` ran
    or ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER`` was set to 1. The processes Ray spawns read the
    variable. The driver read it once, at ``import ray``, into a private constant that turns even
    ``_node_ip_address="127.0.0.1"`` into the outward address (measured: without the rebind a Ray
    started after ``import ray`` listens on 0.0.0.0); Ray has no public switch, so the constant is
    set here: the one private Ray name hpo uses (docs/dependencies.md; tests/test_private_apis.py).

    Raises:
        RunError: this Ray moved the constant (a newer Ray than hpo was tested with).
    """
    import ray

    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    constants: Any = None
    with contextlib.suppress(ImportError):
        from ray._private import ray_constants as constants
    if not hasattr(constants, "ENABLE_RAY_CLUSTER"):
        raise RunError(
            f"ray {ray.__version__} moved ray._private.ray_constants.ENABLE_RAY_CLUSTER, which hpo sets "
            "to keep its Ray on 127.0.0.1; install the ray version in constraints.txt"
        )
    constants.ENABLE_RAY_CLUSTER = False


def _stop_ray() -> None:
    """Stop the Ray hpo started (or disconnect from the cluster it joined)."""
    import ray

    ray.shutdown()


def _requested(spec, opts: RunOptions) -> tuple[float, float]:
    """(cpus, gpus) per trial: the CLI's overrides, else the spec's.

    Raises:
        SpecError: a request Ray or the trial loop cannot serve (naming the flag or the spec field).
    """
    from hpo import placement
    from hpo import spec as spec_mod

    cpus = opts.cpus_per_trial if opts.cpus_per_trial is not None else spec.resources.cpus_per_trial
    gpus = opts.gpus_per_trial if opts.gpus_per_trial is not None else spec.resources.gpus_per_trial
    problems = placement.request_problems(float(cpus), float(gpus))
    if not problems:  # a data-parallel trial splits each batch evenly over its GPUs
        problems = [p for p in [spec_mod.batch_problem(spec.space, float(gpus))] if p]
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


def _resources(spec, opts: RunOptions):
    """The run's ``placement.Plan`` for the nodes Ray sees now.

    Raises:
        SpecError: no node can hold one trial (and no --concurrency asks to wait for more).
    """
    import ray

    from hpo import placement

    cpus, gpus = _requested(spec, opts)
    nodes = [
        (float(n["Resources"].get("CPU", 0.0)), float(n["Resources"].get("GPU", 0.0)))
        for n in ray.nodes()
        if n.get("Alive")
    ]
    concurrency = opts.concurrency or spec.resources.concurrency
    plan = placement.plan(nodes, cpus, gpus, concurrency, can_grow=_address(opts) is not None)
    if plan.problem:
        raise SpecError(_resources_source(spec, opts), [plan.problem])
    log.debug("placement: %s", plan)
    return plan


def _memory(spec, opts: RunOptions, model_path: str, plan):
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
        bool(placement.BF16_CPU_FLAGS & (placement.cpu_flags() or set())),
        training.precision,
    )
    trainable = shape.params // 50 if spec.adapter else None  # a LoRA adapter: ~1-2% of the weights
    need = memory.trial_need(
        shape, spec.data.block_size, precision, trainable, training.gradient_checkpointing, plan.gpus > 0
    )
    batch = min(int(b) for b in values(spec.space.batch_size))
    if plan.gpus > 0:
        _check_gpu_share(need, plan.gpus, batch, _address(opts) is None)
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


def _memory_notes(mem, concurrency: int) -> list[str]:
    if mem is None:
        return []
    return [
        f"memory: {mem.per_trial / 1e9:.1f} GB per trial, {concurrency} at once "
        f"(the nodes' memory holds {mem.fits}); micro-batches up to {mem.micro} fit"
    ]


def _cluster_notes(study, opts: RunOptions) -> list[str]:
    """Notes for a run on a cluster it joined: a local SQLite storage, the paths nodes must share."""
    import ray

    from hpo import basemodel, placement
    from hpo import storage as storage_mod

    url = str(storage_mod.backend(study).url)
    nodes = sum(1 for n in ray.nodes() if n.get("Alive"))
    shared = [str(opts.runs_dir.resolve()), str(basemodel.cache_dir().resolve())]
    return placement.cluster_notes(
        _address(opts) is not None,
        bool(url) and storage_mod.is_local_sqlite(url),
        storage_mod.mask(url),
        nodes,
        shared,
    )


def _config_maker(
    spec,
    model_path: str,
    data_path: str,
    cpus: float,
    gpus: float,
    threads_file: Path | None = None,
    warm_address: str | None = None,
    mem=None,
) -> Callable:
    training = spec.training

    def make(number: int, params: dict[str, Any], folder: str) -> dict[str, Any]:
        return {
            "params": params,
            "trial_number": number,
            "checkpoint_dir": folder,
            "model_path": model_path,
            "data_path": data_path,
            "seed": spec.seed if training.seed is None else training.seed,
            "eval_every": training.eval_every,
            "eval_epochs": spec.eval_epochs(),  # None: every eval_every mark; else ASHA rungs + max_t
            "warmup_ratio": training.warmup_ratio,
            "max_micro_batch": training.max_micro_batch,  # auto: the largest that fits (hpo.memory)
            "gradient_checkpointing": training.gradient_checkpointing,
            "memory_bytes": mem.per_trial if mem else None,  # the trial's host memory share
            "hold_memory": bool(mem and spec.resources.memory_gb),  # resources.memory_gb is a hard limit
            "max_grad_norm": training.max_grad_norm,
            "lr_scheduler": training.lr_scheduler,
            "gradient_accumulation_steps": training.gradient_accumulation_steps,
            "label_smoothing": training.label_smoothing,
            "l1": training.l1,
            "early_stopping_patience": training.early_stopping_patience,
            "objective": spec.objective.metric,
            "precision": training.precision,  # auto: placement.precision decides on the trial's device
            "adapter": spec.adapter.model_dump() if spec.adapter else None,
            "cpus": cpus,
            "gpus": gpus,
            "threads_file": str(threads_file) if threads_file else None,  # placement.tail_threads
            "warm_address": warm_address,  # hpo/warmstart.py: fork the trial process from there
        }

    return make


def _tuner(spec, opts: RunOptions, bridge, resources: dict, concurrency: int, run_id: str, callback):
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    scheduler: FIFOScheduler
    if spec.schedule.type == "asha":
        scheduler = ASHAScheduler(
            time_attr="epoch",
            max_t=spec.asha_max_t(),
            grace_period=spec.schedule.grace_period,
            reduction_factor=spec.schedule.reduction_factor,
        )
    else:
        scheduler = FIFOScheduler()
    trainable = tune.with_resources(_trainable, resources)  # cpu, gpu and (CPU trials) memory
    mode = "min" if spec.objective.direction == "minimize" else "max"
    return tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(
            metric=spec.objective.metric,
            mode=mode,
            search_alg=bridge,
            scheduler=scheduler,
            num_samples=-1,
            max_concurrent_trials=concurrency,
            reuse_actors=True,
            trial_dirname_creator=lambda t: f"trial-{t.trial_id}",
        ),
        run_config=tune.RunConfig(
            name=f"run-{run_id}",
            storage_path=str((opts.runs_dir / "ray").resolve()),
            verbose=0,
            failure_config=tune.FailureConfig(max_failures=0),
            callbacks=[callback],
        ),
    )


#: What the trial process saw and chose (its device and precision among them), added to each of its
#: reports (and kept as user attributes); a data-parallel trial (``gpus_per_trial`` > 1) adds its
#: ``world_size`` and ``ddp_backend``.
PLACEMENT_REPORTED = (
    "device",
    "precision",
    "base_dtype",
    "micro_batch",
    "memory_gb",
    "device_note",
    "cuda_visible_devices",
    "node_id",
    "started_at",
    "world_size",
    "ddp_backend",
)


def _trainable(config: dict[str, Any]) -> None:
    """What each Ray trial process runs: the trial loop, reporting to Tune; errors go to a file
    in the trial folder (the driver reads it) before Ray sees them. With a warm process
    (``hpo/warmstart.py``) the loop runs in this process's trial process, forked from it, and
    this process passes the reports on.

    ``config["placement"]`` carries what Ray gave this process (GPU ids, ``CUDA_VISIBLE_DEVICES``,
    node); the trial's device choice writes ``device``/``device_note`` into it, and every report
    carries them, so the storage records where each trial ran and on what.
    """
    from ray import tune

    from hpo import cudafault, trial, warmstart

    forked = warmstart.connect(config.get("warm_address"))  # None: no warm process, run here
    if forked is None:
        _settle_process(config["model_path"])
    config = {**config, "placement": _placement_seen()}
    seen = config["placement"]

    def report(metrics: dict[str, Any]) -> None:
        where = {k: seen[k] for k in PLACEMENT_REPORTED if seen.get(k) is not None}
        tune.report({**{k: v for k, v in metrics.items() if v is not None}, **where})

    try:
        (forked.run if forked else trial.run)(config, report)
    except Exception as e:  # not BaseException: Ray stops a trial (ASHA) by raising SystemExit in it
        broken = cudafault.fault(e)  # CUDA unusable in this process (a forked one has exited)
        _write_error(config["checkpoint_dir"], broken or e)
        if broken is not None:
            # Tune never reuses the Ray process of a trial that errored: it ends it
            # (TuneController._schedule_trial_stop caches an actor only without an exception;
            # tests/test_gpu_faults.py checks it), so the slot's next trial gets a new process
            raise broken from e
        raise


@functools.cache  # once per trial process (and model)
def _settle_process(model_path: str) -> None:
    """Once per trial process, before its first model exists: import the trial's code and the
    model's, then move every object alive to the garbage collector's permanent generation.

    torch and transformers leave ~400,000 objects that every full collection walked: the
    ``gc.collect()`` that ends each trial (so the next one starts with its memory back) took
    0.16 s, between two trials of one slot, and training paid the same for each automatic one.
    Frozen, they are never walked again; what trials allocate is collected as before."""
    import gc

    from hpo import trial

    trial.import_code(model_path)
    gc.collect()
    gc.freeze()


def _placement_seen() -> dict[str, Any]:
    """What Ray assigned to this trial process: its logical GPU ids, CUDA_VISIBLE_DEVICES, node."""
    import ray

    return {
        "gpu_ids": [str(i) for i in ray.get_gpu_ids()],
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
        "node_id": ray.get_runtime_context().get_node_id(),
        "started_at": round(time.time(), 3),
    }


def _write_error(folder: str, e: BaseException) -> None:
    import json

    from hpo.searcher import ERROR_FILE

    Path(folder).mkdir(parents=True, exist_ok=True)
    message = (str(e).strip().splitlines() or [""])[0][:500]
    kind = getattr(e, "error_class", type(e).__name__)  # a trial that failed in its forked process
    (Path(folder) / ERROR_FILE).write_text(json.dumps({"error_class": kind, "error_message": message}))


# ---------------------------------------------------------------- summaries


def _finished(study) -> int:
    from optuna.trial import TrialState

    return len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)))


def _record_disk_peak(study, mb: float) -> None:
    if mb > float(study.user_attrs.get("disk_peak_mb", 0.0)):
        study.set_user_attr("disk_peak_mb", round(mb, 2))


def _finish_summary(summary: RunSummary, study, t0: float) -> RunSummary:
    from hpo.summary import best_complete, state_counts

    trials = study.get_trials(deepcopy=False)
    summary.counts = state_counts(trials)
    summary.trials_run = sum(summary.counts.values()) - summary.finished_before
    best = best_complete(trials, study.direction)
    if best is not None:
        summary.best_value, summary.best_trial, summary.best_params = best.value, best.number, best.params
    summary.wall_s = time.time() - t0
    return summary
