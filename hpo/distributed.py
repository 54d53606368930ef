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

What a rank does differently lives in ``Dist``, whose hooks the trial loop calls; for a
single-process trial (``SINGLE``) each hook does nothing. Every decision in the loop must be the
same on every rank (step counts, evaluation marks, early stopping): ranks that disagree about
the next collective wait for each other until the timeout.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import socket
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from hpo import placement
from hpo.errors import TrialError

log = logging.getLogger(__name__)

#: Seconds a collective (or the start of the ranks) may wait for a peer before the trial fails.
TIMEOUT_ENV = "HPO_DDP_TIMEOUT_S"
DEFAULT_TIMEOUT_S = 600.0
#: Config key that makes ``trial.run`` a spawned rank: {rank, world, port, backend, device, ...}.
RANK_KEY = "ddp_rank"
_BUCKET = 1 << 24  # elements per gradient all_reduce (64 MB of fp32)
_PR_SET_PDEATHSIG = 1


class Dist:
    """One process's place in its trial's ranks, and the hooks the trial loop calls.

    Args:
        rank: this process's rank (0 reports and saves).
        world: ranks in the trial (1: a single-process trial, every hook a no-op).
        backend: ``nccl`` or ``gloo`` (None for one process).
        device: the torch device this rank trains on (``cpu``, ``cuda``, ``cuda:N``).
        threads: torch CPU threads for this rank (the trial's ``cpus`` split between its ranks).
    """

    def __init__(
        self, rank: int = 0, world: int = 1, backend: str | None = None, device: str = "cpu", threads: int = 1
    ):
        self.rank, self.world, self.backend, self.device, self.threads = rank, world, backend, device, threads

    @property
    def is_main(self) -> bool:
        """Whether this rank reports and writes checkpoints (rank 0)."""
        return self.rank == 0

    def torch_device(self):
        """This rank's torch device (its CPU threads set)."""
        import torch

        torch.set_num_threads(self.threads)
        return torch.device(self.device)

    def _comm(self):
        """Where the collectives' tensors live: the rank's GPU for NCCL, the CPU for gloo."""
        import torch

        return torch.device(self.device) if self.backend == "nccl" else torch.device("cpu")

    def shard(self, rows):
        """This rank's share of ``rows`` (an optimizer step's blocks, or evaluation rows): every
        ``world``-th from its rank on. Every rank draws the same order, so the shares partition it."""
        return rows if self.world == 1 else rows[self.rank :: self.world]

    def start(self, model, seed: int) -> None:
        """Before the first step: every rank takes rank 0's weights (as DDP does at wrap time; a
        LoRA adapter's random init included), then ranks > 0 reseed torch so that their dropout
        masks differ from rank 0's (the data order has its own generator, seeded alike)."""
        if self.world == 1:
            return
        import torch
        import torch.distributed as td

        tensors = [*model.parameters(), *(b for b in model.buffers() if b.is_floating_point())]
        with torch.no_grad():
            for t in tensors:
                if t.is_contiguous():
                    td.broadcast(t.data, 0)
                else:
                    copy = t.data.contiguous()
                    td.broadcast(copy, 0)
                    t.data.copy_(copy)
        if self.rank:
            torch.manual_seed(seed * 1_000_003 + self.rank)

    def sync_grads(self, model, loss: float) -> float:
        """Sum every rank's gradients (and its share of the step's loss) into every rank; returns
        the step's loss.

        Each rank's loss is the token-sum of its blocks divided by the token count of the whole
        step (all ranks), so the sum over ranks is exactly the single-process loss and gradient;
        clipping, the L1 penalty, AdamW and the scheduler then do the same on every rank.

        Why an explicit all_reduce and not ``DistributedDataParallel``: DDP averages (each rank
        would scale its loss by W), needs a forward on every rank before every synchronised
        backward (the last step of an epoch can leave a rank without blocks), and wraps the
        model (``save_pretrained``, peft's merge and the checkpoint's names would see
        ``module.``). One bucketed all_reduce per optimizer step, after all micro-batches, also
        does what ``no_sync`` does for accumulation. The price: no overlap of communication with
        the backward pass.
        """
        if self.world == 1:
            return loss
        import torch
        import torch.distributed as td

        params = [p for p in model.parameters() if p.requires_grad]
        head = torch.tensor(
            [loss, *(float(p.grad is not None) for p in params)], dtype=torch.float64, device=self._comm()
        )
        td.all_reduce(head)
        # a parameter no rank touched keeps no gradient (AdamW skips it, as in one process)
        for p, touched in zip(params, head[1:].tolist(), strict=True):
            if touched and p.grad is None:
                p.grad = torch.zeros_like(p)
        for bucket in _buckets([p.grad for p in params if p.grad is not None]):
            flat = torch.cat([g.reshape(-1) for g in bucket])
            td.all_reduce(flat)
            offset = 0
            for g in bucket:
                g.copy_(flat[offset : offset + g.numel()].view_as(g))
                offset += g.numel()
        return float(head[0])

    def all_reduce_sums(self, *values: float) -> list[float]:
        """The sums of ``values`` over the ranks (float64), the same on every rank."""
        if self.world == 1:
            return [float(v) for v in values]
        import torch
        import torch.distributed as td

        t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=self._comm())
        td.all_reduce(t)
        return [float(x) for x in t.tolist()]

    def evaluate(self, metrics: Callable[..., dict], model, ids, labels, pos=None, **kwargs) -> dict:
        """``metrics(model, ids, labels, pos, **kwargs)`` (``trial.evaluate_metrics``) over every
        row, each rank evaluating its share: the loss and accuracy sums and the token counts are
        summed over the ranks, so every rank gets what one process evaluating all rows gets."""
        if self.world == 1:
            return metrics(model, ids, labels, pos, **kwargs)
        ids, labels = self.shard(ids), self.shard(labels)
        pos = self.shard(pos) if pos is not None else None
        m = metrics(model, ids, labels, pos, **kwargs)
        count = int((labels[:, 1:] != -100).sum())  # the tokens ``metrics`` averages over
        sums = self.all_reduce_sums(m["eval_loss"] * count, m["token_accuracy"] * count, count)
        loss_sum, correct, n = sums
        loss = loss_sum / max(1.0, n)
        return {
            **m,
            "eval_loss": loss,
            "perplexity": math.exp(min(loss, 50.0)),
            "token_accuracy": round(correct) / max(1.0, n),
        }

    def agree(self, flag: bool) -> bool:
        """Rank 0's ``flag`` on every rank (a decision the ranks must take together: stopping)."""
        if self.world == 1:
            return flag
        import torch
        import torch.distributed as td

        t = torch.tensor([1.0 if flag else 0.0], device=self._comm())
        td.broadcast(t, 0)
        return bool(t.item())


#: A single-process trial.
SINGLE = Dist()


def _buckets(grads: Sequence) -> list[list]:
    """Gradients grouped by dtype and device, in runs of at most ``_BUCKET`` elements."""
    out: list[list] = []
    groups: dict[tuple, list] = {}
    for g in grads:
        groups.setdefault((g.dtype, g.device), []).append(g)
    for group in groups.values():
        bucket: list = []
        size = 0
        for g in group:
            if bucket and size + g.numel() > _BUCKET:
                out.append(bucket)
                bucket, size = [], 0
            bucket.append(g)
            size += g.numel()
        if bucket:
            out.append(bucket)
    return out


def ranks(config: dict[str, Any]) -> contextlib.AbstractContextManager[Dist]:
    """The ranks ``trial.run(config, ...)`` trains as, for a ``with`` around the trial loop.

    One process (``gpus`` <= 1): ``SINGLE``. A spawned rank (``config[RANK_KEY]``): joins its
    trial's process group. Rank 0 of a data-parallel trial: starts the other ranks, joins the
    group, and on leaving the ``with`` ends them.

    Raises:
        TrialError: the batch does not split evenly, or a rank fails to start.
    """
    if config.get(RANK_KEY):
        return _Joined(config[RANK_KEY])
    world = placement.world_size(float(config.get("gpus") or 0))
    if world == 1:
        return contextlib.nullcontext(SINGLE)
    return _Launched(config, world)


def timeout_s() -> float:
    """How long a collective waits for a peer (``HPO_DDP_TIMEOUT_S``, default 600 s)."""
    try:
        return max(1.0, float(os.environ.get(TIMEOUT_ENV, DEFAULT_TIMEOUT_S)))
    except ValueError:
        return DEFAULT_TIMEOUT_S


def choose_devices(config: dict[str, Any], world: int) -> tuple[list[str], str, str | None]:
    """(a device per rank, the backend, a note when the trial falls back to CPUs).

    NCCL when every rank gets a CUDA device (``placement.trial_device`` with its rank) and torch
    has NCCL; otherwise gloo, every rank on CPU, with the reason as the note.
    """
    import torch
    import torch.distributed as td

    seen = config.get("placement") or {}
    cuda = torch.cuda.device_count() if torch.cuda.is_available() else 0
    gpus = float(config.get("gpus") or 0)
    picks = [
        placement.trial_device(gpus, seen.get("gpu_ids"), seen.get("cuda_visible_devices"), cuda, rank=r)
        for r in range(world)
    ]
    if all(p.device.startswith("cuda") for p in picks) and td.is_nccl_available():
        return [p.device for p in picks], "nccl", None
    why = next((p.note for p in picks if p.note), None) or "torch has no NCCL here: trained on CPU"
    return ["cpu"] * world, "gloo", f"{why}, data-parallel over {world} processes (gloo)"


def loopback_store(world: int, timeout: float):
    """Rank 0's TCP store, listening on 127.0.0.1 only, on a port the OS picks (``store.port``)."""
    import datetime

    import torch.distributed as td

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.bind(("127.0.0.1", 0))
        sock.listen(max(8, 2 * world))
        port = sock.getsockname()[1]
    except OSError:
        sock.close()
        raise
    fd = sock.detach()  # the store owns the listening socket from here on (and closes it)
    try:
        return td.TCPStore(
            "127.0.0.1",
            port,
            world,
            True,
            datetime.timedelta(seconds=timeout),
            wait_for_workers=False,
            master_listen_fd=fd,
        )
    except Exception:
        os.close(fd)
        raise


def _loopback_env() -> None:
    """gloo and NCCL bootstrap on the loopback interface, never on the host's outward address."""
    with contextlib.suppress(OSError):
        names = [name for _, name in socket.if_nameindex()]
        lo = "lo" if "lo" in names else next((n for n in names if n.startswith("lo")), None)
        if lo:
            os.environ["GLOO_SOCKET_IFNAME"] = lo
            os.environ["NCCL_SOCKET_IFNAME"] = lo


def _init_group(backend: str, store, rank: int, world: int, timeout: float, device: str) -> None:
    import datetime

    import torch
    import torch.distributed as td

    device_id = None
    if backend == "nccl":
        device_id = torch.device("cuda", torch.device(device).index or 0)
        torch.cuda.set_device(device_id)
    td.init_process_group(
        backend,
        store=store,
        rank=rank,
        world_size=world,
        timeout=datetime.timedelta(seconds=timeout),
        device_id=device_id,
    )


def _leave_group(abort: bool = False) -> None:
    """Leave the process group; after a failure abort it (NCCL's destroy may wait for work that a
    dead peer never finishes)."""
    import torch.distributed as td

    if not td.is_initialized():
        return
    with contextlib.suppress(Exception):  # a peer may be gone already: leaving is local
        aborter = getattr(td.distributed_c10d, "_abort_process_group", None)
        if abort and aborter is not None and td.get_backend() == "nccl":
            aborter()
        else:
            td.destroy_process_group()


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

    def __init__(self, config: dict[str, Any], world: int):
        self.config, self.world = config, world
        self.children: list[_Rank] = []
        self.store: Any = None

    def __enter__(self) -> Dist:
        config, world = self.config, self.world
        problem = placement.batch_problem([int(config["params"]["batch_size"])], world)
        if problem:
            raise TrialError(problem)
        devices, backend, note = choose_devices(config, world)
        seen = config.setdefault("placement", {})
        seen.update(device=devices[0], device_note=note, world_size=world, ddp_backend=backend)
        if note:
            log.warning("trial %s: %s", config.get("trial_number"), note)
        threads = max(1, int(float(config.get("cpus") or 1) / world + placement.EPS))
        timeout = timeout_s()
        try:
            _loopback_env()
            self.store = loopback_store(world, timeout)
            self._spawn(devices, backend, threads, timeout)
            self._wait_ready(timeout)
            _init_group(backend, self.store, 0, world, timeout, devices[0])
        except BaseException as e:  # SystemExit included: a stopped trial leaves no rank behind
            failure = self._end(e)
            if failure and not isinstance(e, TrialError) and isinstance(e, Exception):
                raise TrialError(failure) from e
            raise
        return Dist(0, world, backend, devices[0], threads)

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
                args=({**self.config, RANK_KEY: place}, send, os.getpid()),
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
                raise TrialError(f"the trial's ranks did not start within {timeout:g} s ({TIMEOUT_ENV})")
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
        _leave_group(abort=exc is not None)
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

    def __enter__(self) -> Dist:
        import datetime

        import torch.distributed as td

        p = self.place
        _send(("ready",))
        store = td.TCPStore(
            "127.0.0.1", int(p["port"]), int(p["world"]), False, datetime.timedelta(seconds=p["timeout_s"])
        )
        _init_group(p["backend"], store, p["rank"], p["world"], p["timeout_s"], p["device"])
        return Dist(p["rank"], p["world"], p["backend"], p["device"], p["threads"])

    def __exit__(self, kind, exc, tb) -> None:
        _leave_group()


def _send(msg: tuple) -> None:
    if _PIPE is not None:
        with contextlib.suppress(OSError, ValueError):
            _PIPE.send(msg)


def _no_report(metrics: dict[str, Any]) -> None:
    """Ranks > 0 report nothing: rank 0 reports the trial."""


def _spawned(config: dict[str, Any], pipe, parent: int) -> None:
    """The body of a spawned rank: the trial loop as rank ``config[RANK_KEY]["rank"]``."""
    global _PIPE
    _die_with(parent)
    _PIPE = pipe
    _loopback_env()
    logging.basicConfig(level=logging.WARNING)
    from hpo import trial

    try:
        trial.run(config, _no_report)
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
