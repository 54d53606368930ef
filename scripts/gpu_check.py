"""Run the tiny study on whatever GPUs this machine has; print trials/hour and tokens/s.

The workload: the offline tiny GPT-2 fine-tuned on the shipped support data (256-token blocks),
one epoch a trial, no early stops, so every trial does the same work. For each ``--gpus-per-trial``
setting (default: a GPU per trial, then a quarter GPU per trial, 4 trials sharing each GPU) it runs
a fresh study through the real stack (local Ray, Optuna storage, the trial loop) and prints:
trials at once, trials/hour (the run's wall time, Ray start and data included), tokens/s (the
median trial's training rate, and the whole run's), the device and precision the trials used.

Before that it checks, in this process, that the trial loop gives its CUDA memory back after each
trial, completed, stopped or failed (as a Ray trial process reused for the next trial must), each
trial compared with the one before it. bf16 autocast is expected on Ampere (compute capability 8)
or newer, fp32 on older GPUs; the check says which one the trial loop picked. Without a CUDA GPU it
says so and, unless ``--no-cpu``, runs the same study on CPU so the figures have a baseline; it
exits 0 either way. It needs Ray; scripts/gpu_smoke checks a GPU machine that has no Ray.

    scripts/gpu_check                          # every GPU: 1 GPU a trial, then 0.25
    scripts/gpu_check --gpus-per-trial 0.5 --trials 16
    scripts/gpu_check --json gpu-check.json    # the figures, for the README
    scripts/gpu_check --no-cpu                 # on a machine without CUDA: only say so
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))  # gpu_smoke.memory_verdict
SUPPORT = ROOT / "studies" / "data" / "support.jsonl"
MB = 1024 * 1024


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--gpus-per-trial", default="1,0.25", help="comma-separated settings (default 1,0.25)")
    p.add_argument("--trials", type=int, default=None, help="trials per setting (default: 2 rounds)")
    p.add_argument("--rows", type=int, default=None, help="support rows (default 3000 on GPU, 300 on CPU)")
    p.add_argument("--cpus-per-trial", type=float, default=1.0)
    p.add_argument("--no-cpu", action="store_true", help="without a CUDA GPU, only say so")
    p.add_argument("--json", type=Path, default=None, help="also write the figures here")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import torch

    gpus = _gpus(torch)
    out: dict[str, Any] = {"machine": _machine(torch, gpus), "runs": []}
    print(out["machine"]["summary"])
    if not gpus:
        print(f"no CUDA GPU here: {_why_no_gpu(torch)}")
        if args.no_cpu:
            print("nothing measured (--no-cpu)")
            return 0
        print("running the tiny study on CPU instead, as a baseline")
        settings, rows = [0.0], args.rows or 300
    else:
        for g in gpus:
            print(f"  GPU {g['index']}: {g['name']}, {g['memory_gb']:.0f} GB, compute {g['capability']}, "
                  f"expected precision {g['precision']}")  # fmt: skip
        out["memory"] = memory_check(torch)
        settings, rows = [float(x) for x in args.gpus_per_trial.split(",")], args.rows or 3000
    with tempfile.TemporaryDirectory(prefix="hpo-gpu-check-") as tmp:
        for g in settings:
            result = measure(Path(tmp), g, args.cpus_per_trial, rows, args.trials)
            out["runs"].append(result)
            print(_line(result))
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))
        print(f"wrote {args.json}")
    return 0


# ---------------------------------------------------------------- the machine


def _gpus(torch) -> list[dict[str, Any]]:
    from hpo import placement

    if not torch.cuda.is_available():
        return []
    out = []
    for i in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(i)
        out.append(
            {
                "index": i,
                "name": props.name,
                "memory_gb": props.total_memory / 1e9,
                "capability": f"{props.major}.{props.minor}",
                "precision": placement.precision(props.major),
            }
        )
    return out


def _machine(torch, gpus: list[dict[str, Any]]) -> dict[str, Any]:
    names = sorted({g["name"] for g in gpus})
    where = f"{len(gpus)} x {', '.join(names)}" if gpus else "no CUDA GPU"
    summary = (
        f"machine: {where}; {os.cpu_count()} CPU cores; torch {torch.__version__} "
        f"(CUDA {torch.version.cuda or 'none'}); {platform.platform()}"
    )
    return {"summary": summary, "gpus": gpus, "cpus": os.cpu_count(), "torch": torch.__version__}


def _why_no_gpu(torch) -> str:
    smi = shutil.which("nvidia-smi")
    if torch.version.cuda is None:
        hint = "this torch is a CPU-only build"
        if smi:
            hint += " but nvidia-smi is installed: install a CUDA build of torch (pytorch.org/get-started)"
        return hint
    return f"torch {torch.__version__} is built for CUDA but finds no device" + (
        "" if smi else " (no nvidia-smi either: no NVIDIA driver)"
    )


# ---------------------------------------------------------------- CUDA memory between trials


def memory_check(torch) -> dict[str, Any]:
    """Trials in a row in this process on GPU 0, as a reused trial process runs them (completed,
    stopped at its first report as ASHA stops trials, failed at its second step, completed): does
    each give its CUDA memory back? Each is compared with the trial before it
    (``gpu_smoke.memory_verdict``): the first trial leaves cuBLAS's workspace, which stays for the
    process's life, so a baseline from before any matmul would call that a leak."""
    from gpu_smoke import memory_verdict

    from hpo import trial, trialsetup

    tmp = Path(tempfile.mkdtemp(prefix="hpo-gpu-mem-"))
    after, reserved, peaks, held = [], [], [], []
    try:
        spec, model_path, data_path = _prepared(tmp, rows=600, gpus=1.0)
        config = _trial_config(spec, model_path, data_path, tmp)
        for n, kind in enumerate(MEMORY_TRIALS):
            torch.cuda.reset_peak_memory_stats()
            held.append(_trial_of_kind(trial, config, tmp, n, kind))  # its error kept, as Ray keeps it
            after.append(torch.cuda.memory_allocated() / MB)
            reserved.append(torch.cuda.memory_reserved() / MB)
            peaks.append(torch.cuda.max_memory_allocated() / MB)
        used = trialsetup.precision({}, torch.device("cuda"))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    verdict = memory_verdict(after)
    result = {
        **verdict,
        "trials": list(MEMORY_TRIALS),
        "reserved_after_mb": reserved,
        "peak_mb": peaks,
        "errors": [None if e is None else type(e).__name__ for e in held],
        "trial_precision": used,
    }
    print(
        f"CUDA memory between trials: {'released' if verdict['released'] else 'NOT released'} "
        f"(left after each trial ({', '.join(MEMORY_TRIALS)}): {', '.join(f'{a:.1f}' for a in after)} MB, "
        f"each compared with the one before; reserved {', '.join(f'{r:.0f}' for r in reserved)} MB; "
        f"peak {max(peaks):.0f} MB); the trial loop trains in {used}"
    )
    return result


MEMORY_TRIALS = ("completed", "stopped", "failed", "completed")


def _trial_of_kind(trial, config: dict[str, Any], tmp: Path, number: int, kind: str) -> BaseException | None:
    """Run one trial that completes, is stopped at its first report, or fails; returns its error."""
    from hpo import faultinject

    def stop(metrics: dict[str, Any]) -> None:  # what Tune's report does when ASHA stops a trial
        raise SystemExit(0)

    if kind == "failed":
        os.environ[faultinject.FAIL_ENV] = f"{number}:error"
    try:
        config = {**config, "trial_number": number, "checkpoint_dir": str(tmp / f"t{number}")}
        trial.run(config, stop if kind == "stopped" else (lambda m: None))
    except (Exception, SystemExit) as e:  # noqa: BLE001 - returned, and held by the caller
        return e
    finally:
        os.environ.pop(faultinject.FAIL_ENV, None)
    return None


def _trial_config(spec, model_path: str, data_path: str, tmp: Path) -> dict[str, Any]:
    from hpo import runner

    params = {"learning_rate": 1e-3, "batch_size": 16, "epochs": 1, "dropout": 0.1, "weight_decay": 0.01}
    config = runner._config_maker(spec, model_path, data_path, 1.0, 1.0)(0, params, str(tmp / "t0"))
    config["placement"] = {}  # outside Ray: any CUDA device this process sees
    return config


# ---------------------------------------------------------------- the study


def _spec_file(tmp: Path, name: str, rows: int, gpus: float, cpus: float) -> Path:
    lines = SUPPORT.read_text(encoding="utf-8").splitlines()[:rows]
    (tmp / "data.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    spec = {
        "name": name,
        "model": "hpo:tiny-gpt2",
        "data": {"path": "data.jsonl", "format": "jsonl", "validation_fraction": 0.05, "block_size": 256},
        "space": {
            "learning_rate": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True},
            "batch_size": {"type": "categorical", "choices": [8, 16, 32]},
            "epochs": 1,
            "dropout": {"type": "float", "low": 0.0, "high": 0.2},
            "weight_decay": 0.01,
        },
        # ASHA with its first rung at the budget: no trial stops early, each does the same work
        "schedule": {"type": "asha", "grace_period": 1, "reduction_factor": 3},
        "training": {"eval_every": 0.5},
        "resources": {"cpus_per_trial": cpus, "gpus_per_trial": gpus},
        "seed": 0,
    }
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def _prepared(tmp: Path, rows: int, gpus: float):
    from hpo import basemodel, data
    from hpo import spec as spec_mod

    spec = spec_mod.load(_spec_file(tmp, "gpu-mem", rows, gpus, 1.0))
    model_path = basemodel.resolve(spec.model, spec.seed)
    prepared = data.prepare(spec.data, model_path, spec.seed, basemodel.cache_dir())
    return spec, model_path, prepared.path


def measure(tmp: Path, gpus: float, cpus: float, rows: int, trials: int | None) -> dict[str, Any]:
    """One fresh study at ``gpus`` per trial; its throughput."""
    import optuna

    from hpo import create_study, run_study

    name = f"gpu-check-{str(gpus).replace('.', '_')}"
    folder = tmp / name
    folder.mkdir()
    url = f"sqlite:///{folder / 'hpo.db'}"
    create_study(_spec_file(folder, name, rows, gpus, cpus), storage=url)
    trials = trials or max(4, 2 * _at_once(gpus, cpus))  # two full rounds by default
    t0 = time.time()
    summary = run_study(name, trials=trials, storage=url, runs_dir=folder / "runs")
    wall = time.time() - t0
    done = [t for t in optuna.load_study(study_name=name, storage=url).get_trials() if t.state.is_finished()]
    rates = [float(t.user_attrs["tokens_per_s"]) for t in done if "tokens_per_s" in t.user_attrs]
    tokens = sum(int(t.user_attrs.get("tokens", 0)) for t in done)
    devices = sorted({str(t.user_attrs.get("device", "?")) for t in done})
    notes = sorted({str(t.user_attrs["device_note"]) for t in done if "device_note" in t.user_attrs})
    return {
        "gpus_per_trial": gpus,
        "cpus_per_trial": cpus,
        "rows": rows,
        "trials": len(done),
        "concurrency": summary.concurrency,
        "wall_s": wall,
        "trials_per_hour": len(done) / wall * 3600,
        "tokens_per_s_median_trial": statistics.median(rates) if rates else None,
        "tokens_per_s_run": tokens / wall,
        "devices": devices,
        "device_notes": notes,
        "run_notes": summary.notes,
        "failed": summary.counts.get("FAIL", 0),
    }


def _at_once(gpus: float, cpus: float) -> int:
    """Trials this machine runs at once (what the run's local Ray will find)."""
    import torch

    from hpo import placement

    n_gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    return placement.plan([(float(os.cpu_count() or 1), float(n_gpus))], cpus, gpus).concurrency


def _line(r: dict[str, Any]) -> str:
    what = (
        f"{r['gpus_per_trial']:g} GPU a trial"
        if r["gpus_per_trial"]
        else f"{r['cpus_per_trial']:g} CPU a trial"
    )
    median = r["tokens_per_s_median_trial"]
    text = (
        f"{what}: {r['trials']} trials, {r['concurrency']} at once, {r['wall_s']:.0f} s -> "
        f"{r['trials_per_hour']:.0f} trials/hour; tokens/s {median:,.0f} per trial (median), "
        f"{r['tokens_per_s_run']:,.0f} for the run; device {', '.join(r['devices'])}"
        if median is not None
        else f"{what}: no trial finished ({r['failed']} failed)"
    )
    for note in r["run_notes"] + r["device_notes"]:
        text += f"\n  note: {note}"
    return text


if __name__ == "__main__":
    sys.exit(main())
