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

from hpo import checkpoint, dataspace, models, priorstudy
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
        SpecError: the spec is invalid, or its model cannot be found here, or its ``warm_start``
            study cannot warm-start it (nothing is written).
        UsageError: a study of that name exists, or the ``warm_start`` study does not.
        StorageError: the storage (or the ``warm_start`` study's) cannot be reached.
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
    if study_spec.evaluation.generate is not None and report.get("kind") == "text":
        raise SpecError(
            str(spec_path),
            [
                f"evaluation.generate: {study_spec.data.path} holds plain text (no prompts to answer); "
                "use prompt/completion or chat data, or remove evaluation.generate"
            ],
        )
    history = priorstudy.history(study_spec, storage, str(spec_path))  # checked before any write
    ws = study_spec.warm_start
    if ws is not None and ws.storage:  # the stored spec keeps no password
        masked = ws.model_copy(update={"storage": storage_mod.mask(ws.storage)})
        study_spec = study_spec.model_copy(update={"warm_start": masked})
    storage_mod.create(study_spec, storage, data_report=report, history=history)
    log.info(found.note)
    return study_spec


def run_budget(time_budget: str | float | None, study_spec) -> float | None:
    """A run's time budget in seconds: ``time_budget`` (``--time-budget``: ``90m``, ``2h``,
    ``3600s`` or seconds) over the spec's ``budget``; None: no budget.

    Raises:
        UsageError: ``time_budget`` is not a positive duration.
    """
    from hpo import budget

    if time_budget is None:
        return study_spec.budget.seconds if study_spec.budget else None
    try:
        return budget.parse_duration(str(time_budget))
    except ValueError as e:
        raise UsageError(f"--time-budget {e}") from None


def run_target(trials: int | None, budget_s: float | None) -> int:
    """A run's target of finished trials: ``trials``; left out, 20, or none with a time budget
    (the budget alone ends the run).

    Raises:
        UsageError: ``trials`` < 1.
    """
    from hpo.budget import NO_TARGET

    if trials is not None and trials < 1:
        raise UsageError(f"--trials must be >= 1 (got {trials})")
    if trials is None:
        return NO_TARGET if budget_s else 20
    return trials


def run_study(
    study: str | None = None,
    trials: int | None = None,
    storage: str | None = None,
    runs_dir: str | Path | None = None,
    on_event: Callable | None = None,
    time_budget: str | float | None = None,
    **options: Any,
):
    """Run trials until the study holds ``trials`` finished (complete + pruned) ones, or the time
    budget is spent, whichever comes first.

    Args:
        study: the study name (None: the only study in the storage).
        trials: the study's target of finished trials; rerunning after a crash finishes the rest.
            None: 20, or no target when there is a time budget.
        storage: the storage URL (default ``$HPO_STORAGE`` or ``sqlite:///hpo.db``).
        runs_dir: checkpoints and Ray files (default ``runs/<study>``).
        on_event: called with each trial event (start, complete, pruned, fail, interrupted).
        time_budget: this run's time budget (``90m``, ``2h``, ``3600s``, or seconds); None: the
            spec's ``budget``, if any.
        **options: ``address``, ``concurrency``, ``cpus_per_trial``, ``gpus_per_trial``, ``max_failures``.

    Returns:
        A ``RunSummary``.
    """
    from hpo import runner, space

    if trials is not None and trials < 1:  # bad input fails before the storage is opened
        raise UsageError(f"--trials must be >= 1 (got {trials})")
    if time_budget is not None:
        run_budget(time_budget, None)
    loaded = storage_mod.load(study, storage, heartbeat=True)
    study_spec = storage_mod.spec_of(loaded)
    budget_s = run_budget(time_budget, study_spec)
    n_existing = len(loaded.get_trials(deepcopy=False))
    loaded.sampler = space.sampler(study_spec.sampler, study_spec.seed, n_existing, study_spec.space)
    folder = Path(runs_dir) if runs_dir else Path("runs") / loaded.study_name
    opts = runner.RunOptions(
        target=run_target(trials, budget_s), runs_dir=folder, time_budget_s=budget_s, **options
    )
    return runner.run(loaded, study_spec, opts, on_event)


def show_study(study: str | None = None, storage: str | None = None, trials: bool = False) -> dict[str, Any]:
    """A study's summary: trials by state, the best trial, its params and checkpoint."""
    from hpo.summary import best_complete, pareto, state_counts, summarize, trial_row

    loaded = storage_mod.load(study, storage)
    frozen = loaded.get_trials(deepcopy=False)
    counts, best = state_counts(frozen), best_complete(frozen, loaded.directions[0])
    rows = [trial_row(t) for t in frozen] if trials else None
    out = summarize(loaded, storage_mod.mask(storage_mod.resolve_url(storage)), counts, best)
    if rows is not None:
        out["trials"] = rows
    study_spec = storage_mod.spec_of(loaded)
    out["spec"] = study_spec.model_dump()
    out["data_report"] = storage_mod.data_report(loaded)
    from dataclasses import asdict

    from hpo.confirmed import aggregate

    out["confirmed"] = [
        {**asdict(c), "metrics": study_spec.metrics} for c in aggregate(frozen, study_spec.directions)
    ]
    if study_spec.objectives:  # several objectives: the Pareto front instead of one best
        out["objectives"] = [o.model_dump() for o in study_spec.objectives]
        out["asha"] = runner_note(study_spec)
        out["pareto"] = [pareto_row(t, study_spec.metrics) for t in pareto(frozen, study_spec.directions)]
    return out


def runner_note(study_spec) -> str | None:
    """What ASHA compares with several objectives (the first one), or None without ASHA."""
    if study_spec.schedule.type != "asha":
        return None
    return f"ASHA stops trials on the first objective ({study_spec.metrics[0]}) only"


def pareto_row(t, metrics: list[str]) -> dict[str, Any]:
    """A trial of the Pareto front as plain values."""
    from hpo.summary import checkpoint_kept

    return {
        "trial": t.number,
        "values": dict(zip(metrics, t.values, strict=True)),
        "params": t.params,
        "checkpoint_kept": checkpoint_kept(t),
    }


def list_studies(storage: str | None = None) -> list[dict[str, Any]]:
    """Every study in the storage with its trial count and best value."""
    from hpo.summary import best_complete, first_value, state_counts

    st = storage_mod.open_storage(storage)
    out = []
    for s in st.get_all_studies():
        trials = st.get_all_trials(st.get_study_id_from_name(s.study_name), deepcopy=False)
        best = best_complete(trials, s.directions[0])
        counts = state_counts(trials)
        row = {"study": s.study_name, "trials": sum(counts.values()), "counts": counts}
        out.append({**row, "best_value": first_value(best) if best else None})
    return out


def delete_study(name: str, storage: str | None = None) -> None:
    """Delete a study and its trials from the storage (checkpoint folders stay on disk)."""
    storage_mod.delete(name, storage)
