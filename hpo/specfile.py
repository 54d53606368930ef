"""A study spec file on its way to ``hpo.spec.StudySpec`` and back: the file read as YAML with
unique keys, the document checked to be a mapping of sections (shorthands expanded), and
pydantic's validation errors turned into one line each (``SpecError``'s problems). ``hpo.spec``'s
``load`` and ``parse`` call these; nothing here knows the spec's fields."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from hpo.dataparams import UNKNOWN_OP
from hpo.errors import SpecError
from hpo.params import Frozen


def read(path: str | os.PathLike[str]) -> Any:
    """The YAML document in a study spec file (a key given twice is an error).

    Raises:
        SpecError: the file is missing or a folder, cannot be read, or is not YAML.
    """
    p = Path(path)
    if not p.is_file():
        what = "is a folder" if p.is_dir() else "file not found"
        raise SpecError(str(path), [f"{what}; pass the path of a study YAML file"])
    try:
        return yaml.load(p.read_text(encoding="utf-8"), Loader=_UniqueKeyLoader)  # noqa: S506 - safe loader
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise SpecError(str(path), [f"{where}not valid YAML ({problem})"]) from e
    except (OSError, UnicodeDecodeError) as e:
        raise SpecError(str(path), [f"cannot read the file ({e}); check it is a UTF-8 text file"]) from e


def document(data: Any, source: str, name: str | None = None) -> dict[str, Any]:
    """``data`` as the mapping ``StudySpec`` validates: ``name`` (the CLI's ``--name``) replaces
    the file's, and a schedule given by its type alone (``schedule: none``) becomes a mapping.

    Raises:
        SpecError: ``data`` is empty or not a mapping.
    """
    if data is None:
        raise SpecError(source, ["the file is empty; start from studies/demo.yaml"])
    if not isinstance(data, dict):
        raise SpecError(
            source, [f"the spec must be a mapping of sections (name:, data:, ...), got {type(data).__name__}"]
        )
    if name is not None:
        data = {**data, "name": name}
    if isinstance(data.get("schedule"), str):
        data = {**data, "schedule": {"type": data["schedule"]}}
    return data


def _pretty_loc(loc: tuple[Any, ...]) -> str:
    # pydantic puts union branch names (e.g. "FloatParam", "float", "asha") into the path: drop them
    parts = [str(p) for p in loc if not (isinstance(p, str) and p in _BRANCHES)]
    return ".".join(parts) or "(top level)"


_UNKNOWN = "unknown key; remove it or check its spelling"
_BRANCHES = {"float", "int", "str", "asha", "pasha", "none", "categorical", "fixed", "bad-type", "ref"}


def format_errors(err: ValidationError) -> list[str]:
    """pydantic's errors as one line each: the field path, what is wrong and the value given; a
    union's per-branch errors once."""
    problems, seen = [], set()
    for e in err.errors(include_url=False):
        loc = _pretty_loc(tuple(e["loc"]))
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = UNKNOWN_OP if loc.endswith(".augment.ops." + str(e["loc"][-1])) else _UNKNOWN
        elif e["type"] == "missing":
            msg = "required field is missing"
        got = e.get("input")
        if msg.startswith(("data.", "space.")):  # cross-section problems name their own fields
            problems += [line for line in msg.split("\n") if line not in problems]
            continue
        # a check of the whole spec names its field itself ("objectives: ...")
        line = msg if loc == "(top level)" and re.match(r"[a-z_]+(\.\w+)*: ", msg) else f"{loc}: {msg}"
        shown = not isinstance(got, dict | list | Frozen)  # a section's default: nothing to show
        if e["type"] not in ("missing", "extra_forbidden") and shown:
            line += f" (got {got!r})"
        key = (loc, msg)
        if key not in seen:  # a union reports one error per branch; keep the distinct ones
            seen.add(key)
            problems.append(line)
    return problems


class _UniqueKeyLoader(yaml.SafeLoader):
    """yaml's safe loader, except that a key given twice is an error (PyYAML keeps the last)."""


def _unique_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node)  # type: ignore[no-untyped-call]
        if not isinstance(key, str | int | float | bool):
            continue  # an unhashable key: the spec check reports it
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}; keep one", key_node.start_mark
            )
        seen.add(key)
    return loader.construct_mapping(node)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _unique_mapping)
