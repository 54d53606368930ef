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
    BeforeValidator,
    Discriminator,
    Field,
    Tag,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from hpo import models, placement
from hpo.errors import SpecError
from hpo.params import (
    ADAPTER_SEARCHABLE,
    LR_SCHEDULERS,
    SEARCHABLE,
    TRAINING_SEARCHABLE,
    CategoricalParam,
    Float,
    FloatParam,
    Frozen,
    Int,
    IntParam,
    Param,
    SpaceSpec,
    enqueue_problems,
    values,
)

__all__ = [
    "LR_SCHEDULERS",
    "SEARCHABLE",
    "TRAINING_SEARCHABLE",
    "CategoricalParam",
    "FloatParam",
    "IntParam",
    "Param",
    "SpaceSpec",
    "StudySpec",
    "load",
    "parse",
]

#: The name of the offline base model hpo builds itself.
TINY_MODEL = "hpo:tiny-gpt2"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}")
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?")
DATA_FORMATS = ("jsonl", "csv", "text", "chat", "datasets", "hub")
#: Each metric a trial reports, and the direction it is optimized in.
METRICS = {"eval_loss": "minimize", "perplexity": "minimize", "token_accuracy": "maximize"}
SAMPLERS = ("tpe", "random", "grid", "cmaes", "gp")


class DataSpec(Frozen):
    """Where the task data is and how to turn it into training blocks."""

    format: Literal["jsonl", "csv", "text", "chat", "datasets", "hub"] = Field(
        default="jsonl",
        description="jsonl | csv (pairs or text) | text (file: a document per line; folder: per file) "
        "| chat (jsonl of messages) | datasets (a save_to_disk folder) | hub (a Hugging Face dataset id)",
    )
    path: str = Field(description="the data file or folder, or the dataset id for format: hub")
    prompt_field: str = Field(default="prompt", description="column holding the input")
    completion_field: str = Field(default="completion", description="column holding the target")
    text_field: str = Field(default="text", description="column holding plain text (jsonl/csv text data)")
    messages_field: str = Field(default="messages", description="column holding a chat's messages")
    chat_template: Literal["auto", "simple"] = Field(
        default="auto", description="auto: the tokenizer's chat template when it has one; simple: hpo's"
    )
    split: str = Field(default="train", description="split to read (datasets / hub with several)")
    validation_split: str | None = Field(default=None, description="validation split (datasets / hub)")
    validation_fraction: Float = Field(default=0.1, gt=0, lt=1, description="seeded validation share")
    validation_path: str | None = Field(default=None, description="separate validation file")
    block_size: Int = Field(default=128, ge=8, le=32768, description="tokens per training block")
    overlong: Literal["truncate", "drop"] = Field(
        default="truncate", description="an example longer than a block: keep its first block, or drop it"
    )

    @field_validator("path", "validation_path", mode="after")
    @classmethod
    def _exists(cls, v: str | None, info: ValidationInfo) -> str | None:
        if v is None or (info.context or {}).get("stored"):
            return v
        fmt = info.data.get("format", "jsonl")
        if fmt == "hub":
            if info.field_name == "validation_path":
                raise ValueError("format hub takes no validation_path; name a validation_split")
            if not _HUB_ID.fullmatch(v):
                raise ValueError("a Hugging Face dataset id looks like name or org/name")
            return v
        resolved = _resolve(v, info)
        folder_ok = fmt in ("text", "datasets")
        if os.path.isdir(resolved) and not folder_ok:
            raise ValueError(
                f"{resolved} is a folder; give the path of a data file (folders: format text or datasets)"
            )
        if fmt == "datasets" and not os.path.isdir(resolved):
            raise ValueError(f"folder not found: {resolved} (format datasets reads a save_to_disk folder)")
        if not os.path.exists(resolved):
            raise ValueError(f"file not found: {resolved} (paths are relative to the spec file's folder)")
        return resolved


class ObjectiveSpec(Frozen):
    """What the search optimizes: eval_loss or perplexity (minimize), token_accuracy (maximize)."""

    metric: Literal["eval_loss", "perplexity", "token_accuracy"] = "eval_loss"
    direction: Literal["minimize", "maximize"] = Field(
        default="minimize", description="must be the metric's own; left out, it is filled in"
    )

    @model_validator(mode="before")
    @classmethod
    def _default_direction(cls, data: Any) -> Any:
        if isinstance(data, dict) and "direction" not in data and data.get("metric") in METRICS:
            return {**data, "direction": METRICS[data["metric"]]}
        return data

    @model_validator(mode="after")
    def _direction(self) -> ObjectiveSpec:
        wanted = METRICS[self.metric]
        if wanted != self.direction:
            verb = wanted.removesuffix("e") + "ed"
            raise ValueError(f"{self.metric} must be {verb} (got direction {self.direction!r})")
        return self


class AshaSpec(Frozen):
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


class NoSchedule(Frozen):
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


def _whole_or_auto(v: Any) -> int | str:
    if v == "auto" or (isinstance(v, int) and not isinstance(v, bool) and v >= 1):
        return v
    raise ValueError("must be auto or a whole number >= 1")


class TrainingSpec(Frozen):
    """How each trial trains and evaluates. Each option from ``lr_scheduler`` to ``seed`` is fixed
    here, or searched by naming it in ``space`` instead (not both)."""

    eval_every: Float = Field(
        default=0.25, gt=0, le=1, description="epochs between evaluation marks (the grid of evaluations)"
    )
    eval_at: Literal["rungs", "every"] = Field(
        default="rungs",
        description="rungs: evaluate at the marks where ASHA compares trials, at whole epochs and at the end "
        "of the budget; every: at every eval_every mark (the cadence is all there is without ASHA)",
    )
    max_micro_batch: Annotated[int | str, BeforeValidator(_whole_or_auto)] = Field(
        default="auto",
        description="largest batch in one forward pass; auto: the largest that fits the trial's memory "
        "(hpo/memory.py), gradient accumulation covering the rest of batch_size",
    )
    gradient_checkpointing: bool = Field(
        default=False,
        description="recompute activations in the backward pass: less memory, ~30% more compute",
    )
    lr_scheduler: Literal["linear", "cosine", "constant_with_warmup"] = Field(
        default="linear", description="decay after the linear warmup (transformers' get_scheduler)"
    )
    warmup_ratio: Float = Field(default=0.05, ge=0, lt=1, description="share of steps warming up")
    gradient_accumulation_steps: Int = Field(
        default=1, ge=1, description="batches per optimizer step: effective batch = batch_size x this"
    )
    max_grad_norm: Float = Field(default=1.0, gt=0, description="gradient clipping norm")
    label_smoothing: Float = Field(default=0.0, ge=0, lt=1, description="training loss only; eval is plain")
    l1: Float = Field(default=0.0, ge=0, lt=1, description="L1 penalty coefficient on weight matrices")
    early_stopping_patience: Int | None = Field(
        default=None, ge=1, description="end a trial COMPLETE after k evaluations without improvement"
    )
    seed: Int | None = Field(default=None, ge=0, description="trial seed (default: the study's seed)")
    precision: Literal["auto", "bf16", "fp32", "bf16-true"] = Field(
        default="auto",
        description="auto: bf16 autocast where the hardware multiplies bf16 natively (NVIDIA Ampere or "
        "newer, CPUs with AMX or AVX512-BF16), fp32 elsewhere; bf16 or fp32: that, on any device. "
        "Weights and optimizer state stay fp32 whatever dtype the checkpoint was saved in; bf16-true "
        "keeps them in bf16 too (half the memory; small updates round away: only when asked for)",
    )


class AdapterSpec(Frozen):
    """A LoRA adapter (peft): only its low-rank matrices train; a checkpoint holds the base weights
    with the adapter merged in, and the adapter alone under ``adapter/``. ``r`` and ``alpha`` are
    fixed here, or searched as ``lora_r`` / ``lora_alpha`` in ``space`` instead."""

    type: Literal["lora"] = "lora"
    r: Int = Field(default=8, ge=1, le=1024, description="LoRA rank")
    alpha: Int = Field(default=16, ge=1, le=4096, description="LoRA scaling numerator (scale: alpha / r)")
    dropout: Float = Field(default=0.05, ge=0, lt=1, description="dropout on the adapter's input")
    target_modules: list[str] | None = Field(
        default=None, description="module names to adapt (default: peft's choice for the model family)"
    )


class ResourcesSpec(Frozen):
    """What one trial needs, and how many run at once."""

    cpus_per_trial: Float = Field(default=1, gt=0, description="CPU cores (and torch threads) per trial")
    gpus_per_trial: Float = Field(
        default=0,
        ge=0,
        description="GPUs per trial: fractions up to 1 pack trials on a GPU; a whole number > 1 runs "
        "each trial data-parallel over that many GPUs (batch_size must divide by it)",
    )
    concurrency: Int | None = Field(default=None, ge=1, description="trials at once (default: all fit)")
    memory_gb: Float | None = Field(
        default=None,
        gt=0,
        description="host memory per trial in GB: Ray reserves it, max_micro_batch: auto fits it, and a CPU "
        "trial is held to it (past it the trial fails OutOfMemory); default: the node's memory shared by "
        "the trials that fit at once",
    )

    @field_validator("gpus_per_trial", mode="after")
    @classmethod
    def _whole_gpus(cls, v: float) -> float:
        if v > 1 + placement.EPS and abs(v - round(v)) > placement.EPS:
            raise ValueError(placement.WHOLE_GPUS)
        return v


class StudySpec(Frozen):
    """A whole study: what to tune, on what, and how to search."""

    name: str = Field(description="study name: letters, digits, '_', '.', '-'")
    model: str = Field(
        default=TINY_MODEL, description="hpo:NAME (`hpo model list`), a local directory or a hub id"
    )
    data: DataSpec
    objective: ObjectiveSpec = ObjectiveSpec()
    space: SpaceSpec = SpaceSpec()
    schedule: Schedule = Field(default=AshaSpec(), description="asha (early stopping) or none")
    training: TrainingSpec = TrainingSpec()
    resources: ResourcesSpec = ResourcesSpec()
    adapter: AdapterSpec | None = Field(
        default=None, validate_default=True, description="train a LoRA adapter instead of all weights"
    )
    sampler: Literal["tpe", "random", "grid", "cmaes", "gp"] = Field(
        default="tpe", description="Optuna's sampler; grid needs every searched parameter int or categorical"
    )
    enqueue: list[dict[str, Any]] = Field(
        default_factory=list, description="known-good configurations tried first (warm start)"
    )
    keep_top_k: Int = Field(default=3, ge=1, description="trials whose best checkpoint is kept")
    seed: Int = 0

    @field_validator("training", mode="after")
    @classmethod
    def _set_once(cls, v: TrainingSpec, info: ValidationInfo) -> TrainingSpec:
        if (info.context or {}).get("stored"):  # a stored spec holds every field, set or not
            return v
        space = info.data.get("space")
        both = [n for n in TRAINING_SEARCHABLE if space is not None and getattr(space, n) is not None]
        both = [n for n in both if n in v.model_fields_set]
        if both:
            raise ValueError(
                f"{', '.join(both)} set both here and in space; "
                "keep one (a fixed value here, or a search in space)"
            )
        return v

    @field_validator("resources", mode="after")
    @classmethod
    def _batch_splits(cls, v: ResourcesSpec, info: ValidationInfo) -> ResourcesSpec:
        space = info.data.get("space")
        problem = None if space is None else batch_problem(space, v.gpus_per_trial)
        if problem:
            raise ValueError(problem)
        return v

    @field_validator("adapter", mode="after")
    @classmethod
    def _lora_space(cls, v: AdapterSpec | None, info: ValidationInfo) -> AdapterSpec | None:
        space = info.data.get("space")
        searched = [n for n in ADAPTER_SEARCHABLE if space is not None and getattr(space, n) is not None]
        if searched and v is None:
            raise ValueError(f"space.{searched[0]} needs an adapter; add adapter: {{type: lora}}")
        clash = [n for n in searched if v is not None and n.removeprefix("lora_") in v.model_fields_set]
        if clash and not (info.context or {}).get("stored"):
            raise ValueError(
                f"{', '.join(c.removeprefix('lora_') for c in clash)} set both here and in space "
                f"({', '.join(clash)}); keep one"
            )
        return v

    @field_validator("sampler", mode="after")
    @classmethod
    def _grid(cls, v: str, info: ValidationInfo) -> str:
        space = info.data.get("space")
        if v == "grid" and space is not None:
            floats = [n for n, p in space.searched().items() if isinstance(p, FloatParam)]
            if floats:
                raise ValueError(
                    f"grid needs a finite space; search {', '.join(floats)} with type: categorical "
                    "(a list of values) or use another sampler"
                )
        return v

    @field_validator("enqueue", mode="after")
    @classmethod
    def _enqueue(cls, v: list[dict[str, Any]], info: ValidationInfo) -> list[dict[str, Any]]:
        space = info.data.get("space")
        if space is None:
            return v
        problems = [p for i, params in enumerate(v) for p in enqueue_problems(i, params, space.searched())]
        if problems:
            raise ValueError("; ".join(problems))
        return v

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
        if v.startswith(models.PREFIX):
            if problem := models.unknown_name(v):
                raise ValueError(problem)
            return v
        return _local_model_or_hub_id(v, info)

    @property
    def max_epochs(self) -> float:
        """The largest number of epochs any trial can train."""
        return float(max(values(self.space.epochs)))

    def asha_max_t(self) -> float:
        """ASHA's max_t: the spec's, or the largest epochs in the space."""
        if isinstance(self.schedule, AshaSpec) and self.schedule.max_t is not None:
            return self.schedule.max_t
        return self.max_epochs

    def asha_rungs(self) -> list[float]:
        """The epochs at which ASHA compares trials (none without ASHA)."""
        if not isinstance(self.schedule, AshaSpec):
            return []
        return asha_rungs(self.schedule.grace_period, self.schedule.reduction_factor, self.asha_max_t())

    def eval_epochs(self) -> list[float] | None:
        """The epochs a trial must evaluate at besides whole epochs and its budget's end (the ASHA
        rungs and max_t), or None when it evaluates at every ``eval_every`` mark."""
        if self.training.eval_at == "every" or not isinstance(self.schedule, AshaSpec):
            return None
        return [*self.asha_rungs(), self.asha_max_t()]

    def to_json(self) -> str:
        """The spec as JSON (paths already absolute), as stored with the study."""
        return self.model_dump_json()


def asha_rungs(grace_period: float, reduction_factor: float, max_t: float) -> list[float]:
    """The epochs at which ASHA compares trials: ``grace_period * reduction_factor**i`` below ``max_t``.

    >>> asha_rungs(0.25, 2, 2.0)
    [0.25, 0.5, 1.0]
    """
    rungs, r = [], grace_period
    while r < max_t - 1e-9:
        rungs.append(round(r, 9))
        r *= reduction_factor
    return rungs


def batch_problem(space: SpaceSpec, gpus: float) -> str | None:
    """Why ``space.batch_size`` cannot be split over a data-parallel trial's GPUs, if it cannot."""
    b = space.batch_size
    return placement.batch_problem(
        [int(x) for x in values(b)], placement.world_size(gpus), searched_range=isinstance(b, IntParam)
    )


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
