"""Several objectives as pure decisions: the metric table, a finished trial's values, dominance
and the Pareto front, with hand-picked numbers (no Optuna study, no Ray)."""

from __future__ import annotations

import pytest
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial

from hpo import objectives
from hpo.bookkeeping import protected
from hpo.summary import best_complete, pareto

MIN2 = ["minimize", "minimize"]


def test_every_metric_has_one_direction():
    assert objectives.direction_of("eval_loss") == "minimize"
    assert objectives.direction_of("token_accuracy") == "maximize"
    assert all(objectives.direction_of(c) == "minimize" for c in objectives.COSTS)
    assert objectives.direction_of("bleu") is None
    assert objectives.known()[:4] == ["eval_loss", "perplexity", "token_accuracy", "exact_match"]
    assert objectives.direction_of("rouge_l") == "maximize" and objectives.generated("rouge_l")


def test_values_come_from_the_best_evaluation_and_the_end_of_the_trial():
    last = {
        "best_objective": 0.6,
        "best_eval_loss": 2.0,
        "best_token_accuracy": 0.6,
        "train_s": 12.5,
        "tokens": 900,
    }
    values, missing = objectives.values_of(
        ["token_accuracy", "eval_loss", "train_seconds", "tokens_seen"], last
    )
    assert values == [0.6, 2.0, 12.5, 900.0] and missing == []
    gen = {"best_objective": 0.4, "best_rouge_l": 0.4, "generate_s": 2.0, "generated_tokens": 500}
    values, missing = objectives.values_of(["rouge_l", "generate_ms_per_token"], gen)
    assert values == [0.4, 4.0] and missing == []  # 2 s over 500 tokens: 4 ms a token
    values, missing = objectives.values_of(["eval_loss", "trainable_params"], {"best_objective": 2.0})
    assert missing == ["trainable_params"]


@pytest.mark.parametrize(
    ("a", "b", "signs", "expected"),
    [
        ([1.0, 1.0], [2.0, 2.0], [1, 1], True),
        ([1.0, 2.0], [1.0, 2.0], [1, 1], False),  # equal: neither dominates
        ([1.0, 3.0], [2.0, 2.0], [1, 1], False),  # a trade-off
        ([0.9, 3.0], [0.5, 3.0], [-1, 1], True),  # maximizing the first
    ],
)
def test_dominates(a, b, signs, expected):
    assert objectives.dominates(a, b, signs) is expected


def test_pareto_front_keeps_the_trade_offs_and_ties():
    points = {0: [1.0, 9.0], 1: [2.0, 5.0], 2: [3.0, 6.0], 3: [4.0, 1.0], 4: [2.0, 5.0]}
    assert objectives.pareto_front(points, MIN2) == [0, 1, 3, 4]
    assert objectives.pareto_front(points, ["maximize", "minimize"]) == [3]
    assert objectives.pareto_front({}, MIN2) == []


def test_list_problems():
    entry = objectives.ObjectiveEntry
    ok = [entry(metric="eval_loss"), entry(metric="train_seconds")]
    assert objectives.list_problems(ok) == []
    assert "twice" in objectives.list_problems([ok[0], ok[0]])[0]
    assert "quality metric" in objectives.list_problems(ok[::-1])[0]
    gen_cost, rouge = entry(metric="generate_ms_per_token"), entry(metric="rouge_l")
    custom = entry(metric="tone", direction="maximize")  # a custom metric names its direction
    assert "evaluation.generate" in objectives.needs_problems([*ok, gen_cost], None)[0]
    assert "evaluation.generate" in objectives.needs_problems([rouge], None)[0]
    scored = ["exact_match", "rouge_l", "chrf", "tone"]
    assert objectives.needs_problems([gen_cost, rouge, custom], scored) == []
    assert "unknown metric 'tone'" in objectives.needs_problems([custom], scored[:3])[0]
    with pytest.raises(ValueError, match="unknown metric 'tone'"):
        entry(metric="tone")


def _trial(number, values, state=TrialState.COMPLETE, **attrs):
    t = create_trial(
        state=state,
        values=values,
        params={"learning_rate": 1e-3 * (number + 1)},
        distributions={"learning_rate": FloatDistribution(1e-4, 1e-1)},
        user_attrs=attrs,
    )
    t.number = number
    return t


def test_study_level_front_leaves_out_confirm_runs_and_unfinished_trials():
    trials = [
        _trial(0, [1.0, 9.0]),
        _trial(1, [2.0, 5.0]),
        _trial(2, [3.0, 6.0]),
        _trial(3, None, TrialState.PRUNED),
        _trial(4, [0.5, 0.5], confirm=True, confirm_of=1),  # a confirm run dominates all: not counted
    ]
    assert [t.number for t in pareto(trials, MIN2)] == [0, 1]
    assert best_complete(trials, __import__("optuna").study.StudyDirection.MINIMIZE).number == 0
    assert protected(trials, MIN2) == {0, 1, 4}  # the front, and the configuration's best confirm run


@pytest.mark.parametrize("sampler", objectives.MULTI_SAMPLERS)
def test_every_multi_objective_sampler_samples_a_two_objective_study(tmp_path, sampler):
    from hpo import space, storage
    from hpo import spec as spec_mod
    from tests.conftest import small_spec

    grid = {
        "batch_size": {"type": "categorical", "choices": [8, 16, 32]},
        "epochs": {"type": "int", "low": 1, "high": 2},
    }
    extra = {"space": {**grid, "learning_rate": 1e-3, "dropout": 0.0}} if sampler == "grid" else {}
    objs = [{"metric": "eval_loss"}, {"metric": "tokens_seen"}]
    s = spec_mod.load(small_spec(tmp_path, objectives=objs, sampler=sampler, **extra))
    url = f"sqlite:///{tmp_path / 'hpo.db'}"
    storage.create(s, url)
    study = storage.load(s.name, url, sampler=space.sampler(s.sampler, s.seed, 0, s.space))
    for i in range(12 if sampler != "grid" else 4):
        trial = study.ask()
        params = space.suggest(trial, s.space)
        study.tell(trial, [float(params["batch_size"]) / (i + 1), float(params["epochs"] * i)])
    assert len(study.best_trials) >= 1 and all(len(t.values) == 2 for t in study.trials)


def test_a_real_trial_reports_every_objective_a_study_can_name(prepared, tiny_model, tmp_path):
    """The trial loop on the tiny model with generation: its last report holds a value for every
    built-in quality metric and cost (what the bridge tells a multi-objective study)."""
    from hpo import trial
    from tests.conftest import trial_config

    params = {"learning_rate": 2e-3, "batch_size": 16, "epochs": 1, "dropout": 0.0, "weight_decay": 0.0}
    config = trial_config(
        prepared,
        tiny_model,
        tmp_path / "t",
        params,
        placement={},
        generate={"samples": 4, "max_new_tokens": 8, "normalize": ["strip"], "show": 1, "metric": None},
        generate_seed=0,
        objective="eval_loss",
        objective_direction="minimize",
        objective_generated=True,  # a generated metric among the objectives: every evaluation generates
    )
    reports: list = []
    trial.run(config, reports.append)
    metrics = ["eval_loss", *[m for m in objectives.known() if m != "eval_loss"]]
    values, missing = objectives.values_of(metrics, reports[-1])
    assert missing == [], (missing, {k: v for k, v in reports[-1].items() if "gen" in k})
    assert len(values) == len(metrics)
    by_name = dict(zip(metrics, values, strict=True))
    assert by_name["trainable_params"] > 0 and by_name["tokens_seen"] == reports[-1]["tokens"]
    assert by_name["generate_ms_per_token"] == 1000 * reports[-1]["generate_s"] / max(
        1, reports[-1]["generated_tokens"]
    )
