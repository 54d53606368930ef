"""Dashboard notes (dashboards/notes.py): what a note says, and the NoteWriter that ``hpo run``
wraps around its progress display, on a synthetic SQLite study."""

from __future__ import annotations

import shutil
from pathlib import Path

import optuna
import optuna_dashboard
import pytest

from dashboards import facts
from dashboards.notes import NoteWriter, trial_note
from hpo.searcher import Event
from tests.synthetic import make_study


@pytest.fixture
def study(tmp_path: Path) -> optuna.Study:
    return make_study(f"sqlite:///{tmp_path / 'hpo.db'}", 40, name="demo", ckpt_root=tmp_path / "runs")


def _note(study: optuna.Study, number: int) -> str:
    return optuna_dashboard.get_note(optuna.trial.Trial(study, study.trials[number]._trial_id))


def _by_state(study: optuna.Study, state: str, kept: bool | None = None) -> optuna.trial.FrozenTrial:
    return next(
        t
        for t in study.trials
        if t.state.name == state and (kept is None or (facts.checkpoint_status(t) == "kept") == kept)
    )


def test_note_of_a_kept_complete_trial(study: optuna.Study) -> None:
    t = _by_state(study, "COMPLETE", kept=True)
    body = trial_note("demo", t, facts.spec_or_none(study), "sqlite:///hpo.db")
    assert body.startswith(f"### Trial {t.number} · COMPLETE")
    assert f"best eval loss **{t.user_attrs['best_eval_loss']:.4f}**" in body
    assert f"(perplexity {t.user_attrs['best_perplexity']:.2f})" in body
    assert f"trained {t.user_attrs['epoch']:g} of {t.params['epochs']} epochs" in body
    assert f"| learning_rate | {facts.fmt(t.params['learning_rate'])} |" in body
    assert "| weight_decay | 0.0100 |" in body  # fixed parameters too
    assert f"**checkpoint:** kept · `{t.user_attrs['checkpoint']}`" in body
    assert f"hpo export --study demo --trial {t.number} --out exports/demo-trial-{t.number}\n" in body


def test_note_of_a_pruned_and_a_failed_trial(study: optuna.Study) -> None:
    spec = facts.spec_or_none(study)
    pruned = _by_state(study, "PRUNED")
    body = trial_note("demo", pruned, spec, "postgresql://me:secret@db:5432/hpo")
    assert f"stopped by ASHA at {pruned.user_attrs['epoch']:g} of" in body
    assert "**checkpoint:** deleted" in body
    assert "hpo export --storage postgresql://me:***@db:5432/hpo --study demo" in body  # password masked
    failed = trial_note("demo", _by_state(study, "FAIL"), spec, None)
    assert "**failed** after" in failed and "TrialError: loss became NaN" in failed
    assert "hpo export" not in failed and "cannot be exported" in failed


def test_note_writer_notes_finished_trials_and_forwards_every_event(study: optuna.Study, tmp_path) -> None:
    seen: list[Event] = []
    writer = NoteWriter(study, seen.append, None, tmp_path / "artifacts")
    done = [_by_state(study, "COMPLETE", kept=True), _by_state(study, "PRUNED"), _by_state(study, "FAIL")]
    events = [Event("start", 99, {})] + [Event(t.state.name.lower(), t.number, t.params) for t in done]
    for e in events:
        writer(e)
    assert seen == events and len(writer.noted) == 3
    for t in done:
        assert _note(study, t.number).startswith(f"### Trial {t.number} · {t.state.name}")
    untouched = next(t for t in study.trials if t.number not in {d.number for d in done})
    assert _note(study, untouched.number) == ""


def test_note_is_rewritten_when_the_checkpoint_is_deleted(study: optuna.Study) -> None:
    kept = _by_state(study, "COMPLETE", kept=True)
    writer = NoteWriter(study, lambda e: None)
    writer(Event("complete", kept.number, kept.params))
    assert "**checkpoint:** kept" in _note(study, kept.number)
    shutil.rmtree(kept.user_attrs["checkpoint"])  # what the keep_top_k clean-up does after the event
    writer(Event("start", 99, {}))
    assert "**checkpoint:** deleted" in _note(study, kept.number)


def test_a_failing_note_never_fails_the_run(study: optuna.Study, caplog) -> None:
    seen: list[Event] = []
    writer = NoteWriter(study, seen.append)
    writer(Event("complete", 12345, {}))  # no such trial: the note fails, the event still goes on
    writer.finish()
    assert len(seen) == 1 and not writer.noted
    assert "dashboard note: writing the note of trial 12345 failed" in caplog.text


def test_finish_attaches_the_best_model_card_once(study: optuna.Study, tmp_path: Path) -> None:
    best = study.best_trial
    writer = NoteWriter(study, lambda e: None, None, tmp_path / "artifacts")
    writer(Event("complete", best.number, best.params))
    writer.finish()
    writer.finish()
    metas = optuna.artifacts.get_all_artifact_meta(study)
    assert [m.filename for m in metas] == [f"model-card-trial-{best.number}.md"]
    store = optuna.artifacts.FileSystemArtifactStore(tmp_path / "artifacts")
    with store.open_reader(metas[0].artifact_id) as f:
        card = f.read().decode()
    assert f"# demo — trial {best.number}" in card and "base_model: hpo:tiny-gpt2" in card


def test_an_earlier_runs_note_changes_when_this_run_deletes_its_checkpoint(study: optuna.Study) -> None:
    kept = _by_state(study, "COMPLETE", kept=True)
    NoteWriter(study, lambda e: None)(Event("complete", kept.number, kept.params))  # an earlier run
    writer = NoteWriter(study, lambda e: None)  # this run
    shutil.rmtree(kept.user_attrs["checkpoint"])
    writer.finish()
    assert "**checkpoint:** deleted" in _note(study, kept.number)
