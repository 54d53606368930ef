"""scripts/gpu_smoke.py, the Ray-free GPU check: its memory verdict (also scripts/gpu_check's) on
hand-picked figures, and the whole check on CPU with the tiny model (slow: a few minutes here)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

import gpu_smoke  # noqa: E402


def test_memory_is_released_when_no_trial_leaves_more_than_the_one_before():
    # the first trial leaves cuBLAS's workspace (here 8.1 MB) for the process's life: not a leak
    v = gpu_smoke.memory_verdict([8.1, 8.1, 8.6, 8.1, 8.1])
    assert v["released"] and v["growth_mb"] == [0.0, 0.5, -0.5, 0.0]


def test_memory_is_not_released_when_a_trial_leaves_its_model_behind():
    # a stopped trial kept a 540 MB model and its optimizer until the next trial ended
    v = gpu_smoke.memory_verdict([8.1, 2170.0, 8.1])
    assert not v["released"] and v["growth_mb"] == [2161.9, -2161.9]
    assert gpu_smoke.memory_verdict([8.1])["released"]  # one trial: nothing to compare


def test_figures_come_from_the_completed_trials():
    rows = [
        {"kind": "completed", "ok": True, "wall_s": 20.0, "tokens_per_s": 90000, "precision": "bf16",
         "weights_dtype": "torch.float32", "peak_mb": 3000.0, "allocated_after_mb": 8.0,
         "reserved_after_mb": 40.0},
        {"kind": "stopped", "ok": True, "wall_s": 5.0, "tokens_per_s": None, "precision": "bf16",
         "weights_dtype": "torch.float32", "peak_mb": 2900.0, "allocated_after_mb": 8.0,
         "reserved_after_mb": 40.0},
        {"kind": "completed_again", "ok": True, "wall_s": 30.0, "tokens_per_s": 110000,
         "precision": "bf16", "weights_dtype": "torch.float32", "peak_mb": 3000.0,
         "allocated_after_mb": 8.0, "reserved_after_mb": 40.0},
    ]  # fmt: skip
    f = gpu_smoke.figures({"trials": {"trials": rows, "released": True}})
    assert f["trials_per_hour_one_slot"] == 144.0 and f["tokens_per_s"] == 100000
    assert f["peak_mb"]["stopped"] == 2900.0 and f["memory_released"] is True


@pytest.mark.slow
@pytest.mark.e2e
def test_the_whole_check_passes_on_cpu_without_ray(tmp_path, tiny_model):
    r = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gpu_smoke.py"), "--cpu", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=1200,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    out = json.loads((tmp_path / "gpu_smoke.json").read_text())
    assert out["ok"] and not out["ray_imported"] and not out["optuna_imported"]
    assert [t["kind"] for t in out["checks"]["trials"]["trials"]] == list(gpu_smoke.TRIAL_KINDS)
    forked = out["checks"]["forked_slot"]
    assert forked["sticky_cuda_error"]["error_class"] == "CudaError"
    assert (
        forked["sticky_cuda_error"]["process_exited"]
        and forked["sticky_cuda_error"]["next_trial_new_process"]
    )
    assert out["figures"]["tokens_per_s"] > 0
