"""Peer ``hf_ray``: HF ``Trainer.hyperparameter_search(backend="ray")`` + Ray's ``ASHAScheduler``.

As a user following the HF docs runs it (adapted from ``shared/bench/peers/peer_a_ray.py``): random
search (Ray's default variant generator, seeded), checkpoints saved at every evaluation because
HF hands Ray a checkpoint only when it saves, Ray defaults otherwise (a new process per trial,
every checkpoint kept; the realistic workload keeps ``keep_checkpoints`` per trial, in the Trainer's
output folder and in Ray's). ASHA's time unit is ``training_iteration`` = evaluations so far.
Checkpoint writes are timed around HF's Ray report (which saves model and optimizer for Ray, and
Ray copies that folder into its storage) and the Trainer's own save (``TimedTrainer``).
"""

from __future__ import annotations

import os
import time
from typing import Any

from transformers import Trainer

from bench_peers import common
from bench_peers.settings import Settings


class TimedTrainer(Trainer):
    """HF's Trainer with its checkpoint writes timed (into the TimingCallback's ``save_s``)."""

    def _timed(self, fn, *args):
        t0 = time.perf_counter()
        saving = self.control.should_save
        try:
            return fn(*args)
        finally:  # ASHA's stop is raised inside Ray's report, after the checkpoint was written
            if saving:
                timing = next(
                    c for c in self.callback_handler.callbacks if isinstance(c, common.TimingCallback)
                )
                timing.saved(time.perf_counter() - t0, self.state.global_step)

    def _report_to_hp_search(self, trial, step, metrics):
        return self._timed(super()._report_to_hp_search, trial, step, metrics)

    def _save_checkpoint(self, model, trial):
        return self._timed(super()._save_checkpoint, model, trial)


def run(name: str, cfg: dict[str, Any]) -> dict[str, Any]:
    import ray
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.basic_variant import BasicVariantGenerator
    from transformers import default_data_collator

    common.quiet()
    cfg["t_imported"] = time.time()
    s = Settings.from_dict(cfg["settings"])
    units = s.peer_units
    work = cfg["work_dir"]
    timing = os.path.join(work, "timing.jsonl")
    train, val = common.hf_datasets(cfg["data_path"])

    batch_key, batch_values = common.batch_choices(s)

    def hp_space(_):
        space = {
            "learning_rate": tune.loguniform(*s.lr),
            batch_key: tune.choice(batch_values),
            "num_train_epochs": tune.choice(list(range(s.epochs[0], s.epochs[1] + 1))),
            "weight_decay": tune.uniform(*s.weight_decay),
        }
        return {**space, "dropout": tune.uniform(*s.dropout)} if s.searches_dropout() else space

    args = common.search_args(work, units["eval_steps"], s.n_val, s.seed, s)
    keep = {}
    if s.keep_checkpoints:  # Ray keeps every reported checkpoint of every trial unless told
        keep["checkpoint_config"] = tune.CheckpointConfig(
            num_to_keep=s.keep_checkpoints,
            checkpoint_score_attribute="objective",
            checkpoint_score_order="min",
        )
    trainer = TimedTrainer(
        model_init=common.ModelInit(cfg["model_path"]),
        args=args,
        train_dataset=train,
        eval_dataset=val,
        data_collator=default_data_collator,
        callbacks=[common.TimingCallback(timing)],
    )
    scheduler = ASHAScheduler(
        metric="eval_loss",
        mode="min",
        max_t=units["max_t_iters"],
        grace_period=units["grace_iters"],
        reduction_factor=s.reduction_factor,
    )
    t0 = time.time()
    common.ray_init(os.path.join(work, "rt"))
    best = trainer.hyperparameter_search(
        hp_space=hp_space,
        backend="ray",
        n_trials=s.trials,
        direction="minimize",
        resources_per_trial={"cpu": s.cpus_per_trial},
        scheduler=scheduler,
        search_alg=BasicVariantGenerator(random_state=s.seed),
        max_concurrent_trials=s.concurrency,
        storage_path=os.path.join(work, "ray"),
        name="hf_ray",
        **keep,
    )
    t1 = time.time()
    statuses: dict[str, int] = {}
    for t in best.run_summary.trials:
        statuses[t.status] = statuses.get(t.status, 0) + 1
    ray.shutdown()
    runs = common.summarize_timing(timing, s.n_train, s.train_tokens)
    return {
        "wall_s": round(t1 - t0, 2),
        "t_search_end": t1,
        **common.peer_figures(runs),
        "errors": statuses.get("ERROR", 0),
        "ray_statuses": statuses,
        "best_eval_loss": float(best.objective),
        "best_eval_loss_note": "BestRun.objective: the best trial's last evaluation (RAY_SCOPE=last)",
        "best_params": best.hyperparameters,
    }
