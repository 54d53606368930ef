"""Several objectives at once: the table of metrics a study can optimize, the spec entry that names
one (``objectives: [{metric, direction}, ...]``), a finished trial's values, and the Pareto front.

A metric is either a *quality* metric the trial evaluates (``specsections.METRICS``: eval_loss,
perplexity, token_accuracy; ``textmetrics.GENERATED`` on generated answers: exact_match, rouge_l,
chrf; or the custom metric ``evaluation.generate.metric`` names), taken at the trial's best
evaluation, or a *cost* (``COSTS``) taken from the trial's last report: what the trial as a whole
spent. A new cost is one entry in ``COSTS``; a new quality metric is one entry in those tables. The
first objective must be a quality metric: ASHA compares trials on it and the best checkpoint is
chosen by it.
Pure: plain values only (no Optuna, no Ray), unit-tested in tests/test_objectives.py.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import Field, model_validator

from hpo.params import Frozen
from hpo.specsections import METRICS
from hpo.textmetrics import GENERATED


@dataclass(frozen=True)
class Cost:
    """A cost metric: the key of the trial's last report that holds it (divided by the ``per`` key's
    value and scaled, for a rate), what it measures, and the spec section it needs."""

    key: str
    means: str
    per: str | None = None
    scale: float = 1.0
    needs: str | None = None  # e.g. "evaluation.generate"

    def of(self, last: Mapping[str, Any]) -> float | None:
        """Its value in a trial's last report, or None when the report lacks it."""
        value = last.get(self.key)
        if value is None:
            return None
        if self.per is None:
            return float(value) * self.scale
        per = last.get(self.per)  # a trial whose answers were all empty generated 0 tokens: count 1
        return float(value) * self.scale / max(float(per), 1.0) if per is not None else None


#: Cost metrics (always minimized), by name.
COSTS: dict[str, Cost] = {
    "train_seconds": Cost("train_s", "seconds the trial spent in training steps"),
    "trainable_params": Cost("trainable_params", "parameters the trial trained (LoRA: the adapter's)"),
    "tokens_seen": Cost("tokens", "loss-carrying tokens the trial trained on"),
    "generate_ms_per_token": Cost(
        "generate_s",
        "milliseconds per generated token, all its generations together",
        per="generated_tokens",
        scale=1000.0,
        needs="evaluation.generate",
    ),
}
#: Samplers that handle several objectives (Optuna's TPE, NSGA-II, GP; random and grid trivially).
MULTI_SAMPLERS = ("tpe", "nsga2", "gp", "random", "grid")


def direction_of(metric: str) -> str | None:
    """The direction a built-in ``metric`` is optimized in, or None (a custom metric, or unknown)."""
    if metric in METRICS or metric in GENERATED:
        return {**METRICS, **GENERATED}[metric]
    return "minimize" if metric in COSTS else None


def known() -> list[str]:
    """Every built-in metric an objective may name: quality metrics first, then costs."""
    return [*METRICS, *GENERATED, *COSTS]


def generated(metric: str) -> bool:
    """Whether ``metric`` is scored on generated answers (a built-in one or a custom metric)."""
    return metric not in METRICS and metric not in COSTS


class ObjectiveEntry(Frozen):
    """One of several objectives: a metric and its direction (left out, it is filled in)."""

    metric: str = Field(description="a quality metric (eval_loss, ...) or a cost (train_seconds, ...)")
    direction: Literal["minimize", "maximize"] = Field(
        default="minimize", description="must be the metric's own; left out, it is filled in"
    )

    @model_validator(mode="before")
    @classmethod
    def _default_direction(cls, data: Any) -> Any:
        """A built-in metric's direction is filled in; a custom metric (``evaluation.generate.metric``)
        is named with its direction."""
        if isinstance(data, dict) and "direction" not in data and isinstance(data.get("metric"), str):
            wanted = direction_of(data["metric"])
            if wanted is None:
                raise ValueError(
                    f"unknown metric {data['metric']!r}; choose one of {', '.join(known())}, or give a "
                    "custom metric's name with its direction"
                )
            return {**data, "direction": wanted}
        return data

    @model_validator(mode="after")
    def _own_direction(self) -> ObjectiveEntry:
        wanted = direction_of(self.metric)
        if wanted is not None and wanted != self.direction:
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
    if names[0] in COSTS:
        problems.append(
            f"the first objective ({names[0]}) is what ASHA compares and the best checkpoint is chosen by: "
            f"make it a quality metric ({', '.join([*METRICS, *GENERATED])})"
        )
    return problems


def needs_problems(entries: Sequence[ObjectiveEntry], generates: Sequence[str] | None) -> list[str]:
    """Objectives the spec's ``evaluation`` cannot serve (``generates``: the metrics its
    ``evaluation.generate`` scores, None without it)."""
    out = []
    for e in entries:
        cost = COSTS.get(e.metric)
        if cost is not None:
            if cost.needs and generates is None:
                out.append(f"{e.metric} needs generated answers: set {cost.needs} (or drop {e.metric})")
        elif e.metric in GENERATED and generates is None:
            out.append(f"{e.metric} is scored on generated answers: set evaluation.generate")
        elif generated(e.metric) and e.metric not in (generates or []):
            out.append(
                f"unknown metric {e.metric!r}; a custom metric is named in evaluation.generate.metric.name"
            )
    return out


def values_of(metrics: Sequence[str], last: Mapping[str, Any]) -> tuple[list[float], list[str]]:
    """A finished trial's value for each objective from its last report, and the names it lacks.

    The first objective is the trial's best value (``best_objective``); other quality metrics are
    taken at that same best evaluation (``best_<metric>``), costs from the end of the trial.
    """
    values, missing = [], []
    for i, m in enumerate(metrics):
        key = "best_objective" if i == 0 else f"best_{m}"  # quality: at the best evaluation
        value = COSTS[m].of(last) if m in COSTS else last.get(key)
        if value is None:
            missing.append(m)
        else:
            values.append(float(value))
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
