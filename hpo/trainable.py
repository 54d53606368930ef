"""What each Ray trial process runs (``run_trial``): the trial loop, reporting to Tune, with what
Ray placed it on; errors go to a file in the trial folder (the driver reads it) before Ray sees
them. It runs in Ray's trial processes, never in the driver."""

from __future__ import annotations

import functools
import os
import time
from pathlib import Path
from typing import Any

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
    "data_fingerprint",
    "compile",  # what torch.compile did ("30 blocks", or "off: why")
    "save_best",  # when the trial wrote its best checkpoint (hpo/bestweights.py)
)


def run_trial(config: dict[str, Any]) -> None:
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
        settle_process(config["model_path"])
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
def settle_process(model_path: str) -> None:
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

    from hpo.bookkeeping import ERROR_FILE

    Path(folder).mkdir(parents=True, exist_ok=True)
    message = (str(e).strip().splitlines() or [""])[0][:500]
    kind = getattr(e, "error_class", type(e).__name__)  # a trial that failed in its forked process
    (Path(folder) / ERROR_FILE).write_text(json.dumps({"error_class": kind, "error_message": message}))
