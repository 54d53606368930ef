"""Whether a child forked from this process could use CUDA: the warm process (``hpo/warmstart.py``)
asks after its imports, and lets trials import for themselves when the answer is no. CUDA does not
survive a fork once the driver is initialized in the parent; the driver lives in ``libcuda.so``,
so the check reads this process's memory map and, when the driver is mapped, forks a probe child
that must initialize it."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

PROBE_TIMEOUT_S = 60.0  # how long the probe fork may take to start the CUDA driver


def cuda_driver_started(maps: str = "/proc/self/maps") -> str | None:
    """Why a child forked from this process now could not use CUDA, or None if it could.

    CUDA does not survive a fork: once the driver is initialized (``cuInit``) in a process, its
    forked children fail at their first CUDA call. torch's own lazy initialization is one way
    (``torch.cuda.is_initialized``), but any import may start the driver without torch knowing
    (a ``cudaGetDeviceCount`` when NVML is missing, a library that probes the GPU). The driver
    lives in ``libcuda.so``: when it is not mapped into this process it cannot have started; when
    it is, a probe child is forked and must initialize it (``cuInit``, ``cuDeviceGetCount``).

    Args:
        maps: this process's memory map (``/proc/self/maps``; a test passes another file).
    """
    import torch

    if torch.cuda.is_initialized():
        return "torch initialized CUDA"
    try:
        driver = cuda_driver(Path(maps).read_text())
    except OSError:
        return None  # no /proc: the platform check (``wanted``) already ruled this out
    if driver is None or _child_starts_cuda(driver):
        return None
    return f"the CUDA driver was started ({driver} is loaded and a forked child cannot initialize it)"


def cuda_driver(maps: str) -> str | None:
    """The path of the CUDA driver library (``libcuda.so*``) in a ``/proc/PID/maps`` text, if
    mapped (``libcudart``, the runtime, is not the driver: it loads the driver on first use)."""
    for line in maps.splitlines():
        fields = line.split(maxsplit=5)
        if len(fields) == 6 and os.path.basename(fields[5]).startswith("libcuda.so"):
            return fields[5].strip()
    return None


def _child_starts_cuda(driver: str) -> bool:
    """Fork a child that initializes the CUDA driver and counts its devices; True if it could."""
    pid = os.fork()
    if pid == 0:  # the child: exit code 0 when the driver answered
        code = 1
        try:
            import ctypes

            lib, count = ctypes.CDLL(driver), ctypes.c_int(0)
            code = 0 if lib.cuInit(0) == 0 and lib.cuDeviceGetCount(ctypes.byref(count)) == 0 else 1
        finally:
            os._exit(code)
    deadline = time.monotonic() + PROBE_TIMEOUT_S
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status) == 0
        time.sleep(0.01)
    os.kill(pid, signal.SIGKILL)  # a hung driver: as unusable as a failing one
    os.waitpid(pid, 0)
    return False
