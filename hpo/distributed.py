"""Data-parallel trials: a trial that holds W > 1 GPUs (``gpus_per_trial: W``) trains as W
processes (ranks) of one torch process group, and its global batch stays the sampled
``batch_size`` (times the accumulation steps).

The Ray trial process is rank 0: the only rank that reports, writes checkpoints and moves the
BEST pointer. It starts ranks 1..W-1 itself with multiprocessing's *spawn* context (Ray runs the
trial in a thread of its worker, and forking a threaded process is unsafe); each runs the same
``trial.run`` with a report that does nothing. The ranks meet over a TCP store that listens on
127.0.0.1 only, on a port the OS picks (the socket is bound before the store takes it: no race
with a neighbouring trial), and gloo/NCCL bootstrap over the loopback interface. Backend: NCCL
when every rank has a CUDA device of its own (rank r trains on the trial's r-th GPU), else gloo
with every rank on CPU (logical GPUs with no CUDA device behind them: the CPU fallback, noted
with the trial like a single-process trial's).

Lifetimes: the spawned ranks end with rank 0, however it ends: a return, an exception, Ray
stopping the trial (ASHA: ``SystemExit`` raised in its thread at a report), or SIGKILL (each
spawned rank asks Linux for SIGKILL when its parent goes, ``PR_SET_PDEATHSIG``, and watches its
parent's pid as well). A collective whose peer is gone fails: gloo sees the socket close at once,
and both backends time out after ``HPO_DDP_TIMEOUT_S`` (default 600 s). Rank 0 then fails the
trial with the failed rank's own error (``out of memory: ... (rank 1 of 2)``).

What a rank does differently lives in ``collective.Dist``, whose hooks the trial loop calls; for
a single-process trial (``collective.SINGLE``) each hook does nothing. Every decision in the loop must be the
same on every rank (step counts, evaluation marks, early stopping): ranks that disagree about
the next collective wait for each other until the timeout.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from hpo import collective, placement
from hpo.errors import TrialError

log = logging.getLogger(__name__)

#: Config key that makes ``trial.run`` a spawned rank: {rank, world, port, backend, device, ...}.
RANK_KEY = "ddp_rank"
_PR_SET_PDEATHSIG = 1

#: What each rank runs: ``trial.run(config, report)``, passed in so that this module needs no
#: import of the trial loop that imports it.
Main = Callable[[dict[str, Any], Callable[[dict[str, Any]], None]], Any]


def ranks(config: dict[str, Any], main: Main) -> contextlib.AbstractContextManager[collective.Dist]:
    """The ranks ``main(config, report)`` (``trial.run``) trains as, for a ``with`` around the
    trial loop.

    One process (``gpus`` <= 1): ``collective.SINGLE``. A spawned rank (``config[RANK_KEY]``): joins its
    trial's process group. Rank 0 of a data-parallel trial: starts the other ranks, each running
    ``main`` (a module-level function: spawn pickles it by name), joins the group, and on leaving
    the ``with`` ends them.

    Raises:
        TrialError: the batch does not split evenly, or a rank fails to start.
    """
    if config.get(RANK_KEY):
        return _Joined(config[RANK_KEY])
    world = placement.world_size(float(config.get("gpus") or 0))
    if world == 1:
        return contextlib.nullcontext(collective.SINGLE)
    return _Launched(config, world, main)


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0][:500]


# ---------------------------------------------------------------- rank 0


@dataclass
class _Rank:
    """A spawned rank, seen from rank 0: its process and the pipe it reports through."""

    rank: int
    process: Any
    pipe: Any
    ready: bool = False
    error: str | None = None
    messages: list[tuple] = field(default_factory=list)

    def read(self) -> None:
        """Take what the rank has sent: "ready", or ("error", class, message)."""
        with contextlib.suppress(EOFError, OSError):
            while self.pipe.poll():
                msg = self.pipe.recv()
                if msg[0] == "ready":
                    self.ready = True
                elif msg[0] == "error" and self.error is None:
                    self.error = msg[2]

    def failure(self, world: int) -> str | None:
        """Why this rank failed, if it did: its own error, or how it died."""
        self.read()
        if self.error:
            return f"{self.error} (rank {self.rank} of {world})"
        code = self.process.exitcode
        if code is not None and code != 0:
            how = f"killed by signal {-code}" if code < 0 else f"exit code {code}"
            return f"rank {self.rank} of {world} died ({how})"
        return None


class _Launched:
    """Rank 0 of a data-parallel trial: spawns ranks 1..W-1, joins the group, ends them on exit."""

    def __init__(self, config: dict[str, Any], world: int, main: Main):
        self.config, self.world, self.main = config, world, main
        self.children: list[_Rank] = []
        self.store: Any = None

    def __enter__(self) -> collective.Dist:
        config, world = self.config, self.world
        problem = placement.batch_problem([int(config["params"]["batch_size"])], world)
        if problem:
            raise TrialError(problem)
        devices, backend, note = collective.choose_devices(config, world)
        seen = config.setdefault("placement", {})
        seen.update(device=devices[0], device_note=note, world_size=world, ddp_backend=backend)
        if note:
            log.warning("trial %s: %s", config.get("trial_number"), note)
        threads = max(1, int(float(config.get("cpus") or 1) / world + placement.EPS))
        timeout = collective.timeout_s()
        try:
            collective.loopback_env()
            self.store = collective.loopback_store(world, timeout)
            self._spawn(devices, backend, threads, timeout)
            self._wait_ready(timeout)
            collective.init_group(backend, self.store, 0, world, timeout, devices[0])
        except BaseException as e:  # SystemExit included: a stopped trial leaves no rank behind
            failure = self._end(e)
            if failure and not isinstance(e, TrialError) and isinstance(e, Exception):
                raise TrialError(failure) from e
            raise
        return collective.Dist(0, world, backend, devices[0], threads)

    def __exit__(self, kind, exc, tb) -> None:
        failure = self._end(exc)
        if exc is None:
            if failure:
                log.warning("trial %s: %s after the trial's end", self.config.get("trial_number"), failure)
            return
        # a peer's failure shows in rank 0 as a failed collective: fail with the peer's own error;
        # rank 0's own errors (out of memory, NaN, ...) and Ray's stop (SystemExit) go through
        if failure and isinstance(exc, Exception) and not _own_error(exc):
            raise TrialError(failure) from exc

    def _spawn(self, devices: list[str], backend: str, threads: int, timeout: float) -> None:
        import torch.multiprocessing as mp

        ctx = mp.get_context("spawn")
        for r in range(1, self.world):
            receive, send = ctx.Pipe(duplex=False)
            place = {
                "rank": r,
                "world": self.world,
                "port": self.store.port,
                "backend": backend,
                "device": devices[r],
                "threads": threads,
                "timeout_s": timeout,
            }
            process = ctx.Process(
                target=_spawned,
                args=(self.main, {**self.config, RANK_KEY: place}, send, os.getpid()),
                name=f"hpo-trial-{self.config.get('trial_number')}-rank-{r}",
                daemon=True,
            )
            with _plain_main():
                process.start()
            send.close()  # the child holds the only writing end: EOF here when it is gone
            self.children.append(_Rank(r, process, receive))

    def _wait_ready(self, timeout: float) -> None:
        """Wait until every spawned rank is about to join the group (a rank that dies while
        starting fails the trial at once instead of leaving rank 0 waiting in the rendezvous)."""
        deadline = time.monotonic() + timeout
        while not all(c.ready for c in self.children):
            for c in self.children:
                c.read()
                if not c.ready and (c.error or not c.process.is_alive()):
                    raise TrialError(c.failure(self.world) or f"rank {c.rank} of {self.world} ended early")
            if time.monotonic() > deadline:
                raise TrialError(
                    f"the trial's ranks did not start within {timeout:g} s ({collective.TIMEOUT_ENV})"
                )
            time.sleep(0.05)

    def _end(self, exc: BaseException | None) -> str | None:
        """End the spawned ranks and leave the group; returns the first rank's failure, if any.

        After a normal end the ranks are finishing too: they get time to exit. After an error a
        rank that caused it gets a second to say so. Then, and at once when Ray stops the trial
        (SystemExit), every rank left is terminated (SIGTERM, then SIGKILL)."""
        if exc is None:
            deadline = time.monotonic() + 60.0
            for c in self.children:
                c.process.join(timeout=max(0.1, deadline - time.monotonic()))
        elif isinstance(exc, Exception):
            deadline = time.monotonic() + 1.0
            while time.monotonic() < deadline and not any(c.failure(self.world) for c in self.children):
                time.sleep(0.05)
        failure = next((f for c in self.children if (f := c.failure(self.world))), None)
        for c in self.children:
            if c.process.is_alive():
                c.process.terminate()
        for c in self.children:
            c.process.join(timeout=3.0)
            if c.process.is_alive():
                c.process.kill()
                c.process.join(timeout=3.0)
            with contextlib.suppress(OSError):
                c.pipe.close()
        self.children = []
        collective.leave_group(abort=exc is not None)
        self.store = None
        return failure


@contextlib.contextmanager
def _plain_main():
    """Start a spawned rank without re-running this process's ``__main__`` in it.

    Spawn re-imports the parent's main script in the child (as ``__mp_main__``) unless it is a
    package's ``__main__``: for a Ray worker that is Ray's worker script (importing Ray for
    nothing), for a script without an ``if __name__ == "__main__"`` guard it is the whole script
    again. The rank's code lives in this module, so while ``start()`` records what the child
    prepares, ``__main__`` is an empty module."""
    import types

    main = sys.modules.get("__main__")
    sys.modules["__main__"] = types.ModuleType("__main__")
    try:
        yield
    finally:
        if main is not None:
            sys.modules["__main__"] = main


def _own_error(e: BaseException) -> bool:
    """Errors rank 0 raises of itself (not a collective broken by a peer)."""
    return isinstance(e, TrialError) or type(e).__name__ == "OutOfMemoryError"


# ---------------------------------------------------------------- ranks 1..W-1

_PIPE: Any = None  # a spawned rank's pipe to rank 0


class _Joined:
    """A spawned rank: joins its trial's group on entry, leaves it on exit."""

    def __init__(self, place: dict[str, Any]):
        self.place = place

    def __enter__(self) -> collective.Dist:
        import datetime

        import torch.distributed as td

        p = self.place
        _send(("ready",))
        store = td.TCPStore(
            "127.0.0.1", int(p["port"]), int(p["world"]), False, datetime.timedelta(seconds=p["timeout_s"])
        )
        collective.init_group(p["backend"], store, p["rank"], p["world"], p["timeout_s"], p["device"])
        return collective.Dist(p["rank"], p["world"], p["backend"], p["device"], p["threads"])

    def __exit__(self, kind, exc, tb) -> None:
        collective.leave_group()


def _send(msg: tuple) -> None:
    if _PIPE is not None:
        with contextlib.suppress(OSError, ValueError):
            _PIPE.send(msg)


def _no_report(metrics: dict[str, Any]) -> None:
    """Ranks > 0 report nothing: rank 0 reports the trial."""


def _spawned(main: Main, config: dict[str, Any], pipe, parent: int) -> None:
    """The body of a spawned rank: the trial loop (``main``) as rank ``config[RANK_KEY]["rank"]``."""
    global _PIPE
    _die_with(parent)
    _PIPE = pipe
    collective.loopback_env()
    logging.basicConfig(level=logging.WARNING)
    try:
        main(config, _no_report)
    except BaseException as e:  # noqa: BLE001 - every failure goes back to rank 0, which reports it
        _send(("error", type(e).__name__, _first_line(e)))
        with contextlib.suppress(Exception):
            pipe.close()
        sys.stderr.flush()
        os._exit(1)
    with contextlib.suppress(Exception):
        pipe.close()


def parent_death_signal(parent: int) -> None:
    """End this process when ``parent`` ends, even by SIGKILL (Linux's parent-death signal); exit
    at once if it has already gone."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(Exception):
            import ctypes
            import signal

            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
    if os.getppid() != parent:  # the parent went before the signal was asked for
        os._exit(1)


def _die_with(parent: int) -> None:
    """End this process when ``parent`` (rank 0) ends, even by SIGKILL: the parent-death signal,
    and a thread that watches the parent's pid (other systems, and the moment before)."""
    parent_death_signal(parent)

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, name="hpo-parent-watch", daemon=True).start()
