"""A trial gives its memory back when it ends, however it ends (``trial.run``'s cleanup).

A trial that failed or that ASHA stopped ends with an exception, and the exception's traceback
holds the trial loop's frames, whose locals are the model, the optimizer and the last step's
activations. The caller keeps that exception (Ray stores a trial's error; a forked trial process
formats it), so unless ``trial.run`` drops those frames the memory stays until the slot's next
trial ends; on a GPU the caching allocator keeps it reserved as well. These tests run the real
trial loop on the tiny model on CPU and watch the model's modules, its parameters and the
optimizer through weak references, taken by torch's global hooks (nothing in the loop is
patched): each must be gone the moment ``trial.run`` returns or raises, before any next trial.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from hpo import faultinject, trial
from tests.conftest import trial_config
from tests.test_trial import PARAMS


@contextmanager
def _watched() -> Iterator[list[weakref.ref]]:
    """Weak references to every module that runs forward and every optimizer that steps (with
    its parameters' state tensors) while the block runs."""
    import torch
    from torch.optim.optimizer import register_optimizer_step_pre_hook

    refs: list[weakref.ref] = []
    seen: set[int] = set()

    def on_forward(module, args) -> None:
        if id(module) not in seen:
            seen.add(id(module))
            refs.append(weakref.ref(module))

    def on_step(opt, args, kwargs) -> None:
        if id(opt) not in seen:
            seen.add(id(opt))
            refs.append(weakref.ref(opt))
            for group in opt.param_groups:
                refs.extend(weakref.ref(p) for p in group["params"])

    forward = torch.nn.modules.module.register_module_forward_pre_hook(on_forward)
    step = register_optimizer_step_pre_hook(on_step)
    try:
        yield refs
    finally:
        forward.remove()
        step.remove()


def _alive(refs: list[weakref.ref]) -> list[str]:
    return [type(obj).__name__ for obj in (r() for r in refs) if obj is not None]


def test_a_failed_trial_leaves_no_model_or_optimizer_behind(prepared, tiny_model, tmp_path, monkeypatch):
    monkeypatch.setenv(faultinject.FAIL_ENV, "0:error")  # the trial fails at its second step
    with _watched() as refs, pytest.raises(RuntimeError, match="injected failure") as failed:
        trial.run(trial_config(prepared, tiny_model, tmp_path / "f", PARAMS), lambda m: None)
    assert len(refs) > 10  # the model's modules, the optimizer and its parameters were seen
    # the error is still held here, as Ray holds a failed trial's error, and its traceback still
    # says where it happened; what the trial built is gone all the same
    assert failed.value.__traceback__ is not None
    assert _alive(refs) == []


def test_a_trial_out_of_memory_leaves_nothing_behind(prepared, tiny_model, tmp_path, monkeypatch):
    monkeypatch.setenv(faultinject.FAIL_ENV, "0:oom")  # torch.OutOfMemoryError, as CUDA raises it
    with _watched() as refs, pytest.raises(Exception, match="out of memory") as failed:
        trial.run(trial_config(prepared, tiny_model, tmp_path / "o", PARAMS), lambda m: None)
    assert failed.value.__cause__ is not None  # the allocator's own error, kept as the cause
    assert len(refs) > 10 and _alive(refs) == []


def test_a_trial_stopped_at_a_report_leaves_nothing_behind(prepared, tiny_model, tmp_path):
    def stop(metrics: dict) -> None:  # what Tune's report does when ASHA stops the trial
        raise SystemExit(0)

    with _watched() as refs, pytest.raises(SystemExit) as stopped:
        trial.run(trial_config(prepared, tiny_model, tmp_path / "s", {**PARAMS, "epochs": 2}), stop)
    assert stopped.value.code == 0
    assert len(refs) > 10 and _alive(refs) == []


def test_a_completed_trial_leaves_nothing_behind(prepared, tiny_model, tmp_path):
    with _watched() as refs:
        last = trial.run(trial_config(prepared, tiny_model, tmp_path / "c", PARAMS), lambda m: None)
    assert last["budget_done"]
    assert len(refs) > 10 and _alive(refs) == []
