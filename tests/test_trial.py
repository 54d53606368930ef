"""The trial loop on the real tiny model: reports, checkpoints, determinism, accumulation."""

from __future__ import annotations

import contextlib
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from hpo import basemodel, evaluation, faultinject, placement, trial, trialsetup, trialstep
from hpo import spec as spec_mod
from tests.conftest import small_spec, trial_config, validation_loss

PARAMS = {"learning_rate": 2e-3, "batch_size": 16, "epochs": 1, "dropout": 0.0, "weight_decay": 0.01}


def _config(prepared, tiny_model, folder: Path, **params) -> dict:
    return trial_config(prepared, tiny_model, folder, {**PARAMS, **params})


def test_dropout_fields_cover_gpt2_and_other_families():
    cfg = {
        "resid_pdrop": 0.1,
        "embd_pdrop": 0.1,
        "attn_pdrop": 0.1,
        "attention_dropout": 0.0,
        "hidden_dropout": 0.1,
        "n_layer": 4,
        "use_dropout": True,
        "layer_norm_epsilon": 1e-5,
    }
    assert trial.dropout_fields(cfg) == [
        "attention_dropout",
        "attn_pdrop",
        "embd_pdrop",
        "hidden_dropout",
        "resid_pdrop",
    ]


def test_micro_batch_divides_the_batch():
    assert trialsetup.micro_batch(32, 32) == 32
    assert trialsetup.micro_batch(48, 32) == 24
    assert trialsetup.micro_batch(7, 4) == 1


def _marks(steps_per_epoch: int, epochs: int, every: float, wanted) -> list[float]:
    """The epochs at which the loop evaluates (a mark crossed, or the budget's last step)."""
    out, total = [], epochs * steps_per_epoch
    mark = evaluation.next_mark(0, steps_per_epoch, every, 1, wanted)
    for step in range(1, total + 1):
        epoch = step / steps_per_epoch
        if epoch + 1e-9 >= mark * every or step == total:
            out.append(round(mark * every if epoch + 1e-9 >= mark * every else epoch, 6))
            mark = evaluation.next_mark(step, steps_per_epoch, every, mark, wanted)
    return out


@pytest.mark.parametrize(
    ("eval_epochs", "expected"),
    [
        (None, [0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0, 2.25, 2.5, 2.75, 3.0]),  # eval_at: every
        ([0.5, 1.0, 2.0, 3.0], [0.5, 1.0, 2.0, 3.0]),  # ASHA grace 0.5, rf 2, max_t 3
        ([0.25, 0.75, 2.25, 3.0], [0.25, 0.75, 1.0, 2.0, 2.25, 3.0]),  # rf 3: whole epochs too
        ([0.3, 1.5], [0.5, 1.0, 1.5, 2.0, 3.0]),  # off the grid: the first mark at or after it
    ],
)
def test_evaluations_happen_at_asha_rungs_whole_epochs_and_the_end(eval_epochs, expected):
    wanted = evaluation.eval_marks({"eval_every": 0.25, "eval_epochs": eval_epochs})
    assert _marks(8, 3, 0.25, wanted) == expected


def test_spec_eval_epochs_are_the_asha_rungs_and_max_t(tmp_path):
    spec = spec_mod.load(small_spec(tmp_path, schedule={"grace_period": 0.25, "reduction_factor": 3}))
    assert spec.asha_rungs() == [0.25, 0.75] and spec.eval_epochs() == [0.25, 0.75, 2.0]
    every = spec_mod.load(small_spec(tmp_path, training={"eval_at": "every"}))
    assert every.eval_epochs() is None
    unscheduled = spec_mod.load(small_spec(tmp_path, schedule="none"))
    assert unscheduled.eval_epochs() is None and unscheduled.asha_rungs() == []


def test_a_trial_evaluates_only_where_asha_decides(prepared, tiny_model, tmp_path):
    config = {**_config(prepared, tiny_model, tmp_path / "t0", epochs=2), "eval_every": 0.25}
    reports: list[dict] = []
    trial.run({**config, "eval_epochs": [0.25, 0.75, 2.0]}, reports.append)
    assert [r["epoch"] for r in reports] == [0.25, 0.75, 1.0, 2.0]
    assert [r["budget_done"] for r in reports] == [False, False, False, True]


def test_a_trial_reports_at_epoch_marks_and_keeps_its_best_checkpoint(prepared, tiny_model, tmp_path):
    reports: list[dict] = []
    config = _config(prepared, tiny_model, tmp_path / "t0")
    last = trial.run(config, reports.append)
    assert [r["epoch"] for r in reports] == [0.5, 1.0]
    assert [r["budget_done"] for r in reports] == [False, True]
    assert reports[-1]["eval_loss"] < reports[0]["eval_loss"]
    assert last["best_eval_loss"] == min(r["eval_loss"] for r in reports)
    best = trial.best_checkpoint(tmp_path / "t0")
    assert best is not None and str(best) == last["checkpoint"]
    assert (best / "model.safetensors").is_file() and (best / "tokenizer.json").is_file()
    assert len(list((tmp_path / "t0").glob("step-*"))) == 1  # the previous best was dropped
    # the kept checkpoint reproduces the reported loss through from_pretrained
    model = trial.load_model(str(best), 0.0)
    loss = validation_loss(model, prepared, config["placement"]["precision"])  # as the trial evaluated
    assert math.isclose(loss, last["best_eval_loss"], abs_tol=1e-4)
    # every evaluation reports loss, perplexity and next-token accuracy; the best is the objective's
    assert all(0 < r["token_accuracy"] < 1 and r["perplexity"] == math.exp(r["eval_loss"]) for r in reports)
    assert last["best_objective"] == last["best_eval_loss"]


def test_a_trial_trains_in_the_precision_asked_for(prepared, tiny_model, tmp_path):
    losses = {}
    for asked in ("fp32", "bf16", "auto"):
        config = {**_config(prepared, tiny_model, tmp_path / asked), "precision": asked}
        losses[asked] = [r["eval_loss"] for r in _reports(config)]
        chosen = placement.precision(None, trialsetup.cpu_bf16()) if asked == "auto" else asked
        assert config["placement"]["precision"] == chosen
    # bf16 autocast really ran (other roundings), and trains to the same losses as fp32 here
    assert losses["bf16"] != losses["fp32"]
    assert all(abs(a - b) < 0.01 for a, b in zip(losses["bf16"], losses["fp32"], strict=True))
    assert losses["auto"] == losses[placement.precision(None, trialsetup.cpu_bf16())]


def _reports(config: dict) -> list[dict]:
    out: list[dict] = []
    trial.run(config, out.append)
    return out


def test_same_seed_and_params_give_the_same_loss(prepared, tiny_model, tmp_path):
    a = trial.run(_config(prepared, tiny_model, tmp_path / "a", dropout=0.1), lambda m: None)
    b = trial.run(_config(prepared, tiny_model, tmp_path / "b", dropout=0.1), lambda m: None)
    assert abs(a["eval_loss"] - b["eval_loss"]) < 1e-4


def test_gradient_accumulation_matches_one_big_batch(prepared, tiny_model, tmp_path):
    whole = _config(prepared, tiny_model, tmp_path / "w")
    split = {**_config(prepared, tiny_model, tmp_path / "s"), "max_micro_batch": 4}
    a = trial.run(whole, lambda m: None)
    b = trial.run(split, lambda m: None)
    assert abs(a["eval_loss"] - b["eval_loss"]) < 2e-3


def test_a_nan_loss_ends_the_trial_with_a_trial_error():
    from hpo.errors import TrialError

    state = trial._State("eval_loss", started=0.0)
    with pytest.raises(TrialError, match="became nan at step 3; lower learning_rate"):
        state.add_train(float("nan"), 10, 2, {"trial_number": 0})


def test_an_injected_out_of_memory_becomes_a_trial_error(prepared, tiny_model, tmp_path, monkeypatch):
    from hpo.errors import TrialError

    monkeypatch.setenv(faultinject.FAIL_ENV, "0:oom")
    with pytest.raises(TrialError, match="out of memory"):
        trial.run(_config(prepared, tiny_model, tmp_path / "o"), lambda m: None)


def test_tiny_model_is_cached_and_loads_with_from_pretrained(tiny_model):
    from transformers import AutoModelForCausalLM

    assert basemodel.tiny_gpt2() == Path(tiny_model)
    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    assert 1_000_000 < sum(p.numel() for p in model.parameters()) < 5_000_000


# ---------------------------------------------------------------- training options, pure or one step


def test_batching_accumulates_batches_into_one_step():
    assert trialsetup.batching(16, 1, 32) == (16, 16)
    assert trialsetup.batching(8, 2, 32) == (16, 8)  # effective batch 16 in two passes of 8
    assert trialsetup.batching(48, 1, 32) == (48, 24)
    assert trialsetup.batching(32, 4, 8) == (128, 8)


def test_options_come_from_params_then_config_then_defaults():
    config = {"params": {"warmup_ratio": 0.2, "seed": 7}, "lr_scheduler": "cosine", "l1": 0.001, "seed": 0}
    o = trial.options(config)
    assert o["warmup_ratio"] == 0.2 and o["seed"] == 7  # searched
    assert o["lr_scheduler"] == "cosine" and o["l1"] == 0.001  # fixed in training
    assert o["gradient_accumulation_steps"] == 1 and o["label_smoothing"] == 0.0  # defaults


@pytest.mark.parametrize(("name", "end"), [("linear", 0.0), ("cosine", 0.0), ("constant_with_warmup", 1.0)])
def test_lr_schedulers_warm_up_then_decay(name, end):
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = trialstep.schedule(opt, name, 0.1, 100)
    lrs = []
    for _ in range(100):
        lrs.append(sched.get_last_lr()[0])
        opt.step()
        sched.step()
    assert lrs[0] == 0.0 and lrs[5] == pytest.approx(0.5) and lrs[10] == pytest.approx(1.0)
    assert sched.get_last_lr()[0] == pytest.approx(end, abs=1e-6)
    if name == "cosine":
        assert lrs[55] == pytest.approx(0.5, abs=1e-6)  # half way through the decay


def test_early_stopping_bookkeeping_follows_the_objective():
    s = trial._State("token_accuracy", 0.0)  # maximized
    marks = [
        s.improved({"token_accuracy": a, "eval_loss": 1.0}, e) for a, e in ((0.2, 1), (0.3, 2), (0.25, 3))
    ]
    assert marks == [True, True, False] and s.best_epoch == 2 and s.since_best == 1
    assert not s.patience_ran_out(2) and not s.patience_ran_out(None)
    s.improved({"token_accuracy": 0.3, "eval_loss": 1.0}, 4)  # equal is not better
    assert s.patience_ran_out(2)


def _one_step(tiny_model, prepared, options) -> tuple[dict, dict]:
    """Weights before and after one SGD step (lr 1, no clipping) over the first 4 blocks."""
    import numpy as np

    torch.manual_seed(0)
    model = trial.load_model(tiny_model, 0.0)
    before = {n: w.detach().clone() for n, w in model.named_parameters()}
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    arrays = prepared.arrays()
    train = (arrays["train_ids"], arrays["train_labels"], arrays["train_pos"])
    loss_opts = trialstep.LossOptions(*options, 1e9, trialstep.matrices(model))
    trialstep.step(
        model, opt, sched, train, np.arange(4), 4, torch.device("cpu"), contextlib.nullcontext, loss_opts
    )
    return before, dict(model.named_parameters())


def test_l1_adds_its_subgradient_to_weight_matrices_only(prepared, tiny_model):
    before, plain = _one_step(tiny_model, prepared, (0.0, 0.0))
    _, with_l1 = _one_step(tiny_model, prepared, (0.0, 0.01))
    for name, w0 in before.items():
        extra = with_l1[name].detach() - plain[name].detach()  # SGD: -lr * l1 * sign(w)
        want = -0.01 * torch.sign(w0) if w0.ndim >= 2 else torch.zeros_like(w0)
        assert torch.allclose(extra, want, atol=1e-5), name


def test_label_smoothing_changes_the_training_loss_only(prepared, tiny_model):
    import torch.nn.functional as F

    model = trial.load_model(tiny_model, 0.0).eval()
    arrays = prepared.arrays()
    ids, labels, pos = (
        torch.from_numpy(arrays[k][:2].astype("int64")) for k in ("val_ids", "val_labels", "val_pos")
    )
    with torch.no_grad():
        plain = trialstep.loss_sum(model, ids, labels, pos)
        smooth = trialstep.loss_sum(model, ids, labels, pos, label_smoothing=0.1)
        logp = F.log_softmax(model(input_ids=ids, position_ids=pos).logits[:, :-1].float(), -1)
    keep = labels[:, 1:] != -100
    uniform = -logp[keep].mean(-1).sum()
    assert float(smooth) == pytest.approx(float(0.9 * plain + 0.1 * uniform), rel=1e-5)
    n = int(keep.sum())
    assert trial.evaluate(model, ids, labels, pos=pos) == pytest.approx(float(plain) / n, rel=1e-5)


def test_early_stopping_ends_the_trial_complete_at_the_budget_it_reached(
    prepared, tiny_model, tmp_path, monkeypatch
):
    accuracies = iter([0.2, 0.3, 0.25, 0.28, 0.5, 0.6, 0.7, 0.8])

    def scripted(*args, **kwargs):
        return {"eval_loss": 2.0, "perplexity": math.exp(2.0), "token_accuracy": next(accuracies)}

    monkeypatch.setattr(trial, "evaluate_metrics", scripted)
    config = {
        **_config(prepared, tiny_model, tmp_path / "es", epochs=2),
        "eval_every": 0.25,
        "objective": "token_accuracy",
        "early_stopping_patience": 2,
    }
    reports: list[dict] = []
    last = trial.run(config, reports.append)
    assert [r["epoch"] for r in reports] == [0.25, 0.5, 0.75, 1.0]  # of 2 epochs
    assert [r["budget_done"] for r in reports] == [False, False, False, True]
    assert last["early_stopped"] and last["best_objective"] == 0.3 and last["best_epoch"] == 0.5
    assert last["best_token_accuracy"] == 0.3 and last["checkpoint"].endswith(
        f"step-{reports[1]['step']:07d}"
    )


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="a trial never takes more threads than the machine has")
def test_a_trial_takes_the_threads_the_driver_offers_and_gives_them_back(prepared, tiny_model, tmp_path):
    share = tmp_path / "threads"
    share.write_text("2\n")  # the driver: the study's tail, a slot idle
    seen: list[int] = []
    config = {**_config(prepared, tiny_model, tmp_path / "t"), "threads_file": str(share)}
    trial.run(config, lambda m: seen.append(torch.get_num_threads()))
    assert seen and set(seen) == {2}
    share.write_text("not a number\n")  # unreadable: keeps what it has; a new trial starts at its cpus
    trial.run({**config, "checkpoint_dir": str(tmp_path / "u"), "threads_file": None}, lambda m: None)
    assert torch.get_num_threads() == 1


def test_a_settled_trial_process_has_its_imports_frozen_and_still_frees_each_trials_model(
    prepared, tiny_model, tmp_path
):
    """trainable.settle_process (once per Ray trial process): the libraries' objects are frozen out
    of the collector's reach, and a trial's model, optimizer and tensors are still collected."""
    code = f"""
import gc, json, weakref
from hpo import trainable, trial
import hpo.checkpoint as checkpoint
trainable.settle_process({tiny_model!r})
frozen = gc.get_freeze_count()
models = []
real_load = checkpoint.load_model
def load(*args, **kwargs):
    model = real_load(*args, **kwargs)
    models.append(weakref.ref(model))
    return model
trial.load_model = load
config = json.loads({json.dumps(_config(prepared, tiny_model, tmp_path / "t"))!r})
trial.run(config, lambda metrics: None)
print("FROZEN", frozen, "TRACKED", len(gc.get_objects()), "MODEL_FREED", models[0]() is None)
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    _, frozen, _, tracked, _, freed = r.stdout.split()[-6:]
    assert int(frozen) > 100_000 and int(tracked) < int(frozen) // 10  # what gc still walks is small
    assert freed == "True"  # the trial's model did not outlive it


@pytest.mark.slow  # inductor's first compile on a machine: ~90 s of the 2-core CPU
def test_compiled_blocks_train_to_the_eager_losses(prepared, tiny_model, tmp_path):
    """``training.compile: true`` compiles the decoder blocks (auto would leave a 1.35M model eager)
    and trains to the eager losses; the trial says what it did."""
    eager = {**_config(prepared, tiny_model, tmp_path / "e", dropout=0.1), "compile": "auto"}
    compiled = {**_config(prepared, tiny_model, tmp_path / "c", dropout=0.1), "compile": True}
    a, b = _reports(eager), _reports(compiled)
    assert eager["placement"]["compile"].startswith("off: 1.")  # under COMPILE_MIN_PARAMS
    n_layer = json.loads((Path(tiny_model) / "config.json").read_text())["n_layer"]
    assert compiled["placement"]["compile"] == f"{n_layer} blocks"
    assert all(abs(x["eval_loss"] - y["eval_loss"]) < 0.02 for x, y in zip(a, b, strict=True))


def test_compile_auto_skips_small_models_and_finds_the_layers():
    layers = torch.nn.ModuleList(torch.nn.Linear(4, 4) for _ in range(3))
    model = torch.nn.Sequential(torch.nn.Embedding(10, 4), layers)
    assert len(trialsetup._repeated_blocks(model)) == 3
    assert trialsetup.compile_blocks(model, False, torch.device("cpu")) == "off"
    assert trialsetup.compile_blocks(model, "auto", torch.device("cpu")).startswith("off: 0.0M parameters")
    lone = torch.nn.Linear(2, 2)
    assert trialsetup.compile_blocks(lone, True, torch.device("cpu")) == "off: no repeated blocks"
