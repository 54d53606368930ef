"""The study spec: a YAML file parsed into typed, frozen, validated models.

Every problem in a file is reported at once, each with its field path, the value and what is
allowed (``SpecError``). Relative paths resolve against the spec file's folder. Nothing here
touches the storage, the network or a heavy library. This module holds the whole (``StudySpec``,
its cross-field checks) and how a file becomes one (``load``, ``parse``; the YAML with unique keys
and pydantic's errors as one line each are ``hpo/specfile.py``'s); the sections' models are
``hpo/specsections.py``'s and ``hpo/specdata.py``'s (the data section), re-exported here.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from hpo import dataspace, models, specfile
from hpo import objectives as objectives_mod
from hpo.dataparams import refs
from hpo.errors import SpecError
from hpo.objectives import COSTS, MULTI_SAMPLERS, ObjectiveEntry
from hpo.params import (
    ADAPTER_SEARCHABLE,
    LR_SCHEDULERS,
    SEARCHABLE,
    TRAINING_SEARCHABLE,
    CategoricalParam,
    FloatParam,
    Frozen,
    Int,
    IntParam,
    Param,
    SpaceSpec,
    enqueue_problems,
    values,
)
from hpo.specdata import DATA_FORMATS, DataSpec
from hpo.specsections import (
    HUB_ID,
    METRICS,
    AdapterSpec,
    AshaSpec,
    BudgetSpec,
    CustomMetricSpec,
    EvaluationSpec,
    GenerateSpec,
    NoSchedule,
    ObjectiveSpec,
    PashaSpec,
    ResourcesSpec,
    Schedule,
    TrainingSpec,
    WarmStartSpec,
    asha_rungs,
    batch_problem,
    generation_problem,
    resolve_path,
)

__all__ = [
    "DATA_FORMATS",
    "LR_SCHEDULERS",
    "METRICS",
    "SEARCHABLE",
    "TRAINING_SEARCHABLE",
    "CategoricalParam",
    "FloatParam",
    "IntParam",
    "Param",
    "SpaceSpec",
    "StudySpec",
    "AdapterSpec",
    "AshaSpec",
    "CustomMetricSpec",
    "BudgetSpec",
    "DataSpec",
    "EvaluationSpec",
    "GenerateSpec",
    "NoSchedule",
    "PashaSpec",
    "ObjectiveSpec",
    "ResourcesSpec",
    "TrainingSpec",
    "WarmStartSpec",
    "load",
    "parse",
]

#: The name of the offline base model hpo builds itself.
TINY_MODEL = "hpo:tiny-gpt2"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}")
SAMPLERS = ("tpe", "random", "grid", "cmaes", "gp", "nsga2", "cqr")


class StudySpec(Frozen):
    """A whole study: what to tune, on what, and how to search."""

    name: str = Field(description="study name: letters, digits, '_', '.', '-'")
    model: str = Field(
        default=TINY_MODEL, description="hpo:NAME (`hpo model list`), a local directory or a hub id"
    )
    data: DataSpec
    objective: ObjectiveSpec = ObjectiveSpec()
    evaluation: EvaluationSpec = Field(
        default=EvaluationSpec(), validate_default=True, description="metrics on generated answers"
    )
    objectives: list[ObjectiveEntry] | None = Field(
        default=None,
        description="several objectives instead of objective: a multi-objective study (Pareto front); "
        "the first, a quality metric, is what ASHA compares",
    )
    space: SpaceSpec = SpaceSpec()
    schedule: Schedule = Field(
        default=AshaSpec(), description="asha (early stopping), pasha (ASHA with a growing cap) or none"
    )
    training: TrainingSpec = TrainingSpec()
    resources: ResourcesSpec = ResourcesSpec()
    adapter: AdapterSpec | None = Field(
        default=None, validate_default=True, description="train a LoRA adapter instead of all weights"
    )
    sampler: Literal["tpe", "random", "grid", "cmaes", "gp", "nsga2", "cqr"] = Field(
        default="tpe",
        description="Optuna's sampler, or cqr (syne-tune's conformal quantile regression on each trial's "
        "last evaluation; needs the search extra); grid needs every searched parameter int or "
        "categorical; several objectives: tpe, nsga2, gp, random or grid",
    )
    enqueue: list[dict[str, Any]] = Field(
        default_factory=list, description="known-good configurations tried first (warm start)"
    )
    budget: BudgetSpec | None = Field(default=None, description="time per run (--time-budget overrides)")
    warm_start: WarmStartSpec | None = Field(
        default=None, description="copy an earlier study's finished trials in as the sampler's history"
    )
    keep_top_k: Int = Field(default=3, ge=1, description="trials whose best checkpoint is kept")
    seed: Int = 0

    @model_validator(mode="before")
    @classmethod
    def _one_objective_key(cls, data: Any, info: ValidationInfo) -> Any:
        """``objective`` and ``objectives`` exclude each other; ``objective`` becomes the first of
        ``objectives`` (what ASHA, the trial's best checkpoint and single-value code paths read)."""
        if not isinstance(data, dict) or data.get("objectives") is None:
            return data
        if "objective" in data and not (info.context or {}).get("stored"):
            raise ValueError(
                "objectives: objective is set too; keep one (objective: one metric, objectives: a list "
                "of {metric, direction})"
            )
        first = data["objectives"][0] if isinstance(data["objectives"], list) and data["objectives"] else None
        if isinstance(first, dict) and isinstance(first.get("metric"), str) and first["metric"] not in COSTS:
            data = {**data, "objective": {k: v for k, v in first.items() if k in ("metric", "direction")}}
        return data

    @field_validator("objectives", mode="after")
    @classmethod
    def _objectives(cls, v: list[ObjectiveEntry] | None) -> list[ObjectiveEntry] | None:
        problems = objectives_mod.list_problems(v) if v is not None else []
        if problems:
            raise ValueError("; ".join(problems))
        return v

    @model_validator(mode="after")
    def _objectives_need(self) -> StudySpec:
        scored = self.evaluation.metrics() if self.evaluation.generate is not None else None
        problems = objectives_mod.needs_problems(
            (self.objectives or [])[1:], scored
        )  # the first: objective's check
        if problems:
            raise ValueError("objectives: " + "; ".join(problems))
        return self

    @field_validator("evaluation", mode="after")
    @classmethod
    def _generation(cls, v: EvaluationSpec, info: ValidationInfo) -> EvaluationSpec:
        objective, data = info.data.get("objective"), info.data.get("data")
        problem = objective and generation_problem(objective, v, getattr(data, "format", None))
        if problem:
            raise ValueError(problem)
        return v

    @field_validator("space", mode="after")
    @classmethod
    def _data_params(cls, v: SpaceSpec, info: ValidationInfo) -> SpaceSpec:
        data = info.data.get("data")
        if isinstance(data, DataSpec):
            problems = dataspace.problems(data, v)
        else:  # the data section is invalid: still name the space keys it does not bind
            problems = dataspace.unbound(v, set((info.context or {}).get("bound", ())))
        if problems:
            raise ValueError("\n".join(problems))
        return v

    @model_validator(mode="before")
    @classmethod
    def _bound_names(cls, data: Any, info: ValidationInfo) -> Any:
        """The parameter names the raw data section binds (for ``_data_params`` when it is invalid)."""
        if isinstance(data, dict) and isinstance(info.context, dict):
            info.context["bound"] = [name for _, name in refs(data.get("data"))]
        return data

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
        several = info.data.get("objectives")
        if several and v not in MULTI_SAMPLERS:
            raise ValueError(
                f"{v} handles one objective; with {len(several)} objectives use {', '.join(MULTI_SAMPLERS)}"
            )
        if v == "cqr" and importlib.util.find_spec("syne_tune") is None:
            raise ValueError(
                "cqr needs syne-tune, which is not installed: "
                "pip install -e '.[search]' (or scripts/setup --search)"
            )
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
    def metrics(self) -> list[str]:
        """The metrics the study optimizes: the objectives' in order, or the one objective's."""
        return [o.metric for o in self.objectives] if self.objectives else [self.objective.metric]

    @property
    def directions(self) -> list[Literal["minimize", "maximize"]]:
        """The direction of each of ``metrics``."""
        return [o.direction for o in self.objectives] if self.objectives else [self.objective.direction]

    @property
    def max_block_size(self) -> int:
        """The longest block any trial trains on (``data.block_size`` may be searched)."""
        return dataspace.max_block_size(self.data, self.space)

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
        if self.training.eval_at == "every":
            return None
        return self.eval_epochs_asha() or None

    def eval_epochs_asha(self) -> list[float]:
        """The epochs at which ASHA reads a trial: its rungs and max_t (none without ASHA)."""
        if not isinstance(self.schedule, AshaSpec):
            return []
        return [*self.asha_rungs(), self.asha_max_t()]

    def to_json(self) -> str:
        """The spec as JSON (paths already absolute), as stored with the study."""
        return self.model_dump_json()


def _local_model_or_hub_id(v: str, info: ValidationInfo) -> str:
    """A model folder (resolved) if ``v`` names one, else ``v`` as a Hugging Face hub id."""
    resolved = resolve_path(v, info)
    if os.path.isdir(resolved):
        if not os.path.isfile(os.path.join(resolved, "config.json")):
            raise ValueError(f"{resolved} has no config.json; give a folder written by save_pretrained")
        return resolved
    base = (info.context or {}).get("base_dir", ".")
    # "org/name" is a hub id, unless "org" is a folder here: then it was meant as a local path
    local = not HUB_ID.fullmatch(v) or ("/" in v and os.path.isdir(os.path.join(base, v.split("/")[0])))
    if local:
        raise ValueError(
            f"model directory not found: {resolved}; give a save_pretrained folder, a hub id "
            f"(org/name) or {TINY_MODEL}"
        )
    return v


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
    data = specfile.document(data, source, name)
    try:
        return StudySpec.model_validate(data, context={"base_dir": base_dir})
    except ValidationError as e:
        raise SpecError(source, specfile.format_errors(e)) from e


def load(path: str | os.PathLike[str], name: str | None = None) -> StudySpec:
    """Read and validate a study spec file.

    Raises:
        SpecError: the file is missing, is not YAML, or any field is invalid.
    """
    return parse(specfile.read(path), str(path), str(Path(path).parent.resolve()), name)


def from_json(text: str) -> StudySpec:
    """Rebuild a spec stored with a study (its paths are absolute already)."""
    return StudySpec.model_validate(json.loads(text), context={"stored": True})
