"""A real (not replayed) comparison of samplers on one study: the same spec with only ``sampler:``
and ``seed:`` swapped, ``hpo run --trials N`` for each, then the best value against wall-clock
and trial-seconds read back from the storage. It is the confirmation run of docs/search.md
(issue 20, item 4): what a replayed strategy promises, checked on real trials.

  python scripts/live_search.py --spec studies/demo.yaml --samplers tpe,cqr --seeds 0,1,2 \\
      --trials 20 --out docs/bench/live-search-demo.json

Each (sampler, seed) is a study of its own (``<name>-<sampler>-s<seed>``) in
``runs/live-search/hpo.db``; a rerun skips those that already hold their trials. ``cqr`` needs
the search extra (``scripts/setup --search``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def variant(spec_path: Path, sampler: str, seed: int, folder: Path) -> tuple[str, Path]:
    """The spec with ``sampler``, ``seed`` and its name changed, written to ``folder`` (the data
    path made absolute, so it still resolves there)."""
    doc = yaml.safe_load(spec_path.read_text())
    name = f"{doc['name']}-{sampler}-s{seed}"
    doc.update(name=name, sampler=sampler, seed=seed)
    data = doc.get("data", {})
    if isinstance(data, dict) and "path" in data:
        data["path"] = str((spec_path.parent / data["path"]).resolve())
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return name, path


def measure(study_name: str, url: str, wall_s: float) -> dict[str, Any]:
    """Best value, and when each new best came (seconds since the first trial started, and trial-
    seconds spent by then), from the stored trials."""
    import optuna
    from optuna.trial import TrialState

    study = optuna.load_study(study_name=study_name, storage=url)
    minimize = study.direction == optuna.study.StudyDirection.MINIMIZE
    done = [t for t in study.trials if t.datetime_start and t.datetime_complete]
    t0 = min(t.datetime_start for t in done)
    spent, best, curve = 0.0, None, []
    for t in sorted(done, key=lambda t: t.datetime_complete):
        spent += (t.datetime_complete - t.datetime_start).total_seconds()
        better = t.value is not None and (best is None or (t.value < best if minimize else t.value > best))
        if t.state == TrialState.COMPLETE and better:
            best = t.value
            curve.append(((t.datetime_complete - t0).total_seconds(), spent, best))
    states = [t.state.name for t in study.trials]
    return {
        "minimize": minimize,
        "wall_s": round(wall_s, 1),
        "best": best,
        "curve": curve,  # (seconds since start, trial-seconds, best so far) at each new best
        "trial_s": round(spent, 1),
        "pruned": states.count("PRUNED"),
        "complete": states.count("COMPLETE"),
    }


def reached(run: dict[str, Any], target: float) -> tuple[float, float]:
    """(trial-seconds, wall s) when the run's best came within ``target``; inf if never (the
    replay's ``Trace.reach`` over the run's new-best points)."""
    from hpo.replay import Trace

    wall, spent, best = (list(x) for x in zip(*run["curve"], strict=True)) if run["curve"] else ([], [], [])
    return Trace(compute=spent, wall=wall, best=best).reach(target, run["minimize"])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--spec", type=Path, default=ROOT / "studies" / "demo.yaml")
    p.add_argument("--samplers", default="tpe,cqr")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--trials", type=int, default=20)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()

    import optuna

    from hpo.study import create_study, run_study

    runs_dir = ROOT / "runs" / "live-search"
    runs_dir.mkdir(parents=True, exist_ok=True)
    url = f"sqlite:///{runs_dir / 'hpo.db'}"
    runs: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for sampler in args.samplers.split(","):
            for seed in (int(s) for s in args.seeds.split(",")):
                name, path = variant(args.spec, sampler, seed, Path(tmp))
                if name in optuna.get_all_study_names(url):
                    print(f"{name}: already in {url}, measured as it stands", flush=True)
                    runs[name] = measure(name, url, float("nan"))
                    continue
                create_study(path, storage=url)
                start = time.time()
                run_study(name, trials=args.trials, storage=url, runs_dir=runs_dir / name)
                runs[name] = measure(name, url, time.time() - start)
                print(f"{name}: best {runs[name]['best']:.4f} in {runs[name]['wall_s']:.0f} s", flush=True)

    from hpo.replay import target_of

    minimize = next(iter(runs.values()))["minimize"]
    values = [r["best"] for r in runs.values() if r["best"] is not None]
    best = min(values) if minimize else max(values)
    target = target_of(best, 0.01, minimize)
    summary = {}
    for sampler in args.samplers.split(","):
        mine = [r for n, r in runs.items() if f"-{sampler}-s" in n]
        hits = [reached(r, target) for r in mine]
        summary[sampler] = {
            "best_median": statistics.median(r["best"] for r in mine),
            "wall_s_median": statistics.median(r["wall_s"] for r in mine),
            "trial_s_median": statistics.median(r["trial_s"] for r in mine),
            "wall_to_1pct_median": statistics.median(h[1] for h in hits),
            "trial_s_to_1pct_median": statistics.median(h[0] for h in hits),
            "reached_1pct": sum(h[1] != float("inf") for h in hits),
        }
        print(sampler, json.dumps(summary[sampler]), flush=True)
    out = {"spec": str(args.spec), "trials": args.trials, "best": best, "target_1pct": target}
    args.out.write_text(json.dumps({**out, "summary": summary, "runs": runs}, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
