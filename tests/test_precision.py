"""Precision: a trial keeps fp32 master weights and optimizer state whatever dtype its base model
was saved in (bf16 only when ``bf16-true`` asks for it), and export writes the base model's dtype."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from hpo import export, trial
from tests.conftest import trial_config

PARAMS = {"learning_rate": 3e-3, "batch_size": 16, "epochs": 1, "dropout": 0.0, "weight_decay": 0.01}


@pytest.fixture(scope="module")
def bf16_copy(tmp_path_factory, tiny_model) -> str:
    """The tiny model saved in bf16, as current Hub checkpoints are (config.json says so too)."""
    from transformers import AutoModelForCausalLM

    out = tmp_path_factory.mktemp("bf16") / "model"
    AutoModelForCausalLM.from_pretrained(tiny_model).to(torch.bfloat16).save_pretrained(out)
    for f in Path(tiny_model).iterdir():
        if f.name.startswith(("tokenizer", "special_tokens", "vocab", "merges")):
            shutil.copy2(f, out / f.name)
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"
    return str(out)


def test_a_bf16_checkpoint_loads_as_fp32_master_weights(bf16_copy):
    model = trial.load_model(bf16_copy, 0.0)
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    assert trial.saved_dtype(bf16_copy) == "bfloat16"


def test_bf16_true_keeps_bf16_weights(bf16_copy):
    model = trial.load_model(bf16_copy, 0.0, dtype="bfloat16")
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}


def _fine_tune(prepared, model: str, folder: Path, precision: str) -> dict:
    reports: list[dict] = []
    config = trial_config(prepared, model, folder, PARAMS, precision=precision, eval_every=1.0)
    trial.run(config, reports.append)
    return {**reports[-1], **config["placement"]}


def test_bf16_saved_and_fp32_saved_fine_tune_alike(prepared, tiny_model, bf16_copy, tmp_path):
    """The same one-epoch fine-tune from a bf16-saved and an fp32-saved copy of one model ends
    within 1% in eval loss (with bf16 weights and optimizer state, small updates round away)."""
    fp32 = _fine_tune(prepared, tiny_model, tmp_path / "fp32", "fp32")
    bf16 = _fine_tune(prepared, bf16_copy, tmp_path / "bf16", "fp32")
    assert bf16["base_dtype"] == "bfloat16" and fp32["base_dtype"] == "float32"
    assert abs(bf16["eval_loss"] - fp32["eval_loss"]) <= 0.01 * fp32["eval_loss"]


def test_bf16_true_is_recorded(prepared, bf16_copy, tmp_path):
    last = _fine_tune(prepared, bf16_copy, tmp_path / "true", "bf16-true")
    assert last["precision"] == "bf16-true" and last["eval_loss"] < 20


def test_cast_weights_rewrites_tensors_and_config(tiny_model, tmp_path):
    folder = tmp_path / "m"
    shutil.copytree(tiny_model, folder)
    assert export.cast_weights(folder, "bfloat16") == "bfloat16"
    from safetensors.torch import load_file

    tensors = load_file(folder / "model.safetensors")
    assert {t.dtype for t in tensors.values() if t.is_floating_point()} == {torch.bfloat16}
    assert json.loads((folder / "config.json").read_text())["dtype"] == "bfloat16"
    from transformers import AutoModelForCausalLM

    assert AutoModelForCausalLM.from_pretrained(folder).dtype == torch.bfloat16


def test_model_card_says_how_it_was_trained_and_saved():
    info = {"trained_on": {"precision": "bf16", "device": "cpu"}, "dtype": "bfloat16"}
    assert export._trained_on(info) == "bf16 autocast, fp32 weights on cpu"
    true = {"trained_on": {"precision": "bf16-true"}}
    assert export._trained_on(true) == "bf16 weights and optimizer state"
