"""The search-space part of the study spec: parameters searched (float, int, categorical) or
fixed, their allowed values, the space itself, and checks of enqueued configurations. Pure
pydantic; ``hpo.spec`` re-exports what it uses."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationInfo,
    field_validator,
    model_validator,
)

#: The five hyperparameters every study has in its space (each searched or fixed to a constant).
SEARCHABLE = ("learning_rate", "batch_size", "epochs", "dropout", "weight_decay")
#: Training options that ``training`` fixes and ``space`` may search instead (set in one place).
TRAINING_SEARCHABLE = (
    "lr_scheduler",
    "warmup_ratio",
    "gradient_accumulation_steps",
    "max_grad_norm",
    "label_smoothing",
    "l1",
    "seed",
)
#: LoRA settings that ``adapter`` fixes and ``space`` may search instead.
ADAPTER_SEARCHABLE = ("lora_r", "lora_alpha")
ALL_SEARCHABLE = (*SEARCHABLE, *TRAINING_SEARCHABLE, *ADAPTER_SEARCHABLE)
#: Learning-rate schedules (names of ``transformers.get_scheduler``), all with linear warmup.
LR_SCHEDULERS = ("linear", "cosine", "constant_with_warmup")


class Frozen(BaseModel):
    """A spec section: unknown keys are errors, values never change after validation."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def _no_bool(v: Any) -> Any:
    # pydantic's lax mode reads YAML's true/false as 1/0; a boolean where a number goes is a mistake
    if isinstance(v, bool):
        raise ValueError("expected a number, got a boolean (true/false)")
    return v


Int = Annotated[int, BeforeValidator(_no_bool)]
Float = Annotated[float, BeforeValidator(_no_bool)]
Choice = Annotated[float | int | str, BeforeValidator(_no_bool)]


class _Range(Frozen):
    """A number searched between ``low`` and ``high`` (log scale when ``log``)."""

    type: str  # first, as the subclasses' Literal; the field order is the stored spec's
    low: float
    high: float
    log: bool = False

    @model_validator(mode="after")
    def _range(self) -> _Range:
        _check_range(self.low, self.high, self.log)
        return self


class FloatParam(_Range):
    """A float searched between ``low`` and ``high`` (log scale when ``log``)."""

    type: Literal["float"]
    low: Float
    high: Float


class IntParam(_Range):
    """An integer searched between ``low`` and ``high`` inclusive."""

    type: Literal["int"]
    low: Int
    high: Int


class CategoricalParam(Frozen):
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
#: A parameter a data setting is bound to (``{param: NAME}``): searched, or fixed to any value.
AnyOrParam = Annotated[
    Annotated[FloatParam, Tag("float")]
    | Annotated[IntParam, Tag("int")]
    | Annotated[CategoricalParam, Tag("categorical")]
    | Annotated[Choice, Tag("fixed")],
    _DISCRIMINATOR,
]
StrOrParam = Annotated[
    Annotated[FloatParam, Tag("float")]
    | Annotated[IntParam, Tag("int")]
    | Annotated[CategoricalParam, Tag("categorical")]
    | Annotated[str, Tag("fixed")],
    _DISCRIMINATOR,
]


def _check_range(low: float, high: float, log: bool) -> None:
    if low > high:
        raise ValueError(f"low ({low}) must be <= high ({high})")
    if log and low <= 0:
        raise ValueError(f"log scale needs low > 0 (got low={low})")


class SpaceSpec(Frozen):
    """The search space. A number fixes the parameter; a mapping searches it. The training options
    (``lr_scheduler`` ... ``seed``) are left out by default: ``training`` then fixes them."""

    learning_rate: FloatOrParam = Field(default=5e-4, description="peak AdamW learning rate")
    batch_size: IntOrParam = Field(default=16, description="blocks per forward/backward pass group")
    epochs: IntOrParam = Field(default=1, description="passes over the training blocks")
    dropout: FloatOrParam = Field(default=0.1, description="every dropout probability of the model")
    weight_decay: FloatOrParam = Field(default=0.0, description="decoupled AdamW weight decay (L2)")
    lr_scheduler: StrOrParam | None = Field(default=None, description="searched lr schedule")
    warmup_ratio: FloatOrParam | None = Field(default=None, description="searched share of warmup steps")
    gradient_accumulation_steps: IntOrParam | None = Field(default=None, description="searched accumulation")
    max_grad_norm: FloatOrParam | None = Field(default=None, description="searched clipping norm")
    label_smoothing: FloatOrParam | None = Field(default=None, description="searched label smoothing")
    l1: FloatOrParam | None = Field(default=None, description="searched L1 penalty coefficient")
    seed: IntOrParam | None = Field(default=None, description="searched trial seed (noise across seeds)")
    lora_r: IntOrParam | None = Field(default=None, description="searched LoRA rank (needs adapter)")
    lora_alpha: IntOrParam | None = Field(default=None, description="searched LoRA alpha (needs adapter)")
    data_params: dict[str, AnyOrParam] = Field(
        default_factory=dict,
        description="parameters the data section binds its settings to ({param: NAME}); written in space "
        "under their own names, next to the others",
    )

    @model_validator(mode="before")
    @classmethod
    def _gather_data_params(cls, data: Any, info: ValidationInfo) -> Any:
        """Keys that are no built-in parameter go to ``data_params`` when the data section binds
        them (the study's validation context lists those: ``bound``); others stay, unknown keys."""
        if not isinstance(data, dict):
            return data
        bound = (info.context or {}).get("bound")
        extra = {k: v for k, v in data.items() if k not in cls.model_fields and (bound is None or k in bound)}
        if not extra:
            return data
        rest = {k: v for k, v in data.items() if k not in extra}
        return {**rest, "data_params": {**data.get("data_params", {}), **extra}}

    @field_validator(*ALL_SEARCHABLE, mode="after")
    @classmethod
    def _bounds(cls, v: Any, info: ValidationInfo) -> Any:
        name = str(info.field_name)
        if v is None:
            return v
        if name in _WHOLE and isinstance(v, FloatParam):
            raise ValueError(f"{name} is a whole number; search it with type: int or categorical")
        if name == "lr_scheduler" and isinstance(v, FloatParam | IntParam):
            raise ValueError("lr_scheduler is a name; search it with type: categorical")
        for value in values(v):
            _check_param_value(name, value)
        return v

    def searched(self) -> dict[str, Param]:
        """The parameters that are searched (not fixed), by name (data parameters last)."""
        return {
            n: v for n, v in self._all().items() if isinstance(v, FloatParam | IntParam | CategoricalParam)
        }

    def fixed(self) -> dict[str, float | int | str]:
        """The parameters fixed to a constant here, by name (training options left out are not)."""
        return {n: v for n, v in self._all().items() if v is not None and not isinstance(v, BaseModel)}

    def _all(self) -> dict[str, Any]:
        return {**{n: getattr(self, n) for n in ALL_SEARCHABLE}, **self.data_params}


def values(v: Any) -> list[Any]:
    if isinstance(v, FloatParam | IntParam):
        return [v.low, v.high]
    if isinstance(v, CategoricalParam):
        return list(v.choices)
    return [v]


_WHOLE = ("batch_size", "epochs", "gradient_accumulation_steps", "seed", "lora_r", "lora_alpha")
_LIMITS = {  # name -> (predicate, what is allowed)
    "learning_rate": (lambda x: 0 < x < 1, "0 < learning_rate < 1"),
    "batch_size": (lambda x: isinstance(x, int) and x >= 1, "an integer >= 1"),
    "epochs": (lambda x: isinstance(x, int) and x >= 1, "an integer >= 1"),
    "dropout": (lambda x: 0 <= x < 1, "0 <= dropout < 1"),
    "weight_decay": (lambda x: 0 <= x < 10, "0 <= weight_decay < 10"),
    "lr_scheduler": (lambda x: x in LR_SCHEDULERS, f"one of {', '.join(LR_SCHEDULERS)}"),
    "warmup_ratio": (lambda x: 0 <= x < 1, "0 <= warmup_ratio < 1"),
    "gradient_accumulation_steps": (lambda x: isinstance(x, int) and x >= 1, "an integer >= 1"),
    "max_grad_norm": (lambda x: x > 0, "max_grad_norm > 0"),
    "label_smoothing": (lambda x: 0 <= x < 1, "0 <= label_smoothing < 1"),
    "l1": (lambda x: 0 <= x < 1, "0 <= l1 < 1"),
    "seed": (lambda x: isinstance(x, int) and 0 <= x < 2**32, "an integer in [0, 2**32)"),
    "lora_r": (lambda x: isinstance(x, int) and 1 <= x <= 1024, "an integer in [1, 1024]"),
    "lora_alpha": (lambda x: isinstance(x, int) and 1 <= x <= 4096, "an integer in [1, 4096]"),
}


def _check_param_value(name: str, value: Any) -> None:
    ok, allowed = _LIMITS[name]
    kind_ok = isinstance(value, str) if name == "lr_scheduler" else isinstance(value, int | float)
    if isinstance(value, bool) or not kind_ok or not ok(value):
        raise ValueError(f"value {value!r} is not allowed; {name} must be {allowed}")


def enqueue_problems(i: int, params: dict[str, Any], searched: dict[str, Param]) -> list[str]:
    """What is wrong with the ``i``-th enqueued configuration (searched parameters, in range)."""
    out = []
    for name, value in params.items():
        p = searched.get(name)
        where = f"[{i}].{name}"
        if p is None:
            out.append(f"{where}: not a searched parameter (searched: {', '.join(searched) or 'none'})")
        elif isinstance(p, CategoricalParam):
            if value not in p.choices or isinstance(value, bool):
                out.append(f"{where}: {value!r} is not one of the choices {p.choices}")
        elif isinstance(value, bool) or not isinstance(value, int | float):
            out.append(f"{where}: {value!r} is not a number")
        elif isinstance(p, IntParam) and value != int(value):
            out.append(f"{where}: {value!r} is not a whole number")
        elif not p.low <= value <= p.high:
            out.append(f"{where}: {value!r} is outside [{p.low}, {p.high}]")
    return out
