"""The study spec: a YAML file parsed into typed, frozen, validated models.

Every problem in a file is reported at once, each with its field path, the value and what is
allowed (``SpecError``). Relative paths resolve against the spec file's folder. Nothing here
touches the storage, the network or a heavy library.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from hpo.errors import SpecError

#: The five hyperparameters a study searches over (each may be fixed to a constant).
SEARCHABLE = ("learning_rate", "batch_size", "epochs", "dropout", "weight_decay")
#: The name of the offline base model hpo builds itself.
TINY_MODEL = "hpo:tiny-gpt2"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}")
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?")
DATA_FORMATS = ("jsonl", "csv", "text")
METRICS = {"eval_loss": "minimize", "perplexity": "minimize"}
SAMPLERS = ("tpe", "random")


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _no_bool(v: Any) -> Any:
    # pydantic's lax mode reads YAML's true/false as 1/0; a boolean where a number goes is a mistake
    if isinstance(v, bool):
        raise ValueError("expected a number, got a boolean (true/false)")
    return v


Int = Annotated[int, BeforeValidator(_no_bool)]
Float = Annotated[float, BeforeValidator(_no_bool)]
Choice = Annotated[float | int | str, BeforeValidator(_no_bool)]


class FloatParam(_Model):
    """A float searched between ``low`` and ``high`` (log scale when ``log``)."""

    type: Literal["float"]
    low: Float
    high: Float
    log: bool = False

    @model_validator(mode="after")
    def _range(self) -> FloatParam:
        _check_range(self.low, self.high, self.log)
        return self


class IntParam(_Model):
    """An integer searched between ``low`` and ``high`` inclusive."""

    type: Literal["int"]
    low: Int
    high: Int
    log: bool = False

    @model_validator(mode="after")
    def _range(self) -> IntParam:
        _check_range(self.low, self.high, self.log)
        return self


class CategoricalParam(_Model):
    """One of ``choices``."""

    type: Literal["categorical"]
    choices: list[Choice] = Field(min_length=1)


Param = FloatParam | IntParam | CategoricalParam


def _kind(v: Any) -> str | None:
    if isinstance(v, dict):
        return v.get("type") if v.get("type") in ("float", "int", "categorical") else "bad-type"
    return v.type if isinstance(v, FloatParam | IntParam | CategoricalParam) else "fixed"


_PARAM_ERROR = "a searched parameter needs type: float, int or categorical (a plain number fixes it)"


_DISCRIMINATOR = Discriminator(_kind, custom_error_type="param_type", custom_error_message=_PARAM_ERROR)
# a field that is either searched (a mapping with ``type``) or fixed (a plain value)
FloatOrParam = Annotated[
    Annotated[FloatParam, Tag("float")]
    | Annotated[IntParam, Tag("int")]
    | Annotated[CategoricalParam, Tag("categorical")]
    | Annotated[Float, Tag("fixed")],
    _DISCRIMINATOR,
]
IntOrParam = Annotated[
    Annotated[FloatParam, Tag("float")]
    | Annotated[IntParam, Tag("int")]
    | Annotated[CategoricalParam, Tag("categorical")]
    | Annotated[Int, Tag("fixed")],
    _DISCRIMINATOR,
]


def _check_range(low: float, high: float, log: bool) -> None:
    if low > high:
        raise ValueError(f"low ({low}) must be <= high ({high})")
    if log and low <= 0:
        raise ValueError(f"log scale needs low > 0 (got low={low})")


class SpaceSpec(_Model):
    """The search space. A number fixes the parameter; a mapping searches it."""

    learning_rate: FloatOrParam = Field(default=5e-4, description="peak AdamW learning rate")
    batch_size: IntOrParam = Field(default=16, description="examples (blocks) per optimizer step")
    epochs: IntOrParam = Field(default=1, description="passes over the training blocks")
    dropout: FloatOrParam = Field(default=0.1, description="every dropout probability of the model")
    weight_decay: FloatOrParam = Field(default=0.0, description="decoupled AdamW weight decay")

    @field_validator("learning_rate", "batch_size", "epochs", "dropout", "weight_decay", mode="after")
    @classmethod
    def _bounds(cls, v: Any, info: ValidationInfo) -> Any:
        name = info.field_name
        if name in ("batch_size", "epochs") and isinstance(v, FloatParam):
            raise ValueError(f"{name} is a whole number; search it with type: int or categorical")
        for value in _values(v):
            _check_param_value(str(name), value)
        return v

    def searched(self) -> dict[str, Param]:
        """The parameters that are searched (not fixed), by name."""
        return {
            n: v
            for n in SEARCHABLE
            if isinstance(v := getattr(self, n), FloatParam | IntParam | CategoricalParam)
        }

    def fixed(self) -> dict[str, float | int]:
        """The parameters fixed to a constant, by name."""
        return {n: v for n in SEARCHABLE if not isinstance(v := getattr(self, n), BaseModel)}


def _values(v: Any) -> list[Any]:
    if isinstance(v, FloatParam | IntParam):
        return [v.low, v.high]
    if isinstance(v, CategoricalParam):
        return list(v.choices)
    return [v]


_LIMITS = {  # name -> (predicate, what is allowed)
    "learning_rate": (lambda x: 0 < x < 1, "0 < learning_rate < 1"),
    "batch_size": (lambda x: isinstance(x, int) and x >= 1, "an integer >= 1"),
    "epochs": (lambda x: isinstance(x, int) and x >= 1, "an integer >= 1"),
    "dropout": (lambda x: 0 <= x < 1, "0 <= dropout < 1"),
    "weight_decay": (lambda x: 0 <= x < 10, "0 <= weight_decay < 10"),
}


def _check_param_value(name: str, value: Any) -> None:
    ok, allowed = _LIMITS[name]
    if isinstance(value, bool) or not isinstance(value, int | float) or not ok(value):
        raise ValueError(f"value {value!r} is not allowed; {name} must be {allowed}")


class DataSpec(_Model):
    """Where the task data is and how to turn it into training blocks."""

    path: str = Field(description="JSONL/CSV of prompt/completion pairs, or a text file")
    format: Literal["jsonl", "csv", "text"] = Field(default="jsonl", description="file format")
    prompt_field: str = Field(default="prompt", description="column holding the input")
    completion_field: str = Field(default="completion", description="column holding the target")
    text_field: str = Field(default="text", description="column holding plain text (jsonl/csv text data)")
    validation_fraction: Float = Field(default=0.1, gt=0, lt=1, description="seeded validation share")
    validation_path: str | None = Field(default=None, description="separate validation file")
    block_size: Int = Field(default=128, ge=8, le=32768, description="tokens per training block")

    @field_validator("path", "validation_path", mode="after")
    @classmethod
    def _exists(cls, v: str | None, info: ValidationInfo) -> str | None:
        if v is None or (info.context or {}).get("stored"):
            return v
        resolved = _resolve(v, info)
        if os.path.isdir(resolved):
            raise ValueError(f"{resolved} is a folder; give the path of a data file")
        if not os.path.isfile(resolved):
            raise ValueError(f"file not found: {resolved} (paths are relative to the spec file's folder)")
        return resolved


class ObjectiveSpec(_Model):
    """What the search optimizes."""

    metric: Literal["eval_loss", "perplexity"] = "eval_loss"
    direction: Literal["minimize", "maximize"] = "minimize"

    @model_validator(mode="after")
    def _direction(self) -> ObjectiveSpec:
        if METRICS[self.metric] != self.direction:
            raise ValueError(f"{self.metric} must be minimized (got direction {self.direction!r})")
        return self


class AshaSpec(_Model):
    """Asynchronous successive halving over training progress measured in epochs."""

    type: Literal["asha"] = "asha"
    grace_period: Float = Field(default=0.5, gt=0, description="epochs every trial gets")
    max_t: Float | None = Field(default=None, gt=0, description="epochs at most (default: max epochs)")
    reduction_factor: Float = Field(default=2.0, gt=1, description="keep 1/rf of trials at each rung")

    @model_validator(mode="after")
    def _grace(self) -> AshaSpec:
        if self.max_t is not None and self.grace_period > self.max_t:
            raise ValueError(f"grace_period ({self.grace_period}) must be <= max_t ({self.max_t})")
        return self


class NoSchedule(_Model):
    """Every trial runs its full budget."""

    type: Literal["none"] = "none"


def _schedule_kind(v: Any) -> str | None:
    if isinstance(v, dict):  # a mapping without ``type`` is ASHA's settings
        return v.get("type", "asha") if v.get("type", "asha") in ("asha", "none") else None
    return getattr(v, "type", None)


Schedule = Annotated[
    Annotated[AshaSpec, Tag("asha")] | Annotated[NoSchedule, Tag("none")],
    Discriminator(
        _schedule_kind,
        custom_error_type="schedule_type",
        custom_error_message="use asha (a mapping: type: asha, grace_period, reduction_factor) or none",
    ),
]


class TrainingSpec(_Model):
    """How each trial trains and evaluates (fixed for the whole study)."""

    eval_every: Float = Field(default=0.25, gt=0, le=1, description="epochs between evaluations")
    warmup_ratio: Float = Field(default=0.05, ge=0, lt=1, description="share of steps warming up")
    max_micro_batch: Int = Field(default=32, ge=1, description="largest batch in one forward pass")
    max_grad_norm: Float = Field(default=1.0, gt=0, description="gradient clipping norm")


class ResourcesSpec(_Model):
    """What one trial needs, and how many run at once."""

    cpus_per_trial: Float = Field(default=1, gt=0, description="CPU cores (and torch threads) per trial")
    gpus_per_trial: Float = Field(default=0, ge=0, description="GPUs per trial; fractions pack trials")
    concurrency: Int | None = Field(default=None, ge=1, description="trials at once (default: all fit)")


class StudySpec(_Model):
    """A whole study: what to tune, on what, and how to search."""

    name: str = Field(description="study name: letters, digits, '_', '.', '-'")
    model: str = Field(default=TINY_MODEL, description="hpo:tiny-gpt2, a local directory or a hub id")
    data: DataSpec
    objective: ObjectiveSpec = ObjectiveSpec()
    space: SpaceSpec = SpaceSpec()
    schedule: Schedule = Field(default=AshaSpec(), description="asha (early stopping) or none")
    training: TrainingSpec = TrainingSpec()
    resources: ResourcesSpec = ResourcesSpec()
    sampler: Literal["tpe", "random"] = "tpe"
    keep_top_k: Int = Field(default=3, ge=1, description="trials whose best checkpoint is kept")
    seed: Int = 0

    @field_validator("name", mode="after")
    @classmethod
    def _name(cls, v: str) -> str:
        if not _NAME.fullmatch(v):
            raise ValueError("use 1-100 letters, digits, '_', '.' or '-', starting with a letter or digit")
        return v

    @field_validator("model", mode="after")
    @classmethod
    def _model_path(cls, v: str, info: ValidationInfo) -> str:
        if (info.context or {}).get("stored"):
            return v
        if v.startswith("hpo:"):
            if v != TINY_MODEL:
                raise ValueError(f"unknown built-in model {v!r}; the built-in model is {TINY_MODEL!r}")
            return v
        return _local_model_or_hub_id(v, info)

    @property
    def max_epochs(self) -> float:
        """The largest number of epochs any trial can train."""
        return float(max(_values(self.space.epochs)))

    def asha_max_t(self) -> float:
        """ASHA's max_t: the spec's, or the largest epochs in the space."""
        if isinstance(self.schedule, AshaSpec) and self.schedule.max_t is not None:
            return self.schedule.max_t
        return self.max_epochs

    def to_json(self) -> str:
        """The spec as JSON (paths already absolute), as stored with the study."""
        return self.model_dump_json()


def _local_model_or_hub_id(v: str, info: ValidationInfo) -> str:
    """A model folder (resolved) if ``v`` names one, else ``v`` as a Hugging Face hub id."""
    resolved = _resolve(v, info)
    if os.path.isdir(resolved):
        if not os.path.isfile(os.path.join(resolved, "config.json")):
            raise ValueError(f"{resolved} has no config.json; give a folder written by save_pretrained")
        return resolved
    base = (info.context or {}).get("base_dir", ".")
    # "org/name" is a hub id, unless "org" is a folder here: then it was meant as a local path
    local = not _HUB_ID.fullmatch(v) or ("/" in v and os.path.isdir(os.path.join(base, v.split("/")[0])))
    if local:
        raise ValueError(
            f"model directory not found: {resolved}; give a save_pretrained folder, a hub id "
            f"(org/name) or {TINY_MODEL}"
        )
    return v


def _resolve(path: str, info: ValidationInfo) -> str:
    base = (info.context or {}).get("base_dir", ".")
    return str((Path(base) / os.path.expanduser(path)).resolve())


def _pretty_loc(loc: tuple[Any, ...]) -> str:
    # pydantic puts union branch names (e.g. "FloatParam", "float", "asha") into the path: drop them
    parts = [str(p) for p in loc if not (isinstance(p, str) and p in _BRANCHES)]
    return ".".join(parts) or "(top level)"


_BRANCHES = {"float", "int", "str", "asha", "none", "categorical", "fixed", "bad-type"}


def _format_errors(err: ValidationError) -> list[str]:
    problems, seen = [], set()
    for e in err.errors(include_url=False):
        loc = _pretty_loc(tuple(e["loc"]))
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown key; remove it or check its spelling"
        elif e["type"] == "missing":
            msg = "required field is missing"
        got = e.get("input")
        line = f"{loc}: {msg}"
        if e["type"] not in ("missing", "extra_forbidden") and not isinstance(got, dict | list):
            line += f" (got {got!r})"
        key = (loc, msg)
        if key not in seen:  # a union reports one error per branch; keep the distinct ones
            seen.add(key)
            problems.append(line)
    return problems


def parse(data: Any, source: str, base_dir: str = ".", name: str | None = None) -> StudySpec:
    """Validate a mapping as a study spec.

    Args:
        data: the parsed YAML (or JSON) document.
        source: where it came from, for messages.
        base_dir: the folder relative paths resolve against.
        name: overrides ``name`` (the CLI's ``--name``).

    Raises:
        SpecError: listing every problem at once.
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
    try:
        return StudySpec.model_validate(data, context={"base_dir": base_dir})
    except ValidationError as e:
        raise SpecError(source, _format_errors(e)) from e


def load(path: str | os.PathLike[str], name: str | None = None) -> StudySpec:
    """Read and validate a study spec file.

    Raises:
        SpecError: the file is missing, is not YAML, or any field is invalid.
    """
    p = Path(path)
    if not p.is_file():
        what = "is a folder" if p.is_dir() else "file not found"
        raise SpecError(str(path), [f"{what}; pass the path of a study YAML file"])
    try:
        data = yaml.load(p.read_text(encoding="utf-8"), Loader=_UniqueKeyLoader)  # noqa: S506 - safe loader
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise SpecError(str(path), [f"{where}not valid YAML ({problem})"]) from e
    except (OSError, UnicodeDecodeError) as e:
        raise SpecError(str(path), [f"cannot read the file ({e}); check it is a UTF-8 text file"]) from e
    return parse(data, str(path), str(p.parent.resolve()), name)


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


def from_json(text: str) -> StudySpec:
    """Rebuild a spec stored with a study (its paths are absolute already)."""
    return StudySpec.model_validate(json.loads(text), context={"stored": True})
