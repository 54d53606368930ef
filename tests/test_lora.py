"""LoRA (peft) on the tiny model: only the adapter trains, a trial runs and reports, and its
checkpoint holds the merged model (which reproduces the trial's eval loss through from_pretrained)
and the adapter alone."""

from __future__ import annotations

import math

import pytest
import torch

from hpo import data, trial
from hpo import spec as spec_mod
from tests.conftest import small_spec, trial_config, validation_loss

ADAPTER = {"type": "lora", "r": 4, "alpha": 8, "dropout": 0.0, "target_modules": None}


@pytest.fixture(scope="module")
def prepared(tmp_path_factory, tiny_model):
    tmp = tmp_path_factory.mktemp("loradata")
    spec = spec_mod.load(small_spec(tmp, rows=120))
    return data.prepare(spec.data, tiny_model, 0, tmp / "cache")


def test_only_the_adapter_trains(tiny_model):
    model = trial.with_lora(trial.load_model(tiny_model, 0.0), 4, 8, 0.0, None)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    # before training, lora_B is zero: the merged weights are the base weights
    base = trial.load_model(tiny_model, 0.0).state_dict()
    merged = trial.merged_state_dict(model)
    assert set(base) <= set(merged) and all(torch.equal(base[k], merged[k]) for k in base)


def test_a_lora_trial_keeps_a_merged_checkpoint_that_reproduces_its_loss(prepared, tiny_model, tmp_path):
    params = {"learning_rate": 5e-3, "batch_size": 8, "epochs": 1, "dropout": 0.0, "weight_decay": 0.0}
    # warmup 0.05: the trial loop's default
    config = trial_config(prepared, tiny_model, tmp_path / "t", params, warmup_ratio=0.05, adapter=ADAPTER)
    config["params"]["lora_r"] = 2  # searched in space: wins over the adapter section's r
    assert trial.options(config)["adapter"]["r"] == 2
    reports: list[dict] = []
    last = trial.run(config, reports.append)
    assert len(reports) == 2 and reports[-1]["budget_done"]
    best = trial.best_checkpoint(tmp_path / "t")
    assert best is not None and (best / "model.safetensors").is_file()
    adapter_config = (best / "adapter" / "adapter_config.json").read_text()
    assert '"r": 2' in adapter_config and (best / "adapter" / "adapter_model.safetensors").is_file()
    merged = trial.load_model(str(best), 0.0)  # a plain model: from_pretrained, no peft
    assert not hasattr(merged, "peft_config")
    base = trial.load_model(tiny_model, 0.0).state_dict()
    assert not torch.equal(
        merged.state_dict()["transformer.h.0.attn.c_attn.weight"], base["transformer.h.0.attn.c_attn.weight"]
    )
    assert torch.equal(
        merged.state_dict()["transformer.h.0.mlp.c_fc.weight"], base["transformer.h.0.mlp.c_fc.weight"]
    )
    loss = validation_loss(merged, prepared, config["placement"]["precision"])  # as the trial evaluated
    assert math.isclose(loss, last["best_eval_loss"], abs_tol=1e-4)


def test_the_default_targets_are_peft_s_and_all_linear_where_peft_has_none():
    from hpo import checkpoint

    assert checkpoint.default_lora_targets("gpt2") == ["c_attn"]
    assert checkpoint.default_lora_targets("llama") == ["q_proj", "v_proj"]
    assert checkpoint.default_lora_targets("a-family-peft-does-not-know") == "all-linear"
