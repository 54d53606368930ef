"""Timing probes for ``--profile``: wrap hpo's functions in every process (driver and Ray trial
processes) as their modules load, and append one JSON line per call to ``$HPO_BENCH_PROBE``.

Loaded by ``probe/sitecustomize.py`` (on ``PYTHONPATH`` only for a profile run), so Ray's worker
processes, which hpo never lets us touch, get the same probes. Nothing in hpo changes.
"""

from __future__ import annotations

import functools
import importlib.abc
import json
import os
import sys
import time
from typing import Any

T_PROCESS = time.time()  # sitecustomize runs this at interpreter start
PATH = os.environ.get("HPO_BENCH_PROBE", "")
_STATE: dict[str, Any] = {"trial": None, "runs": 0, "step_s": 0.0, "steps": 0}

# module -> functions (``Class.method`` for methods) to time
TARGETS = {
    "hpo.trial": ["run", "load_model", "evaluate_metrics"],
    "hpo.trialstep": ["step"],
    "hpo.bestweights": ["BestWeights.after_eval", "save_checkpoint"],
    "hpo.data": ["prepare", "Prepared.arrays"],
    "hpo.runner": ["run", "_tuner", "_fit"],
    "hpo.raystart": ["start", "stop"],
    "hpo.trainable": ["run_trial"],
    "hpo.searcher": [
        "OptunaBridge.suggest",
        "OptunaBridge.on_trial_result",
        "OptunaBridge.on_trial_complete",
        "OptunaBridge._collect_garbage",
        "OptunaBridge._note_disk",
        "recover_stale",
    ],
    "hpo.storage": ["load"],
    "ray.tune": ["report"],
}
# ``module:function,...``: time only these (the realistic bench times hpo's checkpoint writes alone)
if os.environ.get("HPO_BENCH_PROBE_ONLY"):
    _only = [x.split(":", 1) for x in os.environ["HPO_BENCH_PROBE_ONLY"].split(",")]
    TARGETS = {m: [f for mm, f in _only if mm == m] for m in {m for m, _ in _only}}


def emit(**rec: Any) -> None:
    rec.update(pid=os.getpid(), t_process=T_PROCESS)
    with open(PATH, "a") as f:
        f.write(json.dumps(rec, default=str) + "\n")


def _wrap(module: str, qualname: str, fn):
    name = f"{module}.{qualname}"

    @functools.wraps(fn)
    def timed(*args, **kwargs):
        t0 = time.time()
        if qualname == "run" and module == "hpo.trial":
            _STATE.update(trial=args[0].get("trial_number"), step_s=0.0, steps=0)
            _STATE["runs"] += 1
            # a trial's process may be killed before run returns: record its start now
            emit(fn=f"{name}:start", t0=t0, dt=0.0, trial=_STATE["trial"], runs_in_process=_STATE["runs"])
        result = None
        try:
            result = fn(*args, **kwargs)
            return result
        finally:
            dt = time.time() - t0
            # the optimizer step: hundreds per trial, summed and written with the next evaluation
            if qualname == "step" and module == "hpo.trialstep":
                _STATE["step_s"] += dt
                _STATE["steps"] += 1
            else:
                extra = {"runs_in_process": _STATE["runs"]} if qualname == "run" else {}
                if qualname in ("evaluate_metrics", "run") and module == "hpo.trial":
                    extra.update(step_s=_STATE["step_s"], steps=_STATE["steps"])
                emit(fn=name, t0=t0, dt=dt, trial=_trial_of(qualname, args, result), **extra)

    return timed


def _trial_of(qualname: str, args: tuple, result: Any) -> Any:
    if qualname == "OptunaBridge.suggest":  # the trial number is known only after ask
        return result.get("trial_number") if isinstance(result, dict) else None
    if qualname == "run_trial" and args and isinstance(args[0], dict):
        return args[0].get("trial_number")
    if qualname == "save_checkpoint" and len(args) > 1 and isinstance(args[1], dict):
        return args[1].get("trial_number")
    return _STATE["trial"]


def patch(module) -> None:
    for qualname in TARGETS.get(module.__name__, []):
        owner, _, attr = qualname.rpartition(".")
        holder = getattr(module, owner) if owner else module
        fn = getattr(holder, attr, None)
        if fn is not None and not getattr(fn, "_probed", False):
            wrapped = _wrap(module.__name__, qualname, fn)
            wrapped._probed = True  # type: ignore[attr-defined]
            setattr(holder, attr, wrapped)


class _Finder(importlib.abc.MetaPathFinder):
    """Patches a target module right after it executes."""

    def find_spec(self, name, path, target=None):
        if name not in TARGETS:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(name, path, target)
            if spec is not None and spec.loader is not None:
                original = spec.loader.exec_module

                def exec_module(module, _original=original):
                    _original(module)
                    patch(module)

                spec.loader.exec_module = exec_module  # type: ignore[method-assign]
                return spec
        return None


def install() -> None:
    if PATH:
        sys.meta_path.insert(0, _Finder())
