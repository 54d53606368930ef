"""Export: what it refuses (file path, non-empty folder, no COMPLETE trial, unknown trial, deleted or
pickled checkpoint), that a refusal or failure leaves nothing behind, and what a good export holds.
Studies are made with Optuna directly: no training."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState, create_trial

from hpo import space, storage
from hpo import spec as spec_mod
from hpo.errors import UsageError
from hpo.export import export_best
from tests.conftest import small_spec

PARAMS = {"learning_rate": 1e-3, "batch_size": 8, "epochs": 1, "dropout": 0.1}


def _checkpoint(folder: Path, weights: str = "model.safetensors") -> Path:
    folder.mkdir(parents=True)
    (folder / weights).write_bytes(b"weights")
    (folder / "config.json").write_text("{}")
    return folder


def _study(
    tmp_path: Path, trials: list[tuple[TrialState, float | None, Path | None]], url: str | None = None
):
    """A stored hpo study holding ``trials`` as (state, value, checkpoint)."""
    url = url or f"sqlite:///{tmp_path / 'hpo.db'}"
    s = spec_mod.load(small_spec(tmp_path))
    storage.create(s, url)
    study = storage.load(s.name, url)
    for state, value, ckpt in trials:
        attrs = {"checkpoint": str(ckpt)} if ckpt else {}
        study.add_trial(
            create_trial(
                state=state,
                value=value if state == TrialState.COMPLETE else None,
                params=PARAMS,
                distributions=space.distributions(s.space),
                user_attrs=attrs,
                intermediate_values={0: value} if value is not None else {},
            )
        )
    return url


def _tree(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


@pytest.fixture
def done(tmp_path):
    """A study with a pruned, a complete (best), a worse complete and a failed trial."""
    ck = tmp_path / "ckpts"
    return _study(
        tmp_path,
        [
            (TrialState.PRUNED, 3.0, _checkpoint(ck / "t0")),
            (TrialState.COMPLETE, 2.0, _checkpoint(ck / "t1")),
            (TrialState.COMPLETE, 2.5, _checkpoint(ck / "t2")),
            (TrialState.FAIL, None, None),
        ],
    )


def test_exports_the_best_complete_trial(tmp_path, done):
    out = tmp_path / "exports" / "best"
    e = export_best(out, storage=done)
    assert (e.trial, e.value, e.study) == (1, 2.0, "small")
    assert sorted(p.name for p in out.iterdir()) == [
        "README.md",
        "config.json",
        "hpo.json",
        "model.safetensors",
    ]
    info = json.loads((out / "hpo.json").read_text())
    assert info["trial"] == 1 and info["hyperparameters"]["weight_decay"] == 0.01  # fixed ones included
    assert [p.name for p in out.parent.iterdir()] == ["best"]  # no temporary folder left


def test_exports_a_chosen_trial_into_an_existing_empty_folder(tmp_path, done):
    out = tmp_path / "empty"
    out.mkdir()
    assert export_best(out, storage=done, trial=0).trial == 0  # PRUNED may be chosen by number
    assert (out / "model.safetensors").is_file()


def test_force_replaces_a_non_empty_folder(tmp_path, done):
    out = tmp_path / "full"
    out.mkdir()
    (out / "old.txt").write_text("x")
    export_best(out, storage=done, force=True)
    assert not (out / "old.txt").exists() and (out / "hpo.json").is_file()


def test_refuses_a_file_path(tmp_path, done):
    target = tmp_path / "model.bin"
    target.write_text("keep me")
    with pytest.raises(UsageError, match="is a file; give a folder path"):
        export_best(target, storage=done, force=True)
    assert target.read_text() == "keep me"
    with pytest.raises(UsageError, match="is a file, not a folder"):
        export_best(target / "sub", storage=done)


def test_refuses_a_non_empty_folder_without_force(tmp_path, done):
    out = tmp_path / "full"
    out.mkdir()
    (out / "mine.txt").write_text("x")
    before = _tree(tmp_path)
    with pytest.raises(UsageError, match="is not empty; choose another folder or add --force"):
        export_best(out, storage=done)
    assert _tree(tmp_path) == before


def test_refuses_when_no_trial_is_complete(tmp_path):
    url = _study(
        tmp_path, [(TrialState.PRUNED, 3.0, _checkpoint(tmp_path / "c0")), (TrialState.FAIL, None, None)]
    )
    with pytest.raises(UsageError, match="has no COMPLETE trial yet; run `hpo run` first"):
        export_best(tmp_path / "out", storage=url)
    assert not (tmp_path / "out").exists()


def test_refuses_an_empty_study(tmp_path):
    url = _study(tmp_path, [])
    with pytest.raises(UsageError, match="no COMPLETE trial"):
        export_best(tmp_path / "out", storage=url)
    with pytest.raises(UsageError, match="has no trial 0 \\(it has no trials yet\\)"):
        export_best(tmp_path / "out", storage=url, trial=0)


def test_refuses_an_unknown_or_failed_trial(tmp_path, done):
    with pytest.raises(UsageError, match=r"has no trial 7 \(trials 0\.\.3\); check --trial"):
        export_best(tmp_path / "out", storage=done, trial=7)
    with pytest.raises(UsageError, match="trial 3 is FAIL; export a COMPLETE or PRUNED trial"):
        export_best(tmp_path / "out", storage=done, trial=3)
    assert not (tmp_path / "out").exists()


def test_refuses_a_deleted_checkpoint(tmp_path, done):
    shutil.rmtree(tmp_path / "ckpts" / "t1")
    with pytest.raises(UsageError, match="trial 1 of 'small' has no checkpoint on this machine.*keep_top_k"):
        export_best(tmp_path / "out", storage=done)
    assert not (tmp_path / "out").exists()


def test_refuses_a_pickled_checkpoint(tmp_path):
    url = _study(tmp_path, [(TrialState.COMPLETE, 1.0, _checkpoint(tmp_path / "c", "pytorch_model.bin"))])
    with pytest.raises(UsageError, match="holds no safetensors weights"):
        export_best(tmp_path / "out", storage=url)


def test_refuses_an_unknown_study_without_creating_anything(tmp_path, done):
    with pytest.raises(UsageError, match="no study 'nope'"):
        export_best(tmp_path / "a" / "b", study="nope", storage=done)
    missing = f"sqlite:///{tmp_path / 'missing.db'}"
    with pytest.raises(UsageError, match="no study storage"):
        export_best(tmp_path / "a" / "b", storage=missing)
    assert not (tmp_path / "a").exists() and not (tmp_path / "missing.db").exists()


def test_a_failed_copy_leaves_no_partial_folder(tmp_path, done, monkeypatch):
    def broken(src, dst, **kw):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(shutil, "copy2", broken)
    with pytest.raises(OSError, match="No space left"):
        export_best(tmp_path / "new" / "deep" / "out", storage=done)
    assert not (tmp_path / "new").exists()  # the folders it made are gone again


def test_model_card_masks_the_storage_password(tmp_path, pg_url):
    user, rest = pg_url.split("://", 1)[1].split("@", 1)
    url = f"postgresql://{user}:s3cret-pw@{rest}"  # the local server trusts 127.0.0.1: any password does
    _study(tmp_path, [(TrialState.COMPLETE, 1.0, _checkpoint(tmp_path / "c"))], url=url)
    out = tmp_path / "out"
    export_best(out, storage=url)
    for name in ("README.md", "hpo.json"):
        text = (out / name).read_text()
        assert "s3cret-pw" not in text and ":***@" in text
    assert optuna.load_study(study_name="small", storage=url).trials[0].state == TrialState.COMPLETE


def test_no_merge_exports_the_lora_adapter_with_the_tokenizer(tmp_path):
    ck = _checkpoint(tmp_path / "ckpts" / "t0")
    (ck / "tokenizer.json").write_text("{}")
    (ck / "adapter").mkdir()
    (ck / "adapter" / "adapter_model.safetensors").write_bytes(b"lora")
    (ck / "adapter" / "adapter_config.json").write_text("{}")
    url = _study(tmp_path, [(TrialState.COMPLETE, 2.0, ck)])
    out = tmp_path / "adapter-only"
    export_best(out, storage=url, merge=False)
    names = sorted(p.name for p in out.iterdir())
    assert names == [
        "README.md",
        "adapter_config.json",
        "adapter_model.safetensors",
        "hpo.json",
        "tokenizer.json",
    ]


def test_no_merge_refuses_a_study_without_an_adapter(tmp_path, done):
    with pytest.raises(UsageError, match="no LoRA adapter; --no-merge applies to studies with adapter: lora"):
        export_best(tmp_path / "x", storage=done, merge=False)
    assert not (tmp_path / "x").exists()
