"""syne-tune's model-based multi-fidelity schedulers (hpo/strategies.py ``SyneTuneStrategy``), and
hpo's ``sampler: cqr`` (hpo/cqr.py) under Ray's ASHA, in the replay simulator, on the synthetic
table of tests/test_replay.py whose answer is known. syne-tune is an optional extra
(``pip install -e .[search]``); without it these tests skip."""

from __future__ import annotations

import math
import random
import statistics

import numpy as np
import pytest

from hpo import replay
from tests.test_replay import STAR, _found, _sim_spec, bench_search, synthetic_table

pytest.importorskip(
    "syne_tune", reason="syne-tune is an optional extra: pip install -e '.[search]' (scripts/setup --search)"
)


def _run(name: str, table, workers: int, seed: int, budget: float, stop_within: float, **kw) -> replay.Trace:
    random.seed(seed)
    np.random.seed(seed)  # syne-tune's ASHA draws brackets, and CQR splits and samples, from numpy's global
    strat = bench_search.make_strategy(name, table, _sim_spec(), seed)
    return replay.replay(table, strat, workers, budget, stop_within=stop_within, **kw)


def _median_found(name: str, workers: int, seeds: int = 5) -> float:
    table = synthetic_table()
    budget = 4 * sum(sum(c.seconds) for c in table.curves)
    found_at = table.curves[STAR].values[0] / table.best() - 1  # end a run once it has seen STAR
    return statistics.median(
        _found(_run(name, table, workers, seed, budget, found_at)) for seed in range(seeds)
    )


@pytest.mark.parametrize("workers", [1, 8])
def test_bohb_finds_the_dominant_row_with_less_compute_than_random(workers):
    baseline = _median_found("random", workers)
    assert math.isfinite(baseline)
    assert _median_found("syne-bohb", workers) < baseline


@pytest.mark.slow  # CQR fits five gradient-boosted quantile regressors per new trial: ~1 s each
@pytest.mark.parametrize("name", ["syne-asha+cqr", "asha+cqr"])  # syne-tune's own; hpo's sampler: cqr
def test_cqr_finds_the_dominant_row_with_less_compute_than_random(name):
    baseline = _median_found("random", 1)
    assert math.isfinite(baseline)
    assert _median_found(name, 1) < baseline


@pytest.mark.parametrize("name", ["syne-bohb", "syne-asha+cqr", "asha+cqr"])
def test_a_seeded_run_is_reproducible_and_stops_trials_early(name):
    table = synthetic_table()

    def trace(seed: int) -> replay.Trace:  # 12 trials: a model from the 6th result on
        return _run(name, table, 2, seed, math.inf, -1.0, max_trials=12)

    a, b = trace(3), trace(3)
    assert (a.ends, a.compute, a.best) == (b.ends, b.compute, b.best)
    assert a.stopped > 0  # ASHA stopped some at a rung
    assert a.ends != trace(4).ends
