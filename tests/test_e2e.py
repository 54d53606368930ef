"""End to end through the real CLI, Ray Tune, Optuna and transformers on the tiny model:
create -> run 6 trials, 2 at a time, with ASHA -> storage -> export -> from_pretrained."""

from __future__ import annotations

import json
import math

import optuna
import pytest
from optuna.trial import TrialState

from tests.conftest import run_cli, small_spec, validation_loss

pytestmark = pytest.mark.e2e

GOOD = [
    {"learning_rate": 3e-3, "batch_size": 8, "epochs": 2, "dropout": 0.0},
    {"learning_rate": 2e-3, "batch_size": 8, "epochs": 2, "dropout": 0.05},
]
WEAK = {"learning_rate": 1e-4, "batch_size": 16, "epochs": 2, "dropout": 0.2}


def test_create_run_export(tmp_path, tiny_model):
    url = f"sqlite:///{tmp_path / 'hpo.db'}"
    spec = small_spec(tmp_path, name="e2e")
    r = run_cli("study", "create", str(spec), "--storage", url, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "created study 'e2e'" in r.stdout
    # two strong configurations first, then weak ones: ASHA must stop the weak ones early
    study = optuna.load_study(study_name="e2e", storage=url)
    for params in GOOD + [WEAK] * 4:
        study.enqueue_trial(params)

    r = run_cli("run", "--trials", "6", "--storage", url, cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "6/6 finished" in r.stdout
    trials_dir = tmp_path / "runs" / "e2e" / "trials"
    assert trials_dir.is_dir() and not list(trials_dir.glob(".threads-*"))  # the tail's share file is gone

    trials = study.get_trials()
    states = [t.state for t in trials]
    assert states.count(TrialState.COMPLETE) + states.count(TrialState.PRUNED) == 6
    assert TrialState.PRUNED in states and TrialState.COMPLETE in states
    for t in trials:
        assert t.intermediate_values, t.number
        assert t.user_attrs["ray_trial_id"] and t.user_attrs["epoch"] > 0
        assert t.user_attrs["device"] == "cpu" and t.user_attrs["precision"] in ("bf16", "fp32")
        if t.state == TrialState.PRUNED:
            assert t.user_attrs["pruned_at_epoch"] < 2
    best = min((t for t in trials if t.state == TrialState.COMPLETE), key=lambda t: t.value)

    # a second run with the same target adds nothing and says so
    r = run_cli("run", "--trials", "6", "--storage", url, cwd=tmp_path)
    assert r.returncode == 0 and "nothing to run" in r.stdout
    assert len(study.get_trials()) == 6

    r = run_cli("study", "show", "--json", "--storage", url, cwd=tmp_path)
    shown = json.loads(r.stdout)
    assert shown["best"]["trial"] == best.number and shown["best"]["checkpoint_kept"]

    out = tmp_path / "exports" / "best"
    r = run_cli("export", "--out", str(out), "--storage", url, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    _check_export(out, best, spec, tiny_model)


def _check_export(out, best, spec_path, tiny_model):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from hpo import basemodel, data
    from hpo import spec as spec_mod

    info = json.loads((out / "hpo.json").read_text())
    assert info["trial"] == best.number and info["hyperparameters"]["weight_decay"] == 0.01
    card = (out / "README.md").read_text()
    trained = {"bf16": "bf16 autocast, fp32 weights", "fp32": "fp32"}[best.user_attrs["precision"]]
    assert "hpo export" in card and f"| trained in | {trained} on cpu |" in card
    assert "| weights saved in | float32 |" in card  # the tiny model's own dtype
    model = AutoModelForCausalLM.from_pretrained(out)
    tok = AutoTokenizer.from_pretrained(out)
    ids = tok("Hi, where is my order A1234567?\n", return_tensors="pt").input_ids
    gen = model.generate(ids, max_new_tokens=12, do_sample=False, pad_token_id=tok.pad_token_id)
    assert gen.shape[1] > ids.shape[1] and tok.decode(gen[0, ids.shape[1] :]).strip()
    # its validation loss is the stored best value
    spec = spec_mod.load(spec_path)
    prepared = data.prepare(spec.data, tiny_model, spec.seed, basemodel.cache_dir())
    assert info["trained_on"] == {"device": "cpu", "precision": best.user_attrs["precision"]}
    loss = validation_loss(model, prepared, info["trained_on"]["precision"])  # as it was evaluated
    assert math.isclose(loss, best.value, abs_tol=1e-3)
