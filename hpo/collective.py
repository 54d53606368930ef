"""A data-parallel trial's process group, and what the trial loop does through it.

``Dist`` is one process's place in its trial's ranks; the trial loop calls its hooks (share the
rows, broadcast rank 0's weights, sum the gradients, evaluate over every rank, agree to stop). For
a single-process trial (``SINGLE``) each hook does nothing. The group meets over a TCP store that
listens on 127.0.0.1 only (``loopback_store``), and gloo/NCCL bootstrap over the loopback
interface; ``choose_devices`` picks NCCL when every rank has a CUDA device of its own, else gloo
on CPU. The processes themselves (spawned ranks, their lifetimes) are ``hpo/distributed.py``'s.
"""

from __future__ import annotations

import contextlib
import math
import os
import socket
from collections.abc import Callable, Sequence
from typing import Any

from hpo import placement

#: Seconds a collective (or the start of the ranks) may wait for a peer before the trial fails.
TIMEOUT_ENV = "HPO_DDP_TIMEOUT_S"
DEFAULT_TIMEOUT_S = 600.0
_BUCKET = 1 << 24  # elements per gradient all_reduce (64 MB of fp32)


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


def loopback_env() -> None:
    """gloo and NCCL bootstrap on the loopback interface, never on the host's outward address."""
    with contextlib.suppress(OSError):
        names = [name for _, name in socket.if_nameindex()]
        lo = "lo" if "lo" in names else next((n for n in names if n.startswith("lo")), None)
        if lo:
            os.environ["GLOO_SOCKET_IFNAME"] = lo
            os.environ["NCCL_SOCKET_IFNAME"] = lo


def init_group(backend: str, store, rank: int, world: int, timeout: float, device: str) -> None:
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


def leave_group(abort: bool = False) -> None:
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
