"""The sections of a study spec (``objective``, ``evaluation``, ``schedule``, ``training``,
``adapter``, ``resources``, ``budget``, ``warm_start``) as typed, frozen pydantic models, with
the schedule's rungs (``asha_rungs``) and whether a batch splits over a trial's GPUs
(``batch_problem``), and the path helpers every section shares; the ``data`` section is
``hpo/specdata.py``'s. ``hpo.spec`` assembles them into a ``StudySpec`` and re-exports them.
Nothing here touches the storage, the network or a heavy library."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BeforeValidator,
    Discriminator,
    Field,
    Tag,
    ValidationInfo,
    field_validator,
    model_validator,
)

from hpo import placement, textmetrics
from hpo.params import Float, Frozen, Int, IntParam, SpaceSpec, values

#: A Hugging Face hub id: name or org/name.
HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?")
#: Each metric a trial reports, and the direction it is optimized in.
METRICS = {"eval_loss": "minimize", "perplexity": "minimize", "token_accuracy": "maximize"}


class ObjectiveSpec(Frozen):
    """What the search optimizes: eval_loss or perplexity (minimize), token_accuracy (maximize), a
    metric on generated answers (exact_match, rouge_l, chrf: maximize; needs evaluation.generate) or
    the name of evaluation.generate.metric (a custom metric: give its direction)."""

    metric: str = Field(
        default="eval_loss",
        description="eval_loss | perplexity | token_accuracy | exact_match | rouge_l | chrf | a custom "
        "metric's name",
    )
    direction: Literal["minimize", "maximize"] = Field(
        default="minimize", description="must be the metric's own; left out, it is filled in"
    )

    @model_validator(mode="before")
    @classmethod
    def _default_direction(cls, data: Any) -> Any:
        known = {**METRICS, **textmetrics.GENERATED}
        if isinstance(data, dict) and "direction" not in data:
            metric = data.get("metric", "eval_loss")
            if isinstance(metric, str) and metric not in known:
                raise ValueError(
                    f"unknown metric {metric!r}: use {', '.join(known)} (the last three need "
                    "evaluation.generate), or a custom metric's name with its direction"
                )
            if metric in known:
                return {**data, "direction": known[metric]}
        return data

    @model_validator(mode="after")
    def _direction(self) -> ObjectiveSpec:
        wanted = {**METRICS, **textmetrics.GENERATED}.get(self.metric)
        if wanted is not None and wanted != self.direction:
            verb = wanted.removesuffix("e") + "ed"
            raise ValueError(f"{self.metric} must be {verb} (got direction {self.direction!r})")
        return self

    @property
    def generated(self) -> bool:
        """Whether the metric is scored on generated answers (anything but the loss metrics)."""
        return self.metric not in METRICS


class CustomMetricSpec(Frozen):
    """A user's own metric: a Python function beside the spec, of (predictions, references) or of
    rows (dicts with prompt, prediction, reference), returning a float."""

    python: str = Field(description="file.py:function, the file relative to the spec file's folder")
    name: str = Field(default="custom", description="what the metric is called (objective.metric)")

    @field_validator("python", mode="after")
    @classmethod
    def _function(cls, v: str, info: ValidationInfo) -> str:
        path, func = textmetrics.split_ref(v)
        if (info.context or {}).get("stored"):
            return v
        resolved = resolve_path(path, info)
        if problem := textmetrics.check_custom(resolved, func):
            raise ValueError(problem)
        return f"{resolved}:{func}"

    @field_validator("name", mode="after")
    @classmethod
    def _name(cls, v: str) -> str:
        if not v.isidentifier():
            raise ValueError("use letters, digits and '_' (a Python identifier)")
        if v in METRICS or v in textmetrics.GENERATED:
            raise ValueError(f"{v} is a built-in metric; give the custom metric another name")
        return v


class GenerateSpec(Frozen):
    """Generated answers for a fixed, seeded subset of the validation prompts (pair and chat data),
    greedy and batched, scored against the references: exact_match, rouge_l, chrf (and a custom
    metric). Generation runs at the evaluations whose numbers are used: every evaluation when the
    objective is a generation metric (eval_at: rungs keeps those few), else the ASHA rungs, whole
    epochs and the end."""

    samples: Int = Field(default=64, ge=1, le=10000, description="validation prompts answered each time")
    max_new_tokens: Int = Field(default=64, ge=1, le=4096, description="tokens generated at most per answer")
    normalize: list[Literal["strip", "lowercase", "whitespace"]] = Field(
        default=["strip", "whitespace"],
        description="applied to answers and references before exact_match, rouge_l and chrf: strip "
        "(ends), lowercase, whitespace (runs of whitespace -> one space)",
    )
    batch_size: Int | None = Field(
        default=None, ge=1, description="prompts per generate call (default: the evaluation micro-batch)"
    )
    show: Int = Field(default=3, ge=0, le=20, description="answers kept with each trial for the report")
    metric: CustomMetricSpec | None = Field(default=None, description="a custom metric: {python: f.py:fn}")


class EvaluationSpec(Frozen):
    """What a trial measures besides the loss metrics."""

    generate: GenerateSpec | None = Field(
        default=None, description="score generated answers (pair and chat data): {samples, max_new_tokens}"
    )

    def metrics(self) -> list[str]:
        """The generation metrics a trial reports (none without ``generate``)."""
        if self.generate is None:
            return []
        custom = [self.generate.metric.name] if self.generate.metric else []
        return [*textmetrics.GENERATED, *custom]


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


class PashaSpec(AshaSpec):
    """PASHA (progressive ASHA, ``hpo/pasha.py``): ASHA whose maximum budget starts at its second
    rung and grows only while the ranking of the top trials keeps changing."""

    type: Literal["pasha"] = "pasha"  # type: ignore[assignment]


class NoSchedule(Frozen):
    """Every trial runs its full budget."""

    type: Literal["none"] = "none"


def _schedule_kind(v: Any) -> str | None:
    if isinstance(v, dict):  # a mapping without ``type`` is ASHA's settings
        return v.get("type", "asha") if v.get("type", "asha") in ("asha", "pasha", "none") else None
    return getattr(v, "type", None)


Schedule = Annotated[
    Annotated[AshaSpec, Tag("asha")]
    | Annotated[PashaSpec, Tag("pasha")]
    | Annotated[NoSchedule, Tag("none")],
    Discriminator(
        _schedule_kind,
        custom_error_type="schedule_type",
        custom_error_message="use asha (a mapping: type: asha, grace_period, reduction_factor), "
        "pasha (the same settings, type: pasha) or none",
    ),
]


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
    compile: bool | Literal["auto"] = Field(
        default="auto",
        description="torch.compile each decoder block (one graph for all): ~25% faster steps on a 135M "
        "model on CPU; the first compile on a machine takes minutes, later ones seconds (torch's cache). "
        "auto: models of 50M+ parameters, with a C++ compiler (CPU) or triton (GPU), no gradient "
        "checkpointing",
    )
    save_best: Literal["auto", "deferred", "immediate"] = Field(
        default="auto",
        description="when a trial writes its best checkpoint. deferred: its best weights wait in host "
        "memory (one copy) and are written once, when the trial ends or after waiting 10 minutes, so a "
        "trial the scheduler stops (PRUNED: its checkpoint is not kept) writes none; immediate: at each "
        "new best (an interrupted trial resumes from its latest best). auto: deferred, except with "
        "PASHA (it ends trials COMPLETE from outside), a LoRA adapter, or weights too large to copy",
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


def batch_problem(space: SpaceSpec, gpus: float) -> str | None:
    """Why ``space.batch_size`` cannot be split over a data-parallel trial's GPUs, if it cannot."""
    b = space.batch_size
    return placement.batch_problem(
        [int(x) for x in values(b)], placement.world_size(gpus), searched_range=isinstance(b, IntParam)
    )


def generation_problem(
    objective: ObjectiveSpec, evaluation: EvaluationSpec, data_format: str | None
) -> str | None:
    """Why ``evaluation`` cannot serve ``objective`` on data of ``data_format``, if it cannot."""
    gen = evaluation.generate
    if gen is not None and data_format == "text":
        return "generate needs prompts and references: use pair or chat data, or remove evaluation.generate"
    if not objective.generated:
        return None
    if gen is None and objective.metric in textmetrics.GENERATED:
        return (
            f"objective {objective.metric} is scored on generated answers; add evaluation: "
            "{generate: {samples: 64, max_new_tokens: 64}}"
        )
    if gen is None:
        return (
            f"objective {objective.metric} is no metric hpo knows; a custom metric is named in "
            f"evaluation: {{generate: {{metric: {{python: file.py:function, name: {objective.metric}}}}}}}"
        )
    if objective.metric not in evaluation.metrics():
        return (
            f"objective {objective.metric} is no metric hpo knows: use eval_loss, perplexity, "
            f"token_accuracy, {', '.join(evaluation.metrics())}"
        )
    return None


class BudgetSpec(Frozen):
    """A time budget for each ``hpo run`` (``--time-budget`` overrides it): no trial starts that
    cannot reach its first rung in the time left; at the deadline running trials are stopped and
    re-queued. Hours and minutes add up."""

    hours: Float | None = Field(default=None, gt=0, description="hours per run")
    minutes: Float | None = Field(default=None, gt=0, description="minutes per run")

    @model_validator(mode="after")
    def _some(self) -> BudgetSpec:
        if self.hours is None and self.minutes is None:
            raise ValueError("give hours or minutes, e.g. budget: {hours: 2}")
        return self

    @property
    def seconds(self) -> float:
        """The budget in seconds."""
        return (self.hours or 0.0) * 3600 + (self.minutes or 0.0) * 60


class WarmStartSpec(Frozen):
    """An earlier study whose finished trials are copied into the new one at ``hpo study create``,
    as history for the sampler (marked ``imported``; they count toward no target and are never
    exported)."""

    study: str = Field(description="the earlier study's name")
    storage: str | None = Field(default=None, description="its storage URL (default: the new study's)")
    on_mismatch: Literal["refuse", "drop"] = Field(
        default="refuse",
        description="a trial whose parameter lies outside the new space: refuse (create fails, naming "
        "it) or drop (parameters the new space does not search are dropped; a trial whose value lies "
        "outside the new range is left out)",
    )


def resolve_path(path: str, info: ValidationInfo) -> str:
    base = (info.context or {}).get("base_dir", ".")
    return str((Path(base) / os.path.expanduser(path)).resolve())
