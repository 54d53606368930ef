"""Data preparation, once per study: load, clean, split, tokenize, pack, cache.

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
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from hpo import formats
from hpo.errors import DataError
from hpo.formats import read_rows
from hpo.spec import DataSpec

__all__ = ["Prepared", "check", "clean", "describe", "pack", "prepare", "read_rows", "split"]

log = logging.getLogger(__name__)

PREP_VERSION = "2"  # bump when the prepared layout or the formatting changes
IGNORE = -100  # label of tokens that carry no loss
ARRAYS = ("train_ids", "train_labels", "train_pos", "val_ids", "val_labels", "val_pos")


@dataclass
class CleanReport:
    """What cleaning did to the rows of one file."""

    read: int = 0
    empty: int = 0
    duplicate: int = 0
    kept: int = 0


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


# ---------------------------------------------------------------- reading and cleaning (pure)


def clean(
    rows: list[dict[str, Any]], keys: list[str], source: str, settings: list[str] | None = None
) -> tuple[list[tuple], CleanReport]:
    """Strip, drop empty rows and exact duplicates (after whitespace normalisation).

    Args:
        rows: dicts as read (``hpo.formats.read_rows``).
        keys: the fields that make one example, in order.
        source: the file name, for errors.
        settings: the spec settings naming ``keys`` (default: prompt/completion or text field).

    Returns:
        The kept examples (tuples of stripped strings; a chat's messages as one tuple of
        (role, content) pairs) and the counts.

    Raises:
        DataError: a row lacks a field, or nothing is left.
    """
    report = CleanReport(read=len(rows))
    seen: set[tuple] = set()
    kept = []
    for row in rows:
        missing = [k for k in keys if k not in row]
        if missing:
            where = f"{source}:{row.get('_line', '?')}"
            fields = ", ".join(k for k in row if k != "_line") or "none"
            raise DataError(
                f"{where}: no field {missing[0]!r} (fields: {fields}); "
                f"add it, or set data.{_setting(keys, missing[0], settings)} in the spec"
            )
        example = tuple(_stripped(row[k], f"{source}:{row.get('_line', '?')}", k) for k in keys)
        if not all(_usable(x) for x in example):
            report.empty += 1
            continue
        norm = tuple(_normal(x) for x in example)
        if norm in seen:
            report.duplicate += 1
            continue
        seen.add(norm)
        kept.append(example)
    report.kept = len(kept)
    if not kept:
        raise DataError(
            f"{source}: no usable rows after cleaning (read {report.read}: {report.empty} empty, "
            f"{report.duplicate} duplicate); every example needs non-empty {' and '.join(keys)}"
        )
    return kept, report


def _stripped(value: Any, where: str, key: str) -> Any:
    if isinstance(value, tuple):  # a chat's messages: strip each content
        return tuple((role, content.strip()) for role, content in value)
    if not isinstance(value, str):
        raise DataError(f"{where}: field {key!r} holds a {type(value).__name__}; expected text")
    return value.strip()


def _usable(value: Any) -> bool:
    return formats.chat_has_reply(value) if isinstance(value, tuple) else bool(value)


def _normal(value: Any) -> Any:
    if isinstance(value, tuple):
        return tuple((role, " ".join(content.split())) for role, content in value)
    return " ".join(value.split())


def _setting(keys: list[str], key: str, settings: list[str] | None) -> str:
    if settings is None:
        settings = ["prompt_field", "completion_field"] if len(keys) == 2 else ["text_field"]
    return settings[keys.index(key)]


def split(examples: list[Any], fraction: float, seed: int) -> tuple[list[Any], list[Any]]:
    """A seeded train/validation split of examples (at least one of each)."""
    if len(examples) < 2:
        raise DataError(
            f"need at least 2 examples to split off a validation set, got {len(examples)}; "
            "add data or set data.validation_path"
        )
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    n_val = min(len(examples) - 1, max(1, round(len(examples) * fraction)))
    val = sorted(order[:n_val])
    train = sorted(order[n_val:])
    return [examples[i] for i in train], [examples[i] for i in val]


# ---------------------------------------------------------------- packing (pure)


@dataclass
class Packed:
    """Blocks of token ids, labels (-100: no loss) and positions (0 at each example's start)."""

    ids: list[list[int]] = field(default_factory=list)
    labels: list[list[int]] = field(default_factory=list)
    pos: list[list[int]] = field(default_factory=list)
    truncated: int = 0  # examples cut to one block (overlong: truncate)
    dropped: int = 0  # examples left out for their length (overlong: drop)


def pack(
    examples: list[tuple[list[int], list[int]]], block: int, pad_id: int, overlong: str = "truncate"
) -> Packed:
    """Pack (ids, labels) examples whole into blocks of ``block`` tokens, padding the tails.

    Each example's positions count from 0, so the model masks attention block-diagonally and
    sees each example as if alone; its first token carries no loss (alone, nothing predicts it;
    packed, the previous example's last token would). An example longer than a block is cut to its first block
    (``overlong="truncate"``) or left out (``"drop"``).
    """
    out = Packed()
    cur_ids: list[int] = []
    cur_lab: list[int] = []
    cur_pos: list[int] = []
    for ids, labels in examples:
        if len(ids) > block:
            if overlong == "drop":
                out.dropped += 1
                continue
            ids, labels, out.truncated = ids[:block], labels[:block], out.truncated + 1
        if len(cur_ids) + len(ids) > block:
            _close(out, cur_ids, cur_lab, cur_pos, block, pad_id)
            cur_ids, cur_lab, cur_pos = [], [], []
        cur_ids += ids
        cur_lab += [IGNORE, *labels[1:]]  # nothing before an example predicts its first token
        cur_pos += range(len(ids))
    if cur_ids:
        _close(out, cur_ids, cur_lab, cur_pos, block, pad_id)
    return out


def _close(out: Packed, ids: list[int], labels: list[int], pos: list[int], block: int, pad_id: int) -> None:
    pad = block - len(ids)
    out.ids.append(ids + [pad_id] * pad)
    out.labels.append(labels + [IGNORE] * pad)
    out.pos.append(pos + list(range(pad)))  # the padding is a segment of its own


def split_long(docs: list[list[int]], block: int) -> tuple[list[list[int]], int]:
    """Cut token sequences longer than ``block`` into block-sized pieces; returns the pieces and
    how many sequences were cut."""
    pieces: list[list[int]] = []
    cut = 0
    for d in docs:
        if len(d) > block:
            cut += 1
        pieces += [d[i : i + block] for i in range(0, len(d), block)]
    return pieces, cut


# ---------------------------------------------------------------- tokenizing and caching


def fingerprint(data: DataSpec, tokenizer_id: str, seed: int) -> str:
    """A hash of everything the prepared arrays depend on (a folder: every file's name and bytes;
    a hub dataset: its id and split, as in the settings)."""
    h = hashlib.sha256()
    h.update(json.dumps([PREP_VERSION, data.model_dump(exclude={"path", "validation_path"}), seed]).encode())
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


def prepare(data: DataSpec, model_path: str, seed: int, cache_root: Path) -> Prepared:
    """Prepare (or reuse) the packed train/validation arrays for a study.

    Raises:
        DataError: the data cannot be read, has no usable rows, or the tokenizer cannot load.
    """
    fp = fingerprint(data, tokenizer_identity(model_path), seed)
    out = cache_root / "data" / fp
    if (out / "meta.json").is_file():
        return Prepared.load(str(out))
    tok = load_tokenizer(model_path)
    train_ex, val_ex, cleaning = _examples(data, seed)
    prepared = _tokenize_and_pack(tok, data, train_ex, val_ex, cleaning)
    return _save(prepared, out, fp)


def _examples(data: DataSpec, seed: int) -> tuple[list, list, dict[str, Any]]:
    rows = read_rows(data, data.path)
    row_kind = formats.kind(data, rows)
    keys = formats.keys(data, row_kind)
    settings = formats.FIELD_SETTINGS[row_kind]
    examples, report = clean(rows, keys, data.path, settings)
    cleaning: dict[str, Any] = {"train": asdict(report), "kind": row_kind, "pairs": row_kind == "pairs"}
    if data.validation_path or data.validation_split:
        source = data.validation_path or data.path
        val_rows = read_rows(data, source, data.validation_split)
        if (val_kind := formats.kind(data, val_rows)) != row_kind:
            raise DataError(f"{source}: the validation rows hold {val_kind}, the training rows {row_kind}")
        val, val_report = clean(val_rows, keys, source, settings)
        cleaning["validation"] = asdict(val_report)
        train = examples
    else:
        train, val = split(examples, data.validation_fraction, seed)
    cleaning["examples"] = {"train": len(train), "validation": len(val)}
    return train, val, cleaning


def check(data: DataSpec, seed: int = 0) -> dict[str, Any]:
    """A dry run of data preparation up to tokenizing: read, clean and split, in pure Python.

    ``hpo study create`` runs it so bad data fails before anything is stored. It loads no
    tokenizer, so length problems (truncated or dropped examples, less than one block of
    tokens) show at run time, in the prepared data's report.

    Returns:
        The cleaning counts, as stored with the study: ``{"train": {read, empty, duplicate,
        kept}, "validation": {...} (with data.validation_path / validation_split), "kind":
        "pairs" | "text" | "chat", "pairs": bool, "examples": {"train": n, "validation": n}}``;
        ``prepare`` adds ``"length": {"train"|"val": {truncated, dropped, split}}``.

    Raises:
        DataError: naming the file (and line) and the fix.
    """
    return _examples(data, seed)[2]


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


def _tokenize_and_pack(tok, data: DataSpec, train_ex: list, val_ex: list, cleaning: dict) -> dict[str, Any]:
    eos = tok.eos_token_id
    pad = tok.pad_token_id if tok.pad_token_id is not None else eos
    if eos is None:
        raise DataError("the model's tokenizer has no EOS token; hpo needs one to end examples")
    out: dict[str, Any] = {"pad_id": pad, "cleaning": cleaning}
    length = cleaning.setdefault("length", {})
    for name, examples in (("train", train_ex), ("val", val_ex)):
        cut = 0
        if cleaning["kind"] == "pairs":
            enc = formats.encode_pairs(tok, examples, eos, IGNORE)
        elif cleaning["kind"] == "chat":
            enc = formats.encode_chats(tok, [e[0] for e in examples], eos, data.chat_template, IGNORE)
        else:
            docs = tok([e[0] for e in examples], add_special_tokens=False)["input_ids"]
            pieces, cut = split_long([d + [eos] for d in docs], data.block_size)
            enc = [(d, list(d)) for d in pieces]
        packed = pack(enc, data.block_size, pad, data.overlong)
        length[name] = {"truncated": packed.truncated, "dropped": packed.dropped, "split": cut}
        if not packed.ids:
            raise DataError(
                f"{data.path}: no {name} example fits a block of {data.block_size} tokens "
                f"({packed.dropped} dropped as too long); raise data.block_size or set "
                "data.overlong: truncate"
            )
        out[f"{name}_ids"], out[f"{name}_labels"], out[f"{name}_pos"] = packed.ids, packed.labels, packed.pos
    return out


def _save(p: dict[str, Any], out: Path, fp: str) -> Prepared:
    import numpy as np

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{fp}-", dir=out.parent))
    try:
        for name in ARRAYS:
            np.save(tmp / f"{name}.npy", np.asarray(p[name], dtype=np.int32))
        meta = Prepared(
            path=str(out),
            fingerprint=fp,
            block_size=len(p["train_ids"][0]),
            pad_id=int(p["pad_id"]),
            train_blocks=len(p["train_ids"]),
            val_blocks=len(p["val_ids"]),
            train_tokens=int((np.asarray(p["train_labels"]) != IGNORE).sum()),
            val_tokens=int((np.asarray(p["val_labels"]) != IGNORE).sum()),
            cleaning=p["cleaning"],
        )
        (tmp / "meta.json").write_text(json.dumps(asdict(meta), indent=1))
        try:
            os.replace(tmp, out)
        except OSError:  # another process prepared the same data first: use theirs
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return Prepared.load(str(out))
