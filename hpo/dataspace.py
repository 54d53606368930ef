"""How the data section and the search space fit together (pure): every ``{param: NAME}`` names a
parameter of ``space`` that is no training parameter, every value that parameter can take is
allowed where it is bound, and every extra key of ``space`` is bound by the data section."""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from hpo.dataparams import WHOLE, refs, set_at, where
from hpo.params import ALL_SEARCHABLE, FloatParam, SpaceSpec, values
from hpo.specdata import DataSpec


def problems(data: DataSpec, space: SpaceSpec) -> list[str]:
    """Every problem of the data section's references and the space's data parameters, one line
    each (empty: they fit)."""
    dumped = data.model_dump()
    bound = refs(dumped)
    out = unbound(space, {name for _, name in bound})
    for path, name in bound:
        out += _ref_problems(dumped, path, name, space)
    return out


def unbound(space: SpaceSpec, names: set[str]) -> list[str]:
    """The space's data parameters that no data setting binds (``names``: those bound)."""
    return [
        f"space.{name}: unknown key; remove it or check its spelling (a data setting binds to a "
        f"parameter with {{param: {name}}})"
        for name in space.data_params
        if name not in names
    ]


def _ref_problems(
    dumped: dict[str, Any], path: tuple[str | int, ...], name: str, space: SpaceSpec
) -> list[str]:
    at = where(path)
    if name in ALL_SEARCHABLE:
        return [
            f"{at}: {{param: {name}}} names a training parameter; give the data setting its own "
            f"(e.g. data_{name})"
        ]
    if name not in space.data_params:
        return [
            f"{at}: {{param: {name}}} names no parameter of space; add it there, e.g. "
            f"space.{name}: {{type: float, low: 0, high: 0.2}}"
        ]
    param = space.data_params[name]
    if path[-1] in WHOLE and isinstance(param, FloatParam):
        return [
            f"{at}: space.{name} is a float range; {path[-1]} is a whole number (type: int or categorical)"
        ]
    for value in values(param):
        try:
            DataSpec.model_validate(set_at(dumped, path, value), context={"stored": True})
        except ValidationError as e:
            first = e.errors(include_url=False)[0]["msg"].removeprefix("Value error, ")
            return [f"{at}: space.{name} can take {value!r}, not allowed here ({first})"]
    return []


def shown_values(space: SpaceSpec) -> dict[str, Any]:
    """A value of each data parameter for the samples ``hpo study create`` shows: a searched one's
    largest (the strongest augmentation the search can pick), a fixed one's own."""
    out = {}
    for name, param in space.data_params.items():
        vals = values(param)
        numbers = [v for v in vals if isinstance(v, int | float)]
        out[name] = max(numbers) if numbers and len(numbers) == len(vals) else vals[-1]
    return out


def max_block_size(data: DataSpec, space: SpaceSpec) -> int:
    """The longest block any trial trains on: ``data.block_size``, or the largest value of the
    parameter it is bound to."""
    b = data.block_size
    if isinstance(b, int):
        return b
    return int(max(values(space.data_params[b.param])))
