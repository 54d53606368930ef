"""What ``hpo.checkpoint`` decides from a model's config alone: which fields are its dropout
probabilities (whatever the family calls them, in sub-configs too), and that a study searching
dropout on a model without any is refused at create, before anything is written; and a checkpoint
written over a stale one of the same step."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hpo import checkpoint
from hpo.errors import SpecError
from hpo.study import create_study
from tests.conftest import small_spec


def test_dropout_fields_take_every_name_and_integer_zero_and_sub_configs():
    cfg = {
        "attention_dropout": 0,  # as a Hub config.json may write it
        "hidden_dropout_prob": 0.1,  # BioGPT
        "resid_pdrop": 0.1,
        "classifier_dropout": None,
        "use_dropout": True,
        "layerdrop": 0.1,  # whole layers, not dropout
        "weird_dropout": 3,  # not a probability
        "text_config": {"attention_dropout": 0.0, "rope_parameters": {"rope_theta": 1e4}},
    }
    assert checkpoint.dropout_fields(cfg) == [
        "attention_dropout",
        "hidden_dropout_prob",
        "resid_pdrop",
        "text_config.attention_dropout",
    ]


def test_set_dropout_reaches_a_multimodal_models_text_config():
    from transformers import Gemma3Config, LlamaConfig

    cfg = Gemma3Config()
    assert "text_config.attention_dropout" in checkpoint.set_dropout(cfg, 0.2)
    assert cfg.text_config.attention_dropout == 0.2
    llama = LlamaConfig(attention_dropout=0)
    assert checkpoint.set_dropout(llama, 0.1) == ["attention_dropout"] and llama.attention_dropout == 0.1


def test_dropout_problem_only_when_searched_on_a_model_without_dropout():
    none = {"model_type": "lfm2", "hidden_size": 64}
    assert "space.dropout" in checkpoint.dropout_problem(none, searched=True)
    assert "lfm2" in checkpoint.dropout_problem(none, searched=True)
    assert (
        checkpoint.dropout_problem(none, searched=False) is None
    )  # fixed (the default 0.1): nothing to waste
    assert checkpoint.dropout_problem({"attention_dropout": 0.0}, searched=True) is None
    assert checkpoint.dropout_problem(None, searched=True) is None  # a hub id: not known here


def test_create_refuses_to_search_dropout_on_a_model_without_any(tmp_path, tiny_model):
    import shutil

    model = tmp_path / "lfm2"
    shutil.copytree(tiny_model, model)  # a folder create finds: tokenizer and safetensors weights
    (model / "config.json").write_text(json.dumps({"model_type": "lfm2", "hidden_size": 64}))
    url = f"sqlite:///{tmp_path / 'hpo.db'}"
    searched = small_spec(tmp_path, name="searched", model=str(model))
    with pytest.raises(SpecError, match="space.dropout: the model \\(lfm2\\) has no dropout"):
        create_study(searched, storage=url)
    assert not (tmp_path / "hpo.db").exists()  # refused before anything is written
    fixed = small_spec(tmp_path, name="fixed", model=str(model), space={"dropout": 0.1})
    assert create_study(fixed, storage=url).name == "fixed"


def test_a_checkpoint_over_a_stale_one_of_the_same_step_is_written(tmp_path, tiny_model):
    """A trial folder left by an earlier study of the same name (deleted, then created again)
    whose best was written at the same step: the new checkpoint replaces it (the tokenizer comes
    from the model, not from the folder being overwritten)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    config = {"checkpoint_dir": str(tmp_path / "00000"), "model_path": tiny_model, "params": {"lr": 1}}
    first = checkpoint.save_checkpoint(model, config, 14)
    again = checkpoint.save_checkpoint(model, {**config, "params": {"lr": 2}}, 14)
    assert again == first and checkpoint.best_checkpoint(config["checkpoint_dir"]) == Path(first)
    assert (Path(first) / "tokenizer.json").is_file()
    assert AutoModelForCausalLM.from_pretrained(first).config.vocab_size == model.config.vocab_size
