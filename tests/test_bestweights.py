"""When a trial writes its best checkpoint (``hpo.bestweights``): the real tiny model, real
``save_pretrained`` and ``from_pretrained``; only the clock is a test's own."""

from __future__ import annotations

import pytest
import torch

from hpo import bestweights
from hpo.checkpoint import best_checkpoint, load_model


@pytest.fixture
def model(tiny_model):
    return load_model(tiny_model, 0.0)


def _config(tmp_path, tiny_model) -> dict:
    return {"checkpoint_dir": str(tmp_path / "trial"), "model_path": tiny_model, "params": {"lr": 1}}


def _step(model) -> None:
    """Stands in for an optimizer step: every weight moves."""
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01)


def _written(tmp_path):
    return sorted(p.name for p in (tmp_path / "trial").glob("step-*"))


class _Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_deferred_writes_nothing_until_the_trial_ends_then_the_held_best(tmp_path, tiny_model, model):
    keep = bestweights.BestWeights(_config(tmp_path, tiny_model), "deferred")
    keep.after_eval(model, 10, improved=True, last=False)
    best = {k: v.clone() for k, v in model.state_dict().items()}
    assert keep.path is None and _written(tmp_path) == []  # held in memory: nothing reported
    _step(model)
    keep.after_eval(model, 20, improved=False, last=False)
    assert keep.path is None and _written(tmp_path) == []
    _step(model)
    keep.after_eval(model, 30, improved=False, last=True)  # the end: the held best (step 10) is written
    assert _written(tmp_path) == ["step-0000010"]
    assert keep.path == str(best_checkpoint(tmp_path / "trial"))
    back = load_model(keep.path, 0.0)
    for name, value in back.state_dict().items():
        assert torch.equal(value, best[name]), name
    assert back.lm_head.weight.data_ptr() == back.transformer.wte.weight.data_ptr()  # still tied
    assert keep.save_s > 0


def test_deferred_writes_the_live_weights_when_the_last_evaluation_is_the_best(tmp_path, tiny_model, model):
    keep = bestweights.BestWeights(_config(tmp_path, tiny_model), "deferred")
    keep.after_eval(model, 10, improved=True, last=False)
    _step(model)
    keep.after_eval(model, 20, improved=True, last=True)
    assert _written(tmp_path) == ["step-0000020"]
    back = load_model(keep.path, 0.0)
    assert torch.equal(back.transformer.wte.weight, model.transformer.wte.weight)


def test_a_stopped_deferred_trial_wrote_nothing(tmp_path, tiny_model, model):
    """ASHA stops a trial after a report: it never reaches a last evaluation, so no file exists
    (its checkpoint would be deleted as PRUNED anyway)."""
    keep = bestweights.BestWeights(_config(tmp_path, tiny_model), "deferred")
    for step in (10, 20):
        keep.after_eval(model, step, improved=True, last=False)
        _step(model)
    assert keep.path is None and _written(tmp_path) == []


def test_a_best_waiting_too_long_is_written(tmp_path, tiny_model, model):
    clock = _Clock()
    keep = bestweights.BestWeights(_config(tmp_path, tiny_model), "deferred", clock=clock)
    keep.after_eval(model, 10, improved=True, last=False)
    clock.now = bestweights.WAIT_S - 1
    keep.after_eval(model, 20, improved=False, last=False)
    assert _written(tmp_path) == []
    clock.now = bestweights.WAIT_S + 1
    keep.after_eval(model, 30, improved=False, last=False)
    assert _written(tmp_path) == ["step-0000010"] and keep.path.endswith("step-0000010")
    clock.now += 5
    keep.after_eval(model, 40, improved=False, last=True)  # nothing held any more: nothing rewritten
    assert _written(tmp_path) == ["step-0000010"]


def test_immediate_writes_each_best(tmp_path, tiny_model, model):
    keep = bestweights.BestWeights(_config(tmp_path, tiny_model), "immediate")
    keep.after_eval(model, 10, improved=True, last=False)
    assert _written(tmp_path) == ["step-0000010"] and keep.path.endswith("step-0000010")
    keep.after_eval(model, 20, improved=True, last=False)
    assert _written(tmp_path) == ["step-0000020"]  # the previous best is dropped
    keep.after_eval(model, 30, improved=False, last=True)
    assert _written(tmp_path) == ["step-0000020"]


def test_auto_defers_except_where_a_trial_must_write_as_it_goes(model):
    assert bestweights.resolve("auto", "asha", adapter=False) == "deferred"
    assert bestweights.resolve("auto", "none", adapter=False) == "deferred"
    assert bestweights.resolve("auto", "pasha", adapter=False) == "immediate"  # COMPLETE at its cap
    assert bestweights.resolve("auto", "asha", adapter=True) == "immediate"
    assert bestweights.resolve("immediate", "asha", adapter=False) == "immediate"
    assert bestweights.mode("deferred", model, torch.device("cpu")) == "deferred"
