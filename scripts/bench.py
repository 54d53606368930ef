"""Benchmark hpo against the peers of issue 5, side by side, in one invocation.

Same base model (hpo's tiny GPT-2), same data (the fine-tuning half of ``pydoc_data.topics`` as
text, packed by hpo into 128-token blocks, the peers fed exactly those blocks), same search space,
ASHA settings, trial count and concurrency (2 trials at a time, 1 CPU each). Each system runs in
its own fresh process and temp folder; a thread here samples its disk use and driver memory.

    scripts/bench --quick --out bench-quick.json    # 12 trials, one seed (< 20 min on 2 cores)
    scripts/bench                                   # 20 trials x 3 seeds: mean and spread of losses
    scripts/bench --with-hf-optuna                  # also the sequential HF + Optuna peer
    scripts/bench --profile                         # where hpo's time goes, per trial
    scripts/bench --trials 3 --max-epochs 1 --systems hpo,tune_optuna --no-micro   # a smoke run
    scripts/bench --workload smollm2 --model DIR    # the realistic one (scripts/bench_smollm2.py)
    scripts/bench --search [OPTIONS]                # search strategies replayed (scripts/bench_search.py)
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

SCRIPTS = Path(__file__).resolve().parent
ROOT = SCRIPTS.parent
sys.path.insert(0, str(SCRIPTS))

from bench_peers import report  # noqa: E402
from bench_peers.monitor import Monitor  # noqa: E402
from bench_peers.settings import Settings  # noqa: E402

PEERS = ("hf_ray", "tune_optuna")
VARIANTS = ("hpo_fp32",)  # hpo with training.precision: fp32 (what the peers compute in)
VALIDATION_SHARE = 0.1  # of the fine-tuning text, by characters, held out as whole topics
SYSTEM_TIMEOUT_S = 1800


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="12 trials, one seed (fits in 20 minutes)")
    p.add_argument("--out", default="bench-results.json", help="JSON results (default %(default)s)")
    p.add_argument("--trials", type=int, help="trials per system (default 12 quick, 20 full)")
    p.add_argument("--seeds", type=int, help="seeds 0..N-1 (default 1 quick, 3 full)")
    p.add_argument("--with-hf-optuna", action="store_true", help="also run the sequential HF + Optuna peer")
    p.add_argument("--systems", help="comma list to run instead of hpo + the peers (e.g. hpo,tune_optuna)")
    p.add_argument("--no-micro", action="store_true", help="skip `hpo --help`, `study show`, throughput")
    p.add_argument("--micro-only", action="store_true", help="only `hpo --help`, `study show`, throughput")
    p.add_argument("--profile", action="store_true", help="profile hpo alone (timing probes), then stop")
    p.add_argument("--max-epochs", type=int, default=3, help="top of the epochs range (smoke runs: 1)")
    p.add_argument("--keep", action="store_true", help="keep the temp folders (printed at the end)")
    p.add_argument(
        "--workload",
        choices=("tiny", "smollm2"),
        default="tiny",
        help="tiny: hpo:tiny-gpt2 on pydoc topics (default); smollm2: SmolLM2-135M on support pairs",
    )
    p.add_argument("--model", help="smollm2: the model folder (default: hpo:smollm2-135m where hpo has it)")
    p.add_argument("--examples", type=int, help="smollm2: support pairs used (default 400)")
    p.add_argument("--repeat", type=int, default=1, help="smollm2: whole runs; --out gets their medians")
    return p.parse_args(argv)


# ---------------------------------------------------------------- data, model, spec


def write_topics(folder: Path) -> tuple[Path, Path]:
    """The fine-tuning half of pydoc_data.topics (alternate sorted keys, as the peers split it), one
    topic per line; whole topics, seeded, are held out for validation up to 10% of the text."""
    import pydoc_data.topics as topics

    keys = sorted(topics.topics)[1::2]
    texts = [" ".join(topics.topics[k].split("\n")).strip() for k in keys]
    order = list(range(len(texts)))
    random.Random(0).shuffle(order)
    total, held, val = sum(map(len, texts)), 0, set()
    for i in order:
        if held >= VALIDATION_SHARE * total:
            break
        val.add(i)
        held += len(texts[i])
    train_file, val_file = folder / "train.txt", folder / "val.txt"
    train_file.write_text("\n".join(t for i, t in enumerate(texts) if i not in val) + "\n")
    val_file.write_text("\n".join(t for i, t in enumerate(texts) if i in val) + "\n")
    return train_file, val_file


def write_spec(folder: Path, s: Settings, model_path: str, train: Path, val: Path) -> Path:
    spec = {
        "name": "bench",
        "model": model_path,
        "data": {"path": str(train), "validation_path": str(val), "format": "text", "block_size": s.block},
        "space": {
            "learning_rate": {"type": "float", "low": s.lr[0], "high": s.lr[1], "log": True},
            "batch_size": {"type": "categorical", "choices": list(s.batch_sizes)},
            "epochs": {"type": "int", "low": s.epochs[0], "high": s.epochs[1]},
            "dropout": {"type": "float", "low": s.dropout[0], "high": s.dropout[1]},
            "weight_decay": {"type": "float", "low": s.weight_decay[0], "high": s.weight_decay[1]},
        },
        "schedule": {"type": "asha", "grace_period": s.grace_epochs, "reduction_factor": s.reduction_factor},
        "training": {"eval_every": s.eval_every, "max_micro_batch": s.eval_batch},
        "resources": {"cpus_per_trial": s.cpus_per_trial, "concurrency": s.concurrency},
        "sampler": "tpe",
        "seed": s.seed,
    }
    path = folder / f"bench-seed{s.seed}.yaml"
    header = "# written by scripts/bench.py: the study hpo runs in the benchmark\n"
    path.write_text(header + yaml.safe_dump(spec, sort_keys=False))
    return path


def prepare(folder: Path, s: Settings, model_path: str, train: Path, val: Path) -> tuple[Path, str]:
    """The spec for this seed and hpo's prepared blocks (the cache ``hpo run`` will find)."""
    spec_path = write_spec(folder, s, model_path, train, val)
    return spec_path, prepare_spec(spec_path, s, model_path)


def prepare_spec(spec_path: Path, s: Settings, model_path: str) -> str:
    """hpo's prepared blocks for a spec (the cache ``hpo run`` will find); fills in ``s``'s counts."""
    from hpo import basemodel, data, spec

    loaded = spec.load(spec_path)
    prepared = data.prepare(loaded.data, model_path, loaded.seed, basemodel.cache_dir())
    s.n_train, s.n_val, s.train_tokens = prepared.train_blocks, prepared.val_blocks, prepared.train_tokens
    s.derive_peer_units()
    return prepared.path


def snapshot_hpo(root: Path) -> dict[str, Any]:
    """Copy ``hpo/`` as it is now and put the copy first on every process's path (this one too).

    The checkout is shared and edited while a benchmark runs for many minutes; every system and
    every Ray worker must import the same hpo. Returns what was measured: commit and dirty files.
    """
    snap = root / "code"
    shutil.copytree(ROOT / "hpo", snap / "hpo", ignore=shutil.ignore_patterns("__pycache__"))
    sys.path.insert(0, str(snap))
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(snap), os.environ.get("PYTHONPATH")]))
    git = ["git", "-C", str(ROOT)]
    head = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run([*git, "status", "--porcelain", "hpo"], capture_output=True, text=True)
    return {"commit": head, "hpo_uncommitted": [line[3:] for line in dirty.stdout.splitlines()]}


# ---------------------------------------------------------------- one system, one process


def run_system(name: str, cfg: dict[str, Any], root: Path, extra_env: dict[str, str] | None = None) -> dict:
    """Run ``python -m bench_peers NAME`` in a fresh process with a sampling monitor here."""
    work = Path(cfg["work_dir"])
    work.mkdir(parents=True)
    cfg_path, cfg["result_path"] = work / "config.json", str(work / "result.json")
    cfg_path.write_text(json.dumps(cfg))
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", **(extra_env or {}))
    env["PYTHONPATH"] = os.pathsep.join(
        filter(None, [env.pop("PYTHONPATH_FIRST", ""), os.environ.get("PYTHONPATH"), str(SCRIPTS)])
    )
    log_path = root / "logs" / f"{work.name}.log"
    log_path.parent.mkdir(exist_ok=True)
    t_spawn = time.time()
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "bench_peers", name, str(cfg_path)],
            cwd=work,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        monitor = Monitor(proc.pid, str(work))
        monitor.start()
        try:
            rc = proc.wait(timeout=SYSTEM_TIMEOUT_S)
        except (subprocess.TimeoutExpired, KeyboardInterrupt):
            _kill_tree(proc)
            raise
        finally:
            monitor.stop()
    if rc != 0 or not os.path.exists(cfg["result_path"]):
        tail = log_path.read_text(errors="replace").splitlines()[-40:]
        raise RuntimeError(f"{name} failed (exit {rc}); log {log_path}:\n" + "\n".join(tail))
    result = json.loads(Path(cfg["result_path"]).read_text())
    result.update(monitor.figures())
    result["process_wall_s"] = round(result.get("t_search_end", time.time()) - t_spawn, 2)
    result["import_s"] = round((result.get("t_imported") or t_spawn) - t_spawn, 2)
    return result


def _kill_tree(proc: subprocess.Popen) -> None:
    """Stop the system we started: its process group (Ray's processes included)."""
    import psutil

    try:
        children = psutil.Process(proc.pid).children(recursive=True)
    except psutil.Error:
        children = []
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    for c in children:
        with contextlib.suppress(psutil.Error):
            c.kill()


# ---------------------------------------------------------------- micro: --help and throughput


def time_help(repeats: int = 5) -> dict[str, Any]:
    """Wall seconds of ``hpo --help`` (median of ``repeats``, after one warm-up)."""
    hpo = str(Path(sys.executable).parent / "hpo")
    times = []
    for i in range(repeats + 1):
        t0 = time.perf_counter()
        subprocess.run([hpo, "--help"], check=True, capture_output=True)
        if i:
            times.append(time.perf_counter() - t0)
    return {"help_median_s": round(statistics.median(times), 3), "help_runs_s": [round(t, 3) for t in times]}


def time_study_show(root: Path, trials: int = 2000, repeats: int = 3) -> dict[str, Any]:
    """Wall seconds of ``hpo study show`` (and ``--trials``) on a finished study of ``trials``
    synthetic trials in SQLite (``tests/synthetic.py``: ASHA-shaped curves, user attributes as hpo
    writes them): the first call, then the median of ``repeats``."""
    sys.path.insert(0, str(SCRIPTS.parent))
    from tests.synthetic import make_study

    url = f"sqlite:///{root / 'show.db'}"
    make_study(url, trials)
    hpo = str(Path(sys.executable).parent / "hpo")
    out: dict[str, Any] = {"study_show_n_trials": trials}
    for key, extra in (("study_show", []), ("study_show_trials", ["--trials"])):
        times = []
        for _ in range(repeats + 1):
            t0 = time.perf_counter()
            command = [hpo, "study", "show", "synth", "--storage", url, *extra]
            subprocess.run(command, check=True, capture_output=True)
            times.append(time.perf_counter() - t0)
        out[f"{key}_first_s"] = round(times[0], 3)
        out[f"{key}_median_s"] = round(statistics.median(times[1:]), 3)
    return out


MICRO = ("micro_plain", "micro_hpo", "micro_plain_bf16", "micro_hpo_fp32")


def micro(base: dict[str, Any], root: Path, repeats: int) -> dict[str, Any]:
    """A plain HF Trainer fine-tune vs hpo's trial loop, same configuration, each in fp32 and in
    bf16 autocast, alternating. The target compares the same precision: hpo's default (bf16 on a
    CPU with AMX or AVX512-BF16) with the Trainer's ``bf16=True`` there, fp32 with fp32 elsewhere."""
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in MICRO}
    for i in range(repeats):
        for name in MICRO if i % 2 == 0 else MICRO[::-1]:
            cfg = dict(base, work_dir=str(root / f"{name}-{i}"), threads=1)
            runs[name].append(run_system(name, cfg, root))
    rate = {name: statistics.median(r["tokens_per_s"] for r in v) for name, v in runs.items()}
    precision = runs["micro_hpo"][0]["precision"]  # what hpo's auto chose on this machine
    same = rate["micro_plain_bf16" if precision == "bf16" else "micro_plain"]
    keep = ("tokens_per_s", "steps_s", "tokens", "eval_loss", "torch_threads", "precision")
    return {
        "config": runs["micro_plain"][0]["config"],
        "hpo_precision": precision,
        "plain_tokens_per_s": rate["micro_plain"],
        "plain_bf16_tokens_per_s": rate["micro_plain_bf16"],
        "hpo_trial_tokens_per_s": rate["micro_hpo"],
        "hpo_trial_fp32_tokens_per_s": rate["micro_hpo_fp32"],
        "throughput_ratio": round(rate["micro_hpo"] / same, 3),  # same precision
        "throughput_ratio_fp32": round(rate["micro_hpo_fp32"] / rate["micro_plain"], 3),
        "throughput_ratio_vs_plain_default": round(rate["micro_hpo"] / rate["micro_plain"], 3),
        "runs": {k: [{f: r.get(f) for f in keep} for r in v] for k, v in runs.items()},
        **time_help(),
        **time_study_show(root),
    }


# ---------------------------------------------------------------- the whole benchmark


def plan(args: argparse.Namespace) -> tuple[list[str], int, int]:
    trials = args.trials or (12 if args.quick else 20)
    seeds = args.seeds or (1 if args.quick else 3)
    systems = ["hpo", *PEERS, *VARIANTS] + (["hf_optuna"] if args.with_hf_optuna else [])
    if args.systems:
        systems = [x.strip() for x in args.systems.split(",") if x.strip()]
        unknown = sorted(set(systems) - set(report.SYSTEMS))
        if unknown:
            raise SystemExit(f"--systems: unknown {unknown}; choose from {', '.join(report.SYSTEMS)}")
    if args.micro_only:
        systems, seeds = [], 1
    return systems, trials, seeds


def meta(argv: list[str]) -> dict[str, Any]:
    from importlib.metadata import version

    import psutil

    return {
        "command": "scripts/bench " + " ".join(argv),
        "machine": f"{os.cpu_count()} cores, {psutil.virtual_memory().total / 2**30:.0f} GiB, {_cpu()}",
        "python": platform.python_version(),
        "versions": {p: version(p) for p in ("torch", "transformers", "ray", "optuna", "accelerate")},
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        "loadavg_before": os.getloadavg(),
    }


def _cpu() -> str:
    """The CPU model and its bf16 units (``AMD EPYC, bf16: avx512_bf16``): which precision
    ``auto`` picks, and so which figures compare."""
    from hpo import placement

    return f"{placement.cpu_model()}, bf16: {'/'.join(placement.bf16_units()) or 'none'}"


def main(argv: list[str]) -> int:
    if argv[:1] == ["--search"]:  # replayed search strategies over a learning-curve table
        import bench_search

        return bench_search.main(argv[1:])
    args = parse_args(argv)
    if args.workload == "smollm2":
        import bench_smollm2

        return bench_smollm2.main(args, argv)
    systems, trials, seeds = plan(args)
    info = meta(argv)
    print(f"bench: {', '.join(systems)}; {trials} trials x {seeds} seed(s); load {info['loadavg_before']}")
    root = Path(tempfile.mkdtemp(prefix="hpo-bench-"))
    info.update(snapshot_hpo(root))
    from hpo import basemodel

    model_path = str(basemodel.tiny_gpt2())
    train, val = write_topics(root)
    try:
        if args.profile:
            s = Settings(trials=trials, seed=0, epochs=(1, args.max_epochs))
            spec_path, data_path = prepare(root, s, model_path, train, val)
            base = {"settings": json.loads(s.to_json()), "data_path": data_path, "model_path": model_path}
            return profile(base, spec_path, root, args)
        results, base = run_seeds(systems, trials, seeds, args, root, model_path, (train, val))
        micro_figures = None if args.no_micro else micro(base, root, 2 if args.quick else 3)
    except BaseException:
        print(f"bench: stopped; files kept in {root}", file=sys.stderr)
        raise
    out = assemble(results, micro_figures, base["settings"], info, train, val)
    Path(args.out).write_text(json.dumps(out, indent=1, default=str) + "\n")
    print_tables(out)
    print(f"bench: wrote {args.out}")
    if args.keep:
        print(f"bench: files kept in {root}")
    else:
        shutil.rmtree(root, ignore_errors=True)
    return 0


def run_seeds(systems, trials, seeds, args, root: Path, model_path: str, data: tuple[Path, Path]):
    """Every system for every seed (the order rotates per seed); the figures by system."""
    results: dict[str, list[dict[str, Any]]] = {k: [] for k in systems}
    base: dict[str, Any] = {}
    for seed in range(seeds):
        s = Settings(trials=trials, seed=seed, epochs=(1, args.max_epochs))
        spec_path, data_path = prepare(root, s, model_path, *data)
        base = {"settings": json.loads(s.to_json()), "data_path": data_path, "model_path": model_path}
        shift = seed % max(1, len(systems))
        for name in systems[shift:] + systems[:shift]:
            cfg = dict(base, spec_path=str(spec_path), work_dir=str(root / f"{name}-s{seed}"))
            print(f"  seed {seed}: {name} ...", flush=True)
            raw = run_system(name, cfg, root)
            results[name].append(report.derive(raw, s.concurrency))
            print(f"    {_brief(results[name][-1])}", flush=True)
            if not args.keep:
                shutil.rmtree(cfg["work_dir"], ignore_errors=True)
    return results, base


def assemble(results, micro_figures, settings_used, info, train: Path, val: Path) -> dict[str, Any]:
    systems = {name: report.aggregate(runs) for name, runs in results.items() if runs}
    info["loadavg_after"] = os.getloadavg()
    info["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
    info["data"] = {
        "train_topics": len(train.read_text().splitlines()),
        "validation_topics": len(val.read_text().splitlines()),
    }
    return {
        **systems,
        "ratios": report.ratios(systems, micro_figures, results),
        "micro": micro_figures,
        "settings": settings_used,
        "unit_mapping": UNIT_MAPPING,
        "meta": info,
        **({"per_seed": results} if any(len(v) > 1 for v in results.values()) else {}),
    }


UNIT_MAPPING = {
    "hpo": "ASHA time_attr = epoch (fractional), grace_epochs; evaluations at the ASHA rungs, whole epochs "
    "and the end of each trial's budget (hpo's default eval_at: rungs), on the eval_every grid",
    "hf_ray, tune_optuna": "ASHA time_attr = training_iteration (evaluations so far); evaluation every "
    "eval_steps optimizer steps = eval_every epochs at the reference batch; grace_iters evaluations = "
    "grace_epochs at the reference batch; max_t_iters = max epochs at the smallest batch",
    "hf_optuna": "SuccessiveHalvingPruner, step = optimizer step; min_resource = grace_iters x eval_steps",
}


def _brief(r: dict[str, Any]) -> str:
    parts = ""
    if r.get("overhead_start_per_trial_s") is not None:
        parts = f" (start {r['overhead_start_per_trial_s']:.2f}, tail {r['overhead_tail_per_trial_s']:.2f})"
    return (
        f"wall {r['wall_s']:.1f}s, {r['trials']} trials ({r['pruned']} pruned), overhead "
        f"{r['overhead_per_trial_s']:.2f}s/trial{parts}, efficiency {r['efficiency']}, disk "
        f"{r['disk_peak_mb']:.1f} MB, best {_cell(r['best_eval_loss'])}, "
        f"trial CPU share {r['trial_cpu_share']}"
    )


def _cell(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def print_tables(out: dict[str, Any]) -> None:
    systems = {k: v for k, v in out.items() if k in report.SYSTEMS}
    print()
    print(report.systems_table(systems))
    print()
    print(report.ratios_table(out["ratios"]))
    if warning := report.contention(systems):
        print(f"\n{warning}")
    if out.get("micro"):
        m = out["micro"]
        print(
            f"\nthroughput (tok/s): plain Trainer {m['plain_tokens_per_s']:.0f} fp32, "
            f"{m['plain_bf16_tokens_per_s']:.0f} bf16; "
            f"hpo trial {m['hpo_trial_fp32_tokens_per_s']:.0f} fp32, "
            f"{m['hpo_trial_tokens_per_s']:.0f} {m['hpo_precision']} (its default here); "
            f"hpo --help {m['help_median_s']:.3f} s; hpo study show of {m['study_show_n_trials']:,} "
            f"trials {m['study_show_median_s']:.2f} s (first call {m['study_show_first_s']:.2f} s, "
            f"with --trials {m['study_show_trials_median_s']:.2f} s)"
        )


def profile(base: dict[str, Any], spec_path: Path, root: Path, args: argparse.Namespace) -> int:
    """hpo alone with timing probes in every process; prints and writes the breakdown."""
    probe_file = root / "probe.jsonl"
    cfg = dict(base, spec_path=str(spec_path), work_dir=str(root / "profile"))
    env = {"HPO_BENCH_PROBE": str(probe_file), "PYTHONPATH_FIRST": str(SCRIPTS / "bench_peers" / "probe")}
    raw = run_system("profile", cfg, root, env)
    prof = raw.pop("profile")
    figures = report.derive(raw, base["settings"]["concurrency"])
    summary = {k: v for k, v in prof.items() if k != "per_trial"}
    headline = {k: figures[k] for k in ("wall_s", "trials", "overhead_per_trial_s", "efficiency")}
    print(json.dumps({"hpo": headline}, indent=1))
    print(json.dumps(summary, indent=1))
    Path(args.out).write_text(json.dumps({"hpo": figures, "profile": prof}, indent=1, default=str) + "\n")
    print(f"bench: wrote {args.out}; probe lines in {probe_file}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
