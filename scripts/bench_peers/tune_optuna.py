"""Peer ``tune_optuna``: Ray Tune ``Tuner`` + ``OptunaSearch(storage=RDBStorage(sqlite))`` + ASHA.

A function trainable wraps the HF Trainer and reports ``eval_loss`` with a model-only checkpoint
at every evaluation; Ray keeps the best one per trial (``num_to_keep=1``). Adapted from
``shared/bench/peers/peer_c_tune_optuna.py``; Ray defaults otherwise (a new process per trial).
"""

from __future__ import annotations

import os
import tempfile
import time
from typing import Any

from bench_peers.settings import Settings


def trainable(config: dict[str, Any], bench: dict[str, Any]) -> None:
    """One trial: an HF Trainer reporting to Tune after every evaluation."""
    import torch
    from ray import tune
    from transformers import Trainer, TrainerCallback, TrainingArguments, default_data_collator

    from bench_peers import common

    common.quiet()
    torch.set_num_threads(bench["cpus"])
    train, val = common.hf_datasets(bench["data_path"])

    timing = common.TimingCallback(bench["timing"])

    class Report(TrainerCallback):
        def on_evaluate(self, args, state, control, metrics=None, model=None, **kw):
            t0 = time.perf_counter()
            try:  # ASHA's stop is raised inside report, after Ray copied the checkpoint
                with tempfile.TemporaryDirectory() as d:
                    model.save_pretrained(d)  # weights only, no optimizer state
                    tune.report(
                        {"eval_loss": metrics["eval_loss"], "step": state.global_step, "epoch": state.epoch},
                        checkpoint=tune.Checkpoint.from_directory(d),
                    )
            finally:
                timing.saved(time.perf_counter() - t0, state.global_step)

    s = Settings.from_dict(bench["settings"])
    batch = {
        k: config[k] for k in ("per_device_train_batch_size", "gradient_accumulation_steps") if k in config
    }
    args = TrainingArguments(
        output_dir=os.path.join(bench["work_dir"], "hf_out"),
        eval_strategy="steps",
        eval_steps=bench["eval_steps"],
        save_strategy="no",
        learning_rate=config["learning_rate"],
        num_train_epochs=config["num_train_epochs"],
        weight_decay=config["weight_decay"],
        per_device_eval_batch_size=bench["eval_batch"],  # all blocks: a token-weighted eval_loss
        logging_steps=bench["eval_steps"],
        report_to=[],
        seed=bench["seed"],
        use_cpu=True,
        disable_tqdm=True,
        **{**common.workload_args(s), **batch},
    )
    trainer = Trainer(
        model=common.make_model(bench["model_path"], config.get("dropout")),
        args=args,
        train_dataset=train,
        eval_dataset=val,
        data_collator=default_data_collator,
        callbacks=[timing, Report()],
    )
    trainer.train()


class Space:
    """Define-by-run Optuna space, the same ranges as every system (picklable: Ray saves its searcher)."""

    def __init__(self, s: Settings):
        self.s = s

    def __call__(self, trial) -> None:
        s = self.s
        from bench_peers.common import batch_choices

        trial.suggest_float("learning_rate", *s.lr, log=True)
        trial.suggest_categorical(*batch_choices(s))
        trial.suggest_int("num_train_epochs", *s.epochs)
        trial.suggest_float("weight_decay", *s.weight_decay)
        if s.searches_dropout():
            trial.suggest_float("dropout", *s.dropout)


def run(name: str, cfg: dict[str, Any]) -> dict[str, Any]:
    import optuna
    import ray
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.optuna import OptunaSearch

    from bench_peers import common

    cfg["t_imported"] = time.time()
    s = Settings.from_dict(cfg["settings"])
    units = s.peer_units
    work = cfg["work_dir"]
    timing = os.path.join(work, "timing.jsonl")
    db = f"sqlite:///{os.path.join(work, 'optuna.db')}"
    bench = {
        "data_path": cfg["data_path"],
        "model_path": cfg["model_path"],
        "work_dir": work,
        "timing": timing,
        "eval_steps": units["eval_steps"],
        "eval_batch": s.peer_eval_batch or s.n_val,
        "settings": cfg["settings"],
        "seed": s.seed,
        "cpus": s.cpus_per_trial,
    }
    t0 = time.time()
    common.ray_init(os.path.join(work, "rt"))
    searcher = OptunaSearch(
        space=Space(s),
        metric="eval_loss",
        mode="min",
        study_name="tune_optuna",
        storage=optuna.storages.RDBStorage(db),
        sampler=optuna.samplers.TPESampler(seed=s.seed),
    )
    tuner = tune.Tuner(
        tune.with_resources(tune.with_parameters(trainable, bench=bench), {"cpu": s.cpus_per_trial}),
        tune_config=tune.TuneConfig(
            search_alg=searcher,
            scheduler=ASHAScheduler(
                metric="eval_loss",
                mode="min",
                max_t=units["max_t_iters"],
                grace_period=units["grace_iters"],
                reduction_factor=s.reduction_factor,
            ),
            num_samples=s.trials,
            max_concurrent_trials=s.concurrency,
        ),
        run_config=tune.RunConfig(
            storage_path=os.path.join(work, "ray"),
            name="tune_optuna",
            checkpoint_config=tune.CheckpointConfig(
                num_to_keep=1, checkpoint_score_attribute="eval_loss", checkpoint_score_order="min"
            ),
        ),
    )
    results = tuner.fit()
    t1 = time.time()
    best = results.get_best_result(metric="eval_loss", mode="min", scope="all")
    _, best_metrics = min(best.best_checkpoints, key=lambda cm: cm[1]["eval_loss"])
    stored = optuna.load_study(study_name="tune_optuna", storage=db)
    states: dict[str, int] = {}
    for t in stored.trials:
        states[t.state.name] = states.get(t.state.name, 0) + 1
    ray.shutdown()
    runs = common.summarize_timing(timing, s.n_train, s.train_tokens)
    return {
        "wall_s": round(t1 - t0, 2),
        "t_search_end": t1,
        **common.peer_figures(runs),
        "errors": len(results.errors),
        "optuna_states": states,
        "best_eval_loss": float(best_metrics["eval_loss"]),
        "best_eval_loss_note": "the best kept checkpoint of get_best_result(scope='all')",
        "best_params": best.config,
    }
