"""What the HF Trainer peers share: the data, the model, the timing callback, the figures.

All systems train on exactly the same blocks: hpo's prepared arrays (``hpo.data.prepare``), turned
into a ``datasets.Dataset`` for the HF Trainer peers. All load the same base model directory.
"""

from __future__ import annotations

import json
import math
import os
import time
import uuid
from typing import Any

from transformers import TrainerCallback

from bench_peers import settings  # noqa: F401 - sets Ray's environment before anything imports ray

# ---------------------------------------------------------------- data and model


def hf_datasets(data_path: str):
    """hpo's prepared train/validation blocks as two ``datasets.Dataset`` (input_ids, labels,
    position_ids). Positions restart at 0 for every packed example and there is no attention
    mask, so transformers masks attention block-diagonally exactly as in hpo's trial loop."""
    import numpy as np
    from datasets import Dataset

    from hpo.data import Prepared

    arrays = Prepared.load(data_path).arrays()

    def build(split: str) -> Any:
        columns = {"input_ids": "ids", "labels": "labels", "position_ids": "pos"}
        rows = {col: np.asarray(arrays[f"{split}_{key}"], dtype=np.int64) for col, key in columns.items()}
        return Dataset.from_dict({col: a.tolist() for col, a in rows.items()})

    return build("train"), build("val")


def search_args(work: str, eval_steps: int, n_val: int, seed: int, s=None):
    """The TrainingArguments both HF ``hyperparameter_search`` peers share: evaluate and save every
    ``eval_steps`` (the best trial's checkpoint must exist to export it), the whole validation set
    in one batch (so eval_loss is token-weighted, as hpo's) unless ``s.peer_eval_batch``, on the CPU.
    ``s`` (the bench Settings) adds the realistic workload's precision, micro-batch and warmup."""
    from transformers import TrainingArguments

    return TrainingArguments(
        output_dir=os.path.join(work, "hf_out"),
        do_eval=True,
        eval_strategy="steps",
        eval_steps=eval_steps,
        save_strategy="steps",
        save_steps=eval_steps,
        per_device_eval_batch_size=(s and s.peer_eval_batch) or n_val,
        logging_steps=eval_steps,
        report_to=[],
        seed=seed,
        use_cpu=True,
        disable_tqdm=True,
        **workload_args(s),
    )


def workload_args(s) -> dict[str, Any]:
    """TrainingArguments the realistic workload sets for every HF run (none for the tiny one):
    bf16 autocast, the per-device micro-batch, warmup, and a bound on the Trainer's own checkpoints."""
    if s is None or s.workload == "tiny":
        return {}
    out: dict[str, Any] = {"bf16": s.bf16, "warmup_steps": s.warmup_ratio}  # a float < 1: a ratio
    if s.micro_batch:
        out["per_device_train_batch_size"] = s.micro_batch
    if s.keep_checkpoints:
        out["save_total_limit"] = s.keep_checkpoints
    return out


def batch_choices(s) -> tuple[str, list[int]]:
    """The peers' searched batch parameter: the batch itself, or with a micro-batch the number of
    micro-batches accumulated per step (effective batch = micro-batch x accumulation)."""
    if s.micro_batch:
        return "gradient_accumulation_steps", [s.accumulation(b) for b in s.batch_sizes]
    return "per_device_train_batch_size", list(s.batch_sizes)


def make_model(model_path: str, dropout: float | None = None):
    """The base model in fp32 (a bf16-saved model trains with fp32 master weights, as in hpo) with
    every dropout probability of its config (GPT-2's three, Llama's ``attention_dropout``, ...) set
    to ``dropout``: the fields hpo's own loader sets."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from hpo.checkpoint import dropout_fields

    kw = {}
    if dropout is not None:
        kw = dict.fromkeys(dropout_fields(AutoConfig.from_pretrained(model_path).to_dict()), dropout)
    return AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32, **kw)


class ModelInit:
    """``Trainer(model_init=...)`` for the HF peers: a picklable callable (Ray ships it to workers)."""

    def __init__(self, model_path: str, optuna_dropout: tuple[float, float] | None = None):
        self.model_path = model_path
        self.optuna_dropout = optuna_dropout

    def __call__(self, trial=None):
        if trial is None:
            return make_model(self.model_path)
        if isinstance(trial, dict):  # Ray: the sampled config
            return make_model(self.model_path, trial.get("dropout"))
        # Optuna: model_init runs before hp_space, so the dropout must be suggested here (peer note 2)
        return make_model(self.model_path, trial.suggest_float("dropout", *self.optuna_dropout))


def quiet() -> None:
    """Silence transformers' per-load notes (as hpo does for itself)."""
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()


# ---------------------------------------------------------------- timing


class TimingCallback(TrainerCallback):
    """Seconds inside optimizer steps and inside evaluations, per trial (JSON lines, any process).

    A step is ``on_step_begin`` -> ``on_step_end``; an evaluation is the last ``on_step_end`` ->
    ``on_evaluate`` (HF evaluates right after a step). Checkpoint writes, reporting to Ray or
    Optuna, model and trainer set-up all fall outside both, as in hpo's ``train_s``/``eval_s``.
    Checkpoint writes are ``save_s``, timed by the peer around its saves and passed to ``saved``.
    A line is written at every evaluation, so a trial the scheduler kills keeps its figures.
    """

    def __init__(self, path: str):
        self.path = path
        self.run: str | None = None

    def _write(self, **rec: Any) -> None:
        rec.update(run=self.run, t=time.time(), pid=os.getpid())
        with open(self.path, "a") as f:
            f.write(json.dumps(rec) + "\n")

    def on_train_begin(self, args, state, control, **kw):
        self.run = uuid.uuid4().hex[:10]
        self.train_s = self.eval_s = self.save_s = 0.0
        self._t0: float | None = None
        self._last: float | None = None
        bs = args.per_device_train_batch_size * args.gradient_accumulation_steps
        self._write(ev="begin", bs=bs, max_steps=state.max_steps)

    def on_step_begin(self, args, state, control, **kw):
        self._t0 = time.perf_counter()

    def saved(self, seconds: float, step: int) -> None:
        """Count ``seconds`` of checkpoint writing (a line now: ASHA may stop the trial next)."""
        self.save_s += seconds
        self._write(ev="save", step=step, **self._totals())

    def on_step_end(self, args, state, control, **kw):
        now = time.perf_counter()
        if self._t0 is not None:
            self.train_s += now - self._t0
        self._last = now

    def on_evaluate(self, args, state, control, metrics=None, **kw):
        if self._last is not None:
            self.eval_s += time.perf_counter() - self._last
            self._last = None
        loss = (metrics or {}).get("eval_loss")
        self._write(ev="eval", step=state.global_step, eval_loss=loss, **self._totals())

    def on_train_end(self, args, state, control, **kw):
        self._write(ev="end", step=state.global_step, **self._totals())

    def _totals(self) -> dict[str, float]:
        return {"train_s": self.train_s, "eval_s": self.eval_s, "save_s": self.save_s}


def summarize_timing(path: str, n_train: int, tokens_per_epoch: int) -> dict[str, dict[str, Any]]:
    """Per trial (one ``train()`` call): steps, seconds in steps and evals, tokens, losses, ended."""
    runs: dict[str, dict[str, Any]] = {}
    if not os.path.exists(path):
        return runs
    with open(path) as f:
        for line in f:
            r = json.loads(line)
            d = runs.setdefault(r["run"], {"ended": False, "evals": [], "train_s": 0.0, "eval_s": 0.0})
            if r["ev"] == "begin":
                d.update(bs=r["bs"], max_steps=r["max_steps"], begin=r["t"], step=0, pid=r["pid"])
                continue
            d.update(step=r["step"], train_s=r["train_s"], eval_s=r["eval_s"], last=r["t"])
            d["save_s"] = r.get("save_s", 0.0)
            if r["ev"] == "eval" and r.get("eval_loss") is not None:
                d["evals"].append(r["eval_loss"])
            if r["ev"] == "end":
                d["ended"] = True
    for d in runs.values():
        d["tokens"] = tokens_trained(d.get("step", 0), d.get("bs", 1), n_train, tokens_per_epoch)
    return runs


def tokens_trained(steps: int, batch: int, n_train: int, tokens_per_epoch: int) -> int:
    """Loss-carrying tokens after ``steps`` optimizer steps (the last batch of an epoch is short;
    a partial epoch counts the epoch's mean tokens per block)."""
    per_epoch = math.ceil(n_train / batch)
    full, rest = divmod(steps, per_epoch)
    blocks = full * n_train + min(rest * batch, n_train)
    return round(blocks * tokens_per_epoch / max(1, n_train))


def peer_figures(runs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The figures every system reports, from a peer's timing summary."""
    evals = [v for d in runs.values() for v in d["evals"]]
    return {
        "trials": len(runs),
        # ASHA also stops a trial at max_t, after its last step: only one short of its steps was pruned
        "stopped_early": sum(d.get("step", 0) < d.get("max_steps", 0) for d in runs.values()),
        "train_s": round(sum(d["train_s"] for d in runs.values()), 2),
        "eval_s": round(sum(d["eval_s"] for d in runs.values()), 2),
        "train_tokens": sum(d["tokens"] for d in runs.values()),
        "evaluations": len(evals),
        "min_eval_loss_seen": min(evals) if evals else None,
        **per_trial(runs),
    }


def per_trial(runs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Per-trial lists for the realistic workload: tokens/s inside steps, trial seconds (from
    ``on_train_begin`` to its last event), checkpoint-write seconds, the trial's process id."""
    done = [d for d in runs.values() if d.get("train_s")]
    return {
        "trial_tokens_per_s": [round(d["tokens"] / d["train_s"], 1) for d in done],
        "trial_batch": [d.get("bs") for d in done],
        "trial_s": [round(d.get("last", d["begin"]) - d["begin"], 2) for d in done],
        "trial_save_s": [round(d.get("save_s", 0.0), 2) for d in done],
        "trial_pids": [d.get("pid") for d in done],
        "save_s": round(sum(d.get("save_s", 0.0) for d in runs.values()), 2),
    }


def write_result(path: str, result: dict[str, Any]) -> None:
    with open(path, "w") as f:
        json.dump(result, f, indent=1, default=str)


def ray_init(tmp: str) -> None:
    """A local Ray as the peers start it, but loopback-only and without a dashboard (as hpo)."""
    import ray

    ray.init(_node_ip_address="127.0.0.1", include_dashboard=False, _temp_dir=tmp)
