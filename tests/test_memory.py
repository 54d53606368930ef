"""Memory planned, not discovered by the kernel: the pure plan (hand-picked numbers), the trial's
automatic micro-batch and its limits (the real loop on the tiny model), and a real study whose
trials meet a memory limit set for the test."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from hpo import memory
from tests.conftest import ROOT, run_cli, small_spec, trial_config

GB = memory.GB
LLAMA = {  # SmolLM2-135M's config.json, the fields memory reads
    "hidden_size": 576,
    "num_hidden_layers": 30,
    "num_attention_heads": 9,
    "num_key_value_heads": 3,
    "intermediate_size": 1536,
    "vocab_size": 49152,
    "hidden_act": "silu",
    "tie_word_embeddings": True,
}
GPT2 = {"n_embd": 128, "n_layer": 4, "n_head": 4, "n_inner": None, "vocab_size": 4096}


def test_shape_reads_llama_and_gpt2_fields():
    s = memory.shape(LLAMA)
    assert (s.layers, s.hidden, s.intermediate, s.heads) == (30, 576, 1536, 9)
    assert abs(s.params - 134_515_008) < 1e5  # estimated from the config alone
    g = memory.shape(GPT2, params=1_350_400)
    assert (g.layers, g.hidden, g.intermediate, g.heads, g.params) == (4, 128, 512, 4, 1_350_400)


def test_need_matches_what_was_measured_on_smollm2():
    """Peak RSS of one bf16-autocast step of SmolLM2-135M at block 256, measured on CPU: 4.2 GB at
    micro-batch 2, 5.4 GB at 4; the plan may be above by its safety margin, never below."""
    need = memory.trial_need(memory.shape(LLAMA, 134_515_008), 256, "bf16")
    for micro, measured in ((2, 4.2), (4, 5.4)):
        assert measured * GB <= need.at(micro) <= measured * GB * 1.15


def test_need_shrinks_with_checkpointing_lora_and_bf16_true():
    s = memory.shape(LLAMA, 134_515_008)
    full = memory.trial_need(s, 256, "bf16")
    assert memory.trial_need(s, 256, "bf16", checkpointing=True).per_sequence < full.per_sequence / 5
    assert memory.trial_need(s, 256, "bf16", trainable=s.params // 50).static < full.static / 2
    true, fp32 = (memory.trial_need(s, 256, p).static - memory.RUNTIME_CPU for p in ("bf16-true", "fp32"))
    assert true * 2 == pytest.approx(fp32)  # weights, gradients and moments in half the bytes


def test_micro_batch_is_the_largest_divisor_that_fits():
    need = memory.Need(static=1 * GB, per_sequence=0.5 * GB)  # at(m) = 1.1 (1 + 0.5 m) GB
    assert need.largest_micro(1.1 * 4 * GB) == 6
    assert memory.micro_batch(need, 1.1 * 4 * GB, 32) == 4  # 6 fits, but 32 splits into passes of 4
    assert memory.micro_batch(need, 1.1 * 4 * GB, 32, cap=2) == 2
    assert memory.micro_batch(need, 1.1 * GB, 8) == 0  # not even one sequence


def test_plan_shares_a_node_between_the_trials_its_cpus_and_memory_hold():
    need = memory.Need(static=3 * GB, per_sequence=0.5 * GB)  # micro 4: 5.5 GB
    plan = memory.plan_cpu([20 * GB], [2], need, batch=8)
    assert (plan.fits, plan.per_trial, plan.problem) == (2, 10 * GB, None)
    assert plan.micro == need.largest_micro(10 * GB) == 12
    tight = memory.plan_cpu([10 * GB], [4], need, batch=8)  # 10 GB holds one trial at micro 4
    assert (tight.fits, tight.per_trial) == (1, 10 * GB)
    squeezed = memory.plan_cpu([4 * GB], [2], need, batch=8)  # only micro 1 fits: 3.85 GB
    assert (squeezed.fits, squeezed.micro) == (1, 1)
    two_nodes = memory.plan_cpu([20 * GB, 6 * GB], [2, 2], need, batch=8)
    assert (two_nodes.fits, two_nodes.per_trial) == (3, 6 * GB)


def test_plan_says_when_no_node_holds_a_trial():
    need = memory.Need(static=30 * GB, per_sequence=1 * GB)
    plan = memory.plan_cpu([20 * GB], [2], need, batch=8)
    assert plan.fits == 0 and "gradient_checkpointing" in plan.problem and "batch_size 8" in plan.problem
    fixed = memory.plan_cpu([20 * GB], [2], need, batch=8, fixed=64 * GB)
    assert fixed.fits == 0 and "resources.memory_gb = 64" in fixed.problem
    held = memory.plan_cpu([20 * GB], [4], need, batch=8, fixed=6 * GB)
    assert (held.fits, held.per_trial) == (3, 6 * GB)


@pytest.mark.parametrize(
    "text",
    [
        "CUDA out of memory. Tried to allocate 2.00 GiB",
        "[enforce fail at alloc_cpu.cpp:121] DefaultCPUAllocator: can't allocate memory: you tried",
        "Cannot allocate memory",
    ],
)
def test_allocation_failures_are_out_of_memory(text):
    assert memory.is_oom(text)
    assert not memory.is_oom("index out of range in self")


def test_params_in_reads_the_safetensors_headers(tiny_model):
    assert memory.params_in(tiny_model) == 1_350_400
    assert memory.model_shape(tiny_model).params == 1_350_400


# ---------------------------------------------------------------- the trial loop, for real

PARAMS = {"learning_rate": 2e-3, "batch_size": 16, "epochs": 1, "dropout": 0.0, "weight_decay": 0.01}


def test_auto_micro_batch_fits_the_budget(prepared, tiny_model, tmp_path):
    from hpo import trial

    need = memory.trial_need(memory.model_shape(tiny_model), 128, "fp32")
    budget = need.at(5)  # room for 5 sequences: batch 16 runs as 4 passes of 4
    config = trial_config(
        prepared, tiny_model, tmp_path, PARAMS, max_micro_batch="auto", memory_bytes=budget, precision="fp32"
    )
    reports: list[dict] = []
    trial.run(config, reports.append)
    assert config["placement"]["micro_batch"] == 4 and reports[-1]["budget_done"]


def test_a_trial_that_cannot_fit_fails_out_of_memory_before_training(prepared, tiny_model, tmp_path):
    from hpo import trial
    from hpo.errors import OutOfMemory

    config = trial_config(
        prepared, tiny_model, tmp_path, PARAMS, max_micro_batch="auto", memory_bytes=0.2 * GB
    )
    with pytest.raises(OutOfMemory, match=r"batch_size 16 needs .* micro-batch 1 .*gradient_checkpointing"):
        trial.run(config, lambda m: None)
    assert not list(tmp_path.glob("step-*"))


HELD = """
import json, sys
from hpo import trial
from hpo.errors import OutOfMemory
config = json.loads(sys.argv[1])
try:
    trial.run(config, lambda m: None)
    print("done", config["placement"]["micro_batch"])
except OutOfMemory as e:
    print("OutOfMemory", e)
"""


def test_a_held_trial_past_its_memory_fails_out_of_memory(prepared, tiny_model, tmp_path):
    """resources.memory_gb holds a CPU trial to it: a fixed micro-batch of 64 sequences does not fit
    0.6 GB and fails on a real allocation (in a child process: the limit stays with the process)."""
    params = {**PARAMS, "batch_size": 64}
    config = trial_config(prepared, tiny_model, tmp_path, params, max_micro_batch=64)
    config.update(memory_bytes=0.6 * GB, hold_memory=True, precision="fp32")
    out = subprocess.run(
        [sys.executable, "-c", HELD, json.dumps(config)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.stdout.startswith("OutOfMemory out of memory at batch_size 64, micro-batch 64"), out.stderr[
        -2000:
    ]
    assert "max_micro_batch: auto" in out.stdout


@pytest.mark.e2e
def test_a_study_past_its_memory_goes_on(tmp_path):
    """A study whose batch-64 trials do not fit a 0.6 GB limit at a fixed micro-batch of 64: those
    trials FAIL OutOfMemory with the batch, the micro-batch and the fix (not re-queued), the others
    complete, and the run ends normally; the same study with max_micro_batch: auto finishes all."""
    import optuna

    space = {"batch_size": {"type": "categorical", "choices": [8, 64]}, "epochs": 1}
    db = f"sqlite:///{tmp_path / 'hpo.db'}"
    for name, micro, want_fail in (("held", 64, True), ("auto", "auto", False)):
        spec = small_spec(
            tmp_path,
            name=name,
            rows=240,
            space=space,
            schedule="none",
            training={"max_micro_batch": micro, "precision": "fp32", "eval_every": 1.0},
            resources={"memory_gb": 0.6},
        )
        assert run_cli("study", "create", str(spec), "--storage", db).returncode == 0
        out = run_cli(
            "run", "--study", name, "--trials", "3", "--storage", db, "--runs-dir", str(tmp_path / name)
        )
        assert out.returncode == 0, out.stderr[-3000:]
        assert "0.6 GB per trial" in out.stdout + out.stderr
        trials = optuna.load_study(study_name=name, storage=db).get_trials()
        failed = [t for t in trials if t.state.name == "FAIL"]
        assert not [t for t in trials if t.state.name in ("WAITING", "RUNNING")]
        if want_fail:
            assert failed and all(t.user_attrs["error_class"] == "OutOfMemory" for t in failed)
            assert all(t.params["batch_size"] == 64 for t in failed)
            assert "batch_size 64, micro-batch 64" in failed[0].user_attrs["error_message"]
        else:
            assert not failed and any(t.params["batch_size"] == 64 for t in trials)
            assert all(t.user_attrs["micro_batch"] <= 2 for t in trials)


def test_memory_module_imports_nothing_heavy():
    heavy = "('torch', 'ray', 'transformers')"
    code = f"import sys, hpo.memory; print(sorted(m for m in {heavy} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "[]"


def test_studies_default_to_the_automatic_micro_batch():
    from hpo import spec as spec_mod

    assert spec_mod.load(Path(ROOT / "studies" / "demo.yaml")).training.max_micro_batch == "auto"


def test_a_gpu_fraction_too_small_for_the_model_is_refused_or_noted():
    need = memory.Need(static=10 * GB, per_sequence=1 * GB)  # micro 1: 12.1 GB; micro 4: 15.4 GB
    problem, note = memory.gpu_share(need, 40 * GB, 0.25, batch=8)
    assert "gpus_per_trial = 0.25 gives each trial 10.0 GB of a 40.0 GB GPU" in problem and note is None
    problem, note = memory.gpu_share(need, 56 * GB, 0.25, batch=8)
    assert problem is None and "micro-batches of 2" in note
    assert memory.gpu_share(need, 80 * GB, 1, batch=8) == (None, None)
