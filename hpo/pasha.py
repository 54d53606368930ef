"""PASHA's decisions as a pure function of plain values (Bohdal et al., "PASHA: Efficient HPO and
NAS with Progressive Resource Allocation", ICLR 2023).

PASHA is asynchronous successive halving whose *maximum* budget grows only while it is needed:
trials first train at most to the second level of the ladder ``grace * rf**k`` (then ``max_t``);
each time a result lands, the trials in the current top level are ranked by their value there and
by their value one level below; when the two rankings disagree beyond the noise ``epsilon``
("soft ranking": values within ``epsilon`` of each other form a group, and a trial may move within
its group), the cap moves up one level, up to ``max_t``. ``epsilon`` is re-estimated on every
result as the 90th percentile of the gaps between pairs of trials whose order flipped and flipped
back along their curves (the paper's automatic estimate).

hpo runs PASHA in stopping mode (Ray Tune's ASHA, which ``hpo/schedulers.py`` extends): a trial
that reaches the current cap ends there (COMPLETE at the budget PASHA gave it) rather than
pausing to be resumed when the cap moves. Values are compared as losses (``sign`` flips a
maximized metric).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

PERCENTILE = 90.0  # the paper's choice for the noise estimate


@dataclass
class Pasha:
    """The state of PASHA's cap: the ladder of levels, the current top index, the curves seen.

    Args:
        levels: the budgets at which trials are compared (the ASHA rungs), ascending, then
            ``max_t``.
    """

    levels: list[float]
    top: int = 1  # index into levels of the current cap (the second level)
    epsilon: float = 0.0
    curves: dict[str, dict[float, float]] = field(default_factory=dict)  # trial -> epoch -> loss
    _flips: dict[tuple[str, str], tuple[float, float]] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self.top = min(self.top, len(self.levels) - 1)

    @property
    def cap(self) -> float:
        """The budget no trial trains past, for now."""
        return self.levels[self.top]

    def record(self, trial: str, epoch: float, loss: float) -> None:
        """Note one evaluation of a trial, re-estimate epsilon, and raise the cap if the top two
        levels now rank their trials differently."""
        self.curves.setdefault(trial, {})[epoch] = loss
        self._note_pairs(trial, epoch)
        low, high = self.levels[self.top - 1], self.levels[self.top]
        gaps = [gap for e, gap in self._flips.values() if low < e <= high]
        self.epsilon = _percentile(gaps, PERCENTILE) if gaps else self.epsilon
        if self.top < len(self.levels) - 1 and not rankings_agree(self.curves, low, high, self.epsilon):
            self.top += 1

    def _note_pairs(self, trial: str, epoch: float) -> None:
        """``noise_epsilon``'s pairs, kept up to date one evaluation at a time: a pair's highest
        common epoch only grows, so each new evaluation re-judges only the pairs it joins."""
        mine = self.curves[trial]
        for other, theirs in self.curves.items():
            if other == trial or epoch not in theirs or max(set(mine) & set(theirs)) != epoch:
                continue
            a, b = sorted((trial, other))
            if _flipped_and_back(self.curves[a], self.curves[b], epoch):
                self._flips[(a, b)] = (epoch, abs(mine[epoch] - theirs[epoch]))
            else:
                self._flips.pop((a, b), None)


def rankings_agree(curves: dict[str, dict[float, float]], lower: float, upper: float, epsilon: float) -> bool:
    """Whether the trials that reached ``upper`` rank the same there as at ``lower``, up to epsilon.

    Soft ranking: sort the trials by their value at ``lower``; the group of the trial at position
    ``i`` is every trial whose value there is within ``epsilon`` of it, walking outwards from ``i``
    in sorted order. The rankings agree when the trial at position ``i`` by the ``upper`` values
    lies in group ``i``, for every ``i``.
    """
    top = [t for t, c in curves.items() if upper in c and lower in c]
    if len(top) < 2:
        return True
    by_upper = sorted(top, key=lambda t: curves[t][upper])
    by_lower = sorted(top, key=lambda t: curves[t][lower])
    values = [curves[t][lower] for t in by_lower]
    for i, trial in enumerate(by_upper):
        lo, hi = i, i
        while lo > 0 and values[lo - 1] >= values[i] - epsilon:
            lo -= 1
        while hi < len(values) - 1 and values[hi + 1] <= values[i] + epsilon:
            hi += 1
        if trial not in by_lower[lo : hi + 1]:
            return False
    return True


def noise_epsilon(curves: dict[str, dict[float, float]], low: float, high: float, previous: float) -> float:
    """The noise of the ranking: at each epoch in ``(low, high]``, pairs of trials whose order
    there had flipped at some earlier common epoch and then flipped back; the 90th percentile of
    their gaps ``|a - b|`` at that epoch (each pair counted once, at its highest such epoch).
    ``previous`` when no pair did."""
    gaps, seen = [], set()
    epochs = sorted({e for c in curves.values() for e in c if low < e <= high}, reverse=True)
    for e in epochs:
        at = sorted(t for t, c in curves.items() if e in c)
        for a, b in itertools.combinations(at, 2):
            if (a, b) in seen:
                continue
            seen.add((a, b))
            if _flipped_and_back(curves[a], curves[b], e):
                gaps.append(abs(curves[a][e] - curves[b][e]))
    return _percentile(gaps, PERCENTILE) if gaps else previous


def _flipped_and_back(a: dict[float, float], b: dict[float, float], epoch: float) -> bool:
    """Whether, walking back from ``epoch`` over the epochs both curves have, the order of ``a``
    and ``b`` turns opposite and then back to what it is at ``epoch``."""
    order = a[epoch] > b[epoch]
    opposite = False
    for e in sorted((e for e in a if e < epoch and e in b), reverse=True):
        now = a[e] > b[e]
        if now != order:
            opposite = True
        elif opposite:
            return True
    return False


def _percentile(xs: list[float], q: float) -> float:
    """Linear-interpolated percentile (numpy's default method), without numpy."""
    s = sorted(xs)
    pos = (len(s) - 1) * q / 100.0
    lo = int(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)
