"""The one exception tree of hpo.

Library code raises these; only the CLI turns them into a one-line message and an exit code.
Errors from third-party libraries are caught in the module that owns the dependency and
re-raised as one of these ``from`` the original.
"""

from __future__ import annotations


class HpoError(Exception):
    """Base class. ``exit_code`` is what the CLI exits with: 2 for bad input, 1 for runtime faults."""

    exit_code = 1


class SpecError(HpoError):
    """A study spec (or a CLI option standing in for a spec field) is invalid.

    Args:
        source: the file (or "--flag") the problems are in.
        problems: one line per problem, each naming the field path, the value and what is allowed.
    """

    exit_code = 2

    def __init__(self, source: str, problems: list[str]):
        self.source = source
        self.problems = list(problems)
        if len(self.problems) == 1:
            msg = f"{source}: {self.problems[0]}"
        else:
            lines = "\n".join(f"  - {p}" for p in self.problems)
            msg = f"{source}: {len(self.problems)} problems:\n{lines}"
        super().__init__(msg)


class UsageError(HpoError):
    """The command was asked for something that cannot be done as asked: a missing or existing
    study, a malformed storage URL, a bad --out. Bad input, so it exits 2."""

    exit_code = 2


class StorageError(HpoError):
    """The study storage cannot be reached or refused an operation (a runtime fault: exit 1)."""


class DataError(HpoError):
    """The dataset cannot be read or prepared. Bad content is input, so it exits 2."""

    exit_code = 2


class TrialError(HpoError):
    """A trial failed (NaN loss, out of memory, a bad model). The study goes on."""


class RunError(HpoError):
    """A run as a whole cannot go on (every trial fails for the same cause, Ray failed to start)."""


class OutOfMemory(TrialError):
    """A trial does not fit its memory: planned (it would not fit at micro-batch 1) or met (CUDA
    or CPU allocation failed, or its process was killed for memory). Its ``error_class`` is
    ``OutOfMemory``; the study goes on, and the configuration is not re-queued."""


class CudaError(TrialError):
    """A CUDA error after which the trial's process cannot use its GPU any more (an illegal memory
    access, a device-side assert): the trial fails, its process is replaced, the study goes on
    (``hpo/cudafault.py``)."""
