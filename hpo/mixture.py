"""Mixing sources by weight in the training split (pure; no tokenizer).

The training split of a mixture holds as many examples as its sources' training examples
together, ``N``; source ``i`` of weight ``w_i`` contributes ``round(N * w_i / sum(w))`` of them:
fewer than it has (a seeded sample without replacement) or more (each example repeated, the
remainder a seeded sample). A weight of 0 leaves a source out of training; its validation
examples are still evaluated. Validation is never resampled.
"""

from __future__ import annotations

import random
from array import array

from hpo.errors import DataError


def shares(counts: list[int], weights: list[float]) -> list[int]:
    """Training examples each source contributes: ``counts`` (each source's training examples)
    split by ``weights``, the total kept.

    Raises:
        DataError: every weight is 0.
    """
    total_w = sum(weights)
    if total_w <= 0:
        raise DataError(
            "data.sources: every weight is 0 for this trial; give at least one source a weight > 0"
        )
    n = sum(counts)
    return [round(n * w / total_w) for w in weights]


def repeats(n: int, target: int, seed: int, source: int) -> array:
    """How many times each of a source's ``n`` training examples goes into training, ``target``
    in all: ``target // n`` each, plus one for a seeded sample of ``target % n`` of them."""
    base, extra = divmod(target, n) if n else (0, 0)
    out = array("I", [base]) * n
    for i in random.Random(f"{seed}-{source}").sample(range(n), extra):
        out[i] += 1
    return out
