"""Data preparation, once per study: load, clean, split, tokenize, pack, cache.

Prompt/completion pairs become ``prompt + "\\n" + completion + EOS`` with the loss on the
completion (and EOS) only; plain text is joined with EOS and cut into blocks. Examples are
packed whole into fixed blocks (an example never straddles two blocks; the tail of a block is
padding with label -100, and since attention is causal and padding only trails, padding never
changes a real token's loss). The split happens on examples, before packing, so no example is
in both sets. The result is four int32 arrays on disk that trials memory-map: trials never
tokenize. The cache is keyed by a fingerprint of the data files, the tokenizer and the settings.
"""

from __future__ import annotations

import csv
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

from hpo.errors import DataError
from hpo.spec import DataSpec

log = logging.getLogger(__name__)

PREP_VERSION = "1"  # bump when the prepared layout or the formatting changes
IGNORE = -100  # label of tokens that carry no loss
ARRAYS = ("train_ids", "train_labels", "val_ids", "val_labels")


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
        """The four arrays, memory-mapped read-only."""
        import numpy as np

        return {n: np.load(os.path.join(self.path, f"{n}.npy"), mmap_mode="r") for n in ARRAYS}

    @classmethod
    def load(cls, path: str) -> Prepared:
        with open(os.path.join(path, "meta.json")) as f:
            return cls(**json.load(f))


# ---------------------------------------------------------------- reading and cleaning (pure)


def read_rows(data: DataSpec, path: str) -> list[dict[str, str]]:
    """Read the rows of one data file as dicts of strings.

    Raises:
        DataError: naming the file and line of the first unreadable row, or a missing column.
    """
    try:
        if data.format == "jsonl":
            return _read_jsonl(path)
        if data.format == "csv":
            return _read_csv(path, data)
        with open(path, encoding="utf-8-sig") as f:
            return [{data.text_field: line, "_line": str(n)} for n, line in enumerate(f, 1)]
    except UnicodeDecodeError as e:
        raise DataError(
            f"{path}: not UTF-8 text ({e.reason} at byte {e.start}); save the file as UTF-8"
        ) from e
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror}); check the file and its permissions") from e


def _read_jsonl(path: str) -> list[dict[str, str]]:
    rows = []
    with open(path, encoding="utf-8-sig") as f:  # -sig: a byte-order mark is not part of line 1
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(
                    f"{path}:{n}: not valid JSON ({e.msg}); each line must be one JSON object"
                ) from e
            if not isinstance(row, dict):
                raise DataError(
                    f"{path}:{n}: expected a JSON object, got {type(row).__name__}; "
                    'each line must be one object such as {"prompt": ..., "completion": ...}'
                )
            rows.append({k: "" if v is None else str(v) for k, v in row.items()} | {"_line": str(n)})
    return rows


def _read_csv(path: str, data: DataSpec) -> list[dict[str, str]]:
    with open(path, encoding="utf-8-sig", newline="") as f:
        reader = csv.DictReader(f)
        try:
            header = list(reader.fieldnames or [])
            _check_columns(path, header, data)
            return [
                {k: v or "" for k, v in row.items() if k is not None} | {"_line": str(reader.line_num)}
                for row in reader
            ]
        except csv.Error as e:
            where = f"{path}:{reader.line_num + 1}"  # csv counts the line it failed on only after
            raise DataError(f"{where}: not valid CSV ({e}); fix or remove that line") from e


def _check_columns(path: str, header: list[str], data: DataSpec) -> None:
    """A CSV needs the prompt and completion columns, or the text column."""
    pairs = [data.prompt_field, data.completion_field]
    if all(c in header for c in pairs) or data.text_field in header:
        return
    missing = [c for c in pairs if c not in header]
    raise DataError(
        f"{path}: missing column(s) {', '.join(missing)} (columns: {', '.join(header) or 'none'}); "
        "name yours with data.prompt_field / data.completion_field (or data.text_field) in the spec"
    )


def _is_pairs(data: DataSpec, rows: list[dict[str, str]]) -> bool:
    """Pairs unless the format is text, or a jsonl/csv file has only the text field."""
    if data.format == "text":
        return False
    return not (rows and data.prompt_field not in rows[0] and data.text_field in rows[0])


def clean(
    rows: list[dict[str, str]], keys: list[str], source: str
) -> tuple[list[tuple[str, ...]], CleanReport]:
    """Strip, drop empty rows and exact duplicates (after whitespace normalisation).

    Args:
        rows: dicts as read.
        keys: the fields that make one example, in order.
        source: the file name, for errors.

    Returns:
        The kept examples (tuples of stripped strings) and the counts.

    Raises:
        DataError: a row lacks a field, or nothing is left.
    """
    report = CleanReport(read=len(rows))
    seen: set[tuple[str, ...]] = set()
    kept = []
    for row in rows:
        missing = [k for k in keys if k not in row]
        if missing:
            where = f"{source}:{row.get('_line', '?')}"
            fields = ", ".join(k for k in row if k != "_line") or "none"
            raise DataError(
                f"{where}: no field {missing[0]!r} (fields: {fields}); "
                f"add it, or set data.{_field_name(keys, missing[0])} in the spec"
            )
        example = tuple(row[k].strip() for k in keys)
        if not all(example):
            report.empty += 1
            continue
        norm = tuple(" ".join(x.split()) for x in example)
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


def _field_name(keys: list[str], key: str) -> str:
    return ["prompt_field", "completion_field"][keys.index(key)] if len(keys) == 2 else "text_field"


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


def pack(
    examples: list[tuple[list[int], list[int]]], block: int, pad_id: int
) -> tuple[list[list[int]], list[list[int]], int]:
    """Pack (ids, labels) examples whole into blocks of ``block`` tokens, padding the tails.

    Returns:
        ids blocks, labels blocks, and how many examples were truncated to fit one block.
    """
    ids_blocks: list[list[int]] = []
    lab_blocks: list[list[int]] = []
    cur_ids: list[int] = []
    cur_lab: list[int] = []
    truncated = 0
    for ids, labels in examples:
        if len(ids) > block:
            ids, labels, truncated = ids[:block], labels[:block], truncated + 1
        if len(cur_ids) + len(ids) > block:
            _close(ids_blocks, lab_blocks, cur_ids, cur_lab, block, pad_id)
            cur_ids, cur_lab = [], []
        cur_ids += ids
        cur_lab += labels
    if cur_ids:
        _close(ids_blocks, lab_blocks, cur_ids, cur_lab, block, pad_id)
    return ids_blocks, lab_blocks, truncated


def _close(ids_b: list, lab_b: list, ids: list[int], labels: list[int], block: int, pad_id: int) -> None:
    pad = block - len(ids)
    ids_b.append(ids + [pad_id] * pad)
    lab_b.append(labels + [IGNORE] * pad)


def chunk(docs: list[list[int]], block: int, eos_id: int) -> tuple[list[list[int]], list[list[int]]]:
    """Plain text: join documents with EOS and cut into full blocks (the short tail is dropped)."""
    flat: list[int] = []
    for d in docs:
        flat += d + [eos_id]
    n = len(flat) // block
    blocks = [flat[i * block : (i + 1) * block] for i in range(n)]
    return blocks, [list(b) for b in blocks]


# ---------------------------------------------------------------- tokenizing and caching


def fingerprint(data: DataSpec, tokenizer_id: str, seed: int) -> str:
    """A hash of everything the prepared arrays depend on."""
    h = hashlib.sha256()
    h.update(json.dumps([PREP_VERSION, data.model_dump(exclude={"path", "validation_path"}), seed]).encode())
    for p in (data.path, data.validation_path):
        if p:
            try:
                with open(p, "rb") as f:
                    for piece in iter(lambda: f.read(1 << 20), b""):
                        h.update(piece)
            except OSError as e:
                raise DataError(f"{p}: cannot read ({e.strerror}); the study's data file must stay") from e
    h.update(tokenizer_id.encode())
    return h.hexdigest()[:20]


def tokenizer_identity(model_path: str) -> str:
    """A string that changes whenever the tokenizer could: its file's hash, or the hub id."""
    tok_file = Path(model_path) / "tokenizer.json"
    if tok_file.is_file():
        return hashlib.sha256(tok_file.read_bytes()).hexdigest()
    return model_path


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
    keys = [data.prompt_field, data.completion_field] if _is_pairs(data, rows) else [data.text_field]
    examples, report = clean(rows, keys, data.path)
    cleaning: dict[str, Any] = {"train": asdict(report), "pairs": len(keys) == 2}
    if data.validation_path:
        val_rows = read_rows(data, data.validation_path)
        val, val_report = clean(val_rows, keys, data.validation_path)
        cleaning["validation"] = asdict(val_report)
        train = examples
    else:
        train, val = split(examples, data.validation_fraction, seed)
    cleaning["examples"] = {"train": len(train), "validation": len(val)}
    return train, val, cleaning


def check(data: DataSpec, seed: int = 0) -> dict[str, Any]:
    """A dry run of data preparation up to tokenizing: read, clean and split, in pure Python.

    ``hpo study create`` runs it so bad data fails before anything is stored. It loads no
    tokenizer, so a block-size problem (less than one block of tokens) still shows at run time.

    Returns:
        The cleaning counts, as stored with the study: ``{"train": {read, empty, duplicate,
        kept}, "validation": {...} (with data.validation_path), "pairs": bool,
        "examples": {"train": n, "validation": n}}``.

    Raises:
        DataError: naming the file (and line) and the fix.
    """
    return _examples(data, seed)[2]


def describe(report: dict[str, Any]) -> str:
    """One line for people: what cleaning kept and dropped, and the split."""
    t = report["train"]
    kind = "prompt/completion pairs" if report.get("pairs") else "texts"
    line = (
        f"data: read {t['read']} rows, dropped {t['empty']} empty and {t['duplicate']} duplicate, "
        f"kept {t['kept']} {kind}"
    )
    if "validation" in report:
        v = report["validation"]
        line += f"; validation file: read {v['read']}, kept {v['kept']}"
    n = report.get("examples")
    if n:
        line += f" ({n['train']} train / {n['validation']} validation)"
    return line


def _tokenize_and_pack(tok, data: DataSpec, train_ex: list, val_ex: list, cleaning: dict) -> dict[str, Any]:
    eos = tok.eos_token_id
    pad = tok.pad_token_id if tok.pad_token_id is not None else eos
    if eos is None:
        raise DataError("the model's tokenizer has no EOS token; hpo needs one to end examples")
    out: dict[str, Any] = {"pad_id": pad, "cleaning": cleaning}
    for name, examples in (("train", train_ex), ("val", val_ex)):
        if cleaning["pairs"]:
            enc = _encode_pairs(tok, examples, eos)
            ids, labels, truncated = pack(enc, data.block_size, pad)
            cleaning.setdefault("truncated", {})[name] = truncated
        else:
            docs = tok([e[0] for e in examples], add_special_tokens=False)["input_ids"]
            ids, labels = chunk(docs, data.block_size, eos)
        if not ids:
            raise DataError(
                f"{data.path}: the {name} split holds less than one block of {data.block_size} tokens; "
                "add data or lower data.block_size"
            )
        out[f"{name}_ids"], out[f"{name}_labels"] = ids, labels
    return out


def _encode_pairs(tok, examples: list[tuple[str, str]], eos: int) -> list[tuple[list[int], list[int]]]:
    prompts = tok([p + "\n" for p, _ in examples], add_special_tokens=False)["input_ids"]
    completions = tok([c for _, c in examples], add_special_tokens=False)["input_ids"]
    enc = []
    for p, c in zip(prompts, completions, strict=True):
        c = c + [eos]
        enc.append((p + c, [IGNORE] * len(p) + c))
    return enc


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
