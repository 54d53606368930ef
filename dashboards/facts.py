"""Facts about a trial that the report and the dashboard notes both show, as plain strings."""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING, Any

from optuna.trial import FrozenTrial, TrialState

from hpo import storage as storage_mod
from hpo.errors import HpoError
from hpo.summary import checkpoint_kept, first_value

if TYPE_CHECKING:
    import optuna

    from hpo.spec import StudySpec

log = logging.getLogger(__name__)


def spec_or_none(study: optuna.Study) -> StudySpec | None:
    """The hpo spec stored with ``study``, or None for a study hpo did not create."""
    try:
        return storage_mod.spec_of(study)
    except (HpoError, ValueError) as e:
        log.info("study %s has no usable hpo spec: %s", study.study_name, e)
        return None


def storage_flag(url: str | None) -> str:
    """`` --storage URL`` (password masked) unless ``url`` is unset or the default storage."""
    if not url or url == storage_mod.DEFAULT_URL:
        return ""
    return f" --storage {storage_mod.mask(url)}"


def export_command(study: str, number: int, url: str | None = None) -> str:
    """The exact command that exports trial ``number``'s best checkpoint."""
    return (
        f"hpo export{storage_flag(url)} --study {study} --trial {number} --out exports/{study}-trial-{number}"
    )


def checkpoint_status(trial: FrozenTrial) -> str:
    """``kept`` (on disk, exportable), ``deleted`` (removed by the keep_top_k clean-up) or ``none``."""
    if not trial.user_attrs.get("checkpoint"):
        return "none"
    return "kept" if checkpoint_kept(trial) else "deleted"


def hyperparameters(trial: FrozenTrial, spec: StudySpec | None) -> dict[str, Any]:
    """All of a trial's hyperparameters (searched and fixed), in the spec's order."""
    from hpo.spec import SEARCHABLE

    merged = {**(spec.space.fixed() if spec is not None else {}), **trial.params}
    order = [n for n in SEARCHABLE if n in merged] + [n for n in merged if n not in SEARCHABLE]
    return {n: merged[n] for n in order}


def epochs_reached(trial: FrozenTrial, spec: StudySpec | None) -> float | None:
    """The latest epoch a trial reached (its ``epoch`` attribute, else from its last step)."""
    epoch = trial.user_attrs.get("epoch")
    if isinstance(epoch, int | float):
        return float(epoch)
    if trial.intermediate_values and spec is not None:
        return max(trial.intermediate_values) * spec.training.eval_every
    return None


def wall_seconds(trial: FrozenTrial) -> float | None:
    """A trial's wall time: its recorded ``trial_s``, else completion minus start."""
    recorded = trial.user_attrs.get("trial_s")
    if isinstance(recorded, int | float):
        return float(recorded)
    if trial.datetime_start and trial.datetime_complete:
        return (trial.datetime_complete - trial.datetime_start).total_seconds()
    return None


def finite_value(trial: FrozenTrial) -> float | None:
    """A COMPLETE trial's value when it is a finite number, else None."""
    value = first_value(trial) if trial.state == TrialState.COMPLETE else None
    return float(value) if value is not None and math.isfinite(value) else None


def last_value(trial: FrozenTrial) -> float | None:
    """The last intermediate value a trial reported (its eval loss when it stopped)."""
    if not trial.intermediate_values:
        return None
    return trial.intermediate_values[max(trial.intermediate_values)]


def generated(trial: FrozenTrial) -> tuple[str, list[dict[str, str]]]:
    """A trial's generated answers (``evaluation.generate``): one line of their metrics, epoch and
    cost, and the answers kept beside their prompts and references; ("", []) when it has none."""
    metrics = trial.user_attrs.get("generated_metrics")
    if not isinstance(metrics, dict):
        return "", []
    line = ", ".join(f"{k} {fmt(v)}" for k, v in metrics.items())
    epoch, seconds = trial.user_attrs.get("generated_epoch"), trial.user_attrs.get("generate_s")
    if isinstance(epoch, int | float):
        line += f" at epoch {epoch:g}"
    if isinstance(seconds, int | float):
        tokens = trial.user_attrs.get("generated_tokens")
        line += f"; generating took {seconds:.1f} s in all" + (f" ({tokens} tokens)" if tokens else "")
    samples = trial.user_attrs.get("generated_samples")
    return line, [s for s in samples if isinstance(s, dict)] if isinstance(samples, list) else []


def fmt(value: Any, digits: int = 4) -> str:
    """A number for people: floats to ``digits`` places, those under 0.01 to 3 significant digits."""
    if value is None:
        return "-"
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        return f"{value:.3g}" if value != 0 and abs(value) < 0.01 else f"{value:.{digits}f}"
    return str(value)
