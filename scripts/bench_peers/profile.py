"""``--profile``: run hpo on the bench spec with timing probes everywhere, then say where each
trial's slot-seconds went (process start and imports, Ray scheduling, data, model load, steps,
evaluation, checkpoints, reports, driver-side storage writes, idle slots).
"""

from __future__ import annotations

import json
import os
from collections import defaultdict
from typing import Any

from bench_peers import hpo_system


def run(name: str, cfg: dict[str, Any]) -> dict[str, Any]:
    out = hpo_system.run("hpo", cfg)
    out["profile"] = analyze(os.environ["HPO_BENCH_PROBE"], cfg["settings"]["concurrency"], out["wall_s"])
    return out


def _load(path: str) -> list[dict[str, Any]]:
    with open(path) as f:
        return [json.loads(line) for line in f]


def analyze(path: str, concurrency: int, wall_s: float) -> dict[str, Any]:
    """Per-trial and whole-run breakdown from the probe lines."""
    recs = _load(path)
    driver_pid = next(r["pid"] for r in recs if r["fn"] == "hpo.runner.run")
    driver = [r for r in recs if r["pid"] == driver_pid]
    totals: dict[str, float] = defaultdict(float)
    counts: dict[str, int] = defaultdict(int)
    for r in driver:
        totals[r["fn"]] += r["dt"]
        counts[r["fn"]] += 1
    suggests = [r for r in driver if r["fn"].endswith("suggest") and r["trial"] is not None]
    asked = {r["trial"]: r["t0"] + r["dt"] for r in suggests}
    per_trial = _per_trial([r for r in recs if r["pid"] != driver_pid], asked)
    n = max(1, len(per_trial))
    mean = {k: round(sum(t.get(k, 0.0) for t in per_trial.values()) / n, 3) for k in PHASES}
    busy = sum(t["run_s"] + t.get("ask_to_run", 0.0) for t in per_trial.values())
    fresh = [t for t in per_trial.values() if t["runs_in_process"] == 1]
    return {
        "trials_profiled": len(per_trial),
        "per_trial_mean_s": mean,
        "fresh_process_trials": len(fresh),
        "fresh_process_mean_s": {
            k: round(sum(t.get(k, 0.0) for t in fresh) / max(1, len(fresh)), 3)
            for k in ("ask_to_run", "imports_setup", "model_load")
        },
        "idle_slot_s_per_trial": round((wall_s * concurrency - busy) / n, 3),
        "driver": {
            k.removeprefix("hpo."): {"s": round(v, 3), "calls": counts[k]} for k, v in sorted(totals.items())
        },
        "driver_bridge_s_per_trial": round(
            sum(v for k, v in totals.items() if k.startswith("hpo.searcher.OptunaBridge")) / n, 3
        ),
        "per_trial": per_trial,
    }


#: The phases of a trial: Ray scheduling and process start (ask_to_run) and the trial loop's parts.
PHASES = (
    "ask_to_run",
    "imports_setup",
    "data",
    "model_load",
    "steps",
    "eval",
    "checkpoint",
    "report",
    "other_in_run",
)
_NAMES = {
    "arrays": "data",
    "load_model": "model_load",
    "evaluate_metrics": "eval",
    "after_eval": "checkpoint",  # hpo.bestweights: copies held and writes (its save_checkpoint is inside)
}


def _per_trial(workers: list[dict[str, Any]], asked: dict[int, float]) -> dict[int, dict[str, float]]:
    """Seconds per phase for every trial, from its process's probe lines."""
    by_trial: dict[int, dict[str, Any]] = {}
    for r in sorted(workers, key=lambda r: r["t0"]):
        if r.get("trial") is None:
            continue
        t = by_trial.setdefault(r["trial"], defaultdict(float))
        if r["fn"] == "hpo.trial.run:start":
            t.update(run_t0=r["t0"], runs_in_process=r["runs_in_process"])
            continue
        fn = r["fn"].rpartition(".")[2]
        if fn in ("run", "run_trial"):  # their end includes the last report's wait
            continue
        if fn == "report":  # the last report blocks until Ray stops or reuses the process: not counted
            t.setdefault("reports", []).append(r)
            continue
        t["end_t"] = max(t.get("end_t", 0.0), r["t0"] + r["dt"])
        if fn == "arrays":
            t.setdefault("first_inner_t0", r["t0"])
        if fn == "evaluate_metrics":
            t["steps"] = max(t["steps"], r["step_s"])
        if fn in _NAMES:
            t[_NAMES[fn]] += r["dt"]
    out = {}
    for trial, t in by_trial.items():
        if "run_t0" not in t:
            continue
        reports = t.pop("reports", [])
        t["report"] = sum(r["dt"] for r in reports[:-1])
        if reports:
            t["end_t"] = max(t.get("end_t", 0.0), reports[-1]["t0"])
        t["run_s"] = t.get("end_t", t["run_t0"]) - t["run_t0"]
        t["imports_setup"] = t.get("first_inner_t0", t["run_t0"]) - t["run_t0"]
        t["other_in_run"] = t["run_s"] - sum(t.get(k, 0.0) for k in PHASES[1:-1])
        if trial in asked:  # asked in the driver -> the trial loop starts in its process
            t["ask_to_run"] = t["run_t0"] - asked[trial]
        out[trial] = {k: round(v, 3) for k, v in t.items() if not k.endswith(("t0", "_t"))}
    return out
