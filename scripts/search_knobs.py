"""Does turning a knob of today's ASHA + TPE cut its compute? Replays (hpo/replay.py) hpo's
default with one setting changed at a time -- TPE's random start-up trials, independent instead of
multivariate TPE, ASHA's reduction factor and grace period, Optuna's GP sampler in TPE's place --
and prints the compute (trial-seconds) to come within 1% of the table's best, median and
interquartile range over seeds, with its ratio to hpo's default on the same seeds.

  python scripts/search_knobs.py --table benchmarks/curves/smollm2.jsonl \\
      --schedule-from studies/smollm2.yaml --out docs/bench/search-knobs-smollm2.json
  python scripts/search_knobs.py --table benchmarks/curves/tiny-demo.jsonl --variants tpe,tpe-startup2

The replay, its strategies and the seeding are scripts/bench_search.py's; only the sampler or the
schedule settings differ.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

# name -> (sampler keyword arguments for Optuna's TPESampler, or "gp"; ASHA settings changed)
VARIANTS: dict[str, tuple[dict[str, Any] | str, dict[str, float]]] = {
    "tpe": ({}, {}),  # hpo's: space.sampler("tpe") under ASHA as hpo run builds it
    "tpe-startup2": ({"n_startup_trials": 2}, {}),
    "tpe-startup4": ({"n_startup_trials": 4}, {}),
    "tpe-startup16": ({"n_startup_trials": 16}, {}),
    "tpe-independent": ({"multivariate": False}, {}),
    "tpe-rf2": ({}, {"reduction_factor": 2}),
    "tpe-rf3": ({}, {"reduction_factor": 3}),
    "tpe-rf4": ({}, {"reduction_factor": 4}),
    "tpe-grace-x2": ({}, {"grace_period": 2.0}),  # x the spec's grace period
    "gp": ("gp", {}),  # Optuna's GPSampler (models COMPLETE trials only)
}


def strategy(name: str, table, sim_spec, seed: int):
    """hpo's ASHA + TPE (bench_search's ``asha+tpe``) with the variant's changes."""
    import optuna
    from bench_search import asha_spec

    from hpo import schedulers, space, strategies

    sampler_kw, sched_kw = VARIANTS[name]
    if "grace_period" in sched_kw:
        sched_kw = {"grace_period": sim_spec.schedule.grace_period * sched_kw["grace_period"]}
    asha = asha_spec(sim_spec, **sched_kw)
    if sampler_kw == "gp":
        sampler = optuna.samplers.GPSampler(seed=seed)
    elif sampler_kw:
        sampler = optuna.samplers.TPESampler(
            **{"seed": seed, "constant_liar": True, "n_startup_trials": 8, **sampler_kw}
        )
    else:
        sampler = space.sampler("tpe", seed)
    return strategies.OptunaStrategy(table, sim_spec, sampler, scheduler=schedulers.build(asha))


def run(args: argparse.Namespace) -> dict[str, Any]:
    import numpy as np
    import optuna
    from bench_search import TARGETS, sim_spec_of

    from hpo import curves, replay

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    table = curves.read(args.table)
    sim_spec = sim_spec_of(table, args.schedule_from)
    budget = args.budget * sum(sum(c.seconds) for c in table.curves)
    target = replay.target_of(table.best(), 0.01, table.minimize)
    out: dict[str, Any] = {"table": args.table, "seeds": args.seeds, "results": {}}
    for w in [int(x) for x in args.workers.split(",")]:
        base = None
        for name in args.variants.split(","):
            t0, xs = time.time(), []
            for seed in range(args.seeds):
                random.seed(seed)
                np.random.seed(seed)
                trace = replay.replay(
                    table, strategy(name, table, sim_spec, seed), w, budget, stop_within=min(TARGETS)
                )
                xs.append(trace.reach(target, table.minimize)[0])
            q25, med, q75 = (float(v) for v in np.quantile(xs, [0.25, 0.5, 0.75]))
            base = med if name == "tpe" else base
            ratio = med / base if base else float("nan")
            out["results"][f"{name}|{w}"] = {"median": med, "q25": q25, "q75": q75, "ratio_to_tpe": ratio}
            print(
                f"{name:16s} W={w:<3d} compute to 1%: {med:8.0f} s (IQR {q25:.0f}-{q75:.0f})  "
                f"x{ratio:.2f} hpo's default  ({time.time() - t0:.0f} s)",
                flush=True,
            )
    return out


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--table", default="benchmarks/curves/tiny-demo.jsonl", help="the curve table")
    p.add_argument(
        "--schedule-from", default=str(ROOT / "studies/demo.yaml"), help="spec whose schedule ASHA uses"
    )
    p.add_argument("--variants", default=",".join(VARIANTS), help="comma list; tpe (hpo's) first")
    p.add_argument("--workers", default="1,2", help="comma list of worker counts (default %(default)s)")
    p.add_argument("--seeds", type=int, default=50, help="seeds 0..N-1 (default %(default)s)")
    p.add_argument("--budget", type=float, default=3.0, help="compute budget, x one pass over the table")
    p.add_argument("--out", help="also write the results here (JSON)")
    args = p.parse_args(argv)
    if args.variants.split(",")[0] != "tpe" or set(args.variants.split(",")) - set(VARIANTS):
        p.error(f"--variants: a comma list of {', '.join(VARIANTS)}, starting with tpe")
    out = run(args)
    if args.out:
        Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
