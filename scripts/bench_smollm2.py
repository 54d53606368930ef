"""The realistic benchmark of issue 17 (``scripts/bench --workload smollm2``): SmolLM2-135M-Instruct
fine-tuned on the shipped support pairs, hpo against HF ``hyperparameter_search(backend="ray")`` +
ASHA and Ray Tune ``Tuner`` + ``OptunaSearch`` + ASHA, plus a plain HF ``Trainer`` of one fixed
configuration (two copies side by side, as the studies run two trials at once): the reference for
tokens/s and memory per trial.

Every system gets the same model folder, the same packed 256-token blocks (hpo's arrays; the peers
get them as a ``datasets.Dataset``), the same space (learning rate 1e-5..5e-4 log, batch 8 or 16,
weight decay 0..0.1; one epoch, dropout 0), the same ASHA (grace 0.25 epoch, rf 2), 2 trials at a
time x 1 CPU, fp32 master weights with bf16 autocast where the CPU multiplies bf16 (hpo's
``precision: auto``; the HF runs ``bf16=True`` then; fp32 for all on other CPUs), micro-batch 8
(hpo ``max_micro_batch: 8``; the peers per-device batch 8 with gradient accumulation for batch 16).

    scripts/bench --workload smollm2 --model DIR --out docs/bench/smollm2.json    # ~45 min
    scripts/bench --workload smollm2 --model DIR --trials 2 --examples 200 --out smoke.json
    scripts/bench --workload smollm2 --model DIR --trials 8 --examples 200 --repeat 3 --out r.json  # medians
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import yaml
from bench import ROOT, SCRIPTS, meta, prepare_spec, run_system, snapshot_hpo
from bench_peers import smol_report
from bench_peers.settings import Settings

MODEL_NAME = "hpo:smollm2-135m"
DATA = ROOT / "studies" / "data" / "support.jsonl"  # prompt/completion pairs of a support desk
DEFAULT_EXAMPLES = 400  # pairs of DATA: ~88 blocks of 256, a full trial ~3.5 min at ~55 loss tokens/s
#: hpo's micro-batch. When ``max_micro_batch: auto`` is on main, set MAX_MICRO_BATCH = "auto" (the
#: peers then keep MICRO_BATCH, the largest that fits two SmolLM2 trials in this machine's memory).
MICRO_BATCH = 8
MAX_MICRO_BATCH: int | str = MICRO_BATCH
KEEP_TOP_K = 3
#: The plain Trainer's fixed configuration (a mid-range point of the space, batch = the micro-batch).
FIXED = {"learning_rate": 1e-4, "batch_size": 8, "epochs": 1, "dropout": 0.0, "weight_decay": 0.01}
# the time a trial spends keeping its best (copies held in memory and checkpoint writes), and the writes
PROBE_ONLY = "hpo.bestweights:BestWeights.after_eval,hpo.bestweights:save_checkpoint"
#: hf_ray keeps a model + optimizer checkpoint (~1.6 GB) per trial in Ray's storage and another in
#: the Trainer's output folder: ~26 GB for 8 trials
MIN_FREE_HF_RAY = 30e9  # hpo reports no checkpoint seconds: time them with a probe


def settings(trials: int, examples: int) -> Settings:
    from hpo import trialsetup

    return Settings(
        trials=trials,
        workload="smollm2",
        lr=(1e-5, 5e-4),
        batch_sizes=(8, 16),
        epochs=(1, 1),
        dropout=(0.0, 0.0),
        weight_decay=(0.0, 0.1),
        eval_every=0.25,
        grace_epochs=0.25,
        reduction_factor=2.0,
        eval_batch=MICRO_BATCH,
        block=256,
        micro_batch=MICRO_BATCH,
        peer_eval_batch=MICRO_BATCH,
        bf16=trialsetup.cpu_bf16(),  # what hpo's precision: auto picks here: every system computes in it
        warmup_ratio=0.05,
        keep_checkpoints=1,
    )


# ---------------------------------------------------------------- model and data


def resolve_model(path: str | None) -> str:
    """``--model`` if given, else ``hpo:smollm2-135m`` through hpo when this hpo knows the name."""
    if path:
        if not (Path(path) / "config.json").is_file():
            raise SystemExit(f"bench: --model {path}: no config.json there; give a from_pretrained folder")
        return str(Path(path).resolve())
    from hpo import basemodel

    resolved = basemodel.resolve(MODEL_NAME)
    if resolved == MODEL_NAME or not Path(resolved).is_dir():
        raise SystemExit(
            f"bench: this hpo does not provide {MODEL_NAME}; pass --model DIR (a SmolLM2 folder)"
        )
    return resolved


def fp32_source(model_path: str, root: Path) -> tuple[str, str]:
    """The model folder every system loads, and a note. Every system must keep fp32 master
    weights: the HF runs load with ``dtype=torch.float32``; when hpo's own loader keeps a
    bf16-saved model in bf16 (before issue 17 item 2), every system gets an fp32 copy instead."""
    probe = (
        "import sys, torch; from hpo.checkpoint import load_model; "
        "print(next(load_model(sys.argv[1], 0.0).parameters()).dtype)"
    )
    found = subprocess.run([sys.executable, "-c", probe, model_path], capture_output=True, text=True)
    dtype = found.stdout.strip().splitlines()[-1] if found.stdout.strip() else f"error: {found.stderr[-300:]}"
    if dtype == "torch.float32":
        return model_path, "hpo loads the model in fp32 itself; every system loads the folder as given"
    copy = root / "model-fp32"
    save = (
        "import sys, shutil, pathlib, torch; from transformers import AutoModelForCausalLM as M; "
        "src, out = map(pathlib.Path, sys.argv[1:]); "
        "M.from_pretrained(src, dtype=torch.float32).save_pretrained(out); "
        "[shutil.copy2(f, out / f.name) for f in src.iterdir() "
        "if f.name.startswith(('tokenizer', 'chat_', 'special'))]"
    )
    subprocess.run([sys.executable, "-c", save, model_path, str(copy)], check=True)
    return str(
        copy
    ), f"hpo's loader gave {dtype} weights; every system trains from an fp32 copy of the folder"


def write_data(root: Path, examples: int) -> Path:
    """The first ``examples`` rows of the shipped support pairs (the file is in random order)."""
    rows = DATA.read_text().splitlines()[:examples]
    out = root / "support.jsonl"
    out.write_text("\n".join(rows) + "\n")
    return out


def write_spec(folder: Path, s: Settings, model_path: str, data: Path) -> Path:
    spec = {
        "name": "bench",
        "model": model_path,
        "data": {"format": "jsonl", "path": str(data), "block_size": s.block, "validation_fraction": 0.1},
        "space": {
            "learning_rate": {"type": "float", "low": s.lr[0], "high": s.lr[1], "log": True},
            "batch_size": {"type": "categorical", "choices": list(s.batch_sizes)},
            "epochs": s.epochs[1],
            "dropout": s.dropout[1],
            "weight_decay": {"type": "float", "low": s.weight_decay[0], "high": s.weight_decay[1]},
        },
        "schedule": {"type": "asha", "grace_period": s.grace_epochs, "reduction_factor": s.reduction_factor},
        "training": {
            "eval_every": s.eval_every,
            "max_micro_batch": MAX_MICRO_BATCH,
            "warmup_ratio": s.warmup_ratio,
            "precision": "auto",
        },
        "resources": {"cpus_per_trial": s.cpus_per_trial, "concurrency": s.concurrency},
        "keep_top_k": KEEP_TOP_K,
        "sampler": "tpe",
        "seed": s.seed,
    }
    path = folder / "bench-smollm2.yaml"
    header = "# written by scripts/bench_smollm2.py: the study hpo runs in the realistic benchmark\n"
    path.write_text(header + yaml.safe_dump(spec, sort_keys=False))
    return path


# ---------------------------------------------------------------- the runs


def plain_reference(base: dict[str, Any], root: Path, copies: int) -> list[dict[str, Any]]:
    """``copies`` plain HF Trainer fine-tunes of FIXED at once, one thread each, in the bench's
    precision (bf16 autocast or fp32)."""
    name = "micro_plain_bf16" if base["settings"]["bf16"] else "micro_plain"

    def one(i: int) -> dict[str, Any]:
        cfg = dict(base, work_dir=str(root / f"plain-{i}"), threads=1, fixed=FIXED)
        return run_system(name, cfg, root)

    with ThreadPoolExecutor(copies) as pool:
        return list(pool.map(one, range(copies)))


def run_search(name: str, base: dict[str, Any], spec_path: Path, root: Path) -> dict[str, Any]:
    cfg = dict(base, spec_path=str(spec_path), work_dir=str(root / name))
    env = None
    if name == "hpo":
        cfg["probe_path"] = str(root / "hpo-probe.jsonl")
        env = {
            "HPO_BENCH_PROBE": cfg["probe_path"],
            "HPO_BENCH_PROBE_ONLY": PROBE_ONLY,
            "PYTHONPATH_FIRST": str(SCRIPTS / "bench_peers" / "probe"),
        }
    return run_system(name, cfg, root, env)


def main(args: argparse.Namespace, argv: list[str]) -> int:
    """One run of the bench, or with ``--repeat N`` N runs (each its own JSON beside ``--out``, named
    ``<out>-r1.json`` ...) and ``--out`` their medians: one run on this shared 2-core machine moves
    each ratio by about a third (which trials ASHA stops, what TPE samples, the machine's load)."""
    repeat = args.repeat
    if repeat <= 1:
        return one_run(args, argv, args.out)
    out = Path(args.out)
    paths = [str(out.with_name(f"{out.stem}-r{i}{out.suffix}")) for i in range(1, repeat + 1)]
    for i, path in enumerate(paths, 1):
        print(f"bench smollm2: run {i} of {repeat} -> {path}", flush=True)
        one_run(args, argv, path)
    summary = smol_report.medians([json.loads(Path(p).read_text()) for p in paths], paths)
    out.write_text(json.dumps(summary, indent=1, default=str) + "\n")
    print(f"\nmedians of {repeat} runs\n{smol_report.ratios_table(summary['ratios'])}")
    print(f"bench: wrote {out}")
    return 0


def one_run(args: argparse.Namespace, argv: list[str], out_path: str) -> int:
    systems = [x.strip() for x in (args.systems or "hpo,hf_ray,tune_optuna,plain").split(",") if x.strip()]
    unknown = sorted(set(systems) - {*smol_report.SYSTEMS, "plain"})
    if unknown:
        raise SystemExit(f"bench: --systems: unknown {unknown}; choose from hpo, hf_ray, tune_optuna, plain")
    s = settings(args.trials or 8, args.examples or DEFAULT_EXAMPLES)
    info = meta(argv)
    root = Path(tempfile.mkdtemp(prefix="hpo-bench-smol-"))
    info.update(snapshot_hpo(root))
    model_path, model_note = fp32_source(resolve_model(args.model), root)
    spec_path = write_spec(root, s, model_path, write_data(root, args.examples or DEFAULT_EXAMPLES))
    data_path = prepare_spec(spec_path, s, model_path)
    base = {"settings": json.loads(s.to_json()), "data_path": data_path, "model_path": model_path}
    print(f"bench smollm2: {', '.join(systems)}; {s.trials} trials; {s.n_train} train / {s.n_val} validation")
    print(f"  blocks of {s.block}; load {info['loadavg_before']}; {model_note}", flush=True)
    raw: dict[str, Any] = {}
    try:
        for name in systems:
            if name == "hf_ray" and shutil.disk_usage(root).free < MIN_FREE_HF_RAY:
                print(f"  hf_ray skipped: under {MIN_FREE_HF_RAY / 1e9:.0f} GB free in {root}", flush=True)
                continue
            t0 = time.time()
            print(f"  {name} ...", flush=True)
            raw[name] = (
                plain_reference(base, root, s.concurrency)
                if name == "plain"
                else run_search(name, base, spec_path, root)
            )
            print(f"    done in {time.time() - t0:.0f} s", flush=True)
            if not args.keep:
                shutil.rmtree(root / name, ignore_errors=True)
    except BaseException:
        print(f"bench: stopped; files kept in {root}", file=sys.stderr)
        raise
    out = assemble(raw, s, info, model_path, model_note, spec_path)
    Path(out_path).write_text(json.dumps(out, indent=1, default=str) + "\n")
    print(f"\n{smol_report.table(out['systems'], out['reference'])}")
    print(f"\n{smol_report.ratios_table(out['ratios'])}")
    print(f"bench: wrote {out_path}")
    if not args.keep:
        shutil.rmtree(root, ignore_errors=True)
    return 0


def assemble(raw, s: Settings, info, model_path: str, model_note: str, spec_path: Path) -> dict[str, Any]:
    systems = {k: smol_report.system(v) for k, v in raw.items() if k != "plain"}
    ref = smol_report.reference(raw["plain"]) if "plain" in raw else None
    info.update(loadavg_after=os.getloadavg(), finished=time.strftime("%Y-%m-%d %H:%M:%S"))
    return {
        "workload": "smollm2",
        "systems": systems,
        "reference": ref,
        "ratios": smol_report.ratios(systems, ref, KEEP_TOP_K, s.concurrency),
        "settings": json.loads(s.to_json()),
        "model": {"path": model_path, "note": model_note},
        "hpo_spec": yaml.safe_load(spec_path.read_text()),
        "precision": PRECISION_NOTE,
        "notes": NOTES,
        "meta": info,
        "raw": raw,
    }


NOTES = {
    "eval_loss": "hpo: token-weighted mean over the validation blocks (micro-batches of 8); HF runs: "
    "Trainer.evaluate, the mean of per-batch losses over batches of 8 blocks",
    "units": "hpo: ASHA in epochs (grace 0.25, rf 2, max 1), evaluations at its rungs (0.25, 0.5, 1); "
    "peers: ASHA in evaluations, one every eval_steps optimizer steps (0.25 epoch at batch 16)",
    "checkpoints": "hpo: the trial's best weights (safetensors), held in memory at each improvement and "
    "written once when the trial ends (training.save_best: auto), none for a trial ASHA stops; keep_top_k "
    "trials kept; hf_ray: HF's Ray report saves model + optimizer for Ray at each evaluation, and the "
    "Trainer its own, 1 kept per trial in each place (save_total_limit=1, CheckpointConfig(num_to_keep=1)); "
    "tune_optuna: model-only save_pretrained at each evaluation, 1 kept per trial",
    "memory": "peak RSS of each trial process with its children, sampled from /proc every second: Ray "
    "workers (a peer's trial) or hpo's forked trial processes; RSS counts pages shared with the "
    "warm process (hpo) once per process",
    "tokens_per_s": "loss-carrying tokens per second inside optimizer steps, per trial",
    "time_shares": "of the summed trial time (hpo: trial_s from the trial's start to its last "
    "evaluation; peers: on_train_begin to the trial's last step, evaluation or save)",
    "load": "a shared 2-core machine: see meta.loadavg_before/after and each system's load1_mean",
}
PRECISION_NOTE = (
    "every system keeps fp32 weights and optimizer state and computes under bf16 autocast on a CPU "
    "with AMX or AVX512-BF16, in fp32 on other CPUs (settings.bf16 says which): hpo by its "
    "precision: auto (the trials' 'precision' attribute says what it chose), the HF Trainer runs by "
    "bf16=True (torch.autocast on the CPU) or not, the models loaded with dtype=torch.float32"
)
