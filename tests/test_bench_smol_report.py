"""The realistic benchmark's figures and target ratios (scripts/bench_peers/smol_report.py), from
hand-picked raw results: no torch, no Ray."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))

from bench_peers import smol_report  # noqa: E402
from bench_peers.settings import Settings  # noqa: E402


def _raw(wall: float, rates: list[float], peak: float, save_s: float, **extra) -> dict:
    return {
        "wall_s": wall,
        "trials": len(rates),
        "stopped_early": 1,
        "best_eval_loss": 1.5,
        "trial_tokens_per_s": rates,
        "trial_batch": [8, 16, 8][: len(rates)],
        "trial_rss_peak_mb": peak,
        "trial_s": [100.0] * len(rates),
        "save_s": save_s,
        "eval_s": 30.0,
        "disk_peak_mb": 1620.0,
        **extra,
    }


def test_system_figures_shares_and_disk_in_checkpoints():
    fig = smol_report.system(_raw(600.0, [100.0, 300.0, 200.0], 5000.0, 6.0, checkpoint_mb=540.0))
    assert fig["trial_tokens_per_s_median"] == 200.0
    assert fig["checkpoint_write_share"] == 0.02  # 6 s of 300 trial seconds
    assert fig["eval_share"] == 0.1
    assert fig["disk_peak_checkpoints"] == 3.0


def test_ratios_against_the_plain_trainer_and_the_faster_peer():
    systems = {
        "hpo": smol_report.system(
            _raw(
                300.0,
                [230.0, 210.0, 220.0],
                5200.0,
                3.0,
                checkpoint_mb=540.0,
                trial_full_budget=[False, True, True],
            )
        ),
        "hf_ray": smol_report.system(_raw(500.0, [150.0], 6000.0, 60.0)),
        "tune_optuna": smol_report.system(_raw(450.0, [160.0], 5900.0, 20.0)),
    }
    plain = [
        {"tokens_per_s": 190.0, "tree_rss_peak_mb": 5000.0, "config": {"batch_size": 8}},
        {"tokens_per_s": 210.0, "tree_rss_peak_mb": 4900.0, "config": {"batch_size": 8}},
    ]
    rows = smol_report.ratios(systems, smol_report.reference(plain), keep_top_k=3, conc=2)
    throughput = rows["trial tokens/s hpo / plain Trainer (median trial; same precision)"]
    assert throughput == {"value": 1.1, "target": ">= 1.1", "met": True}  # 220 / 200
    assert rows["  the same, hpo trials of the reference's batch size only"]["value"] == 1.125  # 225 / 200
    # the one batch-8 trial ASHA did not stop: the reference's configuration, budget and all
    assert (
        rows["  the same, hpo trials of the reference's batch that trained their whole budget"]["value"]
        == 1.1
    )
    assert rows["peak RSS per trial hpo / plain Trainer (largest of each)"]["value"] == 1.04
    assert rows["checkpoint writes / trial time, hpo"]["met"] is True  # 3 / 300
    assert rows["disk high-water hpo, in checkpoints"] == {"value": 3.0, "target": "<= 5", "met": True}
    assert rows["wall hpo / the faster peer"] == {"value": 0.667, "target": "<= 0.7", "met": True}
    assert "| plain Trainer x2 |" in smol_report.table(systems, smol_report.reference(plain))


def test_peer_batch_is_the_accumulation_of_micro_batches():
    from bench_peers.common import batch_choices

    s = Settings(batch_sizes=(8, 16), micro_batch=8, workload="smollm2")
    assert batch_choices(s) == ("gradient_accumulation_steps", [1, 2])
    assert batch_choices(Settings(batch_sizes=(8, 16, 32))) == ("per_device_train_batch_size", [8, 16, 32])


def test_medians_of_several_runs_judge_each_target_by_its_median():
    def run(tps: float, wall: float) -> dict:
        systems = {
            "hpo": smol_report.system(_raw(wall, [tps], 5000.0, 3.0)),
            "tune_optuna": smol_report.system(_raw(400.0, [100.0], 6000.0, 9.0)),
        }
        plain = [{"tokens_per_s": 100.0, "tree_rss_peak_mb": 5000.0, "config": {"batch_size": 8}}]
        ref = smol_report.reference(plain)
        return {
            "systems": systems,
            "reference": ref,
            "ratios": smol_report.ratios(systems, ref, 3, 2),
            "meta": {},
        }

    out = smol_report.medians([run(130.0, 300.0), run(90.0, 260.0), run(120.0, 240.0)], ["a", "b", "c"])
    tps = out["ratios"]["trial tokens/s hpo / plain Trainer (median trial; same precision)"]
    assert tps["runs"] == [1.3, 0.9, 1.2] and tps["value"] == 1.2 and tps["met"] is True
    wall = out["ratios"]["wall hpo / the faster peer"]
    assert wall["value"] == 0.65 and wall["met"] is True  # 260 / 400
    assert out["systems"]["hpo"]["wall_s"] == {"median": 260.0, "runs": [300.0, 260.0, 240.0]}
    assert out["systems"]["plain"]["trial_tokens_per_s_median"]["median"] == 100.0
