"""Dropout on CPU at a fraction of torch's cost, for the trial loop.

torch draws a CPU dropout mask one Mersenne-Twister number per element (``bernoulli_``), then
multiplies by a bool mask through a type-promoting kernel, forward and backward. On the tiny
GPT-2 that was a fifth of a training step (16 x 128 tokens, dropout 0.1: 43 ms for the masks and
30 ms for the multiplies). Here a mask is 16-bit random numbers cut from 64-bit draws (a quarter
of the draws) compared with a threshold, written straight out as 0/1 in the tensor's own dtype
(one pass), so forward and backward are each one plain multiply: 4x cheaper than ``masked_fill``
(measured 1.6 ms vs 0.3 ms a million bf16 elements; a bf16 tiny-model step 177 -> 163 ms).
The drop probability is ``p`` rounded to 1/65,536, and the kept values are scaled by the exact
inverse of the rounded keep probability, applied as a float (never rounded to bf16), so the
expectation is unchanged. In attention the ``1/(1-p)`` scale is applied to the (head-dim wide)
output instead of the (sequence-wide) probabilities.

Used where a model drops out on CPU: its ``nn.Dropout`` modules are swapped for ``FastDropout``,
and when it runs transformers' ``sdpa`` attention (on CPU, SDPA with dropout falls back to its
math kernel anyway) it runs ``attention``, which is that math kernel with this mask. Anything
else (a GPU, no dropout, position biases, soft-capping) goes the usual way.

Why it stays although it uses transformers' internal helpers (``repeat_kv``,
``sdpa_attention_forward``): on SmolLM2-135M (batch 8 x 256, dropout 0.1, bf16 autocast, 2 cores)
the attention with dropout costs 405 ms a layer forward and backward through sdpa and 237 ms
here, ~5 s of a ~55 s step (~9%). docs/dependencies.md lists it; tests/test_private_apis.py fails
when transformers moves the helpers, and a transformers of another major version keeps sdpa.
"""

from __future__ import annotations

import functools
import logging
import math

log = logging.getLogger(__name__)

ATTENTION = "hpo_sdpa"  # the transformers attention implementation name registered here
LEVELS = 1 << 16  # mask resolution: p is rounded to a multiple of 1/65,536


def keep_mask(shape, p: float, dtype):
    """(a CPU tensor of ``shape`` and ``dtype``: 0 with probability ``p`` rounded to 1/65,536, else 1;
    the scale ``1/(1-p)`` of the rounded ``p``) for dropping out: ``x * keep * scale``."""
    import torch

    n = math.prod(shape)
    dropped = round(p * LEVELS)
    bits = torch.empty((n + 3) // 4, dtype=torch.int64).random_(-(2**63), 2**63 - 1)
    keep = torch.empty(shape, dtype=dtype)
    torch.ge(bits.view(torch.int16)[:n].view(shape), dropped - LEVELS // 2, out=keep)  # one pass
    return keep, LEVELS / (LEVELS - dropped)


def drop(x, p: float):
    """``x`` with dropout ``p`` applied (training mode), differentiable."""
    if p <= 0.0:
        return x
    if p >= 1.0:
        return x * 0.0
    keep, scale = keep_mask(x.shape, p, x.dtype)
    return (x * keep).mul_(scale)  # the scale as a float: no bf16 rounding of 1/(1-p)


@functools.cache
def _module_class():
    import torch

    class FastDropout(torch.nn.Dropout):
        """``nn.Dropout`` with the cheap mask on CPU (the usual path elsewhere)."""

        def forward(self, x):
            if not self.training or self.p == 0.0 or x.device.type != "cpu" or self.inplace:
                return super().forward(x)
            return drop(x, self.p)

    return FastDropout


def speed_up(model) -> int:
    """Give a CPU model the cheap dropout: its ``nn.Dropout`` modules become ``FastDropout`` and
    transformers' ``sdpa`` attention becomes ``attention``. Returns how many modules changed."""
    import torch

    cls = _module_class()
    changed = 0
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if type(child) is torch.nn.Dropout:
                fast = cls(child.p, child.inplace)
                setattr(module, name, fast.train(child.training))
                changed += 1
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    if getattr(inner.config, "_attn_implementation", None) == "sdpa" and _register():
        inner.set_attn_implementation(ATTENTION)
        changed += 1
    return changed


#: transformers major versions whose internal sdpa helpers ``attention`` was written against
TESTED_TRANSFORMERS = (5,)


@functools.cache
def _register() -> bool:
    """Make ``ATTENTION`` a transformers attention implementation with sdpa's masks, on a
    transformers of a tested major version (else sdpa stays, with a warning)."""
    import transformers

    major = int(transformers.__version__.split(".")[0])
    try:
        from transformers import AttentionInterface
        from transformers.integrations import sdpa_attention
        from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

        helpers: tuple = (sdpa_attention.repeat_kv, sdpa_attention.sdpa_attention_forward)
    except (ImportError, AttributeError):
        helpers = ()
    if major not in TESTED_TRANSFORMERS or len(helpers) != 2:
        log.warning(
            "transformers %s: hpo.dropout's CPU attention not used (written for %s.x); trials use sdpa",
            transformers.__version__,
            "/".join(map(str, TESTED_TRANSFORMERS)),
        )
        return False
    AttentionInterface.register(ATTENTION, attention)
    AttentionMaskInterface.register(ATTENTION, sdpa_mask)
    return True


def attention(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None, **kwargs):
    """transformers' sdpa attention, except with dropout on CPU: softmax(q k^T * scale + mask),
    the cheap dropout, times v (what SDPA's math kernel computes, with torch's mask)."""
    import torch
    from transformers.integrations.sdpa_attention import repeat_kv, sdpa_attention_forward

    plain = (
        dropout <= 0.0
        or query.device.type != "cpu"
        or kwargs.get("position_bias") is not None
        or kwargs.get("softcap") is not None
        or key.shape[-1] != value.shape[-1]
        or query.shape[2] != key.shape[2]
    )
    if plain:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout, scaling, **kwargs)
    groups = getattr(module, "num_key_value_groups", 1)
    key, value = repeat_kv(key, groups), repeat_kv(value, groups)
    scale = scaling if scaling is not None else 1.0 / math.sqrt(query.shape[-1])
    scores = torch.matmul(query * scale, key.transpose(-1, -2))
    if attention_mask is None:
        causal = kwargs.get("is_causal")
        if causal if causal is not None else getattr(module, "is_causal", True):
            attention_mask = _causal(query.shape[2], query.device)
    if attention_mask is not None:
        scores = scores + _additive(attention_mask, scores.dtype)
    keep, keep_scale = keep_mask(scores.shape, dropout, scores.dtype)
    probs = torch.softmax(scores, dim=-1) * keep
    return (torch.matmul(probs, value) * keep_scale).transpose(1, 2).contiguous(), None


@functools.lru_cache(maxsize=4)
def _causal(n: int, device):
    import torch

    return torch.ones(n, n, dtype=torch.bool, device=device).tril()


_last_mask: list = [None, None, None]  # (mask, dtype, additive): every layer of a forward shares one mask


def _additive(mask, dtype):
    """``mask`` as 0 / finfo.min to add to the scores (a float mask already is); computed once per
    mask tensor, which transformers builds once per forward and hands to every layer."""
    import torch

    if mask.dtype != torch.bool:
        return mask
    if _last_mask[0] is not mask or _last_mask[1] != dtype:
        low = torch.zeros((), dtype=dtype).fill_(torch.finfo(dtype).min)
        _last_mask[:] = [mask, dtype, torch.where(mask, torch.zeros((), dtype=dtype), low)]
    return _last_mask[2]
