"""A curve table's rows back in a storage, for ``scripts/record_curves.py``: restored as trials
(``restore``: a recording goes on on a machine without the first one's storage), or trained again
on this machine (``train_again``), to measure another CPU kind's seconds against the table's
(``--calibrate K``) or to replace rows whose seconds a loaded machine inflated (``--rerecord``).

Rows trained again train in a study of their own in the recording's storage,
``<study>-calibration`` or ``<study>-rerecord`` (the table's spec and seed, no early stopping),
each queued with the table's number in a user attribute, so a rerun reuses what that study holds
and trains only what it lacks.
"""

from __future__ import annotations

import itertools
import re
from pathlib import Path
from typing import Any

from hpo import curves, spec, storage
from hpo.errors import HpoError, UsageError

ROOT = Path(__file__).resolve().parents[1]

#: the study of each purpose: ``<study>-<purpose>``, its trials tagged ``<attribute>: <table row>``
ATTRIBUTE = {"calibration": "calibrates", "rerecord": "rerecords"}


def runs_dir(url: str, name: str) -> Path:
    """Where a study's trial folders go: beside its SQLite file (the default storage is
    runs/curves/<study>.db, so runs/curves/<study>), else under runs/curves."""
    if url.startswith("sqlite:///"):
        return Path(url.removeprefix("sqlite:///")).parent / name
    return ROOT / "runs" / "curves" / name


def train_again(
    s: spec.StudySpec, spec_path: str, url: str, rows: list[curves.Curve], purpose: str
) -> list[curves.Curve]:
    """Train ``rows`` (and any rows this purpose's study queued before) again here; returns every row
    that study trained, as curves numbered as the table's rows, in the table's order.

    Raises:
        HpoError: a trial of that study did not complete.
    """
    from hpo.study import create_study, run_study

    name, attribute = f"{s.name}-{purpose}", ATTRIBUTE[purpose]
    if name not in storage.study_names(storage.open_storage(url)):
        create_study(spec_path, name=name, storage=url)
    study = storage.load(name, url)
    numbers = queued(s, url, purpose)
    for r in rows:  # queued: the run asks these first, in order
        if r.number not in numbers:
            storage.enqueue(study, r.params, **{attribute: r.number})
            numbers.add(r.number)
    run_study(name, trials=len(numbers), storage=url, runs_dir=runs_dir(url, name))
    done = trained(s, url, purpose)
    if numbers - done.keys():
        raise HpoError(
            f"study {name!r} in {url}: the trials of rows {sorted(numbers - done.keys())} did not "
            "complete; delete that study to train them again"
        )
    return [done[n] for n in sorted(numbers)]


def queued(s: spec.StudySpec, url: str, purpose: str) -> set[int]:
    """The table rows ``<study>-<purpose>`` was asked to train (done or not; none: no such study)."""
    return {row for row, _ in _tagged(s, url, purpose)}


def trained(s: spec.StudySpec, url: str, purpose: str) -> dict[int, curves.Curve]:
    """The curves ``<study>-<purpose>`` holds (none: no such study), by the table row each trains."""
    out = {}
    for row, t in _tagged(s, url, purpose):
        c = curves.curve_of(t, s.training.eval_every)
        if c is not None:
            out[row] = curves.renumbered(c, row)
    return out


def _tagged(s: spec.StudySpec, url: str, purpose: str) -> list[tuple[int, Any]]:
    """(table row, trial) for each trial of ``<study>-<purpose>`` (none: no such study)."""
    name, attribute = f"{s.name}-{purpose}", ATTRIBUTE[purpose]
    if name not in storage.study_names(storage.open_storage(url)):
        return []
    trials = storage.load(name, url).get_trials(deepcopy=False)
    return [(int(t.user_attrs[attribute]), t) for t in trials if t.user_attrs.get(attribute) is not None]


def spread(rows: list[curves.Curve], k: int) -> list[curves.Curve]:
    """``k`` rows evenly spaced over the table (first and last included): its seconds were recorded
    over hours of a shared machine whose load moved them by 3x (the tiny table: ~1.7 ms a token in
    its first 30 rows, 0.5-0.8 in the next 40), so the calibration samples the whole recording."""
    ordered = sorted(rows, key=lambda c: c.number)
    if k >= len(ordered):
        return ordered
    return [ordered[round(i * (len(ordered) - 1) / max(k - 1, 1))] for i in range(k)]


def parse_rows(text: str, table: curves.Table) -> list[curves.Curve]:
    """The table rows named by ``text`` (``0-11``, ``3,5,7-9``, ``all``).

    Raises:
        UsageError: not such a list, or a number the table has no curve for.
    """
    by_number = {c.number: c for c in table.curves}
    if text.strip() == "all":
        return sorted(by_number.values(), key=lambda c: c.number)
    numbers: set[int] = set()
    for part in text.split(","):
        m = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", part)
        if not m:
            raise UsageError(f"--rerecord {text!r}: write table rows as 0-11, 3,5,7-9 or all")
        first, last = int(m[1]), int(m[2] or m[1])
        numbers.update(range(first, last + 1))
    missing = sorted(numbers - by_number.keys())
    if missing:
        raise UsageError(
            f"--rerecord {text!r}: the table has no curve numbered {missing[0]} (rows: its curves' numbers)"
        )
    return [by_number[n] for n in sorted(numbers)]


def restore(s: spec.StudySpec, url: str, table: curves.Table | None, name: str) -> int:
    """Put the curves of an existing table back into a new, empty storage as COMPLETE trials
    (Optuna's public ``create_trial``/``add_trial``), so a recording continues on another machine
    where ``runs/curves`` is gone: the sampler's seed moves on with the trial count
    (``space.sampler``), so the next configurations are the ones the first machine would have drawn.
    A number the table lacks (a trial that failed there) becomes a FAIL trial, so that the numbers
    line up. Returns the curves restored (0: no table, or another study's)."""
    import optuna

    from hpo import space
    from hpo.bookkeeping import EVAL_TIME_PREFIX

    if table is None or table.header.get("study") != s.name:
        return 0
    dists = space.distributions(s.space)
    study = storage.load(s.name, url)
    by_number = {c.number: c for c in table.curves}
    for n in range(max(by_number) + 1):  # trial numbers line up with the table's
        c = by_number.get(n)
        if c is None:  # a trial that failed there on the first machine
            study.add_trial(
                optuna.trial.create_trial(
                    state=optuna.trial.TrialState.FAIL, user_attrs={"restored_from": name}
                )
            )
            continue
        steps = [round(e / table.header["eval_every"]) for e in c.epochs]
        elapsed = list(itertools.accumulate(c.seconds))
        tokens = c.tokens or [0] * len(steps)
        attrs = {f"{EVAL_TIME_PREFIX}{st}": [t, k] for st, t, k in zip(steps, elapsed, tokens, strict=True)}
        attrs.update(epoch=c.epochs[-1], restored_from=name)
        study.add_trial(
            optuna.trial.create_trial(
                params={k: v for k, v in c.params.items() if k in dists},
                distributions={k: d for k, d in dists.items() if k in c.params},
                value=c.best(table.minimize),
                intermediate_values=dict(zip(steps, c.values, strict=True)),
                user_attrs=attrs,
            )
        )
    return len(table.curves)
