"""Peer ``hf_optuna``: HF ``Trainer.hyperparameter_search(backend="optuna")`` + SuccessiveHalvingPruner.

Sequential: with ``n_jobs=2`` the trials share one Trainer and fail ("Cannot copy out of meta
tensor"), so this peer runs one trial at a time and gives that trial every core (torch threads =
concurrency x cpus_per_trial). TPE (seeded) in SQLite; the pruner's step is the optimizer step.
Adapted from ``shared/bench/peers/peer_b_optuna.py``.
"""

from __future__ import annotations

import os
import time
from typing import Any

from bench_peers.settings import Settings


def run(name: str, cfg: dict[str, Any]) -> dict[str, Any]:
    import optuna
    import torch
    from transformers import Trainer, default_data_collator

    from bench_peers import common

    common.quiet()
    cfg["t_imported"] = time.time()
    s = Settings.from_dict(cfg["settings"])
    threads = s.concurrency * s.cpus_per_trial
    torch.set_num_threads(threads)
    units = s.peer_units
    work = cfg["work_dir"]
    timing = os.path.join(work, "timing.jsonl")
    db = f"sqlite:///{os.path.join(work, 'optuna.db')}"
    train, val = common.hf_datasets(cfg["data_path"])

    def hp_space(trial):
        return {
            "learning_rate": trial.suggest_float("learning_rate", *s.lr, log=True),
            "per_device_train_batch_size": trial.suggest_categorical(
                "per_device_train_batch_size", list(s.batch_sizes)
            ),
            "num_train_epochs": trial.suggest_int("num_train_epochs", *s.epochs),
            "weight_decay": trial.suggest_float("weight_decay", *s.weight_decay),
        }

    args = common.search_args(work, units["eval_steps"], s.n_val, s.seed)
    trainer = Trainer(
        model_init=common.ModelInit(cfg["model_path"], optuna_dropout=s.dropout),
        args=args,
        train_dataset=train,
        eval_dataset=val,
        data_collator=default_data_collator,
        callbacks=[common.TimingCallback(timing)],
    )
    t0 = time.time()
    best = trainer.hyperparameter_search(
        hp_space=hp_space,
        backend="optuna",
        n_trials=s.trials,
        direction="minimize",
        storage=db,
        study_name="hf_optuna",
        sampler=optuna.samplers.TPESampler(seed=s.seed),
        pruner=optuna.pruners.SuccessiveHalvingPruner(
            min_resource=units["pruner_min_resource_steps"], reduction_factor=int(s.reduction_factor)
        ),
        n_jobs=1,
    )
    t1 = time.time()
    stored = optuna.load_study(study_name="hf_optuna", storage=db)
    states: dict[str, int] = {}
    for t in stored.trials:
        states[t.state.name] = states.get(t.state.name, 0) + 1
    runs = common.summarize_timing(timing, s.n_train, s.train_tokens)
    figures = common.peer_figures(runs)
    figures["stopped_early"] = states.get("PRUNED", 0)  # HF calls on_train_end before raising TrialPruned
    return {
        "wall_s": round(t1 - t0, 2),
        "t_search_end": t1,
        **figures,
        "concurrency": 1,
        "threads_per_trial": threads,
        "trials_in_driver": True,
        "errors": states.get("FAIL", 0),
        "optuna_states": states,
        "best_eval_loss": float(best.objective),
        "best_eval_loss_note": "BestRun.objective: the best COMPLETE trial's last evaluation",
        "best_params": best.hyperparameters,
    }
