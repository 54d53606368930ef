"""Every private name of a dependency that hpo still uses (docs/dependencies.md lists them with
why) is where hpo expects it. A failure here means the installed version moved one: fix the
module named in the message, not this test."""

from __future__ import annotations

import inspect


def test_ray_still_has_the_loopback_constant_raystart_sets():
    from ray._private import ray_constants

    assert isinstance(ray_constants.ENABLE_RAY_CLUSTER, bool), (
        "ray moved ray._private.ray_constants.ENABLE_RAY_CLUSTER: fix hpo/raystart.py:loopback_only"
    )


def test_ray_init_still_takes_the_underscored_arguments_raystart_passes():
    import ray

    documented = inspect.getdoc(ray.init) or ""  # they come in through **kwargs, documented there
    for name in ("_node_ip_address", "_system_config", "_temp_dir"):
        assert name in documented, f"ray.init lost {name}: fix hpo/raystart.py:start"


def test_optuna_frozen_trials_still_carry_the_id_dashboard_notes_use():
    import optuna

    study = optuna.create_study()
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=1)
    frozen = study.trials[0]
    assert optuna.trial.Trial(study, frozen._trial_id).number == frozen.number, (
        "optuna moved FrozenTrial._trial_id: fix dashboards/notes.py:save_trial_note"
    )


def test_torch_still_has_the_abort_distributed_uses_after_a_failed_nccl_rank():
    import torch.distributed as td

    assert callable(td.distributed_c10d._abort_process_group), (
        "torch moved distributed_c10d._abort_process_group: fix hpo/collective.py:leave_group"
    )


def test_tokenizers_bpe_still_wraps_the_tokenizer_basemodel_hands_to_transformers():
    from tokenizers import ByteLevelBPETokenizer, Tokenizer

    assert isinstance(ByteLevelBPETokenizer()._tokenizer, Tokenizer), (
        "tokenizers moved BaseTokenizer._tokenizer: fix hpo/basemodel.py:_tokenizer"
    )


def test_transformers_still_has_the_sdpa_helpers_hpo_dropout_builds_on():
    import transformers
    from transformers import AttentionInterface
    from transformers.integrations import sdpa_attention
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    from hpo import dropout

    where = "fix hpo/dropout.py (attention, _register) and its TESTED_TRANSFORMERS"
    assert int(transformers.__version__.split(".")[0]) in dropout.TESTED_TRANSFORMERS, where
    assert callable(sdpa_attention.repeat_kv) and callable(sdpa_attention.sdpa_attention_forward), where
    assert callable(sdpa_mask) and AttentionInterface and AttentionMaskInterface, where
    assert dropout._register(), where


def test_a_ray_that_moved_the_constant_stops_the_run_with_one_line(monkeypatch):
    import pytest
    from ray._private import ray_constants

    from hpo import raystart
    from hpo.errors import RunError

    monkeypatch.delattr(ray_constants, "ENABLE_RAY_CLUSTER")
    monkeypatch.setenv("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    with pytest.raises(RunError, match="moved ray._private.ray_constants.ENABLE_RAY_CLUSTER"):
        raystart.loopback_only()
