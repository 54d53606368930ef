"""Several objectives at once: the table of metrics a study can optimize, the spec entry that names
one (``objectives: [{metric, direction}, ...]``), a finished trial's values, and the Pareto front.

A metric is either a *quality* metric the trial evaluates (``specsections.METRICS``: eval_loss,
perplexity, token_accuracy, and any metric added there), taken at the trial's best checkpoint, or a
*cost* (``COSTS``) taken from the trial's last report: what the trial as a whole spent. A new cost
is one entry in ``COSTS``; a new quality metric is one entry in ``METRICS``. The first objective
must be a quality metric: ASHA compares trials on it and the best checkpoint is chosen by it.
Pure: plain values only (no Optuna, no Ray), unit-tested in tests/test_objectives.py.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import Field, model_validator

from hpo.params import Frozen
from hpo.specsections import METRICS


@dataclass(frozen=True)
class Cost:
    """A cost metric: the key of the trial's report that holds it, and what it measures."""

    key: str
    means: str
    needs: str | None = None  # a spec section it needs, e.g. "evaluation.generate"


#: Cost metrics (always minimized), by name.
COSTS: dict[str, Cost] = {
    "train_seconds": Cost("train_s", "seconds the trial spent in training steps"),
    "trainable_params": Cost("trainable_params", "parameters the trial trained (LoRA: the adapter's)"),
    "tokens_seen": Cost("tokens", "loss-carrying tokens the trial trained on"),
    "generate_ms_per_token": Cost(
        "generate_ms_per_token", "milliseconds per generated token", needs="evaluation.generate"
    ),
}
#: Samplers that handle several objectives (Optuna's TPE, NSGA-II, GP; random and grid trivially).
MULTI_SAMPLERS = ("tpe", "nsga2", "gp", "random", "grid")


def direction_of(metric: str) -> str | None:
    """The direction ``metric`` is optimized in, or None when it is not a known metric."""
    if metric in METRICS:
        return METRICS[metric]
    return "minimize" if metric in COSTS else None


def known() -> list[str]:
    """Every metric an objective may name: quality metrics first, then costs."""
    return [*METRICS, *COSTS]


class ObjectiveEntry(Frozen):
    """One of several objectives: a metric and its direction (left out, it is filled in)."""

    metric: str = Field(description="a quality metric (eval_loss, ...) or a cost (train_seconds, ...)")
    direction: Literal["minimize", "maximize"] = Field(
        default="minimize", description="must be the metric's own; left out, it is filled in"
    )

    @model_validator(mode="before")
    @classmethod
    def _default_direction(cls, data: Any) -> Any:
        if isinstance(data, dict) and "direction" not in data and isinstance(data.get("metric"), str):
            wanted = direction_of(data["metric"])
            return {**data, "direction": wanted} if wanted else data
        return data

    @model_validator(mode="after")
    def _known(self) -> ObjectiveEntry:
        wanted = direction_of(self.metric)
        if wanted is None:
            raise ValueError(f"unknown metric {self.metric!r}; choose one of {', '.join(known())}")
        if wanted != self.direction:
            verb = wanted.removesuffix("e") + "ed"
            raise ValueError(f"{self.metric} must be {verb} (got direction {self.direction!r})")
        return self


def list_problems(entries: Sequence[ObjectiveEntry]) -> list[str]:
    """Why a list of objectives cannot make a study (an empty list: it can)."""
    if len(entries) < 2:
        return ["give at least 2 objectives (for one, use objective: {metric: ...})"]
    names = [e.metric for e in entries]
    twice = sorted({n for n in names if names.count(n) > 1})
    problems = [f"{', '.join(twice)} named twice; each metric once"] if twice else []
    if names[0] not in METRICS:
        problems.append(
            f"the first objective ({names[0]}) is what ASHA compares and the best checkpoint is chosen by: "
            f"make it a quality metric ({', '.join(METRICS)})"
        )
    return problems


def needs_problems(entries: Sequence[ObjectiveEntry], has: Mapping[str, bool]) -> list[str]:
    """Costs whose spec section is missing (``has``: section path -> whether the spec sets it)."""
    out = []
    for e in entries:
        cost = COSTS.get(e.metric)
        if cost is not None and cost.needs and not has.get(cost.needs):
            out.append(f"{e.metric} needs generated answers: set {cost.needs} (or drop {e.metric})")
    return out


def values_of(metrics: Sequence[str], last: Mapping[str, Any]) -> tuple[list[float], list[str]]:
    """A finished trial's value for each objective from its last report, and the names it lacks.

    The first objective is the trial's best value (``best_objective``); other quality metrics are
    taken at that same best evaluation (``best_<metric>``), costs from the end of the trial.
    """
    values, missing = [], []
    for i, m in enumerate(metrics):
        key = "best_objective" if i == 0 else (f"best_{m}" if m in METRICS else COSTS[m].key)
        if last.get(key) is None:
            missing.append(m)
        else:
            values.append(float(last[key]))
    return values, missing


def dominates(a: Sequence[float], b: Sequence[float], signs: Sequence[int]) -> bool:
    """Whether ``a`` is at least as good as ``b`` everywhere and better somewhere (``signs``: +1 for
    an objective minimized, -1 for one maximized)."""
    pairs = [(s * x, s * y) for s, x, y in zip(signs, a, b, strict=True)]
    return all(x <= y for x, y in pairs) and any(x < y for x, y in pairs)


def pareto_front(points: Mapping[int, Sequence[float]], directions: Sequence[str]) -> list[int]:
    """The keys (trial numbers) whose values no other point dominates, in key order.

    >>> pareto_front({0: [1.0, 5.0], 1: [2.0, 1.0], 2: [2.0, 6.0]}, ["minimize", "minimize"])
    [0, 1]
    """
    signs = [1 if d == "minimize" else -1 for d in directions]
    return sorted(k for k, v in points.items() if not any(dominates(w, v, signs) for w in points.values()))
