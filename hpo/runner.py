"""Assembles and runs a Ray Tune search over a study: Ray (``hpo/raystart.py``), resources and the
memory plan (``hpo/resources.py``), the scheduler (``hpo/schedulers.py``), the Optuna bridge, the
trial processes (``hpo/trainable.py``), and Ctrl-C / SIGTERM.

Ray's own experiment state is a cache: the storage is the source of truth, so each ``hpo run`` is
a fresh Tune run that continues the study.
"""

from __future__ import annotations

import logging
import signal
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hpo import bestweights, objectives, placement, raystart, resources
from hpo.errors import RunError

log = logging.getLogger(__name__)


class Interrupted(Exception):
    """Raised in the driver by SIGINT/SIGTERM."""


class _KilledForMemory(Exception):
    """Tune's run ended because Ray's memory monitor killed a trial's worker (on a cluster whose
    raylets run the monitor): the live trials are FAIL OutOfMemory, and a fresh Tune run goes on."""


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
    time_budget_s: float | None = None  # the run's time budget (hpo/budget.py); None: none
    confirm: bool = False  # run the queued confirm runs (`hpo confirm`); target counts those only


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
    budget_s: float | None = None  # the time budget this run had
    budget_stopped: list[int] = field(default_factory=list)  # trials stopped at its deadline, re-queued
    budget_note: str | None = None  # why the budget started no more trials
    metrics: list[str] = field(default_factory=list)  # several objectives: their metrics, in order
    pareto: list[tuple[int, list[float]]] = field(default_factory=list)  # and the front: (trial, values)


def run(study, spec, opts: RunOptions, on_event: Callable | None = None) -> RunSummary:
    """Run trials until the study holds ``opts.target`` finished ones, or the time budget
    (``opts.time_budget_s``, counted from now) is spent: then no new trial starts that cannot reach
    its first rung before the deadline, and trials still running at the deadline are stopped and
    re-queued (``fail_reason: budget``) for the next run.

    Raises:
        RunError: Ray cannot start, or trials keep failing for the same cause.
        DataError: the data cannot be prepared.
    """
    raystart.ray_env()  # before anything imports ray (the searcher does)
    from hpo import basemodel, warmstart

    t0 = time.time()
    finished = _finished(study, opts.confirm)
    summary = RunSummary(study.study_name, opts.target, finished, budget_s=opts.time_budget_s)
    model_path, warm = "", None
    if finished < opts.target:
        resources.requested(spec, opts)  # a bad per-trial request fails before any work
        model_path = basemodel.resolve(spec.model, spec.seed)
        # trial processes fork from a process that imports the trial's code while Ray starts
        warm = warmstart.start(model_path) if _warm_wanted(opts) else None
    try:
        return _run(study, spec, opts, on_event, summary, model_path, warm, t0)
    finally:  # its log is kept where a run that got as far as Ray keeps its files
        warmstart.stop(warm, opts.runs_dir / "warmstart.log")


def _run(study, spec, opts: RunOptions, on_event, summary: RunSummary, model_path: str, warm, t0: float):
    from hpo import basemodel, data, gcpause, recovery

    with gcpause.paused():  # it imports Ray Tune: ~0.4 s less CPU with the collector paused
        from hpo import searcher

    summary.recovered = recovery.recover_stale(study, spec)
    if summary.finished_before >= opts.target:
        return _finish_summary(summary, study, t0)
    # 1. the data, once, in the driver (trials only read it); with data settings bound to the
    #    space, each trial prepares (or finds in the cache) the set its parameters choose
    searched = bool(spec.data.params())
    prepared = None if searched else data.prepare(spec.data, model_path, spec.seed, basemodel.cache_dir())
    # 2. Ray, resources and the bridge
    with gcpause.paused():
        started = raystart.start(opts.runs_dir, opts.address)
    threads_file: Path | None = None
    try:
        plan = resources.placement_plan(spec, opts)
        cpus, gpus, concurrency = plan.cpus, plan.gpus, plan.concurrency
        mem = resources.memory_plan(spec, opts, model_path, plan)
        if mem is not None and not (opts.concurrency or spec.resources.concurrency):
            concurrency = min(concurrency, mem.fits)
        summary.concurrency = concurrency
        summary.notes += plan.notes + resources.cluster_notes(study, opts)
        summary.notes += resources.memory_notes(mem, concurrency)
        summary.notes += objectives_note(spec)
        address = raystart.cluster_address(opts.address)
        if started and not address and not gpus:  # every trial runs on this machine's CPUs
            note = placement.precision_note(spec.training.precision, placement.cpu_flags())
            summary.notes += [note] if note else []
        run_id = uuid.uuid4().hex[:8]
        trials_dir = (opts.runs_dir / "trials").resolve()
        if placement.shares_idle_cpus(started, address, cpus, gpus):
            threads_file = trials_dir / f".threads-{run_id}"
        warm_address = warm.address if warm and started else None
        stop = threading.Event()
        deadline = t0 + opts.time_budget_s if opts.time_budget_s else None
        asked = {"cpu": cpus, "gpu": gpus, **({"memory": mem.per_trial} if mem else {})}
        for attempt in range(RESTARTS + 1):  # a fresh Tune run after Ray killed trials for memory
            bridge = searcher.OptunaBridge(
                study,
                spec,
                opts.target,
                _config_maker(
                    spec,
                    model_path,
                    prepared.path if prepared else None,
                    cpus,
                    gpus,
                    threads_file,
                    warm_address,
                    mem,
                ),
                trials_dir,
                f"{run_id}-{attempt}" if attempt else run_id,
                on_event,
                opts.max_failures,
                (threads_file, int(cpus), concurrency) if threads_file else None,
                deadline,
                confirm=opts.confirm,
            )
            tuner = _tuner(spec, opts, bridge, asked, concurrency, run_id, _stop_callback(stop))
            try:
                summary.interrupted = _fit(tuner, bridge, stop)
                break
            except _KilledForMemory as e:
                summary.notes.append(str(e))
        summary.stop_reason, summary.disk_peak_mb = bridge.stop_reason, bridge.disk_peak_mb
        summary.budget_stopped, summary.budget_note = bridge.budget_stopped, bridge.budget_note
        _record_disk_peak(study, bridge.disk_peak_mb)
    finally:
        if started:
            raystart.stop()
        if threads_file is not None:
            threads_file.unlink(missing_ok=True)
    summary = _finish_summary(summary, study, t0)
    if summary.stop_reason and not summary.interrupted:
        raise RunError(f"stopped: {summary.stop_reason}; fix the cause, then rerun the same command")
    return summary


def objectives_note(spec) -> list[str]:
    """What ASHA does with several objectives: it compares trials on the first one only."""
    if not spec.objectives or spec.schedule.type != "asha":
        return []
    return [
        f"ASHA stops trials on the first objective ({spec.metrics[0]}) only; "
        f"{', '.join(spec.metrics[1:])} count on finished trials (the Pareto front)"
    ]


def _warm_wanted(opts: RunOptions) -> bool:
    """Warm trial processes for a Ray this run starts itself: every trial then runs on this machine."""
    from hpo import warmstart

    ray = sys.modules.get("ray")
    already = ray is not None and ray.is_initialized()  # a notebook's Ray: its trials may run anywhere
    return warmstart.wanted() and raystart.cluster_address(opts.address) is None and not already


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


def _deadline_stopper(bridge):
    """Tune's stopper for a time budget: at the bridge's deadline it ends the whole experiment
    (``stop_all``); Tune then stops the running trials, and the bridge, told ``budget_over``,
    records and re-queues them when the run ends (``abandon_live``)."""
    from ray.tune.stopper import Stopper

    class _Deadline(Stopper):
        def __call__(self, trial_id, result):
            return False  # no single trial is stopped early: the deadline ends them all

        def stop_all(self):
            if bridge is None or bridge.deadline is None or time.time() < bridge.deadline:
                return False
            bridge.budget_over = True
            return True

        def __reduce__(self):  # Ray pickles its stopper into its (unused) experiment state
            return (_deadline_stopper, (None,))

    return _Deadline()


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


def _config_maker(
    spec,
    model_path: str,
    data_path: str | None,
    cpus: float,
    gpus: float,
    threads_file: Path | None = None,
    warm_address: str | None = None,
    mem=None,
) -> Callable:
    training, gen = spec.training, spec.evaluation.generate
    save_best = bestweights.resolve(training.save_best, spec.schedule.type, spec.adapter is not None)

    def make(number: int, params: dict[str, Any], folder: str) -> dict[str, Any]:
        return {
            "params": params,
            "trial_number": number,
            "checkpoint_dir": folder,
            "model_path": model_path,
            "data_path": data_path,  # None: the trial prepares its own (data parameters searched)
            **({} if data_path else _data_settings(spec)),
            "seed": spec.seed if training.seed is None else training.seed,
            "eval_every": training.eval_every,
            "eval_epochs": spec.eval_epochs(),  # None: every eval_every mark; else ASHA rungs + max_t
            "warmup_ratio": training.warmup_ratio,
            "max_micro_batch": training.max_micro_batch,  # auto: the largest that fits (hpo.memory)
            "gradient_checkpointing": training.gradient_checkpointing,
            "compile": training.compile,  # auto: large models where a compiler is found
            "save_best": save_best,  # deferred: a best waits in memory until the trial ends
            "memory_bytes": mem.per_trial if mem else None,  # the trial's host memory share
            "hold_memory": bool(mem and spec.resources.memory_gb),  # resources.memory_gb is a hard limit
            "max_grad_norm": training.max_grad_norm,
            "lr_scheduler": training.lr_scheduler,
            "gradient_accumulation_steps": training.gradient_accumulation_steps,
            "label_smoothing": training.label_smoothing,
            "l1": training.l1,
            "early_stopping_patience": training.early_stopping_patience,
            "objective": spec.objective.metric,
            "objective_direction": spec.objective.direction,
            # a generation metric among the objectives: every evaluation generates (its best is kept)
            "objective_generated": any(objectives.generated(m) for m in spec.metrics),
            "generate": gen.model_dump() if gen else None,  # evaluation.generate (hpo/generation.py)
            "generate_seed": spec.seed,  # every trial answers the same prompts
            "generate_epochs": spec.eval_epochs_asha(),  # ASHA's rungs and max_t (none without ASHA)
            "objective_source": spec.data.objective_source,  # a mixture: that source's validation
            "precision": training.precision,  # auto: placement.precision decides on the trial's device
            "adapter": spec.adapter.model_dump() if spec.adapter else None,
            "cpus": cpus,
            "gpus": gpus,
            "threads_file": str(threads_file) if threads_file else None,  # placement.tail_threads
            "warm_address": warm_address,  # hpo/warmstart.py: fork the trial process from there
        }

    return make


def _data_settings(spec) -> dict[str, Any]:
    """What a trial needs to prepare the data its parameters choose (``hpo.data.for_trial``)."""
    from hpo import basemodel

    return {"data": spec.data.model_dump(), "data_seed": spec.seed, "cache_root": str(basemodel.cache_dir())}


def _tuner(spec, opts: RunOptions, bridge, asked: dict, concurrency: int, run_id: str, callback):
    from ray import tune

    from hpo.schedulers import build
    from hpo.trainable import run_trial

    scheduler = build(spec)  # asha, pasha or none (FIFO)
    bridge.scheduler = scheduler  # PASHA tells the bridge which stopped trials ran their budget
    trainable = tune.with_resources(run_trial, asked)  # cpu, gpu and (CPU trials) memory
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
            stop=_deadline_stopper(bridge) if bridge.deadline is not None else None,
        ),
    )


# ---------------------------------------------------------------- summaries


def _finished(study, confirm: bool = False) -> int:
    """The study's own finished (COMPLETE + PRUNED) search trials, or with ``confirm`` its confirm
    runs: imported ones count toward nothing."""
    from hpo.bookkeeping import finished_and_running

    return finished_and_running(study.get_trials(deepcopy=False), confirm)[0]


def _record_disk_peak(study, mb: float) -> None:
    if mb > float(study.user_attrs.get("disk_peak_mb", 0.0)):
        study.set_user_attr("disk_peak_mb", round(mb, 2))


def _finish_summary(summary: RunSummary, study, t0: float) -> RunSummary:
    from hpo.storage import spec_of
    from hpo.summary import best_complete, first_value, is_confirm, pareto, state_counts

    trials = study.get_trials(deepcopy=False)
    summary.counts = state_counts([t for t in trials if not is_confirm(t)])  # search trials
    summary.trials_run = sum(summary.counts.values()) - summary.finished_before
    best = best_complete(trials, study.directions[0])
    if best is not None:
        summary.best_value, summary.best_trial, summary.best_params = (
            first_value(best),
            best.number,
            best.params,
        )
    spec = spec_of(study)
    if spec.objectives:
        summary.metrics = spec.metrics
        summary.pareto = [(t.number, list(t.values)) for t in pareto(trials, spec.directions)]
    summary.wall_s = time.time() - t0
    return summary
