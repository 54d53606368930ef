"""The ``data`` section of a study spec (``DataSpec``): where the task data is, how to read it and
turn it into training blocks, a mixture of sources, and the settings a search may bind to space
parameters (``{param: NAME}``). ``hpo.spec`` re-exports it. Nothing here touches the storage, the
network or a heavy library."""

from __future__ import annotations

import os
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field, ValidationInfo, field_validator, model_validator

from hpo.dataparams import AugmentSpec, BlockSize, Overlong, SourceSpec, fixed, refs, substitute
from hpo.params import Float, Frozen
from hpo.specsections import HUB_ID, resolve_path

DATA_FORMATS = ("jsonl", "csv", "text", "chat", "datasets", "hub")


class DataSpec(Frozen):
    """Where the task data is and how to turn it into training blocks."""

    format: Literal["jsonl", "csv", "text", "chat", "datasets", "hub"] = Field(
        default="jsonl",
        description="jsonl | csv (pairs or text) | text (file: a document per line; folder: per file) "
        "| chat (jsonl of messages) | datasets (a save_to_disk folder) | hub (a Hugging Face dataset id)",
    )
    path: Annotated[str, BeforeValidator(lambda v: "" if v is None else v)] = Field(
        default="", description="the data file or folder, or the dataset id for format: hub (or sources)"
    )
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
    block_size: BlockSize = Field(
        default=128, description="tokens per training block, 8-32768, or {param: NAME}"
    )
    overlong: Overlong = Field(
        default="truncate",
        description="an example longer than a block: keep its first block (truncate), or drop it "
        "(drop); or {param: NAME}",
    )
    augment: AugmentSpec | None = Field(
        default=None, description="offline augmentation of the training split (docs/data.md)"
    )
    sources: list[SourceSpec] | None = Field(
        default=None, min_length=1, description="a mixture of sources instead of path, each with a weight"
    )
    objective_source: str | None = Field(
        default=None, description="with sources: the source whose validation is the objective (default: all)"
    )

    @model_validator(mode="after")
    def _path_or_sources(self) -> DataSpec:
        if (self.sources is None) == (not self.path):
            raise ValueError("give either data.path or data.sources (a list of {path, weight}), not both")
        if self.sources is None:
            if self.objective_source is not None:
                raise ValueError("objective_source needs data.sources")
            return self
        names = [str(s.name) for s in self.sources]
        if len(set(names)) < len(names):
            raise ValueError(f"sources: two share a name ({', '.join(names)}); set name: on each")
        if self.objective_source is not None and self.objective_source not in names:
            raise ValueError(
                f"objective_source {self.objective_source!r} is none of the sources ({', '.join(names)})"
            )
        weights = [s.weight for s in self.sources]
        if all(isinstance(w, float | int) and w == 0 for w in weights):
            raise ValueError("sources: every weight is 0; give at least one source a weight > 0")
        return self

    def parts(self) -> list[tuple[str, float, DataSpec]]:
        """The data to prepare, one per source: (name, weight, the source's own data spec); a
        spec without sources is one part named ``""`` of weight 1."""
        if self.sources is None:
            return [("", 1.0, self)]
        out = []
        for s in self.sources:
            own = {k: v for k, v in s.model_dump(exclude={"name", "weight"}).items() if v is not None}
            spec = self.model_copy(
                update={
                    **own,
                    "sources": None,
                    "objective_source": None,
                    "validation_path": s.validation_path,
                }
            )
            out.append((str(s.name), float(fixed(s.weight)), spec))
        return out

    def params(self) -> list[str]:
        """The space parameters this section's settings are bound to, in order."""
        return list(dict.fromkeys(name for _, name in refs(self.model_dump())))

    def resolve(self, values: dict[str, Any]) -> DataSpec:
        """The concrete data spec a trial's parameter ``values`` choose (no references left).

        Raises:
            KeyError: a referenced parameter is not in ``values``.
        """
        dumped = self.model_dump()
        missing = [name for _, name in refs(dumped) if name not in values]
        if missing:
            raise KeyError(missing[0])
        return DataSpec.model_validate(substitute(dumped, values), context={"stored": True})

    @field_validator("path", "validation_path", mode="after")
    @classmethod
    def _exists(cls, v: str | None, info: ValidationInfo) -> str | None:
        if not v or (info.context or {}).get("stored"):
            return v
        fmt = info.data.get("format", "jsonl")
        if fmt == "hub":
            if info.field_name == "validation_path":
                raise ValueError("format hub takes no validation_path; name a validation_split")
            if not HUB_ID.fullmatch(v):
                raise ValueError("a Hugging Face dataset id looks like name or org/name")
            return v
        resolved = resolve_path(v, info)
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
