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


def search_args(work: str, eval_steps: int, n_val: int, seed: int):
    """The TrainingArguments both HF ``hyperparameter_search`` peers share: evaluate and save every
    ``eval_steps`` (the best trial's checkpoint must exist to export it), the whole validation set
    in one batch (so eval_loss is token-weighted, as hpo's), on the CPU."""
    from transformers import TrainingArguments

    return TrainingArguments(
        output_dir=os.path.join(work, "hf_out"),
        do_eval=True,
        eval_strategy="steps",
        eval_steps=eval_steps,
        save_strategy="steps",
        save_steps=eval_steps,
        per_device_eval_batch_size=n_val,
        logging_steps=eval_steps,
        report_to=[],
        seed=seed,
        use_cpu=True,
        disable_tqdm=True,
    )


def make_model(model_path: str, dropout: float | None = None):
    """The base model with the three GPT-2 dropout probabilities set to ``dropout``."""
    from transformers import AutoModelForCausalLM

    kw = {}
    if dropout is not None:
        kw = {"resid_pdrop": dropout, "embd_pdrop": dropout, "attn_pdrop": dropout}
    return AutoModelForCausalLM.from_pretrained(model_path, **kw)


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
        self.train_s = self.eval_s = 0.0
        self._t0: float | None = None
        self._last: float | None = None
        self._write(ev="begin", bs=args.per_device_train_batch_size, max_steps=state.max_steps)

    def on_step_begin(self, args, state, control, **kw):
        self._t0 = time.perf_counter()

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
        self._write(
            ev="eval", step=state.global_step, eval_loss=loss, train_s=self.train_s, eval_s=self.eval_s
        )

    def on_train_end(self, args, state, control, **kw):
        self._write(ev="end", step=state.global_step, train_s=self.train_s, eval_s=self.eval_s)


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
                d.update(bs=r["bs"], max_steps=r["max_steps"], begin=r["t"], step=0)
                continue
            d.update(step=r["step"], train_s=r["train_s"], eval_s=r["eval_s"], last=r["t"])
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
    }


def write_result(path: str, result: dict[str, Any]) -> None:
    with open(path, "w") as f:
        json.dump(result, f, indent=1, default=str)


def ray_init(tmp: str) -> None:
    """A local Ray as the peers start it, but loopback-only and without a dashboard (as hpo)."""
    import ray

    ray.init(_node_ip_address="127.0.0.1", include_dashboard=False, _temp_dir=tmp)
