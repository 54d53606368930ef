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
    best = study.best_trial if any(t.state == TrialState.COMPLETE for t in trials) else None
    return {
        "wall_s": round(t1 - t0, 2),
        "t_search_end": t1,
        **figures,
        "best_eval_loss": float(best.value) if best else None,
        "best_eval_loss_note": "the study's best COMPLETE trial (what `hpo export` writes)",
        "best_params": best.params if best else None,
        "hpo_disk_peak_mb": summary.disk_peak_mb,
        "hpo_summary_wall_s": round(summary.wall_s, 2),
    }


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
    }
