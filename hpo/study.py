"""The operations behind the CLI, importable from notebooks: create, run, show, list, delete.

from hpo import create_study, run_study, export_best
create_study("studies/demo.yaml")
run_study("demo", trials=12)
export_best("exports/demo-best", study="demo")
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hpo import checkpoint, dataspace, models
from hpo import data as data_mod
from hpo import spec as spec_mod
from hpo import storage as storage_mod
from hpo.errors import SpecError, UsageError

log = logging.getLogger(__name__)


def create_study(spec_path: str | Path, name: str | None = None, storage: str | None = None):
    """Validate a spec file and store a new study from it.

    Returns:
        The validated ``StudySpec`` (the study is in the storage).

    Raises:
        SpecError: the spec is invalid, or its model cannot be found here (nothing is written).
        UsageError: a study of that name exists.
        StorageError: the storage cannot be reached.
    """
    study_spec = spec_mod.load(spec_path, name=name)
    try:  # the model is found now (a folder, the Hugging Face cache, the Hub), not after Ray starts
        found = models.locate(study_spec.model)
    except UsageError as e:
        raise SpecError(str(spec_path), [str(e)]) from e
    searched = "dropout" in study_spec.space.searched()
    problem = checkpoint.dropout_problem(checkpoint.local_config(found.path or study_spec.model), searched)
    if problem:  # a searched dimension that changes nothing: refused before anything is written
        raise SpecError(str(spec_path), [problem])
    shown = dataspace.shown_values(study_spec.space)  # augmented samples at the strongest setting
    report = data_mod.check(study_spec.data, study_spec.seed, shown=shown)  # bad data fails before any write
    storage_mod.create(study_spec, storage, data_report=report)
    log.info(found.note)
    return study_spec


def run_study(
    study: str | None = None,
    trials: int = 20,
    storage: str | None = None,
    runs_dir: str | Path | None = None,
    on_event: Callable | None = None,
    **options: Any,
):
    """Run trials until the study holds ``trials`` finished (complete + pruned) ones.

    Args:
        study: the study name (None: the only study in the storage).
        trials: the study's target of finished trials; rerunning after a crash finishes the rest.
        storage: the storage URL (default ``$HPO_STORAGE`` or ``sqlite:///hpo.db``).
        runs_dir: checkpoints and Ray files (default ``runs/<study>``).
        on_event: called with each trial event (start, complete, pruned, fail, interrupted).
        **options: ``address``, ``concurrency``, ``cpus_per_trial``, ``gpus_per_trial``, ``max_failures``.

    Returns:
        A ``RunSummary``.
    """
    from hpo import runner, space

    if trials < 1:
        raise UsageError(f"--trials must be >= 1 (got {trials})")
    loaded = storage_mod.load(study, storage, heartbeat=True)
    study_spec = storage_mod.spec_of(loaded)
    n_existing = len(loaded.get_trials(deepcopy=False))
    loaded.sampler = space.sampler(study_spec.sampler, study_spec.seed, n_existing, study_spec.space)
    folder = Path(runs_dir) if runs_dir else Path("runs") / loaded.study_name
    opts = runner.RunOptions(target=trials, runs_dir=folder, **options)
    return runner.run(loaded, study_spec, opts, on_event)


def show_study(study: str | None = None, storage: str | None = None, trials: bool = False) -> dict[str, Any]:
    """A study's summary: trials by state, the best trial, its params and checkpoint."""
    from hpo.summary import best_complete, state_counts, summarize, trial_row

    loaded = storage_mod.load(study, storage)
    frozen = loaded.get_trials(deepcopy=False)
    counts, best = state_counts(frozen), best_complete(frozen, loaded.direction)
    rows = [trial_row(t) for t in frozen] if trials else None
    out = summarize(loaded, storage_mod.mask(storage_mod.resolve_url(storage)), counts, best)
    if rows is not None:
        out["trials"] = rows
    out["spec"] = storage_mod.spec_of(loaded).model_dump()
    out["data_report"] = storage_mod.data_report(loaded)
    return out


def list_studies(storage: str | None = None) -> list[dict[str, Any]]:
    """Every study in the storage with its trial count and best value."""
    from hpo.summary import best_complete, state_counts

    st = storage_mod.open_storage(storage)
    out = []
    for s in st.get_all_studies():
        trials = st.get_all_trials(st.get_study_id_from_name(s.study_name), deepcopy=False)
        best = best_complete(trials, s.direction)
        counts = state_counts(trials)
        row = {"study": s.study_name, "trials": sum(counts.values()), "counts": counts}
        out.append({**row, "best_value": best.value if best else None})
    return out


def delete_study(name: str, storage: str | None = None) -> None:
    """Delete a study and its trials from the storage (checkpoint folders stay on disk)."""
    storage_mod.delete(name, storage)
