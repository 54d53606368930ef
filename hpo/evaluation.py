"""A trial's evaluation: when it evaluates (marks on the ``eval_every`` grid, or only those ASHA
reads) and what (token-weighted loss, perplexity and next-token accuracy over the held-out rows)."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from hpo import lmhead


def next_mark(
    step: int, steps_per_epoch: int, every: float, mark: int, wanted: Callable[[int], bool] | None = None
) -> int:
    """The next evaluation mark (an index on the ``eval_every`` grid) after ``step``: the first one
    past the current epoch that ``wanted`` keeps (whole epochs are always kept, so this ends)."""
    while mark * every <= step / steps_per_epoch + 1e-9 or (wanted is not None and not wanted(mark)):
        mark += 1
    return mark


def eval_marks(config: dict[str, Any]) -> Callable[[int], bool] | None:
    """Which marks of the ``eval_every`` grid evaluate: all of them, or (``eval_epochs`` given: the
    ASHA rungs and max_t) the first mark at or after each of those epochs, and every whole epoch.
    The end of the budget always evaluates. Evaluations elsewhere would only draw curve points."""
    epochs = config.get("eval_epochs")
    if epochs is None:
        return None
    every = float(config["eval_every"])
    keep = {math.ceil(e / every - 1e-6) for e in epochs}

    def wanted(mark: int) -> bool:
        at = mark * every
        return mark in keep or abs(at - round(at)) < 1e-6

    return wanted


def generate_marks(config: dict[str, Any]) -> Callable[[int], bool]:
    """Which evaluation marks also generate answers (``evaluation.generate``; the end of the budget
    always does): every one when the objective is a generation metric (it picks the best
    checkpoint), else the first mark at or after each ASHA rung and max_t, and every whole epoch."""
    if config.get("objective_generated"):
        return lambda mark: True
    epochs = config.get("generate_epochs") or []
    wanted = eval_marks({"eval_epochs": epochs, "eval_every": config["eval_every"]})
    assert wanted is not None  # eval_epochs given
    return wanted


def evaluate_metrics(model, ids, labels, pos=None, batch: int = 32, device=None, autocast=None) -> dict:
    """Token-weighted mean next-token loss, its perplexity, and next-token accuracy (argmax equals
    the label) over every loss-carrying token of ``ids``/``labels`` (no label smoothing)."""
    import contextlib

    import torch

    device = device or next(model.parameters()).device
    autocast = autocast or contextlib.nullcontext
    model.eval()
    total, correct, count = 0.0, 0, 0
    with torch.inference_mode():
        for i in range(0, len(ids), batch):
            x = ids[i : i + batch].long().to(device)
            y = labels[i : i + batch].long().to(device)
            p = pos[i : i + batch].long().to(device) if pos is not None else None
            with autocast():
                s, c, n = lmhead.eval_sums(model, x, y, p)
            total, correct, count = total + s, correct + c, count + n
    loss = total / max(1, count)
    accuracy = correct / max(1, count)
    return {"eval_loss": loss, "perplexity": math.exp(min(loss, 50.0)), "token_accuracy": accuracy}


def evaluate(model, ids, labels, batch: int = 32, device=None, autocast=None, pos=None) -> float:
    """Mean next-token loss over every loss-carrying token of ``ids``/``labels`` (token-weighted)."""
    return evaluate_metrics(model, ids, labels, pos, batch, device, autocast)["eval_loss"]


#: A mixture's per-source eval loss is reported as ``SOURCE_PREFIX + name``; with
#: ``data.objective_source`` the loss over every source is reported as ``ALL_SOURCES``.
SOURCE_PREFIX = "eval_loss_src_"
ALL_SOURCES = "eval_loss_all"


def by_source(
    run: Callable[[int, int], dict],
    counts: dict[str, int],
    ranges: dict[str, list[int]],
    objective: str | None,
) -> dict:
    """A mixture's evaluation: each source's validation blocks (``ranges``: name -> [first, end))
    evaluated by ``run(first, end)``, combined token-weighted (``counts``: each source's
    loss-carrying tokens). The metrics are those over every source, or ``objective``'s when the
    spec names one (then the loss over every source is ``ALL_SOURCES``); each source's loss is
    added as ``SOURCE_PREFIX + name``."""
    each = {name: run(a, b) for name, (a, b) in ranges.items() if b > a}
    n = sum(counts[name] for name in each) or 1
    loss = sum(m["eval_loss"] * counts[name] for name, m in each.items()) / n
    accuracy = sum(m["token_accuracy"] * counts[name] for name, m in each.items()) / n
    total = {"eval_loss": loss, "perplexity": math.exp(min(loss, 50.0)), "token_accuracy": accuracy}
    out = dict(each[objective]) if objective else total
    if objective:
        out[ALL_SOURCES] = loss
    return out | {SOURCE_PREFIX + name: m["eval_loss"] for name, m in each.items()}
