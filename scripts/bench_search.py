"""Replay search strategies over a learning-curve table (hpo/replay.py) and measure the compute
(trial-seconds) and wall-clock each needs to come within 1% and 0.5% of the table's best objective,
for several worker counts, over many seeds; writes a JSON of the figures and a plotly figure.

  scripts/bench --search                                     # the tiny table, 50 seeds
  python scripts/bench_search.py --table benchmarks/curves/tiny-demo.jsonl --seeds 50 \\
      --out docs/bench/search-tiny.json --html docs/img/search-tiny.html
  python scripts/bench_search.py --table T --strategies pasha+tpe,asha+tpe --workers 2 --seeds 5  # quick

Each strategy drives the code a live run uses (hpo/strategies.py): ASHA with the schedule settings
of --schedule-from (default studies/demo.yaml), hpo's TPE settings, Ray Tune's OptunaSearch for the
peers. A simulated run stops at its budget (--budget x the compute of every table row once) or once
within 0.5% of the table's best.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

TARGETS = (0.01, 0.005)
PEER_GRACE_ITERS, PEER_RF = 2, 2  # the peers' ASHA: /work/shared/bench/peers, scripts/bench.py


def make_strategy(name: str, table, spec, seed: int):
    """A fresh strategy of that name (see STRATEGIES) for one simulated run."""
    import optuna
    from ray.tune.schedulers import ASHAScheduler

    from hpo import schedulers, space, strategies

    def tpe():
        return space.sampler("tpe", seed)  # hpo's own TPE settings

    def rnd():
        return optuna.samplers.RandomSampler(seed=seed)

    asha = asha_spec(spec)
    pasha = spec.model_copy(update={"schedule": _pasha(spec)})
    n_steps = max(len(c.values) for c in table.curves)
    if name == "random":
        return strategies.OptunaStrategy(table, spec, rnd())
    if name == "asha+random":
        return strategies.OptunaStrategy(table, spec, rnd(), scheduler=schedulers.build(asha))
    if name == "asha+tpe":
        return strategies.OptunaStrategy(table, spec, tpe(), scheduler=schedulers.build(asha))
    if name == "pasha+tpe":
        return strategies.OptunaStrategy(table, spec, tpe(), scheduler=schedulers.build(pasha))
    if name == "asha+cqr":  # hpo's live `sampler: cqr` (syne-tune's CQR as an Optuna sampler)
        return strategies.OptunaStrategy(
            table, spec, space.sampler("cqr", seed), scheduler=schedulers.build(asha)
        )
    if name == "pasha+random":
        return strategies.OptunaStrategy(table, spec, rnd(), scheduler=schedulers.build(pasha))
    if name == "hyperband+tpe":  # Optuna's BOHB-like recipe: TPE + HyperbandPruner, step = evaluation
        pruner = optuna.pruners.HyperbandPruner(
            min_resource=1, max_resource=n_steps, reduction_factor=int(spec.schedule.reduction_factor)
        )
        return strategies.OptunaStrategy(table, spec, tpe(), pruner=pruner, step_of=lambda i, e: i + 1)
    if name == "peers":
        sched = ASHAScheduler(
            time_attr="training_iteration",
            max_t=n_steps,
            grace_period=PEER_GRACE_ITERS,
            reduction_factor=PEER_RF,
        )
        return strategies.PeerStrategy(table, spec, seed, sched)
    if name in SYNE:  # syne-tune's own ASHA with hpo's settings (asha spec) and a model per result
        return strategies.SyneTuneStrategy(table, asha, seed, method=SYNE[name])
    raise SystemExit(f"unknown strategy {name!r}; use {', '.join(STRATEGIES)}")


SYNE = {"syne-asha+cqr": "cqr", "syne-bohb": "bohb"}  # optional: pip install -e '.[search]'
STRATEGIES = (
    "random",
    "asha+random",
    "asha+tpe",
    "peers",
    "hyperband+tpe",
    "pasha+tpe",
    "pasha+random",
    "asha+cqr",
    *SYNE,
)
MISSING = "{name}: skipped, syne-tune is not installed (pip install -e '.[search]' or scripts/setup --search)"


def asha_spec(spec, **settings):
    """``spec`` with ``schedule: asha`` on its own schedule settings (``settings`` changed)."""
    schedule = spec.schedule.model_copy(update={"type": "asha", **settings})
    return spec.model_copy(update={"schedule": schedule})


def _pasha(spec):
    from hpo.spec import PashaSpec

    s = spec.schedule
    return PashaSpec(grace_period=s.grace_period, reduction_factor=s.reduction_factor, max_t=s.max_t)


def sim_spec_of(table, schedule_from: str):
    """The table's study spec with the schedule of the spec at ``schedule_from``."""
    from hpo import spec

    base = spec.from_json(json.dumps(table.header["spec"]))
    return base.model_copy(update={"schedule": spec.load(schedule_from).schedule})


def run(args: argparse.Namespace) -> dict[str, Any]:
    import random

    import numpy as np

    from hpo import curves, replay

    table = curves.read(args.table)
    sim_spec = sim_spec_of(table, args.schedule_from)
    one_pass = sum(sum(c.seconds) for c in table.curves)
    budget = args.budget * one_pass
    best = table.best()
    grid = np.linspace(0, budget, 200)
    out: dict[str, Any] = {
        "table": str(args.table),
        "table_header": {k: v for k, v in table.header.items() if k != "spec"},
        "rows": len(table.curves),
        "table_best": best,
        "budget_s": budget,
        "schedule": sim_spec.schedule.model_dump(),
        "seeds": args.seeds,
        "results": {},
    }
    for name in args.strategies.split(","):
        try:
            make_strategy(name, table, sim_spec, 0)
        except ImportError:
            print(MISSING.format(name=name), flush=True)
            continue
        for w in [int(x) for x in args.workers.split(",")]:
            t0 = time.time()
            runs = []
            for seed in range(args.seeds):
                random.seed(seed)
                np.random.seed(seed)  # Ray's ASHA picks brackets with numpy's global generator
                strat = make_strategy(name, table, sim_spec, seed)
                runs.append(replay.replay(table, strat, w, budget, stop_within=min(TARGETS)))
            out["results"][f"{name}|{w}"] = _summarize(runs, table, grid)
            r = out["results"][f"{name}|{w}"]
            print(
                f"{name:14s} W={w:<3d} compute to 1%: {r['compute_1%']['median']:9.1f}s  "
                f"0.5%: {r['compute_0.5%']['median']:9.1f}s  wall 1%: {r['wall_1%']['median']:8.1f}s  "
                f"pick 1%: {r['chosen_compute_1%']['median']:9.1f}s  "
                f"({time.time() - t0:.0f}s)",
                flush=True,
            )
    return out


def _summarize(runs, table, grid) -> dict[str, Any]:
    import numpy as np

    from hpo.replay import target_of

    out: dict[str, Any] = {}
    best, minimize = table.best(), table.minimize
    full = [c.best(minimize) for c in table.curves]
    for within in TARGETS:
        target = target_of(best, within, minimize)
        reach = [r.reach(target, minimize) for r in runs]
        chosen = [r.reach_chosen(full, target, minimize) for r in runs]
        tag = f"{within * 100:g}%"
        for i, kind, got in ((0, "compute", reach), (1, "wall", reach), (0, "chosen_compute", chosen)):
            xs = [x[i] for x in got]
            out[f"{kind}_{tag}"] = {
                "median": statistics.median(xs),
                "q25": float(np.quantile(xs, 0.25)),
                "q75": float(np.quantile(xs, 0.75)),
                "reached": sum(np.isfinite(xs)) / len(xs),
            }
    curves = []
    for r in runs:  # best so far on the compute grid (carried forward past the run's end)
        idx = np.searchsorted(np.asarray(r.compute), grid, side="right") - 1
        b = np.asarray(r.best)
        curves.append(np.where(idx >= 0, b[np.clip(idx, 0, None)], np.nan))
    out["median_best_curve"] = [
        None if np.isnan(v) else float(v) for v in np.nanmedian(np.array(curves), axis=0)
    ]
    out["compute_grid"] = [float(x) for x in grid]
    out["trials_median"] = statistics.median(r.trials for r in runs)
    out["seeds"] = len(runs)
    return out


def figure(out: dict[str, Any], path: Path) -> None:
    """Median best-so-far vs compute per strategy (one panel per worker count), as static HTML."""
    from plotly.subplots import make_subplots

    workers = sorted({int(k.split("|")[1]) for k in out["results"]})
    fig = make_subplots(rows=1, cols=len(workers), subplot_titles=[f"{w} workers" for w in workers])
    names = list(dict.fromkeys(k.split("|")[0] for k in out["results"]))
    palette = [
        "#636efa",
        "#ef553b",
        "#00cc96",
        "#ab63fa",
        "#ffa15a",
        "#19d3f3",
        "#ff6692",
        "#b6e880",
        "#222a2a",
        "#fecb52",
    ]
    for col, w in enumerate(workers, 1):
        for i, name in enumerate(names):
            r = out["results"].get(f"{name}|{w}")
            if not r:
                continue
            seeds = r.get("seeds", out["seeds"])
            fig.add_scatter(
                x=r["compute_grid"],
                y=r["median_best_curve"],
                name=name if seeds == out["seeds"] else f"{name} ({seeds} seeds)",
                legendgroup=name,
                showlegend=col == 1,
                line={"color": palette[i % len(palette)]},
                row=1,
                col=col,
            )
        for within in TARGETS:
            fig.add_hline(
                y=out["table_best"] * (1 + within), line_dash="dot", line_color="grey", row=1, col=col
            )
    fig.update_xaxes(title_text="compute (trial-seconds)")
    fig.update_yaxes(title_text="median best objective so far", row=1, col=1)
    fig.update_layout(
        title=f"Replay of {out['table']} ({out['rows']} configurations, {out['seeds']} seeds)",
        height=450,
        width=380 * len(workers),
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.write_html(str(path), include_plotlyjs="cdn")


def merge(paths: list[str]) -> dict[str, Any]:
    """One results file from several runs over the same table (e.g. strategies split over cores; a
    slow strategy run with fewer seeds: each result keeps its own ``seeds``, the top level the most)."""
    outs = [json.loads(Path(p).read_text()) for p in paths]
    merged = {**outs[0], "results": {}, "seeds": max(o["seeds"] for o in outs)}
    for o in outs:
        if (o["table"], o["budget_s"]) != (outs[0]["table"], outs[0]["budget_s"]):
            raise SystemExit(f"cannot merge: {paths[0]} and another file differ in table or budget")
        for key, r in o["results"].items():
            merged["results"][key] = {"seeds": o["seeds"], **r}  # files from before results had seeds
    return merged


def add_floors(out: dict[str, Any]) -> None:
    """``out["floors"]``: per worker count, the least compute any strategy can spend reaching each
    target (``replay.compute_floor``: workers x the fastest row's seconds to it)."""
    from hpo import curves, replay

    path = Path(out["table"])
    table = curves.read(path if path.is_absolute() else ROOT / path)
    best, workers = table.best(), sorted({int(k.split("|")[1]) for k in out["results"]})
    out["floors"] = {
        str(w): {
            f"{within * 100:g}%": replay.compute_floor(
                table, replay.target_of(best, within, table.minimize), w
            )
            for within in TARGETS
        }
        for w in workers
    }


def floor_markdown(out: dict[str, Any], ref: str = "asha+tpe", peers: str = "peers") -> str:
    """Per worker count: the compute floor to 1% against half of ``ref``'s and ``peers``' medians
    (a strategy at 0.5x of them must spend that; below the floor no strategy can)."""
    lines = [
        f"| workers | floor to 1% s | 0.5x {ref} s | 0.5x {peers} s | floor / {ref} | floor / {peers} |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for w, f in out["floors"].items():
        floor = f["1%"]
        a, b = (_median_1pct(out, name, w) for name in (ref, peers))
        cols = (f"{floor:,.0f}", f"{a / 2:,.0f}", f"{b / 2:,.0f}", f"{floor / a:.2f}", f"{floor / b:.2f}")
        lines.append(f"| {w} | " + " | ".join(cols) + " |")
    return "\n".join(lines) + "\n"


def _median_1pct(out: dict[str, Any], name: str, workers: str) -> float:
    r = out["results"].get(f"{name}|{workers}")
    return r["compute_1%"]["median"] if r else float("nan")


def markdown(out: dict[str, Any]) -> str:
    """The results as a markdown table: medians over seeds (inf: under half the seeds got there)."""

    def cell(r: dict[str, Any], key: str) -> str:
        m = r[key]["median"]
        return "not reached" if m == float("inf") else f"{m:,.0f} ({r[key]['reached']:.0%})"

    lines = [
        "| strategy | workers | compute to 1% s | compute to 0.5% s | wall to 1% s "
        "| pick within 1%: compute s | trials |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for key, r in out["results"].items():
        name, w = key.split("|")
        if r.get("seeds", out["seeds"]) != out["seeds"]:
            name += f" ({r['seeds']} seeds)"
        cols = [cell(r, k) for k in ("compute_1%", "compute_0.5%", "wall_1%", "chosen_compute_1%")]
        lines.append(f"| {name} | {w} | " + " | ".join(cols) + f" | {r['trials_median']:g} |")
    return "\n".join(lines) + "\n\n" + floor_markdown(out)


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--table", default=str(ROOT / "benchmarks/curves/tiny-demo.jsonl"), help="the curve table")
    p.add_argument(
        "--schedule-from", default=str(ROOT / "studies/demo.yaml"), help="spec whose schedule ASHA/PASHA use"
    )
    p.add_argument("--strategies", default=",".join(STRATEGIES), help="comma list (default: all)")
    p.add_argument("--workers", default="1,2,8,32", help="comma list of worker counts (default %(default)s)")
    p.add_argument("--seeds", type=int, default=50, help="seeds 0..N-1 (default %(default)s)")
    p.add_argument(
        "--budget",
        type=float,
        default=3.0,
        help="compute budget, x one pass over the table (default %(default)s)",
    )
    p.add_argument("--out", default="bench-search.json", help="JSON results (default %(default)s)")
    p.add_argument("--html", help="also write the plotly figure here (static HTML)")
    p.add_argument("--markdown", help="also write the results table here (markdown)")
    p.add_argument(
        "--merge", nargs="+", help="merge these results files (runs split by strategy), run nothing"
    )
    args = p.parse_args(argv)
    out = merge(args.merge) if args.merge else run(args)
    add_floors(out)
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    if args.html:
        figure(out, Path(args.html))
    if args.markdown:
        Path(args.markdown).write_text(markdown(out))
    print(f"wrote {args.out}" + (f" and {args.html}" if args.html else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
