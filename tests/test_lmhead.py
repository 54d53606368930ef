"""The head-only loss (``hpo.lmhead``) is the model's own loss: the same value and the same
gradients as ``cross_entropy`` over ``model(ids).logits``, with masked labels, packed positions,
label smoothing, a frozen head (LoRA) and under bf16 autocast; a model whose logits are not
``head(body(x))`` takes the full-logits path; and the fused GELU computes what ``gelu_new`` does."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from hpo import checkpoint, lmhead, trial


@pytest.fixture(scope="module")
def batch():
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 4096, (3, 40), generator=g)
    labels = ids.clone()
    labels[0, :15] = -100  # a prompt: no loss
    labels[2, 30:] = -100  # padding
    pos = torch.cat([torch.arange(25), torch.arange(15)]).expand(3, 40)  # two packed examples
    return ids, labels, pos


def _reference(model, ids, labels, pos, eps=0.0):
    logits = model(input_ids=ids, position_ids=pos, use_cache=False).logits[:, :-1]
    flat = logits.reshape(-1, logits.size(-1)).float()
    return F.cross_entropy(
        flat, labels[:, 1:].reshape(-1), ignore_index=-100, reduction="sum", label_smoothing=eps
    )


def _loss_and_grads(model, fn):
    model.zero_grad(set_to_none=True)
    loss = fn()
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return float(loss.detach()), grads


def _assert_same(model, batch, eps=0.0, rel=1e-5):
    ids, labels, pos = batch
    want, want_g = _loss_and_grads(model, lambda: _reference(model, ids, labels, pos, eps))
    got, got_g = _loss_and_grads(model, lambda: lmhead.loss_sum(model, ids, labels, pos, eps))
    assert got == pytest.approx(want, rel=rel)
    assert got_g.keys() == want_g.keys() and want_g
    for name, g in want_g.items():
        scale = float(g.abs().max()) + 1e-12
        assert float((got_g[name] - g).abs().max()) / scale < rel * 10, name


@pytest.mark.parametrize("eps", [0.0, 0.1])
def test_the_head_only_loss_and_gradients_are_the_models_own(tiny_model, batch, eps):
    model = trial.load_model(tiny_model, 0.0)
    _assert_same(model, batch, eps)
    assert lmhead._split(model) is not None  # the fast path ran


def test_a_frozen_head_under_lora_gets_no_gradient_and_the_adapter_the_same_one(tiny_model, batch):
    model = trial.with_lora(trial.load_model(tiny_model, 0.0), 4, 8, 0.0, None)
    _assert_same(model, batch)
    assert lmhead._split(model) is not None


def test_bf16_autocast_matches_the_autocast_reference(tiny_model, batch):
    model = trial.load_model(tiny_model, 0.0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        _assert_same(model, batch, rel=2e-2)


def test_a_model_that_rescales_its_logits_takes_the_full_path(tiny_model, batch):
    model = trial.load_model(tiny_model, 0.0)
    forward = model.forward

    def scaled(*args, **kwargs):  # as Gemma's soft-capping or Cohere's logit_scale would
        out = forward(*args, **kwargs)
        out.logits = out.logits * 0.5
        return out

    model.forward = scaled
    assert lmhead._split(model) is None
    _assert_same(model, batch)


def test_a_soft_cap_too_small_to_see_in_random_logits_still_takes_the_full_path(tiny_model, batch):
    model = trial.load_model(tiny_model, 0.0)
    forward = model.forward

    def capped(*args, **kwargs):  # Gemma 2's final_logit_softcapping, with a cap far above the logits
        out = forward(*args, **kwargs)
        out.logits = 1000.0 * torch.tanh(out.logits / 1000.0)
        return out

    model.forward = capped
    assert lmhead._split(model) is None


def test_eval_sums_count_what_cross_entropy_and_argmax_count(tiny_model, batch):
    model = trial.load_model(tiny_model, 0.0).eval()
    ids, labels, pos = batch
    with torch.inference_mode():
        logits = model(input_ids=ids, position_ids=pos, use_cache=False).logits[:, :-1]
        y = labels[:, 1:]
        keep = y != -100
        want_loss = float(F.cross_entropy(logits[keep], y[keep], reduction="sum"))
        want_correct = int((logits[keep].argmax(-1) == y[keep]).sum())
        loss, correct, count = lmhead.eval_sums(model, ids, labels, pos)
    assert loss == pytest.approx(want_loss, rel=1e-5)
    assert (correct, count) == (want_correct, int(keep.sum()))


def test_a_batch_without_loss_carrying_tokens_has_zero_loss_and_gradient(tiny_model, batch):
    model = trial.load_model(tiny_model, 0.0)
    ids, labels, pos = batch
    loss, grads = _loss_and_grads(
        model, lambda: lmhead.loss_sum(model, ids, torch.full_like(labels, -100), pos)
    )
    assert loss == 0.0
    assert all(float(g.abs().max()) == 0.0 for g in grads.values())


def test_the_fused_gelu_computes_gelu_new_and_the_config_keeps_its_name(tiny_model, batch, tmp_path):
    from transformers import AutoConfig, AutoModelForCausalLM

    fast = trial.load_model(tiny_model, 0.0).eval()
    plain = AutoModelForCausalLM.from_pretrained(tiny_model).eval()
    assert plain.config.activation_function == "gelu_new"
    assert type(fast.transformer.h[0].mlp.act) is not type(plain.transformer.h[0].mlp.act)
    ids, _, pos = batch
    with torch.no_grad():
        a = fast(input_ids=ids, position_ids=pos).logits
        b = plain(input_ids=ids, position_ids=pos).logits
    assert float((a - b).abs().max()) < 1e-4
    fast.save_pretrained(tmp_path)
    assert AutoConfig.from_pretrained(tmp_path).activation_function == "gelu_new"


def test_fuse_activation_changes_only_the_names_it_knows():
    class Config:
        activation_function = "gelu_new"
        hidden_act = "silu"

    cfg = Config()
    assert checkpoint.fuse_activation(cfg) == {"activation_function": "gelu_new"}
    assert (cfg.activation_function, cfg.hidden_act) == ("gelu_pytorch_tanh", "silu")
