"""How the data section binds its settings to space parameters (hpo/dataparams.py,
hpo/dataspace.py): pure spec logic, no data read."""

from __future__ import annotations

import pytest

from hpo import dataspace
from hpo import spec as spec_mod
from hpo.errors import SpecError

DATA = {"path": "studies/data/support.jsonl"}


def _parse(data: dict, space: dict) -> spec_mod.StudySpec:
    return spec_mod.parse({"name": "x", "data": {**DATA, **data}, "space": space}, "x.yaml", ".")


def test_bound_parameters_are_searched_resolved_and_stored():
    s = _parse(
        {
            "block_size": {"param": "block"},
            "augment": {
                "copies": {"param": "copies"},
                "ops": {"typo": {"p": {"param": "p"}}, "word_swap": {"p": 0.1}},
            },
        },
        {
            "p": {"type": "float", "low": 0, "high": 0.3},
            "copies": {"type": "int", "low": 0, "high": 2},
            "block": 64,
        },
    )
    assert list(s.space.searched())[-2:] == ["p", "copies"] and s.space.fixed()["block"] == 64
    assert s.data.params() == ["block", "copies", "p"] and s.max_block_size == 64
    concrete = s.data.resolve({"p": 0.2, "copies": 1, "block": 64})
    assert concrete.params() == [] and concrete.augment.ops.typo.p == 0.2 and concrete.block_size == 64
    again = spec_mod.from_json(s.to_json())  # as stored with the study
    assert again.space.data_params == s.space.data_params and again.data == s.data
    assert dataspace.shown_values(s.space) == {"p": 0.3, "copies": 2, "block": 64}
    with pytest.raises(KeyError):
        s.data.resolve({"p": 0.1})


def test_every_binding_problem_is_one_line():
    with pytest.raises(SpecError) as e:
        _parse(
            {
                "augment": {
                    "copies": {"param": "c"},
                    "ops": {"typo": {"p": {"param": "p"}}, "insert": {"p": {"param": "dropout"}}},
                }
            },
            {
                "p": {"type": "categorical", "choices": [0.1, 2.0]},
                "c": {"type": "int", "low": 0, "high": 99},
            },
        )
    problems = e.value.problems
    assert len(problems) == 3
    assert any(p.startswith("data.augment.ops.typo.p: space.p can take 2.0") for p in problems)
    assert any(p.startswith("data.augment.copies: space.c can take 99") for p in problems)
    assert any(p.startswith("data.augment.ops.insert.p: {param: dropout} names a training") for p in problems)
    with pytest.raises(SpecError, match=r"space.unused: unknown key; remove it or check its spelling"):
        _parse({}, {"unused": 0.1})
