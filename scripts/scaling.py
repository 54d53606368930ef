"""A simulated scaling figure: the same trial workload with 1, 2, 4 logical workers.

Each setting starts a fresh loopback-only Ray declaring N logical CPUs (one trial a CPU), so hpo's
placement runs N trials at once, and runs a fresh study of ``--trials`` trials of equal work
(one epoch, no early stops) through hpo's driver: placement, the Optuna bridge writing every
report to the storage, ASHA, Ray Tune. It prints trials/hour per setting and the speed-up over
the first. Two workloads:

* ``train``: the real trial loop on the tiny model, torch on one thread a trial. Logical CPUs are
  not cores: past the machine's free cores trials share them and the figure stops growing.
* ``sleep``: a stand-in trial that reports the same metrics but sleeps instead of training, as a
  trial whose work runs on its own GPU leaves the node's CPU free. It measures what hpo and Ray
  add per trial and whether N slots really run N trials at once.

    python scripts/scaling.py                      # both workloads, 1, 2, 4 workers, 8 trials each
    python scripts/scaling.py --workload sleep --workers 1,2,4,8 --trials 16 --json scaling.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SUPPORT = ROOT / "studies" / "data" / "support.jsonl"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workers", default="1,2,4", help="logical workers (trials at once) to try")
    p.add_argument("--trials", type=int, default=8, help="trials per setting")
    p.add_argument("--rows", type=int, default=200, help="support rows of training data")
    p.add_argument("--workload", choices=("train", "sleep", "both"), default="both")
    p.add_argument("--sleep-s", type=float, default=8.0, help="seconds a sleep trial takes")
    p.add_argument("--json", type=Path, default=None, help="also write the figures here")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    workers = [int(w) for w in args.workers.split(",")]
    print(
        f"{os.cpu_count()} real cores; load average {_load()}; "
        f"{args.trials} trials a setting, {args.rows} rows"
    )
    results: list[dict[str, Any]] = []
    workloads = ("train", "sleep") if args.workload == "both" else (args.workload,)
    with tempfile.TemporaryDirectory(prefix="hpo-scaling-") as tmp:
        for workload in workloads:
            print(f"workload {workload}" + (f" ({args.sleep_s:g} s a trial)" if workload == "sleep" else ""))
            mine: list[dict[str, Any]] = []
            for n in workers:
                sleep_s = args.sleep_s if workload == "sleep" else None
                mine.append(measure(Path(tmp) / f"{workload}-{n}", n, args.trials, args.rows, sleep_s))
                print("  " + _line(mine[-1], mine[0]["trials_per_hour"]))
            results += [{"workload": workload, **r} for r in mine]
    if args.json:
        args.json.write_text(json.dumps({"cores": os.cpu_count(), "results": results}, indent=1))
        print(f"wrote {args.json}")
    return 0


def _line(r: dict[str, Any], base: float) -> str:
    return (
        f"{r['workers']} worker(s): {r['trials']} trials in {r['wall_s']:.0f} s, {r['concurrency']} at once "
        f"-> {r['trials_per_hour']:.0f} trials/hour (x{r['trials_per_hour'] / base:.2f}); "
        f"median trial {r['median_trial_s']:.1f} s; load average after {r['load']}"
    )


def _load() -> str:
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


def _spec_file(folder: Path, rows: int) -> Path:
    lines = SUPPORT.read_text(encoding="utf-8").splitlines()[:rows]
    (folder / "data.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    spec = {
        "name": "scaling",
        "model": "hpo:tiny-gpt2",
        "data": {"path": "data.jsonl", "format": "jsonl", "validation_fraction": 0.1, "block_size": 128},
        # one searched parameter with a single sensible range; every trial does the same work
        "space": {
            "learning_rate": {"type": "float", "low": 1e-3, "high": 2e-3},
            "batch_size": 16,
            "epochs": 1,
            "dropout": 0.1,
            "weight_decay": 0.01,
        },
        "schedule": {"type": "asha", "grace_period": 1, "reduction_factor": 3},  # no early stops
        "training": {"eval_every": 0.5},
        "resources": {"cpus_per_trial": 1, "gpus_per_trial": 0},
        "seed": 0,
    }
    path = folder / "scaling.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def measure(folder: Path, workers: int, trials: int, rows: int, sleep_s: float | None) -> dict[str, Any]:
    """One fresh study on a fresh local Ray with ``workers`` logical CPUs (sleep trials when
    ``sleep_s`` is set)."""
    import statistics

    import optuna

    from hpo import create_study, raystart, run_study, trainable

    folder.mkdir(parents=True)
    url = f"sqlite:///{folder / 'hpo.db'}"
    create_study(_spec_file(folder, rows), storage=url)
    _start_ray(workers, folder)
    real = trainable.run_trial
    if sleep_s is not None:
        trainable.run_trial = _sleeper(sleep_s)  # the Tuner is built with whatever this names
    try:
        t0 = time.time()
        summary = run_study("scaling", trials=trials, storage=url, runs_dir=folder / "runs")
        wall = time.time() - t0
    finally:
        trainable.run_trial = real
        raystart.stop()
    done = [
        t for t in optuna.load_study(study_name="scaling", storage=url).get_trials() if t.state.is_finished()
    ]
    return {
        "workers": workers,
        "concurrency": summary.concurrency,
        "trials": len(done),
        "wall_s": wall,
        "trials_per_hour": len(done) / wall * 3600,
        "median_trial_s": statistics.median(float(t.user_attrs.get("trial_s", 0.0)) for t in done),
        "load": _load(),
    }


def _sleeper(seconds: float):
    """A stand-in trainable: two reports half a trial apart, the metrics a real trial reports."""

    def sleep_trial(config: dict[str, Any]) -> None:
        import math

        from ray import tune

        started = time.time()
        lr = float(config["params"]["learning_rate"])
        for k in (1, 2):
            time.sleep(seconds / 2)
            loss = 3.0 - 0.1 * k + lr  # any value: only the timing is measured
            tune.report(
                {
                    "eval_loss": loss,
                    "perplexity": math.exp(loss),
                    "epoch": k / 2,
                    "step": k,
                    "best_eval_loss": loss,
                    "best_epoch": k / 2,
                    "budget_done": k == 2,
                    "trial_s": time.time() - started,
                    "started_at": started,
                }
            )

    return sleep_trial


def _start_ray(workers: int, folder: Path) -> None:
    """A loopback-only local Ray with ``workers`` logical CPUs (hpo's run then uses it as it is)."""
    from hpo import raystart

    raystart.ray_env()
    import ray

    raystart.loopback_only()
    ray.init(
        num_cpus=workers,
        num_gpus=0,
        _node_ip_address="127.0.0.1",
        include_dashboard=False,
        _temp_dir=raystart.temp_dir(folder / "runs"),
        log_to_driver=False,
        logging_level="ERROR",
    )


if __name__ == "__main__":
    sys.exit(main())
