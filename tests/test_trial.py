"""The trial loop on the real tiny model: reports, checkpoints, determinism, accumulation."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from hpo import basemodel, data, trial
from hpo import spec as spec_mod
from tests.conftest import small_spec

PARAMS = {"learning_rate": 2e-3, "batch_size": 16, "epochs": 1, "dropout": 0.0, "weight_decay": 0.01}


@pytest.fixture(scope="module")
def prepared(tmp_path_factory, tiny_model):
    tmp = tmp_path_factory.mktemp("trialdata")
    spec = spec_mod.load(small_spec(tmp, rows=240))
    return data.prepare(spec.data, tiny_model, 0, tmp / "cache")


def _config(prepared, tiny_model, folder: Path, **params) -> dict:
    return {
        "params": {**PARAMS, **params},
        "model_path": tiny_model,
        "data_path": prepared.path,
        "checkpoint_dir": str(folder),
        "trial_number": 0,
        "seed": 0,
        "eval_every": 0.5,
        "warmup_ratio": 0.1,
        "max_micro_batch": 32,
        "max_grad_norm": 1.0,
        "cpus": 1,
        "gpus": 0,
    }


def test_dropout_fields_cover_gpt2_and_other_families():
    cfg = {
        "resid_pdrop": 0.1,
        "embd_pdrop": 0.1,
        "attn_pdrop": 0.1,
        "attention_dropout": 0.0,
        "hidden_dropout": 0.1,
        "n_layer": 4,
        "use_dropout": True,
        "layer_norm_epsilon": 1e-5,
    }
    assert trial.dropout_fields(cfg) == [
        "attention_dropout",
        "attn_pdrop",
        "embd_pdrop",
        "hidden_dropout",
        "resid_pdrop",
    ]


def test_micro_batch_divides_the_batch():
    assert trial._micro_batch(32, 32) == 32
    assert trial._micro_batch(48, 32) == 24
    assert trial._micro_batch(7, 4) == 1


def test_a_trial_reports_at_epoch_marks_and_keeps_its_best_checkpoint(prepared, tiny_model, tmp_path):
    reports: list[dict] = []
    last = trial.run(_config(prepared, tiny_model, tmp_path / "t0"), reports.append)
    assert [r["epoch"] for r in reports] == [0.5, 1.0]
    assert [r["budget_done"] for r in reports] == [False, True]
    assert reports[-1]["eval_loss"] < reports[0]["eval_loss"]
    assert last["best_eval_loss"] == min(r["eval_loss"] for r in reports)
    best = trial.best_checkpoint(tmp_path / "t0")
    assert best is not None and str(best) == last["checkpoint"]
    assert (best / "model.safetensors").is_file() and (best / "tokenizer.json").is_file()
    assert len(list((tmp_path / "t0").glob("step-*"))) == 1  # the previous best was dropped
    # the kept checkpoint reproduces the reported loss through from_pretrained
    model = trial.load_model(str(best), 0.0)
    arrays = prepared.arrays()
    ids, labels = (torch.from_numpy(arrays[k].copy()) for k in ("val_ids", "val_labels"))
    assert math.isclose(trial.evaluate(model, ids, labels), last["best_eval_loss"], abs_tol=1e-4)


def test_same_seed_and_params_give_the_same_loss(prepared, tiny_model, tmp_path):
    a = trial.run(_config(prepared, tiny_model, tmp_path / "a", dropout=0.1), lambda m: None)
    b = trial.run(_config(prepared, tiny_model, tmp_path / "b", dropout=0.1), lambda m: None)
    assert abs(a["eval_loss"] - b["eval_loss"]) < 1e-4


def test_gradient_accumulation_matches_one_big_batch(prepared, tiny_model, tmp_path):
    whole = _config(prepared, tiny_model, tmp_path / "w")
    split = {**_config(prepared, tiny_model, tmp_path / "s"), "max_micro_batch": 4}
    a = trial.run(whole, lambda m: None)
    b = trial.run(split, lambda m: None)
    assert abs(a["eval_loss"] - b["eval_loss"]) < 2e-3


def test_a_nan_loss_ends_the_trial_with_a_trial_error():
    from hpo.errors import TrialError

    state = trial._State(best=math.inf, started=0.0)
    with pytest.raises(TrialError, match="became nan at step 3; lower learning_rate"):
        state.add_train(float("nan"), 10, 2, {"trial_number": 0})


def test_an_injected_out_of_memory_becomes_a_trial_error(prepared, tiny_model, tmp_path, monkeypatch):
    from hpo.errors import TrialError

    monkeypatch.setenv(trial.FAIL_ENV, "0:oom")
    with pytest.raises(TrialError, match="out of memory"):
        trial.run(_config(prepared, tiny_model, tmp_path / "o"), lambda m: None)


def test_tiny_model_is_cached_and_loads_with_from_pretrained(tiny_model):
    from transformers import AutoModelForCausalLM

    assert basemodel.tiny_gpt2() == Path(tiny_model)
    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    assert 1_000_000 < sum(p.numel() for p in model.parameters()) < 5_000_000
