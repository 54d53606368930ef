"""Driver memory as trials accumulate (issue 5): a study of very short trials, run in this process.

    .venv/bin/python scripts/driver_memory.py                 # 200 trials, 2 at a time
    .venv/bin/python scripts/driver_memory.py --trials 400 --out mem.json

Each trial fine-tunes the tiny model for one or two optimizer steps (60 rows of support data, one
epoch of batch 32), so the run is dominated by what the driver does per trial: Ray Tune's
bookkeeping, the Optuna bridge's storage writes, notes, events. The driver's resident memory
(VmRSS of this process) is sampled after every finished trial, with the largest Ray trial process;
the figure of merit is the driver's growth between trial 10 and the last trial (target: <= +50 MB
between 10 and 200); trial processes, reused from trial to trial, must stay flat too.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.conftest import small_spec  # noqa: E402 - the tests' small-study writer (real data rows)


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def trial_processes_mb() -> float:
    """The largest resident memory among trial processes on this machine: Ray's (``ray::ImplicitFunc``)
    and, where they run the trials, the ones forked from hpo's warm process (``hpo/warmstart.py``)."""
    largest = 0.0
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmdline = f.read()
            if not (cmdline.startswith(b"ray::ImplicitFunc") or b"hpo.warmstart" in cmdline):
                continue
            with open(f"/proc/{pid}/status") as f:
                kb = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
            largest = max(largest, kb / 1024)
        except (OSError, StopIteration):
            continue
    return largest


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--trials", type=int, default=200)
    p.add_argument("--out", help="write the samples as JSON here")
    p.add_argument("--keep", action="store_true", help="keep the study's folder (printed)")
    args = p.parse_args(argv)

    from hpo.study import create_study, run_study

    work = Path(tempfile.mkdtemp(prefix="hpo-mem-"))
    spec = small_spec(
        work,
        name="mem",
        rows=60,
        space={
            "learning_rate": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True},
            "batch_size": 32,
            "epochs": 1,
            "dropout": {"type": "float", "low": 0.0, "high": 0.2},
            "weight_decay": 0.0,
        },
        schedule="none",
        training={"eval_every": 1.0},
        keep_top_k=1,
    )
    url = f"sqlite:///{work / 'hpo.db'}"
    create_study(spec, storage=url)
    samples: list[tuple[int, float, float]] = []
    t0 = time.time()

    def on_event(e) -> None:
        if e.kind in ("complete", "pruned", "fail"):
            n, t = len(samples) + 1, round(time.time() - t0, 2)
            samples.append((n, t, round(rss_mb(), 1), round(trial_processes_mb(), 1)))

    before = rss_mb()
    run_study("mem", trials=args.trials, storage=url, runs_dir=str(work / "runs"), on_event=on_event)
    at = {n: mb for n, _, mb, _ in samples}
    trial_at = {n: mb for n, _, _, mb in samples}
    first = at.get(10, samples[0][2])
    result = {
        "trials": len(samples),
        "wall_s": round(time.time() - t0, 1),
        "rss_before_run_mb": round(before, 1),
        "rss_at_trial_10_mb": first,
        "rss_at_last_trial_mb": samples[-1][2],
        "growth_10_to_last_mb": round(samples[-1][2] - first, 1),
        "rss_max_mb": max(mb for _, _, mb, _ in samples),
        "trial_process_rss_at_trial_10_mb": trial_at.get(10, samples[0][3]),
        "trial_process_rss_at_last_trial_mb": samples[-1][3],
        "trial_process_rss_max_mb": max(mb for _, _, _, mb in samples),
        "samples": samples,
    }
    print(json.dumps({k: v for k, v in result.items() if k != "samples"}, indent=1))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1))
    if args.keep:
        print(f"kept {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
