"""Notes in optuna-dashboard for finished trials, and the best trial's model card as an artifact.

``hpo run`` wraps its progress callback in a ``NoteWriter``: when a trial ends COMPLETE, PRUNED or
FAIL it writes the trial's note (markdown, optuna-dashboard's note feature, stored in the study
storage) with the hyperparameters, best eval loss and perplexity, epochs reached, checkpoint
status and the exact export command. A checkpoint deleted later by the keep_top_k clean-up gets
its note rewritten. Notes are a convenience: a failure to write one is logged, never raised.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from optuna.trial import FrozenTrial

from dashboards import facts
from hpo import storage as storage_mod
from hpo.summary import CONFIRM_OF_ATTR, CONFIRM_SEED_ATTR, best_complete, first_value, is_confirm

if TYPE_CHECKING:
    import optuna

    from hpo.spec import StudySpec

log = logging.getLogger(__name__)

NOTED = ("complete", "pruned", "fail")  # the event kinds that end a trial for good
CARD_NAME = "model-card-trial-{number}.md"


def trial_note(study_name: str, trial: FrozenTrial, spec: StudySpec | None, storage_url: str | None) -> str:
    """The markdown note of a finished trial."""
    metric = spec.objective.metric if spec is not None else "objective"
    lines = [f"### Trial {trial.number} · {trial.state.name}", ""]
    if is_confirm(trial):  # ``hpo confirm``: not a search trial
        of, seed = trial.user_attrs.get(CONFIRM_OF_ATTR), trial.user_attrs.get(CONFIRM_SEED_ATTR)
        lines = [f"### Trial {trial.number} · CONFIRM of trial {of} (seed {seed}) · {trial.state.name}", ""]
        lines += [
            "A confirm run (`hpo confirm`): the configuration of trial "
            f"{of} retrained with a new seed at its full budget; not a search trial.",
            "",
        ]
    lines += [_outcome(trial, metric, spec), ""]
    lines += ["| hyperparameter | value |", "| --- | --- |"]
    lines += [f"| {k} | {facts.fmt(v)} |" for k, v in facts.hyperparameters(trial, spec).items()]
    status = facts.checkpoint_status(trial)
    path = trial.user_attrs.get("checkpoint")
    where = f" · `{path}`" if status == "kept" else ""
    why = {
        "deleted": " (only the keep_top_k best COMPLETE trials keep theirs; this one cannot be exported)",
        "none": " (the trial saved none)",
    }.get(status, "")
    lines += ["", f"**checkpoint:** {status}{where}{why}", ""]
    lines += _generated(trial)
    if trial.state.name == "FAIL":
        lines += ["A FAIL trial cannot be exported."]
    else:
        lines += ["Export it:" if status == "kept" else "Export command (needs the checkpoint):"]
        lines += ["```", facts.export_command(study_name, trial.number, storage_url), "```"]
    return "\n".join(lines) + "\n"


def _outcome(trial: FrozenTrial, metric: str, spec: StudySpec | None) -> str:
    """One line: best eval loss / perplexity and epochs reached, or why the trial failed."""
    reached = facts.epochs_reached(trial, spec)
    budget = trial.params.get("epochs") or (spec.space.fixed().get("epochs") if spec else None)
    epochs = f"{reached:g}" if reached is not None else "?"
    if budget is not None:
        epochs += f" of {budget}"
    if trial.state.name == "FAIL":
        cls = trial.user_attrs.get("error_class", "failed")
        msg = trial.user_attrs.get("error_message") or trial.user_attrs.get("fail_reason") or ""
        return f"**failed** after {epochs} epochs: {cls}: {msg}"
    loss, ppl = trial.user_attrs.get("best_eval_loss"), trial.user_attrs.get("best_perplexity")
    at = trial.user_attrs.get("best_epoch")
    best = f"best eval loss **{facts.fmt(loss)}** (perplexity {facts.fmt(ppl, 2)})"
    best += f" at epoch {at:g}" if isinstance(at, int | float) else ""
    value = first_value(trial)
    show_value = value is not None and metric != "eval_loss"
    head = f"{metric} **{facts.fmt(value)}**; " if show_value else ""
    if spec is not None and spec.objectives and trial.values:  # several objectives: each one
        head = "; ".join(f"{m} **{facts.fmt(v)}**" for m, v in zip(spec.metrics, trial.values, strict=False))
        head += "; "
    stopped = "stopped by ASHA at" if trial.state.name == "PRUNED" else "trained"
    return f"{head}{best}; {stopped} {epochs} epochs"


def _generated(trial: FrozenTrial) -> list[str]:
    """The trial's generated answers beside their references, as a markdown table."""
    line, samples = facts.generated(trial)
    if not line:
        return []
    out = [f"**generated answers:** {line}", ""]
    if samples:
        out += ["| prompt | answer | reference |", "| --- | --- | --- |"]
        for s in samples:
            out.append(
                "| " + " | ".join(_cell(s.get(k, "")) for k in ("prompt", "prediction", "reference")) + " |"
            )
        out.append("")
    return out


def _cell(text: str) -> str:
    """A markdown table cell: one line, pipes escaped, at most 200 characters."""
    one = " ".join(str(text).split()).replace("|", "\\|")
    return one[:200] + ("…" if len(one) > 200 else "")


def save_trial_note(study: optuna.Study, trial: FrozenTrial, body: str) -> None:
    """Store ``body`` as the trial's note (optuna-dashboard keeps notes in study system attrs).
    ``save_note`` takes a live ``optuna.trial.Trial``, built from the frozen trial's storage id:
    the one private Optuna name hpo uses (hpo/storage.py lists it; tests/test_private_apis.py)."""
    import optuna
    import optuna_dashboard

    optuna_dashboard.save_note(optuna.trial.Trial(study, trial._trial_id), body)


class NoteWriter:
    """A progress callback that forwards every event, then notes the trials that ended.

    Args:
        study: the running study (a handle of its own is fine: notes go through the storage).
        forward: the callback to pass each event to first (the progress display).
        storage_url: the storage URL, for the export command (omitted when it is the default).
        artifact_dir: where ``finish`` attaches the best trial's model card; None skips the card.
    """

    def __init__(
        self,
        study: optuna.Study,
        forward: Callable[[Any], None],
        storage_url: str | None = None,
        artifact_dir: str | Path | None = None,
    ):
        self.study, self.forward, self.storage_url = study, forward, storage_url
        self.artifact_dir = Path(artifact_dir) if artifact_dir else None
        self.spec = facts.spec_or_none(study)
        self._kept: dict[int, str] = {}  # number -> checkpoint, of the notes that say it is kept
        self.noted: set[int] = set()  # trials with a note from this writer
        self._guard(self._name_objective, "naming the objective")
        self._guard(self._watch_earlier, "reading earlier trials")

    def _watch_earlier(self) -> None:
        """Earlier runs' kept checkpoints: this run's clean-up may delete them (notes then change)."""
        from optuna.trial import TrialState

        for t in self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
            if facts.checkpoint_status(t) == "kept":
                self._kept[t.number] = t.user_attrs["checkpoint"]

    def _name_objective(self) -> None:
        """Show the objective as ``eval_loss`` (not "Objective 0") in the dashboard's plots."""
        import warnings

        import optuna

        if self.spec is not None:
            with warnings.catch_warnings():  # set_metric_names is "experimental" since optuna 3.2
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                self.study.set_metric_names(self.spec.metrics)

    def __call__(self, event: Any) -> None:
        self.forward(event)
        self._guard(self._refresh, "updating checkpoint notes")
        if event.kind in NOTED:
            self._guard(lambda: self.note(event.number), f"writing the note of trial {event.number}")

    def note(self, number: int) -> None:
        """Write (or rewrite) trial ``number``'s note."""
        self._write(self._trial(number))

    def _trial(self, number: int) -> FrozenTrial:
        """Trial ``number`` as stored now (Optuna's cache re-reads only the unfinished ones)."""
        return next(t for t in self.study.get_trials(deepcopy=False) if t.number == number)

    def _write(self, trial: FrozenTrial) -> None:
        save_trial_note(
            self.study, trial, trial_note(self.study.study_name, trial, self.spec, self.storage_url)
        )
        self.noted.add(trial.number)
        if facts.checkpoint_status(trial) == "kept":
            self._kept[trial.number] = trial.user_attrs["checkpoint"]
        else:
            self._kept.pop(trial.number, None)

    def _refresh(self) -> None:
        """Rewrite the notes whose checkpoint the clean-up has deleted since they were written."""
        for number, path in list(self._kept.items()):
            if not os.path.isdir(path):
                self._write(self._trial(number))

    def finish(self) -> None:
        """After the run: catch the last clean-up, then attach the best trial's model card."""
        self._guard(self._refresh, "updating checkpoint notes")
        if self.artifact_dir is not None and self.noted:
            self._guard(self._attach_card, "attaching the model card")

    def _attach_card(self) -> None:
        """The best COMPLETE trial's model card as a study artifact (finished trials take none)."""
        import optuna

        from hpo.export import _info, model_card

        best = best_complete(self.study.get_trials(deepcopy=False), self.study.directions[0])
        if best is None or self.spec is None or self.artifact_dir is None:
            return
        name = CARD_NAME.format(number=best.number)
        known = optuna.artifacts.get_all_artifact_meta(self.study)
        if any(m.filename == name for m in known):
            return
        url = storage_mod.mask(storage_mod.resolve_url(self.storage_url))
        card = model_card(_info(self.study.study_name, url, self.spec, best))
        self.artifact_dir.mkdir(parents=True, exist_ok=True)
        store = optuna.artifacts.FileSystemArtifactStore(self.artifact_dir)
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / name
            path.write_text(card, encoding="utf-8")
            optuna.artifacts.upload_artifact(
                artifact_store=store, file_path=str(path), study_or_trial=self.study, mimetype="text/markdown"
            )
        log.info("attached %s to study %s in %s", name, self.study.study_name, self.artifact_dir)

    @staticmethod
    def _guard(action: Callable[[], None], doing: str) -> None:
        try:
            action()
        except Exception as e:  # noqa: BLE001 - a note is a convenience: never fail the run for one
            log.warning("dashboard note: %s failed: %s: %s", doing, type(e).__name__, e)
