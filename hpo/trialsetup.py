"""Where a trial trains and how big its steps are: its device (``placement.trial_device`` on
what Ray assigned), its precision and autocast, its torch threads, and its micro-batch (the
spec's ``max_micro_batch``, or for ``auto`` the largest that fits its memory, ``hpo.memory``)."""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import time
from typing import Any

from hpo import memory, placement
from hpo.errors import OutOfMemory

log = logging.getLogger(__name__)


def device(config: dict[str, Any]):
    """The trial's device, chosen by ``placement.trial_device`` from what Ray assigned (the runner
    fills ``config["placement"]``) and what torch finds here. The choice and its note (a logical
    GPU that is no CUDA device here: the trial trains on CPU) go back into ``config["placement"]``,
    which the runner adds to every report."""
    import torch

    torch.set_num_threads(max(1, int(config.get("cpus", 1))))
    seen = config.setdefault("placement", {})
    cuda = torch.cuda.device_count() if torch.cuda.is_available() else 0
    choice = placement.trial_device(
        config.get("gpus", 0), seen.get("gpu_ids"), seen.get("cuda_visible_devices"), cuda
    )
    seen.update(device=choice.device, device_note=choice.note)
    if choice.note:
        log.warning("trial %s: %s", config.get("trial_number"), choice.note)
    return torch.device(choice.device)


def optimizer(groups: list[dict[str, Any]], lr: float, device):
    """AdamW over ``groups`` with torch's fused kernel on CPU and CUDA: one pass over each
    parameter's weights, gradient and moments instead of a dozen elementwise ops (the for-loop
    version torch picks by default on CPU). The same update (HF ``Trainer``'s default optimizer,
    ``adamw_torch_fused``, uses the same kernel). Measured on SmolLM2-135M, one thread: 1.09 s ->
    0.26 s an optimizer step, median of 4 (a micro-batch 8 x 256 step's forward and backward takes ~7 s)."""
    import torch

    fused = device.type in ("cpu", "cuda") and all(p.is_floating_point() for g in groups for p in g["params"])
    return torch.optim.AdamW(groups, lr=lr, fused=fused or None)


#: ``training.compile: auto`` compiles models from this size up. Below it a step takes milliseconds
#: and even a compile from torch's on-disk cache (~2 s a process) does not pay for itself.
COMPILE_MIN_PARAMS = 50_000_000


def compile_blocks(model, setting: bool | str, device) -> str:
    """Compile each of the model's repeated blocks (its decoder layers) with ``torch.compile``.

    "Regional" compilation, as PyTorch recommends for transformers: the blocks share one compiled
    graph, so the compile costs one block's, not the whole model's; the embeddings and the head
    stay eager (``hpo.lmhead`` runs the head). Inductor fuses a block's elementwise work (norms,
    rotary embedding, activation, the autocast casts) into a few kernels. Measured on SmolLM2-135M
    (micro-batch 8 x 256, bf16 autocast, one thread, CPU seconds, medians): forward + backward
    7.5 -> 5.6 s; the first compile on a machine ~1-3 min, later processes ~2 s from the cache.

    Returns what was done, for the trial's attributes ("30 blocks", or "off: why")."""
    if setting is False:
        return "off"
    blocks = _repeated_blocks(model)
    if not blocks:
        return "off: no repeated blocks"
    if setting == "auto":
        why = _auto_skips(model, device)
        if why:
            return f"off: {why}"
    for block in blocks:
        block.compile()
    return f"{len(blocks)} blocks"


def _repeated_blocks(model) -> list:
    """The longest ``ModuleList`` of one class of module: a transformer's layers."""
    import torch

    best: list[Any] = []
    for m in model.modules():
        longer = isinstance(m, torch.nn.ModuleList) and len(m) > max(1, len(best))
        if longer and len({type(c) for c in m}) == 1:
            best = list(m)
    return best


def _auto_skips(model, device) -> str | None:
    """Why ``compile: auto`` leaves this model eager, or None."""
    n = sum(p.numel() for p in model.parameters())
    if n < COMPILE_MIN_PARAMS:
        return f"{n / 1e6:.1f}M parameters (auto compiles from {COMPILE_MIN_PARAMS / 1e6:.0f}M)"
    if getattr(model, "is_gradient_checkpointing", False):
        return "gradient checkpointing is on"
    if device.type == "cpu" and not any(shutil.which(c) for c in (os.environ.get("CXX", "g++"), "c++")):
        return "no C++ compiler on PATH (torch.compile needs one on CPU)"
    if device.type == "cuda" and importlib.util.find_spec("triton") is None:
        return "triton is not installed"
    if device.type not in ("cpu", "cuda"):
        return f"device {device.type}"
    return None


def precision(config: dict[str, Any], device) -> str:
    """bf16 or fp32: the spec's ``training.precision``, "auto" decided for this device by
    ``placement.precision``; recorded in ``config["placement"]``, so every report carries it."""
    import torch

    major = torch.cuda.get_device_capability(device)[0] if device.type == "cuda" else None
    chosen = placement.precision(major, device.type == "cpu" and cpu_bf16(), config.get("precision", "auto"))
    config.setdefault("placement", {})["precision"] = chosen
    return chosen


def cpu_bf16() -> bool:
    """Whether this CPU multiplies bf16 in hardware: AMX tiles or AVX512-BF16 dot products, as
    /proc/cpuinfo lists them (torch's own probes are private; no /proc/cpuinfo: assume none)."""
    return bool(placement.bf16_units())


def autocast(device, precision: str = "fp32"):
    """A context-manager factory for the trial's forward passes: bf16 autocast, or nothing."""
    import contextlib

    import torch

    if precision == "bf16":
        return lambda: torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext  # fp32, or bf16-true: the weights themselves are bf16


def micro_cap(config: dict[str, Any], model, device, precision: str, block: int, batch: int) -> int:
    """The largest micro-batch the trial may use: ``max_micro_batch``, or for ``auto`` the
    largest that fits its memory (``hpo.memory``); a CPU trial with a memory budget is held to it.

    Raises:
        OutOfMemory: auto, and not even one sequence fits.
    """
    budget, where = memory_budget(config, device)
    fixed = config["max_micro_batch"]
    if device.type == "cpu" and config.get("hold_memory"):  # resources.memory_gb: a hard limit
        memory.hold_to(budget)
    if fixed != "auto":
        return int(fixed)
    shape = memory.shape(model.config.to_dict(), sum(p.numel() for p in model.parameters()))
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    need = memory.trial_need(
        shape,
        block,
        precision,
        trainable,
        bool(config.get("gradient_checkpointing")),
        device.type == "cuda",
        held_best=config.get("save_best") == "deferred",
    )
    cap = need.largest_micro(budget)
    config["placement"]["memory_gb"] = round(budget / memory.GB, 2)
    if cap < 1:
        raise OutOfMemory(memory.too_big(need, budget, batch, 1, where))
    return cap


def memory_budget(config: dict[str, Any], device) -> tuple[float, str]:
    """(bytes, what they are) the trial may use: its GPU's share on CUDA, else the host memory
    the run planned for it (``memory_bytes``), else what the host has available now."""
    import torch

    if device.type == "cuda":
        free, total = torch.cuda.mem_get_info(device)
        share = total * min(1.0, float(config.get("gpus") or 1))
        return min(share, free + torch.cuda.memory_reserved(device)), f"its GPU share ({device})"
    planned = config.get("memory_bytes")
    if planned:
        return float(planned), "its memory share (resources.memory_gb or the node's memory / trials at once)"
    return memory.available_bytes(), "this machine's available memory"


def batching(batch_size: int, accumulation: int, max_micro_batch: int) -> tuple[int, int]:
    """(blocks per optimizer step, blocks per forward pass): a step sees ``batch_size x
    accumulation`` blocks, in passes of at most ``batch_size`` and ``max_micro_batch`` blocks."""
    step = batch_size * accumulation
    return step, micro_batch(step, min(batch_size, max_micro_batch))


def micro_batch(batch: int, limit: int) -> int:
    """The largest divisor of ``batch`` not above ``limit`` (gradient accumulation covers the rest)."""
    return max(d for d in range(1, min(batch, limit) + 1) if batch % d == 0)


class Threads:
    """The trial's torch threads follow ``threads_file`` (the driver raises the count at the tail
    of a study, when slots fall idle; ``placement.tail_threads``), read at most twice a second."""

    def __init__(self, path: str | None):
        import torch

        self.path, self.now, self.next = path, torch.get_num_threads(), 0.0
        self.base = self.now

    def poll(self) -> None:
        if not self.path or time.monotonic() < self.next:
            return
        self.next = time.monotonic() + 0.5
        try:
            with open(self.path) as f:
                n = int(f.read())
        except (OSError, ValueError):
            return
        n = max(self.base, min(n, os.cpu_count() or 1))
        if n != self.now:
            import torch

            torch.set_num_threads(n)
            self.now = n
