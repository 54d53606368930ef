"""Data as hyperparameters through the real stack on the tiny model: a study that searches the
augmentation's ``augment_p``, a mixture weight and the block size is created (samples shown),
run with ASHA (each trial prepares, or finds cached, the set its parameters choose) and
exported."""

from __future__ import annotations

import json

import optuna
import pytest
from optuna.trial import TrialState

from tests.conftest import ROOT, run_cli, small_spec

CHATS = ROOT / "studies" / "data" / "support-chat-200.jsonl"

pytestmark = pytest.mark.e2e


def test_search_augmentation_and_mixture_create_run_export(tmp_path, tiny_model):
    from hpo import models

    url = f"sqlite:///{tmp_path / 'hpo.db'}"
    cache = tmp_path / "cache"  # a cache of its own for prepared data, the built models shared
    cache.mkdir()
    (cache / "models").symlink_to(models.cache_dir() / "models")
    env = {"HPO_CACHE_DIR": str(cache)}
    spec = small_spec(
        tmp_path,
        name="aug",
        rows=160,
        data={
            "path": None,
            "sources": [
                {"path": "data.jsonl", "weight": 1.0},
                {"path": "chats.jsonl", "format": "chat", "weight": {"param": "mix_chats"}},
            ],
            "block_size": {"param": "block"},
            "augment": {
                "copies": 1,
                "seed": 1,
                "ops": {
                    "word_dropout": {"p": {"param": "augment_p"}},
                    "typo": {"p": 0.1},
                    "template": {"p": 0.3},
                },
            },
        },
        space={
            "augment_p": {"type": "float", "low": 0.0, "high": 0.2},
            "block": {"type": "categorical", "choices": [96, 128]},
            "mix_chats": {"type": "float", "low": 0.0, "high": 2.0},
            "epochs": 1,
            "batch_size": 16,
        },
        enqueue=[{"augment_p": 0.1, "block": 128, "mix_chats": 1.0}] * 2,
    )
    (tmp_path / "chats.jsonl").write_text("\n".join(CHATS.read_text().splitlines()[:60]) + "\n")
    r = run_cli("study", "create", str(spec), "--storage", url, cwd=tmp_path, env=env)
    assert r.returncode == 0, r.stderr
    assert "augment: 1 augmented copies of each of the " in r.stdout and "training examples" in r.stdout
    assert r.stdout.count("  original:  ") == 3 and r.stdout.count("  augmented: ") == 3

    r = run_cli("run", "--trials", "4", "--storage", url, cwd=tmp_path, env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    study = optuna.load_study(study_name="aug", storage=url)
    trials = study.get_trials()
    assert sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials) == 4
    prints = {}
    for t in trials:
        key = (t.params["augment_p"], t.params["block"], t.params["mix_chats"])
        history = t.user_attrs["source_eval_loss"]  # every source's eval loss at every evaluation
        assert history and all(set(losses) == {"data", "chats"} for _, losses in history)
        prints.setdefault(key, set()).add(t.user_attrs["data_fingerprint"])
    assert all(len(p) == 1 for p in prints.values())  # one prepared set per distinct setting ...
    assert len({f for p in prints.values() for f in p}) == len(prints)  # ... and none shared
    prepared = {f.name for f in (cache / "data").iterdir() if not f.name.startswith(".")}
    assert prepared == {f for p in prints.values() for f in p}  # the cache holds exactly those sets

    out = tmp_path / "exports" / "best"
    r = run_cli("export", "--out", str(out), "--storage", url, cwd=tmp_path, env=env)
    assert r.returncode == 0, r.stderr
    info = json.loads((out / "hpo.json").read_text())
    assert "augment_p" in info["hyperparameters"] and (out / "config.json").is_file()
