"""One trial's fine-tune: the only place that trains. Read it top to bottom.

``run(config, report)`` takes a plain dict (hyperparameters, paths, training settings) and a
``report(metrics)`` callable, so it knows nothing of Ray: the runner passes Ray Tune's report.
Progress is measured in epochs; evaluations happen at fixed epoch marks (``eval_every``), so a
batch-8 and a batch-32 trial are compared after the same amount of data. The trial keeps its
best checkpoint only (weights as safetensors, config, tokenizer; no optimizer state), written
when the evaluation loss improves.
"""

from __future__ import annotations

import logging
import math
import sys
import time
import warnings
from collections.abc import Callable
from typing import Any

from hpo import (
    bestweights,
    collective,
    distributed,
    evaluation,
    gcpause,
    generation,
    memory,
    trialsetup,
    trialstep,
)
from hpo import dropout as fast_dropout
from hpo.checkpoint import (
    POINTER,
    best_checkpoint,
    checkpoint_step,
    dropout_fields,
    load_model,
    merged_state_dict,
    saved_dtype,
    with_lora,
)
from hpo.errors import OutOfMemory, TrialError
from hpo.evaluation import evaluate, evaluate_metrics
from hpo.faultinject import injected_failure
from hpo.trialmemory import free_trial_memory

__all__ = [
    "POINTER",
    "best_checkpoint",
    "dropout_fields",
    "evaluate",
    "evaluate_metrics",
    "load_model",
    "merged_state_dict",
    "run",
    "saved_dtype",
    "with_lora",
]

log = logging.getLogger(__name__)

#: The dtype a trial's weights and optimizer state are kept in, by precision: fp32 (master weights
#: under bf16 autocast too) unless ``bf16-true`` asks for bf16 throughout.
WEIGHTS_DTYPE = {"bf16-true": "bfloat16"}


def run(config: dict[str, Any], report: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    """Fine-tune one configuration, reporting after every evaluation.

    Args:
        config: ``params`` (learning_rate, batch_size, epochs, dropout, weight_decay, and any training
            option the space searches), ``model_path``, ``data_path`` (a prepared dataset; or ``data``,
            ``data_seed`` and ``cache_root`` to prepare the one the params choose),
            ``checkpoint_dir``, ``trial_number``, ``seed``, ``eval_every``, ``max_micro_batch``,
            ``cpus``, ``gpus``; the training options (``lr_scheduler``, ``warmup_ratio``,
            ``gradient_accumulation_steps``, ``max_grad_norm``, ``label_smoothing``, ``l1``) when
            ``params`` does not carry them; optional ``early_stopping_patience``, ``objective``
            (eval_loss | perplexity | token_accuracy | a generation metric, default eval_loss; its
            direction in ``objective_direction``), ``generate`` (``evaluation.generate``: answers
            scored at ``evaluation.generate_marks``, hpo/generation.py) and ``precision`` (auto |
            bf16 | fp32, default auto: ``placement.precision``; the choice is written to
            ``config["placement"]["precision"]``).
        report: called with each evaluation's metrics; the last call has ``budget_done=True`` (also
            when early stopping ended the trial: it is complete at the budget it reached).

    Returns:
        The last metrics reported.

    Raises:
        TrialError: out of memory, a NaN/inf loss, or a model that cannot load.
    """
    import torch

    try:
        # gpus > 1: this process is rank 0 of a data-parallel trial, its other ranks run ``run`` too
        with distributed.ranks(config, run) as dist:
            return _run(config, report, dist)
    except (torch.OutOfMemoryError, MemoryError, RuntimeError) as e:
        if isinstance(e, RuntimeError) and not memory.is_oom(str(e)):
            raise
        raise OutOfMemory(_oom_message(config, e)) from e
    finally:
        free_trial_memory(sys.exc_info()[1])


def _oom_message(config: dict[str, Any], e: BaseException) -> str:
    """One line: what ran out, at which batch and micro-batch, and the fixes."""
    seen = config.get("placement", {})
    first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
    return (
        f"out of memory at batch_size {config['params'].get('batch_size')}, micro-batch "
        f"{seen.get('micro_batch', config.get('max_micro_batch'))} ({first}); set training.max_micro_batch: "
        "auto (or lower it), training.gradient_checkpointing: true, or fewer trials at once (--concurrency)"
    )


def import_code(model_path: str) -> None:
    """Import what a trial of ``model_path`` imports as it runs: torch, numpy, the schedules, the
    prepared-data reader and the model's own code (no weights are read)."""
    with gcpause.paused():  # ~1,000 collections during these imports otherwise (hpo/gcpause.py)
        import numpy  # noqa: F401
        import torch  # noqa: F401
        from transformers import get_scheduler  # noqa: F401

        from hpo.checkpoint import import_model_code
        from hpo.data import Prepared  # noqa: F401

        import_model_code(model_path)


#: Training options a trial reads from its params (searched) or else its config (fixed), with defaults.
OPTIONS = {
    "lr_scheduler": "linear",
    "warmup_ratio": 0.05,
    "gradient_accumulation_steps": 1,
    "max_grad_norm": 1.0,
    "label_smoothing": 0.0,
    "l1": 0.0,
}
#: LoRA settings a trial reads from its params (searched) or else its ``adapter`` config.
LORA = {"lora_r": "r", "lora_alpha": "alpha"}


def options(config: dict[str, Any]) -> dict[str, Any]:
    """The trial's training options and seed: its params win over the config, then the defaults."""
    p = config["params"]
    out = {k: p.get(k, config.get(k, default)) for k, default in OPTIONS.items()}
    out["seed"] = int(p.get("seed", config.get("seed", 0)))
    adapter = config.get("adapter")
    if adapter:
        out["adapter"] = {**adapter, **{key: p[name] for name, key in LORA.items() if name in p}}
    return out


def _run(
    config: dict[str, Any],
    report: Callable[[dict[str, Any]], None],
    dist: collective.Dist = collective.SINGLE,
) -> dict[str, Any]:
    import numpy as np
    import torch

    from hpo.data import for_trial

    p, o = config["params"], options(config)
    device = trialsetup.device(config) if dist.world == 1 else dist.torch_device()
    torch.manual_seed(o["seed"])
    # 1. data: memory-mapped blocks prepared once per study, or once per distinct setting of the
    #    data parameters the space searches (positions restart at each example)
    prepared = for_trial(config)
    config["placement"]["data_fingerprint"] = prepared.fingerprint  # reported: which prepared set
    config["val_sources"] = prepared.val_sources
    arrays = prepared.arrays()
    train = (arrays["train_ids"], arrays["train_labels"], arrays["train_pos"])
    val = tuple(torch.from_numpy(np.array(arrays[f"val_{k}"])) for k in ("ids", "labels", "pos"))
    n_train = len(train[0])
    # 2. model with the trial's dropout (from an interrupted trial's checkpoint when resuming),
    #    optimizer without decay on biases and norms; one step sees batch_size x accumulation blocks
    resume = config.get("resume_checkpoint")
    precision = trialsetup.precision(config, device)  # fp32 master weights unless bf16-true was asked for
    config["placement"]["base_dtype"] = saved_dtype(config["model_path"])  # export writes it back
    model = load_model(
        resume or config["model_path"], p["dropout"], device, WEIGHTS_DTYPE.get(precision, "float32")
    )
    if "adapter" in o:  # LoRA: only the adapter trains; a resumed trial continues from the merged weights
        a = o["adapter"]
        model = with_lora(model, a["r"], a["alpha"], a["dropout"], a.get("target_modules"))
    if config.get("gradient_checkpointing"):  # transformers' own: recompute activations in backward
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
    if device.type == "cpu":  # dropout masks drawn a quarter as often, no float copies (hpo.dropout)
        fast_dropout.speed_up(model)
    config["placement"]["compile"] = trialsetup.compile_blocks(model, config.get("compile", "auto"), device)
    dist.start(model, o["seed"])  # data-parallel: every rank from rank 0's weights
    start_step = checkpoint_step(resume) if resume else 0
    opt = trialsetup.optimizer(trialstep.param_groups(model, p["weight_decay"]), p["learning_rate"], device)
    cap = trialsetup.micro_cap(config, model, device, precision, int(train[0].shape[1]), int(p["batch_size"]))
    bs, micro = trialsetup.batching(  # data-parallel: each rank takes batch_size / world blocks of a step
        int(p["batch_size"]) // dist.world, int(o["gradient_accumulation_steps"]), cap
    )
    config = {**config, "max_micro_batch": min(cap, 64)}  # evaluation: no activations kept, up to 64
    config["placement"]["micro_batch"] = micro
    generator = None  # evaluation.generate: answers scored at some evaluations (hpo/generation.py)
    if config.get("generate"):
        generator = generation.Generator(config, val, config["max_micro_batch"])
    bs *= dist.world  # blocks per optimizer step, all ranks together
    steps_per_epoch = math.ceil(n_train / bs)
    total_steps = int(p["epochs"]) * steps_per_epoch
    sched = trialstep.schedule(opt, o["lr_scheduler"], o["warmup_ratio"], total_steps)
    loss_opts = trialstep.LossOptions(
        o["label_smoothing"], o["l1"], o["max_grad_norm"], trialstep.matrices(model)
    )
    autocast = trialsetup.autocast(device, precision)
    # 3. train, evaluating at each eval_every epoch mark; early stopping ends the budget early
    gen = torch.Generator().manual_seed(o["seed"])
    every = float(config["eval_every"])
    objective = config.get("objective", "eval_loss")
    state = _State(objective, time.perf_counter(), config.get("objective_direction"))
    state.generator = generator
    save_best = bestweights.mode(config.get("save_best", "immediate"), model, device)
    config["placement"]["save_best"] = save_best  # reported: how this trial kept its best
    state.best_weights = bestweights.BestWeights(config, save_best)
    wanted, generates = evaluation.eval_marks(config), evaluation.generate_marks(config)
    state.trainable_params = sum(t.numel() for t in model.parameters() if t.requires_grad)
    step, next_mark = 0, evaluation.next_mark(0, steps_per_epoch, every, 1, wanted)
    threads = trialsetup.Threads(config.get("threads_file"))
    model.train()
    for _epoch in range(int(p["epochs"])):
        order = torch.randperm(n_train, generator=gen)
        for s in range(steps_per_epoch):
            if step < start_step:  # resuming: replay the data order and schedule, not the compute
                step += 1
                next_mark = evaluation.next_mark(step, steps_per_epoch, every, next_mark, wanted)
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # "scheduler.step() before optimizer.step()"
                    sched.step()
                continue
            idx = np.sort(order[s * bs : (s + 1) * bs].numpy())
            threads.poll()
            t0 = time.perf_counter()
            loss, tokens = trialstep.step(
                model, opt, sched, train, idx, micro, device, autocast, loss_opts, dist
            )
            state.train_s += time.perf_counter() - t0
            state.add_train(loss, tokens, step, config)
            step += 1
            epoch = step / steps_per_epoch
            if epoch + 1e-9 >= next_mark * every or step == total_steps:
                mark = next_mark * every if epoch + 1e-9 >= next_mark * every else epoch
                generate = generator is not None and (step == total_steps or generates(next_mark))
                next_mark = evaluation.next_mark(step, steps_per_epoch, every, next_mark, wanted)
                metrics = _evaluate_and_keep(
                    model, val, config, state, autocast, device, mark, step, dist, generate, total_steps
                )
                report(metrics)
                if metrics["budget_done"]:
                    return metrics
                model.train()
    return metrics


class _State:
    """Running totals of one trial, and its best evaluation by the objective."""

    def __init__(self, objective: str, started: float, direction: str | None = None):
        from hpo.spec import METRICS

        self.objective, self.started = objective, started
        direction = direction or METRICS[objective]
        self.sign = 1.0 if direction == "minimize" else -1.0  # compare as a loss
        self.best = math.inf  # sign * objective of the best evaluation
        self.best_metrics: dict[str, float] = {}
        self.best_epoch = 0.0
        self.since_best = 0  # evaluations since the objective last improved
        self.train_s = self.eval_s = 0.0
        self.tokens = 0
        self.loss_sum, self.loss_n = 0.0, 0
        self.trainable_params = 0  # a cost objective (trainable_params)
        self.generator: generation.Generator | None = None
        self.best_weights: bestweights.BestWeights

    def add_train(self, loss: float, tokens: int, step: int, config: dict[str, Any]) -> None:
        if not math.isfinite(loss):
            raise TrialError(f"training loss became {loss} at step {step + 1}; lower learning_rate")
        injected_failure(config, step)
        self.tokens += tokens
        self.loss_sum += loss
        self.loss_n += 1

    def take_train_loss(self) -> float:
        mean = self.loss_sum / max(1, self.loss_n)
        self.loss_sum, self.loss_n = 0.0, 0
        return mean

    def improved(self, metrics: dict[str, float], epoch: float) -> bool:
        """Record one evaluation; True when it is the best so far by the objective."""
        value = self.sign * metrics[self.objective]
        if value < self.best:
            self.best, self.best_metrics, self.best_epoch, self.since_best = value, metrics, epoch, 0
            return True
        self.since_best += 1
        return False

    def patience_ran_out(self, patience: int | None) -> bool:
        return patience is not None and self.since_best >= patience


def _evaluate_and_keep(
    model,
    val,
    config,
    state: _State,
    autocast,
    device,
    epoch: float,
    step: int,
    dist=collective.SINGLE,
    generate: bool = False,
    total_steps: int = 0,
) -> dict:
    """Evaluate, keep the best weights (``state.best_weights``: now or held, hpo/bestweights.py),
    decide early stopping: the metrics to report."""
    t0 = time.perf_counter()

    def run(a: int, b: int) -> dict:  # data-parallel: each rank evaluates a share, sums all-reduced
        ids, labels, pos = (v[a:b] for v in val)
        kw = {"batch": config["max_micro_batch"], "device": device, "autocast": autocast}
        return dist.evaluate(evaluate_metrics, model, ids, labels, pos, **kw)

    ranges = config.get("val_sources")  # a mixture: each source's validation loss too
    if ranges:
        counts = {name: int((val[1][a:b, 1:] != -100).sum()) for name, (a, b) in ranges.items()}
        m = evaluation.by_source(run, counts, ranges, config.get("objective_source"))
    else:
        m = run(0, len(val[0]))
    state.eval_s += time.perf_counter() - t0
    shown = None
    if generate and state.generator is not None:  # answers scored (hpo/generation.py), timed apart
        generated, shown = state.generator.run(model, device, autocast, dist)
        m = {**m, **generated}
    improved = state.improved(m, epoch)
    stop = dist.agree(state.patience_ran_out(config.get("early_stopping_patience")))
    if dist.is_main:
        state.best_weights.after_eval(model, step, improved, last=step == total_steps or stop)
    return {
        **m,
        **(state.generator.report(m, shown, improved, epoch) if state.generator else {}),
        "epoch": round(epoch, 6),
        "step": step,
        "train_loss": state.take_train_loss(),
        "best_objective": state.sign * state.best,
        # every metric at the best evaluation (best_eval_loss, best_token_accuracy, ...): several
        # objectives take their other quality metrics from there (hpo/objectives.py)
        **{f"best_{k}": v for k, v in state.best_metrics.items()},
        "trainable_params": state.trainable_params,
        "best_epoch": state.best_epoch,
        "checkpoint": state.best_weights.path,  # written (durable); a held best is not reported
        "tokens": state.tokens,
        "tokens_per_s": state.tokens / max(state.train_s, 1e-9),
        "train_s": state.train_s,
        "eval_s": state.eval_s,  # the evaluations, checkpoint writes included
        "save_s": state.best_weights.save_s,  # writing checkpoints (and copying a best to hold)
        "trial_s": time.perf_counter() - state.started,
        "budget_done": step == total_steps or stop,
        "early_stopped": stop and step < total_steps,
    }
