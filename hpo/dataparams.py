"""The data section's searchable settings: offline augmentation (``data.augment``) and the
references that bind a data setting to a parameter of the search space.

A data setting is fixed (``p: 0.1``) or bound to a space parameter by name
(``p: {param: augment_p}`` with ``space: {augment_p: {type: float, low: 0, high: 0.2}}``). The
settings that take a reference: each operation's ``p``, ``augment.copies``, ``block_size`` and
``overlong``. ``resolve`` turns a data spec with references into the concrete one a trial's
parameters choose; each distinct concrete spec is prepared once and cached (``hpo.data``). Pure
pydantic; nothing here reads data.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Discriminator, Field, Tag, ValidationInfo, field_validator, model_validator

from hpo.params import Float, Frozen, Int

#: The augmentation operations, in the order a copy applies them.
OPS = ("template", "word_dropout", "word_swap", "insert", "typo", "paraphrase")
#: The wrappers ``template`` draws from when the spec names none (``{prompt}``: the prompt).
DEFAULT_TEMPLATES = (
    "Question: {prompt}",
    "Customer message: {prompt}",
    "{prompt}\nPlease help.",
    "Request: {prompt}\nReply:",
    "Here is my question. {prompt}",
)
MAX_COPIES = 32


class Ref(Frozen):
    """A data setting bound to the space parameter ``param`` (each trial's value of it)."""

    param: str = Field(description="the name of a parameter in space")


def _ref_or_fixed(v: Any) -> str:
    return "ref" if isinstance(v, dict | Ref) else "fixed"


_REF = Discriminator(_ref_or_fixed)
#: A probability, fixed or bound to a space parameter.
Prob = Annotated[
    Annotated[Ref, Tag("ref")] | Annotated[Annotated[Float, Field(ge=0, le=1)], Tag("fixed")], _REF
]
Copies = Annotated[
    Annotated[Ref, Tag("ref")] | Annotated[Annotated[Int, Field(ge=0, le=MAX_COPIES)], Tag("fixed")], _REF
]
BlockSize = Annotated[
    Annotated[Ref, Tag("ref")] | Annotated[Annotated[Int, Field(ge=8, le=32768)], Tag("fixed")], _REF
]
Overlong = Annotated[Annotated[Ref, Tag("ref")] | Annotated[Literal["truncate", "drop"], Tag("fixed")], _REF]
UNKNOWN_OP = f"unknown operation; use {', '.join(OPS[:-1])} or {OPS[-1]}"
#: Settings that take whole numbers (a float range cannot bind to them).
WHOLE = ("copies", "block_size")


class OpSpec(Frozen):
    """One word-level operation, applied to each word (``typo``: each word of 2+ characters)
    with probability ``p``."""

    p: Prob = Field(description="probability per word, in [0, 1], or {param: NAME}")


class TemplateOp(Frozen):
    """Prompt-template variation (pairs and chats): with probability ``p`` the prompt (a chat's
    user turns) is wrapped in one of ``templates``, drawn uniformly."""

    p: Prob = Field(description="probability per example, in [0, 1], or {param: NAME}")
    templates: list[str] = Field(
        default=list(DEFAULT_TEMPLATES), min_length=1, description="wrappers, each holding {prompt}"
    )

    @field_validator("templates", mode="after")
    @classmethod
    def _has_prompt(cls, v: list[str]) -> list[str]:
        bad = [i for i, t in enumerate(v) if t.count("{prompt}") != 1]
        if bad:
            raise ValueError(f"template {bad[0]} ({v[bad[0]]!r}) must hold {{prompt}} exactly once")
        return v


class ParaphraseOp(Frozen):
    """Paraphrase by a local model folder (a causal LM or seq2seq ``save_pretrained`` folder),
    greedy and batched, each text's paraphrase cached (``hpo/paraphrase.py``); applied first."""

    model: str = Field(description="a local causal LM or seq2seq folder (save_pretrained)")
    p: Prob = Field(default=1.0, description="probability per example (per copy), or {param: NAME}")
    prompt: str = Field(
        default="Paraphrase the following text.\nText: {text}\nParaphrase:",
        description="what the model is given ({text}: the input); a causal LM's first line of reply is kept",
    )
    max_new_tokens: Int = Field(default=64, ge=1, le=512, description="tokens generated at most")
    batch: Int = Field(default=16, ge=1, le=256, description="texts per generate call")

    @field_validator("model", mode="after")
    @classmethod
    def _folder(cls, v: str, info: ValidationInfo) -> str:
        if (info.context or {}).get("stored"):
            return v
        base = (info.context or {}).get("base_dir", ".")
        path = os.path.abspath(os.path.join(base, os.path.expanduser(v)))
        if not os.path.isdir(path):
            raise ValueError(f"model folder not found: {path}; name a local save_pretrained folder")
        if not os.path.isfile(os.path.join(path, "config.json")):
            raise ValueError(f"{path} has no config.json; name a folder written by save_pretrained")
        return path

    @field_validator("prompt", mode="after")
    @classmethod
    def _has_text(cls, v: str) -> str:
        if "{text}" not in v:
            raise ValueError("the prompt must hold {text} (where the input goes)")
        return v


class OpsSpec(Frozen):
    """The operations an augmented copy applies, each with its probability."""

    template: TemplateOp | None = None
    word_dropout: OpSpec | None = Field(default=None, description="drop each word (one is always kept)")
    word_swap: OpSpec | None = Field(default=None, description="swap each word with the next")
    insert: OpSpec | None = Field(default=None, description="insert a word of the training corpus after it")
    typo: OpSpec | None = Field(default=None, description="one character typo in the word")
    paraphrase: ParaphraseOp | None = None


class AugmentSpec(Frozen):
    """Offline augmentation of the training split (never validation): ``copies`` augmented copies
    of each training example besides the original, deterministic from ``seed``. A copy identical
    to its original is left out."""

    copies: Copies = Field(
        default=1, description=f"augmented copies per example, 0-{MAX_COPIES}, or {{param: NAME}}"
    )
    seed: Int = Field(default=0, ge=0, description="the augmentation's random seed")
    ops: OpsSpec = Field(description="operation -> {p: ...}")

    @model_validator(mode="after")
    def _some(self) -> AugmentSpec:
        if not any(getattr(self.ops, n) is not None for n in OPS):
            raise ValueError(f"name at least one operation in ops ({', '.join(OPS[:-1])})")
        return self


# ---------------------------------------------------------------- mixtures of sources

Weight = Annotated[Annotated[Ref, Tag("ref")] | Annotated[Annotated[Float, Field(ge=0)], Tag("fixed")], _REF]
SOURCE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,39}")


class SourceSpec(Frozen):
    """One source of a mixture (``data.sources``): its file, its weight in the training split,
    and its own format and fields where they differ from the data section's."""

    name: str | None = Field(default=None, description="the source's name (default: the file's stem)")
    path: str = Field(description="the source's data file or folder")
    weight: Weight = Field(
        default=1.0, description="its share of the training examples, >= 0, or {param: NAME}"
    )
    format: Literal["jsonl", "csv", "text", "chat", "datasets"] | None = Field(
        default=None, description="its format (default: data.format)"
    )
    prompt_field: str | None = None
    completion_field: str | None = None
    text_field: str | None = None
    messages_field: str | None = None
    validation_path: str | None = Field(default=None, description="its own validation file")

    @field_validator("path", "validation_path", mode="after")
    @classmethod
    def _exists(cls, v: str | None, info: ValidationInfo) -> str | None:
        if v is None or (info.context or {}).get("stored"):
            return v
        base = (info.context or {}).get("base_dir", ".")
        path = os.path.abspath(os.path.join(base, os.path.expanduser(v)))
        if not os.path.exists(path):
            raise ValueError(f"file not found: {path} (paths are relative to the spec file's folder)")
        return path

    @model_validator(mode="after")
    def _name(self) -> SourceSpec:
        name = self.name if self.name is not None else Path(self.path).stem
        if not SOURCE_NAME.fullmatch(name) or name == "total":
            raise ValueError(
                f"source name {name!r}: use 1-40 letters, digits, '_' or '-' (not 'total'); set name:"
            )
        object.__setattr__(self, "name", name)
        return self


# ---------------------------------------------------------------- references to space parameters


def fixed(value: Any) -> Any:
    """A setting's value once resolved (``DataSpec.resolve``): never a reference."""
    assert not isinstance(value, Ref), f"unresolved {value}"  # prepare() refuses unresolved specs
    return value


def refs(dumped: Any, path: tuple[str | int, ...] = ()) -> list[tuple[tuple[str | int, ...], str]]:
    """Every reference in a dumped data spec: (its path, the space parameter it names)."""
    if isinstance(dumped, dict):
        if set(dumped) == {"param"} and isinstance(dumped["param"], str):
            return [(path, dumped["param"])]
        return [r for k, v in dumped.items() for r in refs(v, (*path, k))]
    if isinstance(dumped, list):
        return [r for i, v in enumerate(dumped) for r in refs(v, (*path, i))]
    return []


def substitute(dumped: Any, values: dict[str, Any]) -> Any:
    """A dumped data spec with each reference replaced by ``values[name]`` (left when absent)."""
    if isinstance(dumped, dict):
        if set(dumped) == {"param"} and dumped["param"] in values:
            return values[dumped["param"]]
        return {k: substitute(v, values) for k, v in dumped.items()}
    if isinstance(dumped, list):
        return [substitute(v, values) for v in dumped]
    return dumped


def set_at(dumped: Any, path: tuple[str | int, ...], value: Any) -> Any:
    """A copy of ``dumped`` with the value at ``path`` replaced."""
    if not path:
        return value
    head, rest = path[0], path[1:]
    if isinstance(dumped, dict):
        return {**dumped, head: set_at(dumped[head], rest, value)}
    out = list(dumped)
    out[head] = set_at(out[head], rest, value)  # type: ignore[index]
    return out


def where(path: tuple[str | int, ...]) -> str:
    """``data.augment.ops.typo.p`` for a path in the data section."""
    return ".".join(["data", *(str(p) for p in path)])
