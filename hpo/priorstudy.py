"""Warm start from an earlier study (the spec's ``warm_start: {study: NAME, storage: URL}``).

At ``hpo study create`` the finished trials of the earlier study are checked against the new
spec and copied into the new study as history for its sampler (Optuna's public ``create_trial``
and ``Study.add_trials``): COMPLETE ones with their value, PRUNED ones with their intermediate
values (TPE ranks pruned trials by them). Each copy carries the user attribute ``imported`` (the
earlier study's name) and ``imported_number``; imported trials count toward no ``--trials``
target, are never the best, and are never exported (they have no checkpoint here).

The earlier study must be an hpo study with the same objective metric and direction. A
parameter outside the new space (a name the new space does not search, a value outside its
range or choices) is refused, naming the parameter and the trial, unless ``on_mismatch: drop``:
then names the new space does not search are dropped from the copy and a trial whose value lies
outside the new range is left out. Everything is checked before anything is written
(``storage.create`` adds the copies inside the creation it undoes on failure).

The decisions (``objective_problem``, ``param_problem``, ``fit_trial``) are pure functions of
plain values (tests/test_priorstudy.py).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from hpo import space
from hpo import storage as storage_mod
from hpo.errors import SpecError, StorageError, UsageError
from hpo.params import CategoricalParam, FloatParam, IntParam, Param
from hpo.summary import IMPORTED_ATTR

if TYPE_CHECKING:
    from optuna.trial import FrozenTrial

    from hpo.spec import StudySpec

log = logging.getLogger(__name__)

#: What a trial's copy keeps of its user attributes (how far it trained; never paths).
KEPT_ATTRS = (
    "epoch",
    "best_epoch",
    "best_eval_loss",
    "best_perplexity",
    "best_token_accuracy",
    "pruned_at_epoch",
)


@dataclass
class History:
    """The trials to import, and what was dropped or left out on the way."""

    source: str  # the earlier study's name
    trials: list[FrozenTrial] = field(default_factory=list)
    dropped: dict[str, int] = field(default_factory=dict)  # parameter -> trials it was dropped from
    left_out: list[str] = field(default_factory=list)  # one line per trial left out

    def record(self) -> dict[str, Any]:
        """What the new study keeps about its warm start (study user attribute)."""
        return {
            "study": self.source,
            "imported": len(self.trials),
            "dropped_params": self.dropped,
            "left_out": self.left_out[:20],
            "left_out_count": len(self.left_out),
        }


# ---------------------------------------------------------------- pure decisions


def objective_problem(old: tuple[str, str], new: tuple[str, str]) -> str | None:
    """Why an earlier study with objective ``old`` (metric, direction) cannot warm-start one
    with ``new``, if it cannot: their values would not be comparable."""
    if old == new:
        return None
    return (
        f"its objective is {old[0]} ({old[1]}), this spec's is {new[0]} ({new[1]}); "
        "warm-start only from a study with the same objective"
    )


def param_problem(name: str, value: Any, searched: dict[str, Param]) -> str | None:
    """Why ``name=value`` lies outside the new searched space, if it does.

    >>> param_problem("epochs", 3, {"epochs": IntParam(type="int", low=1, high=2)})
    'epochs=3 is outside the new range [1, 2]'
    """
    p = searched.get(name)
    if p is None:
        return f"{name} is not searched by the new space"
    if isinstance(p, CategoricalParam):
        return (
            None if value in p.choices else f"{name}={value!r} is not among the new choices {list(p.choices)}"
        )
    if isinstance(p, FloatParam | IntParam):
        ok = isinstance(value, int | float) and not isinstance(value, bool) and p.low <= value <= p.high
        ok = ok and (isinstance(p, FloatParam) or float(value).is_integer())
        return None if ok else f"{name}={value!r} is outside the new range [{p.low:g}, {p.high:g}]"
    return f"{name} has a kind of search this check does not know"


def fit_trial(
    params: dict[str, Any], searched: dict[str, Param], drop: bool
) -> tuple[dict[str, Any], list[str], str | None]:
    """A trial's parameters fitted to the new space: ``(kept, dropped names, problem)``.

    ``problem`` is the first parameter outside the new space when ``drop`` is False, or (with
    ``drop``) the first value outside a searched parameter's range: the trial is then left out.
    Names the new space does not search are dropped only with ``drop``.
    """
    kept: dict[str, Any] = {}
    dropped: list[str] = []
    for name, value in sorted(params.items()):
        problem = param_problem(name, value, searched)
        if problem is None:
            kept[name] = value
        elif drop and name not in searched:
            dropped.append(name)
        else:
            return kept, dropped, problem
    return kept, dropped, None


# ---------------------------------------------------------------- reading the earlier study


def history(study_spec: StudySpec, url: str | None, source: str) -> History | None:
    """The earlier study's trials to import into the study ``study_spec`` describes, checked.

    Args:
        study_spec: the new study's spec (its ``warm_start`` names the earlier study).
        url: the new study's storage URL (the earlier study's default).
        source: the spec file, for messages.

    Returns:
        None when the spec has no ``warm_start``.

    Raises:
        UsageError: no storage there, or no such study (the message lists the studies there).
        StorageError: the earlier study's storage cannot be reached.
        SpecError: another objective, a space that shares no parameter, a parameter outside the
            new space (without ``on_mismatch: drop``), or nothing left to import.
    """
    ws = study_spec.warm_start
    if ws is None:
        return None
    where = ws.storage or storage_mod.resolve_url(url)
    try:
        earlier = storage_mod.load(ws.study, where)
    except (UsageError, StorageError) as e:  # the same class (exit code), naming the spec's section
        raise type(e)(f"{source}: warm_start: {e}") from None
    refuse = _refuser(source, ws.study)
    try:
        earlier_spec = storage_mod.spec_of(earlier)
    except UsageError as e:  # an Optuna study hpo did not create
        raise refuse(str(e)) from None
    if earlier_spec.objectives or study_spec.objectives:  # trials with several values: not yet
        raise refuse(
            "warm_start imports single-objective studies only (one of the two has objectives:); "
            "remove warm_start or use one objective in both"
        )
    old = (earlier_spec.objective.metric, earlier_spec.objective.direction)
    problem = objective_problem(old, (study_spec.objective.metric, study_spec.objective.direction))
    if problem:
        raise refuse(problem)
    searched = study_spec.space.searched()
    shared = set(searched) & set(earlier_spec.space.searched())
    if not shared:
        raise refuse("it searches none of the parameters this spec searches; nothing it learned applies")
    return _collect(
        earlier.get_trials(deepcopy=False), study_spec, ws.study, ws.on_mismatch == "drop", refuse
    )


def _refuser(source: str, name: str):
    def refuse(problem: str) -> SpecError:
        return SpecError(source, [f"warm_start: study {name!r}: {problem}"])

    return refuse


def _collect(trials: list, study_spec: StudySpec, name: str, drop: bool, refuse) -> History:
    """The copies of ``trials``' finished ones, fitted to the new space."""
    from optuna.trial import TrialState

    out = History(name)
    searched = study_spec.space.searched()
    dists = space.distributions(study_spec.space)
    finished = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    for t in finished:
        if t.state == TrialState.COMPLETE and t.value is None:
            continue
        kept, dropped, problem = fit_trial(t.params, searched, drop)
        if problem and not drop:
            fix = "widen the new space, or set warm_start.on_mismatch: drop"
            raise refuse(f"trial {t.number}: {problem}; {fix}")
        if problem:
            out.left_out.append(f"trial {t.number}: {problem}")
            continue
        for p in dropped:
            out.dropped[p] = out.dropped.get(p, 0) + 1
        out.trials.append(_copy(t, kept, {k: dists[k] for k in kept}, name))
    if not out.trials:
        why = f"; {len(out.left_out)} lie outside the new space" if out.left_out else ""
        raise refuse(f"it has no finished trial to import ({len(finished)} finished{why})")
    return out


def _copy(t, params: dict[str, Any], dists: dict[str, Any], source: str) -> FrozenTrial:
    """``t`` as a new trial of the new study, marked ``imported``."""
    import optuna

    attrs = {k: t.user_attrs[k] for k in KEPT_ATTRS if t.user_attrs.get(k) is not None}
    attrs.update({IMPORTED_ATTR: source, "imported_number": t.number})
    return optuna.trial.create_trial(
        state=t.state,
        value=t.value if t.state == optuna.trial.TrialState.COMPLETE else None,
        params=params,
        distributions=dists,
        user_attrs=attrs,
        intermediate_values=dict(t.intermediate_values),
    )
