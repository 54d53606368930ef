"""The loss at the LM head, computed only where it is needed and without the vocabulary-wide
tensors the usual path builds.

The usual causal-LM loss takes ``model(ids).logits`` (batch x T x vocab), slices off the last
position (a copy), casts, and runs ``cross_entropy``, whose backward allocates and fills another
tensor of that size. On a small model that is a third of a training step. Here:

1. the model's body (``model.base_model``: embeddings, blocks, final norm) gives hidden states;
2. only the positions whose next-token label carries loss are kept (prompt tokens and padding
   never reach the vocabulary-sized matmul);
3. ``_linear_cross_entropy`` runs head matmul, log-sum-exp and the gradient of the loss with respect
   to logits in one pass over row chunks, in place, and keeps only the gradients of the hidden
   states and the head weights (``D``-wide, not ``vocab``-wide) for backward.

The split is checked once per model: the head's input must be the body's output, and the model's
logits the head's output bit for bit (a model that scales or soft-caps its logits, as Gemma 2 does,
or an adapter on the head, fails this), and the full-logits path is used otherwise. Measured on
the tiny GPT-2 (1 thread, 16 x 128 tokens): a training step 283 -> 197 ms together with the fused
GELU (``checkpoint.fuse_activation``); loss and gradients equal to 1e-6.
"""

from __future__ import annotations

import functools
import weakref
from typing import Any

CPU_CHUNK = 256  # rows of logits per pass on CPU: 256 x vocab floats stay in cache (measured best)
CUDA_CHUNK = 8192  # on a GPU, fewer larger kernels; the memory is chunk x vocab floats

_splits: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model -> (body, head) | None


def loss_sum(model, ids, labels, pos=None, label_smoothing: float = 0.0):
    """Summed next-token cross-entropy over the tokens whose label (``labels`` shifted by one) is
    not -100, with optional label smoothing; differentiable."""
    import torch.nn.functional as F

    split = _split(model)
    y = labels[:, 1:]
    if split is None:
        logits = _full_logits(model, ids, pos)[:, :-1]
        flat = logits.reshape(-1, logits.size(-1)).float()
        return F.cross_entropy(
            flat, y.reshape(-1), ignore_index=-100, reduction="sum", label_smoothing=label_smoothing
        )
    body, head = split
    keep = y != -100
    h = _hidden(body, ids, pos)[:, :-1][keep]
    return _linear_cross_entropy(h, head.weight, head.bias, y[keep], float(label_smoothing), _chunk(h))


def eval_sums(model, ids, labels, pos=None) -> tuple[float, int, int]:
    """(summed next-token loss, tokens whose argmax is the label, loss-carrying tokens); call
    under ``torch.inference_mode()``."""
    import torch

    split = _split(model)
    y = labels[:, 1:]
    keep = y != -100
    if split is None:
        logits = _full_logits(model, ids, pos)[:, :-1][keep].float()
        return _chunk_sums(logits, y[keep])
    body, head = split
    h, t = _hidden(body, ids, pos)[:, :-1][keep], y[keep]
    total, correct, step = 0.0, 0, _chunk(h)
    for i in range(0, len(h), step):
        logits = torch.nn.functional.linear(h[i : i + step], head.weight, head.bias).float()
        s, c, _ = _chunk_sums(logits, t[i : i + step])
        total, correct = total + s, correct + c
    return total, correct, int(keep.sum())


# ---------------------------------------------------------------- the split, checked once


def _split(model) -> tuple[Any, Any] | None:
    """(body, head) when ``head(body(x))`` is the model's own logits; None otherwise."""
    try:
        return _splits[model]
    except KeyError:
        pass
    _splits[model] = found = _checked_split(model)
    return found


def _checked_split(model) -> tuple[Any, Any] | None:
    import torch

    inner = model.get_base_model() if hasattr(model, "get_base_model") else model  # peft wraps
    body = getattr(inner, "base_model", None)
    head = inner.get_output_embeddings() if hasattr(inner, "get_output_embeddings") else None
    if body is None or body is inner or type(head) is not torch.nn.Linear:
        return None
    seen: dict[str, Any] = {}
    hook = head.register_forward_hook(lambda _m, args, out: seen.update(h=args[0], out=out))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            device = head.weight.device
            ids = torch.arange(1, 9, device=device).remainder(head.weight.shape[0]).unsqueeze(0)
            want = _full_logits(model, ids, None)
            got = _hidden(body, ids, None)
        same = _head_is_last(seen, want) and _close(seen["h"], got)
    except Exception:  # an unusual body (other arguments, other outputs): use the model as a whole
        same = False
    finally:
        hook.remove()
        model.train(was_training)
    return (body, head) if same else None


def _head_is_last(seen: dict[str, Any], logits) -> bool:
    """Whether the model's logits are its head's output as it is: no soft-capping, scaling or bias
    after the head (Gemma 2's ``final_logit_softcapping``, Cohere's ``logit_scale``). Compared
    bit for bit: with a random model's small logits a soft cap moves them less than any tolerance."""
    import torch

    out = seen.get("out")
    return out is not None and out.shape == logits.shape and torch.equal(out.float(), logits.float())


def _close(a, b) -> bool:
    """Whether the head's input is the body's output (the same computation, run twice)."""
    import torch

    return a.shape == b.shape and torch.allclose(a.float(), b.float(), rtol=1e-4, atol=1e-5)


def _inputs(ids, pos) -> dict[str, Any]:
    """Forward arguments: ``pos`` (positions restarting per packed example) only when given."""
    return {"input_ids": ids, "use_cache": False, **({"position_ids": pos} if pos is not None else {})}


def _full_logits(model, ids, pos):
    return model(**_inputs(ids, pos)).logits


def _hidden(body, ids, pos):
    return body(**_inputs(ids, pos)).last_hidden_state


def _chunk(h) -> int:
    return CUDA_CHUNK if h.device.type == "cuda" else CPU_CHUNK


def _chunk_sums(logits, targets) -> tuple[float, int, int]:
    import torch.nn.functional as F

    loss = float(F.cross_entropy(logits, targets, reduction="sum"))
    return loss, int((logits.argmax(-1) == targets).sum()), len(targets)


# ---------------------------------------------------------------- fused head + cross-entropy


def _compute_dtype(device_type: str, default):
    import torch

    return torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else default


def _fused_pass(h, weight, bias, targets, eps: float, chunk: int, need: tuple[bool, bool, bool]):
    """The loss and its gradients with respect to ``h``, ``weight`` and ``bias`` (float32; empty
    where ``need`` says no), one chunk of rows at a time:

    1. logits of the chunk, in the autocast dtype if autocast is on, as float32;
    2. ``lse = logsumexp(logits)``; loss += ``lse - (1 - eps) * logit_t - eps * mean(logits)``;
    3. in place, logits -> ``softmax - (1 - eps) * onehot(t) - eps / V`` (d loss / d logits);
    4. ``dh = G @ W``, ``dW += G^T @ h``, ``db += sum(G)``.
    """
    import torch

    cd = _compute_dtype(h.device.type, h.dtype)
    vocab, dev = weight.shape[0], h.device
    w = weight.to(cd)
    gh = torch.empty_like(h) if need[0] else torch.empty(0)
    gw = torch.zeros(weight.shape, dtype=torch.float32, device=dev) if need[1] else torch.empty(0)
    gb = torch.zeros(vocab, dtype=torch.float32, device=dev) if need[2] else torch.empty(0)
    loss = torch.zeros((), dtype=torch.float32, device=dev)
    rows = torch.arange(min(chunk, max(1, len(h))), device=dev)
    with torch.autocast(dev.type, enabled=False):
        for i in range(0, len(h), chunk):
            hc, t = h[i : i + chunk].to(cd), targets[i : i + chunk]
            g = (hc @ w.T).float()  # 1.
            if bias is not None:
                g += bias.float()
            lse = torch.logsumexp(g, -1)  # 2.
            loss += (lse - (1.0 - eps) * g.gather(1, t[:, None]).squeeze(1)).sum()
            if eps:
                loss -= eps * g.mean(-1).sum()
            g.sub_(lse[:, None]).exp_()  # 3.
            g[rows[: len(t)], t] -= 1.0 - eps
            if eps:
                g.sub_(eps / vocab)
            gc = g.to(cd)  # 4. (in the autocast dtype, as autocast's own backward would)
            if need[0]:
                gh[i : i + chunk] = (gc @ w).to(h.dtype)
            if need[1]:  # fp32: accumulated in place; bf16: a bf16 product added in fp32
                gw.addmm_(g.T, hc) if cd == torch.float32 else gw.add_(gc.T @ hc)
            if need[2]:
                gb += g.sum(0)
    return loss, gh, gw, gb


@functools.cache
def _function():
    """``sum_i CE(h_i @ W^T + b, t_i)`` as an autograd function: forward computes the loss and
    its gradients (``_fused_pass``); the loss is a scalar, so backward only scales them."""
    import torch

    class LinearCrossEntropy(torch.autograd.Function):
        @staticmethod
        def forward(ctx, h, weight, bias, targets, eps: float, chunk: int):
            need = (
                ctx.needs_input_grad[0],
                ctx.needs_input_grad[1],
                bias is not None and ctx.needs_input_grad[2],
            )
            loss, gh, gw, gb = _fused_pass(h, weight, bias, targets, eps, chunk, need)
            ctx.save_for_backward(gh, gw, gb)
            ctx.need = need
            ctx.dtypes = (weight.dtype, bias.dtype if bias is not None else None)
            return loss

        @staticmethod
        def backward(ctx, grad):
            gh, gw, gb = ctx.saved_tensors
            return (
                gh * grad.to(gh.dtype) if ctx.need[0] else None,
                (gw * grad).to(ctx.dtypes[0]) if ctx.need[1] else None,
                (gb * grad).to(ctx.dtypes[1]) if ctx.need[2] else None,
                None,
                None,
                None,
            )

    return LinearCrossEntropy


def _linear_cross_entropy(h, weight, bias, targets, eps: float, chunk: int):
    return _function().apply(h, weight, bias, targets, eps, chunk)
