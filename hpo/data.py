"""Data preparation, once per study: read, clean, split, tokenize, pack, cache — streamed.

Examples and their loss:

- prompt/completion: ``prompt + "\n" + completion + EOS``, the loss on the completion and EOS;
- chat: rendered with the tokenizer's chat template (``hpo.formats.simple_template`` when it has
  none, or with ``data.chat_template: simple``), the loss on the assistant replies only, EOS last;
- text: each document (a line, a file of a folder, a row) + EOS, the loss on every token; a
  document longer than a block is cut into block-sized pieces, each its own example.

An example longer than a block (pairs, chat) is truncated to its first block or dropped
(``data.overlong``); the counts go into the cleaning report.

Packing, and why it does not change any example's loss: examples are packed whole into fixed
blocks (one never straddles two blocks), and each block carries **position ids that restart at
0 for every example**. Given position ids with such restarts and no attention mask, transformers
(>= 5) builds a block-diagonal causal mask (``masking_utils.find_packed_sequence_indices``), so a
token attends only to earlier tokens of its own example, at the positions it would have alone:
the packed loss equals the sum of the per-example losses (``tests/test_packing.py`` checks it to
1e-4). The tail of a block is padding with label -100 (its own segment). The split happens on
examples, before packing, so no example is in both sets. The result is six int32 arrays on disk
(ids, labels, positions for train and validation) that trials memory-map: trials never tokenize.
The cache is keyed by a fingerprint of the data files, the tokenizer and the settings.

Memory does not grow with the data's tokens (``docs/data.md`` has the figures). Two streaming
passes over the rows: the first reads and cleans them to count the examples (duplicates are
found by a 64-bit hash of each kept example: ~60 bytes a row), which fixes the seeded split (a
4-byte-a-row shuffle, then one byte a row); the second reads and cleans them again, tokenizes
``CHUNK_ROWS`` examples per batch call of the tokenizer and packs them (``hpo.packing``) into
``.npy`` files written a slab of blocks at a time. Progress goes to a callback (``progress`` or
``progress_to``): only the CLI draws it.
"""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
import itertools
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from hpo import augment, formats
from hpo.cleaning import Cleaner, CleanReport, clean, n_validation, split, validation_indices
from hpo.dataparams import fixed
from hpo.errors import DataError
from hpo.formats import read_rows
from hpo.packing import IGNORE, NpyWriter, Packed, Packer, pack, split_long
from hpo.spec import DataSpec

__all__ = [
    "IGNORE",
    "CleanReport",
    "Cleaner",
    "Packed",
    "Packer",
    "Prepared",
    "check",
    "clean",
    "describe",
    "describe_augment",
    "for_trial",
    "pack",
    "prepare",
    "progress_to",
    "read_rows",
    "split",
    "split_long",
]

log = logging.getLogger(__name__)

PREP_VERSION = "2"  # bump when the prepared layout or the formatting changes
ARRAYS = ("train_ids", "train_labels", "train_pos", "val_ids", "val_labels", "val_pos")
CHUNK_ROWS = 1024  # examples per batch call of the tokenizer

#: Told how far preparation is: (stage: "reading" | "tokenizing", rows done, rows in all or None).
Progress = Callable[[str, int, "int | None"], None]
_progress: contextvars.ContextVar[Progress | None] = contextvars.ContextVar("hpo_data_progress", default=None)


@contextlib.contextmanager
def progress_to(callback: Progress | None) -> Iterator[None]:
    """Send the progress of ``prepare`` and ``check`` run in this context to ``callback`` (the
    CLI's progress bar), unless a call passes its own."""
    token = _progress.set(callback)
    try:
        yield
    finally:
        _progress.reset(token)


def _reporter(progress: Progress | None) -> Progress:
    return progress or _progress.get() or (lambda stage, done, total: None)


@dataclass
class Prepared:
    """A prepared dataset on disk: where it is and what it holds."""

    path: str
    fingerprint: str
    train_blocks: int
    val_blocks: int
    train_tokens: int  # tokens that carry loss
    val_tokens: int
    block_size: int
    pad_id: int
    cleaning: dict[str, Any] = field(default_factory=dict)

    def arrays(self) -> dict[str, Any]:
        """The six arrays (ids, labels, positions of train and val), memory-mapped read-only."""
        import numpy as np

        return {n: np.load(os.path.join(self.path, f"{n}.npy"), mmap_mode="r") for n in ARRAYS}

    @classmethod
    def load(cls, path: str) -> Prepared:
        with open(os.path.join(path, "meta.json")) as f:
            return cls(**json.load(f))


# ---------------------------------------------------------------- fingerprint and tokenizer


def fingerprint(data: DataSpec, tokenizer_id: str, seed: int) -> str:
    """A hash of everything the prepared arrays depend on (a folder: every file's name and bytes;
    a hub dataset: its id and split, as in the settings)."""
    h = hashlib.sha256()
    # a spec without augmentation keeps the key it had before augmentation existed
    unset = {"augment"} if data.augment is None else set()
    h.update(
        json.dumps(
            [PREP_VERSION, data.model_dump(exclude={"path", "validation_path", *unset}), seed]
        ).encode()
    )
    for p in (data.path, data.validation_path):
        if not p or data.format == "hub":
            continue
        files = sorted(f for f in Path(p).rglob("*") if f.is_file()) if os.path.isdir(p) else [Path(p)]
        for file in files:
            h.update(str(file.relative_to(p) if file != Path(p) else "").encode())
            try:
                with open(file, "rb") as f:
                    while piece := f.read(1 << 20):
                        h.update(piece)
            except OSError as e:
                raise DataError(f"{file}: cannot read ({e.strerror}); the study's data must stay") from e
    h.update(tokenizer_id.encode())
    return h.hexdigest()[:20]


def tokenizer_identity(model_path: str) -> str:
    """A string that changes whenever the tokenizer or its chat template could: a hash of their
    files, or the hub id."""
    files = [Path(model_path) / n for n in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja")]
    if not files[0].is_file():
        return model_path
    return hashlib.sha256(b"".join(f.read_bytes() for f in files if f.is_file())).hexdigest()


def load_tokenizer(model_path: str):
    """The model's own tokenizer (``AutoTokenizer``), with errors made ours."""
    from transformers import AutoTokenizer

    from hpo.basemodel import quiet_transformers

    quiet_transformers()
    try:
        return AutoTokenizer.from_pretrained(model_path)
    except Exception as e:  # noqa: BLE001 - transformers raises many kinds; all mean the same here
        raise DataError(f"cannot load the tokenizer of model {model_path!r}: {str(e).splitlines()[0]}") from e


def prepare(
    data: DataSpec,
    model_path: str,
    seed: int,
    cache_root: Path,
    progress: Progress | None = None,
    chunk_rows: int = CHUNK_ROWS,
) -> Prepared:
    """Prepare (or reuse) the packed train/validation arrays for a study.

    Args:
        data: the data spec.
        model_path: the model whose tokenizer (and chat template) to use.
        seed: the study's seed (the split).
        cache_root: prepared data goes to ``cache_root/data/<fingerprint>``.
        progress: told how far it is (default: the ``progress_to`` context's, else nobody).
        chunk_rows: examples per batch call of the tokenizer (the output does not depend on it).

    Raises:
        DataError: the data cannot be read, has no usable rows, or the tokenizer cannot load.
    """
    if data.params():
        raise ValueError(f"resolve the data spec first: it is bound to {data.params()}")
    fp = fingerprint(data, tokenizer_identity(model_path), seed)
    out = cache_root / "data" / fp
    if (out / "meta.json").is_file():
        return Prepared.load(str(out))
    out.parent.mkdir(parents=True, exist_ok=True)
    with _locked(out.parent / f".{fp}.lock"):  # concurrent trials wanting the same setting: one prepares
        if (out / "meta.json").is_file():
            return Prepared.load(str(out))
        return _prepare(data, model_path, seed, out, _reporter(progress), chunk_rows)


def for_trial(config: dict[str, Any]) -> Prepared:
    """A trial's prepared data: ``config["data_path"]`` (prepared by the driver), or the set its
    parameters choose when the spec binds data settings to the space (``config["data"]``,
    ``data_seed``, ``cache_root``): prepared here on first use, under a file lock, and cached, so
    trials with the same setting share one set and no trial augments on the fly."""
    if config.get("data_path"):
        return Prepared.load(config["data_path"])
    spec = DataSpec.model_validate(config["data"], context={"stored": True})
    concrete = spec.resolve(config["params"])
    return prepare(concrete, config["model_path"], int(config["data_seed"]), Path(config["cache_root"]))


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive lock on ``path`` (a file lock: other processes wait for it)."""
    import fcntl

    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _prepare(
    data: DataSpec, model_path: str, seed: int, out: Path, report: Progress, chunk_rows: int
) -> Prepared:
    fp = out.name
    t0 = time.perf_counter()
    tok = load_tokenizer(model_path)
    plan = _plan(data, seed, report, with_split=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{fp}-", dir=out.parent))
    try:
        meta = _write(tok, data, plan, tmp, report, chunk_rows)
        meta.update(path=str(out), fingerprint=fp)
        (tmp / "meta.json").write_text(json.dumps(asdict(Prepared(**meta)), indent=1))
        try:
            os.replace(tmp, out)
        except OSError:  # another process prepared the same data first: use theirs
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.debug("prepared %s in %.1f s: %s", out, time.perf_counter() - t0, describe(plan.cleaning))
    return Prepared.load(str(out))


def check(
    data: DataSpec, seed: int = 0, progress: Progress | None = None, shown: dict[str, Any] | None = None
) -> dict[str, Any]:
    """A dry run of data preparation up to tokenizing: read, clean and count the split.

    ``hpo study create`` runs it so bad data fails before anything is stored. It loads no
    tokenizer, so length problems (truncated or dropped examples, less than one block of
    tokens) show at run time, in the prepared data's report.

    Returns:
        The cleaning counts, as stored with the study: ``{"train": {read, empty, duplicate,
        kept}, "validation": {...} (with data.validation_path / validation_split), "kind":
        "pairs" | "text" | "chat", "pairs": bool, "examples": {"train": n, "validation": n}}``;
        ``prepare`` adds ``"length": {"train"|"val": {truncated, dropped, split}}``. With
        ``data.augment``: ``"augment": {copies, originals, samples: [[original, augmented], ...]}``
        (the samples made with the parameter values ``shown``, for settings bound to the space).

    Raises:
        DataError: naming the file (and line) and the fix.
    """
    concrete = data.resolve(shown or {}) if data.augment is not None else data
    return _plan(concrete, seed, _reporter(progress), with_split=False).cleaning


# ---------------------------------------------------------------- pass 1: read, clean, count


@dataclass
class _Plan:
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


def _plan(data: DataSpec, seed: int, report: Progress, with_split: bool) -> _Plan:
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
    plan = _Plan(kind, formats.keys(data, kind), formats.FIELD_SETTINGS[kind], {}, [], [cleaner])
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


def _augment_report(aug, plan: _Plan, pool: list[tuple[int, tuple]], n_train: int) -> dict[str, Any]:
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
    return {"copies": aug.copies, "originals": n_train, "samples": samples}


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


# ---------------------------------------------------------------- pass 2: tokenize, pack, write


def _write(tok, data: DataSpec, plan: _Plan, folder: Path, report: Progress, chunk_rows: int) -> dict:
    """Tokenize and pack every kept example into the six ``.npy`` files in ``folder``; returns
    the ``Prepared`` fields but its path and fingerprint."""
    eos = tok.eos_token_id
    pad = tok.pad_token_id if tok.pad_token_id is not None else eos
    if eos is None:
        raise DataError("the model's tokenizer has no EOS token; hpo needs one to end examples")
    block, overlong = fixed(data.block_size), fixed(data.overlong)
    writers = {
        n: [NpyWriter(folder / f"{n}_{a}.npy", block) for a in ("ids", "labels", "pos")]
        for n in ("train", "val")
    }
    packers = {n: Packer(block, pad, overlong, _sink(writers[n])) for n in writers}
    # augmented copies: packed apart from the originals into the same training files (the trial
    # shuffles blocks), so an example and its copies do not share blocks
    copies = Packer(block, pad, overlong, _sink(writers["train"]))
    maker = augment.Augmenter(data.augment, plan.kind, plan.vocab) if data.augment else None
    cut = {"train": 0, "val": 0}
    encode = _encoder(tok, data, plan.kind, eos)
    done = 0  # examples tokenized
    for s, ((path, part, dest), cleaner) in enumerate(zip(plan.sources, plan.cleaners, strict=True)):
        start = 0  # the index of the chunk's first kept example
        for chunk in _chunks(cleaner.replay(formats.iter_rows(data, path, part)), chunk_rows):
            parts: dict[str, list] = {"train": [], "val": [], "copies": []}
            for i, example in enumerate(chunk, start):
                name = dest or ("val" if plan.val is not None and plan.val[i] else "train")
                parts[name].append(example)
                if name == "train" and maker is not None:  # validation is never augmented
                    parts["copies"] += maker.copies((s, i), example)
            start += len(chunk)
            for name, examples in parts.items():
                if examples:
                    encoded, n_cut = encode(examples)
                    cut[name] = cut.get(name, 0) + n_cut
                    for ids, labels in encoded:
                        (copies if name == "copies" else packers[name]).add(ids, labels)
            done += len(chunk)
            report("tokenizing", done, plan.examples)
    copies.close()
    for name, packer in packers.items():
        packer.close()
        for w in writers[name]:
            w.close()
    if maker is not None:
        counts = asdict(maker.counts) | {"blocks": copies.blocks, "truncated": copies.truncated}
        plan.cleaning["augment"] = {**plan.cleaning.get("augment", {}), **counts, "dropped": copies.dropped}
    return _meta(data, plan, packers, cut, pad, copies)


def _sink(writers: list[NpyWriter]) -> Callable[[Any, Any, Any], None]:
    def write(ids: Any, labels: Any, pos: Any) -> None:
        for w, a in zip(writers, (ids, labels, pos), strict=True):
            w.write(a)

    return write


def _chunks(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    it = iter(items)
    while chunk := list(itertools.islice(it, size)):
        yield chunk


def _encoder(tok, data: DataSpec, kind: str, eos: int) -> Callable[[list], tuple[list, int]]:
    """Examples -> ((ids, labels) examples, how many texts were cut into pieces)."""
    if kind == "pairs":
        return lambda examples: (formats.encode_pairs(tok, examples, eos, IGNORE), 0)
    if kind == "chat":
        return lambda examples: (
            formats.encode_chats(tok, [e[0] for e in examples], eos, data.chat_template, IGNORE),
            0,
        )
    return lambda examples: formats.encode_texts(tok, [e[0] for e in examples], eos, fixed(data.block_size))


def _meta(
    data: DataSpec, plan: _Plan, packers: dict[str, Packer], cut: dict[str, int], pad: int, copies: Packer
) -> dict:
    length = plan.cleaning.setdefault("length", {})
    for name, p in packers.items():
        length[name] = {"truncated": p.truncated, "dropped": p.dropped, "split": cut[name]}
    for name, p in packers.items():
        if not p.blocks:
            raise DataError(
                f"{data.path}: no {name} example fits a block of {data.block_size} tokens "
                f"({p.dropped} dropped as too long); raise data.block_size or set "
                "data.overlong: truncate"
            )
    return {
        "train_blocks": packers["train"].blocks + copies.blocks,
        "val_blocks": packers["val"].blocks,
        "train_tokens": packers["train"].loss_tokens + copies.loss_tokens,
        "val_tokens": packers["val"].loss_tokens,
        "block_size": data.block_size,
        "pad_id": int(pad),
        "cleaning": plan.cleaning,
    }


# ---------------------------------------------------------------- reports


_KINDS = {"pairs": "prompt/completion pairs", "text": "texts", "chat": "chats"}


def describe(report: dict[str, Any]) -> str:
    """One line for people: what cleaning kept and dropped, the split, and length handling."""
    t = report["train"]
    kind = _KINDS[report.get("kind", "pairs" if report.get("pairs") else "text")]
    line = (
        f"data: read {t['read']} rows, dropped {t['empty']} empty and {t['duplicate']} duplicate, "
        f"kept {t['kept']} {kind}"
    )
    if "validation" in report:
        v = report["validation"]
        line += f"; validation: read {v['read']}, kept {v['kept']}"
    n = report.get("examples")
    if n:
        line += f" ({n['train']} train / {n['validation']} validation)"
    length = report.get("length")
    if length:
        total = {k: sum(part[k] for part in length.values()) for k in ("truncated", "dropped", "split")}
        said = [f"{v} {k}" for k, v in total.items() if v]
        line += f"; longer than a block: {', '.join(said) or 'none'}"
    return line


def describe_augment(report: dict[str, Any], shown: dict[str, Any] | None = None) -> list[str]:
    """Lines for people about ``data.augment``: how many copies, and each sample beside its
    original (made with the parameter values ``shown`` where settings are bound to the space)."""
    aug = report.get("augment")
    if not aug:
        return []
    copies = aug["copies"]
    n = aug["originals"]
    if isinstance(copies, dict):  # bound to a space parameter
        how = f"{{param: {copies['param']}}} copies (here {shown.get(copies['param']) if shown else '?'})"
        most = ""
    else:
        how, most = f"{copies} augmented copies", f" (at most {n * copies:,} copies)"
    lines = [f"augment: {how} of each of the {n:,} training examples{most}; validation is never augmented"]
    if shown:
        lines.append("samples at " + ", ".join(f"{k}={v}" for k, v in shown.items()) + ":")
    for original, copy in aug.get("samples", []):
        lines += [f"  original:  {original!r}", f"  augmented: {copy!r}"]
    return lines
