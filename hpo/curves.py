"""Learning-curve tables: every evaluation of full-budget trials, read back from a study's storage.

A table is a JSONL file: one header record (what made it: command, machine, commit, the study's
spec) and one record per trial (its params, the epoch of each evaluation, the objective there, the
trial seconds each segment between evaluations took, and tokens trained so far). The replay
simulator (``hpo/replay.py``) runs search strategies over it as if live. Pure: no Ray, no torch.
"""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from hpo.bookkeeping import EVAL_TIME_PREFIX
from hpo.errors import UsageError


@dataclass(frozen=True)
class Curve:
    """One configuration's curve: evaluation ``i`` came at ``epochs[i]`` with ``values[i]``, after
    ``seconds[i]`` trial seconds since the previous one (the first: since the trial started)."""

    number: int
    params: dict[str, Any]
    epochs: list[float]
    values: list[float]
    seconds: list[float]
    tokens: list[int] = field(default_factory=list)
    complete: bool = True  # the curve runs to the trial's own budget (False: a stopped trial's)

    def best(self, minimize: bool = True) -> float:
        """The trial's value as a run records it: its best evaluation."""
        return min(self.values) if minimize else max(self.values)


@dataclass(frozen=True)
class Table:
    """A learning-curve table: its header (``direction``, ``eval_every``, provenance) and curves."""

    header: dict[str, Any]
    curves: list[Curve]

    @property
    def minimize(self) -> bool:
        return self.header.get("direction", "minimize") == "minimize"

    def best(self) -> float:
        """The best objective any configuration in the table reaches (the target's reference)."""
        vals = [c.best(self.minimize) for c in self.curves]
        return min(vals) if self.minimize else max(vals)


def curve_of(trial, eval_every: float, pruned: bool = False) -> Curve | None:
    """A finished trial's curve (None: not COMPLETE (or PRUNED, with ``pruned``), or an
    evaluation lacks its time).

    Args:
        trial: an Optuna ``FrozenTrial`` written by hpo's bridge (``eval_time_<step>`` attributes).
        eval_every: the spec's ``training.eval_every`` (step ``s`` is epoch ``s * eval_every``,
            the last one at the trial's final epoch).
    """
    if trial.state.name not in (("COMPLETE", "PRUNED") if pruned else ("COMPLETE",)):
        return None
    if not trial.intermediate_values:
        return None
    steps = sorted(trial.intermediate_values)
    times = [trial.user_attrs.get(f"{EVAL_TIME_PREFIX}{s}") for s in steps]
    if any(t is None for t in times):
        return None
    last_epoch = float(trial.user_attrs.get("epoch", steps[-1] * eval_every))
    epochs = [round(min(s * eval_every, last_epoch), 6) for s in steps]
    cumulative = [float(t[0]) for t in times]  # type: ignore[index]
    seconds = [round(b - a, 4) for a, b in zip([0.0, *cumulative[:-1]], cumulative, strict=True)]
    values = [float(trial.intermediate_values[s]) for s in steps]
    tokens = [int(t[1] or 0) for t in times]  # type: ignore[index]
    budget = trial.params.get("epochs")
    complete = trial.state.name == "COMPLETE" and (budget is None or last_epoch >= float(budget) - 1e-6)
    return Curve(trial.number, dict(trial.params), epochs, values, seconds, tokens, complete)


def write(path: Path, header: dict[str, Any], curves: list[Curve]) -> None:
    """Write a table (header first), atomically: a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        f.write(json.dumps({"kind": "header", **header}) + "\n")
        for c in curves:
            f.write(json.dumps({"kind": "curve", **asdict(c)}) + "\n")
    tmp.replace(path)


def read(path: str | Path) -> Table:
    """Read a table written by ``write``.

    Raises:
        UsageError: the file is missing or is not a curve table.
    """
    p = Path(path)
    if not p.is_file():
        raise UsageError(f"{p}: no such curve table (make one with scripts/record_curves.py)")
    header: dict[str, Any] | None = None
    curves = []
    for i, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
            kind = rec.pop("kind")
            if kind == "header":
                header = rec
            else:
                curves.append(Curve(**rec))
        except (ValueError, KeyError, TypeError) as e:
            raise UsageError(
                f"{p}:{i}: not a curve-table record ({e}); remake it with scripts/record_curves.py"
            ) from e
    if header is None or not curves:
        raise UsageError(f"{p}: a curve table needs a header record and at least one curve")
    return Table(header, curves)


@dataclass(frozen=True)
class Calibration:
    """How another machine's trial seconds compare with a table's, from some of the table's
    configurations trained again there (same spec, same seed): ``factor`` is the median over them
    of seconds there / seconds in the table; ``value_gap`` the largest relative difference of their
    final values (another precision, or code that trains differently, shows here)."""

    rows: list[int]
    factor: float
    value_gap: float

    def to_table_seconds(self, c: Curve) -> Curve:
        """A curve recorded on the calibrated machine, its seconds in the table's time base."""
        return replace(c, seconds=[round(s / self.factor, 4) for s in c.seconds])


def renumbered(c: Curve, number: int) -> Curve:
    """``c`` as the table's row ``number`` (a row trained again in a study of its own)."""
    return replace(c, number=number)


def calibrate(rows: list[Curve], again: list[Curve]) -> Calibration:
    """Compare the table's ``rows`` with the same configurations trained again (``again[i]`` is
    ``rows[i]``'s configuration).

    Raises:
        ValueError: the lists differ in length or configuration, or a curve is empty.
    """
    if not rows or len(rows) != len(again):
        raise ValueError(f"calibrate: {len(rows)} table rows but {len(again)} curves trained again")
    ratios, gaps = [], []
    for r, a in zip(rows, again, strict=True):
        if not _same_params(r.params, a.params) or not r.values or not a.values:
            raise ValueError(f"calibrate: row {r.number} and its run again differ ({r.params} vs {a.params})")
        ratios.append(sum(a.seconds) / sum(r.seconds))
        gaps.append(abs(a.values[-1] - r.values[-1]) / abs(r.values[-1]))
    return Calibration([r.number for r in rows], round(statistics.median(ratios), 4), round(max(gaps), 5))


def _same_params(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return a.keys() == b.keys() and all(
        math.isclose(a[k], b[k], rel_tol=1e-9) if isinstance(a[k], float) else a[k] == b[k] for k in a
    )
