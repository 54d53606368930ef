"""Throughput of one fine-tune, same configuration, one thread, nothing else running in the process.

``micro_plain``: a plain HF ``Trainer`` (no evaluation during training, no saving), timed by the
same step callback as the peers; ``micro_plain_bf16`` the same with ``bf16=True`` (CPU autocast).
``micro_hpo``: hpo's trial loop (``hpo.trial.run``) called directly, one evaluation at the end, in
the precision hpo picks by default (``auto``); ``micro_hpo_fp32`` the same in fp32. Each reports
loss-carrying tokens per second inside steps, and the precision it trained in.
"""

from __future__ import annotations

import os
import time
from typing import Any

from bench_peers.settings import Settings

#: The fixed configuration of the plain fine-tune measured for issue 5 (peer RESULTS "step 3").
FIXED = {"learning_rate": 5e-4, "batch_size": 16, "epochs": 1, "dropout": 0.1, "weight_decay": 0.01}


def run(name: str, cfg: dict[str, Any]) -> dict[str, Any]:
    import torch

    torch.set_num_threads(cfg.get("threads", 1))
    s = Settings.from_dict(cfg["settings"])
    out = _plain(cfg, s, name.endswith("bf16")) if name.startswith("micro_plain") else _hpo(cfg, s, name)
    out["torch_threads"] = torch.get_num_threads()
    out["config"] = cfg.get("fixed", FIXED)
    return out


def _plain(cfg: dict[str, Any], s: Settings, bf16: bool) -> dict[str, Any]:
    from transformers import Trainer, TrainingArguments, default_data_collator

    from bench_peers import common

    common.quiet()
    fixed = cfg.get("fixed", FIXED)
    train, val = common.hf_datasets(cfg["data_path"])
    timing = os.path.join(cfg["work_dir"], "plain_timing.jsonl")
    extra = {k: v for k, v in common.workload_args(s).items() if k in ("warmup_steps",)}
    args = TrainingArguments(
        output_dir=os.path.join(cfg["work_dir"], "plain_out"),
        learning_rate=fixed["learning_rate"],
        per_device_train_batch_size=fixed["batch_size"],
        num_train_epochs=fixed["epochs"],
        weight_decay=fixed["weight_decay"],
        # tiny: one batch, so eval_loss is token-weighted as hpo's; realistic: the peers' batch
        per_device_eval_batch_size=s.peer_eval_batch or s.n_val,
        eval_strategy="no",
        save_strategy="no",
        logging_steps=10_000,
        report_to=[],
        seed=s.seed,
        use_cpu=True,
        bf16=bf16,
        disable_tqdm=True,
        **extra,
    )
    trainer = Trainer(
        model=common.make_model(cfg["model_path"], fixed["dropout"]),
        args=args,
        train_dataset=train,
        eval_dataset=val,
        data_collator=default_data_collator,
        callbacks=[common.TimingCallback(timing)],
    )
    t0 = time.perf_counter()
    trainer.train()
    train_wall = time.perf_counter() - t0
    eval_loss = trainer.evaluate()["eval_loss"]
    (run,) = common.summarize_timing(timing, s.n_train, s.train_tokens).values()
    return {
        "steps_s": round(run["train_s"], 3),
        "train_call_s": round(train_wall, 3),
        "tokens": run["tokens"],
        "tokens_per_s": round(run["tokens"] / run["train_s"], 1),
        "tokens_per_s_train_call": round(run["tokens"] / train_wall, 1),
        "eval_loss": eval_loss,
        "precision": "bf16" if bf16 else "fp32",
    }


def _hpo(cfg: dict[str, Any], s: Settings, name: str) -> dict[str, Any]:
    from hpo import trial
    from hpo.basemodel import quiet_transformers

    quiet_transformers()
    config = {
        "params": dict(FIXED),
        "trial_number": 0,
        "checkpoint_dir": os.path.join(cfg["work_dir"], "hpo_trial"),
        "model_path": cfg["model_path"],
        "data_path": cfg["data_path"],
        "seed": s.seed,
        "eval_every": 1.0,
        "warmup_ratio": 0.0,  # the plain Trainer's default: no warmup, linear decay
        "max_micro_batch": s.eval_batch,
        "max_grad_norm": 1.0,
        "cpus": cfg.get("threads", 1),
        "gpus": 0,
        "precision": "fp32" if name.endswith("fp32") else "auto",
    }
    t0 = time.perf_counter()
    last = trial.run(config, lambda m: None)
    call_s = time.perf_counter() - t0
    return {
        "steps_s": round(last["train_s"], 3),
        "run_call_s": round(call_s, 3),
        "tokens": last["tokens"],
        "tokens_per_s": round(last["tokens_per_s"], 1),
        "eval_loss": last["eval_loss"],
        "precision": config["placement"]["precision"],
    }
