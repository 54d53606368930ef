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
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from hpo import dataplan, datawrite
from hpo.cleaning import Cleaner, CleanReport, clean, split
from hpo.dataplan import CHUNK_ROWS, Progress
from hpo.errors import DataError
from hpo.formats import read_rows
from hpo.packing import IGNORE, Packed, Packer, pack, split_long
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
    val_sources: dict[str, list[int]] = field(default_factory=dict)  # a mixture: each source's val blocks

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
    # a spec without augmentation or sources keeps the key it had before they existed
    unset = {k for k in ("augment", "sources", "objective_source") if getattr(data, k) is None}
    h.update(
        json.dumps(
            [PREP_VERSION, data.model_dump(exclude={"path", "validation_path", *unset}), seed]
        ).encode()
    )
    sources = [(s.path, s.validation_path) for s in data.sources or []]
    for p in (data.path, data.validation_path, *(p for pair in sources for p in pair)):
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
    if data.augment is not None and data.augment.ops.paraphrase is not None:  # the model's files too
        from hpo.paraphrase import model_identity

        h.update(model_identity(data.augment.ops.paraphrase.model).encode())
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
    parts = dataplan.parts(data, seed, report, with_split=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{fp}-", dir=out.parent))
    try:
        meta = datawrite.write(tok, data, parts, tmp, report, chunk_rows, out.parent.parent)
        meta.update(path=str(out), fingerprint=fp)
        (tmp / "meta.json").write_text(json.dumps(asdict(Prepared(**meta)), indent=1))
        try:
            os.replace(tmp, out)
        except OSError:  # another process prepared the same data first: use theirs
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.debug("prepared %s in %.1f s: %s", out, time.perf_counter() - t0, describe(meta["cleaning"]))
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
    missing = [name for name in data.params() if name not in (shown or {})]
    if missing:
        raise ValueError(
            f"check: pass shown= values for the data parameters {missing} (dataspace.shown_values)"
        )
    concrete = data.resolve(shown or {}) if data.params() else data
    parts = dataplan.parts(concrete, seed, _reporter(progress), with_split=False)
    if data.sources is None:
        return parts[0].plan.cleaning
    return dataplan.combined([(p.name, p.plan.cleaning) for p in parts])


# ---------------------------------------------------------------- reports


_KINDS = {"pairs": "prompt/completion pairs", "text": "texts", "chat": "chats"}


def describe(report: dict[str, Any]) -> str:
    """One line for people: what cleaning kept and dropped, the split, and length handling (a
    mixture: each source's, with its weight and training examples after mixing)."""
    if "sources" in report:
        each = [
            f"{name}: {describe(r).removeprefix('data: ')}"
            + (
                f", weight {r['mixture']['weight']:g} -> {r['mixture']['train']} train"
                if "mixture" in r
                else ""
            )
            for name, r in report["sources"].items()
        ]
        n = report["examples"]
        return (
            f"data: {len(each)} sources ({n['train']} train after mixing / {n['validation']} validation); "
            + "; ".join(each)
        )
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
    if aug.get("paraphrase"):
        lines.append("paraphrase runs when the data is prepared (a model's work): the samples leave it out")
    if shown:
        lines.append("samples at " + ", ".join(f"{k}={v}" for k, v in shown.items()) + ":")
    for original, copy in aug.get("samples", []):
        lines += [f"  original:  {original!r}", f"  augmented: {copy!r}"]
    return lines
