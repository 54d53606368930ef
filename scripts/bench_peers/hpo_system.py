"""hpo itself: ``create_study`` + ``run_study`` on the bench spec; every figure from the storage.

``hpo`` runs the spec as hpo runs it by default (``training.precision: auto``: bf16 autocast on a
CPU with AMX or AVX512-BF16, fp32 elsewhere); ``hpo_fp32`` the same spec with ``precision: fp32``, the peers'
arithmetic, so a run shows what the precision buys apart from what the rest of hpo does.

Per trial, hpo records ``train_s`` (inside optimizer steps) and ``eval_s`` (inside evaluations) as
user attributes; their sums over all trials are the compute the overhead is measured against.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from bench_peers import settings


def run(name: str, cfg: dict[str, Any]) -> dict[str, Any]:
    import optuna
    from optuna.trial import TrialState

    from hpo.study import create_study, run_study

    cfg["t_imported"] = time.time()
    s = settings.Settings.from_dict(cfg["settings"])
    work = cfg["work_dir"]
    url = f"sqlite:///{os.path.join(work, 'hpo.db')}"
    create_study(_spec(name, cfg["spec_path"], work), storage=url)
    t0 = time.time()
    summary = run_study(
        "bench", trials=s.trials, storage=url, runs_dir=os.path.join(work, "runs"), concurrency=s.concurrency
    )
    t1 = time.time()
    study = optuna.load_study(study_name="bench", storage=url)
    trials = study.get_trials(deepcopy=False)
    figures = trial_figures(trials, TrialState)
    figures["idle_slot_s"] = idle_slot_s(trials, t0, t1, s.concurrency)
    if cfg.get("probe_path"):  # the realistic workload times hpo's checkpoint writes with a probe
        figures.update(checkpoint_writes(cfg["probe_path"], trials))
    best = study.best_trial if any(t.state == TrialState.COMPLETE for t in trials) else None
    return {
        "wall_s": round(t1 - t0, 2),
        "t_search_end": t1,
        **figures,
        "best_eval_loss": float(best.value) if best else None,
        "best_eval_loss_note": "the study's best COMPLETE trial (what `hpo export` writes)",
        "best_params": best.params if best else None,
        "hpo_disk_peak_mb": summary.disk_peak_mb,
        "checkpoint_mb": checkpoint_mb(os.path.join(work, "runs")),
        "precisions": sorted({str(t.user_attrs.get("precision")) for t in trials}),
        "hpo_summary_wall_s": round(summary.wall_s, 2),
    }


def checkpoint_mb(runs_dir: str) -> float | None:
    """The size of one of hpo's checkpoint folders (the largest kept ``step-*`` folder), in MB."""
    from bench_peers.monitor import du_bytes

    sizes = [du_bytes(str(p)) for p in Path(runs_dir).rglob("step-*") if p.is_dir()]
    return round(max(sizes) / 1e6, 2) if sizes else None


def _spec(name: str, spec_path: str, work: str) -> str:
    """The bench spec, or for ``hpo_fp32`` a copy of it that trains in fp32."""
    if name != "hpo_fp32":
        return spec_path
    import yaml

    spec = yaml.safe_load(Path(spec_path).read_text())
    spec.setdefault("training", {})["precision"] = "fp32"
    # relative data paths resolve against the spec's folder: keep the copy beside the original
    out = Path(spec_path).with_name(f"{Path(spec_path).stem}-fp32.yaml")
    out.write_text(yaml.safe_dump(spec, sort_keys=False))
    return str(out)


def idle_slot_s(trials: list, t0: float, t1: float, slots: int) -> dict[str, float]:
    """Two parts of the overhead, in slot-seconds: ``start``, from the run's start to each slot's
    first trial reaching its Ray trial process (``started_at``: imports, Ray and Tune starting), and
    ``tail``, the slots left idle after the other trials finished while the last ones ran."""
    started = sorted(t.user_attrs["started_at"] for t in trials if t.user_attrs.get("started_at"))
    done = sorted(t.datetime_complete.timestamp() for t in trials if t.datetime_complete)
    start = sum(max(0.0, x - t0) for x in started[:slots])
    tail = sum(max(0.0, t1 - x) for x in done[-slots:-1]) if len(done) >= slots else 0.0
    return {"start": round(start, 2), "tail": round(tail, 2)}


def trial_figures(trials: list, TrialState) -> dict[str, Any]:
    """Counts, compute seconds, tokens and losses over a study's trials."""
    finished = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    seen = [v for t in trials for v in t.intermediate_values.values()]
    rates = [t.user_attrs["tokens_per_s"] for t in trials if t.user_attrs.get("tokens_per_s")]
    return {
        "trials": len(finished),
        "stopped_early": sum(t.state == TrialState.PRUNED for t in trials),
        "errors": sum(t.state == TrialState.FAIL for t in trials),
        "train_s": round(sum(t.user_attrs.get("train_s", 0.0) for t in trials), 2),
        "eval_s": round(sum(t.user_attrs.get("eval_s", 0.0) for t in trials), 2),
        "train_tokens": sum(int(t.user_attrs.get("tokens", 0)) for t in trials),
        "evaluations": len(seen),
        "min_eval_loss_seen": min(seen) if seen else None,
        "trial_tokens_per_s_mean": round(sum(rates) / len(rates), 1) if rates else None,
        "trial_durations_s": [
            round((t.datetime_complete - t.datetime_start).total_seconds(), 2)
            for t in trials
            if t.datetime_complete and t.datetime_start
        ],
        "trial_s": [round(t.user_attrs.get("trial_s", 0.0), 2) for t in trials],
        "trial_tokens_per_s": [
            round(t.user_attrs["tokens_per_s"], 1) for t in trials if t.user_attrs.get("tokens_per_s")
        ],
        "trial_batch": [t.params.get("batch_size") for t in trials if t.user_attrs.get("tokens_per_s")],
        # trained its whole budget (not stopped by ASHA): the same run as the plain reference's
        "trial_full_budget": [
            t.state == TrialState.COMPLETE for t in trials if t.user_attrs.get("tokens_per_s")
        ],
    }


def checkpoint_writes(probe_path: str, trials: list) -> dict[str, Any]:
    """Seconds keeping each trial's best (``hpo.bestweights.BestWeights.after_eval``: copies held in
    memory and checkpoint writes, the probe's lines), in all and per trial; and the writes."""
    import json

    per: dict[int, float] = {}
    saves = 0
    with open(probe_path) as f:
        for line in f:
            r = json.loads(line)
            if r.get("fn") == "hpo.bestweights.BestWeights.after_eval":
                per[r.get("trial")] = per.get(r.get("trial"), 0.0) + r["dt"]
            elif r.get("fn") == "hpo.bestweights.save_checkpoint":
                saves += 1
    return {
        "save_s": round(sum(per.values()), 2),
        "saves": saves,
        "trial_save_s": [round(per.get(t.number, 0.0), 2) for t in trials],
    }
