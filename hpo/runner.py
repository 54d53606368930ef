"""Assembles and runs a Ray Tune search over a study: Ray, the ASHA scheduler, resources, the
Optuna bridge, and the trial processes. The only module that starts Ray.

A local Ray that hpo starts listens on 127.0.0.1 only (``_node_ip_address`` plus
``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` set before Ray is imported), reports no usage stats,
starts no dashboard, and keeps its temp files under the study's runs folder when the path is
short enough for Ray's unix sockets. Ray's own experiment state is a cache: the storage is the
source of truth, so each ``hpo run`` is a fresh Tune run that continues the study.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import signal
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hpo.errors import RunError

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
}
_SOCKET_ROOM = 107 - len("/session_2026-11-25_01-38-34_899804_10948/sockets/plasma_store") - 1


class Interrupted(Exception):
    """Raised in the driver by SIGINT/SIGTERM."""


@dataclass
class RunOptions:
    """How one ``hpo run`` invocation runs (the spec says what the study is)."""

    target: int
    runs_dir: Path
    address: str | None = None
    concurrency: int | None = None
    cpus_per_trial: float | None = None
    gpus_per_trial: float | None = None
    max_failures: int = 5


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
    notes: list[str] = field(default_factory=list)


def run(study, spec, opts: RunOptions, on_event: Callable | None = None) -> RunSummary:
    """Run trials until the study holds ``opts.target`` finished ones.

    Raises:
        RunError: Ray cannot start, or trials keep failing for the same cause.
        DataError: the data cannot be prepared.
    """
    from hpo import basemodel, data, searcher

    t0 = time.time()
    finished = _finished(study)
    summary = RunSummary(study.study_name, opts.target, finished)
    summary.recovered = searcher.recover_stale(study, spec)
    if finished >= opts.target:
        return _finish_summary(summary, study, t0)
    # 1. the base model and the data, once, in the driver (trials only read them)
    model_path = basemodel.resolve(spec.model, spec.seed)
    prepared = data.prepare(spec.data, model_path, spec.seed, basemodel.cache_dir())
    # 2. Ray, resources and the bridge
    started = _start_ray(opts)
    try:
        cpus, gpus, concurrency, notes = _resources(spec, opts)
        summary.notes += notes
        run_id = uuid.uuid4().hex[:8]
        trials_dir = (opts.runs_dir / "trials").resolve()
        bridge = searcher.OptunaBridge(
            study,
            spec,
            opts.target,
            _config_maker(spec, model_path, prepared.path, cpus, gpus),
            trials_dir,
            run_id,
            on_event,
            opts.max_failures,
        )
        stop = threading.Event()
        tuner = _tuner(spec, opts, bridge, cpus, gpus, concurrency, run_id, _stop_callback(stop))
        summary.interrupted = _fit(tuner, bridge, stop)
        summary.stop_reason, summary.disk_peak_mb = bridge.stop_reason, bridge.disk_peak_mb
        _record_disk_peak(study, bridge.disk_peak_mb)
    finally:
        if started:
            _stop_ray()
    summary = _finish_summary(summary, study, t0)
    if summary.stop_reason and not summary.interrupted:
        raise RunError(f"stopped: {summary.stop_reason}; fix the cause, then rerun the same command")
    return summary


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


def _start_ray(opts: RunOptions) -> bool:
    """Join ``opts.address`` or start a local, loopback-only Ray. Returns True if we started it."""
    ray_env()
    import ray

    for name in ("ray", "ray.tune", "ray.train"):  # hpo reports progress and errors itself
        logging.getLogger(name).setLevel(logging.CRITICAL)
    if ray.is_initialized():
        return False
    address = opts.address or os.environ.get("RAY_ADDRESS")
    env_vars = {k: v for k, v in os.environ.items() if k.startswith("HPO_")}
    try:
        if address:
            ray.init(
                address=address,
                runtime_env={"env_vars": env_vars},
                log_to_driver=False,
                logging_level=logging.ERROR,
            )
        else:
            ray.init(
                _node_ip_address="127.0.0.1",
                include_dashboard=False,
                _temp_dir=_temp_dir(opts.runs_dir),
                log_to_driver=False,
                logging_level=logging.ERROR,
                configure_logging=True,
                runtime_env={"env_vars": env_vars},
            )
    except Exception as e:  # noqa: BLE001 - Ray raises many kinds here
        raise RunError(
            f"cannot start Ray{' at ' + address if address else ''}: {str(e).splitlines()[0]}"
        ) from e
    return True


def _stop_ray() -> None:
    import ray

    ray.shutdown()


def _resources(spec, opts: RunOptions) -> tuple[float, float, int, list[str]]:
    """(cpus per trial, gpus per trial, concurrency, notes) for the cluster Ray sees."""
    import ray

    avail = ray.cluster_resources()
    cpus = opts.cpus_per_trial or spec.resources.cpus_per_trial
    gpus = opts.gpus_per_trial if opts.gpus_per_trial is not None else spec.resources.gpus_per_trial
    notes = []
    if gpus and not avail.get("GPU"):
        notes.append(f"no GPU in the Ray cluster: trials run on CPUs ({cpus:g} each)")
        gpus = 0
    fit = avail.get("GPU", 0) / gpus if gpus else avail.get("CPU", 1) / cpus
    concurrency = opts.concurrency or spec.resources.concurrency or max(1, int(fit + 1e-9))
    return cpus, gpus, concurrency, notes


def _config_maker(spec, model_path: str, data_path: str, cpus: float, gpus: float) -> Callable:
    training = spec.training

    def make(number: int, params: dict[str, Any], folder: str) -> dict[str, Any]:
        return {
            "params": params,
            "trial_number": number,
            "checkpoint_dir": folder,
            "model_path": model_path,
            "data_path": data_path,
            "seed": spec.seed,
            "eval_every": training.eval_every,
            "warmup_ratio": training.warmup_ratio,
            "max_micro_batch": training.max_micro_batch,
            "max_grad_norm": training.max_grad_norm,
            "cpus": cpus,
            "gpus": gpus,
        }

    return make


def _tuner(spec, opts: RunOptions, bridge, cpus: float, gpus: float, concurrency: int, run_id: str, callback):
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
    trainable = tune.with_resources(_trainable, {"cpu": cpus, "gpu": gpus})
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


def _trainable(config: dict[str, Any]) -> None:
    """What each Ray trial process runs: the trial loop, reporting to Tune; errors go to a file
    in the trial folder (the driver reads it) before Ray sees them."""
    from ray import tune

    from hpo import trial

    try:
        trial.run(config, lambda m: tune.report({k: v for k, v in m.items() if v is not None}))
    except Exception as e:  # not BaseException: Ray stops a trial (ASHA) by raising SystemExit in it
        _write_error(config["checkpoint_dir"], e)
        raise


def _write_error(folder: str, e: BaseException) -> None:
    import json

    from hpo.searcher import ERROR_FILE

    Path(folder).mkdir(parents=True, exist_ok=True)
    message = (str(e).strip().splitlines() or [""])[0][:500]
    (Path(folder) / ERROR_FILE).write_text(
        json.dumps({"error_class": type(e).__name__, "error_message": message})
    )


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


def clean_ray_dir(runs_dir: Path) -> None:
    """Remove Ray's experiment folders (a cache; the storage holds the results)."""
    shutil.rmtree(runs_dir / "ray", ignore_errors=True)
