"""Synthetic finished hpo studies made with Optuna directly (no training): for report, dashboard
and display tests. Trials follow the storage contract of ``hpo.searcher``: ASHA-shaped learning
curves on a quarter-epoch grid, PRUNED at rungs, COMPLETE at their own epochs, a few FAILs."""

from __future__ import annotations

import datetime as dt
import json
import math
import random
from pathlib import Path

import optuna
from optuna.trial import FrozenTrial, TrialState

from hpo import space
from hpo import spec as spec_mod
from hpo.storage import SPEC_ATTR

SPEC = {
    "name": "synth",
    "model": "hpo:tiny-gpt2",
    "data": {"path": "/nonexistent/support.jsonl", "format": "jsonl"},
    "space": {
        "learning_rate": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True},
        "batch_size": {"type": "categorical", "choices": [8, 16, 32]},
        "epochs": {"type": "int", "low": 1, "high": 2},
        "dropout": {"type": "float", "low": 0.0, "high": 0.2},
        "weight_decay": 0.01,
    },
    "schedule": {"type": "asha", "grace_period": 0.25, "reduction_factor": 2},
    "training": {"eval_every": 0.25},
    "keep_top_k": 3,
}
EVAL_EVERY = 0.25
RUNGS = (1, 2, 4)  # steps of the rungs at 0.25, 0.5 and 1 epoch


def _params(rng: random.Random) -> dict:
    return {
        "learning_rate": math.exp(rng.uniform(math.log(1e-4), math.log(1e-2))),
        "batch_size": rng.choice([8, 16, 32]),
        "epochs": rng.randint(1, 2),
        "dropout": rng.uniform(0.0, 0.2),
    }


def _curve(p: dict, rng: random.Random) -> dict[int, float]:
    """Eval loss per step: best near lr 3e-3 and little dropout, falling with training."""
    base = 2.2 + 0.6 * abs(math.log10(p["learning_rate"]) + 2.5) + 1.5 * p["dropout"] + 0.2 * rng.random()
    return {k: base + 1.2 / (1 + k) + 0.03 * rng.random() for k in range(1, 4 * p["epochs"] + 1)}


def _trial(i: int, rng: random.Random, dists: dict, t0: dt.datetime, ckpt_root: Path | None) -> FrozenTrial:
    p = _params(rng)
    curve = _curve(p, rng)
    roll = rng.random()
    state = TrialState.COMPLETE
    if roll < 0.05 and i > 0:
        state, curve = TrialState.FAIL, dict(list(curve.items())[:1])
    elif roll < 0.6 and i > 0:
        cut = rng.choice([r for r in RUNGS if r < max(curve)])
        state, curve = TrialState.PRUNED, {k: v for k, v in curve.items() if k <= cut}
    secs = 6.0 * len(curve) + rng.random()
    epoch = max(curve) * EVAL_EVERY
    folder = (ckpt_root or Path("/nonexistent/runs")) / f"{i:05d}"
    attrs: dict = {"ray_trial_id": f"t{i:05d}", "trial_dir": str(folder), "epoch": epoch, "host": "synth"}
    attrs["checkpoint"] = str(folder / f"step-{max(curve) * 10:05d}")
    if state == TrialState.FAIL:
        attrs.update(
            error_class="TrialError", error_message="loss became NaN at step 3; lower the learning rate"
        )
    else:
        best_step = min(curve, key=curve.__getitem__)
        attrs.update(best_eval_loss=curve[best_step], best_epoch=best_step * EVAL_EVERY, trial_s=secs)
        attrs["best_perplexity"] = math.exp(curve[best_step])
    if state == TrialState.PRUNED:
        attrs["pruned_at_epoch"] = epoch
    trial = optuna.trial.create_trial(
        state=state,
        value=min(curve.values()) if state == TrialState.COMPLETE else None,
        params=p,
        distributions=dists,
        user_attrs=attrs,
        intermediate_values=curve,
    )
    trial.datetime_start = t0 + dt.timedelta(seconds=20 * i)
    trial.datetime_complete = trial.datetime_start + dt.timedelta(seconds=secs)
    return trial


def make_study(
    storage: str | None, n: int, name: str = "synth", seed: int = 0, ckpt_root: Path | None = None
) -> optuna.Study:
    """A finished hpo study of ``n`` synthetic trials (``storage`` None: in memory).

    With ``ckpt_root``, the 3 best COMPLETE trials get a checkpoint folder on disk (kept); every
    other trial points at a folder that is not there (deleted by the keep_top_k clean-up).
    """
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    spec = spec_mod.from_json(json.dumps({**SPEC, "name": name}))
    study = optuna.create_study(storage=storage, study_name=name, direction="minimize")
    study.set_user_attr(SPEC_ATTR, spec.to_json())
    rng = random.Random(seed)
    dists = space.distributions(spec.space)
    t0 = dt.datetime(2025, 1, 1, 12, 0, 0)
    trials = [_trial(i, rng, dists, t0, ckpt_root) for i in range(n)]
    study.add_trials(trials)
    if ckpt_root is not None:
        done = sorted((t for t in trials if t.state == TrialState.COMPLETE), key=lambda t: t.value)
        for t in done[:3]:
            Path(t.user_attrs["checkpoint"]).mkdir(parents=True)
    return study
