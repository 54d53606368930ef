"""CUDA errors that leave a process unable to use its GPU ("sticky" errors), told from the rest.

After an illegal memory access, a device-side assert or a failed kernel launch, the CUDA driver
marks the process's context as corrupt: every later CUDA call in that process fails with the same
error, so every later trial of a reused trial process would fail too. Such a trial fails with
``CudaError`` and its process is replaced (``hpo/warmstart.py``: a forked trial process exits
after it reports the error; ``trainable.run_trial``: Ray Tune ends the Ray process of a trial that
errored). An out-of-memory error is not one of these: the allocator recovers, and the process
serves the next trial.

Pure functions of an error's class name and message (what a forked trial process sends back),
so they are tested without a GPU.
"""

from __future__ import annotations

from hpo.errors import CudaError

#: What CUDA says (runtime messages, driver and runtime enum names, cuBLAS/cuDNN statuses) for the
#: errors after which the context is unusable; compared in lower case.
STICKY = (
    "an illegal memory access was encountered",  # cudaErrorIllegalAddress (700)
    "device-side assert triggered",  # cudaErrorAssert (710)
    "unspecified launch failure",  # cudaErrorLaunchFailure (719)
    "an illegal instruction was encountered",  # cudaErrorIllegalInstruction (715)
    "misaligned address",  # cudaErrorMisalignedAddress (716)
    "invalid program counter",  # cudaErrorInvalidPc (718)
    "hardware stack error",  # cudaErrorHardwareStackError (714)
    "operation not supported on global/shared address space",  # cudaErrorInvalidAddressSpace (717)
    "the launch timed out and was terminated",  # cudaErrorLaunchTimeout (702)
    "uncorrectable ecc error encountered",  # cudaErrorECCUncorrectable (214)
    "uncorrectable nvlink error",  # cudaErrorNvlinkUncorrectable (220)
    "cudaerrorillegaladdress",
    "cudaerrorassert",
    "cudaerrorlaunchfailure",
    "cuda_error_illegal_address",  # the driver API's names (Triton, CuPy)
    "cuda_error_assert",
    "cuda_error_launch_failed",
    "cuda_error_illegal_instruction",
    "cuda_error_misaligned_address",
    "cublas_status_execution_failed",  # a cuBLAS/cuDNN kernel that faulted
    "cudnn_status_execution_failed",
)
#: Exception classes that are CUDA errors whatever their message says (torch >= 2.8 raises
#: ``torch.AcceleratorError`` for CUDA runtime errors; earlier versions a ``RuntimeError``).
CUDA_CLASSES = ("AcceleratorError", "CudaError")


def sticky(error_class: str, message: str) -> bool:
    """Whether an error (its class name and message) leaves the process's CUDA context unusable.

    Args:
        error_class: the exception's class name (``type(e).__name__``).
        message: its message (``str(e)``; any line may say it).

    Returns:
        True for the sticky errors of ``STICKY``, from an error that names CUDA (in its class or
        message); False for everything else, out-of-memory errors included.
    """
    text = message.lower()
    if error_class not in CUDA_CLASSES and not any(name in text for name in ("cuda", "cublas", "cudnn")):
        return False
    return any(phrase in text for phrase in STICKY)


def fault(error: BaseException) -> CudaError | None:
    """The ``CudaError`` a trial fails with when ``error`` is a sticky CUDA error; None otherwise
    (and for an error that already says ``CudaError``, as a forked trial process's does)."""
    kind = getattr(error, "error_class", type(error).__name__)
    if kind == CudaError.__name__ or not sticky(kind, str(error)):
        return None
    return CudaError(describe(str(error)))


def describe(message: str) -> str:
    """The one-line message of a trial that hit a sticky CUDA error."""
    lines = [line.strip() for line in message.splitlines() if line.strip()] or [""]
    first = next((line for line in lines if any(p in line.lower() for p in STICKY)), lines[0])
    return (
        f"{first[:300]} (a CUDA error the process cannot recover from: its trial process is "
        "replaced; CUDA_LAUNCH_BLOCKING=1 shows where it happened)"
    )
