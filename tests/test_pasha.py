"""PASHA's pure decisions (hpo/pasha.py) on hand-picked numbers."""

from __future__ import annotations

import pytest

from hpo.pasha import Pasha, noise_epsilon, rankings_agree


def test_the_cap_starts_at_the_second_level_and_stays_while_the_ranking_holds():
    p = Pasha([0.25, 0.5, 1.0, 2.0])
    assert p.cap == 0.5
    for trial, (a, b) in {"x": (3.0, 2.0), "y": (3.5, 2.5), "z": (4.0, 3.0)}.items():
        p.record(trial, 0.25, a)
        p.record(trial, 0.5, b)
    assert p.cap == 0.5  # x < y < z at both levels


def test_the_cap_grows_one_level_when_the_top_two_levels_disagree():
    p = Pasha([0.25, 0.5, 1.0, 2.0])
    p.record("x", 0.25, 3.0)
    p.record("x", 0.5, 2.0)
    p.record("y", 0.25, 3.5)
    p.record("y", 0.5, 1.5)  # y overtakes x between 0.25 and 0.5
    assert p.cap == 1.0
    assert p.levels[p.top - 1] == 0.5  # the next comparison is between 0.5 and 1.0


def test_the_cap_never_passes_max_t():
    p = Pasha([1.0, 2.0])
    assert p.cap == 2.0
    p.record("x", 1.0, 1.0)
    p.record("x", 2.0, 2.0)
    p.record("y", 1.0, 2.0)
    p.record("y", 2.0, 1.0)
    assert p.cap == 2.0 and p.top == 1


def test_soft_ranking_tolerates_swaps_within_epsilon():
    curves = {"x": {1: 1.00, 2: 0.80}, "y": {1: 1.01, 2: 0.79}, "z": {1: 2.0, 2: 1.9}}
    assert not rankings_agree(curves, 1, 2, epsilon=0.0)
    assert rankings_agree(curves, 1, 2, epsilon=0.02)  # x and y are one group at level 1
    assert not rankings_agree({**curves, "z": {1: 2.0, 2: 0.5}}, 1, 2, epsilon=0.02)  # z jumps groups


def test_epsilon_is_the_90th_percentile_gap_of_pairs_that_flipped_and_flipped_back():
    # x, y: order x<y at 1, y<x at 2, x<y at 3 -> flipped and back; gap at 3 is 0.1
    # x, z: never flip; y, z: never flip
    curves = {
        "x": {1: 1.0, 2: 0.9, 3: 0.7},
        "y": {1: 1.1, 2: 0.8, 3: 0.8},
        "z": {1: 5.0, 2: 5.0, 3: 5.0},
    }
    assert noise_epsilon(curves, 2, 3, previous=0.0) == pytest.approx(0.1)
    assert noise_epsilon({"x": curves["x"], "z": curves["z"]}, 2, 3, previous=0.25) == 0.25


def test_the_running_epsilon_equals_the_estimate_from_scratch():
    import random

    rng = random.Random(1)
    p = Pasha([1, 2, 4, 8])
    for step in range(1, 9):  # eight noisy, crossing curves, reported epoch by epoch
        for t in "abcdefgh":
            if step <= p.cap:
                p.record(t, step, 1.0 / step + rng.gauss(0, 0.05))
                low, high = p.levels[p.top - 1], p.levels[p.top]
                curves = {k: v for k, v in p.curves.items()}
                gaps = [g for e, g in p._flips.values() if low < e <= high]
                assert (not gaps) or p.epsilon == pytest.approx(noise_epsilon(curves, low, high, -1.0))
