"""The bridge's bookkeeping as pure decisions on plain values: what a Ray trial's end makes of its
Optuna trial (COMPLETE, PRUNED or FAIL, its values and the user attributes it keeps), when a
streak of failures stops the run, the step of each intermediate value, which checkpoints can go,
and what counts towards the target. No Ray; unit tested with hand-made trials
(tests/test_searcher.py)."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from hpo.objectives import values_of
from hpo.summary import CONFIRM_OF_ATTR, first_value, is_confirm, is_imported, pareto

ERROR_FILE = "error.json"
BUDGET_DONE = "budget_done"  # set by the trial on its last report: it trained all its epochs
#: The ``fail_reason`` of a trial stopped before its end and re-queued (Ctrl-C, a dead run, the
#: time budget's deadline): its checkpoint stays until the trial re-queued from it has finished.
REQUEUED_REASONS = ("interrupted", "budget")
EVAL_TIME_PREFIX = "eval_time_"  # + step: [trial seconds, tokens] at that evaluation (learning-curve tables)


def counted(trials: list) -> list:
    """The trials of ``trials`` this study ran itself: those imported from an earlier study
    (``warm_start``, user attribute ``imported``) count toward no target and have no checkpoint."""
    return [t for t in trials if not is_imported(t)]


def finished_and_running(trials: list, confirm: bool = False) -> tuple[int, int]:
    """(COMPLETE + PRUNED, RUNNING) among ``trials``: what counts towards the target. Search trials
    and confirm runs (``hpo confirm``) count apart: ``confirm`` picks which; imported trials
    (``warm_start``) count toward neither."""
    trials = [t for t in counted(trials) if is_confirm(t) == confirm]
    finished = sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials)
    return finished, sum(t.state == TrialState.RUNNING for t in trials)


def eval_step(epoch: float, eval_every: float) -> int:
    """The intermediate-value step of an evaluation: its index on the ``eval_every`` epoch grid."""
    return max(1, math.ceil(epoch / eval_every - 1e-6))


def final_state(
    last: dict[str, Any], error: bool, max_t: float, scheduled: bool, capped: bool = False
) -> TrialState:
    """COMPLETE when the trial ran its own budget (or the scheduler's max_t, or PASHA's current cap:
    ``capped``), PRUNED when the scheduler stopped it earlier, FAIL on error or when it never
    reported."""
    if error or "epoch" not in last:
        return TrialState.FAIL
    if last.get(BUDGET_DONE) or capped or float(last["epoch"]) >= max_t - 1e-6:
        return TrialState.COMPLETE
    return TrialState.PRUNED if scheduled else TrialState.FAIL


def outcome(
    state: TrialState,
    last: dict[str, Any],
    error_info: dict[str, str] | None,
    metric: str | None,
    metrics: Sequence[str],
) -> tuple[TrialState, list[float] | None, dict[str, Any], str | None]:
    """What a trial ending in ``state`` (``final_state``) is told: its state (COMPLETE falls to
    FAIL when the last report lacks an objective), values (one per objective; COMPLETE only), user
    attributes, and for a FAIL the failure ``error_class: error_message`` (None otherwise)."""
    attrs = summary_attrs(last)
    values: list[float] | None = None
    if state == TrialState.COMPLETE:
        values, missing = trial_values(last, metric, metrics)
        if missing:
            message = f"the trial reported no {', '.join(missing)} (an objective)"
            values, state = None, TrialState.FAIL
            error_info = {"error_class": "TrialError", "error_message": message}
    failure = None
    if state == TrialState.FAIL:
        info = error_info or {
            "error_class": "TrialError",
            "error_message": "the trial failed without a message",
        }
        attrs.update(info)
        failure = f"{info['error_class']}: {info['error_message']}"
    if state == TrialState.PRUNED:
        attrs["pruned_at_epoch"] = last.get("epoch")
    return state, values, attrs, failure


def trial_values(
    last: dict[str, Any], metric: str | None, metrics: Sequence[str]
) -> tuple[list[float], list[str]]:
    """The trial's values (one per objective of ``metrics``) and the objectives its last report
    lacks. The first is its best objective (the trial reports it for ``config["objective"]``)."""
    if "best_objective" not in last and "best_eval_loss" in last:  # a report without it
        best = float(last["best_eval_loss"])
        last = {
            **last,
            "best_objective": math.exp(min(best, 50.0)) if metric == "perplexity" else best,
        }
    return values_of(metrics, last)


def failure_streak(failures: list[str], max_failures: int) -> str | None:
    """Why the run stops asking for trials: the last ``max_failures`` failures were the same
    error; None while they were not."""
    if len(failures) >= max_failures and len(set(failures[-max_failures:])) == 1:
        return f"the last {max_failures} trials failed with {failures[-1]}"
    return None


def summary_attrs(last: dict[str, Any]) -> dict[str, Any]:
    """The user attributes a finished trial carries, from its last report."""
    keys = (
        "epoch",
        "best_eval_loss",
        "best_epoch",
        "checkpoint",
        "train_s",
        "eval_s",
        "save_s",
        "trial_s",
        "tokens",
        "tokens_per_s",
        "trainable_params",
        "best_token_accuracy",
        "early_stopped",
        "device",  # where it trained (cpu, cuda), in what precision, and why not on the GPU it asked for
        "precision",
        "base_dtype",  # the dtype the base model was saved in: what `hpo export` writes by default
        "micro_batch",  # sequences in one forward pass (max_micro_batch: auto picks it) and the memory
        "memory_gb",  # the trial planned with (hpo/memory.py)
        "device_note",
        "cuda_visible_devices",
        "node_id",
        "started_at",
        "world_size",  # a data-parallel trial: its ranks and their backend (nccl, or gloo on CPUs)
        "ddp_backend",
        "compile",
        "save_best",
        "generate_s",  # evaluation.generate: seconds generating and scoring answers, tokens generated,
        "generated_tokens",
        "generated_epoch",  # and the evaluation whose answers are kept (the best one's when it generated)
        "data_fingerprint",  # the prepared data set it trained on (one per distinct data setting)
    )
    out = {k: last[k] for k in keys if last.get(k) is not None}
    for key in ("generated_metrics", "generated_samples"):  # JSON strings in Ray's flat results
        if isinstance(last.get(key), str):
            out[key] = json.loads(last[key])
    if "best_eval_loss" in out:
        out["best_perplexity"] = math.exp(min(float(out["best_eval_loss"]), 50.0))
    return out


def source_losses(result: dict[str, Any]) -> dict[str, float]:
    """A mixture's per-source eval losses in one report (``hpo.evaluation.by_source``), by source."""
    from hpo.evaluation import SOURCE_PREFIX

    return {k.removeprefix(SOURCE_PREFIX): float(v) for k, v in result.items() if k.startswith(SOURCE_PREFIX)}


def protected(trials: list, directions: Sequence[str]) -> set[int]:
    """Trials whose checkpoint stays whatever ``keep_top_k`` says: with several objectives, the
    Pareto front (each is an export choice); each confirmed configuration's best confirm run."""
    keep = {t.number for t in pareto(trials, directions)} if len(directions) > 1 else set()
    sign = 1 if directions[0] == "minimize" else -1
    best_run: dict[Any, Any] = {}
    for t in trials:
        if is_confirm(t) and t.state == TrialState.COMPLETE and (v := first_value(t)) is not None:
            of = t.user_attrs.get(CONFIRM_OF_ATTR)
            if of not in best_run or sign * v < sign * float(first_value(best_run[of]) or 0.0):
                best_run[of] = t
    return keep | {t.number for t in best_run.values()}


def checkpoints_to_delete(trials: list, keep: int, direction, also: set[int] | None = None) -> list[str]:
    """Checkpoint folders that can no longer be exported as the best: every finished trial's
    except the ``keep`` best COMPLETE search trials' and those of ``also`` (``protected``);
    RUNNING trials keep theirs, and so do interrupted
    ones (and any trial a queued or running trial was re-queued from) until the trial re-queued
    from them has finished, and any checkpoint a queued or running trial is to resume from (down a
    chain of re-queues: a trial interrupted before its own first checkpoint passes on the one it
    resumed from)."""
    trials = counted(trials)  # imported trials hold no checkpoint here, nor a place among the best
    complete = [
        t
        for t in trials
        if t.state == TrialState.COMPLETE and first_value(t) is not None and not is_confirm(t)
    ]
    sign = 1 if direction == optuna.study.StudyDirection.MINIMIZE else -1
    ranked = sorted(complete, key=lambda t: sign * float(first_value(t) or 0.0))
    winners = {t.number for t in ranked[:keep]} | (also or set())
    resumed = {t.user_attrs.get("requeued_from") for t in trials if t.state.is_finished()}
    pending = {t.user_attrs.get("requeued_from") for t in trials if not t.state.is_finished()}
    needed = {t.user_attrs.get("resume_checkpoint") for t in trials if not t.state.is_finished()}
    out: list[str] = []
    for t in trials:
        folder = t.user_attrs.get("trial_dir")
        if not folder or t.state in (TrialState.RUNNING, TrialState.WAITING) or t.number in winners:
            continue
        if t.number in pending or (
            t.user_attrs.get("fail_reason") in REQUEUED_REASONS and t.number not in resumed
        ):
            continue  # its re-queued trial will resume from this checkpoint
        out.extend(str(p) for p in Path(folder).glob("step-*") if p.is_dir() and str(p) not in needed)
    return out


def read_error(folder: Path) -> dict[str, str] | None:
    """The error a trial's wrapper wrote before it failed, if any."""
    try:
        return json.loads((folder / ERROR_FILE).read_text())
    except (OSError, ValueError):
        return None


def du_mb(path: Path) -> float:
    """Megabytes of the files under ``path``."""
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file()) / 1e6
