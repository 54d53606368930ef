"""Warm start: the spec's ``enqueue`` configurations are stored at creation and asked first, in
order, by every sampler; the rest of each trial's parameters is sampled as usual."""

from __future__ import annotations

import pytest

from hpo import space, storage
from hpo import spec as spec_mod
from tests.conftest import small_spec

ENQUEUE = [{"learning_rate": 0.001, "batch_size": 16, "epochs": 2}, {"dropout": 0.05}]


def _stored(s: spec_mod.StudySpec, tmp_path):
    """The study of spec ``s``, created in a new SQLite storage, loaded with its seeded sampler."""
    url = f"sqlite:///{tmp_path / 'hpo.db'}"
    storage.create(s, url)
    return storage.load(s.name, url, sampler=space.sampler(s.sampler, s.seed, 0, s.space))


@pytest.mark.parametrize("sampler", ["tpe", "random", "cmaes", "gp"])
def test_enqueued_configurations_come_first(tmp_path, sampler):
    s = spec_mod.load(small_spec(tmp_path, sampler=sampler, enqueue=ENQUEUE))
    study = _stored(s, tmp_path)
    asked = []
    for _ in range(4):
        trial = study.ask()
        params = space.suggest(trial, s.space)
        study.tell(trial, params["learning_rate"])
        asked.append(params)
    assert {k: asked[0][k] for k in ENQUEUE[0]} == ENQUEUE[0]
    assert asked[1]["dropout"] == 0.05 and 1e-4 <= asked[1]["learning_rate"] <= 1e-2
    assert [t.user_attrs.get("enqueued") for t in study.trials] == [0, 1, None, None]


def test_a_grid_study_with_a_warm_start(tmp_path):
    grid_space = {
        "batch_size": {"type": "categorical", "choices": [8, 16]},
        "epochs": {"type": "int", "low": 1, "high": 2},
        "learning_rate": 0.001,
        "dropout": 0.0,
    }
    s = spec_mod.load(
        small_spec(tmp_path, space=grid_space, sampler="grid", enqueue=[{"batch_size": 16, "epochs": 2}])
    )
    study = _stored(s, tmp_path)
    seen = []
    for _ in range(4):
        trial = study.ask()
        params = space.suggest(trial, s.space)
        study.tell(trial, 1.0)
        seen.append((params["batch_size"], params["epochs"]))
    assert seen[0] == (16, 2) and len(set(seen)) >= 3
