"""Data preparation, pass 1: read and clean every source to count its examples, fix the seeded
train/validation split, and (for a mixture) how many times each training example goes into
training; also the words ``insert`` draws from and the augmented samples ``check`` shows. Pass 2
(``hpo.datawrite``) reads the rows again and writes the arrays."""

from __future__ import annotations

import itertools
from array import array
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from hpo import augment, formats, mixture
from hpo.cleaning import Cleaner, n_validation, validation_indices
from hpo.errors import DataError
from hpo.specdata import DataSpec

#: Told how far preparation is: (stage: "reading" | "tokenizing", rows done, rows in all or None).
Progress = Callable[[str, int, "int | None"], None]
CHUNK_ROWS = 1024  # examples per batch call of the tokenizer (and rows between progress reports)


@dataclass
class Plan:
    """What the first pass found: the kind of rows, the counts, and where each example goes."""

    kind: str
    keys: list[str]
    settings: list[str]
    cleaning: dict[str, Any]
    sources: list[tuple[str, str | None, str | None]]  # (path, split, "train" | "val" | None: by mask)
    cleaners: list[Cleaner] = field(default_factory=list)  # each source's, which rows it kept
    val: bytearray | None = None  # a fraction split: 1 for each kept example that goes to validation
    examples: int = 0  # examples kept from every source
    vocab: list[str] = field(default_factory=list)  # training words ``insert`` draws from


#: Kept examples of the training source remembered in pass 1, for the samples ``check`` shows.
SAMPLE_POOL = 64
SAMPLES = 3


def plan(data: DataSpec, seed: int, report: Progress, with_split: bool) -> Plan:
    aug = data.augment
    vocab = augment.Vocabulary(aug.seed) if aug is not None and augment.needs_vocab(aug) else None
    pool: list[tuple[int, tuple]] = []

    def observe(i: int, example: tuple, kind: str) -> None:
        if vocab is not None:
            vocab.add(i, example, kind)
        if aug is not None and i < SAMPLE_POOL:
            pool.append((i, example))

    kind, cleaner = _scan(data, data.path, None, None, report, 0, observe)
    train = cleaner.report
    plan = Plan(kind, formats.keys(data, kind), formats.FIELD_SETTINGS[kind], {}, [], [cleaner])
    plan.cleaning = {"train": asdict(train), "kind": kind, "pairs": kind == "pairs"}
    plan.examples = train.kept
    if data.validation_path or data.validation_split:
        source = data.validation_path or data.path
        val_kind, val_cleaner = _scan(data, source, data.validation_split, kind, report, train.read)
        if val_kind != kind:
            raise DataError(f"{source}: the validation rows hold {val_kind}, the training rows {kind}")
        val = val_cleaner.report
        plan.cleaning["validation"] = asdict(val)
        plan.examples += val.kept
        plan.sources = [(data.path, None, "train"), (source, data.validation_split, "val")]
        plan.cleaners.append(val_cleaner)
        n_train, n_val = train.kept, val.kept
    else:
        plan.sources = [(data.path, None, None)]
        n_val = n_validation(train.kept, data.validation_fraction)
        n_train = train.kept - n_val
        if with_split or aug is not None:
            plan.val = bytearray(train.kept)
            for i in validation_indices(train.kept, data.validation_fraction, seed):
                plan.val[i] = 1
    plan.cleaning["examples"] = {"train": n_train, "validation": n_val}
    if aug is not None:
        plan.vocab = vocab.words(plan.val) if vocab is not None else []
        plan.cleaning["augment"] = _augment_report(aug, plan, pool, n_train)
    return plan


def _augment_report(aug, plan: Plan, pool: list[tuple[int, tuple]], n_train: int) -> dict[str, Any]:
    """The settings, the most copies there can be, and a few training examples beside a copy."""
    if plan.kind == "text" and aug.ops.template is not None:
        raise DataError(
            f"{plan.sources[0][0]}: data.augment.ops.template wraps prompts; the data holds texts "
            "(use it with prompt/completion pairs or chats, or remove it)"
        )
    maker = augment.Augmenter(aug, plan.kind, plan.vocab)
    samples = []
    for i, example in pool:
        if plan.val is not None and plan.val[i]:
            continue  # validation is never augmented
        copies = maker.copies((0, i), example)
        if copies:
            samples.append([_shown(example, plan.kind), _shown(copies[0], plan.kind)])
        if len(samples) == SAMPLES:
            break
    paraphrase = aug.ops.paraphrase is not None
    return {"copies": aug.copies, "originals": n_train, "samples": samples, "paraphrase": paraphrase}


def _shown(example: tuple, kind: str) -> str:
    text = "\n".join(augment.inputs(example, kind))
    return text if len(text) <= 300 else text[:297] + "..."


def _scan(
    data: DataSpec,
    source: str,
    split: str | None,
    kind: str | None,
    report: Progress,
    done: int,
    observe: Callable[[int, tuple, str], None] | None = None,
) -> tuple[str, Cleaner]:
    """Read and clean one source, keeping the counts and which rows were kept; returns the rows'
    kind too. ``observe`` sees each kept example with its index (and the kind)."""
    rows = formats.iter_rows(data, source, split)
    first = next(rows, None)
    row_kind = formats.kind(data, [first] if first is not None else [])
    cleaner = Cleaner(formats.keys(data, row_kind), source, formats.FIELD_SETTINGS[row_kind])
    if kind is not None and row_kind != kind:
        return row_kind, cleaner
    all_rows = itertools.chain([first], rows) if first is not None else rows
    for n, example in enumerate(cleaner.kept(all_rows)):
        if observe is not None:
            observe(n, example, row_kind)
        if n % CHUNK_ROWS == 0:
            report("reading", done + cleaner.report.read, None)
    report("reading", done + cleaner.report.read, None)
    cleaner.finish()
    return row_kind, cleaner


@dataclass
class Part:
    """One source of the data (the only one without ``data.sources``): its name, weight, own data
    spec and plan, and how many times each of its kept examples goes into training (None: once
    each, validation examples never)."""

    name: str
    weight: float
    spec: DataSpec
    plan: Plan
    repeats: array | None = None


def parts(data: DataSpec, seed: int, report: Progress, with_split: bool) -> list[Part]:
    """Pass 1 over every source; a mixture's training examples are then resampled by weight."""
    out = [Part(name, w, spec, plan(spec, seed, report, with_split)) for name, w, spec in data.parts()]
    if data.sources is None:
        return out
    counts = [p.plan.cleaning["examples"]["train"] for p in out]
    for k, (p, target) in enumerate(zip(out, mixture.shares(counts, [p.weight for p in out]), strict=True)):
        p.plan.cleaning["mixture"] = {"weight": p.weight, "train": target}
        if with_split:
            p.repeats = _repeats(p.plan, target, seed, k)
    return out


def _repeats(p: Plan, target: int, seed: int, source: int) -> array:
    """Times each kept example of the training source goes into training (0 for validation)."""
    kept = p.cleaners[0].report.kept
    train = array("I", (i for i in range(kept) if p.val is None or not p.val[i]))
    times = mixture.repeats(len(train), target, seed, source)
    out = array("I", [0]) * kept
    for i, t in zip(train, times, strict=True):
        out[i] = t
    return out


def combined(reports: list[tuple[str, dict[str, Any]]]) -> dict[str, Any]:
    """One report for a mixture: each source's, and the training and validation examples summed."""
    first = reports[0][1]
    out: dict[str, Any] = {k: v for k, v in first.items() if k in ("kind", "pairs", "augment")}
    out["sources"] = dict(reports)
    out["train"] = {k: sum(r["train"][k] for _, r in reports) for k in first["train"]}
    out["examples"] = {k: sum(r["examples"][k] for _, r in reports) for k in ("train", "validation")}
    mixed = [r["mixture"]["train"] for _, r in reports if "mixture" in r]
    if mixed:
        out["examples"]["train"] = sum(mixed)
    if "augment" in out:  # copies are made of every training example of the mixture
        out["augment"] = {**out["augment"], "originals": out["examples"]["train"]}
    return out
