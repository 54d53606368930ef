"""When a trial writes its best checkpoint (``training.save_best``).

``immediate`` writes the weights at each new best evaluation. ``deferred`` copies them into one
host-memory buffer instead (a memory copy, no file) and writes that copy once: when the trial
ends, or when the best has waited ``WAIT_S`` unwritten (so an interrupted trial resumes from a best
at most that old). A trial the scheduler stops ends PRUNED, and a PRUNED trial's checkpoint is
never kept (``bookkeeping.checkpoints_to_delete``), so under ASHA most trials write nothing; a trial
that improves at every evaluation writes once instead of at each.

Only a durable checkpoint is ever reported: ``path`` names the last one written (the BEST pointer
moves after the files are complete, ``checkpoint.save_checkpoint``); the held copy is not a
checkpoint until it is written.
"""

from __future__ import annotations

import time
from typing import Any

from hpo.checkpoint import is_peft, save_checkpoint

#: The longest a deferred best waits unwritten, in trial seconds: what an interrupted trial can lose.
WAIT_S = 600.0


def resolve(setting: str, schedule: str, adapter: bool) -> str:
    """``auto`` -> ``immediate`` where a trial can end COMPLETE from outside (PASHA stops trials at
    its cap as COMPLETE: their best must already be on disk) or with a LoRA adapter (its checkpoint
    is the merged model plus the adapter: written as it is found), else ``deferred``."""
    if setting != "auto":
        return setting
    return "immediate" if schedule == "pasha" or adapter else "deferred"


def mode(setting: str, model, device) -> str:
    """The trial's own say on a ``deferred`` setting: a LoRA model writes as it finds (its
    checkpoint holds the adapter too); on a GPU the held copy lives in host memory, so the weights
    must fit in half of what the host has available (on CPUs the run's memory plan counts it)."""
    if setting != "deferred":
        return setting
    if is_peft(model):
        return "immediate"
    if device.type == "cuda":
        from hpo import memory

        size = sum(t.numel() * t.element_size() for t in model.state_dict().values())
        if size > memory.available_bytes() / 2:
            return "immediate"
    return setting


class BestWeights:
    """One trial's best weights: written now, or held in memory until the trial ends."""

    def __init__(self, config: dict[str, Any], mode: str, clock=time.perf_counter):
        self._config, self.mode, self._clock = config, mode, clock
        self.path: str | None = None  # the last checkpoint written (durable)
        self.save_s = 0.0  # seconds writing checkpoints and copying weights to hold
        self._held: dict[str, Any] | None = None  # name -> host tensor (tied weights share one)
        self._held_step: int | None = None  # the step of the weights held, None: nothing waits
        self._written_at = clock()

    def after_eval(self, model, step: int, improved: bool, last: bool) -> None:
        """An evaluation at ``step`` ended; ``improved``: it is the trial's best so far; ``last``:
        the trial ends with it (its budget, or early stopping)."""
        t0 = self._clock()
        if improved and (last or self.mode == "immediate"):
            self._write(model, step, None)
        elif improved:
            self._hold(model, step)
        if self._held_step is not None and (last or t0 - self._written_at >= WAIT_S):
            self._write(model, self._held_step, self._held)
        self.save_s += self._clock() - t0

    def _hold(self, model, step: int) -> None:
        import torch

        with torch.no_grad():
            live = model.state_dict()
            if self._held is None:
                self._held = _host_buffers(live)
            copied: set[int] = set()
            for name, buf in self._held.items():
                if id(buf) not in copied:  # a tied weight's buffer is copied once
                    buf.copy_(live[name])
                    copied.add(id(buf))
        self._held_step = step

    def _write(self, model, step: int, state_dict: dict[str, Any] | None) -> None:
        self.path = save_checkpoint(model, self._config, step, state_dict)
        self._held_step, self._written_at = None, self._clock()


def _host_buffers(state: dict[str, Any]) -> dict[str, Any]:
    """Host tensors shaped as ``state``'s, one per distinct tensor: names that share a tensor (tied
    embeddings) share a buffer, so ``save_pretrained`` still sees them tied."""
    import torch

    out: dict[str, Any] = {}
    by_view: dict[tuple, Any] = {}
    for name, t in state.items():
        key = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), tuple(t.stride()))
        if key not in by_view:
            by_view[key] = torch.empty(t.shape, dtype=t.dtype, device="cpu")
        out[name] = by_view[key]
    return out
