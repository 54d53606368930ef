"""Mixtures of sources (hpo/mixture.py, data.sources): weights resample the training split only,
validation stays per source (one range of blocks each), and every source's loss is evaluated."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from hpo import data, evaluation, mixture
from hpo import spec as spec_mod
from hpo.bookkeeping import source_losses
from hpo.errors import DataError
from tests.conftest import ROOT, small_spec, write_rows

CHATS = ROOT / "studies" / "data" / "support-chat-200.jsonl"


def test_shares_keep_the_total_and_follow_the_weights():
    assert mixture.shares([100, 50], [1.0, 1.0]) == [75, 75]
    assert mixture.shares([100, 50], [1.0, 0.0]) == [150, 0]
    assert mixture.shares([100, 50], [3.0, 1.0]) == [112, 38]
    with pytest.raises(DataError, match="every weight is 0"):
        mixture.shares([10, 10], [0.0, 0.0])


def test_repeats_are_seeded_and_sum_to_the_target():
    r = mixture.repeats(10, 25, seed=0, source=1)
    assert sum(r) == 25 and set(r) <= {2, 3} and r == mixture.repeats(10, 25, 0, 1)
    assert r != mixture.repeats(10, 25, 1, 1)
    fewer = mixture.repeats(10, 4, 0, 0)
    assert sum(fewer) == 4 and set(fewer) <= {0, 1}


def _mixture(tmp_path: Path, weights=(1.0, 1.0), **extra) -> spec_mod.DataSpec:
    write_rows(tmp_path / "pairs.jsonl", 120)
    (tmp_path / "chats.jsonl").write_text("\n".join(CHATS.read_text().splitlines()[:80]) + "\n")
    sources = [
        {"path": "pairs.jsonl", "weight": weights[0]},
        {"path": "chats.jsonl", "format": "chat", "weight": weights[1]},
    ]
    return spec_mod.load(small_spec(tmp_path, data={"sources": sources, "path": None, **extra})).data


def test_validation_is_per_source_and_never_resampled(tmp_path, tiny_model):
    mixed = data.prepare(_mixture(tmp_path, (1.0, 3.0)), tiny_model, 0, tmp_path / "cache")
    other = data.prepare(_mixture(tmp_path, (1.0, 0.0)), tiny_model, 0, tmp_path / "cache")
    assert set(mixed.val_sources) == {"pairs", "chats"}
    alone = spec_mod.load(small_spec(tmp_path, name="alone", data={"path": "pairs.jsonl"})).data
    single = data.prepare(alone, tiny_model, 0, tmp_path / "cache")
    a, b = mixed.val_sources["pairs"]
    for k in ("val_ids", "val_labels", "val_pos"):  # a source's validation: as if prepared alone
        assert np.array_equal(mixed.arrays()[k][a:b], single.arrays()[k]), k
        assert np.array_equal(mixed.arrays()[k], other.arrays()[k]), k  # whatever the weights
    shares = {n: r["mixture"]["train"] for n, r in mixed.cleaning["sources"].items()}
    assert shares["chats"] == pytest.approx(3 * shares["pairs"], abs=2)
    assert other.cleaning["sources"]["chats"]["mixture"]["train"] == 0
    assert mixed.fingerprint != other.fingerprint
    assert "2 sources" in data.describe(mixed.cleaning) and "weight 3 -> " in data.describe(mixed.cleaning)


def test_by_source_combines_token_weighted_and_names_each_source():
    losses = {
        (0, 2): {"eval_loss": 1.0, "token_accuracy": 0.5},
        (2, 3): {"eval_loss": 4.0, "token_accuracy": 0.2},
    }
    ranges = {"a": [0, 2], "b": [2, 3]}
    counts = {"a": 30, "b": 10}
    m = evaluation.by_source(lambda x, y: {**losses[(x, y)], "perplexity": 0.0}, counts, ranges, None)
    assert m["eval_loss"] == pytest.approx((30 * 1.0 + 10 * 4.0) / 40)
    assert m["token_accuracy"] == pytest.approx((30 * 0.5 + 10 * 0.2) / 40)
    assert source_losses(m) == {"a": 1.0, "b": 4.0}
    named = evaluation.by_source(lambda x, y: {**losses[(x, y)], "perplexity": 0.0}, counts, ranges, "b")
    assert named["eval_loss"] == 4.0 and named[evaluation.ALL_SOURCES] == pytest.approx(m["eval_loss"])


def test_a_trial_evaluates_every_source(tmp_path, tiny_model, prepared):
    from hpo import trial
    from tests.conftest import trial_config

    mixed = data.prepare(_mixture(tmp_path), tiny_model, 0, tmp_path / "cache")
    reports = []
    params = {"learning_rate": 1e-3, "batch_size": 16, "epochs": 1, "dropout": 0.0, "weight_decay": 0.0}
    config = trial_config(mixed, tiny_model, tmp_path / "t", params, placement={}, objective_source="chats")
    trial.run(config, reports.append)
    last = reports[-1]
    assert set(source_losses(last)) == {"pairs", "chats"}
    assert last["eval_loss"] == last[evaluation.SOURCE_PREFIX + "chats"]  # the named source is the objective
    assert (
        min(source_losses(last).values()) <= last[evaluation.ALL_SOURCES] <= max(source_losses(last).values())
    )


def test_a_source_keeps_its_own_fields(tmp_path):
    (tmp_path / "qa.jsonl").write_text(
        json.dumps({"q": "where?", "a": "here"}) + "\n" + json.dumps({"q": "why?", "a": "so"}) + "\n"
    )
    write_rows(tmp_path / "pairs.jsonl", 40)
    sources = [{"path": "pairs.jsonl"}, {"path": "qa.jsonl", "prompt_field": "q", "completion_field": "a"}]
    d = spec_mod.load(small_spec(tmp_path, data={"sources": sources, "path": None})).data
    report = data.check(d)
    assert report["sources"]["qa"]["train"]["kept"] == 2
