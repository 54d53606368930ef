"""The cheap CPU dropout (``hpo.dropout``) drops what it says and computes the attention
transformers' sdpa computes: with no element dropped it equals sdpa to float precision (causal,
bool and float masks, packed positions, grouped keys), and a swapped model changes nothing in
eval mode, nor in what it saves."""

from __future__ import annotations

import pytest
import torch
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from hpo import dropout, trial, trialstep


@pytest.mark.parametrize("p", [0.05, 0.1, 0.5])
def test_the_mask_drops_p_and_scales_by_the_exact_keep_probability(p):
    torch.manual_seed(0)
    keep, scale = dropout.keep_mask((1000, 1000), p, torch.bfloat16)
    assert keep.dtype == torch.bfloat16 and keep.shape == (1000, 1000)
    assert set(keep.unique().tolist()) == {0.0, 1.0}
    rounded = round(p * dropout.LEVELS) / dropout.LEVELS
    assert 1.0 - float(keep.float().mean()) == pytest.approx(p, abs=0.002)
    assert scale == pytest.approx(1.0 / (1.0 - rounded), rel=1e-12)
    x = torch.ones(1000, 1000)
    assert float(dropout.drop(x, p).mean()) == pytest.approx(1.0, abs=0.005)  # expectation kept
    kept = dropout.drop(x.bfloat16(), p).float()
    assert set(kept.unique().tolist()) == {0.0, float(torch.tensor(scale).bfloat16())}  # one rounding


def test_drop_is_differentiable_and_follows_its_mask():
    torch.manual_seed(1)
    x = torch.randn(64, 64, requires_grad=True)
    y = dropout.drop(x, 0.3)
    y.sum().backward()
    dropped = y.detach() == 0
    assert 0.2 < float(dropped.float().mean()) < 0.4
    assert torch.all(x.grad[dropped] == 0)
    assert torch.allclose(x.grad[~dropped], torch.full_like(x.grad[~dropped], x.grad[~dropped][0].item()))


class _Attn(torch.nn.Module):
    def __init__(self, groups: int = 1):
        super().__init__()
        self.num_key_value_groups, self.is_causal = groups, True


def _qkv(heads=4, kv_heads=4, t=12):
    g = torch.Generator().manual_seed(2)
    return (torch.randn(2, h, t, 8, generator=g) for h in (heads, kv_heads, kv_heads))


def _packed_bool_mask(t=12):
    pos = torch.cat([torch.arange(5), torch.arange(t - 5)])
    seq = torch.cumsum(pos == 0, 0)
    causal = torch.ones(t, t, dtype=torch.bool).tril()
    return (causal & (seq[:, None] == seq[None, :])).expand(2, 1, t, t)


@pytest.mark.parametrize("kind", ["causal", "bool", "float", "grouped"])
def test_attention_with_nothing_dropped_is_sdpa(kind, monkeypatch):
    monkeypatch.setattr(dropout, "keep_mask", lambda shape, p, dtype: (torch.ones(shape, dtype=dtype), 1.0))
    q, k, v = _qkv(kv_heads=2 if kind == "grouped" else 4)
    module = _Attn(groups=2 if kind == "grouped" else 1)
    mask = None if kind in ("causal", "grouped") else _packed_bool_mask()
    if kind == "float":
        mask = torch.zeros(mask.shape).masked_fill(~mask, torch.finfo(torch.float32).min)
    got, _ = dropout.attention(module, q, k, v, mask, dropout=0.2)
    want, _ = sdpa_attention_forward(module, q, k, v, mask, dropout=0.0)
    assert got.shape == want.shape
    assert torch.allclose(got, want, atol=1e-5)


def test_attention_drops_out_only_in_training_and_on_cpu_paths():
    q, k, v = _qkv()
    a, _ = dropout.attention(_Attn(), q, k, v, None, dropout=0.0)
    b, _ = sdpa_attention_forward(_Attn(), q, k, v, None, dropout=0.0)
    assert torch.equal(a, b)  # dropout 0 (eval): sdpa itself
    torch.manual_seed(3)
    c, _ = dropout.attention(_Attn(), q, k, v, None, dropout=0.5)
    assert not torch.allclose(c, b)


def test_a_swapped_model_is_the_same_model_in_eval_mode_and_saves_the_same(tiny_model, tmp_path):
    model = trial.load_model(tiny_model, 0.1).eval()
    ids = torch.randint(0, 4096, (2, 16), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        before = model(input_ids=ids).logits
        n_dropouts = sum(type(m) is torch.nn.Dropout for m in model.modules())
        assert dropout.speed_up(model) == n_dropouts + 1  # every nn.Dropout, and the attention
        assert not any(type(m) is torch.nn.Dropout for m in model.modules())
        after = model(input_ids=ids).logits
    assert torch.equal(before, after)
    assert model.config._attn_implementation == dropout.ATTENTION
    model.save_pretrained(tmp_path)
    assert dropout.ATTENTION not in (tmp_path / "config.json").read_text()
    model.train()
    torch.manual_seed(5)
    loss = trialstep.loss_sum(model, ids, ids)
    loss.backward()
    assert torch.isfinite(loss) and model.transformer.wte.weight.grad is not None
