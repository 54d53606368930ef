"""``hpo confirm``'s decisions with hand-made trials: which configurations, which seeds, what is
missing, mean ± std per configuration and the configuration export prefers."""

from __future__ import annotations

import statistics

import pytest
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial

from hpo import confirmed


def _trial(number, values, lr, state=TrialState.COMPLETE, **attrs):
    t = create_trial(
        state=state,
        values=values,
        params={"learning_rate": lr},
        distributions={"learning_rate": FloatDistribution(1e-4, 1e-1)},
        user_attrs=attrs,
    )
    t.number = number
    return t


def _run(number, of, seed, value, state=TrialState.COMPLETE):
    return _trial(
        number,
        [value] if state == TrialState.COMPLETE else None,
        1e-3,
        state,
        confirm=True,
        confirm_of=of,
        confirm_seed=seed,
    )


SEARCH = [
    _trial(0, [2.0], 1e-3),
    _trial(1, [1.5], 2e-3),
    _trial(2, [1.4], 2e-3),  # the same configuration as trial 1, better: it represents it
    _trial(3, [1.8], 3e-3),
    _trial(4, None, 4e-3, TrialState.PRUNED),
]


def test_sources_are_the_best_distinct_configurations():
    assert [t.number for t in confirmed.sources(SEARCH, ["minimize"], 2)] == [2, 3]
    assert [t.number for t in confirmed.sources(SEARCH, ["maximize"], 5)] == [0, 3, 1]
    assert confirmed.sources([], ["minimize"], 3) == []


def test_sources_with_several_objectives_are_the_pareto_front_by_the_first():
    trials = [_trial(0, [1.0, 9.0], 1e-3), _trial(1, [2.0, 5.0], 2e-3), _trial(2, [3.0, 6.0], 3e-3)]
    assert [t.number for t in confirmed.sources(trials, ["minimize", "minimize"], 5)] == [0, 1]
    assert [t.number for t in confirmed.sources(trials, ["minimize", "minimize"], 1)] == [0]


def test_new_seeds_and_what_is_missing():
    assert confirmed.new_seeds(0, 3) == [1, 2, 3]
    plan = [(2, 1), (2, 2), (3, 1), (3, 2)]
    trials = [
        *SEARCH,
        _run(5, 2, 1, 1.5),
        _run(6, 2, 2, None, TrialState.FAIL),
        _run(7, 3, 1, None, TrialState.RUNNING),
    ]
    assert confirmed.missing(trials, plan) == [(2, 2), (3, 2)]  # a failed run is run again


def test_mean_and_std_per_configuration_best_mean_first():
    runs = [
        _run(5, 2, 1, 1.50),
        _run(6, 2, 2, 1.60),
        _run(7, 2, 3, 1.55),
        _run(8, 3, 1, 1.45),
        _run(9, 3, 2, 1.47),
    ]
    runs.append(_run(10, 3, 3, None, TrialState.FAIL))
    out = confirmed.aggregate([*SEARCH, *runs], ["minimize"])
    assert [c.source for c in out] == [3, 2]  # trial 3 searched worse, confirms better
    assert out[0].mean[0] == pytest.approx(1.46) and out[0].std[0] == pytest.approx(
        statistics.stdev([1.45, 1.47])
    )
    assert out[1].runs == [5, 6, 7] and out[1].seeds == [1, 2, 3] and out[1].source_values == [1.4]
    assert out[1].std[0] == pytest.approx(0.05)
    single = confirmed.aggregate([*SEARCH, _run(5, 2, 1, 1.5)], ["minimize"])
    assert single[0].std == [0.0]


def test_export_prefers_the_best_confirmed_mean_and_its_best_kept_run():
    runs = [_run(5, 2, 1, 1.50), _run(6, 2, 2, 1.60), _run(8, 3, 1, 1.45), _run(9, 3, 2, 1.47)]
    trials = [*SEARCH, *runs]
    best = confirmed.preferred(trials, ["minimize"])
    assert best is not None and best.source == 3
    assert confirmed.export_run(trials, best, "minimize", lambda t: True).number == 8
    assert confirmed.export_run(trials, best, "minimize", lambda t: t.number != 8).number == 9
    assert confirmed.export_run(trials, best, "minimize", lambda t: False) is None
    assert confirmed.preferred(trials, ["minimize", "minimize"]) is None  # no single best
    assert confirmed.preferred(SEARCH, ["minimize"]) is None
