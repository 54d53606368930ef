"""``hpo confirm``: retrain the best configurations with new seeds at their full budget (no ASHA,
no early stopping), through the same Ray Tune trials and Optuna bridge as ``hpo run``.

Each (configuration, seed) run is queued as a trial tagged ``confirm`` (user attributes
``confirm``, ``confirm_of``: the search trial it retrains, ``confirm_seed``) and run by a bridge
that asks for nothing else; confirm runs count toward no ``--trials`` target and are never "the
best trial". A second call with the same options runs only the runs still missing. The decisions
(which configurations, which seeds, mean ± std) are ``hpo/confirmed.py``'s.

    from hpo.confirm import confirm_study
    confirm_study("demo", top=3, seeds=3)
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from hpo import confirmed
from hpo import storage as storage_mod
from hpo.errors import UsageError
from hpo.summary import CONFIRM_ATTR, CONFIRM_OF_ATTR, CONFIRM_SEED_ATTR, is_confirm

log = logging.getLogger(__name__)


@dataclass
class ConfirmSummary:
    """What ``hpo confirm`` did and found."""

    study: str
    metrics: list[str]
    directions: list[Literal["minimize", "maximize"]]
    sources: list[int]  # the configurations' search trials, best first
    queued: int = 0  # confirm runs this call queued (the rest were there already)
    results: list[confirmed.Confirmed] = field(default_factory=list)
    params: dict[int, dict[str, Any]] = field(default_factory=dict)  # by source trial
    run: Any = None  # the runner's RunSummary
    failed: int = 0  # confirm runs of these configurations that failed


def confirm_study(
    study: str | None = None,
    top: int = 3,
    seeds: int = 3,
    storage: str | None = None,
    runs_dir: str | Path | None = None,
    on_event: Callable | None = None,
    **options: Any,
) -> ConfirmSummary:
    """Retrain the ``top`` best configurations with ``seeds`` new seeds each; returns their mean ± std.

    Args:
        study: the study name (None: the only study in the storage).
        top: configurations to confirm, best first (several objectives: of the Pareto front).
        seeds: new seeds per configuration.
        storage: the storage URL.
        runs_dir: checkpoints and Ray files (default ``runs/<study>``).
        on_event: called with each trial event.
        **options: ``address``, ``concurrency``, ``cpus_per_trial``, ``gpus_per_trial``, ``max_failures``.

    Raises:
        UsageError: ``top`` or ``seeds`` below 1, no COMPLETE trial yet, or search trials wait in
            the queue (``hpo run`` must run them first). Nothing is queued then.
    """
    from hpo import runner, space

    if top < 1 or seeds < 1:
        raise UsageError(f"--top and --seeds must be >= 1 (got --top {top} --seeds {seeds})")
    loaded = storage_mod.load(study, storage, heartbeat=True)
    spec = storage_mod.spec_of(loaded)
    trials = loaded.get_trials(deepcopy=False)
    _refuse_waiting_search_trials(loaded.study_name, trials)
    chosen = confirmed.sources(trials, spec.directions, top)
    if not chosen:
        raise UsageError(f"study {loaded.study_name!r} has no COMPLETE trial to confirm; run `hpo run` first")
    todo = _queue(loaded, spec, chosen, seeds, trials)
    out = ConfirmSummary(
        loaded.study_name, spec.metrics, spec.directions, [t.number for t in chosen], len(todo)
    )
    out.params = {t.number: space.complete(t.params, spec.space) for t in chosen}
    done = sum(1 for t in trials if is_confirm(t) and t.state.name in ("COMPLETE", "PRUNED"))
    full = spec.model_copy(
        update={
            "schedule": _no_schedule(),
            "training": spec.training.model_copy(update={"early_stopping_patience": None}),
        }
    )
    loaded.sampler = space.sampler(spec.sampler, spec.seed, len(trials), spec.space)
    folder = Path(runs_dir) if runs_dir else Path("runs") / loaded.study_name
    opts = runner.RunOptions(target=done + len(todo), runs_dir=folder, confirm=True, **options)
    try:
        out.run = runner.run(loaded, full, opts, on_event)
    finally:
        _close_unrun(loaded)
    after = loaded.get_trials(deepcopy=False)
    mine = set(out.sources)
    out.results = [c for c in confirmed.aggregate(after, spec.directions) if c.source in mine]
    out.failed = sum(
        1
        for t in after
        if is_confirm(t) and t.state.name == "FAIL" and t.user_attrs.get(CONFIRM_OF_ATTR) in mine
    )
    return out


def _queue(loaded, spec, chosen: list, seeds: int, trials: list) -> list[tuple[int, int]]:
    """Queue the (configuration, new seed) runs not there yet; returns them. A searched seed is
    fixed by the queue; otherwise the bridge passes ``confirm_seed`` on to the trial."""
    base_seed = spec.seed if spec.training.seed is None else spec.training.seed
    plan = [
        (t.number, s)
        for t in chosen
        for s in confirmed.new_seeds(int(t.params.get("seed", base_seed)), seeds)
    ]
    todo = confirmed.missing(trials, plan)
    by_number = {t.number: t for t in chosen}
    for number, seed in todo:
        params = dict(by_number[number].params)
        if "seed" in spec.space.searched():
            params["seed"] = seed
        attrs = {CONFIRM_ATTR: True, CONFIRM_OF_ATTR: number, CONFIRM_SEED_ATTR: seed}
        storage_mod.enqueue(loaded, params, **attrs)
    return todo


def _no_schedule():
    from hpo.specsections import NoSchedule

    return NoSchedule()


def _refuse_waiting_search_trials(name: str, trials: list) -> None:
    """Queued search trials would be asked first: they are ``hpo run``'s to run."""
    waiting = [t.number for t in trials if t.state.name == "WAITING" and not is_confirm(t)]
    if waiting:
        raise UsageError(
            f"study {name!r} has {len(waiting)} queued search trial(s) ({', '.join(map(str, waiting[:5]))}); "
            f"run them first with `hpo run --study {name}`, then confirm"
        )


def _close_unrun(study) -> None:
    """Confirm runs still queued when the run ended (it stopped early) are closed FAIL, so no
    ``hpo run`` asks them; a second ``hpo confirm`` queues them again."""
    backend = storage_mod.backend(study)
    study_id = storage_mod.study_id(study)
    for t in study.get_trials(deepcopy=False):
        if is_confirm(t) and t.state.name == "WAITING":
            trial_id = backend.get_trial_id_from_study_id_trial_number(study_id, t.number)
            backend.set_trial_user_attr(trial_id, "fail_reason", "not run: the confirm run ended first")
            backend.set_trial_state_values(trial_id, t.state.FAIL)
