"""Check hpo's trial loop on a CUDA GPU with what a bare GPU machine has: no Ray, no Optuna.

Needs torch, transformers, numpy, tokenizers, safetensors, pydantic and pyyaml (``scripts/gpu_smoke``
says which wheels to carry to a machine without a package registry). On a GPU it builds a
randomly initialised Llama of SmolLM2-135M's shape (30 layers, width 576, vocabulary 49,152; saved
in bf16 as Hub models are) with the tiny model's tokenizer, prepares the shipped support data, and
checks, each on its own (one failing check does not stop the others):

1. ``fused_head``: the LM head's fused loss path (hpo/lmhead.py) accepts the model on the GPU.
2. ``trials``: five trials in a row in this process, as a reused trial process runs them: completed,
   stopped at its first report (what ASHA does), failed (``HPO_TEST_FAIL``), out of memory (a
   micro-batch of 1,024 blocks under a 16 GiB cap: must end as an out-of-memory trial error), and
   completed again. Each trial's device, precision, weight dtype, tokens/s and peak memory; after
   each, the CUDA memory still allocated and reserved, *while its error is still held* (as Ray holds
   a failed trial's error). Memory is released when what is left after trial N+1 is no more than
   what was left after trial N (the first trial leaves cuBLAS's workspace, which stays).
3. ``max_micro_batch_auto``: a trial with ``training.max_micro_batch: auto``, when this hpo has it.
4. ``forked_slot``: the warm process (hpo/warmstart.py) forks a trial process that trains on CUDA;
   then a trial there hits a real device-side assert (``HPO_TEST_FAIL=N:cuda``): it must fail as
   ``CudaError``, its process must exit, and the next trial must run in a new fork.

It prints a line per check and one JSON object (trials/hour, tokens/s, peak and released memory),
also written to ``OUTDIR/gpu_smoke.json``; it exits 1 when a check failed. Without a GPU (or with
``--cpu``) the same checks run on the tiny model on CPU in a minute or two (the out-of-memory error
and the device-side assert are then simulated by the ``HPO_TEST_FAIL`` hook).

    python3 scripts/gpu_smoke.py --out "$OUT"     # on the GPU machine: about 3-5 minutes (docs/gpu.md)
    python3 scripts/gpu_smoke.py --cpu            # anywhere
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SUPPORT = ROOT / "studies" / "data" / "support.jsonl"
MB = 1024 * 1024
OOM_CAP_GB = 16  # the out-of-memory trial runs under this cap (torch.cuda.set_per_process_memory_fraction)
OOM_BATCH = 1024  # blocks in one forward pass of the out-of-memory trial (~260k tokens)
PARAMS = {"learning_rate": 2e-4, "batch_size": 16, "epochs": 1, "dropout": 0.0, "weight_decay": 0.01}
#: SmolLM2-135M's shape (HuggingFaceTB/SmolLM2-135M-Instruct's config), randomly initialised.
SMOL_SHAPE = {
    "vocab_size": 49152,
    "hidden_size": 576,
    "intermediate_size": 1536,
    "num_hidden_layers": 30,
    "num_attention_heads": 9,
    "num_key_value_heads": 3,
    "max_position_embeddings": 2048,
    "rms_norm_eps": 1e-5,
    "rope_theta": 100000.0,
    "tie_word_embeddings": True,
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cpu", action="store_true", help="run on CPU with the tiny model, even with a GPU")
    p.add_argument("--out", type=Path, default=None, help="folder for gpu_smoke.json (default: $OUT, else .)")
    p.add_argument(
        "--model",
        choices=("smol", "tiny"),
        default=None,
        help="smol: a random SmolLM2-135M-shaped Llama (GPU default); tiny: hpo:tiny-gpt2 (CPU default)",
    )
    p.add_argument("--rows", type=int, default=None, help="support rows (default 3000 on GPU, 150 on CPU)")
    return p.parse_args(argv)


@dataclass
class Setup:
    """What every check uses: the study spec, the model and data on disk, the device."""

    spec: Any
    model_path: str
    data_path: str
    cuda: bool
    tmp: Path

    def config(self, number: int, params: dict[str, Any], spec: Any = None) -> dict[str, Any]:
        """A trial's config as the runner makes it (``runner._config_maker``; no Ray needed)."""
        from hpo import runner

        cpus = float(min(4, os.cpu_count() or 1)) if self.cuda else 1.0  # CPU: as the tests run trials
        make = runner._config_maker(
            spec or self.spec, self.model_path, self.data_path, cpus, float(self.cuda)
        )
        config = make(number, dict(params), str(self.tmp / f"trial-{number}"))
        config["placement"] = {}  # outside Ray: the first CUDA device this process sees
        return config


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing is fetched: the GPU machine has no network
    t0 = time.time()
    import torch

    cuda = torch.cuda.is_available() and not args.cpu
    out: dict[str, Any] = {"machine": _machine(torch, cuda), "checks": {}}
    print(f"gpu_smoke: {out['machine']['summary']}", flush=True)
    with tempfile.TemporaryDirectory(prefix="hpo-gpu-smoke-") as tmp:
        smol = (args.model or ("smol" if cuda else "tiny")) == "smol"
        setup = _setup(Path(tmp), cuda, args.rows or (3000 if cuda else 150), smol)
        out["model"] = {"model": "random SmolLM2-135M shape" if smol else "hpo:tiny-gpt2", "cuda": cuda}
        checks: list[tuple[str, Callable[[Setup], dict[str, Any]]]] = [
            ("fused_head", fused_head),
            ("trials", trials_in_one_process),
            ("max_micro_batch_auto", auto_micro_batch),
            ("forked_slot", forked_slot),
        ]
        for name, check in checks:
            out["checks"][name] = _run_check(name, check, setup)
    out["figures"] = figures(out["checks"])
    out["ray_imported"], out["optuna_imported"] = "ray" in sys.modules, "optuna" in sys.modules
    out["wall_s"] = round(time.time() - t0, 1)
    out["ok"] = all(c.get("ok") or c.get("skipped") for c in out["checks"].values())
    folder = args.out or Path(os.environ.get("OUT") or ".")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "gpu_smoke.json").write_text(json.dumps(out, indent=1))
    print(json.dumps(out), flush=True)
    print(f"gpu_smoke: {'all checks passed' if out['ok'] else 'FAILED'} in {out['wall_s']:.0f} s; "
          f"wrote {folder / 'gpu_smoke.json'}")  # fmt: skip
    return 0 if out["ok"] else 1


def _run_check(name: str, check: Callable[[Setup], dict[str, Any]], setup: Setup) -> dict[str, Any]:
    t0 = time.time()
    try:
        result = check(setup)
    except Exception as e:  # noqa: BLE001 - one broken check must not hide the others
        result = {"ok": False, "error": f"{type(e).__name__}: {(str(e).splitlines() or [''])[0][:300]}"}
    result["check_s"] = round(time.time() - t0, 1)
    verdict = "skipped" if result.get("skipped") else "ok" if result.get("ok") else "FAILED"
    detail = result.get("note") or result.get("error") or ""
    print(f"gpu_smoke: {name}: {verdict} ({result['check_s']:.0f} s) {detail}".rstrip(), flush=True)
    return result


# ---------------------------------------------------------------- the machine, model and data


def _machine(torch, cuda: bool) -> dict[str, Any]:
    import transformers

    info: dict[str, Any] = {
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
    }
    if cuda:
        props = torch.cuda.get_device_properties(0)
        info.update(gpu=props.name, gpu_memory_gb=round(props.total_memory / 1e9, 1))
        info["capability"] = f"{props.major}.{props.minor}"
    where = f"{info['gpu']} ({info['gpu_memory_gb']} GB, compute {info['capability']})" if cuda else "CPU"
    info["summary"] = (
        f"{where}; torch {info['torch']} (CUDA {info['cuda']}); transformers {info['transformers']}"
    )
    return info


def _setup(tmp: Path, cuda: bool, rows: int, smol: bool) -> Setup:
    from hpo import basemodel, data
    from hpo import spec as spec_mod

    model_path = str(_smol_shaped(tmp / "model")) if smol else basemodel.resolve("hpo:tiny-gpt2")
    lines = SUPPORT.read_text(encoding="utf-8").splitlines()[:rows]
    (tmp / "data.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    spec = spec_mod.parse(_spec(model_path, cuda), "gpu_smoke", base_dir=str(tmp))
    prepared = data.prepare(spec.data, model_path, spec.seed, tmp / "cache")
    return Setup(spec, model_path, prepared.path, cuda, tmp)


def _spec(model_path: str, cuda: bool, **training: Any) -> dict[str, Any]:
    return {
        "name": "gpu-smoke",
        "model": model_path,
        "data": {"path": "data.jsonl", "format": "jsonl", "validation_fraction": 0.05, "block_size": 256},
        "space": {"learning_rate": {"type": "float", "low": 1e-5, "high": 1e-3, "log": True}, "epochs": 1},
        "schedule": {"type": "asha", "grace_period": 1, "reduction_factor": 3},
        "training": {"eval_every": 0.5, **training},
        "resources": {"cpus_per_trial": min(4, os.cpu_count() or 1), "gpus_per_trial": 1 if cuda else 0},
        "seed": 0,
    }


def _smol_shaped(out: Path) -> Path:
    """A Llama of SmolLM2-135M's shape, randomly initialised, saved in bf16 (as the Hub has it),
    with the tiny model's byte-level BPE tokenizer (its 4,096 ids fit the 49,152-row embedding)."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from hpo import basemodel

    basemodel.quiet_transformers()
    tok = AutoTokenizer.from_pretrained(basemodel.resolve("hpo:tiny-gpt2"))
    ids = {
        "bos_token_id": tok.eos_token_id,
        "eos_token_id": tok.eos_token_id,
        "pad_token_id": tok.pad_token_id,
    }
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**SMOL_SHAPE, **ids)).to(torch.bfloat16)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


# ---------------------------------------------------------------- the checks


def fused_head(s: Setup) -> dict[str, Any]:
    """Whether hpo/lmhead.py's fused loss takes this model on this device (else the full logits)."""
    import torch

    from hpo import lmhead
    from hpo.checkpoint import load_model

    model = load_model(s.model_path, 0.0, torch.device("cuda" if s.cuda else "cpu"))
    fused = lmhead._split(model) is not None  # the check the trial loop makes once per model
    params = sum(p.numel() for p in model.parameters())
    dtype = str(next(model.parameters()).dtype)
    del model
    return {"ok": fused, "fused": fused, "parameters": params, "loaded_dtype": dtype}


TRIAL_KINDS = ("completed", "stopped", "failed", "out_of_memory", "completed_again")


def trials_in_one_process(s: Setup) -> dict[str, Any]:
    """Five trials in a row here, each measured while its error is still held."""
    rows = [_one_trial(s, n, kind) for n, kind in enumerate(TRIAL_KINDS)]
    result: dict[str, Any] = {"trials": rows}
    if s.cuda:
        result.update(memory_verdict([r["allocated_after_mb"] for r in rows]))
        result["reserved_verdict"] = memory_verdict([r["reserved_after_mb"] for r in rows])
    else:
        result["note"] = "CPU: memory checked by tests/test_gpu_memory.py (weak references)"
    result["ok"] = all(r["ok"] for r in rows) and result.get("released", True)
    return result


def _one_trial(s: Setup, number: int, kind: str) -> dict[str, Any]:
    import torch

    from hpo import faultinject, trial

    params = dict(PARAMS)
    if kind == "out_of_memory" and s.cuda:  # a real OOM: one huge micro-batch under a cap
        params["batch_size"] = OOM_BATCH
        total = torch.cuda.get_device_properties(0).total_memory
        torch.cuda.set_per_process_memory_fraction(min(1.0, OOM_CAP_GB * 1024**3 / total))
    elif kind in ("failed", "out_of_memory"):
        os.environ[faultinject.FAIL_ENV] = f"{number}:{'error' if kind == 'failed' else 'oom'}"
    config = s.config(number, params)
    if kind == "out_of_memory" and s.cuda:
        config["max_micro_batch"] = OOM_BATCH
    reports: list[dict[str, Any]] = []
    weights = _WeightsDtype()
    if s.cuda:
        torch.cuda.reset_peak_memory_stats()
    t0, held, last = time.perf_counter(), [], {}
    try:
        with weights:
            last = trial.run(config, _stop_at_first(reports) if kind == "stopped" else reports.append)
    except (Exception, SystemExit) as e:  # noqa: BLE001 - kept, as Ray keeps a trial's error
        held.append(e)
    finally:
        os.environ.pop(faultinject.FAIL_ENV, None)
        if s.cuda:
            torch.cuda.set_per_process_memory_fraction(1.0)
    row = _row(kind, time.perf_counter() - t0, held, reports, last, config, weights.seen)
    if s.cuda:  # measured while the error is still held
        row["peak_mb"] = round(torch.cuda.max_memory_allocated() / MB, 1)
        row["allocated_after_mb"] = round(torch.cuda.memory_allocated() / MB, 1)
        row["reserved_after_mb"] = round(torch.cuda.memory_reserved() / MB, 1)
    return row


def _row(kind, wall, held, reports, last, config, weights) -> dict[str, Any]:
    error = None
    if held:
        e = held[0]
        error = "stopped" if isinstance(e, SystemExit) else f"{type(e).__name__}: {str(e).splitlines()[0]}"
    expected = {
        "completed": error is None and bool(last.get("budget_done")),
        "completed_again": error is None and bool(last.get("budget_done")),
        "stopped": error == "stopped" and len(reports) == 1,
        "failed": error is not None and "injected failure" in error,
        "out_of_memory": error is not None and "out of memory" in error.lower(),
    }
    seen = config.get("placement", {})
    return {
        "kind": kind,
        "ok": expected[kind],
        "error": error,
        "wall_s": round(wall, 2),
        "device": seen.get("device"),
        "precision": seen.get("precision"),
        "weights_dtype": weights,
        "tokens_per_s": round(last["tokens_per_s"]) if "tokens_per_s" in last else None,
        "train_s": last.get("train_s"),
        "eval_loss": last.get("eval_loss"),
        "micro": {k: v for k, v in {**seen, **last}.items() if "micro" in k or "memory" in k},
    }


def _stop_at_first(reports: list[dict[str, Any]]) -> Callable[[dict[str, Any]], None]:
    def report(metrics: dict[str, Any]) -> None:  # what Tune's report does when ASHA stops a trial
        reports.append(metrics)
        raise SystemExit(0)

    return report


class _WeightsDtype:
    """Records the dtype of the weights of the first module that runs forward (torch's global hook)."""

    def __init__(self) -> None:
        self.seen: str | None = None

    def __enter__(self):
        import torch

        self.handle = torch.nn.modules.module.register_module_forward_pre_hook(self._hook)
        return self

    def __exit__(self, *exc) -> None:
        self.handle.remove()

    def _hook(self, module, args) -> None:
        if self.seen is None:
            p = next(module.parameters(), None)
            self.seen = str(p.dtype) if p is not None else None


def auto_micro_batch(s: Setup) -> dict[str, Any]:
    """A trial with ``max_micro_batch: auto`` (the largest micro-batch that fits), when supported."""
    from hpo import spec as spec_mod
    from hpo import trial
    from hpo.errors import SpecError

    try:
        spec = spec_mod.parse(_spec(s.model_path, s.cuda, max_micro_batch="auto"), "auto", str(s.tmp))
    except SpecError as e:
        return {"skipped": True, "note": f"not in this hpo yet: {str(e).splitlines()[0][:200]}"}
    config, reports = s.config(20, {**PARAMS, "batch_size": 64}, spec), []
    last = trial.run(config, reports.append)
    seen = config.get("placement", {})
    chosen = {k: v for k, v in {**seen, **last}.items() if "micro" in k or "memory" in k}
    return {"ok": bool(last.get("budget_done")), "chosen": chosen, "tokens_per_s": last.get("tokens_per_s")}


def forked_slot(s: Setup) -> dict[str, Any]:
    """Trials in a process forked from the warm process, on CUDA; a sticky CUDA error there."""
    from hpo import warmstart

    warm = warmstart.start(s.model_path)
    if warm is None:
        return {"ok": False, "error": "the warm process did not start"}
    log = s.tmp / "warm.log"
    try:
        result = _forked_trials(s, warm)
    finally:
        warmstart.stop(warm, keep_log=log)
    result["warm_log"] = log.read_text()[-600:] if log.is_file() else ""
    return result


def _forked_trials(s: Setup, warm) -> dict[str, Any]:
    from hpo import faultinject, warmstart

    first = warmstart.connect(warm.address)
    if first is None:  # the warm process fell back (CUDA started while importing): say why
        return {"ok": False, "error": "no forked trial process (see warm_log)"}
    config = s.config(30, PARAMS)
    last = first.run(config, lambda m: None)
    done = {
        "pid": first.pid,
        "device": config["placement"].get("device"),
        "tokens_per_s": last["tokens_per_s"],
    }
    done["precision"] = config["placement"].get("precision")
    first.close()
    os.environ[faultinject.FAIL_ENV] = "31:cuda"  # the next fork takes this process's environment
    try:
        broken = warmstart.connect(warm.address)
        assert broken is not None
        try:
            broken.run(s.config(31, PARAMS), lambda m: None)
            sticky: dict[str, Any] = {"error_class": None}
        except warmstart.TrialProcessError as e:
            sticky = {"error_class": e.error_class, "error": str(e)[:300]}
    finally:
        os.environ.pop(faultinject.FAIL_ENV, None)
    sticky["process_exited"] = _gone(broken.pid, 10.0)
    fresh = warmstart.connect(warm.address)
    assert fresh is not None
    after = fresh.run(s.config(32, PARAMS), lambda m: None)
    sticky["next_trial_new_process"] = fresh.pid != broken.pid and bool(after.get("budget_done"))
    fresh.close()
    ok = done["device"] == ("cuda" if s.cuda else "cpu") and sticky["error_class"] == "CudaError"
    ok = ok and sticky["process_exited"] and sticky["next_trial_new_process"]
    return {"ok": ok, "completed": done, "sticky_cuda_error": sticky}


def _gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            return True
        if state == "Z":
            return True
        time.sleep(0.05)
    return False


# ---------------------------------------------------------------- figures


def memory_verdict(after_mb: list[float], slack_mb: float = 1.0) -> dict[str, Any]:
    """Whether trials give their memory back: what is left after each trial, compared with what was
    left after the one before it (not with a baseline from before the first trial: that one leaves
    what stays for the process's life, cuBLAS's workspace and the CUDA context's own).

    Args:
        after_mb: memory left after each trial, in order (MB).
        slack_mb: growth from one trial to the next that still counts as released.
    """
    growth = [round(b - a, 1) for a, b in zip(after_mb, after_mb[1:], strict=False)]
    return {"released": all(g <= slack_mb for g in growth), "growth_mb": growth, "after_mb": list(after_mb)}


def figures(checks: dict[str, Any]) -> dict[str, Any]:
    """The headline figures: trials/hour and tokens/s of the completed trials, peak and left memory."""
    rows = checks.get("trials", {}).get("trials", [])
    done = [r for r in rows if r["kind"].startswith("completed") and r["ok"]]
    out: dict[str, Any] = {}
    if done:
        out["trials_per_hour_one_slot"] = round(3600 / statistics.median(r["wall_s"] for r in done), 1)
        out["tokens_per_s"] = statistics.median(r["tokens_per_s"] for r in done)
        out["precision"] = sorted({str(r["precision"]) for r in done})
        out["weights_dtype"] = sorted({str(r["weights_dtype"]) for r in done})
    if rows and "peak_mb" in rows[0]:
        out["peak_mb"] = {r["kind"]: r["peak_mb"] for r in rows}
        out["allocated_after_mb"] = {r["kind"]: r["allocated_after_mb"] for r in rows}
        out["reserved_after_mb"] = {r["kind"]: r["reserved_after_mb"] for r in rows}
        out["memory_released"] = checks["trials"].get("released")
    return out


if __name__ == "__main__":
    sys.exit(main())
