"""Bad input for several objectives and ``hpo confirm``, through the real CLI, with the checks of
tests/test_bad_inputs.py: one error line naming the field and the fix, exit 2, nothing written."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.test_bad_inputs import Case, db, existing, then, with_spec
from tests.test_bad_inputs import test_bad_input as check_bad_input

TWO = [{"metric": "eval_loss"}, {"metric": "train_seconds"}]


def confirm(*extra: str):
    return lambda t: ["confirm", "--storage", db(t), *extra]


CASES = [
    Case(
        "objective-and-objectives",
        with_spec(objective={"metric": "eval_loss"}, objectives=TWO),
        ("small.yaml", "objectives: objective is set too", "keep one"),
    ),
    Case(
        "objectives-unknown-metric",
        with_spec(objectives=[{"metric": "eval_loss"}, {"metric": "bleu"}]),
        ("objectives.1", "unknown metric 'bleu'", "train_seconds"),
    ),
    Case(
        "objectives-single-objective-sampler",
        with_spec(objectives=TWO, sampler="cmaes"),
        ("sampler", "cmaes handles one objective", "nsga2"),
    ),
    Case(
        "objectives-cost-first",
        with_spec(objectives=TWO[::-1]),
        ("objectives", "first objective (train_seconds)", "quality metric"),
    ),
    Case(
        "objectives-generation-cost-without-generation",
        with_spec(objectives=[{"metric": "eval_loss"}, {"metric": "generate_ms_per_token"}]),
        ("objectives: generate_ms_per_token needs generated answers", "evaluation.generate"),
    ),
    Case(
        "objectives-generated-metric-without-generation",
        with_spec(objectives=[{"metric": "eval_loss"}, {"metric": "rouge_l"}]),
        ("objectives: rouge_l is scored on generated answers", "evaluation.generate"),
    ),
    Case(
        "objectives-cost-maximized",
        with_spec(objectives=[{"metric": "eval_loss"}, {"metric": "tokens_seen", "direction": "maximize"}]),
        ("objectives.1", "tokens_seen must be minimized"),
    ),
    Case("objectives-only-one", with_spec(objectives=TWO[:1]), ("objectives", "at least 2", "objective:")),
    Case("confirm-no-complete-trial", then(existing, confirm()), ("no COMPLETE trial to confirm", "hpo run")),
    Case("confirm-top-zero", then(lambda t: existing(t, 1), confirm("--top", "0")), ("--top", ">= 1")),
    Case(
        "confirm-queued-search-trials",
        then(lambda t: existing(t, 1, enqueue=[{"learning_rate": 0.001}]), confirm()),
        ("queued search trial(s)", "hpo run --study small"),
    ),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_bad_objectives_input(case: Case, tmp_path: Path, request, monkeypatch):
    check_bad_input(case, tmp_path, request, monkeypatch)
