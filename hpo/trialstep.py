"""The pieces of a trial's optimizer step (``hpo/trial.py``'s loop calls them in order): AdamW's
parameter groups, the learning-rate schedule, the L1 penalty's matrices and the options of one
step, the step itself (micro-batches accumulated to one batch's mean loss) and the summed loss.

torch, numpy and transformers are imported inside the functions, as the loop uses them.
"""

from __future__ import annotations

from typing import Any

from hpo import collective, lmhead


def param_groups(model, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW groups: decay on matrices, none on biases and norm weights (1-D tensors)."""
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim < 2]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def schedule(opt, name: str, warmup_ratio: float, total_steps: int):
    """Linear warmup over ``warmup_ratio`` of the steps, then ``name``'s decay (get_scheduler)."""
    from transformers import get_scheduler

    return get_scheduler(
        name, opt, num_warmup_steps=int(warmup_ratio * total_steps), num_training_steps=max(1, total_steps)
    )


def matrices(model) -> list:
    """The weights the L1 penalty applies to: trainable matrices (as weight decay; no biases, norms)."""
    return [p for p in model.parameters() if p.requires_grad and p.ndim >= 2]


class LossOptions:
    """What shapes one optimizer step besides the data."""

    def __init__(self, label_smoothing: float, l1: float, max_grad_norm: float, matrices: list):
        self.label_smoothing, self.l1, self.max_grad_norm = float(label_smoothing), float(l1), max_grad_norm
        self.matrices = matrices


def step(
    model, opt, sched, arrays, idx, micro, device, autocast, o: LossOptions, dist=collective.SINGLE
) -> tuple[float, int]:
    """One optimizer step over the blocks ``idx``, accumulating micro-batches; the loss is the
    mean over the batch's loss-carrying tokens, exactly as if it had been one forward pass, plus
    ``l1 * sum(|w|)`` over the weight matrices. Returns the (unpenalized) loss and token count."""
    import numpy as np
    import torch

    labels_arr = arrays[1]  # arrays: ids, labels, positions
    labels_np = np.asarray(labels_arr[idx])
    n_tokens = int((labels_np[:, 1:] != -100).sum())
    idx, labels_np = dist.shard(idx), dist.shard(labels_np)  # data-parallel: this rank's blocks
    total = 0.0
    for i in range(0, len(idx), micro):
        part = idx[i : i + micro]
        ids, pos = (torch.from_numpy(np.asarray(a[part], dtype=np.int64)).to(device) for a in arrays[::2])
        labels = torch.from_numpy(labels_np[i : i + micro].astype(np.int64)).to(device)
        with autocast():
            loss = loss_sum(model, ids, labels, pos, o.label_smoothing) / max(1, n_tokens)
        loss.backward()
        total += float(loss.detach())
    total = dist.sync_grads(model, total)  # data-parallel: sum the ranks' gradients and losses
    if o.l1:
        (o.l1 * sum(w.abs().sum() for w in o.matrices)).backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), o.max_grad_norm)
    opt.step()
    sched.step()
    opt.zero_grad(set_to_none=True)
    return total, n_tokens


def loss_sum(model, ids, labels, pos=None, label_smoothing: float = 0.0):
    """Summed next-token cross-entropy over tokens whose label is not -100 (``lmhead``: the head
    runs only on those tokens; ``pos``, positions restarting at 0 per packed example, makes
    transformers mask attention block-diagonally, so an example never sees its neighbours)."""
    return lmhead.loss_sum(model, ids, labels, pos, label_smoothing)
