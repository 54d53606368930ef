"""The replay simulator (hpo/replay.py) with the real strategies (hpo/strategies.py) on a synthetic
learning-curve table whose answer is known."""

from __future__ import annotations

import json
import math
import random
import statistics
import sys
from pathlib import Path

import numpy as np
import pytest

from hpo import curves, replay, spec

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
import bench_search  # noqa: E402

SPEC = spec.load(ROOT / "studies" / "curves-tiny.yaml")
STAR = 7  # the row that dominates from the first rung


def synthetic_table(n: int = 40) -> curves.Table:
    """``n`` random configurations of the curves-tiny space; every segment takes 1 s; curves are
    parallel (the ranking never changes) and better the nearer a row is to row ``STAR`` (a
    structure a model-based sampler can learn), which is below every other row's whole curve from
    its first evaluation on."""
    rng = random.Random(0)
    star = {"learning_rate": 1e-3, "batch_size": 8, "epochs": 2, "dropout": 0.1, "weight_decay": 0.05}
    rows = []
    for i in range(n):
        params = (
            star
            if i == STAR
            else {
                "learning_rate": 10 ** rng.uniform(-4, -2),
                "batch_size": rng.choice([8, 16, 32]),
                "epochs": 2,
                "dropout": rng.uniform(0, 0.2),
                "weight_decay": rng.uniform(0, 0.1),
            }
        )
        level = 0.5 if i == STAR else 1.5 + _distance(params, star)
        epochs = [0.25 * k for k in range(1, 9)]
        values = [level + 1.0 / (1.0 + 4 * e) for e in epochs]
        rows.append(curves.Curve(i, params, epochs, values, [1.0] * 8, [100 * k for k in range(1, 9)]))
    header = {
        "direction": "minimize",
        "metric": "eval_loss",
        "eval_every": 0.25,
        "spec": SPEC.model_dump(mode="json"),
    }
    return curves.Table(header, rows)


def _distance(p: dict, q: dict) -> float:
    """How far apart two configurations are (log learning rate, dropout, weight decay, batch)."""
    return (
        abs(math.log10(p["learning_rate"] / q["learning_rate"])) / 2
        + abs(p["dropout"] - q["dropout"]) / 0.2
        + abs(p["weight_decay"] - q["weight_decay"]) / 0.1
        + 0.5 * (p["batch_size"] != q["batch_size"])
    )


def _found(trace: replay.Trace) -> float:
    """Compute when the incumbent first became the dominating row."""
    return next((c for c, r in zip(trace.compute, trace.best_row, strict=True) if r == STAR), math.inf)


def _sim_spec():
    demo = spec.load(ROOT / "studies" / "demo.yaml")
    return SPEC.model_copy(update={"schedule": demo.schedule})


def test_the_simulator_charges_every_segment_and_stops_at_the_budget():
    table = synthetic_table(10)
    strat = bench_search.make_strategy("random", table, _sim_spec(), seed=0)
    trace = replay.replay(table, strat, workers=2, budget_s=30.0, stop_within=-1.0)  # never "close enough"
    assert trace.stopped == 0 and all(n == 8 for _, n, _ in trace.ends)  # no early stopping: whole curves
    assert trace.compute == sorted(trace.compute) and trace.wall == sorted(trace.wall)
    assert trace.compute[-1] == pytest.approx(2 * trace.wall[-1])  # two workers, always busy
    assert 30.0 <= trace.compute[-1] <= 32.0  # the run ends at the first evaluation past the budget


@pytest.mark.parametrize("workers", [1, 8])
def test_every_early_stopping_strategy_finds_the_dominant_row_with_less_compute_than_random(workers):
    table = synthetic_table()
    sim_spec = _sim_spec()
    budget = 4 * sum(sum(c.seconds) for c in table.curves)
    found_at = table.curves[STAR].values[0] / table.best() - 1  # end a run once it has seen STAR

    def median_found(name: str) -> float:
        found = []
        for seed in range(5):
            np.random.seed(seed)
            strat = bench_search.make_strategy(name, table, sim_spec, seed)
            found.append(_found(replay.replay(table, strat, workers, budget, stop_within=found_at)))
        return statistics.median(found)

    baseline = median_found("random")
    assert math.isfinite(baseline)
    for name in ("asha+random", "asha+tpe", "peers", "hyperband+tpe", "pasha+tpe", "pasha+random"):
        assert median_found(name) < baseline, name


def test_the_bench_skips_a_strategy_whose_optional_package_is_missing(monkeypatch, capsys, tmp_path):
    monkeypatch.setitem(sys.modules, "syne_tune", None)  # as if not installed: its import raises
    monkeypatch.setitem(sys.modules, "syne_tune.optimizer", None)
    table = synthetic_table(10)
    path = tmp_path / "t.jsonl"
    curves.write(path, table.header, table.curves)
    out = tmp_path / "out.json"
    argv = ["--table", str(path), "--strategies", "syne-bohb,random", "--workers", "1", "--seeds", "1"]
    assert bench_search.main([*argv, "--out", str(out)]) == 0
    said = capsys.readouterr().out
    assert "syne-bohb: skipped, syne-tune is not installed (pip install -e '.[search]'" in said
    assert list(json.loads(out.read_text())["results"]) == ["random|1"]


def test_results_with_fewer_seeds_merge_and_say_so(tmp_path):
    table = synthetic_table(10)
    path = tmp_path / "t.jsonl"
    curves.write(path, table.header, table.curves)
    for name, seeds in (("random", 3), ("asha+random", 2)):
        argv = ["--table", str(path), "--strategies", name, "--workers", "1", "--seeds", str(seeds)]
        assert bench_search.main([*argv, "--out", str(tmp_path / f"{name}.json")]) == 0
    files = [str(tmp_path / "random.json"), str(tmp_path / "asha+random.json")]
    md, out = tmp_path / "r.md", str(tmp_path / "m.json")
    assert bench_search.main(["--merge", *files, "--out", out, "--markdown", str(md)]) == 0
    merged = json.loads((tmp_path / "m.json").read_text())
    assert merged["seeds"] == 3 and merged["results"]["asha+random|1"]["seeds"] == 2
    rows = md.read_text().splitlines()[2:]
    assert rows[0].startswith("| random | 1 |") and rows[1].startswith("| asha+random (2 seeds) | 1 |")


@pytest.mark.parametrize("workers", [1, 4])
def test_no_strategy_reaches_the_target_with_less_than_the_compute_floor(workers):
    table = synthetic_table(12)
    target = replay.target_of(table.best(), 0.01)  # STAR's last evaluation alone: 8 segments of 1 s
    assert replay.compute_floor(table, target, workers) == 8.0 * workers
    assert replay.compute_floor(table, table.best() - 1.0, workers) == math.inf
    budget = 4 * sum(sum(c.seconds) for c in table.curves)
    for name in ("random", "asha+tpe", "peers"):
        for seed in range(3):
            np.random.seed(seed)
            strat = bench_search.make_strategy(name, table, _sim_spec(), seed)
            reached = replay.replay(table, strat, workers, budget, stop_within=0.01).reach(target)[0]
            assert replay.compute_floor(table, target, workers) <= reached < math.inf, (name, seed)
