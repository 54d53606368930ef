"""Test hook: ``HPO_TEST_FAIL=N:kind`` makes trial N fail at its second step the way a real one
fails (out of memory, a NaN loss, a sticky CUDA error, any other error), so the fault tests drive
the real stack."""

from __future__ import annotations

import os
from typing import Any

from hpo.errors import TrialError

FAIL_ENV = "HPO_TEST_FAIL"  # "<trial_number>:<oom|nan|cuda|error>" ("*": every trial) makes that trial fail


def injected_failure(config: dict[str, Any], step: int) -> None:
    """Test-only hook (env ``HPO_TEST_FAIL=N:kind``): make trial N fail at its second step."""
    spec = os.environ.get(FAIL_ENV)
    if not spec or step != 1:
        return
    number, _, kind = spec.partition(":")
    if number != "*" and int(number) != config.get("trial_number"):
        return
    import torch

    if kind == "oom":
        raise torch.OutOfMemoryError(
            "injected by HPO_TEST_FAIL: CUDA out of memory. Tried to allocate 2.00 GiB"
        )
    if kind == "nan":
        raise TrialError("training loss became nan at step 2 (injected by HPO_TEST_FAIL)")
    if kind == "cuda":  # a sticky CUDA error: a real device-side assert on a GPU
        _device_side_assert()
    raise RuntimeError(f"injected failure ({spec})")


def _device_side_assert() -> None:
    """Break this process's CUDA context as a faulty kernel does (an index out of bounds asserts on
    the device); where CUDA is not in use, raise the error text CUDA would give."""
    import torch

    if torch.cuda.is_initialized():
        x = torch.zeros(1, device="cuda")
        x[torch.tensor([1], device="cuda")] = 1.0  # out of bounds: checked by the kernel
        torch.cuda.synchronize()  # raises "CUDA error: device-side assert triggered"
        raise RuntimeError("injected failure: the device-side assert did not fire (HPO_TEST_FAIL)")
    raise RuntimeError("CUDA error: an illegal memory access was encountered (injected by HPO_TEST_FAIL)")
